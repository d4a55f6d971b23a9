"""The command line: seed-compatible flags, validation, and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from petseg.cli import build_parser, main
from petseg.models import MODELS


def parse(*argv: str):
    return vars(build_parser().parse_args(list(argv)))


SEED_FLAGS = [
    "train",
    "--data_path",
    "d",
    "--epochs",
    "3",
    "--batch_size",
    "4",
    "--learning-rate",
    "0.01",
    "--model_path",
    "m.pt",
    "--model_type",
    "resnet34_unet",
    "--image_size",
    "96",
    "--num_workers",
    "0",
    "--device",
    "cpu",
    "--seed",
    "7",
]


def test_seed_flags_and_hyphenated_flags_parse_the_same() -> None:
    hyphenated = [arg.replace("_", "-") if arg.startswith("--") else arg for arg in SEED_FLAGS]
    seed = parse(*SEED_FLAGS)
    assert seed == parse(*hyphenated)
    assert seed["data_path"] == Path("d")
    assert seed["epochs"] == 3
    assert seed["batch_size"] == 4
    assert seed["learning_rate"] == pytest.approx(0.01)
    assert seed["model_path"] == Path("m.pt")
    assert seed["model_type"] == "resnet34_unet"


@pytest.mark.parametrize("spelling", ["--learning-rate", "--learning_rate", "-lr"])
def test_every_learning_rate_spelling(spelling: str) -> None:
    assert parse("train", spelling, "3e-4")["learning_rate"] == pytest.approx(3e-4)


def test_model_type_choices_follow_the_registry() -> None:
    for name in MODELS:
        assert parse("train", "--model_type", name)["model_type"] == name
    with pytest.raises(SystemExit) as exit_info:
        parse("train", "--model_type", "vgg16")
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--epochs", "0"),
        ("--batch_size", "-1"),
        ("--learning-rate", "-0.1"),
        ("--image_size", "8"),
        ("--epochs", "ten"),
    ],
)
def test_invalid_numbers_are_usage_errors(flag: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", flag, value])
    assert exit_info.value.code == 2
    assert flag.lstrip("-").replace("-", "_")[:5] in capsys.readouterr().err.replace("-", "_")


@pytest.mark.parametrize(
    "command",
    [["train"], ["evaluate", "--model_path", "m.pt"], ["predict", "--model_path", "m.pt"]],
)
def test_num_workers_takes_a_count_or_auto(command: list[str], capsys) -> None:
    assert parse(*command)["num_workers"] is None  # auto
    assert parse(*command, "--num_workers", "auto")["num_workers"] is None
    assert parse(*command, "--num-workers", "3")["num_workers"] == 3
    for bad in ("-1", "1.5", "two"):
        with pytest.raises(SystemExit) as exit_info:
            parse(*command, "--num_workers", bad)
        assert exit_info.value.code == 2
        assert f"whole number >= 0 or auto, got {bad}" in capsys.readouterr().err


def test_train_flags_default_to_not_given() -> None:
    args = parse("train")
    # resolved from the model type's preset, or the resumed run's config (test_config.py)
    for name in ("epochs", "batch_size", "image_size", "seed", "model_type", "learning_rate"):
        assert args[name] is None, name


@pytest.mark.parametrize(
    ("argv", "command", "fragment"),
    [
        (["train", "--epochs", "ten"], "train", "argument --epochs: 'ten' is not a valid int"),
        (["train", "--no-such-flag", "1"], "train", "unrecognized arguments: --no-such-flag 1"),
        (["evaluate", "--model_path", "m.pt", "--split", "dev"], "evaluate", "invalid choice"),
        (["predict", "--model_path", "m.pt", "--tta=yes"], "predict", "ignored explicit argument"),
        (["export"], "export", "the following arguments are required: --model_path"),
        (["trian"], "", "invalid choice: 'trian'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_commands_help(
    argv: list[str], command: str, fragment: str, usage_error
) -> None:
    line = usage_error(argv)
    prog = f"petseg {command}".strip()
    assert line.startswith(f"{prog}: error: ") and fragment in line, line
    assert line.endswith(f"; see `{prog} --help`")


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "train" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.pt"
    code = main(["evaluate", "--model_path", str(missing), "--data_path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_not_a_checkpoint_is_refused(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    code = main(["predict", "--model_path", str(bogus), str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(bogus) in err and "checkpoint" in err
    assert len(err.strip().splitlines()) == 1


def test_cuda_without_gpu_is_a_clear_error(tmp_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = main(
        [
            "train",
            "--device",
            "cuda",
            "--data_path",
            str(tmp_path),
            "--model_path",
            str(tmp_path / "m.pt"),
        ]
    )
    assert code == 2
    assert "--device cpu" in capsys.readouterr().err


def test_python_dash_m_and_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "petseg", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("petseg ")
