"""`petseg evaluate`: score a checkpoint on a split, and the evaluation loop that training reuses."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from petseg import postprocess
from petseg.checkpoint import (
    check_model_type,
    checkpoint_config,
    load_checkpoint,
    model_from_checkpoint,
)
from petseg.config import EvaluateConfig
from petseg.data.check import checked_names
from petseg.data.loading import ensure_dataset, make_loader, resolve_num_workers
from petseg.data.oxford_pet import OxfordPetDataset, breed_of, load_mask, species_of
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
            truths = [original_masks(seen_images + index) for index in range(len(probs))]
            score_at_original_size(original, probs, truths, threshold, largest_component)
            seen_images += len(probs)
    return Evaluation(
        scores=scores,
        loss=loss_sum / seen if loss_fn is not None and seen else None,
        original=original,
    )


def score_at_original_size(
    scores: SegmentationScores,
    probs: torch.Tensor,
    truths: list[torch.Tensor],
    threshold: float,
    largest_component: bool,
) -> None:
    """Resize each probability map (1, S, S) back to its image's size (bilinear), threshold it
    and score it against that image's (H, W) ground truth, as predict writes masks."""
    for prob, truth in zip(probs, truths, strict=True):
        full = F.interpolate(
            prob[None], size=tuple(truth.shape), mode="bilinear", align_corners=False
        )[0]
        mask = full[0] > threshold
        if largest_component:
            mask = postprocess.largest_component(mask)
        scores.update(mask[None], truth[None].to(prob.device) > 0)


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


def evaluate_checkpoint(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate the checkpoint at its own image size; print the scores, optionally write a
    gallery of the worst images and the scores as JSON. Returns the scores."""
    if config.gallery_path is not None and config.gallery <= 0:
        raise PetsegError(
            f"{config.gallery_path}: --gallery_path needs --gallery N (how many images)"
        )
    checkpoint = load_checkpoint(config.model_path)
    check_model_type(
        checkpoint_config(checkpoint).model.model_type, config.model_type, config.model_path
    )
    check_output_files(evaluation_outputs(config))
    device = resolve_device(config.device)
    model = compiled(
        inference_model(model_from_checkpoint(checkpoint, config.model_path).to(device)),
        config.compile,
    )
    dataset = split_for_evaluation(config, checkpoint)
    threshold = config.threshold
    if threshold is None:
        threshold = float(checkpoint.get("threshold", 0.5))
    precision = resolve_precision(config.precision, device)
    loader = make_loader(
        dataset,
        config.batch_size,
        shuffle=False,
        num_workers=resolve_num_workers(config.num_workers, device, decoded=False),
        device=device,
    )
    evaluation = evaluate_model(
        model,
        loader,
        device,
        threshold=threshold,
        tta=config.tta,
        desc=config.split,
        precision=precision,
        original_masks=functools.partial(original_mask, dataset),
        largest_component=config.largest_component,
    )
    results = scores_record(config, checkpoint, dataset, evaluation, threshold, precision)
    print(format_results(results))
    per_image_dice = evaluation.scores.per_image_dice()
    if config.gallery > 0:
        norm = checkpoint["normalization"]
        gallery = write_gallery(config, model, dataset, results, per_image_dice, device, norm)
        results["gallery"] = str(gallery)
    if config.output is not None:
        results["per_image_dice"] = dict(zip(dataset.names, per_image_dice, strict=True))
        atomic_write_text(config.output, json.dumps(results, indent=2) + "\n")
        print(f"wrote {config.output}")
    return results


def split_for_evaluation(config: EvaluateConfig, checkpoint: dict[str, Any]) -> OxfordPetDataset:
    """The split at the checkpoint's image size and normalization, with the trimap border."""
    ensure_dataset(config.data_path, config.mirror)
    size = checkpoint_config(checkpoint).recipe.image_size
    norm = checkpoint["normalization"]
    return OxfordPetDataset(
        config.data_path,
        config.split,
        eval_transform(size, norm["mean"], norm["std"]),
        names=checked_names(config.data_path, config.split, config.skip_bad),
        with_border=True,
    )


def original_mask(dataset: OxfordPetDataset, index: int) -> torch.Tensor:
    """The ground truth of the dataset's `index`-th image at its original size, (H, W) 0/1."""
    return torch.from_numpy(load_mask(dataset.mask_path(dataset.names[index])))


def scores_record(
    config: EvaluateConfig,
    checkpoint: dict[str, Any],
    dataset: OxfordPetDataset,
    evaluation: Evaluation,
    threshold: float,
    precision: str,
) -> dict[str, Any]:
    """The scores with what they were measured on and how."""
    assert evaluation.original is not None
    original = evaluation.original.summary()
    counts = evaluation.scores.counts
    return {
        **evaluation.scores.summary(),
        "original_resolution": {
            key: original[key] for key in ("dice", "dice_dataset", "iou", "pixel_accuracy")
        },
        "split": config.split,
        "image_size": checkpoint_config(checkpoint).recipe.image_size,
        "threshold": threshold,
        "tta": config.tta,
        "largest_component": config.largest_component,
        "precision": precision,
        "model_type": checkpoint_config(checkpoint).model.model_type,
        "epoch": checkpoint.get("epoch"),
        "model_path": str(config.model_path),
        "data_path": str(config.data_path),
        "per_species": groups_as_json(group_scores(dataset.names, counts, species_of)),
        "per_breed": groups_as_json(group_scores(dataset.names, counts, breed_of)),
    }


def write_gallery(
    config: EvaluateConfig,
    model: nn.Module,
    dataset: OxfordPetDataset,
    results: dict[str, Any],
    per_image_dice: list[float],
    device: torch.device,
    norm: dict[str, list[float]],
) -> Path:
    """Draw the worst images by per-image Dice as a contact sheet; returns where it went."""
    path = gallery_file(config)
    worst = worst_indices(per_image_dice, config.gallery)
    rows = gallery_rows(
        model,
        dataset,
        worst,
        per_image_dice,
        device,
        threshold=results["threshold"],
        tta=config.tta,
        norm=norm,
        largest_component=config.largest_component,
    )
    size = results["image_size"]
    title = (
        f"{len(rows)} worst of {results['num_images']} {config.split} images by per-image Dice\n"
        f"{config.model_path.name}: {results['model_type']}, epoch {results['epoch']}, "
        f"{size}x{size}, threshold {results['threshold']:.2f}{', flip TTA' if config.tta else ''}"
        f"{', largest region only' if config.largest_component else ''}"
    )
    atomic_write_bytes(path, render_gallery(rows, title))
    print(f"wrote {path}")
    return path


def evaluation_outputs(config: EvaluateConfig) -> list[Path]:
    """The files evaluate will write: the JSON and the gallery, where asked for."""
    gallery = gallery_file(config) if config.gallery > 0 else None
    return [path for path in (config.output, gallery) if path is not None]


def gallery_file(config: EvaluateConfig) -> Path:
    """--gallery_path, else beside --output or the checkpoint (default_gallery_path)."""
    return config.gallery_path or default_gallery_path(
        config.model_path, config.split, config.output
    )


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
