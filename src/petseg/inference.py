"""Pet probabilities from a model, optionally with flip test-time augmentation (TTA)."""

from __future__ import annotations

import torch
from torch import nn


def pet_probabilities(model: nn.Module, images: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
    """(N, 1, H, W) probabilities that each pixel is pet, for (N, 3, H, W) normalized images.

    tta: average with the probabilities of the horizontally flipped images, flipped back.
    """
    probs = torch.sigmoid(model(images).float())
    return with_flip_tta(model, images, probs) if tta else probs


def with_flip_tta(model: nn.Module, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The mean of `probs` (the model's on `images`) and those of the mirrored images."""
    mirrored = torch.sigmoid(model(images.flip(-1)).float()).flip(-1)
    return (probs + mirrored) / 2
