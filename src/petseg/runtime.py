"""Seeding and device choice: the only code that touches process-wide state."""

from __future__ import annotations

import random

import numpy as np
import torch

from petseg.errors import PetsegError

DEVICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a user error."""
    if name not in DEVICES:
        raise PetsegError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PetsegError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    return torch.device(name)
