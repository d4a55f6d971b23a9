"""Time budgets: --time_budget parsing, the epoch choice, a budget run trains exactly as the same
run given its chosen --epochs, the choice kept on resume, the duration estimate each run prints,
and the default budget of a new CPU run given neither --epochs nor --time_budget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import petseg.distributed
import petseg.train
from petseg.budget import (
    PLANNED_SHARE,
    EpochCost,
    StepClock,
    budget_line,
    choose_epochs,
    duration_flag,
    estimate_line,
    estimate_plan,
    format_duration,
    parse_duration,
)
from petseg.checkpoint import last_checkpoint_path
from petseg.cli import main
from petseg.config import CPU_TIME_BUDGET_S, PRESETS, resolve_train_config, short_run_variant
from petseg.errors import PetsegError
from petseg.train import config_from_flags


@pytest.fixture(autouse=True)
def one_thread(single_thread: None) -> None:
    """Small models train faster on one thread of a busy machine; results do not depend on it."""


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
     ("2H", 7200), ("1h0m5s", 3605), ("0.5s", 0.5)],
)  # fmt: skip
def test_a_duration_is_hours_minutes_and_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "flag"),
    [(7200, "2h"), (5400, "1h30m"), (90, "1m30s"), (3605, "1h5s"), (0.5, "0.5s")],
)
def test_a_duration_is_written_back_as_the_flag_takes_it(seconds: float, flag: str) -> None:
    assert duration_flag(seconds) == flag
    assert parse_duration(flag) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [("90", "add a unit"), ("2 hours", "like 90s"), ("0s", "positive"), ("0h0m", "positive"),
     ("-5m", "like 90s"), ("inf", "like 90s"), ("nan", "like 90s"), ("1m2h", "like 90s"),
     ("", "like 90s")],
)  # fmt: skip
def test_a_bad_duration_is_a_one_line_usage_error(text: str, reason: str, usage_error) -> None:
    line = usage_error(["train", f"--time_budget={text}"])
    assert "--time_budget" in line and reason in line and "petseg train --help" in line


def test_a_time_budget_that_is_not_finite_or_positive_is_refused_by_the_config() -> None:
    for seconds in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(PetsegError, match="--time_budget"):
            resolve_train_config({"time_budget": seconds})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "1 s"), (45, "45 s"), (144, "2.4 min"), (300, "5 min"), (1740, "29 min"),
     (11520, "3.2 h"), (7200, "2 h")],
)  # fmt: skip
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- the epoch choice --------------------------------------------------------------------------


def cost(step_s: float = 1.0, steps: int = 100, valid_s: float = 15.0, save_s: float = 5.0):
    return EpochCost(step_s, steps, valid_s, save_s, timed_steps=6)


def test_an_epoch_costs_its_steps_its_validation_and_its_files() -> None:
    assert cost().epoch_s == 100 * 1.0 + 15 + 5


def test_the_epochs_chosen_fill_the_planned_share_of_the_budget_left() -> None:
    # 3600 s less 600 s already spent, planned at PLANNED_SHARE, in epochs of 120 s
    expected = int((3600 - 600) * PLANNED_SHARE // 120)
    assert choose_epochs(3600, cost(), cap=1000, other_s=600) == expected
    assert expected * 120 <= 3000 < (expected + 1) * 120 / PLANNED_SHARE
    # twice the steps an epoch: about half the epochs
    assert choose_epochs(3600, cost(steps=220), cap=1000, other_s=600) == expected // 2


def test_the_epoch_choice_is_at_least_one_and_at_most_the_cap() -> None:
    assert choose_epochs(10, cost(), cap=50) == 1  # one epoch takes longer than the budget
    assert choose_epochs(10, cost(), cap=50, other_s=60) == 1  # the budget is spent already
    assert choose_epochs(36_000, cost(), cap=50) == 50
    assert choose_epochs(36_000, cost(), cap=3) == 3


def test_the_budget_line_says_what_decided() -> None:
    line = budget_line(1800, 12, 50, cost(step_s=1.2), other_s=30)
    assert line == (
        "time budget 30m: 12 epochs of about 2.3 min each (measured on 6 steps), about 28 min "
        "in all"
    )
    assert "(the cap, --epochs 3)" in budget_line(36_000, 3, 3, cost(), other_s=30)
    over = budget_line(60, 1, 50, cost(), other_s=10)
    assert over.startswith("time budget 1m: 1 epoch of about 2 min (") and "over the budget" in over


def test_the_estimate_line_names_the_epochs_the_size_and_an_epochs_time() -> None:
    assert estimate_line(cost(step_s=2.0), 50, 128, resumed=False) == (
        "estimated: about 3.1 h for 50 epochs at 128 px (about 3.7 min an epoch, with validation)"
    )
    assert "for 1 epoch left at 64 px" in estimate_line(cost(), 1, 64, resumed=True)


@pytest.mark.parametrize(
    ("steps", "plan"), [(1, (0, 1)), (2, (1, 1)), (4, (2, 1)), (40, (2, 4)), (500, (2, 10))]
)
def test_the_live_estimate_skips_warmup_then_times_ten_steps_or_a_tenth(steps, plan) -> None:
    assert estimate_plan(steps) == plan


def test_the_step_clock_answers_once_after_the_timed_steps() -> None:
    now = [0.0]
    clock = StepClock(untimed=2, timed=2, clock=lambda: now[0])
    answers = []
    for step_end in (5.0, 9.0, 10.0, 11.5, 13.0):
        now[0] = step_end
        answers.append(clock.tick())
    assert answers == [None, None, None, (11.5 - 9.0) / 2, None]


# --- runs with a budget ------------------------------------------------------------------------


def resnet_args(train_args, data: Path, model_path: Path, *extra: str) -> list[str]:
    """The tiny run as a ResNet34-UNet: its stochastic depth draws from torch's global random
    state in every training step, so a measurement that left a trace there would show."""
    argv = train_args(data, model_path, *extra)
    argv[argv.index("unet")] = "resnet34_unet"
    at = argv.index("--unet_widths")
    argv[at : at + 2] = ["--decoder_widths", "8,8,8,8,8"]
    return argv


def weights(model_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(last_checkpoint_path(model_path), weights_only=True)["state_dict"]


def assert_same_weights(first: Path, second: Path) -> None:
    one, two = weights(first), weights(second)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[key], two[key]) for key in one)


def test_a_budget_run_trains_exactly_as_the_same_run_given_its_epochs(
    data, tmp_path, train_args, capsys
) -> None:
    # a budget that one epoch overruns: 1 epoch chosen, of a cap of 3, so the schedule is
    # the 1-epoch one
    budget = tmp_path / "budget.pt"
    full = ("--short_run", "off")  # the full recipe, whose stochastic depth draws
    argv = [*resnet_args(train_args, data, budget, "--time_budget", "0.01s"), "--epochs", "3"]
    assert main([*argv, *full]) == 0
    out = capsys.readouterr().out
    assert "time budget 0.01s: 1 epoch of about" in out and "over the budget" in out
    assert torch.load(budget, weights_only=True)["config"]["recipe"]["epochs"] == 1

    given = tmp_path / "given.pt"
    assert main([*resnet_args(train_args, data, given), *full]) == 0  # --epochs 1
    assert_same_weights(budget, given)


def test_a_budget_that_buys_few_epochs_trains_the_short_run_recipe_as_if_given_them(
    data, tmp_path, train_args, capsys
) -> None:
    # 1 epoch of the full recipe fits (at most 20): the run starts again with the short-run
    # recipe, measures it and chooses its own epochs, then trains as `--epochs 1` does (a given
    # --drop_path keeps stochastic depth, whose draws would show a measurement's trace)
    budget, given = tmp_path / "budget.pt", tmp_path / "given.pt"
    depth = ("--drop_path", "0.1")
    argv = [*resnet_args(train_args, data, budget, "--time_budget", "0.01s"), "--epochs", "3"]
    assert main([*argv, *depth]) == 0
    out = capsys.readouterr().out
    switch = "short run: 1 epoch of the full recipe fit the budget (at most 20), so the short-run"
    assert switch in out
    assert out.index("timing a few steps") < out.index(switch) < out.rindex("timing a few steps")
    recipe = "short-run recipe (--short_run off: the full one): "
    assert recipe in out and "flip augmentation" in out.split(recipe)[1].splitlines()[0]
    config = torch.load(budget, weights_only=True)["config"]
    assert (config["short_run"], config["recipe"]["epochs"], config["recipe"]["augment"]) == (
        "on", 1, "flip",
    )  # fmt: skip
    assert main([*resnet_args(train_args, data, given), *depth]) == 0  # --epochs 1: short too
    assert torch.load(given, weights_only=True)["config"]["short_run"] == "on"
    assert_same_weights(budget, given)


def test_a_budget_that_buys_more_epochs_keeps_the_full_recipe() -> None:
    flags = {"model_type": "resnet34_unet", "time_budget": 3600.0, "batch_size": 6}
    config = resolve_train_config(flags)
    preset = PRESETS["resnet34_unet"].recipe
    assert config.short_run == "auto" and config.recipe == replace(preset, batch_size=6)
    short = short_run_variant(config, flags)  # the given --batch_size wins over the short run's
    assert short is not None and short.short_run == "on"
    assert (short.recipe.batch_size, short.recipe.progressive, short.model.drop_path) == (6, 0.5, 0)
    world = petseg.distributed.World(torch.device("cpu"))
    for epochs, kept in ((21, "off"), (50, "off")):
        chosen = replace(config, recipe=replace(config.recipe, epochs=epochs))
        run = petseg.train.Run(chosen, world, None, None, None, None, None)  # type: ignore[arg-type]
        settled = petseg.train.settle_short_run(run, short, started=0.0)
        assert settled.config == replace(chosen, short_run=kept)
    # the unet has no short-run recipe: its budget runs are settled at once
    unet = resolve_train_config({"model_type": "unet", "time_budget": 60.0})
    assert unet.short_run == "off" and short_run_variant(unet, {}) is None


def test_a_budget_run_capped_by_its_epochs_trains_as_the_run_given_them(
    data, tmp_path, train_args, capsys
) -> None:
    budget, given = tmp_path / "budget.pt", tmp_path / "given.pt"
    assert main([*train_args(data, budget, "--time_budget", "10h"), "--epochs", "2"]) == 0
    assert "2 epochs (the cap, --epochs 2)" in capsys.readouterr().out
    assert main([*train_args(data, given), "--epochs", "2"]) == 0
    assert_same_weights(budget, given)


def test_the_choice_is_recorded_and_a_resume_keeps_it_without_measuring(
    data, tmp_path, train_args, capsys, monkeypatch, ctrl_c_at_poll, fails_with
) -> None:
    model_path = tmp_path / "m.pt"
    argv = [*train_args(data, model_path, "--time_budget", "0.01s"), "--epochs", "3"]
    monkeypatch.setattr("petseg.train.stop_requests_on_ctrl_c", ctrl_c_at_poll(2))
    assert main(argv) == 130  # Ctrl-C after the first batch
    stored = torch.load(last_checkpoint_path(model_path), weights_only=True)
    assert stored["partial_epoch"]["batches"] == 1
    assert (stored["config"]["recipe"]["epochs"], stored["config"]["time_budget_s"]) == (1, 0.01)
    monkeypatch.undo()
    capsys.readouterr()

    def measured(run: petseg.train.Run) -> None:
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr(petseg.train, "measure_epoch", measured)
    fails_with([*argv[:-2], "--time_budget", "2h"], "m.last.pt", "chose its 1 epoch ", "0.01s")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "time budget 0.01s: keeping the 1 epoch chosen when the run started" in out
    assert "epoch 1/1  train loss" in out
    assert torch.load(model_path, weights_only=True)["config"]["recipe"]["epochs"] == 1


def test_a_resumed_budget_run_keeps_its_epochs_unless_epochs_alone_sets_others() -> None:
    started = resolve_train_config({"time_budget": 60.0, "epochs": 9})
    stored = replace(started, recipe=replace(started.recipe, epochs=4))  # the 4 chosen
    again = {"time_budget": 60.0, "epochs": 9}  # the command that started it
    assert resolve_train_config(again, stored).recipe.epochs == 4
    assert resolve_train_config({}, stored).recipe.epochs == 4
    assert resolve_train_config({**again, "epochs": 2}, stored).recipe.epochs == 2  # a lower cap
    assert resolve_train_config({"epochs": 9}, stored).recipe.epochs == 9
    with pytest.raises(PetsegError, match="chose its 4 epochs for --time_budget 1m"):
        resolve_train_config({"time_budget": 120.0}, stored)
    unbudgeted = resolve_train_config({"epochs": 5})
    with pytest.raises(PetsegError, match="trains for --epochs 5, which a resumed run keeps"):
        resolve_train_config({"time_budget": 60.0}, unbudgeted)


def test_every_run_prints_its_estimate_during_its_first_epoch(
    data, tmp_path, train_args, capsys
) -> None:
    assert main([*train_args(data, tmp_path / "m.pt"), "--epochs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    estimates = [index for index, line in enumerate(lines) if line.startswith("estimated:")]
    first_epoch = next(index for index, line in enumerate(lines) if line.startswith("epoch 1/2"))
    assert len(estimates) == 1 and estimates[0] < first_epoch
    assert " for 2 epochs at 32 px (about " in lines[estimates[0]]


# --- the default budget on a CPU ---------------------------------------------------------------


def test_a_new_cpu_run_without_epochs_or_budget_gets_the_default_budget(
    flags_to_config, capsys
) -> None:
    config = flags_to_config("--device", "cpu")
    assert config.time_budget_s == CPU_TIME_BUDGET_S
    assert config.recipe.epochs == PRESETS["unet"].recipe.epochs  # the cap
    note = capsys.readouterr().err.strip()
    assert note.startswith("petseg train: on a CPU without --epochs or --time_budget: time budget")
    assert "--time_budget DURATION or --epochs N" in note and len(note.splitlines()) == 1


def test_epochs_or_a_budget_given_or_a_gpu_leave_the_default_budget_out(
    flags_to_config, capsys
) -> None:
    assert flags_to_config("--device", "cpu", "--epochs", "7").time_budget_s is None
    assert flags_to_config("--device", "cpu", "--time_budget", "30m").time_budget_s == 1800
    assert "time budget" not in capsys.readouterr().err
    assert resolve_train_config({}, on_cpu=False).time_budget_s is None  # CUDA: the presets


def test_a_resumed_run_gets_no_default_budget(data, tmp_path, train_args, capsys) -> None:
    model_path = tmp_path / "m.pt"
    assert main(train_args(data, model_path, "--device", "cpu")) == 0  # --epochs 1
    flags = {"model_path": model_path, "device": "cpu"}
    capsys.readouterr()
    config = config_from_flags(flags)
    assert (config.time_budget_s, config.recipe.epochs) == (None, 1)
    assert "time budget" not in capsys.readouterr().err


def test_print_config_shows_the_budget_and_says_the_epochs_come_later(tmp_path, capsys) -> None:
    argv = ["train", "--model_path", str(tmp_path / "m.pt"), "--time_budget", "1h30m"]
    assert main([*argv, "--print_config"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["time_budget_s"] == 5400
    assert "time budget 1h30m: a new run chooses its epochs (at most 50) when training" in (
        captured.err
    )
    argv = [*argv, "--model_type", "resnet34_unet"]
    assert main([*argv, "--print_config"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["short_run"] == "auto"
    assert "(at most 50), and the short-run recipe if they are few (--short_run auto)" in (
        captured.err
    )


def test_help_says_epochs_cap_the_budget(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with --time_budget, the most it may choose" in text
    assert "at most --epochs" in text and "Default on a CPU without --epochs: 2h" in text
