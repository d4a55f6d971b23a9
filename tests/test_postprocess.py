"""largest_component on hand-drawn masks: which region survives, and what counts as connected."""

from __future__ import annotations

import pytest
import torch

from petseg.postprocess import largest_component, largest_components


def mask_from(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows])


def test_the_largest_region_is_kept_and_specks_are_dropped() -> None:
    mask = mask_from(
        [
            "##....#",
            "##.....",
            "##..##.",
            ".......",
        ]
    )
    expected = mask_from(
        [
            "##.....",
            "##.....",
            "##.....",
            ".......",
        ]
    )
    assert torch.equal(largest_component(mask), expected)


def test_pixels_touching_at_a_corner_are_one_region() -> None:
    # a diagonal line of 4 pixels beats a 3-pixel bar only when corners connect
    mask = mask_from(
        [
            "#.......",
            ".#......",
            "..#..###",
            "...#....",
        ]
    )
    diagonal = mask_from(
        [
            "#.......",
            ".#......",
            "..#.....",
            "...#....",
        ]
    )
    assert torch.equal(largest_component(mask), diagonal)


@pytest.mark.parametrize("rows", [["....", "...."], ["####", "####"], [".##.", ".#.."]])
def test_an_empty_full_or_single_region_mask_is_unchanged(rows: list[str]) -> None:
    mask = mask_from(rows)
    kept = largest_component(mask)
    assert torch.equal(kept, mask)
    assert kept is not mask  # a copy: callers may change it


def test_a_batch_is_processed_image_by_image() -> None:
    first = mask_from(["#..#", "#..."])  # regions of 2 and 1
    second = mask_from(["....", ".##."])  # one region
    batch = torch.stack([first, second])[:, None]  # (2, 1, 2, 4)
    kept = largest_components(batch)
    assert kept.shape == batch.shape and kept.dtype == torch.bool
    assert torch.equal(kept[0, 0], mask_from(["#...", "#..."]))
    assert torch.equal(kept[1, 0], second)
    assert largest_components(batch[:0]).shape == (0, 1, 2, 4)


def test_wrong_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        largest_component(torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        largest_components(torch.zeros(2, 4, 4, dtype=torch.bool))
