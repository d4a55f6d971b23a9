"""bench/quality.py: its named recipes reach `petseg train` as the model and recipe they name."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

import petseg.runtime

SCRIPT = Path(__file__).parents[1] / "bench" / "quality.py"
spec = importlib.util.spec_from_file_location("quality", SCRIPT)
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


@pytest.mark.parametrize("recipe", ["plain", "lab"])
def test_the_references_train_the_lab_reports_resnet34_unet(flags_to_config, recipe: str) -> None:
    flags = quality.recipe_flags(recipe, "resnet34_unet")
    config = flags_to_config("--model_type", "resnet34_unet", *flags)
    model = config.model
    # the 7x7 stem, ReLU and no stochastic depth, whatever petseg's defaults become
    assert (model.stem, model.activation, model.drop_path) == ("classic", "relu", 0.0)
    recipe_ = config.recipe
    assert (recipe_.loss, recipe_.optimizer, recipe_.batch_size) == ("bce", "adam", 16)
    assert config.recipe.clip_grad == 0.0  # the references never clip, whatever the default
    # nor take the default's short-run settings in a short run
    short = flags_to_config("--model_type", "resnet34_unet", "--epochs", "10", *flags)
    assert (short.short_run, short.recipe.progressive, short.recipe.augment) == ("off", 0.0, "lab")


@pytest.mark.parametrize(
    ("recipe", "upsample", "clip_grad"),
    [("default", "nearest", 1.0), ("plain", "transpose", 0.0), ("lab", "transpose", 0.0)],
)
def test_the_unet_references_train_the_classic_unet_without_clipping(
    flags_to_config, recipe: str, upsample: str, clip_grad: float
) -> None:
    flags = quality.recipe_flags(recipe, "unet")  # the UNet refuses --stem, --drop_path, ...
    config = flags_to_config("--model_type", "unet", *flags)
    assert config.model.model_type == "unet"
    # ConvTranspose2d for the references whatever petseg's default, which the default measures
    assert config.model.upsample == upsample
    # the references never clip; the default is the UNet preset's clipping
    assert config.recipe.clip_grad == clip_grad


def test_the_default_recipe_adds_no_flags_so_it_measures_petsegs_own_defaults() -> None:
    assert quality.recipe_flags("default", "resnet34_unet") == []


@pytest.mark.parametrize(
    ("flags", "requested", "precision"),
    [({"avx2", "avx512_bf16"}, "auto", "bf16"), ({"avx2"}, "auto", "fp32"),
     ({"avx2", "avx512_bf16"}, "fp32", "fp32")],
)  # fmt: skip
def test_each_record_says_what_precision_the_run_trained_in_on_this_cpu(
    monkeypatch, flags: set[str], requested: str, precision: str
) -> None:
    monkeypatch.setattr(petseg.runtime, "cpu_flags", lambda: frozenset(flags))
    env = quality.environment("cpu", requested)
    assert env["precision"] == precision
    assert env["cpu_native_bf16"] is ("avx512_bf16" in flags)
    assert (env["device"], env["threads"]) == ("cpu", torch.get_num_threads())
    assert env["torch"] == torch.__version__


def test_each_record_names_the_commit_it_ran() -> None:
    if not (SCRIPT.parents[1] / ".git").exists():
        pytest.skip("not a git checkout: the records then say code null")
    code = quality.code_version()
    assert code is not None and re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", code), code
