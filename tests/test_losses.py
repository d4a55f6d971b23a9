"""Losses on tiny hand-computed tensors: known values, near zero when perfect, gradients flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from petseg.errors import PetsegError
from petseg.losses import (
    LOSSES,
    bce_dice_loss,
    bce_loss,
    deep_supervision_loss,
    get_loss,
    soft_dice_loss,
)

TARGETS = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # (1, 1, 2, 2): half pet


def test_values_at_zero_logits_match_hand_computation() -> None:
    logits = torch.zeros_like(TARGETS)  # every probability 1/2
    assert bce_loss(logits, TARGETS).item() == pytest.approx(math.log(2))
    # soft Dice: overlap 2 x 0.5 = 1, sums 2 + 2 -> 1 - (2 * 1 + 1) / (4 + 1) = 0.4
    assert soft_dice_loss(logits, TARGETS).item() == pytest.approx(0.4)
    assert bce_dice_loss(logits, TARGETS).item() == pytest.approx(math.log(2) + 0.4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_confident_perfect_prediction_scores_near_zero(name: str) -> None:
    logits = (TARGETS * 2 - 1) * 20
    assert get_loss(name)(logits, TARGETS).item() < 1e-6


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_wrong_prediction_costs_more_than_an_unsure_one(name: str) -> None:
    loss = get_loss(name)
    wrong = (1 - TARGETS * 2) * 5
    assert loss(wrong, TARGETS) > loss(torch.zeros_like(TARGETS), TARGETS)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_flow_and_push_logits_towards_the_target(name: str) -> None:
    logits = torch.zeros_like(TARGETS, requires_grad=True)
    get_loss(name)(logits, TARGETS).backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all()
    # descending the gradient raises pet logits and lowers background ones
    assert (grad[TARGETS == 1] < 0).all() and (grad[TARGETS == 0] > 0).all()


def test_soft_dice_is_a_mean_over_images_not_over_pixels() -> None:
    # image 1: a 1-pixel pet predicted perfectly; image 2: a 3-pixel pet missed entirely
    targets = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 0.0]]]])
    logits = torch.full_like(targets, -30.0)
    logits[0, 0, 0, 0] = 30.0
    first = 1 - (2 * 1 + 1) / (1 + 1 + 1)  # ~0
    second = 1 - 1 / (3 + 1)
    assert soft_dice_loss(logits, targets).item() == pytest.approx((first + second) / 2, abs=1e-6)


def test_an_empty_mask_predicted_empty_costs_nothing() -> None:
    targets = torch.zeros(1, 1, 2, 2)
    assert soft_dice_loss(torch.full_like(targets, -30.0), targets).item() < 1e-6


def test_unknown_loss_is_a_clear_error() -> None:
    with pytest.raises(PetsegError, match="bce_dice"):
        get_loss("focal")


def test_deep_supervision_adds_the_weighted_mean_of_the_upsampled_auxiliary_losses() -> None:
    targets = torch.zeros(2, 1, 8, 8)
    targets[:, :, :4] = 1  # the top half is pet
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    right = torch.where(targets[:, :, ::2, ::2] > 0, 6.0, -6.0).requires_grad_()  # 4x4 outputs
    wrong = (-right.detach()).requires_grad_()
    base = bce_loss(logits, targets)
    assert deep_supervision_loss(bce_loss, logits, [], targets) == base

    def upsampled_bce(aux: torch.Tensor) -> torch.Tensor:
        return bce_loss(F.interpolate(aux.detach(), size=(8, 8), mode="bilinear"), targets)

    total = deep_supervision_loss(bce_loss, logits, [right, wrong], targets, weight=0.5)
    expected = base + 0.5 * (upsampled_bce(right) + upsampled_bce(wrong)) / 2
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert upsampled_bce(wrong) > 10 * upsampled_bce(right)  # the upsampling kept the halves
    total.backward()
    # gradients reach every output; the wrong one is pushed towards the targets
    assert logits.grad is not None and right.grad is not None
    assert (wrong.grad[targets[:, :, ::2, ::2] > 0] < 0).all()
