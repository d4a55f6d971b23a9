"""Learning rates at a few steps of each schedule; onecycle agrees with torch's OneCycleLR."""

from __future__ import annotations

import itertools

import pytest
import torch

from petseg.errors import PetsegError
from petseg.schedules import (
    COSINE_FLOOR,
    COSINE_WARMUP_EPOCHS,
    learning_rate_at,
    resolve_warmup_epochs,
    schedule_points,
)


def test_constant_is_the_base_rate_everywhere() -> None:
    rates = [learning_rate_at(s, base_lr=1e-4, total_steps=50, warmup_steps=5) for s in (0, 49)]
    assert rates == [1e-4, 1e-4]


def test_cosine_warms_up_linearly_then_decays_to_the_floor() -> None:
    def rate(step: int) -> float:
        return learning_rate_at(
            step, base_lr=1e-3, total_steps=105, scheduler="cosine", warmup_steps=4
        )

    assert [rate(s) for s in range(4)] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4])
    assert rate(4) == pytest.approx(1e-3)  # the peak right after warmup
    assert rate(54) == pytest.approx(1e-3 * (1 + COSINE_FLOOR) / 2)  # halfway down
    assert rate(104) == pytest.approx(1e-3 * COSINE_FLOOR)  # the last step
    decay = [rate(s) for s in range(4, 105)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


@pytest.mark.parametrize("total_steps", [7, 100, 640])
def test_onecycle_matches_torch_onecyclelr(total_steps: int) -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=total_steps)
    for step in range(total_steps):
        expected = optimizer.param_groups[0]["lr"]
        got = learning_rate_at(step, base_lr=1e-3, total_steps=total_steps, scheduler="onecycle")
        assert got == pytest.approx(expected, rel=1e-9), step
        optimizer.step()
        reference.step()


def test_onecycle_peaks_at_thirty_percent() -> None:
    rates = [
        learning_rate_at(s, base_lr=2e-3, total_steps=100, scheduler="onecycle") for s in range(100)
    ]
    assert max(rates) == pytest.approx(2e-3)
    assert rates.index(max(rates)) == 29
    assert rates[0] == pytest.approx(2e-3 / 25)


@pytest.mark.parametrize(("total_steps", "warmup_steps"), [(100, 10), (340, 34), (50, 2)])
def test_onecycle_with_a_chosen_warmup_matches_onecyclelr_pct_start(
    total_steps: int, warmup_steps: int
) -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 1e-3, total_steps=total_steps, pct_start=warmup_steps / total_steps
    )
    rates = []
    for step in range(total_steps):
        kwargs = {"total_steps": total_steps, "scheduler": "onecycle", "warmup_steps": warmup_steps}
        rates.append(learning_rate_at(step, base_lr=1e-3, **kwargs))
        assert rates[-1] == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9), step
        optimizer.step()
        reference.step()
    assert rates.index(max(rates)) == warmup_steps - 1


def test_onecycle_without_warmup_starts_at_the_peak_and_decays() -> None:
    rates = [
        learning_rate_at(s, base_lr=1e-3, total_steps=20, scheduler="onecycle", warmup_steps=0)
        for s in range(20)
    ]
    assert rates[0] == pytest.approx(1e-3, rel=1e-2)
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_each_schedule_has_its_own_default_warmup() -> None:
    assert resolve_warmup_epochs("cosine", None) == COSINE_WARMUP_EPOCHS
    assert resolve_warmup_epochs("onecycle", None) is None  # OneCycleLR's 30%
    assert resolve_warmup_epochs("onecycle", 2.0) == 2.0
    assert resolve_warmup_epochs("cosine", 0.0) == 0.0


def test_unknown_scheduler_is_a_clear_error() -> None:
    with pytest.raises(PetsegError, match="onecycle"):
        learning_rate_at(0, base_lr=1e-3, total_steps=10, scheduler="step")


def test_schedule_points_follow_the_schedule_to_the_step_done() -> None:
    schedule = {"base_lr": 1e-3, "total_steps": 1000, "scheduler": "cosine", "warmup_steps": 100}
    points = schedule_points(600, 100, **schedule)
    assert len(points) <= 201
    assert points[0] == (0.01, learning_rate_at(0, **schedule))
    assert points[-1] == (6.0, learning_rate_at(599, **schedule))  # step 600 ends epoch 6
    assert [epoch for epoch, _ in points] == sorted(epoch for epoch, _ in points)
    assert schedule_points(0, 100, **schedule) == []
