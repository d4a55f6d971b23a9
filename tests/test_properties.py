"""Property-based tests (hypothesis) for the metrics and the trimap -> mask conversion."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from petseg.data.oxford_pet import trimap_to_mask
from petseg.metrics import (
    SegmentationScores,
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    pixel_accuracy_from_counts,
)

shapes = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))


@st.composite
def mask_pairs(draw) -> tuple[torch.Tensor, torch.Tensor]:
    shape = draw(shapes)
    preds = draw(arrays(np.bool_, shape))
    targets = draw(arrays(np.bool_, shape))
    return torch.from_numpy(preds), torch.from_numpy(targets)


@given(mask_pairs())
def test_counts_partition_every_pixel(pair) -> None:
    preds, targets = pair
    counts = confusion_counts(preds, targets)
    assert counts.shape == (preds.shape[0], 4)
    assert (counts.sum(1) == preds[0].numel()).all()
    assert (counts[:, 0] + counts[:, 2] == targets.reshape(len(targets), -1).sum(1)).all()
    assert (counts[:, 0] + counts[:, 1] == preds.reshape(len(preds), -1).sum(1)).all()


@given(mask_pairs())
def test_dice_and_iou_are_bounded_symmetric_and_linked(pair) -> None:
    preds, targets = pair
    counts = confusion_counts(preds, targets)
    dice, iou = dice_from_counts(counts), iou_from_counts(counts)
    assert ((dice >= 0) & (dice <= 1)).all() and ((iou >= 0) & (iou <= 1)).all()
    torch.testing.assert_close(dice, dice_from_counts(confusion_counts(targets, preds)))
    torch.testing.assert_close(dice, 2 * iou / (1 + iou))  # Dice = 2J / (1 + J)
    accuracy = pixel_accuracy_from_counts(counts)
    assert ((accuracy >= 0) & (accuracy <= 1)).all()


@given(arrays(np.bool_, shapes))
def test_a_perfect_prediction_scores_one(masks) -> None:
    masks = torch.from_numpy(masks)
    counts = confusion_counts(masks, masks)
    assert (dice_from_counts(counts) == 1).all() and (iou_from_counts(counts) == 1).all()
    assert (pixel_accuracy_from_counts(counts) == 1).all()


@given(mask_pairs(), st.integers(1, 3))
def test_scores_do_not_depend_on_batching(pair, chunks) -> None:
    preds, targets = pair
    whole = SegmentationScores()
    whole.update(preds, targets)
    batched = SegmentationScores()
    for p, t in zip(preds.chunk(chunks), targets.chunk(chunks), strict=True):
        batched.update(p, t)
    assert batched.summary() == whole.summary()
    # per-image mean and dataset Dice are different averages, each in [0, 1]
    summary = whole.summary()
    assert 0 <= summary["dice"] <= 1 and 0 <= summary["dice_dataset"] <= 1


@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 8), st.integers(1, 8)),
        elements=st.sampled_from([1, 2, 3]),
    )
)
def test_trimap_to_mask_counts_border_as_pet(trimap) -> None:
    mask = trimap_to_mask(trimap)
    assert mask.dtype == np.uint8 and mask.shape == trimap.shape
    assert set(np.unique(mask)) <= {0, 1}
    assert (mask[trimap == 2] == 0).all()
    assert (mask[trimap != 2] == 1).all()
