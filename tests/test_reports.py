"""Per-species and per-breed grouping on synthetic Oxford-style names, with hand-made counts."""

from __future__ import annotations

import pytest
import torch

from petseg.data.oxford_pet import breed_of, species_of
from petseg.reports import GroupScore, format_groups, group_scores, groups_as_json, worst_indices

# Per-image (tp, fp, fn, tn) and the Dice each gives, 2 tp / (2 tp + fp + fn):
NAMES = ["Bengal_1", "beagle_10", "Bengal_22", "Abyssinian_3", "beagle_4", "pug_5", "Sphynx_9"]
COUNTS = torch.tensor(
    [
        [4, 1, 0, 4],  # Bengal_1      Dice 8/9
        [1, 1, 1, 6],  # beagle_10     Dice 2/4 = 0.5
        [2, 0, 4, 3],  # Bengal_22     Dice 4/8 = 0.5
        [3, 1, 1, 4],  # Abyssinian_3  Dice 6/8 = 0.75
        [1, 0, 1, 7],  # beagle_4      Dice 2/3
        [1, 3, 0, 5],  # pug_5         Dice 2/5 = 0.4
        [0, 0, 0, 9],  # Sphynx_9      both empty: Dice 1
    ]
)


def test_per_breed_scores_are_means_of_per_image_dice_hardest_first() -> None:
    groups = group_scores(NAMES, COUNTS, breed_of)
    # pug 0.4 < beagle 0.583 < Bengal 0.694 < Abyssinian 0.75 < Sphynx 1
    assert [group.name for group in groups] == ["pug", "beagle", "Bengal", "Abyssinian", "Sphynx"]
    by_name = {group.name: group for group in groups}
    assert by_name["pug"].dice == pytest.approx(0.4)
    assert by_name["beagle"].dice == pytest.approx((0.5 + 2 / 3) / 2)
    assert by_name["Bengal"].dice == pytest.approx((8 / 9 + 0.5) / 2)
    assert by_name["Abyssinian"].dice == pytest.approx(0.75)
    assert by_name["Sphynx"].dice == 1.0
    assert [group.num_images for group in groups] == [1, 2, 2, 1, 1]
    # dataset Dice of the group's summed counts: Bengal tp 6 fp 1 fn 4 -> 12/17
    assert by_name["Bengal"].dice_dataset == pytest.approx(12 / 17)
    # beagle tp 2 fp 1 fn 2 -> 4/7
    assert by_name["beagle"].dice_dataset == pytest.approx(4 / 7)


def test_ties_are_broken_by_group_name() -> None:
    counts = torch.tensor([[1, 0, 0, 1]] * 3)  # Dice 1 each
    groups = group_scores(["pug_1", "Bengal_2", "beagle_3"], counts, breed_of)
    assert [group.name for group in groups] == ["Bengal", "beagle", "pug"]


def test_per_species_groups_cats_and_dogs() -> None:
    groups = group_scores(NAMES, COUNTS, species_of)
    by_name = {group.name: group for group in groups}
    assert set(by_name) == {"cat", "dog"}
    assert by_name["cat"].num_images == 4
    assert by_name["cat"].dice == pytest.approx((8 / 9 + 0.5 + 0.75 + 1) / 4)
    assert by_name["dog"].dice == pytest.approx((0.5 + 2 / 3 + 0.4) / 3)
    assert [group.name for group in groups] == ["dog", "cat"]  # dog 0.522 < cat 0.785


def test_group_scores_reject_names_and_counts_of_different_lengths() -> None:
    with pytest.raises(ValueError):
        group_scores(NAMES[:-1], COUNTS, breed_of)


def test_worst_indices_lowest_dice_first_ties_in_dataset_order() -> None:
    dice = [1.0, 0.5, 0.5, 0.75, 1.0, 0.4]
    assert worst_indices(dice, 3) == [5, 1, 2]
    assert worst_indices(dice, 100) == [5, 1, 2, 3, 0, 4]
    assert worst_indices([], 3) == []


def test_groups_as_json_and_table_keep_the_order() -> None:
    groups = [GroupScore("pug", 1, 0.4, 0.4), GroupScore("american_bulldog", 12, 0.9, 0.91)]
    assert groups_as_json(groups) == [
        {"name": "pug", "num_images": 1, "dice": 0.4, "dice_dataset": 0.4},
        {"name": "american_bulldog", "num_images": 12, "dice": 0.9, "dice_dataset": 0.91},
    ]
    lines = format_groups("By breed", groups).splitlines()
    assert lines[0] == "By breed:"
    assert lines[1].split() == ["pug", "1", "images", "Dice", "0.4000", "(dataset", "0.4000)"]
    assert lines[2].split()[:2] == ["american_bulldog", "12"]
