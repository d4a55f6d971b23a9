"""Flip test-time augmentation on hand-made models whose outputs are known exactly."""

from __future__ import annotations

import torch
from torch import nn

from petseg.inference import pet_probabilities, with_flip_tta


class FirstChannel(nn.Module):
    """Logits = the first input channel: mirroring the input mirrors the output."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1]


class ColumnRamp(nn.Module):
    """Logits that depend on the column only, whatever the input: not mirror-symmetric."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        width = images.shape[-1]
        ramp = torch.linspace(-2.0, 2.0, width)
        return ramp.expand(images.shape[0], 1, images.shape[-2], width)


def test_without_tta_the_probabilities_are_the_sigmoid_of_the_logits() -> None:
    images = torch.randn(2, 3, 4, 5)
    probs = pet_probabilities(FirstChannel(), images)
    assert probs.shape == (2, 1, 4, 5)
    assert torch.allclose(probs, torch.sigmoid(images[:, :1]))


def test_tta_leaves_a_mirror_equivariant_model_unchanged() -> None:
    images = torch.randn(2, 3, 4, 5)
    assert torch.allclose(
        pet_probabilities(FirstChannel(), images, tta=True), torch.sigmoid(images[:, :1])
    )


def test_tta_averages_with_the_mirrored_prediction_flipped_back() -> None:
    images = torch.zeros(1, 3, 2, 5)
    # column j sees sigmoid(ramp[j]) and, from the mirrored pass, sigmoid(ramp[4 - j]);
    # the ramp is antisymmetric, so the mean is 1/2 everywhere
    probs = pet_probabilities(ColumnRamp(), images, tta=True)
    assert torch.allclose(probs, torch.full_like(probs, 0.5))
    plain = pet_probabilities(ColumnRamp(), images)
    assert not torch.allclose(plain, probs)
    assert torch.allclose(with_flip_tta(ColumnRamp(), images, plain), probs)
