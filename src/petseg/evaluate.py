"""`petseg evaluate`: score a checkpoint on a split, and the evaluation loop that training reuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from petseg.checkpoint import check_model_type, load_checkpoint, model_from_checkpoint
from petseg.data.check import checked_names
from petseg.data.loading import ensure_dataset, make_loader
from petseg.data.oxford_pet import OxfordPetDataset, Split
from petseg.data.transforms import eval_transform
from petseg.files import atomic_write_text
from petseg.metrics import SegmentationScores
from petseg.runtime import resolve_device

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Evaluation:
    scores: SegmentationScores
    loss: float | None  # mean loss per image, when a loss function was given


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    threshold: float = 0.5,
    loss_fn: LossFn | None = None,
    desc: str = "evaluate",
    progress: bool = True,
) -> Evaluation:
    """Score every image of the loader once: per-image counts at `threshold` on probabilities."""
    model.eval()
    scores = SegmentationScores()
    loss_sum, seen = 0.0, 0
    bar = tqdm(
        loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=not progress
    )
    for images, masks in bar:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        logits = model(images).float()  # (N, 1, H, W)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, masks).item() * images.shape[0]
            seen += images.shape[0]
        scores.update(torch.sigmoid(logits) > threshold, masks > 0.5)
    return Evaluation(scores=scores, loss=loss_sum / seen if loss_fn is not None and seen else None)


def evaluate_checkpoint(
    model_path: Path,
    data_path: Path,
    *,
    split: Split = "test",
    batch_size: int = 16,
    num_workers: int = 2,
    device_name: str = "auto",
    mirror: str | None = None,
    output: Path | None = None,
    skip_bad: bool = False,
    model_type: str | None = None,
) -> dict:
    """Evaluate the checkpoint at its own image size; print the scores, optionally write JSON."""
    checkpoint = load_checkpoint(model_path)
    check_model_type(checkpoint, model_type, model_path)
    device = resolve_device(device_name)
    model = model_from_checkpoint(checkpoint, model_path).to(device)
    ensure_dataset(data_path, mirror)
    size = int(checkpoint["image_size"])
    norm = checkpoint["normalization"]
    dataset = OxfordPetDataset(
        data_path,
        split,
        eval_transform(size, norm["mean"], norm["std"]),
        names=checked_names(data_path, split, skip_bad),
    )
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, device=device)
    threshold = float(checkpoint.get("threshold", 0.5))
    evaluation = evaluate_model(model, loader, device, threshold=threshold, desc=f"{split}")
    results = {
        **evaluation.scores.summary(),
        "split": split,
        "image_size": size,
        "threshold": threshold,
        "model_type": checkpoint["model_type"],
        "epoch": checkpoint.get("epoch"),
        "model_path": str(model_path),
        "data_path": str(data_path),
    }
    print(format_results(results))
    if output is not None:
        results["per_image_dice"] = dict(
            zip(dataset.names, evaluation.scores.per_image_dice(), strict=True)
        )
        atomic_write_text(output, json.dumps(results, indent=2) + "\n")
        print(f"wrote {output}")
    return results


def format_results(results: dict) -> str:
    size = results["image_size"]
    header = (
        f"{results['model_path']} ({results['model_type']}, epoch {results['epoch']}) on the "
        f"{results['split']} split: {results['num_images']} images at {size}x{size}, "
        f"threshold {results['threshold']:.2f}"
    )
    rows = [
        ("Dice, mean of per-image Dice", results["dice"]),
        ("Dice, dataset (summed pixels)", results["dice_dataset"]),
        ("IoU, dataset", results["iou"]),
        ("pixel accuracy", results["pixel_accuracy"]),
    ]
    return "\n".join([header, *(f"  {label:<30} {value:.4f}" for label, value in rows)])
