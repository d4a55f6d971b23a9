"""Training losses on logits, as pure functions: BCE, soft Dice, their sum, and deep supervision.

Each takes logits and 0/1 targets of shape (N, 1, H, W) and returns a scalar, the mean over
images, so a loss value means the same whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from petseg.choices import LOSSES
from petseg.errors import PetsegError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The auxiliary outputs' share of a deep-supervised loss (bench/quality.py measured 0.5).
DEEP_SUPERVISION_WEIGHT = 0.5
# Added to both sides of the soft Dice ratio: an empty mask predicted empty scores 1, not 0/0.
DICE_SMOOTH = 1.0


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per pixel, averaged (the lab report's loss)."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def soft_dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, smooth: float = DICE_SMOOTH
) -> torch.Tensor:
    """1 - soft Dice of sigmoid probabilities, per image, then the mean over images.

    Per image like the headline metric, so a small pet weighs as much as a large one.
    """
    probs = torch.sigmoid(logits).flatten(1)
    targets = targets.flatten(1)
    overlap = (probs * targets).sum(1)
    total = probs.sum(1) + targets.sum(1)
    return (1 - (2 * overlap + smooth) / (total + smooth)).mean()


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE for calibrated pixels plus soft Dice for the overlap the metric scores."""
    return bce_loss(logits, targets) + soft_dice_loss(logits, targets)


LOSS_FUNCTIONS: dict[str, LossFn] = {
    "bce": bce_loss,
    "dice": soft_dice_loss,
    "bce_dice": bce_dice_loss,
}


def deep_supervision_loss(
    loss_fn: LossFn,
    logits: torch.Tensor,
    aux_logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    weight: float = DEEP_SUPERVISION_WEIGHT,
) -> torch.Tensor:
    """loss_fn on the logits plus `weight` x the mean of loss_fn on each auxiliary output,
    upsampled (bilinear) to the targets' size. Without auxiliary outputs: loss_fn alone."""
    loss = loss_fn(logits, targets)
    if not aux_logits:
        return loss
    size = targets.shape[-2:]
    aux = [
        loss_fn(F.interpolate(a.float(), size=size, mode="bilinear", align_corners=False), targets)
        for a in aux_logits
    ]
    return loss + weight * torch.stack(aux).mean()


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise PetsegError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSS_FUNCTIONS[name]
