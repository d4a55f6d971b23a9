"""Checkpoints: round trip, pickle-free loading, corrupt files, atomic saving, path naming."""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import petseg.checkpoint
from petseg.checkpoint import (
    CHECKPOINT_VERSION,
    check_model_type,
    checkpoint_config,
    history_path,
    last_checkpoint_path,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    resume_checkpoint,
    resume_source,
    save_checkpoint,
    without_training_state,
)
from petseg.config import PRESETS, TrainConfig, model_kwargs, to_plain
from petseg.errors import PetsegError
from petseg.models import UNet, build_model

SMALL = replace(PRESETS["unet"].model, widths=(8, 16))
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.15)


pytestmark = pytest.mark.usefixtures("single_thread")


def config_of(model: Any, image_size: int = 64) -> TrainConfig:
    preset = PRESETS[model.model_type]
    return TrainConfig(model, replace(preset.recipe, image_size=image_size), Path("small.pt"))


def small_unet(seed: int = 0) -> nn.Module:
    """A small UNet whose BatchNorm running statistics moved away from their initial values."""
    torch.manual_seed(seed)
    model = build_model("unet", **model_kwargs(SMALL))
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16) * 3 + 1)
    return model.eval()


def small_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    return make_checkpoint(model, config_of(SMALL), mean=MEAN, std=STD, **extra)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, nn.Module]:
    model = small_unet()
    path = tmp_path / "runs" / "small.pt"
    save_checkpoint(path, small_checkpoint(model, epoch=3, best_dice=0.75))
    return path, model


def assert_refused(path: Path) -> PetsegError:
    with pytest.raises(PetsegError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return info.value


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_rebuilds_a_model_with_identical_outputs(saved: tuple[Path, nn.Module]) -> None:
    path, model = saved
    checkpoint = load_checkpoint(path)
    rebuilt = model_from_checkpoint(checkpoint, path)
    assert isinstance(rebuilt, UNet)
    assert rebuilt.widths == (8, 16)
    rebuilt.eval()
    images = torch.randn(2, 3, 20, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_round_trip_keeps_the_metadata_and_extras(saved: tuple[Path, nn.Module]) -> None:
    checkpoint = load_checkpoint(saved[0])
    assert checkpoint["format"] == "petseg-checkpoint"
    assert checkpoint_config(checkpoint) == config_of(SMALL)
    assert checkpoint["config"]["model"] == {"model_type": "unet", **model_kwargs(SMALL),
                                             "widths": [8, 16]}  # fmt: skip
    assert checkpoint["config"]["recipe"]["image_size"] == 64
    assert checkpoint["normalization"] == {"mean": list(MEAN), "std": list(STD)}
    assert checkpoint["threshold"] == 0.5
    assert checkpoint["epoch"] == 3
    assert checkpoint["best_dice"] == 0.75


def test_checkpoint_loads_with_plain_weights_only_torch_load(tmp_path: Path) -> None:
    model = small_unet()
    # shaped like an optimizer's state_dict (int keys, nested tensors) without paying for a step
    optimizer_state = {
        "state": {0: {"momentum_buffer": torch.ones(3)}, 1: {"step": torch.tensor(5.0)}},
        "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}],
    }
    path = tmp_path / "with_optimizer.pt"
    save_checkpoint(path, small_checkpoint(model, optimizer=optimizer_state))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["config"]["model"]["model_type"] == "unet"
    assert raw["config"]["seed"] == 42
    assert set(raw["state_dict"]) == set(model.state_dict())
    assert torch.equal(raw["optimizer"]["state"][0]["momentum_buffer"], torch.ones(3))
    assert load_checkpoint(path)["optimizer"]["param_groups"][0]["params"] == [0, 1]


def test_save_creates_missing_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "model.pt"
    save_checkpoint(path, small_checkpoint(small_unet()))
    assert path.is_file()
    assert os.listdir(path.parent) == ["model.pt"]


# --- refusing files ---------------------------------------------------------------------------


def test_a_missing_checkpoint_names_the_path(tmp_path: Path) -> None:
    assert_refused(tmp_path / "absent.pt")


@pytest.mark.parametrize(
    "content",
    [
        random.Random(0).randbytes(2048),
        b"",
        b"hello, not a checkpoint\n",
        b"PK\x03\x04" + bytes(60),
    ],
    ids=["random-bytes", "empty", "text", "zip-header-only"],
)
def test_a_file_that_is_not_a_checkpoint_raises_petseg_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    assert_refused(path)


def test_a_truncated_checkpoint_raises_petseg_error(saved: tuple[Path, nn.Module]) -> None:
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path)


def test_a_bare_state_dict_is_not_a_petseg_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(small_unet().state_dict(), path)
    error = assert_refused(path)
    assert "petseg" in str(error)


def test_a_checkpoint_lacking_required_keys_is_refused(tmp_path: Path) -> None:
    checkpoint = small_checkpoint(small_unet())
    del checkpoint["state_dict"]
    path = tmp_path / "partial.pt"
    torch.save(checkpoint, path)
    assert "state_dict" in str(assert_refused(path))


def test_a_checkpoint_of_an_unknown_model_type_is_refused(tmp_path: Path) -> None:
    checkpoint = small_checkpoint(small_unet())
    checkpoint["config"]["model"]["model_type"] = "vit_huge"
    path = tmp_path / "unknown.pt"
    torch.save(checkpoint, path)
    assert "vit_huge" in str(assert_refused(path))


class CreatesAFileWhenUnpickled:
    """Unpickling this calls open(marker, "w"): what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    checkpoint = small_checkpoint(small_unet())
    checkpoint["extra"] = CreatesAFileWhenUnpickled(marker)
    torch.save(checkpoint, path)
    assert not marker.exists()
    assert_refused(path)
    assert not marker.exists()


def test_the_pickle_payload_is_live_when_unpickling_is_allowed(tmp_path: Path) -> None:
    """Control for the test above: the same payload does create the file under full pickle."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"extra": CreatesAFileWhenUnpickled(marker)}, path)
    loaded = torch.load(path, weights_only=False)
    loaded["extra"].close()
    assert marker.exists()


# --- atomic save ------------------------------------------------------------------------------


def test_a_failing_save_keeps_the_previous_file_and_leaves_no_temp_file(
    saved: tuple[Path, nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = saved[0]
    before = path.read_bytes()

    def save_then_crash(obj: object, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(petseg.checkpoint.torch, "save", save_then_crash)
    with pytest.raises(PetsegError, match=f"{path}: cannot write \\(disk full\\)"):
        save_checkpoint(path, small_checkpoint(small_unet(seed=1)))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]
    load_checkpoint(path)


def test_an_interrupted_save_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(obj: object, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(petseg.checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new.pt", {"format": "petseg-checkpoint"})
    assert os.listdir(tmp_path) == []


def test_a_second_save_replaces_the_first(saved: tuple[Path, nn.Module]) -> None:
    path = saved[0]
    other = small_unet(seed=7)
    save_checkpoint(path, small_checkpoint(other, epoch=4))
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 4
    assert torch.equal(checkpoint["state_dict"]["head.weight"], other.state_dict()["head.weight"])
    assert os.listdir(path.parent) == [path.name]


# --- rebuilding the model ---------------------------------------------------------------------


def test_weights_of_another_architecture_raise_petseg_error(tmp_path: Path) -> None:
    checkpoint = small_checkpoint(small_unet())
    checkpoint["config"] = to_plain(config_of(PRESETS["resnet34_unet"].model))
    path = tmp_path / "mixed.pt"
    with pytest.raises(PetsegError) as info:
        model_from_checkpoint(checkpoint, path)
    assert str(path) in str(info.value)
    assert "resnet34_unet" in str(info.value)


def test_weights_of_other_widths_raise_petseg_error_naming_a_tensor_and_both_shapes() -> None:
    checkpoint = small_checkpoint(small_unet())
    checkpoint["config"]["model"]["widths"] = [8, 32]
    with pytest.raises(PetsegError, match="unet") as info:
        model_from_checkpoint(checkpoint)
    # the first conv of the second level: saved with 16 output channels, the model wants 32
    assert "down.0.0.weight (16, 8, 3, 3) vs (32, 8, 3, 3)" in str(info.value)


def test_renamed_weights_are_named_as_missing_and_unexpected() -> None:
    checkpoint = small_checkpoint(small_unet())
    state = checkpoint["state_dict"]
    state["head.kernel"] = state.pop("head.weight")
    with pytest.raises(PetsegError) as info:
        model_from_checkpoint(checkpoint)
    message = str(info.value)
    assert "missing 1: head.weight" in message
    assert "unexpected 1: head.kernel" in message
    assert "\n" not in message


@pytest.mark.parametrize("version", [None, 1, 5, CHECKPOINT_VERSION + 1])
def test_a_checkpoint_of_another_petseg_format_says_so_in_one_line(
    tmp_path: Path, version: int | None
) -> None:
    checkpoint = small_checkpoint(small_unet())
    if version is None:
        del checkpoint["version"]
    else:
        checkpoint["version"] = version
    path = tmp_path / "old.pt"
    torch.save(checkpoint, path)
    message = str(assert_refused(path))
    age = "a newer" if version == CHECKPOINT_VERSION + 1 else "an older"
    assert f"written by {age} petseg (checkpoint format {version}" in message
    assert "retrain" in message


def test_a_checkpoint_of_the_previous_format_is_refused_not_misread(tmp_path: Path) -> None:
    """Version 5 stored model_type and model_kwargs beside the weights, not a config."""
    checkpoint = small_checkpoint(small_unet())
    del checkpoint["config"]
    checkpoint |= {"version": 5, "model_type": "unet", "model_kwargs": {"widths": [8, 16]},
                   "image_size": 64}  # fmt: skip
    path = tmp_path / "v5.pt"
    torch.save(checkpoint, path)
    assert "older petseg" in str(assert_refused(path))


@pytest.mark.parametrize(
    "trained",
    [replace(SMALL, widths=(4, 8), activation="silu"),
     replace(SMALL, widths=(4, 8), upsample="transpose"),
     replace(PRESETS["resnet34_unet"].model, decoder_widths=(8,) * 5, stem="classic",
             activation="relu", drop_path=0.0)],
    ids=["unet-silu", "unet-transpose", "resnet34_unet-classic-relu"],
)  # fmt: skip
def test_a_checkpoint_rebuilds_the_model_config_it_was_trained_with(trained: Any) -> None:
    torch.manual_seed(0)
    model = build_model(trained.model_type, **model_kwargs(trained)).eval()
    checkpoint = make_checkpoint(model, config_of(trained, 32), mean=MEAN, std=STD)
    rebuilt = model_from_checkpoint(checkpoint).eval()
    assert checkpoint_config(checkpoint).model == trained
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))


def test_a_model_config_the_constructor_rejects_raises_petseg_error(tmp_path: Path) -> None:
    checkpoint = small_checkpoint(small_unet())
    checkpoint["config"]["model"]["widths"] = [7, 16]  # odd
    path = tmp_path / "odd.pt"
    with pytest.raises(PetsegError) as info:
        model_from_checkpoint(checkpoint, path)
    assert str(path) in str(info.value)


def test_an_unreadable_config_is_refused(tmp_path: Path) -> None:
    checkpoint = small_checkpoint(small_unet())
    checkpoint["config"]["model"]["depth"] = 5  # not a UNet argument
    path = tmp_path / "odd.pt"
    torch.save(checkpoint, path)
    assert "unreadable config" in str(assert_refused(path))


def test_check_model_type_accepts_none_or_the_same_type(tmp_path: Path) -> None:
    check_model_type("unet", None, tmp_path / "m.pt")
    check_model_type("unet", "unet", tmp_path / "m.pt")


def test_check_model_type_rejects_another_type_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    with pytest.raises(PetsegError) as info:
        check_model_type("unet", "resnet34_unet", path)
    message = str(info.value)
    assert str(path) in message
    assert "unet" in message
    assert "resnet34_unet" in message


# --- file naming ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_path", "expected"),
    [
        ("runs/r34.pt", "runs/r34.last.pt"),
        ("runs/unet.pth", "runs/unet.last.pth"),
        ("runs/r34", "runs/r34.last.pt"),
        ("best.pt", "best.last.pt"),
    ],
)
def test_last_checkpoint_path(model_path: str, expected: str) -> None:
    assert last_checkpoint_path(Path(model_path)) == Path(expected)


@pytest.mark.parametrize(
    ("model_path", "expected"),
    [("runs/r34.pt", "runs/r34.history.csv"), ("runs/r34", "runs/r34.history.csv")],
)
def test_history_path(model_path: str, expected: str) -> None:
    assert history_path(Path(model_path)) == Path(expected)


def test_last_checkpoint_and_history_never_overwrite_the_best_checkpoint() -> None:
    best = Path("runs/r34.pt")
    assert len({best, last_checkpoint_path(best), history_path(best)}) == 3


def test_resume_checkpoint_loads_the_last_checkpoint(tmp_path: Path) -> None:
    best = tmp_path / "m.pt"
    assert resume_checkpoint(best) is None
    save_checkpoint(last_checkpoint_path(best), small_checkpoint(small_unet(), epoch=2))
    checkpoint, path = resume_checkpoint(best)
    assert (path, checkpoint["epoch"]) == (last_checkpoint_path(best), 2)


# --- non-finite weights, files that are not checkpoints ---------------------------------------


def nan_unet() -> nn.Module:
    model = small_unet()
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
        next(model.parameters())[1].fill_(float("inf"))
    return model


def test_weights_that_are_not_finite_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, small_checkpoint(small_unet()))
    before = path.read_bytes()
    with pytest.raises(PetsegError, match=r"not written, the model has \d+ non-finite weights"):
        save_checkpoint(path, small_checkpoint(nan_unet()))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


def test_a_checkpoint_with_non_finite_weights_is_refused_on_load(tmp_path: Path) -> None:
    path = tmp_path / "diverged.pt"
    torch.save(small_checkpoint(nan_unet()), path)  # written by something other than petseg
    bad = sum(int((~torch.isfinite(t)).sum()) for t in nan_unet().state_dict().values())
    error = assert_refused(path)
    assert f"holds {bad:,} non-finite weights (NaN or inf)" in str(error)


def test_an_onnx_file_is_named_as_one(tmp_path: Path) -> None:
    onnx_like = b"\x08\x08\x12\x07pytorch"  # an ONNX protobuf starts with its ir_version field
    for name in ("model.onnx", "renamed.pt"):
        (tmp_path / name).write_bytes(onnx_like)
        error = assert_refused(tmp_path / name)
        assert "is an ONNX model, not a checkpoint" in str(error)
        assert "needs the .pt checkpoint" in str(error)


def test_a_folder_is_named_as_one_listing_its_checkpoints(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    assert str(assert_refused(runs)).endswith(
        "is a folder, not a checkpoint; pass a checkpoint file (NAME.pt)"
    )
    save_checkpoint(runs / "r34.pt", small_checkpoint(small_unet()))
    assert "pass one of its checkpoint files (r34.pt)" in str(assert_refused(runs))


class RunsAShellCommand:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("true",))


def test_a_pickle_that_would_run_code_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "petseg-checkpoint", "payload": RunsAShellCommand()}, path)
    message = str(assert_refused(path))
    assert "refused to load: the file asks to run code when loaded" in message
    assert f"(it imports {os.system.__module__}.system)" in message
    assert "truncated or corrupt" not in message


@pytest.mark.parametrize(
    "torch_words",
    [
        "Weights only load failed. ... Unsupported global: GLOBAL posix.system was not an allowed "
        "global by default.",
        "Weights only load failed. ...\n\nTrying to load unsupported GLOBAL posix.system whose "
        "module posix is blocked.\n\nCheck the documentation",
    ],
)
def test_the_code_refusal_reads_each_torch_versions_words(tmp_path, monkeypatch, torch_words):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError(torch_words)

    path = tmp_path / "evil.pt"
    path.write_bytes(b"PK")
    monkeypatch.setattr(petseg.checkpoint.torch, "load", refuse)
    assert "(it imports posix.system)" in str(assert_refused(path))


def test_the_best_checkpoint_goes_without_the_training_state() -> None:
    checkpoint = small_checkpoint(
        small_unet(), optimizer={"state": {}}, grad_scaler={"scale": 1.0}, partial_epoch={}
    )
    best = without_training_state(checkpoint)
    assert not {"optimizer", "grad_scaler", "partial_epoch"} & set(best)
    assert best["state_dict"] is checkpoint["state_dict"] and "optimizer" in checkpoint


def test_training_resumes_from_the_last_checkpoint_only(tmp_path: Path) -> None:
    best = tmp_path / "m.pt"
    assert resume_source(best) is None
    save_checkpoint(best, small_checkpoint(small_unet()))
    with pytest.raises(PetsegError, match=r"m\.last\.pt, which training resumes from, does not"):
        resume_source(best)
    save_checkpoint(last_checkpoint_path(best), small_checkpoint(small_unet()))
    assert resume_source(best) == last_checkpoint_path(best)
