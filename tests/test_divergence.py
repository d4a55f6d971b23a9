"""When a run has diverged, and that a broken validation never counts as the best."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from petseg.checkpoint import last_checkpoint_path
from petseg.divergence import counts_as_best, diverged_message, divergence
from petseg.models import build_model


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet", widths=[4, 8])


def test_a_healthy_epoch_has_not_diverged(model) -> None:
    assert divergence(0.9, 0.7, "bce", model) == ""
    assert divergence(0.9, 6.9, "bce", model) == ""  # just under 10 x ln 2


@pytest.mark.parametrize(
    ("train_loss", "valid_loss", "loss", "reason"),
    [
        (math.nan, 0.7, "bce", "train loss nan"),
        (math.inf, 0.7, "bce_dice", "train loss inf"),
        (0.7, math.nan, "dice", "valid loss nan"),
        (
            0.7,
            2e23,
            "bce",
            "valid loss 2e+23, above 6.93, 10x the loss of predicting 0.5 everywhere",
        ),
        (
            0.7,
            17.0,
            "bce_dice",
            "valid loss 17, above 16.9, 10x the loss of predicting 0.5 everywhere",
        ),
    ],
)
def test_losses_that_diverged(model, train_loss, valid_loss, loss, reason) -> None:
    assert divergence(train_loss, valid_loss, loss, model) == reason


def test_a_half_size_epoch_is_judged_by_its_train_loss(model) -> None:
    # validated at full size, a model trained at half size can show a huge valid loss
    assert divergence(0.9, 65.2, "bce_dice", model, low_res=True) == ""
    assert divergence(17.0, 0.9, "bce_dice", model, low_res=True) == (
        "train loss 17, above 16.9, 10x the loss of predicting 0.5 everywhere"
    )
    assert divergence(0.9, math.nan, "bce", model, low_res=True) == "valid loss nan"


def test_non_finite_weights_have_diverged(model) -> None:
    with torch.no_grad():
        next(model.parameters()).view(-1)[:3] = math.inf
    assert divergence(0.7, 0.7, "bce", model) == "3 weights are NaN or infinite"


def test_non_finite_validations_never_count_as_best() -> None:
    assert counts_as_best(0.5, 0.7, -math.inf)
    assert not counts_as_best(0.5, math.nan, -math.inf)
    assert not counts_as_best(math.nan, 0.7, -math.inf)
    assert not counts_as_best(0.5, 0.7, 0.6)


def test_the_message_says_what_was_kept(tmp_path: Path) -> None:
    model_path = tmp_path / "m.pt"
    assert "nothing saved" in diverged_message(1, "valid loss nan", model_path)
    last_checkpoint_path(model_path).write_text("x")
    model_path.write_text("x")
    message = diverged_message(3, "valid loss nan", model_path)
    assert f"{last_checkpoint_path(model_path)} (epoch 2) and {model_path} stay" in message
    assert "resume after epoch 2" in message
