"""`petseg train`: fit() and its steps, one epoch of optimizer steps, validation each epoch.

The config comes resolved (petseg.config.resolve_train_config): model, recipe and image size
are fixed before training starts. Beside the best checkpoint NAME.pt every epoch rewrites
NAME.last.pt, NAME.history.csv and NAME.curves.png; petseg.train_state reads them back to resume.
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from petseg import distributed
from petseg.budget import (
    PROBE_STEPS,
    PROBE_VALID_BATCHES,
    WARMUP_STEPS,
    EpochCost,
    StepClock,
    budget_line,
    choose_epochs,
    duration_flag,
    estimate_line,
    estimate_plan,
    format_duration,
    plural,
)
from petseg.checkpoint import (
    checkpoint_config,
    curves_path,
    history_path,
    last_checkpoint_path,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    training_outputs,
    without_training_state,
)
from petseg.config import (
    PRESETS,
    DataConfig,
    RecipeConfig,
    TrainConfig,
    default_budget_applies,
    resolve_train_config,
    train_model_path,
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
from petseg.files import atomic_write_bytes, check_output_files, probe_folder
from petseg.losses import LossFn, deep_supervision_loss, get_loss
from petseg.optimizers import clip_gradients
from petseg.pictures import render_curves
from petseg.runtime import (
    autocast,
    compiled,
    preserved_random_state,
    resolve_device,
    resolve_precision,
    seed_everything,
    stop_requests_on_ctrl_c,
)
from petseg.schedules import learning_rate_at, resolve_warmup_epochs, schedule_points
from petseg.train_state import (
    HISTORY_FIELDS,
    EpochProgress,
    TrainState,
    restore_or_start,
    write_history,
)

# How much --progressive's first epochs downscale their batches.
LOW_RES_FACTOR = 2
# Non-finite steps in a row after which training stops instead of skipping on.
MAX_NONFINITE_STEPS = 5
# Decision thresholds tried on the valid split after training (--tune_threshold).
THRESHOLD_CANDIDATES = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))  # 0.30 ... 0.70


@dataclass
class TrainStep:
    """What each optimizer step uses."""

    model: nn.Module  # the module that runs forward: possibly compiled or DDP-wrapped
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    device: torch.device
    precision: str = "fp32"  # autocast for the forward pass; the loss stays fp32
    scaler: torch.amp.GradScaler | None = None  # fp16's; it skips non-finite steps itself
    clip_grad: float = 0.0  # above 0: the gradients' global L2 norm is scaled down to this
    max_nonfinite: int = MAX_NONFINITE_STEPS  # non-finite steps in a row that stop training
    progress: bool = True  # show a progress bar


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each batch, a pure function of the global step (petseg.schedules)."""

    base_lr: float
    scheduler: str
    epochs: int
    steps_per_epoch: int
    warmup_steps: int | None

    def rate(self, epoch: int, batch: int) -> float:
        """The rate of batch `batch` (1-based) of epoch `epoch` (1-based)."""
        return learning_rate_at(
            (epoch - 1) * self.steps_per_epoch + batch - 1,
            base_lr=self.base_lr,
            total_steps=self.epochs * self.steps_per_epoch,
            scheduler=self.scheduler,
            warmup_steps=self.warmup_steps,
        )

    def points(self, epochs: int) -> list[tuple[float, float]]:
        """(epoch, rate) points of the first `epochs` epochs' curve, for the curves plot."""
        return schedule_points(
            epochs * self.steps_per_epoch,
            self.steps_per_epoch,
            base_lr=self.base_lr,
            total_steps=self.epochs * self.steps_per_epoch,
            scheduler=self.scheduler,
            warmup_steps=self.warmup_steps,
        )


@dataclass
class TrainData:
    train_set: OxfordPetDataset
    valid_set: OxfordPetDataset
    train_loader: DataLoader
    valid_loader: DataLoader
    sampler: SkipFirst  # the epoch's shuffle, less the batches a resumed epoch already took
    generator: torch.Generator  # reseeded each epoch: the shuffle of a single process
    workers: int
    steps_per_epoch: int


@dataclass
class Run:
    """One training run's parts, built once by fit."""

    config: TrainConfig
    world: distributed.World
    state: TrainState
    data: TrainData
    step: TrainStep
    schedule: Schedule
    planned: EpochCost  # what an epoch costs, as far as measured before epoch 1
    epoch_seconds: list[float] = field(default_factory=list)  # whole epochs, for time left


def config_from_flags(flags: dict[str, Any]) -> TrainConfig:
    """The run's config from the flags given: over the config of the run it resumes (its
    NAME.last.pt exists), else over the model type's preset, with a time budget on a CPU when
    neither --epochs nor --time_budget is given (said on stderr)."""
    found = resume_checkpoint(train_model_path(flags))
    if found is not None:
        checkpoint, path = found
        return resolve_train_config(flags, checkpoint_config(checkpoint), path)
    on_cpu = resolve_device(flags.get("device") or "auto").type == "cpu"
    config = resolve_train_config(flags, on_cpu=on_cpu)
    # Before torchrun's process group exists: only the first process says it.
    if default_budget_applies(flags, on_cpu) and os.environ.get("RANK", "0") == "0":
        print(
            f"petseg train: on a CPU without --epochs or --time_budget: time budget "
            f"{duration_flag(config.time_budget_s or 0)} (at most {config.recipe.epochs} epochs); "
            "set --time_budget DURATION or --epochs N to change it",
            file=sys.stderr,
        )
    return config


def fit(
    config: TrainConfig,
    *,
    world: distributed.World | None = None,
    short_run: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train per `config`, resuming when its model_path exists. Returns the final summary.

    world: this process's place under torchrun (see petseg.distributed); default one process.
    short_run: the same run with its preset's short-run recipe, for a new run whose time budget
    chooses between the two (config.short_run auto; petseg.config.short_run_variant).
    """
    run_started = time.perf_counter()  # a time budget counts from here
    world = world or distributed.World(resolve_device(config.device))
    seed_everything(config.seed)
    prepare_folders_and_data(config, world)
    state = restore_or_start(config, world.device)
    distributed.check_same_start(world, state.start_epoch, config.model_path)
    if state.start_epoch >= config.recipe.epochs:
        print(
            f"{config.model_path}: already trained for {state.start_epoch} epochs (--epochs "
            f"{config.recipe.epochs}); nothing to do"
        )
        return {"best_dice": state.best_dice, "epochs": state.start_epoch}
    run = plan_epochs(start_run(config, world, state), run_started)
    if run.config.short_run == "auto":
        run = settle_short_run(run, short_run, run_started)
    announce(run)
    with stop_requests_on_ctrl_c(enabled=not world.distributed) as stop_requested:
        for epoch in range(run.state.start_epoch + 1, run.config.recipe.epochs + 1):
            started = time.perf_counter()
            progress = train_epoch(run, epoch, stop_requested)
            if progress.interrupted:
                # Ctrl-C: keep the steps taken so far; the same command resumes after them.
                save_interrupted(run, epoch, progress)
                raise KeyboardInterrupt
            row, scores = validate(run, epoch, progress, started)
            record_epoch(run, epoch, row, scores)
            if stop_requested():  # Ctrl-C during validation: the epoch is saved whole
                raise KeyboardInterrupt
    return finish(run)


def start_run(
    config: TrainConfig, world: distributed.World, state: TrainState | None = None
) -> Run:
    """The run's parts: the model and optimizer (`state`, else restored or new and seeded), the
    loaders, the step, the schedule, and the validation's time for the estimates."""
    if state is None:
        seed_everything(config.seed)
        state = restore_or_start(config, world.device)
    data = make_data(config, world)
    step = make_train_step(config, state, world)
    schedule = make_schedule(config.recipe, data.steps_per_epoch)
    planned = EpochCost(0.0, data.steps_per_epoch, time_validation(state.model, data, step))
    return Run(config, world, state, data, step, schedule, planned)


def settle_short_run(run: Run, short_run: TrainConfig | None, started: float) -> Run:
    """A time budget run with --short_run auto, its epochs chosen for the full recipe: when
    they are no more than the short-run recipe's limit, the run starts again with that recipe
    (a better model in the same time, docs/experiments.md) and chooses its epochs anew; else
    it keeps the full recipe."""
    preset = PRESETS[run.config.model.model_type].short_run
    epochs = run.config.recipe.epochs
    if short_run is None or preset is None or epochs > preset.max_epochs:
        return replace(run, config=replace(run.config, short_run="off"))
    if run.world.is_main:
        print(
            f"short run: {plural(epochs, 'epoch')} of the full recipe fit the budget (at most "
            f"{preset.max_epochs}), so the short-run recipe trains instead (--short_run off "
            "keeps the full one)"
        )
    return plan_epochs(start_run(short_run, run.world), started)


def prepare_folders_and_data(config: TrainConfig, world: distributed.World) -> None:
    """Every output writable before any work, and the dataset there."""
    check_output_files(training_outputs(config.model_path))
    distributed.require_dataset(world, config.data.data_path)
    ensure_dataset(config.data.data_path, config.data.mirror)


def make_data(config: TrainConfig, world: distributed.World) -> TrainData:
    """The train split (shuffled per (seed, epoch), augmented) and the valid split, as loaders."""
    recipe, device = config.recipe, world.device
    train_set = split_dataset(config.data, "train", world, recipe.image_size, recipe.augment)
    valid_set = split_dataset(config.data, "valid", world, recipe.image_size)
    if recipe.batch_size > len(train_set):
        raise PetsegError(
            f"--batch_size {recipe.batch_size} is larger than the training split "
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
    whole_batches = len(order) > recipe.batch_size
    train_loader = make_loader(
        train_set, recipe.batch_size, shuffle=False, num_workers=workers, device=device,
        generator=generator, drop_last=whole_batches, sampler=sampler,
    )  # fmt: skip
    valid_workers = resolve_num_workers(
        config.data.num_workers, device, decoded=valid_set.decoded is not None
    )
    valid_loader = make_loader(
        valid_set, recipe.batch_size, shuffle=False, num_workers=valid_workers, device=device,
        sampler=distributed.valid_sampler(valid_set, world),
    )  # fmt: skip
    steps = len(order) // recipe.batch_size if whole_batches else 1
    return TrainData(
        train_set, valid_set, train_loader, valid_loader, sampler, generator, workers, steps
    )


def split_dataset(
    data: DataConfig, split: Split, world: distributed.World, size: int, augment: str = "strong"
) -> OxfordPetDataset:
    """The train split (augmented at the `augment` level) or the valid split at `size`, checked,
    and read from the decoded-image cache unless data.cache is off. Cached or not, items are
    the same tensors.

    Under torchrun the first process of each node builds the cache while the others wait, then
    they all read it.
    """
    names = checked_names(data.data_path, split, data.skip_bad, report=world.is_main)
    training = split == "train"
    decoded = None
    if data.cache:
        edge = train_resize_edge(size, augment) if training else size
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
        train_transform(size, augment=augment, resized_input=resized_input)
        if training
        else eval_transform(size, resized_input=resized_input)
    )
    return OxfordPetDataset(data.data_path, split, transform, names=names, decoded=decoded)


def make_train_step(config: TrainConfig, state: TrainState, world: distributed.World) -> TrainStep:
    """The loss, the precision (with fp16's gradient scaler) and the module that trains."""
    device = world.device
    precision = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if scaler is not None and state.grad_scaler:
        scaler.load_state_dict(state.grad_scaler)
    if precision != "fp32" or device.type == "cuda":
        # Mixed-precision convolutions run fastest on NHWC; on a CPU in fp32 it gains nothing.
        state.model.to(memory_format=torch.channels_last)
    # state.model stays the module that is saved and validated: no `_orig_mod.` keys.
    train_model = compiled(distributed.wrap_model(state.model, world), config.compile)
    return TrainStep(
        train_model,
        state.optimizer,
        get_loss(config.recipe.loss),
        device,
        precision=precision,
        scaler=scaler,
        clip_grad=config.recipe.clip_grad,
        progress=world.is_main,
    )


def make_schedule(recipe: RecipeConfig, steps_per_epoch: int) -> Schedule:
    warmup_epochs = resolve_warmup_epochs(recipe.scheduler, recipe.warmup_epochs)
    warmup_steps = None if warmup_epochs is None else round(warmup_epochs * steps_per_epoch)
    return Schedule(
        recipe.learning_rate, recipe.scheduler, recipe.epochs, steps_per_epoch, warmup_steps
    )


def plan_epochs(run: Run, started: float) -> Run:
    """The run with its epochs chosen to fit its time budget (a new run with one), said in a
    line; a resumed run keeps the epochs it chose. A run with --progressive epochs left times
    its steps at both sizes here, for its estimates."""
    config = run.config
    budget_s = config.time_budget_s
    if budget_s is None or run.state.resumed:
        if budget_s is not None and run.world.is_main:
            print(
                f"time budget {duration_flag(budget_s)}: keeping the "
                f"{plural(config.recipe.epochs, 'epoch')} chosen when the run started"
            )
        # The live estimate times epoch 1's steps: at half size, it needs the full size's too.
        low_res_left = config.recipe.low_res_epochs > run.state.start_epoch
        return replace(run, planned=measure_epoch(run, files=False)) if low_res_left else run
    if run.world.is_main:
        print(f"time budget {duration_flag(budget_s)}: timing a few steps to choose the epochs")
    cost = measure_epoch(run)
    # After the epochs: a threshold sweep, about a validation's time.
    after_s = cost.valid_s if config.recipe.tune_threshold else 0.0
    other_s = distributed.mean_over_ranks(time.perf_counter() - started + after_s, run.world)
    cap = config.recipe.epochs
    progressive = config.recipe.progressive
    epochs = choose_epochs(budget_s, cost, cap, other_s, progressive)
    if run.world.is_main:
        low_size = config.recipe.image_size // LOW_RES_FACTOR
        print(budget_line(budget_s, epochs, cap, cost, other_s, (progressive, low_size)))
    chosen = replace(config, recipe=replace(config.recipe, epochs=epochs))
    schedule = make_schedule(chosen.recipe, run.data.steps_per_epoch)
    return replace(run, config=chosen, schedule=schedule, planned=cost)


def measure_epoch(run: Run, files: bool = True) -> EpochCost:
    """An epoch's cost: training steps (at both sizes with --progressive) and, with `files`, an
    epoch's files, timed on copies of the model and the optimizer, with every random state put
    back after, so that the run then trains exactly as it would have unmeasured. Under
    torchrun, the processes' mean."""
    model, optimizer = copy.deepcopy((run.state.model, run.state.optimizer))
    scaler = torch.amp.GradScaler(run.world.device.type) if run.step.scaler is not None else None
    wrapped = compiled(distributed.wrap_model(model, run.world), run.config.compile)
    step = replace(run.step, model=wrapped, optimizer=optimizer, scaler=scaler, progress=False)
    probe_state = TrainState(model, optimizer, 0, float("-inf"), [])
    probe = replace(run, step=step, state=probe_state)
    steps = run.data.steps_per_epoch
    with preserved_random_state():
        step_s, timed = time_training_steps(step, run.data.train_loader, steps)
        low_res_step_s = (
            time_training_steps(step, run.data.train_loader, steps, LOW_RES_FACTOR)[0]
            if run.config.recipe.progressive > 0
            else None
        )
        save_s = time_epoch_files(probe) if files and run.world.is_main else 0.0
    return EpochCost(
        distributed.mean_over_ranks(step_s, run.world),
        steps,
        distributed.mean_over_ranks(run.planned.valid_s, run.world),
        distributed.mean_over_ranks(save_s, run.world) * run.world.size,  # rank 0's alone
        timed,
        None if low_res_step_s is None else distributed.mean_over_ranks(low_res_step_s, run.world),
    )


def time_training_steps(
    step: TrainStep, loader: DataLoader, steps: int, downscale: int = 1
) -> tuple[float, int]:
    """Seconds per training step (its batches downscaled by `downscale`) after WARMUP_STEPS
    untimed ones, over up to PROBE_STEPS steps (fewer in a shorter epoch); and how many were
    timed."""
    untimed = max(0, min(WARMUP_STEPS, steps - 1))
    timed = max(1, min(PROBE_STEPS, steps - untimed))
    clock = StepClock(untimed, timed)
    step.model.train()
    step_s = 0.0
    for images, masks in itertools.islice(loader, untimed + timed):
        _, finite = forward_backward(step, images, masks, downscale)
        if finite or step.scaler is not None:  # as train_one_epoch: skip a non-finite step
            optimizer_step(step)
        synchronize(step.device)
        step_s = clock.tick() or step_s
    return step_s, timed


def time_epoch_files(probe: Run) -> float:
    """Seconds to write an epoch's files (best and last checkpoints, history, curves), written
    by the code that writes them into a temporary folder beside the model."""
    model_path = probe.config.model_path
    with probe_folder(model_path) as folder:
        config = replace(probe.config, model_path=Path(folder) / model_path.name)
        probe.state.history.append({**dict.fromkeys(HISTORY_FIELDS, 1.0), "epoch": 1})
        files = replace(probe, config=config)
        started = time.perf_counter()
        save_epoch_files(files, 1, training_checkpoint(files, 1), improved=True)
        return time.perf_counter() - started


def time_validation(model: nn.Module, data: TrainData, step: TrainStep) -> float:
    """Seconds to validate once, from 1 + PROBE_VALID_BATCHES batches of the valid split (the
    first untimed unless it is the only one). Validating leaves the model as it was."""
    marks: list[float] = []
    batches = min(len(data.valid_loader), 1 + PROBE_VALID_BATCHES)

    def marked() -> Iterator[Any]:
        for batch in itertools.islice(data.valid_loader, batches):
            marks.append(time.perf_counter())  # batch loaded: the one before it is done
            yield batch

    evaluate_model(
        model, marked(), step.device, loss_fn=step.loss_fn, progress=False, precision=step.precision
    )
    synchronize(step.device)
    timed = marks[1:] or marks
    per_batch = (time.perf_counter() - timed[0]) / len(timed) if timed else 0.0
    return per_batch * len(data.valid_loader)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock reading includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def announce(run: Run) -> None:
    """What trains, where, on what, and with which recipe."""
    config, state, data, world = run.config, run.state, run.data, run.world
    size = config.recipe.image_size
    print(
        f"training {config.model.model_type} ({count_parameters(state.model) / 1e6:.1f} M "
        f"parameters) on {world.device.type} in {run.step.precision} at {size}x{size}: "
        f"{len(data.train_set)} train / {len(data.valid_set)} valid images, epochs "
        f"{state.start_epoch + 1}..{config.recipe.epochs}"
    )
    if config.data.num_workers is None:
        print(f"data loading: {data.workers} worker processes (--num_workers auto)")
    on = config.short_run == "on"
    label = "short-run recipe (--short_run off: the full one)" if on else "recipe"
    print(f"{label}: {describe_recipe(config.recipe)}")
    if world.distributed:
        batch = config.recipe.batch_size
        print(
            f"data parallel over {world.size} processes ({world.backend}): batch "
            f"{batch} per process, {batch * world.size} per step"
        )


def train_epoch(run: Run, epoch: int, stop: Callable[[], bool]) -> EpochProgress:
    """Seed the epoch's shuffle and augmentation, then train it from where it stands."""
    config, data = run.config, run.data
    # Shuffle order and augmentation depend on (seed, epoch) only, so a resumed run sees the
    # same data stream as an uninterrupted one; under torchrun, ranks augment differently.
    epoch_seed = config.seed * 100_003 + epoch + run.world.rank * distributed.RANK_SEED_STRIDE
    data.sampler.set_epoch(epoch)
    data.generator.manual_seed(epoch_seed)
    data.train_set.set_augment_seed(epoch_seed)
    first = epoch == run.state.start_epoch + 1
    start = run.state.partial if first else EpochProgress()
    data.sampler.skip = start.batches * config.recipe.batch_size
    downscale = epoch_downscale(config.recipe, epoch)
    at = f" at {config.recipe.image_size // downscale} px" if downscale > 1 else ""
    return train_one_epoch(
        run.step,
        data.train_loader,
        desc=f"epoch {epoch}/{config.recipe.epochs}{at}",
        start=start,
        stop=stop,
        learning_rate=functools.partial(run.schedule.rate, epoch),
        on_step=estimate_when_timed(run) if first and run.world.is_main else None,
        downscale=downscale,
    )


def epoch_downscale(recipe: RecipeConfig, epoch: int) -> int:
    """The factor epoch `epoch` (1-based) downscales its batches by: LOW_RES_FACTOR in the
    first recipe.low_res_epochs (--progressive), else 1."""
    return LOW_RES_FACTOR if epoch <= recipe.low_res_epochs else 1


def estimate_when_timed(run: Run) -> Callable[[], None]:
    """Called after each step of the run's first epoch, it prints the run's estimated duration
    once it has timed enough steps (budget.estimate_plan)."""
    state, recipe = run.state, run.config.recipe
    clock = StepClock(*estimate_plan(run.data.steps_per_epoch - state.partial.batches))
    epochs = recipe.epochs - state.start_epoch
    low_res = (
        max(0, recipe.low_res_epochs - state.start_epoch),
        recipe.image_size // LOW_RES_FACTOR,
    )
    # The epoch timed is at half size when any is left; the full size's steps were timed before.
    timed = "low_res_step_s" if low_res[0] else "step_s"

    def on_step() -> None:
        step_s = clock.tick()
        if step_s is not None:
            cost = replace(run.planned, **{timed: step_s})
            line = estimate_line(cost, epochs, recipe.image_size, state.resumed, low_res)
            tqdm.write(line)

    return on_step


def train_one_epoch(
    step: TrainStep,
    loader: DataLoader,
    desc: str = "train",
    *,
    start: EpochProgress | None = None,
    stop: Callable[[], bool] = lambda: False,
    learning_rate: Callable[[int], float] | None = None,
    on_step: Callable[[], None] | None = None,
    downscale: int = 1,
) -> EpochProgress:
    """One pass over the loader; returns the progress, whose mean_loss is per image.

    start: progress of an interrupted pass this one continues (the loader skips its batches).
    stop: polled before each batch; when it answers True the pass ends early, interrupted.
    learning_rate: the rate for the epoch's batch number (1-based), set before each step.
    on_step: called after each optimizer step.
    downscale: above 1, each batch's images and masks are averaged down by this factor first.
    A step whose loss or gradients are not finite is skipped with a warning (the weights stay
    as they were); `step.max_nonfinite` such steps in a row stop training with a PetsegError.
    """
    step.model.train()
    done = replace(start) if start is not None else EpochProgress()
    nonfinite_in_a_row = 0
    bar = tqdm(
        loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=not step.progress
    )
    for images, masks in bar:
        if stop():
            done.interrupted = True
            break
        done.batches += 1
        if learning_rate is not None:
            for group in step.optimizer.param_groups:
                group["lr"] = learning_rate(done.batches)
        loss, finite = forward_backward(step, images, masks, downscale)
        if not finite:
            nonfinite_in_a_row += 1
            stop_when_diverged(step, desc, done.batches, nonfinite_in_a_row)
            if step.scaler is None:
                continue
        else:
            nonfinite_in_a_row = 0
        optimizer_step(step)
        if on_step is not None:
            on_step()
        if finite:
            done.loss_sum += loss.item() * images.shape[0]
            done.images += images.shape[0]
            bar.set_postfix(loss=f"{done.mean_loss:.4f}")
    return done


def forward_backward(
    step: TrainStep, images: torch.Tensor, masks: torch.Tensor, downscale: int = 1
) -> tuple[torch.Tensor, bool]:
    """The batch's loss after its backward pass, and whether loss and gradients are finite.
    downscale: above 1, images and masks are first averaged over downscale x downscale blocks
    (the masks' border pixels become fractions, which BCE and soft Dice take as they are)."""
    images = images.to(step.device, non_blocking=True)
    masks = masks.to(step.device, non_blocking=True)
    if downscale > 1:
        images, masks = F.avg_pool2d(images, downscale), F.avg_pool2d(masks, downscale)
    with autocast(step.device, step.precision):
        outputs = step.model(images)  # (N, 1, H, W) logits, or (logits, aux) with deep supervision
    logits, aux = outputs if isinstance(outputs, tuple) else (outputs, [])
    loss = deep_supervision_loss(step.loss_fn, logits.float(), aux, masks)
    step.optimizer.zero_grad(set_to_none=True)
    # backward runs even for a bad loss: under DDP every rank must join the gradient
    # all-reduce, after which a non-finite gradient anywhere is non-finite on every rank.
    (step.scaler.scale(loss) if step.scaler else loss).backward()
    finite = bool(torch.isfinite(loss)) and (step.scaler is not None or clip_and_check(step))
    return loss, finite


def stop_when_diverged(step: TrainStep, desc: str, batch: int, in_a_row: int) -> None:
    """Warn of a skipped step; stop training after `step.max_nonfinite` in a row."""
    if step.progress:
        tqdm.write(f"{desc}: non-finite loss or gradients at batch {batch}; step skipped")
    if in_a_row >= step.max_nonfinite:
        raise PetsegError(
            f"{desc}: loss or gradients non-finite for {in_a_row} batches in a row; lower "
            "--learning-rate or use --precision fp32"
        )


def optimizer_step(step: TrainStep) -> None:
    """Step. Under fp16 the gradients are unscaled and clipped here first, when asked; otherwise
    forward_backward has clipped them."""
    if step.scaler is None:
        step.optimizer.step()
        return
    if step.clip_grad > 0:
        step.scaler.unscale_(step.optimizer)
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), step.clip_grad)
    step.scaler.step(step.optimizer)
    step.scaler.update()


def clip_and_check(step: TrainStep) -> bool:
    """Clip the gradients' global norm to `step.clip_grad` when asked (petseg's fused optimizers
    apply the factor inside their step), and say whether every gradient is finite. Clipping
    computes that norm anyway, so a clipped run reads the answer from it instead of a second
    pass over the gradients (about 12 ms a ResNet34-UNet step on a 2-core CPU). A non-finite
    norm answers False: the caller skips the step."""
    if step.clip_grad > 0:
        norm = clip_gradients(step.optimizer, step.model.parameters(), step.clip_grad)
        return bool(torch.isfinite(norm))
    return gradients_finite(step.model)


def gradients_finite(model: nn.Module) -> bool:
    """Whether every gradient is finite, read from their norms: one reduction per tensor, where
    isfinite per element costs far more on a CPU. A norm that overflows, entries beyond about
    1e19, also counts as non-finite."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    norms = torch.stack([torch.linalg.vector_norm(grad) for grad in grads])
    return bool(torch.isfinite(norms).all())


def validate(
    run: Run, epoch: int, progress: EpochProgress, started: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score the epoch's model on the valid split: the epoch's row of the history, and the
    scores."""
    world, model = run.world, run.state.model
    train_seconds = time.perf_counter() - started
    train_loss = distributed.mean_over_ranks(progress.mean_loss, world)
    distributed.broadcast_buffers(model, world)
    evaluation = evaluate_model(
        model,
        run.data.valid_loader,
        world.device,
        loss_fn=run.step.loss_fn,
        desc=f"epoch {epoch}/{run.config.recipe.epochs} valid",
        progress=world.is_main,
        precision=run.step.precision,
    )
    evaluation = distributed.gather_evaluation(evaluation, len(run.data.valid_set), world)
    scores = evaluation.scores.summary()
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "valid_loss": evaluation.loss,
        "valid_dice": scores["dice"],
        "valid_dice_dataset": scores["dice_dataset"],
        "valid_iou": scores["iou"],
        "learning_rate": run.state.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
    }, scores


def record_epoch(run: Run, epoch: int, row: dict[str, Any], scores: dict[str, Any]) -> None:
    """Keep the epoch: the best checkpoint when it improved, history, curves, then the last
    checkpoint; then print the epoch's line. A diverged epoch stops the run unsaved."""
    state, world, config = run.state, run.world, run.config
    diverged = divergence(
        row["train_loss"],
        row["valid_loss"],
        config.recipe.loss,
        state.model,
        low_res=epoch_downscale(config.recipe, epoch) > 1,
    )
    if diverged:
        raise PetsegError(diverged_message(epoch, diverged, config.model_path))
    if not (epoch == state.start_epoch + 1 and state.partial.batches > 0):
        run.epoch_seconds.append(row["seconds"])  # a resumed part of an epoch would mislead
    improved = counts_as_best(scores["dice"], row["valid_loss"], state.best_dice)
    state.best_dice = scores["dice"] if improved else state.best_dice
    state.history.append(row)
    if world.is_main:
        save_epoch_files(run, epoch, training_checkpoint(run, epoch, valid_scores=scores), improved)
    distributed.barrier(world)  # the files exist before any rank goes on
    epochs = config.recipe.epochs
    tqdm.write(
        f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  "
        f"valid loss {row['valid_loss']:.4f}  valid Dice {scores['dice']:.4f}"
        f"{'  (best, saved)' if improved else ''}  {row['seconds']:.1f} s"
        f"{time_left(run.epoch_seconds, epochs - epoch)}"
    )


def save_epoch_files(run: Run, epoch: int, checkpoint: dict[str, Any], improved: bool) -> None:
    """The last checkpoint goes last: a run stopped before it (a full disk, kill -9) resumes
    from the previous epoch, and redoing this one rewrites all four files."""
    model_path = run.config.model_path
    if improved:
        save_checkpoint(model_path, without_training_state(checkpoint))
    write_history(history_path(model_path), run.state.history)
    curves = render_curves(
        run.state.history,
        loss=run.config.recipe.loss,
        learning_rates=run.schedule.points(epoch),
        low_res_epochs=run.config.recipe.low_res_epochs,
    )
    atomic_write_bytes(curves_path(model_path), curves)
    save_checkpoint(last_checkpoint_path(model_path), checkpoint)


def training_checkpoint(run: Run, epoch: int, **extra: Any) -> dict[str, Any]:
    """The checkpoint of the run after `epoch` epochs, with all a resume needs."""
    scaler = run.step.scaler
    return make_checkpoint(
        run.state.model,
        run.config,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        epoch=epoch,
        best_dice=run.state.best_dice,
        optimizer=run.state.optimizer.state_dict(),
        grad_scaler=scaler.state_dict() if scaler is not None else None,
        world_size=run.world.size,
        sync_batchnorm=run.world.sync_batchnorm,
        **extra,
    )


def save_interrupted(run: Run, epoch: int, progress: EpochProgress) -> None:
    """The last checkpoint with the interrupted epoch's steps, so a rerun continues them."""
    partial = {
        "batches": progress.batches,
        "loss_sum": progress.loss_sum,
        "images": progress.images,
    }
    save_checkpoint(
        last_checkpoint_path(run.config.model_path),
        training_checkpoint(run, epoch - 1, partial_epoch=partial),
    )


def finish(run: Run) -> dict[str, Any]:
    """Tune the threshold when asked, then name what the run left."""
    config, world, state = run.config, run.world, run.state
    if config.recipe.tune_threshold:
        if world.is_main:
            tune_checkpoint_threshold(
                config.model_path,
                run.data.valid_set,
                config.recipe.batch_size,
                world.device,
                run.step.precision,
            )
        distributed.barrier(world)
    size = config.recipe.image_size
    print(
        f"best valid Dice {state.best_dice:.4f} (mean of per-image Dice at {size}x{size}); "
        + written_files(config.model_path)
    )
    return {"best_dice": state.best_dice, "epochs": config.recipe.epochs, "history": state.history}


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


def describe_recipe(recipe: RecipeConfig) -> str:
    """One line: loss, optimizer, schedule, augmentation, batch, clipping, threshold choice."""
    warmup_epochs = resolve_warmup_epochs(recipe.scheduler, recipe.warmup_epochs)
    warmup = (
        f", {warmup_epochs:g} warmup epochs"
        if warmup_epochs is not None and recipe.scheduler != "constant"
        else ""
    )
    return (
        f"loss {recipe.loss}, {recipe.optimizer} lr {recipe.learning_rate:g} "
        f"weight decay {recipe.weight_decay:g}, {recipe.scheduler} schedule{warmup}, "
        f"{recipe.augment} augmentation, batch {recipe.batch_size}, "
        + (f"gradient norm clipped to {recipe.clip_grad:g}, " if recipe.clip_grad else "")
        + (
            f"epochs 1-{recipe.low_res_epochs} at {recipe.image_size // LOW_RES_FACTOR} px, "
            if recipe.low_res_epochs
            else ""
        )
        + "threshold "
        + ("tuned on valid" if recipe.tune_threshold else "0.5")
    )


def time_left(epoch_seconds: list[float], epochs_left: int) -> str:
    """', about 2.5 h left' from the mean of epoch times; '' when no epoch is left or timed."""
    if epochs_left <= 0 or not epoch_seconds:
        return ""
    left = epochs_left * sum(epoch_seconds) / len(epoch_seconds)
    return f", about {format_duration(left)} left"


def written_files(model_path: Path) -> str:
    """'checkpoint X, last epoch Y, history H, curves Z', naming only the files that exist."""
    files = (
        ("checkpoint", model_path),
        ("last epoch", last_checkpoint_path(model_path)),
        ("history", history_path(model_path)),
        ("curves", curves_path(model_path)),
    )
    return ", ".join(f"{label} {path}" for label, path in files if path.exists())


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
