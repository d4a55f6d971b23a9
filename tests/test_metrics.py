"""Metrics on hand-made masks: every expected value below is computed by hand in the comments."""

from __future__ import annotations

import pytest
import torch

from petseg.metrics import (
    SegmentationScores,
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    pixel_accuracy_from_counts,
)


def mask(rows: list[list[int]]) -> torch.Tensor:
    """A (1, 1, H, W) float mask from nested lists, as a model's thresholded output would be."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def counts(tp: int, fp: int, fn: int, tn: int) -> torch.Tensor:
    return torch.tensor([tp, fp, fn, tn], dtype=torch.int64)


# pred            target          per pixel
# 1 1 0           1 0 0           tp fp tn
# 0 1 0           1 1 0           fn tp tn
# 0 0 0           0 0 1           tn tn fn
PRED_3X3 = [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
TARGET_3X3 = [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_confusion_counts_on_a_hand_made_3x3_case() -> None:
    result = confusion_counts(mask(PRED_3X3), mask(TARGET_3X3))
    assert result.dtype == torch.int64
    assert result.tolist() == [[2, 1, 2, 4]]


def test_confusion_counts_on_a_2x2_batch_of_two_images() -> None:
    preds = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 0]]])
    targets = torch.tensor([[[1, 1], [0, 0]], [[0, 1], [1, 1]]])
    # image 0: tp at (0,0); fn at (0,1); fp at (1,0); tn at (1,1)
    # image 1: nothing predicted, three target pixels -> fn 3, tn 1
    assert confusion_counts(preds, targets).tolist() == [[1, 1, 1, 1], [0, 0, 3, 1]]


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float32])
def test_confusion_counts_accept_bool_and_numeric_masks(dtype: torch.dtype) -> None:
    preds = mask(PRED_3X3).to(dtype)
    targets = mask(TARGET_3X3).to(dtype)
    assert confusion_counts(preds, targets).tolist() == [[2, 1, 2, 4]]


def test_confusion_counts_sum_to_the_number_of_pixels_per_image() -> None:
    generator = torch.Generator().manual_seed(0)
    preds = torch.rand(3, 1, 5, 7, generator=generator) > 0.5
    targets = torch.rand(3, 1, 5, 7, generator=generator) > 0.5
    result = confusion_counts(preds, targets)
    assert result.shape == (3, 4)
    assert result.sum(1).tolist() == [35, 35, 35]
    assert result[:, 0].tolist() == (preds & targets).flatten(1).sum(1).tolist()


@pytest.mark.parametrize(
    ("pred_shape", "target_shape"),
    [((1, 1, 3, 3), (1, 1, 3, 4)), ((2, 1, 4, 4), (1, 1, 4, 4)), ((1, 1, 4, 4), (1, 4, 4))],
)
def test_confusion_counts_reject_mismatched_shapes(
    pred_shape: tuple[int, ...], target_shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError):
        confusion_counts(torch.zeros(pred_shape), torch.zeros(target_shape))


def test_dice_iou_and_pixel_accuracy_of_the_3x3_case() -> None:
    result = confusion_counts(mask(PRED_3X3), mask(TARGET_3X3))
    # tp=2 fp=1 fn=2 tn=4: Dice = 2*2 / (2*2 + 1 + 2) = 4/7, IoU = 2 / (2 + 1 + 2) = 2/5,
    # pixel accuracy = (2 + 4) / 9 = 2/3
    assert dice_from_counts(result).tolist() == pytest.approx([4 / 7])
    assert iou_from_counts(result).tolist() == pytest.approx([2 / 5])
    assert pixel_accuracy_from_counts(result).tolist() == pytest.approx([2 / 3])


@pytest.mark.parametrize(
    ("tp", "fp", "fn", "tn", "dice", "iou", "accuracy"),
    [
        (10, 0, 0, 6, 1.0, 1.0, 1.0),  # perfect
        (0, 3, 5, 8, 0.0, 0.0, 0.5),  # disjoint: accuracy 8/16
        (3, 1, 0, 0, 6 / 7, 3 / 4, 3 / 4),  # over-segmentation
        (1, 0, 3, 4, 2 / 5, 1 / 4, 5 / 8),  # under-segmentation
    ],
)
def test_metrics_from_hand_picked_counts(
    tp: int, fp: int, fn: int, tn: int, dice: float, iou: float, accuracy: float
) -> None:
    c = counts(tp, fp, fn, tn)
    assert dice_from_counts(c).item() == pytest.approx(dice)
    assert iou_from_counts(c).item() == pytest.approx(iou)
    assert pixel_accuracy_from_counts(c).item() == pytest.approx(accuracy)


def test_metrics_from_counts_work_row_wise_on_a_batch() -> None:
    batch = torch.stack([counts(1, 1, 0, 2), counts(2, 0, 2, 0)])
    # row 0: Dice 2/3, IoU 1/2, acc 3/4; row 1: Dice 4/6, IoU 2/4, acc 2/4
    assert dice_from_counts(batch).tolist() == pytest.approx([2 / 3, 2 / 3])
    assert iou_from_counts(batch).tolist() == pytest.approx([1 / 2, 1 / 2])
    assert pixel_accuracy_from_counts(batch).tolist() == pytest.approx([3 / 4, 1 / 2])


# --- empty-mask policy ------------------------------------------------------------------------


def test_both_masks_empty_scores_a_perfect_one() -> None:
    empty = mask([[0, 0], [0, 0]])
    c = confusion_counts(empty, empty)
    assert c.tolist() == [[0, 0, 0, 4]]
    assert dice_from_counts(c).tolist() == [1.0]
    assert iou_from_counts(c).tolist() == [1.0]
    assert pixel_accuracy_from_counts(c).tolist() == [1.0]


def test_empty_ground_truth_with_any_predicted_pixel_scores_zero() -> None:
    c = confusion_counts(mask([[0, 1], [0, 0]]), mask([[0, 0], [0, 0]]))
    assert c.tolist() == [[0, 1, 0, 3]]
    assert dice_from_counts(c).tolist() == [0.0]
    assert iou_from_counts(c).tolist() == [0.0]


def test_empty_prediction_with_a_non_empty_ground_truth_scores_zero() -> None:
    c = confusion_counts(mask([[0, 0], [0, 0]]), mask([[0, 0], [1, 1]]))
    assert dice_from_counts(c).tolist() == [0.0]
    assert iou_from_counts(c).tolist() == [0.0]


def test_metrics_are_finite_for_all_zero_counts() -> None:
    zero = counts(0, 0, 0, 0)
    for metric in (dice_from_counts, iou_from_counts, pixel_accuracy_from_counts):
        assert torch.isfinite(metric(zero)).all()


# --- SegmentationScores -----------------------------------------------------------------------


def two_image_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Image A: prediction and target fully pet (tp 4) -> Dice 1.
    Image B: one predicted pixel, one different target pixel (tp 0, fp 1, fn 1, tn 2) -> Dice 0.
    """
    preds = torch.stack([mask([[1, 1], [1, 1]])[0], mask([[1, 0], [0, 0]])[0]])
    targets = torch.stack([mask([[1, 1], [1, 1]])[0], mask([[0, 0], [0, 1]])[0]])
    return preds, targets


def test_per_image_mean_dice_differs_from_dataset_dice() -> None:
    scores = SegmentationScores()
    scores.update(*two_image_example())
    summary = scores.summary()
    # per-image: (1 + 0) / 2 = 0.5
    assert summary["dice"] == pytest.approx(0.5)
    # dataset: tp 4, fp 1, fn 1 -> 2*4 / (2*4 + 1 + 1) = 0.8
    assert summary["dice_dataset"] == pytest.approx(0.8)
    # dataset IoU 4 / (4 + 1 + 1) = 2/3; pixel accuracy (4 + 2) / 8 = 3/4
    assert summary["iou"] == pytest.approx(2 / 3)
    assert summary["pixel_accuracy"] == pytest.approx(3 / 4)
    assert summary["num_images"] == 2
    assert scores.per_image_dice() == pytest.approx([1.0, 0.0])


def test_summary_applies_the_empty_mask_policy_per_image() -> None:
    scores = SegmentationScores()
    empty = mask([[0, 0], [0, 0]])
    scores.update(empty, empty)  # both empty -> 1.0
    scores.update(mask([[0, 0], [0, 1]]), empty)  # empty truth, one predicted pixel -> 0.0
    summary = scores.summary()
    assert scores.per_image_dice() == [1.0, 0.0]
    assert summary["dice"] == pytest.approx(0.5)
    # summed: tp 0, fp 1, fn 0 -> Dice 0; pixel accuracy 7/8
    assert summary["dice_dataset"] == 0.0
    assert summary["pixel_accuracy"] == pytest.approx(7 / 8)


def random_masks(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    preds = torch.rand(n, 1, 6, 5, generator=generator) > 0.6
    targets = torch.rand(n, 1, 6, 5, generator=generator) > 0.4
    preds[0] = False  # include the empty-mask cases
    targets[0] = False
    targets[1] = False
    return preds, targets


def test_summary_does_not_depend_on_the_batching() -> None:
    preds, targets = random_masks(7, seed=1)
    whole = SegmentationScores()
    whole.update(preds, targets)
    split = SegmentationScores()
    split.update(preds[:3], targets[:3])
    split.update(preds[3:], targets[3:])
    one_by_one = SegmentationScores()
    for index in range(7):
        one_by_one.update(preds[index : index + 1], targets[index : index + 1])
    assert whole.num_images == split.num_images == one_by_one.num_images == 7
    assert torch.equal(whole.counts, split.counts)
    assert torch.equal(whole.counts, one_by_one.counts)
    assert split.summary() == pytest.approx(whole.summary())
    assert one_by_one.summary() == pytest.approx(whole.summary())


def test_summary_matches_a_direct_computation_over_the_images() -> None:
    preds, targets = random_masks(5, seed=2)
    scores = SegmentationScores()
    scores.update(preds[:2], targets[:2])
    scores.update(preds[2:], targets[2:])
    dices = []
    for pred, target in zip(preds, targets, strict=True):
        tp = (pred & target).sum().item()
        denominator = pred.sum().item() + target.sum().item()
        dices.append(1.0 if denominator == 0 else 2 * tp / denominator)
    tp_all = (preds & targets).sum().item()
    assert scores.summary()["dice"] == pytest.approx(sum(dices) / len(dices))
    assert scores.summary()["dice_dataset"] == pytest.approx(
        2 * tp_all / (preds.sum().item() + targets.sum().item())
    )
    assert scores.summary()["pixel_accuracy"] == pytest.approx(
        (preds == targets).float().mean().item()
    )


def test_scores_update_rejects_mismatched_shapes() -> None:
    scores = SegmentationScores()
    with pytest.raises(ValueError):
        scores.update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    assert scores.num_images == 0


def test_summary_without_images_raises() -> None:
    scores = SegmentationScores()
    assert scores.num_images == 0
    assert scores.counts.shape == (0, 4)
    with pytest.raises(ValueError):
        scores.summary()


def test_separate_score_objects_do_not_share_state() -> None:
    first = SegmentationScores()
    first.update(*two_image_example())
    assert SegmentationScores().num_images == 0


# --- the trimap border band -------------------------------------------------------------------

# pred            target          border          outside the band    inside the band
# 1 1 0           1 1 0           0 1 0           tp .  tn            .  tp .
# 1 0 0           1 1 0           0 1 0           tp .  tn            .  fn .
# 0 0 1           0 0 0           0 0 0           tn tn fp
PRED_BAND = [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
TARGET_BAND = [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
BORDER_BAND = [[0, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_confusion_counts_inside_a_pixel_set() -> None:
    preds, targets, border = mask(PRED_BAND), mask(TARGET_BAND), mask(BORDER_BAND)
    assert confusion_counts(preds, targets).tolist() == [[3, 1, 1, 4]]
    assert confusion_counts(preds, targets, border).tolist() == [[1, 0, 1, 0]]
    assert confusion_counts(preds, targets, 1 - border).tolist() == [[2, 1, 0, 4]]
    with pytest.raises(ValueError):
        confusion_counts(preds, targets, border[..., :2])


def test_border_scores_on_a_hand_made_case() -> None:
    scores = SegmentationScores()
    scores.update(mask(PRED_BAND), mask(TARGET_BAND), mask(BORDER_BAND))
    exact = mask([[1, 0], [0, 0]])
    scores.update(exact, exact, torch.zeros_like(exact))  # a 2x2 image without border: Dice 1
    summary = scores.summary()
    # headline, border counted as pet: image 1 Dice 2*3 / (2*3 + 1 + 1) = 3/4, image 2 Dice 1
    assert summary["dice"] == pytest.approx((3 / 4 + 1) / 2)
    # border ignored: image 1 outside the band tp 2 fp 1 fn 0 -> 4/5; image 2 -> 1
    assert summary["dice_border_ignored"] == pytest.approx((4 / 5 + 1) / 2)
    # two border pixels in the split, one predicted pet
    assert summary["border_accuracy"] == pytest.approx(1 / 2)
    assert summary["border_fraction"] == pytest.approx(2 / 13)
    assert torch.equal(
        scores.counts - scores.border_counts, torch.tensor([[2, 1, 0, 4], [1, 0, 0, 3]])
    )


def test_border_accuracy_is_none_when_the_split_has_no_border() -> None:
    scores = SegmentationScores()
    preds, targets = two_image_example()
    scores.update(preds, targets, torch.zeros_like(targets))
    summary = scores.summary()
    assert summary["border_accuracy"] is None
    assert summary["border_fraction"] == 0.0
    assert summary["dice_border_ignored"] == pytest.approx(summary["dice"])


def test_summary_has_no_border_figures_without_borders() -> None:
    scores = SegmentationScores()
    scores.update(*two_image_example())
    assert scores.border_counts is None
    assert (
        not {"dice_border_ignored", "border_accuracy", "border_fraction"} & scores.summary().keys()
    )


def test_borders_must_be_given_in_every_update_or_in_none() -> None:
    preds, targets = two_image_example()
    with_borders = SegmentationScores()
    with_borders.update(preds, targets, torch.zeros_like(targets))
    with pytest.raises(ValueError):
        with_borders.update(preds, targets)
    without = SegmentationScores()
    without.update(preds, targets)
    with pytest.raises(ValueError):
        without.update(preds, targets, torch.zeros_like(targets))
