"""Evaluation broken down by species and breed, the worst images, and their text tables.

Group scores use the headline convention: the mean of per-image Dice (border counted as pet),
plus the Dice of the group's summed pixel counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from petseg.metrics import dice_from_counts


@dataclass(frozen=True)
class GroupScore:
    name: str
    num_images: int
    dice: float  # mean of the group's per-image Dice
    dice_dataset: float  # Dice of the group's pixel counts summed


def group_scores(
    names: Sequence[str], counts: torch.Tensor, group_of: Callable[[str], str]
) -> list[GroupScore]:
    """Scores per group of images, hardest first (ascending Dice, ties by group name).

    names: one per image; counts: (num_images, 4) per-image (tp, fp, fn, tn) in the same order;
    group_of: image name -> group name (e.g. `breed_of`, `species_of`).
    """
    if len(names) != counts.shape[0]:
        raise ValueError(f"{len(names)} names for {counts.shape[0]} rows of counts")
    members: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        members.setdefault(group_of(name), []).append(index)
    groups = [
        GroupScore(
            name=group,
            num_images=len(indices),
            dice=dice_from_counts(counts[indices]).mean().item(),
            dice_dataset=dice_from_counts(counts[indices].sum(0)).item(),
        )
        for group, indices in members.items()
    ]
    return sorted(groups, key=lambda group: (group.dice, group.name))


def worst_indices(dice: Sequence[float], count: int) -> list[int]:
    """Indices of the `count` lowest per-image Dice, lowest first (ties keep dataset order)."""
    return sorted(range(len(dice)), key=lambda index: dice[index])[:count]


def groups_as_json(groups: Sequence[GroupScore]) -> list[dict[str, str | int | float]]:
    return [asdict(group) for group in groups]


def format_groups(title: str, groups: Sequence[GroupScore]) -> str:
    """A compact table, one line per group in the given order."""
    width = max([len(group.name) for group in groups] + [24])
    lines = [f"{title}:"]
    lines += [
        f"  {group.name:<{width}} {group.num_images:>5} images  Dice {group.dice:.4f}  "
        f"(dataset {group.dice_dataset:.4f})"
        for group in groups
    ]
    return "\n".join(lines)
