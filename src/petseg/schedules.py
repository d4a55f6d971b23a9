"""Learning rate as a pure function of the optimizer step.

The rate depends on the step count only, so a run resumed mid-epoch continues the same curve
without saving any scheduler state. Schedules:
- constant: the base rate throughout (the lab report's Adam 1e-4);
- cosine: linear warmup from 0 to the base rate, then cosine decay to COSINE_FLOOR x base;
- onecycle: torch.optim.lr_scheduler.OneCycleLR's curve (cosine up from base/25 over
  `warmup_steps`, by default the first 30% of steps, cosine down to base/25e4).
"""

from __future__ import annotations

import math

from petseg.choices import SCHEDULERS
from petseg.errors import PetsegError

COSINE_FLOOR = 0.01  # the cosine schedule ends at this fraction of the base rate
COSINE_WARMUP_EPOCHS = 1.0  # the cosine schedule's warmup unless one is chosen
ONECYCLE_PCT_START = 0.3  # OneCycleLR's defaults
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4


def _cosine(start: float, end: float, fraction: float) -> float:
    """From start (fraction 0) to end (fraction 1) along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2


def resolve_warmup_epochs(scheduler: str, warmup_epochs: float | None) -> float | None:
    """The warmup chosen, else the schedule's own: COSINE_WARMUP_EPOCHS for cosine, None
    (OneCycleLR's 30% of the steps) for onecycle; constant has none."""
    if warmup_epochs is None and scheduler == "cosine":
        return COSINE_WARMUP_EPOCHS
    return warmup_epochs


def learning_rate_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    scheduler: str = "constant",
    warmup_steps: int | None = None,
) -> float:
    """The rate for optimizer step `step` (0-based) of `total_steps`; `warmup_steps=None` is no
    warmup for cosine and OneCycleLR's 30% of the steps for onecycle."""
    if scheduler not in SCHEDULERS:
        raise PetsegError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    total_steps = max(total_steps, 1)
    if scheduler == "onecycle":
        initial = base_lr / ONECYCLE_DIV_FACTOR
        final = initial / ONECYCLE_FINAL_DIV_FACTOR
        rise = ONECYCLE_PCT_START * total_steps if warmup_steps is None else warmup_steps
        peak_step = float(min(rise, total_steps)) - 1
        end_step = total_steps - 1
        if step <= peak_step:
            return _cosine(initial, base_lr, step / peak_step if peak_step > 0 else 1.0)
        return _cosine(base_lr, final, (step - peak_step) / max(end_step - peak_step, 1e-9))
    if scheduler == "constant":
        return base_lr
    warmup_steps = warmup_steps or 0
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    return _cosine(base_lr, base_lr * COSINE_FLOOR, (step - warmup_steps) / decay_steps)


def schedule_points(
    upto_step: int,
    steps_per_epoch: int,
    *,
    base_lr: float,
    total_steps: int,
    scheduler: str = "constant",
    warmup_steps: int | None = None,
    max_points: int = 200,
) -> list[tuple[float, float]]:
    """(epoch, rate) pairs along the schedule over steps 0..upto_step-1, at most about
    `max_points`, for a plot: step s ends at epoch (s + 1) / steps_per_epoch, so a one-epoch
    run draws its whole curve rather than its last step's rate."""
    if upto_step <= 0:
        return []
    stride = max(1, math.ceil(upto_step / max_points))
    steps = [*range(0, upto_step - 1, stride), upto_step - 1]
    return [
        (
            (step + 1) / steps_per_epoch,
            learning_rate_at(
                step,
                base_lr=base_lr,
                total_steps=total_steps,
                scheduler=scheduler,
                warmup_steps=warmup_steps,
            ),
        )
        for step in steps
    ]
