"""Time budgets: durations as typed on the command line, the number of epochs that fits a budget,
and the one-line estimates training prints. Torch-free, so the command line can parse with it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Epochs are planned to fill this share of the budget left: a few timed steps misjudge an epoch
# by some percent either way, and a run that ends early beats one that overruns.
PLANNED_SHARE = 0.9
WARMUP_STEPS = 2  # untimed first steps: memory allocation, kernel choice, loader start-up
PROBE_STEPS = 6  # timed training steps of the measurement a budget run makes before epoch 1
PROBE_VALID_BATCHES = 2  # timed validation batches, after one untimed
ESTIMATE_STEPS = 10  # the live estimate times this many steps of epoch 1 ...
ESTIMATE_SHARE = 0.1  # ... or this share of it, whichever is fewer

UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}
DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
DURATION_FORMS = "a duration like 90s, 30m, 2h or 1h30m"


def parse_duration(text: str) -> float:
    """Seconds in `text`: hours, minutes and seconds in that order, each optional, e.g. 90s,
    1.5h, 1h30m. ValueError, with a one-line reason, for anything else or a zero duration."""
    spelled = text.strip().lower()
    match = DURATION.fullmatch(spelled)
    if not spelled or match is None:
        hint = " (add a unit)" if re.fullmatch(r"\d+(\.\d+)?", spelled) else ""
        raise ValueError(f"must be {DURATION_FORMS}{hint}, got {text!r}")
    seconds = sum(
        float(amount) * UNIT_SECONDS[unit]
        for amount, unit in zip(match.groups(), UNIT_SECONDS, strict=True)
        if amount is not None
    )
    if seconds <= 0:
        raise ValueError(f"must be a positive duration, got {text!r}")
    return seconds


def duration_flag(seconds: float) -> str:
    """A duration as --time_budget takes it: 2h, 30m, 90s, 1h30m."""
    whole = round(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = ((hours, "h"), (minutes, "m"), (secs, "s"))
    return "".join(f"{amount}{unit}" for amount, unit in parts if amount) or "0s"


def format_duration(seconds: float) -> str:
    """'45 s', '2.4 min', '29 min', '3.2 h': what a person reads at a glance."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        minutes = seconds / 60
        return f"{_trimmed(minutes) if minutes < 10 else f'{minutes:.0f}'} min"
    return f"{_trimmed(seconds / 3600)} h"


def _trimmed(value: float) -> str:
    """One decimal, without a trailing .0."""
    return f"{value:.1f}".removesuffix(".0")


@dataclass(frozen=True)
class EpochCost:
    """What one epoch takes, measured: its training steps, its validation, its checkpoints."""

    step_s: float  # one training step
    steps: int  # training steps an epoch
    valid_s: float  # validating once
    save_s: float = 0.0  # writing an epoch's files; 0 where not measured
    timed_steps: int = 0  # how many steps step_s was measured on
    low_res_step_s: float | None = None  # a step at half size (--progressive); None: step_s

    @property
    def epoch_s(self) -> float:
        return self.step_s * self.steps + self.valid_s + self.save_s

    @property
    def low_res_epoch_s(self) -> float:
        """An epoch at half size: its steps cost low_res_step_s, the rest the same."""
        step_s = self.step_s if self.low_res_step_s is None else self.low_res_step_s
        return step_s * self.steps + self.valid_s + self.save_s

    def run_s(self, epochs: int, low_res_epochs: int = 0) -> float:
        """`epochs` epochs, `low_res_epochs` of them at half size."""
        return low_res_epochs * self.low_res_epoch_s + (epochs - low_res_epochs) * self.epoch_s


def low_res_epochs(progressive: float, epochs: int) -> int:
    """How many of the first of `epochs` train at half size for --progressive's share: the
    share rounded half up, and never the last epoch, which trains at the size used after."""
    return max(0, min(epochs - 1, math.floor(progressive * epochs + 0.5)))


def choose_epochs(
    budget_s: float, cost: EpochCost, cap: int, other_s: float = 0.0, progressive: float = 0.0
) -> int:
    """The most epochs, at least 1 and at most `cap`, whose time fits PLANNED_SHARE of the
    budget, after `other_s`: time spent before epoch 1 and after the last one. `progressive`:
    the share of the epochs run at half size (RecipeConfig.progressive)."""
    left = (budget_s - other_s) * PLANNED_SHARE

    def fits(epochs: int) -> bool:
        return cost.run_s(epochs, low_res_epochs(progressive, epochs)) <= left

    # A run's time grows with its epochs: bisect for the last that fits.
    most, too_many = 1, cap + 1
    while too_many - most > 1:
        middle = (most + too_many) // 2
        most, too_many = (middle, too_many) if fits(middle) else (most, middle)
    return most


def budget_line(
    budget_s: float,
    epochs: int,
    cap: int,
    cost: EpochCost,
    other_s: float,
    progressive: tuple[float, int] = (0.0, 0),
) -> str:
    """'time budget 30m: 12 epochs of about 2.4 min each (measured on 6 steps), about 29 min in
    all', saying so when the cap or the one-epoch minimum decided. progressive: (the share of
    the epochs at half size, that size in pixels)."""
    share, low_size = progressive
    low_epochs = low_res_epochs(share, epochs)
    total_s = other_s + cost.run_s(epochs, low_epochs)
    capped = epochs == cap and choose_epochs(budget_s, cost, cap + 1, other_s, share) > cap
    chosen = plural(epochs, "epoch") + (f" (the cap, --epochs {cap})" if capped else "")
    each = " each" if epochs > 1 else ""
    at_low = (
        f", the first {low_epochs} at {low_size} px in about "
        f"{format_duration(cost.low_res_epoch_s)}{' each' if low_epochs > 1 else ''}"
        if low_epochs
        else ""
    )
    over = ", over the budget: 1 epoch is the least" if total_s > budget_s else ""
    return (
        f"time budget {duration_flag(budget_s)}: {chosen} of about "
        f"{format_duration(cost.epoch_s)}{each}{at_low} (measured on "
        f"{plural(cost.timed_steps, 'step')}), about {format_duration(total_s)} in all{over}"
    )


def plural(count: int, noun: str) -> str:
    """'1 epoch', '12 epochs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def estimate_line(
    cost: EpochCost,
    epochs: int,
    image_size: int,
    resumed: bool,
    low_res: tuple[int, int] = (0, 0),
) -> str:
    """'estimated: about 3.2 h for 50 epochs at 128 px (about 3.8 min an epoch, with
    validation)'; a resumed run counts the epochs it has left. low_res: (how many of those
    epochs train at half size, that size in pixels)."""
    low_epochs, low_size = low_res
    what = plural(epochs, "epoch") + (" left" if resumed else "")
    total = format_duration(cost.run_s(epochs, low_epochs))
    if low_epochs >= epochs:
        size, epoch_s, at_low = low_size, cost.low_res_epoch_s, ""
    else:
        size, epoch_s = image_size, cost.epoch_s
        at_low = (
            f"; {low_epochs} at {low_size} px, about {format_duration(cost.low_res_epoch_s)} each"
            if low_epochs
            else ""
        )
    return (
        f"estimated: about {total} for {what} at {size} px (about {format_duration(epoch_s)} an "
        f"epoch, with validation{at_low})"
    )


def estimate_plan(steps: int) -> tuple[int, int]:
    """(untimed, timed) steps of an epoch of `steps` for the live estimate: WARMUP_STEPS, then
    ESTIMATE_STEPS or ESTIMATE_SHARE of the epoch, whichever is fewer; at least one timed."""
    untimed = max(0, min(WARMUP_STEPS, steps - 1))
    timed = max(1, min(ESTIMATE_STEPS, round(steps * ESTIMATE_SHARE), steps - untimed))
    return untimed, timed


@dataclass
class StepClock:
    """Seconds per step over `timed` steps after `untimed` ones: tick() after each step answers
    them once, after the last timed one, and None otherwise."""

    untimed: int
    timed: int
    clock: Callable[[], float] = time.perf_counter
    ticks: int = 0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def tick(self) -> float | None:
        self.ticks += 1
        if self.ticks == self.untimed:
            self.started = self.clock()
        if self.ticks == self.untimed + self.timed:
            return (self.clock() - self.started) / self.timed
        return None
