"""Dice against training seconds: when a run reaches a Dice level, its Dice at a given time,
and issue 51's targets for petseg against smp's standard loop. Pure functions over points.

Two kinds of curve, by how they were measured:
- epoch curves, one run scored after each epoch: a level is reached at the end of the first
  epoch at or above it (a run can only be stopped there), and the Dice at a time is the last
  finished epoch's;
- budget curves, one run from scratch per epoch budget (a OneCycle run is not a prefix of a
  longer one, its schedule spans the whole run): linear between neighbouring budgets, where a
  budget between two measured ones is estimated to land; nothing is claimed before the smallest
  budget, and after the largest its Dice holds (a user with more time runs that budget).
"""

from __future__ import annotations

from dataclasses import dataclass

# Issue 51's targets for the ResNet34-UNet against smp's standard loop (docs/experiments.md).
TARGET_TIME_SHARE = 0.40
TARGET_DICE_MARGIN = 0.02
GUARD_EPOCHS, GUARD_DICE = 40, 0.86


@dataclass(frozen=True)
class Point:
    epochs: int  # the budget (budget curves) or the epochs trained so far (epoch curves)
    seconds: float  # training seconds
    dice: float


@dataclass(frozen=True)
class Curve:
    run: str
    label: str  # what trained, in a few words
    recipe: str  # how
    points: tuple[Point, ...]  # by seconds
    interpolated: bool  # budget curve (linear between points) or epoch curve (steps)
    precision: str = "fp32"

    @property
    def final(self) -> Point:
        return self.points[-1]


@dataclass(frozen=True)
class Comparison:
    reference: str
    reference_dice: float  # its final Dice
    reference_seconds: float  # its training seconds
    seconds_to_reference_dice: float | None  # petseg's
    time_share: float | None  # the above / reference_seconds
    dice_at_reference_seconds: float | None  # petseg's
    dice_margin: float | None  # the above - reference_dice


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    limit: float
    at_most: bool  # passes at or below the limit, else at or above

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit


# --- curves: pure functions over (seconds, Dice) points ---------------------------------------


def time_to_level(curve: Curve, level: float) -> float | None:
    """Training seconds until the curve first reaches `level`; None when it never does."""
    for index, point in enumerate(curve.points):
        if point.dice >= level:
            if not curve.interpolated or index == 0:
                return point.seconds
            before = curve.points[index - 1]  # below the level, so the line crosses it once
            fraction = (level - before.dice) / (point.dice - before.dice)
            return before.seconds + fraction * (point.seconds - before.seconds)
    return None


def dice_at(curve: Curve, seconds: float) -> float | None:
    """The curve's Dice after `seconds` of training; None before its first point."""
    finished = [point for point in curve.points if point.seconds <= seconds]
    if not finished:
        return None
    last = finished[-1]
    later = curve.points[len(finished) :]
    if not curve.interpolated or not later or last.seconds == seconds:
        return last.dice
    after = later[0]
    fraction = (seconds - last.seconds) / (after.seconds - last.seconds)
    return last.dice + fraction * (after.dice - last.dice)


def compare(petseg: Curve, reference: Curve) -> Comparison:
    """petseg's time to the reference's final Dice and its Dice at the reference's time."""
    goal, budget = reference.final.dice, reference.final.seconds
    seconds = time_to_level(petseg, goal)
    dice = dice_at(petseg, budget)
    return Comparison(
        reference=reference.run,
        reference_dice=goal,
        reference_seconds=budget,
        seconds_to_reference_dice=seconds,
        time_share=None if seconds is None else seconds / budget,
        dice_at_reference_seconds=dice,
        dice_margin=None if dice is None else dice - goal,
    )


def targets(petseg: Curve, against_smp: Comparison) -> list[Target]:
    """Issue 51's two targets against smp and the quality guard at the 40-epoch budget."""
    guard = [point.dice for point in petseg.points if point.epochs == GUARD_EPOCHS]
    return [
        Target(
            "time to smp's final Dice / smp's time",
            against_smp.time_share,
            TARGET_TIME_SHARE,
            at_most=True,
        ),
        Target(
            "Dice at smp's time - smp's final Dice",
            against_smp.dice_margin,
            TARGET_DICE_MARGIN,
            at_most=False,
        ),
        Target(
            f"Dice of the {GUARD_EPOCHS}-epoch budget",
            guard[0] if guard else None,
            GUARD_DICE,
            at_most=False,
        ),
    ]
