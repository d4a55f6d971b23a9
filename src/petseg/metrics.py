"""Segmentation metrics as pure functions on tensors.

Two Dice averages are reported and they differ:
- per-image Dice (the headline): Dice of each image, then the mean over images;
- dataset Dice: one Dice from true/false positive/negative counts summed over all pixels.
Empty-mask policy: an image whose ground truth and prediction are both empty scores 1.0
(a perfect answer), one with an empty ground truth and any predicted pixel scores 0.0.

Trimap border (optional): the headline counts the border band as pet. Given the border pixels,
two more figures are reported:
- Dice, border ignored: per-image Dice over the pixels outside the border, then the mean;
- border accuracy: over all border pixels of the split, the share predicted as pet, i.e. the
  pixel accuracy of the prediction inside the band against the headline's "border is pet".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def confusion_counts(
    preds: torch.Tensor, targets: torch.Tensor, include: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image (tp, fp, fn, tn) pixel counts of binary masks.

    preds, targets: (N, ...) tensors of 0/1 (bool or numbers). include: same shape, counts only
    the pixels where it is 1 (all pixels when None). Returns an (N, 4) int64 tensor.
    """
    if preds.shape != targets.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ")
    if include is not None and include.shape != preds.shape:
        raise ValueError(f"include {tuple(include.shape)} and preds {tuple(preds.shape)} differ")
    preds = preds.reshape(preds.shape[0], -1).bool()
    targets = targets.reshape(targets.shape[0], -1).bool()
    counted = torch.ones_like(preds) if include is None else include.reshape(preds.shape).bool()
    tp = (preds & targets & counted).sum(1)
    fp = (preds & ~targets & counted).sum(1)
    fn = (~preds & targets & counted).sum(1)
    tn = (~preds & ~targets & counted).sum(1)
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
    """Accumulates per-image counts over batches; every image counts once, whatever the batching.

    When `update` is given the border pixels, the counts inside the border band are kept too
    (for every image or for none), and the summary adds the border figures.
    """

    per_image_counts: list[torch.Tensor] = field(default_factory=list)
    per_image_border_counts: list[torch.Tensor] = field(default_factory=list)

    def update(
        self, preds: torch.Tensor, targets: torch.Tensor, borders: torch.Tensor | None = None
    ) -> None:
        if self.per_image_counts and (borders is not None) != bool(self.per_image_border_counts):
            raise ValueError("give the border pixels in every update or in none")
        self.per_image_counts.append(confusion_counts(preds, targets).cpu())
        if borders is not None:
            self.per_image_border_counts.append(confusion_counts(preds, targets, borders).cpu())

    @property
    def counts(self) -> torch.Tensor:
        """(num_images, 4) counts in the order the images were seen."""
        if not self.per_image_counts:
            return torch.zeros(0, 4, dtype=torch.int64)
        return torch.cat(self.per_image_counts)

    @property
    def border_counts(self) -> torch.Tensor | None:
        """(num_images, 4) counts inside the border band, or None when no borders were given."""
        if not self.per_image_border_counts:
            return None
        return torch.cat(self.per_image_border_counts)

    @property
    def num_images(self) -> int:
        return int(self.counts.shape[0])

    def summary(self) -> dict[str, float | int | None]:
        """dice (mean of per-image Dice), dice_dataset, iou (dataset), pixel_accuracy, num_images.

        With borders also: dice_border_ignored (mean of per-image Dice outside the band),
        border_accuracy (share of the split's border pixels predicted as pet; None when there
        are none) and border_fraction (share of the split's pixels in the band).
        """
        counts = self.counts
        if counts.shape[0] == 0:
            raise ValueError("no images were scored")
        total = counts.sum(0)
        summary: dict[str, float | int | None] = {
            "dice": dice_from_counts(counts).mean().item(),
            "dice_dataset": dice_from_counts(total).item(),
            "iou": iou_from_counts(total).item(),
            "pixel_accuracy": pixel_accuracy_from_counts(total).item(),
            "num_images": int(counts.shape[0]),
        }
        border_counts = self.border_counts
        if border_counts is not None:
            band = border_counts.sum(0)
            band_pixels = int(band.sum())
            summary["dice_border_ignored"] = dice_from_counts(counts - border_counts).mean().item()
            summary["border_accuracy"] = (
                pixel_accuracy_from_counts(band).item() if band_pixels else None
            )
            summary["border_fraction"] = band_pixels / max(int(total.sum()), 1)
        return summary

    def per_image_dice(self) -> list[float]:
        return dice_from_counts(self.counts).tolist()
