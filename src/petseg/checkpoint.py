"""Checkpoints: atomic save, pickle-free load, and rebuilding the model from the stored config.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(path, weights_only=True)``. It holds the run's resolved config once (model,
recipe and image size: petseg.config.TrainConfig), so ``evaluate``, ``predict`` and ``export``
need nothing else.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petseg import __version__
from petseg.config import TrainConfig, from_plain, model_kwargs, to_plain
from petseg.errors import PetsegError
from petseg.files import atomic_writer
from petseg.models import build_model

CHECKPOINT_FORMAT = "petseg-checkpoint"
# The one format this petseg writes and reads; a file of another is refused with what to do.
CHECKPOINT_VERSION = 6
REQUIRED_KEYS = ("config", "state_dict", "normalization")


def last_checkpoint_path(model_path: Path) -> Path:
    """The every-epoch checkpoint beside the best one: runs/r34.pt -> runs/r34.last.pt."""
    return model_path.with_name(f"{model_path.stem}.last{model_path.suffix or '.pt'}")


def history_path(model_path: Path) -> Path:
    """The per-epoch history beside the checkpoint: runs/r34.pt -> runs/r34.history.csv."""
    return model_path.with_name(f"{model_path.stem}.history.csv")


def curves_path(model_path: Path) -> Path:
    """The training curves beside the checkpoint: runs/r34.pt -> runs/r34.curves.png."""
    return model_path.with_name(f"{model_path.stem}.curves.png")


def make_checkpoint(
    model: nn.Module,
    config: TrainConfig,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    **extra: Any,
) -> dict[str, Any]:
    """The checkpoint dict: the run's config once, the weights, the input normalization, the
    decision threshold; `extra` holds training state (epoch, best_dice, optimizer...)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "petseg_version": __version__,
        "config": to_plain(config),
        "state_dict": model.state_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "threshold": 0.5,
        **extra,
    }


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically: the previous file at `path` survives any failure."""
    with atomic_writer(path) as handle:
        torch.save(checkpoint, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with pickle disabled and check it is a petseg checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise PetsegError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler refuses any global it does not know (code execution in a
        # crafted file); say which one. Other unpickling errors are plain corruption.
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:
            raise PetsegError(
                f"{path}: refused to load, it asks to import {unsafe.group(1)}, which could run "
                "code; petseg loads checkpoints with weights_only=True only"
            ) from None
        raise PetsegError(f"{path}: not a readable checkpoint, truncated or corrupt") from None
    except Exception as error:  # garbage bytes make the unpickler raise almost anything
        raise PetsegError(
            f"{path}: not a readable checkpoint, truncated or corrupt ({type(error).__name__})"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise PetsegError(f"{path}: not a petseg checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    version = checkpoint.get("version")
    if version != CHECKPOINT_VERSION:
        age = "a newer" if isinstance(version, int) and version > CHECKPOINT_VERSION else "an older"
        raise PetsegError(
            f"{path}: written by {age} petseg (checkpoint format {version}, this petseg reads "
            f"{CHECKPOINT_VERSION}); retrain the model with this petseg {__version__}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise PetsegError(f"{path}: petseg checkpoint lacks {', '.join(missing)}")
    try:
        checkpoint_config(checkpoint)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PetsegError(
            f"{path}: petseg checkpoint with an unreadable config ({error})"
        ) from None
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any]) -> TrainConfig:
    """The config the checkpoint's run was trained with."""
    return from_plain(checkpoint["config"])


def model_from_checkpoint(checkpoint: dict[str, Any], path: Path | None = None) -> nn.Module:
    """Rebuild the architecture from the stored config and load the weights (strictly)."""
    model_config = checkpoint_config(checkpoint).model
    where = f"{path}: " if path else ""
    failed = f"{where}cannot rebuild the {model_config.model_type} model from it"
    try:
        model = build_model(model_config.model_type, **model_kwargs(model_config))
    except (RuntimeError, TypeError, ValueError) as error:
        raise PetsegError(f"{failed} ({_first_line(error)})") from None
    state = checkpoint["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as error:
        # torch's first line says only "Error(s) in loading state_dict"; name the tensors
        mismatch = weights_mismatch(model.state_dict(), state) if isinstance(state, dict) else None
        raise PetsegError(f"{failed} ({mismatch or _first_line(error)})") from None
    return model


def newest_checkpoint(model_path: Path) -> tuple[dict[str, Any], Path] | None:
    """The newer of the best and the last checkpoint, with its path; None when neither exists.
    On equal epochs both hold the same state: the every-epoch file is named."""
    found = [
        (load_checkpoint(path), path)
        for path in (last_checkpoint_path(model_path), model_path)
        if path.exists()
    ]
    return max(found, key=lambda item: item[0].get("epoch", 0)) if found else None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200]


def weights_mismatch(
    expected: dict[str, torch.Tensor], saved: dict[str, Any], shown: int = 2
) -> str | None:
    """How saved weights fail to fit a model's state dict, naming a few tensors; None if they fit."""
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    reshaped = [
        f"{name} {tuple(saved[name].shape)} vs {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in saved
        and isinstance(saved[name], torch.Tensor)
        and saved[name].shape != tensor.shape
    ]
    parts = [
        f"{label} {len(names)}: {', '.join(names[:shown])}{', ...' if len(names) > shown else ''}"
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("saved shape vs model's", reshaped),
        )
        if names
    ]
    return f"weights do not fit: {'; '.join(parts)}" if parts else None


def check_model_type(stored: str, expected: str | None, path: Path) -> None:
    """A --model_type given alongside a model file must match the type `stored` in it (it is
    otherwise not needed)."""
    if expected is not None and stored != expected:
        raise PetsegError(
            f"{path}: holds a {stored} model, not {expected}; "
            "drop --model_type, the checkpoint says what it is"
        )
