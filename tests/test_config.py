"""The run's config: the presets, flags over a preset or a resumed run's config resolved once,
resume refusals, sane number bounds, --print_config, and the round trip through a checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from torch import nn

from petseg.cli import build_parser, main
from petseg.config import (
    LIMITS,
    PRESETS,
    TRAIN_FLAGS,
    Bounds,
    ResNet34UNetConfig,
    from_plain,
    resolve_train_config,
    to_plain,
)
from petseg.errors import PetsegError


@pytest.mark.parametrize("model_type", list(PRESETS))
def test_a_run_without_flags_is_its_model_types_preset(model_type: str, flags_to_config) -> None:
    config = flags_to_config("--model_type", model_type)
    assert (config.model, config.recipe) == (PRESETS[model_type].model, PRESETS[model_type].recipe)
    assert (config.seed, config.precision, config.device, config.compile) == (
        42,
        "auto",
        "auto",
        False,
    )


def test_every_train_flag_defaults_to_not_given() -> None:
    args = vars(build_parser().parse_args(["train"]))
    assert {name: args[name] for name in (*TRAIN_FLAGS, "model_type")} == dict.fromkeys(
        (*TRAIN_FLAGS, "model_type")
    )


def test_the_presets_differ_where_the_model_types_learn_best() -> None:
    unet, resnet = PRESETS["unet"].recipe, PRESETS["resnet34_unet"].recipe
    assert (unet.batch_size, unet.learning_rate, unet.augment, unet.clip_grad) == (
        8,
        5e-4,
        "lab",
        1.0,
    )
    assert (resnet.batch_size, resnet.learning_rate, resnet.augment, resnet.clip_grad) == (
        4, 1e-3, "strong", 0.5,
    )  # fmt: skip
    assert (
        replace(unet, batch_size=4, learning_rate=1e-3, augment="strong", clip_grad=0.5) == resnet
    )


def test_a_given_flag_wins_over_the_preset_and_the_rest_stays() -> None:
    flags = {"model_type": "resnet34_unet", "batch_size": 6, "clip_grad": 0.0, "stem": "classic"}
    config = resolve_train_config(flags)
    preset = PRESETS["resnet34_unet"]
    assert config.recipe == replace(preset.recipe, batch_size=6, clip_grad=0.0)
    assert config.model == replace(preset.model, stem="classic")
    assert config.model_path == Path("runs/resnet34_unet.pt")


def resumed_run() -> tuple:
    """A resnet34_unet run started with --loss bce --epochs 3 --device cpu, and its checkpoint."""
    flags = {"model_type": "resnet34_unet", "loss": "bce", "epochs": 3, "device": "cpu",
             "decoder_widths": (16, 16, 8, 8, 8), "model_path": Path("r.pt"), "num_workers": 0}  # fmt: skip
    return resolve_train_config(flags), Path("r.last.pt")


def test_a_resumed_run_keeps_its_own_recipe_unless_a_flag_changes_it() -> None:
    stored, checkpoint = resumed_run()
    config = resolve_train_config({"model_path": Path("r.pt")}, stored, checkpoint)
    assert (config.model, config.recipe) == (stored.model, stored.recipe)
    assert config.recipe.loss == "bce"  # not the preset's bce_dice
    # where this process runs is not the checkpoint's to say
    assert (config.device, config.data.num_workers) == ("auto", None)
    longer = resolve_train_config({"epochs": 5, "learning_rate": 0.01}, stored, checkpoint)
    assert longer.recipe == replace(stored.recipe, epochs=5, learning_rate=0.01)


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        ({"image_size": 64}, ["--image_size 256, not 64"]),
        ({"decoder_widths": (8, 8, 8, 8, 8)}, ["--decoder_widths 16,16,8,8,8, not 8,8,8,8,8"]),
        ({"stem": "classic"}, ["--stem deep, not classic"]),
        ({"deep_supervision": True}, ["--deep_supervision off, not on"]),
        ({"model_type": "unet"}, ["holds a resnet34_unet model, not --model_type unet"]),
        ({"unet_widths": (4, 8)}, ["--unet_widths applies to --model_type unet only"]),
    ],
)
def test_a_resumed_run_refuses_another_architecture_or_image_size(flags, fragments) -> None:
    stored, checkpoint = resumed_run()
    with pytest.raises(PetsegError) as info:
        resolve_train_config(flags, stored, checkpoint)
    message = str(info.value)
    assert "\n" not in message
    for fragment in [*fragments]:
        assert fragment in message, message
    if "applies to" not in message:
        assert message.startswith(f"{checkpoint}: ")


def test_a_resumed_run_accepts_its_own_architecture_given_again() -> None:
    stored, checkpoint = resumed_run()
    same = {"model_type": "resnet34_unet", "image_size": 256, "decoder_widths": (16, 16, 8, 8, 8)}
    assert resolve_train_config(same, stored, checkpoint).model == stored.model


def test_a_resume_that_changes_the_image_size_is_refused_through_the_cli(
    data, tmp_path, train_args, fails_with
) -> None:
    model_path = tmp_path / "m.pt"
    assert main(train_args(data, model_path)) == 0
    bigger = [*train_args(data, model_path, "--epochs", "2"), "--image_size", "64"]
    fails_with(bigger, str(model_path.with_name("m.last.pt")), "--image_size 32, not 64")
    wider = [*train_args(data, model_path, "--epochs", "2"), "--unet_widths", "8,16"]
    fails_with(wider, "--unet_widths 4,8, not 8,16")
    assert main(train_args(data, model_path, "--epochs", "2")) == 0  # the same flags resume


def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys) -> None:
    model_path = tmp_path / "r34.pt"
    argv = ["train", "--model_type", "resnet34_unet", "--model_path", str(model_path), "-lr", "2e-3",
            "--device", "cpu", "--print_config"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    flags = {"model_type": "resnet34_unet", "model_path": model_path, "learning_rate": 2e-3,
             "device": "cpu"}  # fmt: skip
    expected = resolve_train_config(flags, on_cpu=True)  # with the CPU's default time budget
    assert printed == to_plain(expected)
    assert printed["recipe"]["learning_rate"] == 2e-3 and printed["recipe"]["batch_size"] == 4
    assert list(tmp_path.iterdir()) == []


def test_print_config_of_a_run_to_resume_shows_its_stored_config(
    data, tmp_path, train_args, capsys
) -> None:
    model_path = tmp_path / "m.pt"
    assert main(train_args(data, model_path, "--loss", "dice")) == 0
    capsys.readouterr()
    assert main(["train", "--model_path", str(model_path), "--print-config", "--epochs", "9"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"]["widths"] == [4, 8] and printed["recipe"]["image_size"] == 32
    assert (printed["recipe"]["loss"], printed["recipe"]["epochs"]) == ("dice", 9)


def test_the_config_survives_the_round_trip_through_plain_values() -> None:
    config, _ = resumed_run()
    plain = to_plain(config)
    assert json.loads(json.dumps(plain)) == plain  # nothing but plain values
    assert from_plain(plain) == config
    assert isinstance(from_plain(plain).model, ResNet34UNetConfig)


@pytest.mark.parametrize(
    ("bounds", "value", "problem"),
    [
        (Bounds(1), 0, "must be >= 1, got 0"),
        (Bounds(0, 1, low_open=True), 0, "must be > 0 and <= 1, got 0"),
        (Bounds(0, 1, low_open=True), 1e6, "must be > 0 and <= 1, got 1e+06"),
        (
            Bounds(0, 1, low_open=True, high_open=True),
            1.0,
            "must be between 0 and 1 (exclusive), got 1",
        ),
        (Bounds(0), math.inf, "must be a finite number, got inf"),
        (Bounds(0), math.nan, "must be a finite number, got nan"),
    ],
)
def test_bounds_name_the_problem(bounds: Bounds, value: float, problem: str) -> None:
    assert bounds.problem(value) == problem
    assert bounds.problem(bounds.low if not bounds.low_open else bounds.low + 0.5) is None


@pytest.mark.parametrize(
    ("flag", "value"),
    [("learning_rate", math.inf), ("learning_rate", 2.0), ("weight_decay", math.nan),
     ("clip_grad", math.inf), ("epochs", 0), ("image_size", 16)],
)  # fmt: skip
def test_a_config_built_in_python_is_checked_like_the_flags(flag: str, value: float) -> None:
    with pytest.raises(PetsegError, match=f"--{flag} "):
        resolve_train_config({flag: value})
    assert LIMITS[flag].problem(value) is not None


def test_a_resume_without_model_type_takes_the_checkpoints_and_its_flags(
    tmp_path, write_checkpoint, train_config, flags_to_config
) -> None:
    stored = train_config("resnet34_unet", decoder_widths=(8, 8, 8, 8, 8))
    write_checkpoint(tmp_path / "m.last.pt", nn.Identity(), stored, epoch=1)  # resumed from
    # --stem is a resnet34_unet flag: resolved over the checkpoint, not over the unet preset
    config = flags_to_config("--stem", "deep", "--epochs", "3")
    assert config.model == stored.model and config.recipe.epochs == 3


def short_run_flags(**flags: object) -> dict:
    return {"model_type": "resnet34_unet", **flags}


def test_a_run_of_at_most_20_epochs_trains_with_the_short_run_recipe() -> None:
    preset = PRESETS["resnet34_unet"]
    short = preset.short_run
    assert short is not None and short.max_epochs == 20
    config = resolve_train_config(short_run_flags(epochs=20))
    assert config.short_run == "on"
    assert config.recipe == replace(
        preset.recipe, epochs=20, batch_size=8, progressive=0.5, augment="flip"
    )
    assert config.model == replace(preset.model, drop_path=0.0)
    longer = resolve_train_config(short_run_flags(epochs=21))
    assert longer.short_run == "off"
    assert (longer.recipe, longer.model) == (replace(preset.recipe, epochs=21), preset.model)


def test_a_given_flag_wins_over_the_short_run_recipe_and_the_choice_can_be_forced() -> None:
    preset = PRESETS["resnet34_unet"]
    config = resolve_train_config(short_run_flags(epochs=10, batch_size=4, drop_path=0.2))
    assert (config.recipe.batch_size, config.model.drop_path) == (4, 0.2)
    assert (config.recipe.progressive, config.recipe.augment) == (0.5, "flip")
    off = resolve_train_config(short_run_flags(epochs=10, short_run="off"))
    assert (off.short_run, off.recipe, off.model) == (
        "off", replace(preset.recipe, epochs=10), preset.model,
    )  # fmt: skip
    on = resolve_train_config(short_run_flags(epochs=40, short_run="on"))
    assert (on.short_run, on.recipe.batch_size, on.recipe.epochs) == ("on", 8, 40)


def test_the_unet_has_no_short_run_recipe() -> None:
    config = resolve_train_config({"model_type": "unet", "epochs": 5})
    assert (config.short_run, config.recipe) == ("off", replace(PRESETS["unet"].recipe, epochs=5))
    with pytest.raises(PetsegError, match="--short_run on: --model_type unet has no short-run"):
        resolve_train_config({"model_type": "unet", "short_run": "on"})


def test_a_resumed_run_keeps_its_short_run_choice() -> None:
    stored = resolve_train_config(short_run_flags(epochs=3, model_path=Path("s.pt")))
    assert stored.short_run == "on"
    again = from_plain(json.loads(json.dumps(to_plain(stored))))
    assert again == stored
    longer = resolve_train_config({"epochs": 30}, again, Path("s.last.pt"))
    assert (longer.short_run, longer.recipe.batch_size, longer.recipe.epochs) == ("on", 8, 30)
    assert resolve_train_config({"short_run": "auto"}, again).short_run == "on"
    with pytest.raises(PetsegError, match=r"s.last.pt: was started with --short_run on"):
        resolve_train_config({"short_run": "off"}, again, Path("s.last.pt"))
    # a checkpoint from before the short-run recipe: its run used the full one
    plain = to_plain(resolve_train_config(short_run_flags(epochs=30)))
    del plain["short_run"]
    assert from_plain(plain).short_run == "off"
