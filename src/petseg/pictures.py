"""Pictures for people: error maps, overlays, cut-outs, the worst-case gallery, training curves.

Pixel pictures are (H, W, C) uint8 numpy arrays. matplotlib draws on its Agg canvas directly
(no pyplot, so no global backend or figure state); figures come back as PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

FALSE_POSITIVE_RGB = (235, 40, 40)  # red: predicted pet, is background
FALSE_NEGATIVE_RGB = (40, 110, 245)  # blue: pet the prediction missed
ERROR_MAP_DIMMING = 0.35  # correctly labelled pixels show the image at this brightness
TRUTH_BORDER_GREY = 128  # the trimap border in the gallery's ground truth (counted as pet)
OVERLAY_RGB = (0, 230, 90)
OVERLAY_ALPHA = 0.45


def error_map(
    preds: np.ndarray, targets: np.ndarray, image: np.ndarray | None = None
) -> np.ndarray:
    """(H, W, 3) uint8: false positives red, false negatives blue, other pixels the dimmed
    image (black without one). preds, targets: (H, W) binary masks; image: (H, W, 3) uint8.
    """
    preds, targets = preds.astype(bool), targets.astype(bool)
    if preds.shape != targets.shape:
        raise ValueError(f"preds {preds.shape} and targets {targets.shape} differ")
    if image is None:
        picture = np.zeros((*preds.shape, 3), dtype=np.uint8)
    else:
        picture = (image.astype(np.float32) * ERROR_MAP_DIMMING).round().astype(np.uint8)
    picture[preds & ~targets] = FALSE_POSITIVE_RGB
    picture[~preds & targets] = FALSE_NEGATIVE_RGB
    return picture


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = OVERLAY_RGB,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """The (H, W, 3) uint8 image with the pixels of the (H, W) mask tinted by `color`."""
    picture = image.copy()
    selected = mask.astype(bool)
    tinted = (1 - alpha) * image[selected].astype(np.float32) + alpha * np.array(color)
    picture[selected] = tinted.round().clip(0, 255).astype(np.uint8)
    return picture


def cutout(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA: the image's pixels, opaque on the mask, transparent elsewhere."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    alpha = np.where(mask.astype(bool), 255, 0).astype(np.uint8)
    return np.dstack([image[..., :3], alpha])


def to_uint8_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalized (3, H, W) tensor back to an (H, W, 3) uint8 picture."""
    mean_t = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    pixels = (image.cpu() * std_t + mean_t).mul(255).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(1, 2, 0).numpy()


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class GalleryRow:
    name: str
    dice: float
    image: np.ndarray  # (H, W, 3) uint8
    truth: np.ndarray  # (H, W) bool, border counted as pet
    pred: np.ndarray  # (H, W) bool
    border: np.ndarray | None = None  # (H, W) bool, drawn grey inside the ground truth


def truth_picture(truth: np.ndarray, border: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: pet white, background black, the trimap border grey."""
    grey = np.where(truth.astype(bool), 255, 0).astype(np.uint8)
    if border is not None:
        grey[border.astype(bool)] = TRUTH_BORDER_GREY
    return np.repeat(grey[..., None], 3, axis=2)


def render_gallery(rows: Sequence[GalleryRow], title: str) -> bytes:
    """PNG of a contact sheet: per row the image, ground truth, prediction and error map.

    title: one or two lines above the sheet; each row is labelled with its name and Dice.
    """
    if not rows:
        raise ValueError("a gallery needs at least one row")
    cell, label, header = 1.7, 0.3, 0.85  # inches: panel, row label below it, title area
    height = len(rows) * (cell + label) + header
    figure = Figure(figsize=(4 * cell + 0.2, height), dpi=100)
    axes = figure.subplots(len(rows), 4, squeeze=False)
    figure.suptitle(title, fontsize=8, y=1 - 0.08 / height, verticalalignment="top")
    headers = ("image", "ground truth (grey: border)", "prediction", "errors (red FP, blue FN)")
    for row_index, (row, row_axes) in enumerate(zip(rows, axes, strict=True)):
        panels = (
            row.image,
            truth_picture(row.truth, row.border),
            truth_picture(row.pred),
            error_map(row.pred, row.truth, row.image),
        )
        for ax, panel, column_header in zip(row_axes, panels, headers, strict=True):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row_index == 0:
                ax.set_title(column_header, fontsize=8)
        row_axes[0].set_xlabel(f"{row.name}  Dice {row.dice:.3f}", fontsize=8, loc="left")
    figure.subplots_adjust(
        left=0.1 / (4 * cell + 0.2),
        right=1 - 0.1 / (4 * cell + 0.2),
        bottom=label / height,
        top=1 - header / height,
        wspace=0.05,
        hspace=label / cell,
    )
    return _png_bytes(figure)


def _dice_limits(values: Sequence[float], span: float = 0.1) -> tuple[float, float]:
    """Y limits within [0, 1] around the finite values, at least `span` apart, so that a run
    of nearly equal Dice (one epoch, a plateau) is not magnified into noise."""
    finite = [value for value in values if math.isfinite(value)] or [0.0, 1.0]
    low, high = min(finite), max(finite)
    middle, half = (low + high) / 2, max(high - low, span) / 2 * 1.1
    low, high = max(0.0, middle - half), min(1.0, middle + half)
    if high - low < span:  # cut at 0 or at 1
        return (0.0, span) if low <= 0.0 else (1.0 - span, 1.0)
    return low, high


def _as_float(value: Any) -> float:
    """A history cell (a number, or text read back from the CSV) as a float; NaN when blank."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# The loss panel's title per --loss (petseg.losses.LOSSES)
LOSS_TITLES: dict[str, str] = {"bce": "BCE", "dice": "soft Dice", "bce_dice": "BCE + soft Dice"}


def render_curves(
    history: Sequence[Mapping[str, Any]],
    *,
    loss: str = "bce",
    learning_rates: Sequence[tuple[float, float]] = (),
    low_res_epochs: int = 0,
) -> bytes:
    """PNG of the training curves (curves_figure)."""
    return _png_bytes(
        curves_figure(
            history, loss=loss, learning_rates=learning_rates, low_res_epochs=low_res_epochs
        )
    )


def _loss_limits(
    epochs: Sequence[int],
    train_loss: Sequence[float],
    valid_loss: Sequence[float],
    low_res_epochs: int,
) -> tuple[float, float]:
    """The loss axis of a --progressive run: from 0 to a little above every loss but the
    valid losses of its half-size epochs."""
    full_size = [
        value for value, epoch in zip(valid_loss, epochs, strict=True) if epoch > low_res_epochs
    ]
    finite = [value for value in [*train_loss, *full_size] if math.isfinite(value)]
    return 0.0, 1.1 * max(finite, default=1.0)


def curves_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    loss: str = "bce",
    learning_rates: Sequence[tuple[float, float]] = (),
    low_res_epochs: int = 0,
) -> Figure:
    """The training curves: train and valid loss, valid Dice, learning rate.

    history: rows as `train.HISTORY_FIELDS` describes (numbers, or their text from the CSV).
    loss: the --loss trained with, named in the loss panel's title.
    learning_rates: (epoch, rate) points along the schedule (schedules.schedule_points); without
    them, each epoch's last rate from the history.
    low_res_epochs: how many first epochs trained at half size (--progressive). They are shaded,
    and the loss axis ends above the other losses: validated at full size, such an epoch's
    valid loss can be many times theirs (petseg.divergence) and would flatten the curves.
    """
    if not history:
        raise ValueError("no epochs to draw")
    epochs = [int(_as_float(row["epoch"])) for row in history]

    def column(key: str) -> list[float]:
        return [_as_float(row.get(key)) for row in history]

    marker = "o" if len(epochs) <= 30 else None
    figure = Figure(figsize=(9.6, 2.7), dpi=100, layout="constrained")
    loss_ax, dice_ax, lr_ax = figure.subplots(1, 3)
    loss_ax.plot(epochs, column("train_loss"), marker=marker, markersize=3, label="train")
    loss_ax.plot(epochs, column("valid_loss"), marker=marker, markersize=3, label="valid")
    loss_ax.set_title(f"{LOSS_TITLES.get(loss, loss)} loss per image", fontsize=9)
    if low_res_epochs:
        for ax in (loss_ax, dice_ax, lr_ax):
            label = "half size" if ax is loss_ax else None
            ax.axvspan(0.5, low_res_epochs + 0.5, color="0.92", zorder=0, label=label)
        limits = _loss_limits(epochs, column("train_loss"), column("valid_loss"), low_res_epochs)
        loss_ax.set_ylim(*limits)
    loss_ax.legend(fontsize=8)

    dice = column("valid_dice")
    dice_ax.plot(epochs, dice, marker=marker, markersize=3, label="mean per image")
    dice_ax.plot(
        epochs, column("valid_dice_dataset"), marker=marker, markersize=3, linestyle="--",
        label="dataset",
    )  # fmt: skip
    finite = [(value, epoch) for value, epoch in zip(dice, epochs, strict=True) if value == value]
    if finite:
        best = max(value for value, _ in finite)
        best_epoch = next(epoch for value, epoch in finite if value == best)  # as training saves
        dice_ax.plot([best_epoch], [best], marker="*", markersize=10, color="black", linestyle="")
        dice_ax.set_title(f"valid Dice (best {best:.3f}, epoch {best_epoch})", fontsize=9)
    else:
        dice_ax.set_title("valid Dice", fontsize=9)
    dice_ax.set_ylim(*_dice_limits(dice + column("valid_dice_dataset")))
    dice_ax.legend(fontsize=8)

    if learning_rates:
        positions, rates = zip(*learning_rates, strict=True)
        lr_ax.plot(positions, rates, color="tab:gray")
        lr_ax.set_title("learning rate per step", fontsize=9)
    else:
        lr_ax.plot(epochs, column("learning_rate"), marker=marker, markersize=3, color="tab:gray")
        lr_ax.set_title("learning rate", fontsize=9)
    lr_ax.set_ylim(bottom=0)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (loss_ax, dice_ax):
        ax.ticklabel_format(axis="y", useOffset=False)  # no "1e-6+9.172e-1" over close values
    for ax in (loss_ax, dice_ax, lr_ax):
        # from 0 to half an epoch past the last: a single epoch sits mid-axis, not on a
        # 0.95-1.05 stretch
        ax.set_xlim(0, max(epochs) + 0.5)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return figure
