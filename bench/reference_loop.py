"""The reference runs of bench/time_to_dice.py: a standard plain-PyTorch training loop.

What a practitioner writes without petseg: a Dataset and a shuffling DataLoader, an optimizer
(and torch's OneCycleLR when the recipe has one), autocast and channels_last, one pass over the
training split per epoch, and the test split scored after every epoch with the clock stopped.
The data and the metric are petseg's own, so the runs compare with `petseg train`'s: the
official splits read by petseg.data (through its decoded-image cache, which gives the same
tensors as decoding the files), the lab report's augmentation (resize to 1.12x, random crop,
horizontal flip: albumentations, petseg's `--augment lab`), and the mean per-image Dice at
threshold 0.5 (petseg.evaluate.evaluate_model over petseg.metrics).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from petseg.data.cache import cached_images
from petseg.data.loading import make_loader, resolve_num_workers
from petseg.data.oxford_pet import OxfordPetDataset, Split, read_split_names
from petseg.data.transforms import eval_transform, train_resize_edge, train_transform
from petseg.evaluate import evaluate_model
from petseg.losses import LossFn
from petseg.runtime import autocast, cpu_has_native_bf16

AUGMENT = "lab"  # the lab report's resize to 1.12x, random crop and flip


@dataclass(frozen=True)
class Recipe:
    """One reference loop's training recipe."""

    loss: LossFn
    loss_name: str
    optimizer: str  # "adam" (no weight decay) or "adamw" (torch's default decay, 1e-2)
    learning_rate: float
    onecycle: bool  # torch's OneCycleLR (its defaults) peaking at learning_rate, else constant
    batch_size: int = 16

    def describe(self) -> str:
        schedule = "OneCycleLR" if self.onecycle else "constant"
        return (
            f"{self.loss_name}, {self.optimizer} {self.learning_rate:g} {schedule}, batch "
            f"{self.batch_size}, {AUGMENT} augmentation (resize 1.12x, random crop, flip)"
        )


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    seconds: float  # this epoch's training pass, data loading included, evaluation not
    loss: float  # mean training loss over the epoch's images
    dice: float  # test split, mean per-image Dice at threshold 0.5


def reference_precision(device: torch.device) -> str:
    """bf16 autocast on CUDA GPUs that have it and on CPUs with native bf16, else fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def split_set(data_dir: Path, split: Split, image_size: int) -> OxfordPetDataset:
    """The train split augmented as the lab report does, or another split resized for scoring,
    read from petseg's decoded-image cache (built on first use) where it can be written."""
    names = read_split_names(data_dir, split)
    training = split == "train"
    edge = train_resize_edge(image_size, AUGMENT) if training else image_size
    decoded = cached_images(data_dir, split, names, edge, report=False)
    resized = decoded is not None
    transform = (
        train_transform(image_size, augment=AUGMENT, resized_input=resized)
        if training
        else eval_transform(image_size, resized_input=resized)
    )
    return OxfordPetDataset(data_dir, split, transform, names=names, decoded=decoded)


def train_reference(
    model: nn.Module,
    recipe: Recipe,
    train_set: OxfordPetDataset,
    test_set: OxfordPetDataset,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
) -> Iterator[EpochResult]:
    """Train `model` for `epochs` epochs, yielding each epoch's training seconds and test Dice."""
    if len(train_set) < recipe.batch_size:
        raise SystemExit(
            f"time_to_dice: the train split has {len(train_set)} images, fewer than the "
            f"reference loops' batch of {recipe.batch_size}"
        )
    precision = reference_precision(device)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(recipe, model)
    train_loader = loader(train_set, recipe.batch_size, device, seed=seed)
    test_loader = loader(test_set, recipe.batch_size, device)
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.learning_rate, total_steps=epochs * len(train_loader)
        )
        if recipe.onecycle
        else None
    )
    for epoch in range(1, epochs + 1):
        train_set.set_augment_seed(seed * 100_003 + epoch)  # each epoch its own crops and flips
        started = clock(device)
        loss = train_epoch(model, train_loader, optimizer, scheduler, recipe.loss, precision)
        seconds = clock(device) - started
        evaluation = evaluate_model(model, test_loader, device, precision=precision, progress=False)
        yield EpochResult(epoch, seconds, loss, float(evaluation.scores.summary()["dice"]))


def make_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    return torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)


def loader(
    dataset: OxfordPetDataset, batch_size: int, device: torch.device, *, seed: int | None = None
) -> DataLoader:
    """Shuffled, whole batches only, when seeded (training); else in order (scoring). Workers
    as petseg chooses them: none on a CPU reading the cache, where they would take its cores."""
    workers = resolve_num_workers(None, device, decoded=dataset.decoded is not None)
    training = seed is not None
    generator = torch.Generator().manual_seed(seed) if training else None
    return make_loader(
        dataset,
        batch_size,
        shuffle=training,
        num_workers=workers,
        device=device,
        generator=generator,
        drop_last=training,
    )


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: LossFn,
    precision: str,
) -> float:
    """One pass over the loader; the mean loss over its images."""
    device = next(model.parameters()).device
    model.train()
    loss_sum, seen = 0.0, 0
    for images, masks in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(images)  # (N, 1, H, W)
        loss = loss_fn(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * images.shape[0]
        seen += images.shape[0]
    return loss_sum / max(seen, 1)


def clock(device: torch.device) -> float:
    """Seconds for timing, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
