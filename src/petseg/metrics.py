"""Segmentation metrics as pure functions on tensors.

Two Dice averages are reported and they differ:
- per-image Dice (the headline): Dice of each image, then the mean over images;
- dataset Dice: one Dice from true/false positive/negative counts summed over all pixels.
Empty-mask policy: an image whose ground truth and prediction are both empty scores 1.0
(a perfect answer), one with an empty ground truth and any predicted pixel scores 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def confusion_counts(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image (tp, fp, fn, tn) pixel counts of binary masks.

    preds, targets: (N, ...) tensors of 0/1 (bool or numbers). Returns an (N, 4) int64 tensor.
    """
    if preds.shape != targets.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ")
    preds = preds.reshape(preds.shape[0], -1).bool()
    targets = targets.reshape(targets.shape[0], -1).bool()
    tp = (preds & targets).sum(1)
    fp = (preds & ~targets).sum(1)
    fn = (~preds & targets).sum(1)
    tn = (~preds & ~targets).sum(1)
    return torch.stack([tp, fp, fn, tn], dim=1)


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Dice = 2 tp / (2 tp + fp + fn) for (..., 4) counts; 1.0 where both masks are empty."""
    tp, fp, fn = counts[..., 0].double(), counts[..., 1].double(), counts[..., 2].double()
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), 1.0)


def iou_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """IoU = tp / (tp + fp + fn) for (..., 4) counts; 1.0 where both masks are empty."""
    tp, fp, fn = counts[..., 0].double(), counts[..., 1].double(), counts[..., 2].double()
    denominator = tp + fp + fn
    return torch.where(denominator > 0, tp / denominator.clamp(min=1), 1.0)


def pixel_accuracy_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """(tp + tn) / all pixels for (..., 4) counts."""
    counts = counts.double()
    return (counts[..., 0] + counts[..., 3]) / counts.sum(-1).clamp(min=1)


@dataclass
class SegmentationScores:
    """Accumulates per-image counts over batches; every image counts once, whatever the batching."""

    per_image_counts: list[torch.Tensor] = field(default_factory=list)

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self.per_image_counts.append(confusion_counts(preds, targets).cpu())

    @property
    def counts(self) -> torch.Tensor:
        """(num_images, 4) counts in the order the images were seen."""
        if not self.per_image_counts:
            return torch.zeros(0, 4, dtype=torch.int64)
        return torch.cat(self.per_image_counts)

    @property
    def num_images(self) -> int:
        return int(self.counts.shape[0])

    def summary(self) -> dict[str, float | int]:
        """dice (mean of per-image Dice), dice_dataset, iou (dataset), pixel_accuracy, num_images."""
        counts = self.counts
        if counts.shape[0] == 0:
            raise ValueError("no images were scored")
        total = counts.sum(0)
        return {
            "dice": dice_from_counts(counts).mean().item(),
            "dice_dataset": dice_from_counts(total).item(),
            "iou": iou_from_counts(total).item(),
            "pixel_accuracy": pixel_accuracy_from_counts(total).item(),
            "num_images": int(counts.shape[0]),
        }

    def per_image_dice(self) -> list[float]:
        return dice_from_counts(self.counts).tolist()
