"""--progressive: the first share of the epochs trains on batches downscaled 2x, the rest (and
always the last epoch) at full size; the count of such epochs, the step that downscales, the
lines that say so, exact resume inside a half-size epoch, and the estimates and budgets that
price half-size epochs at their own measured steps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from petseg.budget import (
    PLANNED_SHARE,
    EpochCost,
    budget_line,
    choose_epochs,
    estimate_line,
    low_res_epochs,
)
from petseg.checkpoint import last_checkpoint_path
from petseg.cli import main
from petseg.config import from_plain, resolve_train_config, to_plain
from petseg.errors import PetsegError
from petseg.evaluate import evaluate_model
from petseg.pictures import render_curves
from petseg.train import TrainStep, epoch_downscale, train_one_epoch

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread(single_thread: None) -> None:
    """Small models train faster on one thread of a busy machine; results do not depend on it."""


# --- which epochs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("progressive", "epochs", "low"),
    [(0.0, 40, 0), (0.5, 40, 20), (0.5, 5, 3), (0.5, 3, 2), (0.25, 10, 3), (0.5, 1, 0),
     (0.9, 2, 1), (0.99, 10, 9)],
)  # fmt: skip
def test_the_share_is_rounded_half_up_and_never_takes_the_last_epoch(
    progressive: float, epochs: int, low: int
) -> None:
    assert low_res_epochs(progressive, epochs) == low


def test_the_recipe_downscales_its_first_epochs_only() -> None:
    recipe = resolve_train_config({"progressive": 0.5, "epochs": 4}).recipe
    assert [epoch_downscale(recipe, epoch) for epoch in range(1, 5)] == [2, 2, 1, 1]
    plain = resolve_train_config({"epochs": 4}).recipe
    assert [epoch_downscale(plain, epoch) for epoch in range(1, 5)] == [1, 1, 1, 1]


@pytest.mark.parametrize("share", [1.0, -0.1, float("nan")])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(PetsegError, match="--progressive must be"):
        resolve_train_config({"progressive": share})


# --- the step ----------------------------------------------------------------------------------


class Recorder(nn.Module):
    """A 1x1 conv that notes the size of each input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(images.shape[-2:]))
        return self.conv(images)


def test_a_downscaled_step_averages_images_and_masks_over_2x2_blocks() -> None:
    images = torch.arange(16.0).reshape(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    masks = torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]])[None, None]
    seen: dict[str, torch.Tensor] = {}

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen["targets"] = targets
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)

    model = Recorder()
    step = TrainStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, CPU, progress=False
    )
    train_one_epoch(step, [(images, masks)], downscale=2)
    assert model.sizes == [(2, 2)]
    assert seen["targets"].flatten().tolist() == [0.25, 1.0, 0.0, 0.25]
    train_one_epoch(step, [(images, masks)])
    assert model.sizes[-1] == (4, 4) and seen["targets"].shape[-2:] == (4, 4)


# --- runs --------------------------------------------------------------------------------------


def weights(model_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(last_checkpoint_path(model_path), weights_only=True)["state_dict"]


def test_a_progressive_run_says_which_epochs_are_half_size_and_estimates_both(
    data, tmp_path, train_args, capsys, monkeypatch
) -> None:
    def written(*args: object) -> float:
        raise AssertionError("a run without a budget wrote trial checkpoints to time them")

    monkeypatch.setattr("petseg.train.time_epoch_files", written)  # the estimate times steps only
    shaded: list[int] = []

    def curves(*args: object, low_res_epochs: int = 0, **kwargs: object) -> bytes:
        shaded.append(low_res_epochs)
        return render_curves(*args, low_res_epochs=low_res_epochs, **kwargs)

    monkeypatch.setattr("petseg.train.render_curves", curves)
    argv = [*train_args(data, tmp_path / "m.pt", "--progressive", "0.5"), "--epochs", "4"]
    assert main(argv) == 0
    assert shaded == [2, 2, 2, 2]  # every epoch's curves shade the two half-size epochs
    out = capsys.readouterr().out
    assert "epochs 1-2 at 16 px" in out  # the recipe line; the size is 32 px
    estimate = next(line for line in out.splitlines() if line.startswith("estimated:"))
    assert " for 4 epochs at 32 px (" in estimate and "; 2 at 16 px, about " in estimate
    assert "epoch 2/4 at 16 px" not in out  # the bars' names are not the epoch lines
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[0] for line in lines] == [
        "epoch 1/4",
        "epoch 2/4",
        "epoch 3/4",
        "epoch 4/4",
    ]


def test_a_run_resumed_inside_a_half_size_epoch_trains_as_the_uninterrupted_one(
    data, tmp_path, train_args, monkeypatch, ctrl_c_at_poll
) -> None:
    flags = ("--progressive", "0.5", "--epochs", "2")
    whole = tmp_path / "whole.pt"
    assert main(train_args(data, whole, *flags)) == 0
    broken = tmp_path / "broken.pt"
    monkeypatch.setattr("petseg.train.stop_requests_on_ctrl_c", ctrl_c_at_poll(3))
    assert main(train_args(data, broken, *flags)) == 130  # in epoch 1, at half size
    assert torch.load(last_checkpoint_path(broken), weights_only=True)["partial_epoch"]["batches"]
    monkeypatch.undo()
    assert main(train_args(data, broken, *flags)) == 0
    one, two = weights(whole), weights(broken)
    assert all(torch.equal(one[key], two[key]) for key in one)
    full = tmp_path / "full.pt"
    assert main(train_args(data, full, "--epochs", "2")) == 0
    assert not all(torch.equal(one[key], weights(full)[key]) for key in one)


def test_a_huge_valid_loss_after_a_half_size_epoch_is_not_divergence(
    data, tmp_path, train_args, fails_with, monkeypatch
) -> None:
    # Validated at full size, a model trained at half size can score a valid loss far above
    # the divergence limit while it trains well; only full-size epochs are judged by it.
    def inflated(*args: object, **kwargs: object):
        return replace(evaluate_model(*args, **kwargs), loss=65.0)

    monkeypatch.setattr("petseg.train.evaluate_model", inflated)
    flags = ("--progressive", "0.5", "--epochs", "2")
    fails_with(train_args(data, tmp_path / "m.pt", *flags), "diverged in epoch 2 (valid loss 65")
    fails_with(train_args(data, tmp_path / "n.pt", "--epochs", "2"), "diverged in epoch 1")


# --- budgets and estimates ---------------------------------------------------------------------


def cost(low_res_step_s: float | None = 0.25) -> EpochCost:
    return EpochCost(1.0, 100, 15.0, 5.0, timed_steps=6, low_res_step_s=low_res_step_s)


def test_a_half_size_epoch_costs_its_own_steps() -> None:
    assert cost().low_res_epoch_s == 100 * 0.25 + 15 + 5
    assert cost(None).low_res_epoch_s == cost().epoch_s  # not measured: a full-size epoch
    assert cost().run_s(10, 4) == 4 * 45 + 6 * 120


def test_a_budget_fits_more_epochs_when_half_of_them_are_cheaper() -> None:
    plain = choose_epochs(3600, cost(), cap=1000)
    progressive = choose_epochs(3600, cost(), cap=1000, progressive=0.5)
    assert progressive > plain

    def run_s(epochs: int) -> float:
        return cost().run_s(epochs, low_res_epochs(0.5, epochs))

    assert run_s(progressive) <= 3600 * 0.9 < run_s(progressive + 1)


@pytest.mark.parametrize("progressive", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("budget_s", [50.0, 1000.0, 3600.0, 1e6])
def test_the_choice_is_the_most_epochs_that_fit(progressive: float, budget_s: float) -> None:
    def run_s(epochs: int) -> float:
        return cost().run_s(epochs, low_res_epochs(progressive, epochs))

    fitting = [e for e in range(1, 301) if run_s(e) <= budget_s * PLANNED_SHARE]
    chosen = choose_epochs(budget_s, cost(), cap=300, progressive=progressive)
    assert chosen == max(fitting, default=1)
    assert choose_epochs(1e30, cost(), cap=10**12) == 10**12  # a huge cap costs no time


def test_the_lines_name_the_half_size_epochs() -> None:
    line = budget_line(3600, 40, 50, cost(), other_s=30, progressive=(0.5, 64))
    assert "40 epochs of about 2 min each, the first 20 at 64 px in about 45 s each" in line
    assert "about 56 min in all" in line  # 30 s + 20 x 45 s + 20 x 120 s = 55.5 min
    estimate = estimate_line(cost(), 40, 128, resumed=False, low_res=(20, 64))
    assert estimate.startswith(
        "estimated: about 55 min for 40 epochs at 128 px ("
    )  # 55 min = 3300 s
    assert "; 20 at 64 px, about 45 s each)" in estimate
    only_low = estimate_line(cost(), 2, 128, resumed=True, low_res=(2, 64))
    assert "for 2 epochs left at 64 px (about 45 s an epoch" in only_low


def test_a_checkpoint_config_from_before_the_flag_reads_as_no_progressive() -> None:
    plain = to_plain(resolve_train_config({"progressive": 0.5}))
    del plain["recipe"]["progressive"]
    assert from_plain(plain).recipe.progressive == 0.0
