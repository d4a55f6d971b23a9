"""`petseg evaluate`: score a checkpoint on a split, and the evaluation loop that training reuses."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from petseg import postprocess
from petseg.checkpoint import check_model_type, load_checkpoint, model_from_checkpoint
from petseg.config import INFERENCE_BATCH_SIZE
from petseg.data.check import checked_names
from petseg.data.loading import ensure_dataset, make_loader, resolve_num_workers
from petseg.data.oxford_pet import OxfordPetDataset, Split, breed_of, load_mask, species_of
from petseg.data.transforms import eval_transform
from petseg.errors import PetsegError
from petseg.files import atomic_write_bytes, atomic_write_text, check_output_files
from petseg.inference import inference_model, pet_probabilities, with_flip_tta
from petseg.losses import LossFn
from petseg.metrics import SegmentationScores, dice_from_counts
from petseg.pictures import GalleryRow, render_gallery, to_uint8_image
from petseg.reports import (
    GroupScore,
    format_groups,
    group_scores,
    groups_as_json,
    worst_indices,
)
from petseg.runtime import autocast, compiled, resolve_device, resolve_precision

# The original-resolution ground truth of the i-th image the loader yields, (H, W) 0/1.
OriginalMasks = Callable[[int], torch.Tensor]


@dataclass
class Evaluation:
    scores: SegmentationScores
    loss: float | None  # mean loss per image, when a loss function was given
    original: SegmentationScores | None = None  # at each image's own size, when asked for


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    threshold: float = 0.5,
    loss_fn: LossFn | None = None,
    tta: bool = False,
    desc: str = "evaluate",
    progress: bool = True,
    precision: str = "fp32",
    original_masks: OriginalMasks | None = None,
    largest_component: bool = False,
) -> Evaluation:
    """Score every image of the loader once: per-image counts at `threshold` on probabilities.

    Batches are (images, masks) or (images, masks, borders); with borders the scores also
    cover the trimap border band. tta: flip test-time augmentation (the loss ignores it).
    original_masks: also score at each image's original size, as `predict` writes masks: the
    probabilities resized back (bilinear), then thresholded. Needs the loader in dataset order.
    largest_component: score each mask's largest connected region only (petseg.postprocess), at
    each size after thresholding.
    """
    model.eval()
    scores = SegmentationScores()
    original = SegmentationScores() if original_masks is not None else None
    seen_images = 0
    loss_sum, seen = 0.0, 0
    bar = tqdm(
        loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=not progress
    )
    for images, masks, *borders in bar:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(images).float()  # (N, 1, H, W)
            probs = with_flip_tta(model, images, torch.sigmoid(logits)) if tta else None
        if loss_fn is not None:
            loss_sum += loss_fn(logits, masks).item() * images.shape[0]
            seen += images.shape[0]
        if probs is None:
            probs = torch.sigmoid(logits)
        band = borders[0].to(device, non_blocking=True) > 0.5 if borders else None
        predicted = probs > threshold
        if largest_component:
            predicted = postprocess.largest_components(predicted)
        scores.update(predicted, masks > 0.5, band)
        if original is not None and original_masks is not None:
            for prob in probs:
                truth = original_masks(seen_images)
                full = F.interpolate(
                    prob[None], size=tuple(truth.shape), mode="bilinear", align_corners=False
                )[0]
                full_mask = full[0] > threshold
                if largest_component:
                    full_mask = postprocess.largest_component(full_mask)
                original.update(full_mask[None], truth[None].to(device) > 0)
                seen_images += 1
    return Evaluation(
        scores=scores,
        loss=loss_sum / seen if loss_fn is not None and seen else None,
        original=original,
    )


@torch.inference_mode()
def sweep_thresholds(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    thresholds: Sequence[float],
    *,
    precision: str = "fp32",
    desc: str = "thresholds",
    progress: bool = True,
) -> list[float]:
    """Mean per-image Dice at each threshold, from one pass over the loader."""
    model.eval()
    counts: list[list[torch.Tensor]] = [[] for _ in thresholds]
    bar = tqdm(
        loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=not progress
    )
    for images, masks, *_ in bar:
        images = images.to(device, non_blocking=True)
        truth = masks.to(device, non_blocking=True) > 0.5
        with autocast(device, precision):
            probs = torch.sigmoid(model(images).float())
        for kept, threshold in zip(counts, thresholds, strict=True):
            scores = SegmentationScores()
            scores.update(probs > threshold, truth)
            kept.append(scores.counts)
    return [dice_from_counts(torch.cat(kept)).mean().item() for kept in counts]


def choose_threshold(thresholds: Sequence[float], dice: Sequence[float]) -> float:
    """The threshold with the best Dice; among ties (within 1e-9) the one nearest 0.5."""
    best = max(dice)
    tied = [t for t, d in zip(thresholds, dice, strict=True) if d >= best - 1e-9]
    return min(tied, key=lambda t: (abs(t - 0.5), t))


def evaluate_checkpoint(
    model_path: Path,
    data_path: Path,
    *,
    split: Split = "test",
    batch_size: int = INFERENCE_BATCH_SIZE,
    num_workers: int | None = None,
    device_name: str = "auto",
    mirror: str | None = None,
    output: Path | None = None,
    skip_bad: bool = False,
    model_type: str | None = None,
    tta: bool = False,
    precision: str = "fp32",
    gallery: int = 0,
    gallery_path: Path | None = None,
    threshold: float | None = None,
    compile: bool = False,
    largest_component: bool = False,
) -> dict:
    """Evaluate the checkpoint at its own image size; print the scores, optionally write JSON.

    threshold: the decision threshold; default the checkpoint's (tuned on valid, else 0.5).

    gallery: also draw the `gallery` worst images (by per-image Dice) to `gallery_path`,
    by default beside --output (OUTPUT_STEM.gallery.png) or else beside the checkpoint
    (NAME.SPLIT.gallery.png). compile: torch.compile the model. largest_component: score
    each predicted mask's largest connected region only.
    """
    if gallery_path is not None and gallery <= 0:
        raise PetsegError(f"{gallery_path}: --gallery_path needs --gallery N (how many images)")
    checkpoint = load_checkpoint(model_path)
    check_model_type(checkpoint, model_type, model_path)
    check_output_files(evaluation_outputs(model_path, split, output, gallery, gallery_path))
    device = resolve_device(device_name)
    model = compiled(
        inference_model(model_from_checkpoint(checkpoint, model_path).to(device)), compile
    )
    ensure_dataset(data_path, mirror)
    size = int(checkpoint["image_size"])
    norm = checkpoint["normalization"]
    dataset = OxfordPetDataset(
        data_path,
        split,
        eval_transform(size, norm["mean"], norm["std"]),
        names=checked_names(data_path, split, skip_bad),
        with_border=True,
    )
    workers = resolve_num_workers(num_workers, device, decoded=False)
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=workers, device=device)
    if threshold is None:
        threshold = float(checkpoint.get("threshold", 0.5))
    precision = resolve_precision(precision, device)
    evaluation = evaluate_model(
        model,
        loader,
        device,
        threshold=threshold,
        tta=tta,
        desc=f"{split}",
        precision=precision,
        original_masks=lambda index: torch.from_numpy(
            load_mask(dataset.mask_path(dataset.names[index]))
        ),
        largest_component=largest_component,
    )
    counts = evaluation.scores.counts
    per_image_dice = evaluation.scores.per_image_dice()
    assert evaluation.original is not None
    original = evaluation.original.summary()
    results = {
        **evaluation.scores.summary(),
        "original_resolution": {
            key: original[key] for key in ("dice", "dice_dataset", "iou", "pixel_accuracy")
        },
        "split": split,
        "image_size": size,
        "threshold": threshold,
        "tta": tta,
        "largest_component": largest_component,
        "precision": precision,
        "model_type": checkpoint["model_type"],
        "epoch": checkpoint.get("epoch"),
        "model_path": str(model_path),
        "data_path": str(data_path),
        "per_species": groups_as_json(group_scores(dataset.names, counts, species_of)),
        "per_breed": groups_as_json(group_scores(dataset.names, counts, breed_of)),
    }
    print(format_results(results))
    if gallery > 0:
        gallery_path = gallery_path or default_gallery_path(model_path, split, output)
        worst = worst_indices(per_image_dice, gallery)
        rows = gallery_rows(
            model,
            dataset,
            worst,
            per_image_dice,
            device,
            threshold=threshold,
            tta=tta,
            norm=norm,
            largest_component=largest_component,
        )
        title = (
            f"{len(rows)} worst of {results['num_images']} {split} images by per-image Dice\n"
            f"{model_path.name}: {checkpoint['model_type']}, epoch {results['epoch']}, "
            f"{size}x{size}, threshold {threshold:.2f}{', flip TTA' if tta else ''}"
            f"{', largest region only' if largest_component else ''}"
        )
        atomic_write_bytes(gallery_path, render_gallery(rows, title))
        results["gallery"] = str(gallery_path)
        print(f"wrote {gallery_path}")
    if output is not None:
        results["per_image_dice"] = dict(zip(dataset.names, per_image_dice, strict=True))
        atomic_write_text(output, json.dumps(results, indent=2) + "\n")
        print(f"wrote {output}")
    return results


def evaluation_outputs(
    model_path: Path, split: str, output: Path | None, gallery: int, gallery_path: Path | None
) -> list[Path]:
    """The files evaluate will write: the JSON and the gallery, where asked for."""
    gallery_file = gallery_path or default_gallery_path(model_path, split, output)
    return [path for path in (output, gallery_file if gallery > 0 else None) if path is not None]


def default_gallery_path(model_path: Path, split: str, output: Path | None) -> Path:
    """runs/r34_test.json -> runs/r34_test.gallery.png; without output runs/r34.test.gallery.png."""
    if output is not None:
        return output.with_name(f"{output.stem}.gallery.png")
    return model_path.with_name(f"{model_path.stem}.{split}.gallery.png")


@torch.inference_mode()
def gallery_rows(
    model: nn.Module,
    dataset: OxfordPetDataset,
    indices: list[int],
    per_image_dice: list[float],
    device: torch.device,
    *,
    threshold: float,
    tta: bool,
    norm: dict[str, list[float]],
    largest_component: bool = False,
) -> list[GalleryRow]:
    """Predict the chosen images again (a few forward passes) and gather what the gallery shows."""
    model.eval()
    rows = []
    for index in indices:
        image, mask, border = dataset[index]
        probs = pet_probabilities(model, image[None].to(device), tta=tta)  # (1, 1, H, W)
        pred = probs[0, 0] > threshold
        if largest_component:
            pred = postprocess.largest_component(pred)
        rows.append(
            GalleryRow(
                name=dataset.names[index],
                dice=per_image_dice[index],
                image=to_uint8_image(image, norm["mean"], norm["std"]),
                truth=mask[0].numpy() > 0.5,
                pred=pred.cpu().numpy(),
                border=border[0].numpy() > 0.5,
            )
        )
    return rows


def format_results(results: dict) -> str:
    size = results["image_size"]
    header = (
        f"{results['model_path']} ({results['model_type']}, epoch {results['epoch']}) on the "
        f"{results['split']} split: {results['num_images']} images at {size}x{size}, "
        f"threshold {results['threshold']:.2f}{', flip TTA' if results.get('tta') else ''}"
        f"{', largest region only' if results.get('largest_component') else ''}"
    )
    rows = [
        ("Dice, mean of per-image Dice", results["dice"]),
        ("Dice, dataset (summed pixels)", results["dice_dataset"]),
        ("IoU, dataset", results["iou"]),
        ("pixel accuracy", results["pixel_accuracy"]),
    ]
    lines = [header, *(f"  {label:<30} {value:.4f}" for label, value in rows)]
    if results.get("original_resolution"):
        full = results["original_resolution"]
        lines += [
            "At each image's original size (probabilities resized back, as predict writes):",
            f"  {'Dice, mean of per-image Dice':<30} {full['dice']:.4f}",
            f"  {'Dice, dataset (summed pixels)':<30} {full['dice_dataset']:.4f}",
            f"  {'IoU, dataset':<30} {full['iou']:.4f}",
        ]
    if "dice_border_ignored" in results:
        accuracy = results["border_accuracy"]
        lines += [
            f"Trimap border band ({results['border_fraction']:.1%} of pixels; counted as pet above):",
            f"  {'Dice, border ignored':<30} {results['dice_border_ignored']:.4f}"
            "  (mean of per-image Dice outside the band)",
            f"  {'accuracy inside the band':<30} "
            + (f"{accuracy:.4f}" if accuracy is not None else "n/a   ")
            + "  (share of band pixels predicted as pet)",
        ]
    for key, title in (("per_species", "species"), ("per_breed", "breed")):
        if results.get(key):
            groups = [GroupScore(**group) for group in results[key]]
            lines.append(
                format_groups(f"By {title}, hardest first (mean of per-image Dice)", groups)
            )
    return "\n".join(lines)
