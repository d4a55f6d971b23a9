"""`petseg train`: training with per-epoch validation, checkpoints and resume.

The recipe (loss, optimizer, learning-rate schedule, augmentation, decision threshold) comes
from config.RecipeConfig. Beside the best checkpoint NAME.pt, every epoch rewrites NAME.last.pt,
NAME.history.csv and NAME.curves.png (loss, valid Dice and learning rate so far). After the
last epoch the best checkpoint gets the decision threshold that scores best on the valid split.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from petseg import distributed
from petseg.checkpoint import (
    checkpoint_model_kwargs,
    curves_path,
    history_path,
    last_checkpoint_path,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    resume_source,
    save_checkpoint,
    training_outputs,
    without_training_state,
)
from petseg.config import (
    DataConfig,
    ModelConfig,
    RecipeConfig,
    TrainConfig,
    resolve_batch_size,
    resolve_learning_rate,
    resolve_recipe,
    to_plain,
)
from petseg.data.cache import cached_images
from petseg.data.check import checked_names
from petseg.data.loading import SkipFirst, ensure_dataset, make_loader, resolve_num_workers
from petseg.data.oxford_pet import OxfordPetDataset, Split
from petseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_resize_edge,
    train_transform,
)
from petseg.divergence import counts_as_best, diverged_message, divergence
from petseg.errors import PetsegError
from petseg.evaluate import choose_threshold, evaluate_model, sweep_thresholds
from petseg.files import atomic_write_bytes, atomic_write_text, check_output_files
from petseg.losses import LossFn, deep_supervision_loss, get_loss
from petseg.models import build_model
from petseg.pictures import render_curves
from petseg.runtime import (
    autocast,
    compiled,
    resolve_device,
    resolve_precision,
    seed_everything,
    stop_requests_on_ctrl_c,
)
from petseg.schedules import learning_rate_at, resolve_warmup_epochs, schedule_points

OPTIMIZERS = ("adam", "adamw")
# Decision thresholds tried on the valid split after training (--tune_threshold).
THRESHOLD_CANDIDATES = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))  # 0.30 ... 0.70

# Non-finite steps in a row after which training stops instead of skipping on.
MAX_NONFINITE_STEPS = 5

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
    """What resume restores besides the weights."""

    model: nn.Module
    model_config: ModelConfig
    optimizer: torch.optim.Optimizer
    start_epoch: int  # epochs already completed
    best_dice: float
    history: list[dict[str, Any]]
    partial: EpochProgress = field(default_factory=EpochProgress)  # steps into the next epoch
    grad_scaler: dict[str, Any] | None = None  # fp16's loss scale, when the run used one
    batch_size: int | None = None  # the resumed run's, kept where --batch_size is not given
    learning_rate: float | None = None  # the peak rate the optimizer was built with


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    device: torch.device,
    desc: str,
    progress: bool = True,
    *,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    max_nonfinite: int = MAX_NONFINITE_STEPS,
    start: EpochProgress | None = None,
    stop: Callable[[], bool] = lambda: False,
    learning_rate: Callable[[int], float] | None = None,
    clip_grad: float = 0.0,
) -> EpochProgress:
    """One pass over the loader; returns the progress, whose mean_loss is per image.

    start: progress of an interrupted pass this one continues (the loader skips its batches).
    stop: polled before each batch; when it answers True the pass ends early, interrupted.

    A step whose loss or gradients are not finite is skipped with a warning (the weights stay
    as they were); `max_nonfinite` such steps in a row stop training with a PetsegError.
    precision: autocast for the forward pass ("fp32", "bf16", "fp16"); the loss stays fp32.
    scaler: the gradient scaler fp16 needs; it skips non-finite steps itself.
    learning_rate: the rate for the epoch's batch number (1-based), set before each step.
    clip_grad: when above 0, the gradients' global L2 norm is scaled down to at most this
    before each step (after unscaling under fp16).
    """
    model.train()
    done = replace(start) if start is not None else EpochProgress()
    nonfinite_in_a_row = 0
    bar = tqdm(
        loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=not progress
    )
    for images, masks in bar:
        if stop():
            done.interrupted = True
            break
        done.batches += 1
        batch = done.batches
        if learning_rate is not None:
            rate = learning_rate(batch)
            for group in optimizer.param_groups:
                group["lr"] = rate
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, precision):
            outputs = model(images)  # (N, 1, H, W) logits, or (logits, aux) with deep supervision
        logits, aux = outputs if isinstance(outputs, tuple) else (outputs, [])
        loss = deep_supervision_loss(loss_fn, logits.float(), aux, masks)
        optimizer.zero_grad(set_to_none=True)
        # backward runs even for a bad loss: under DDP every rank must join the gradient
        # all-reduce, after which a non-finite gradient anywhere is non-finite on every rank.
        (scaler.scale(loss) if scaler else loss).backward()
        finite = bool(torch.isfinite(loss)) and (scaler is not None or gradients_finite(model))
        if not finite:
            nonfinite_in_a_row += 1
            if progress:
                tqdm.write(f"{desc}: non-finite loss or gradients at batch {batch}; step skipped")
            if nonfinite_in_a_row >= max_nonfinite:
                raise PetsegError(
                    f"{desc}: loss or gradients non-finite for {nonfinite_in_a_row} batches in a "
                    "row; lower --learning-rate or use --precision fp32"
                )
            if scaler is None:
                continue
        else:
            nonfinite_in_a_row = 0
        if clip_grad > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if finite:
            done.loss_sum += loss.item() * images.shape[0]
            done.images += images.shape[0]
            bar.set_postfix(loss=f"{done.mean_loss:.4f}")
    return done


def time_left(epoch_seconds: list[float], epochs_left: int) -> str:
    """', about 2.5 h left' from the mean of epoch times; '' when no epoch is left or timed."""
    if epochs_left <= 0 or not epoch_seconds:
        return ""
    left = epochs_left * sum(epoch_seconds) / len(epoch_seconds)
    if left < 90:
        return f", about {max(left, 1):.0f} s left"
    if left < 90 * 60:
        return f", about {left / 60:.0f} min left"
    return f", about {left / 3600:.1f} h left"


def gradients_finite(model: nn.Module) -> bool:
    """Whether every gradient is finite, read from their norms: one reduction per tensor.
    (isfinite per element took 80 ms of CPU per ResNet34-UNet step, and seconds of spinning
    threads on a busy 2-core machine.) A norm that overflows, entries beyond about 1e19, also
    counts as non-finite."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    norms = torch.stack([torch.linalg.vector_norm(grad) for grad in grads])
    return bool(torch.isfinite(norms).all())


def fit(
    config: TrainConfig, *, model_type_given: bool = True, world: distributed.World | None = None
) -> dict[str, Any]:
    """Train per `config`, resuming when its model_path exists. Returns the final summary.

    model_type_given: whether the user chose the model type; when resuming without it, the
    checkpoint's type is used, and a conflicting explicit choice is an error.
    world: this process's place under torchrun (see petseg.distributed); default one process.
    """
    world = world or distributed.World(resolve_device(config.device))
    device = world.device
    seed_everything(config.seed)
    check_output_files(training_outputs(config.model_path))
    distributed.require_dataset(world, config.data.data_path)
    ensure_dataset(config.data.data_path, config.data.mirror)
    state = restore_or_start(config, device, model_type_given=model_type_given)
    distributed.check_same_start(world, state.start_epoch, config.model_path)
    model_type = state.model_config.model_type
    config = replace(  # a resumed run keeps its architecture
        config,
        model=state.model_config,
        recipe=resolve_recipe(config.recipe, model_type),
        batch_size=resolve_batch_size(config.batch_size or state.batch_size, model_type),
        learning_rate=state.learning_rate,
    )
    if state.start_epoch >= config.epochs:
        print(
            f"{config.model_path}: already trained for {state.start_epoch} epochs "
            f"(--epochs {config.epochs}); nothing to do"
        )
        return {"best_dice": state.best_dice, "epochs": state.start_epoch}

    size = config.data.image_size
    train_set = split_dataset(config.data, "train", world, augment=config.recipe.augment)
    valid_set = split_dataset(config.data, "valid", world)
    if config.batch_size > len(train_set):
        raise PetsegError(
            f"--batch_size {config.batch_size} is larger than the training split "
            f"({len(train_set)} images in {config.data.data_path})"
        )
    generator = torch.Generator()
    # Under torchrun each rank's share of a (seed, epoch) shuffle; alone, a shuffle drawn from
    # `generator`, reseeded per epoch. SkipFirst lets a resumed epoch start where it stopped.
    order = distributed.train_sampler(train_set, world, config.seed)
    if order is None:
        order = RandomSampler(train_set, generator=generator)
    sampler = SkipFirst(order)
    workers = resolve_num_workers(
        config.data.num_workers, device, decoded=train_set.decoded is not None
    )
    train_loader = make_loader(
        train_set,
        config.batch_size,
        shuffle=False,
        num_workers=workers,
        device=device,
        generator=generator,
        drop_last=len(order) > config.batch_size,
        sampler=sampler,
    )
    valid_loader = make_loader(
        valid_set,
        config.batch_size,
        shuffle=False,
        num_workers=resolve_num_workers(
            config.data.num_workers, device, decoded=valid_set.decoded is not None
        ),
        device=device,
        sampler=distributed.valid_sampler(valid_set, world),
    )
    loss_fn = get_loss(config.recipe.loss)
    steps_per_epoch = (
        len(order) // config.batch_size
        if len(order) > config.batch_size
        else math.ceil(len(order) / config.batch_size)
    )

    warmup_epochs = resolve_warmup_epochs(config.recipe.scheduler, config.recipe.warmup_epochs)
    warmup_steps = None if warmup_epochs is None else round(warmup_epochs * steps_per_epoch)

    def schedule(epoch: int) -> Callable[[int], float]:
        """The learning rate at each batch of `epoch`, from the global step."""
        return lambda batch: learning_rate_at(
            (epoch - 1) * steps_per_epoch + batch - 1,
            base_lr=config.learning_rate,
            total_steps=config.epochs * steps_per_epoch,
            scheduler=config.recipe.scheduler,
            warmup_steps=warmup_steps,
        )

    precision = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if scaler is not None and state.grad_scaler:
        scaler.load_state_dict(state.grad_scaler)
    if precision != "fp32" or device.type == "cuda":
        # Mixed-precision convolutions run fastest on NHWC; on a CPU in fp32 it gains nothing.
        state.model.to(memory_format=torch.channels_last)
    print(
        f"training {config.model.model_type} ({count_parameters(state.model) / 1e6:.1f} M "
        f"parameters) on {device.type} in {precision} at {size}x{size}: {len(train_set)} train / "
        f"{len(valid_set)} valid images, epochs {state.start_epoch + 1}..{config.epochs}"
    )
    if config.data.num_workers is None:
        print(f"data loading: {workers} worker processes (--num_workers auto)")
    print(f"recipe: {describe_recipe(config)}")
    if world.distributed:
        print(
            f"data parallel over {world.size} processes ({world.backend}): batch "
            f"{config.batch_size} per process, {config.batch_size * world.size} per step"
        )
    # state.model stays the module that is saved and validated: no `_orig_mod.` keys.
    train_model = compiled(distributed.wrap_model(state.model, world), config.compile)

    best_dice, history = state.best_dice, state.history

    def make_training_checkpoint(epoch: int, **extra: Any) -> dict[str, Any]:
        return make_checkpoint(
            state.model,
            model_type=config.model.model_type,
            model_kwargs=config.model.kwargs,
            image_size=size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            epoch=epoch,
            best_dice=best_dice,
            optimizer=state.optimizer.state_dict(),
            grad_scaler=scaler.state_dict() if scaler is not None else None,
            config={
                **to_plain(config),
                "world_size": world.size,
                "sync_batchnorm": world.sync_batchnorm,
            },
            **extra,
        )

    whole_epoch_seconds: list[float] = []  # this run's epochs, for the time-left estimate
    with stop_requests_on_ctrl_c(enabled=not world.distributed) as stop_requested:
        for epoch in range(state.start_epoch + 1, config.epochs + 1):
            # Shuffle order and augmentation depend on (seed, epoch) only, so a resumed run
            # sees the same data stream as an uninterrupted one; under torchrun, ranks augment
            # differently.
            epoch_seed = config.seed * 100_003 + epoch + world.rank * distributed.RANK_SEED_STRIDE
            sampler.set_epoch(epoch)
            generator.manual_seed(epoch_seed)
            train_set.set_augment_seed(epoch_seed)
            start = state.partial if epoch == state.start_epoch + 1 else EpochProgress()
            sampler.skip = start.batches * config.batch_size
            started = time.perf_counter()
            progress = train_one_epoch(
                train_model,
                train_loader,
                state.optimizer,
                loss_fn,
                device,
                desc=f"epoch {epoch}/{config.epochs}",
                progress=world.is_main,
                precision=precision,
                scaler=scaler,
                start=start,
                stop=stop_requested,
                learning_rate=schedule(epoch),
                clip_grad=config.recipe.clip_grad or 0.0,
            )
            if progress.interrupted:
                # Ctrl-C: keep the steps taken so far; the same command resumes after them.
                partial = {"batches": progress.batches, "loss_sum": progress.loss_sum,
                           "images": progress.images}  # fmt: skip
                save_checkpoint(
                    last_checkpoint_path(config.model_path),
                    make_training_checkpoint(epoch - 1, partial_epoch=partial),
                )
                raise KeyboardInterrupt
            train_seconds = time.perf_counter() - started
            train_loss = distributed.mean_over_ranks(progress.mean_loss, world)
            distributed.broadcast_buffers(state.model, world)
            evaluation = evaluate_model(
                state.model,
                valid_loader,
                device,
                loss_fn=loss_fn,
                desc=f"epoch {epoch}/{config.epochs} valid",
                progress=world.is_main,
                precision=precision,
            )
            evaluation = distributed.gather_evaluation(evaluation, len(valid_set), world)
            scores = evaluation.scores.summary()
            seconds = time.perf_counter() - started
            if start.batches == 0:  # a resumed part of an epoch would make the estimate short
                whole_epoch_seconds.append(seconds)
            diverged = divergence(train_loss, evaluation.loss, config.recipe.loss, state.model)
            if diverged:
                raise PetsegError(diverged_message(epoch, diverged, config.model_path))
            improved = counts_as_best(scores["dice"], evaluation.loss, best_dice)
            best_dice = scores["dice"] if improved else best_dice
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "valid_loss": evaluation.loss,
                    "valid_dice": scores["dice"],
                    "valid_dice_dataset": scores["dice_dataset"],
                    "valid_iou": scores["iou"],
                    "learning_rate": state.optimizer.param_groups[0]["lr"],
                    "seconds": seconds,
                    "train_seconds": train_seconds,
                }
            )
            checkpoint = make_training_checkpoint(epoch, valid_scores=scores)
            if world.is_main:
                # The last checkpoint goes last: a run stopped before it (a full disk, kill -9)
                # resumes from the previous epoch, and redoing this one rewrites all four files.
                if improved:
                    save_checkpoint(config.model_path, without_training_state(checkpoint))
                write_history(history_path(config.model_path), history)
                curves = render_curves(
                    history,
                    loss=config.recipe.loss,
                    learning_rates=schedule_points(
                        epoch * steps_per_epoch,
                        steps_per_epoch,
                        base_lr=config.learning_rate,
                        total_steps=config.epochs * steps_per_epoch,
                        scheduler=config.recipe.scheduler,
                        warmup_steps=warmup_steps,
                    ),
                )
                atomic_write_bytes(curves_path(config.model_path), curves)
                save_checkpoint(last_checkpoint_path(config.model_path), checkpoint)
            distributed.barrier(world)  # the files exist before any rank goes on
            tqdm.write(
                f"epoch {epoch}/{config.epochs}  train loss {train_loss:.4f}  "
                f"valid loss {evaluation.loss:.4f}  valid Dice {scores['dice']:.4f}"
                f"{'  (best, saved)' if improved else ''}  {seconds:.1f} s"
                f"{time_left(whole_epoch_seconds, config.epochs - epoch)}"
            )
            if stop_requested():  # Ctrl-C during validation: the epoch is saved whole
                raise KeyboardInterrupt
    if config.recipe.tune_threshold:
        if world.is_main:
            tune_checkpoint_threshold(
                config.model_path, valid_set, config.batch_size, device, precision
            )
        distributed.barrier(world)
    print(
        f"best valid Dice {best_dice:.4f} (mean of per-image Dice at {size}x{size}); "
        + written_files(config.model_path)
    )
    return {"best_dice": best_dice, "epochs": config.epochs, "history": history}


def split_dataset(
    data: DataConfig, split: Split, world: distributed.World, *, augment: str = "strong"
) -> OxfordPetDataset:
    """The train split (augmented at the `augment` level) or the valid split, checked, and read
    from the decoded-image cache unless data.cache is off. Cached or not, items are the same
    tensors.

    Under torchrun the first process of each node builds the cache while the others wait, then
    they all read it.
    """
    names = checked_names(data.data_path, split, data.skip_bad, report=world.is_main)
    training = split == "train"
    decoded = None
    if data.cache:
        edge = train_resize_edge(data.image_size, augment) if training else data.image_size
        cache = functools.partial(
            cached_images, data.data_path, split, names, edge, cache_dir=data.cache_dir
        )
        builds = world.local_rank == 0
        decoded = cache(report=world.is_main) if builds else None
        distributed.barrier(world)
        if not builds:
            decoded = cache(build=False, report=False)
    resized_input = decoded is not None
    transform = (
        train_transform(data.image_size, augment=augment, resized_input=resized_input)
        if training
        else eval_transform(data.image_size, resized_input=resized_input)
    )
    return OxfordPetDataset(data.data_path, split, transform, names=names, decoded=decoded)


def restore_or_start(
    config: TrainConfig, device: torch.device, *, model_type_given: bool
) -> TrainState:
    """Resume from NAME.last.pt when it exists (checkpoint.resume_source), else start afresh."""
    best_path = config.model_path
    resume_path = resume_source(best_path)
    if resume_path is None:
        model_type = config.model.model_type
        config = replace(
            config, learning_rate=resolve_learning_rate(config.learning_rate, model_type)
        )
        model = build_model(model_type, **config.model.kwargs).to(device)
        optimizer = build_optimizer(model, config)
        return TrainState(
            model,
            config.model,
            optimizer,
            start_epoch=0,
            best_dice=float("-inf"),
            history=[],
            learning_rate=config.learning_rate,
        )

    resume = load_checkpoint(resume_path)
    if model_type_given and resume["model_type"] != config.model.model_type:
        raise PetsegError(
            f"{resume_path}: holds a {resume['model_type']} model but --model_type "
            f"{config.model.model_type} was given; pick another --model_path or drop --model_type"
        )
    if "optimizer" not in resume or "epoch" not in resume:
        raise PetsegError(f"{resume_path}: has no training state to resume from")
    model = model_from_checkpoint(resume, resume_path).to(device)
    saved = resume.get("config", {})
    # the command line's rate wins, else the run's own, else (a checkpoint without a config)
    # the model type's default
    rate = config.learning_rate or saved.get("learning_rate")
    config = replace(config, learning_rate=resolve_learning_rate(rate, resume["model_type"]))
    optimizer = build_optimizer(model, config)
    try:
        optimizer.load_state_dict(resume["optimizer"])
    except (ValueError, KeyError) as error:
        raise PetsegError(f"{resume_path}: optimizer state does not fit ({error})") from None
    for group in optimizer.param_groups:  # the chosen rate and the command line's decay win
        group["lr"] = config.learning_rate
        group["weight_decay"] = optimizer.defaults["weight_decay"]
    best_dice = restore_missing_best(best_path, resume, float(resume.get("best_dice", "-inf")))
    history = read_history(history_path(best_path), upto=int(resume["epoch"]))
    partial = EpochProgress(**resume.get("partial_epoch", {}))
    into_next = (
        f" and {partial.batches} batches of epoch {resume['epoch'] + 1}" if partial.batches else ""
    )
    print(
        f"resuming from {resume_path}: epoch {resume['epoch']} done{into_next} of "
        f"{config.epochs}, best valid Dice {best_dice:.4f}"
    )
    model_config = ModelConfig(resume["model_type"], checkpoint_model_kwargs(resume))
    return TrainState(
        model,
        model_config,
        optimizer,
        int(resume["epoch"]),
        best_dice,
        history,
        partial,
        resume.get("grad_scaler"),
        saved.get("batch_size"),
        config.learning_rate,
    )


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (L2 penalty in the gradient) or AdamW (decoupled weight decay), one parameter group."""
    recipe = config.recipe
    if recipe.optimizer not in OPTIMIZERS:
        raise PetsegError(
            f"unknown optimizer {recipe.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    kind = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.learning_rate, weight_decay=recipe.weight_decay)


def describe_recipe(config: TrainConfig) -> str:
    """One line: loss, optimizer, schedule, augmentation, threshold choice."""
    recipe: RecipeConfig = config.recipe
    warmup_epochs = resolve_warmup_epochs(recipe.scheduler, recipe.warmup_epochs)
    warmup = (
        f", {warmup_epochs:g} warmup epochs"
        if warmup_epochs is not None and recipe.scheduler != "constant"
        else ""
    )
    return (
        f"loss {recipe.loss}, {recipe.optimizer} lr {config.learning_rate:g} "
        f"weight decay {recipe.weight_decay:g}, {recipe.scheduler} schedule{warmup}, "
        f"{recipe.augment} augmentation, batch {config.batch_size}, "
        + (f"gradient norm clipped to {recipe.clip_grad:g}, " if recipe.clip_grad else "")
        + "threshold "
        + ("tuned on valid" if recipe.tune_threshold else "0.5")
    )


def tune_checkpoint_threshold(
    model_path: Path,
    valid_set: OxfordPetDataset,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> float:
    """Store in the best checkpoint the threshold that maximises valid per-image Dice."""
    checkpoint = load_checkpoint(model_path)
    model = model_from_checkpoint(checkpoint, model_path).to(device)
    loader = make_loader(valid_set, batch_size, shuffle=False, num_workers=0, device=device)
    dice = sweep_thresholds(
        model, loader, device, THRESHOLD_CANDIDATES, precision=precision, desc="threshold"
    )
    threshold = choose_threshold(THRESHOLD_CANDIDATES, dice)
    checkpoint["threshold"] = threshold
    checkpoint["threshold_sweep"] = {
        "split": "valid",
        "thresholds": list(THRESHOLD_CANDIDATES),
        "dice": dice,
    }
    save_checkpoint(model_path, checkpoint)
    at_half = dice[THRESHOLD_CANDIDATES.index(0.5)]
    chosen = dice[THRESHOLD_CANDIDATES.index(threshold)]
    print(
        f"decision threshold {threshold:.2f} chosen on the valid split (per-image Dice "
        f"{chosen:.4f}, {at_half:.4f} at 0.50); stored in {model_path}"
    )
    return threshold


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


def written_files(model_path: Path) -> str:
    """'checkpoint X, last epoch Y, curves Z', naming only the files that exist."""
    files = (
        ("checkpoint", model_path),
        ("last epoch", last_checkpoint_path(model_path)),
        ("history", history_path(model_path)),
        ("curves", curves_path(model_path)),
    )
    return ", ".join(f"{label} {path}" for label, path in files if path.exists())


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


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
