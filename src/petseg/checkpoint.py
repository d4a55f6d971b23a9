"""Checkpoints: atomic save, pickle-free load, and rebuilding the model from the stored config.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(path, weights_only=True)``. It holds the run's resolved config once (model,
recipe and image size: petseg.config.TrainConfig), so ``evaluate``, ``predict`` and ``export``
need nothing else.
"""

from __future__ import annotations

import contextlib
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
# What only resuming needs; the best checkpoint goes without (without_training_state).
TRAINING_STATE_KEYS = ("optimizer", "grad_scaler", "partial_epoch")


def last_checkpoint_path(model_path: Path) -> Path:
    """The every-epoch checkpoint beside the best one: runs/r34.pt -> runs/r34.last.pt."""
    return model_path.with_name(f"{model_path.stem}.last{model_path.suffix or '.pt'}")


def history_path(model_path: Path) -> Path:
    """The per-epoch history beside the checkpoint: runs/r34.pt -> runs/r34.history.csv."""
    return model_path.with_name(f"{model_path.stem}.history.csv")


def curves_path(model_path: Path) -> Path:
    """The training curves beside the checkpoint: runs/r34.pt -> runs/r34.curves.png."""
    return model_path.with_name(f"{model_path.stem}.curves.png")


def training_outputs(model_path: Path) -> list[Path]:
    """Every file a training run writes: best and last checkpoints, history, curves."""
    return [
        model_path,
        last_checkpoint_path(model_path),
        history_path(model_path),
        curves_path(model_path),
    ]


def resume_source(model_path: Path) -> Path | None:
    """The checkpoint a training run on `model_path` resumes from: NAME.last.pt, the one with
    the optimizer state; None for a fresh start. A best checkpoint without it is refused rather
    than trained over, which would replace the user's model."""
    last = last_checkpoint_path(model_path)
    if last.exists():
        return last
    if model_path.exists():
        raise PetsegError(
            f"{model_path}: exists, but {last.name}, which training resumes from, does not (the "
            "best checkpoint keeps no optimizer state); choose another --model_path to train a "
            "new model"
        )
    return None


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
    """Write atomically: the previous file at `path` survives any failure. Weights that are not
    all finite are never written: such a model predicts nothing useful, and a diverged run must
    not replace a good file."""
    bad = nonfinite_count(checkpoint.get("state_dict", {}))
    if bad:
        raise PetsegError(
            f"{path}: not written, the model has {bad:,} non-finite weights (NaN or inf); "
            "training diverged, lower --learning-rate"
        )
    with atomic_writer(path) as handle:
        torch.save(checkpoint, handle)


def without_training_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint less what only resuming needs (optimizer and scaler state, the progress
    of an interrupted epoch): the best checkpoint, about a third of the every-epoch one's size
    with Adam."""
    return {key: value for key, value in checkpoint.items() if key not in TRAINING_STATE_KEYS}


def nonfinite_count(state_dict: dict[str, Any]) -> int:
    """How many entries of the floating-point tensors in `state_dict` are NaN or infinite."""
    return sum(
        int((~torch.isfinite(tensor)).sum())
        for tensor in state_dict.values()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with pickle disabled and check it is a petseg checkpoint with finite weights."""
    path = Path(path)
    if path.is_dir():
        raise PetsegError(f"{path}: is a folder, not a checkpoint{_checkpoints_in(path)}")
    if not path.is_file():
        raise PetsegError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # garbage bytes make the unpickler raise almost anything
        raise unreadable_checkpoint(path, error) from None
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
    bad = (
        nonfinite_count(checkpoint["state_dict"])
        if isinstance(checkpoint["state_dict"], dict)
        else 0
    )
    if bad:
        raise PetsegError(
            f"{path}: holds {bad:,} non-finite weights (NaN or inf), the model of a diverged "
            "run; use another checkpoint"
        )
    return checkpoint


def unreadable_checkpoint(path: Path, error: Exception) -> PetsegError:
    """Why torch.load(weights_only=True) refused `path`, in one line."""
    # The weights-only unpickler refuses any global it does not know, the way a crafted file
    # runs code ("Unsupported global: GLOBAL posix.system", "Trying to load unsupported GLOBAL
    # posix.system whose module posix is blocked", depending on the torch version).
    unsafe = re.search(r"\bGLOBAL\s+([\w.]+)", str(error))
    if unsafe:
        return PetsegError(
            f"{path}: refused to load: the file asks to run code when loaded (it imports "
            f"{unsafe.group(1)}); petseg loads checkpoints with weights_only=True only, so the "
            "code did not run"
        )
    if _is_onnx(path):
        return PetsegError(
            f"{path}: is an ONNX model, not a checkpoint; this command needs the .pt checkpoint "
            "it was exported from (petseg predict runs .onnx files)"
        )
    detail = f" ({type(error).__name__})" if not isinstance(error, pickle.UnpicklingError) else ""
    return PetsegError(f"{path}: not a readable checkpoint, truncated or corrupt{detail}")


def _is_onnx(path: Path) -> bool:
    """By name, or by its first byte: an ONNX file is a protobuf starting with its ir_version
    field (0x08); a checkpoint is a zip (P) or an old-style pickle (0x80)."""
    if path.suffix.lower() == ".onnx":
        return True
    with contextlib.suppress(OSError), path.open("rb") as handle:
        return handle.read(1) == b"\x08"
    return False


def _checkpoints_in(folder: Path) -> str:
    """'; it holds a.pt, b.pt' (a few of them), or a hint when it holds none."""
    with contextlib.suppress(OSError):
        names = sorted(entry.name for entry in folder.glob("*.pt"))
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            return f"; pass one of its checkpoint files ({shown})"
    return "; pass a checkpoint file (NAME.pt)"


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


def resume_checkpoint(model_path: Path) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint a training run on `model_path` resumes from, loaded, and its path; None
    for a fresh start (see resume_source)."""
    source = resume_source(model_path)
    return None if source is None else (load_checkpoint(source), source)


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
