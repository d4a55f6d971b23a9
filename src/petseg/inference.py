"""Pet probabilities from a model, optionally with flip test-time augmentation (TTA).

A model here is anything mapping (N, 3, H, W) normalized images to (N, 1, H, W) logits: a torch
module, or an ONNX Runtime session wrapped by `petseg.onnx_model.session_logits`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from petseg.models.fusion import fold_batchnorm

Logits = Callable[[torch.Tensor], torch.Tensor]


def inference_model(model: nn.Module) -> nn.Module:
    """`model` as predict and evaluate run it: an eval-mode copy with BatchNorm folded into the
    convs and weights in channels_last (NHWC), which oneDNN and cuDNN convolve fastest."""
    return fold_batchnorm(model).to(memory_format=torch.channels_last)


def pet_probabilities(model: Logits, images: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
    """(N, 1, H, W) probabilities that each pixel is pet, for (N, 3, H, W) normalized images.

    tta: average with the probabilities of the horizontally flipped images, flipped back.
    """
    probs = torch.sigmoid(model(images).float())
    return with_flip_tta(model, images, probs) if tta else probs


def with_flip_tta(model: Logits, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The mean of `probs` (the model's on `images`) and those of the mirrored images."""
    mirrored = torch.sigmoid(model(images.flip(-1)).float()).flip(-1)
    return (probs + mirrored) / 2
