"""What a training run resumes from: the model and optimizer, the epochs done (whole and in
part), the best score and the history CSV; a fresh run starts them from the config."""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petseg.checkpoint import (
    checkpoint_config,
    history_path,
    last_checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    without_training_state,
)
from petseg.config import TrainConfig, model_kwargs
from petseg.errors import PetsegError
from petseg.files import atomic_write_text
from petseg.models import build_model
from petseg.optimizers import build_optimizer

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "valid_loss",
    "valid_dice",
    "valid_dice_dataset",
    "valid_iou",
    "learning_rate",
    "seconds",
    "train_seconds",
)


@dataclass
class EpochProgress:
    """Training steps taken in an epoch; an interrupted epoch's checkpoint stores it."""

    batches: int = 0
    loss_sum: float = 0.0  # sum over images of the per-image mean loss
    images: int = 0
    interrupted: bool = False

    @property
    def mean_loss(self) -> float:
        """NaN when no step of the epoch had a finite loss."""
        return self.loss_sum / self.images if self.images else math.nan


@dataclass
class TrainState:
    """What resume restores besides the config."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    start_epoch: int  # epochs already completed
    best_dice: float
    history: list[dict[str, Any]]
    partial: EpochProgress = field(default_factory=EpochProgress)  # steps into the next epoch
    grad_scaler: dict[str, Any] | None = None  # fp16's loss scale, when the run used one
    resumed: bool = False  # restored from NAME.last.pt, not started afresh


def restore_or_start(config: TrainConfig, device: torch.device) -> TrainState:
    """Resume from NAME.last.pt when it exists (checkpoint.resume_source), else start from a
    freshly initialised model."""
    found = resume_checkpoint(config.model_path)
    if found is None:
        model = build_model(config.model.model_type, **model_kwargs(config.model)).to(device)
        optimizer = build_optimizer(model, config.recipe)
        return TrainState(model, optimizer, start_epoch=0, best_dice=float("-inf"), history=[])
    checkpoint, path = found
    stored = checkpoint_config(checkpoint)
    if (stored.model, stored.recipe.image_size) != (config.model, config.recipe.image_size):
        raise PetsegError(
            f"{path}: holds another model or image size than the config asks for; resolve the "
            "config over the checkpoint's (petseg.config.resolve_train_config)"
        )
    if "optimizer" not in checkpoint or "epoch" not in checkpoint:
        raise PetsegError(f"{path}: has no training state to resume from")
    model = model_from_checkpoint(checkpoint, path).to(device)
    optimizer = build_optimizer(model, config.recipe)
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError) as error:
        raise PetsegError(f"{path}: optimizer state does not fit ({error})") from None
    for group in optimizer.param_groups:  # the config's rate and decay win over the stored
        group["lr"] = config.recipe.learning_rate
        group["weight_decay"] = config.recipe.weight_decay
    epoch = int(checkpoint["epoch"])
    best_dice = float(checkpoint.get("best_dice", float("-inf")))
    state = TrainState(
        model,
        optimizer,
        epoch,
        restore_missing_best(config.model_path, checkpoint, best_dice),
        read_history(history_path(config.model_path), upto=epoch),
        EpochProgress(**checkpoint.get("partial_epoch", {})),
        checkpoint.get("grad_scaler"),
        resumed=True,
    )
    into_next = f" and {state.partial.batches} batches of epoch {epoch + 1}"
    print(
        f"resuming from {path}: epoch {epoch} done{into_next if state.partial.batches else ''} "
        f"of {config.recipe.epochs}, best valid Dice {state.best_dice:.4f}"
    )
    return state


def restore_missing_best(best_path: Path, last: dict[str, Any], best_dice: float) -> float:
    """The best Dice to go on from when resuming, first rewriting a missing best checkpoint
    from the last one when the last epoch was the best; if another epoch was, its weights are
    gone, and the next epoch saves a new best."""
    if best_path.exists() or not math.isfinite(best_dice):
        return best_dice
    last_dice = last.get("valid_scores", {}).get("dice")
    if last_dice is not None and last_dice >= best_dice:
        save_checkpoint(best_path, without_training_state(last))
        print(
            f"petseg: rewrote the missing {best_path} from epoch {last['epoch']}, its best",
            file=sys.stderr,
        )
        return best_dice
    print(
        f"petseg: {best_path} is missing and its best epoch is lost; the next epoch saves a "
        "new best",
        file=sys.stderr,
    )
    return float("-inf")


def resume_hint(model_path: Path) -> str:
    """What an interrupted run left. Checkpoints are only ever written whole (atomic rename):
    after Ctrl-C the last one holds every step taken, after a crash the last finished epoch."""
    last = last_checkpoint_path(model_path)
    if not last.exists():
        return "no epoch finished, nothing saved"
    checkpoint = load_checkpoint(last)
    held = f"epoch {checkpoint.get('epoch', '?')}"
    batches = checkpoint.get("partial_epoch", {}).get("batches", 0)
    if batches:
        held += f" and {batches} batches of the next"
    return f"{last} holds {held}; run the same command to resume"


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    """Rows of an earlier run's history up to epoch `upto` (the resumed checkpoint's epoch)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if row.get("epoch", "").isdigit() and int(row["epoch"]) <= upto]
