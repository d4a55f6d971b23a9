"""Shared fixtures: synthetic datasets and checkpoints, CLI runners. Real-data tests read the
sample set named by PETSEG_SAMPLE_DATA and skip without it."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image
from torch import nn

import petseg.train
from petseg.checkpoint import make_checkpoint, save_checkpoint
from petseg.cli import main
from petseg.config import PRESETS, TrainConfig
from petseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from petseg.models import build_model

# Timing deadlines make property tests flaky on a loaded 2-core machine; correctness is the point.
settings.register_profile("petseg", deadline=None, max_examples=60)
settings.load_profile("petseg")

SAMPLE_ENV = "PETSEG_SAMPLE_DATA"


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real 600-image Oxford-IIIT Pet sample (official layout); skips when not configured."""
    value = os.environ.get(SAMPLE_ENV)
    if not value:
        pytest.skip(f"set {SAMPLE_ENV} to the Oxford-IIIT Pet sample folder to run real-data tests")
    root = Path(value).resolve()  # tests symlink into it from temp folders: relative links break
    if not (root / "annotations" / "trainval.txt").is_file():
        pytest.skip(f"{SAMPLE_ENV}={value} does not hold the Oxford-IIIT Pet layout")
    return root


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: on a busy 2-core machine OpenMP spin-waiting
    makes small-model tests ~10x slower with two threads; results do not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- synthetic data and checkpoints, shared by the test modules ------------------------------

TRAINVAL = [f"Breed_{index}" for index in range(1, 21)]  # 18 train, 2 valid
TEST = ["Other_1", "Other_2"]
SIZE = 32  # the tiny models' training size


def write_sample(root: Path, name: str, index: int, height: int = 40, width: int = 48) -> None:
    rng = np.random.default_rng(index)
    trimap = np.full((height, width), 2, dtype=np.uint8)
    trimap[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
    pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    pixels[trimap == 1] += 150  # a bright "pet" on a dark background: learnable
    Image.fromarray(pixels).save(root / "images" / f"{name}.jpg", quality=95)
    Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")


def build_dataset(
    root: Path,
    trainval: list[str] = TRAINVAL,
    test: list[str] = TEST,
    write: Callable[[Path, str, int], None] = write_sample,
) -> Path:
    """A small copy of the official layout; by default bright rectangles (pets) on dark noise,
    else what `write(root, name, index)` draws."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    for index, name in enumerate(trainval + test):
        write(root, name, index)
    (root / "annotations" / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in trainval))
    (root / "annotations" / "test.txt").write_text("".join(f"{n} 1 1 1\n" for n in test))
    return root


@pytest.fixture
def make_dataset() -> Callable[..., Path]:
    """build_dataset(root, trainval=TRAINVAL, test=TEST, write=write_sample) -> root."""
    return build_dataset


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The small dataset: 18 train, 2 valid, 2 test images."""
    return build_dataset(tmp_path / "pets")


def tiny_train_args(data: Path, model_path: Path, *extra: str) -> list[str]:
    return [
        "train", "--data_path", str(data), "--model_path", str(model_path),
        "--model_type", "unet", "--unet_widths", "4,8", "--image_size", str(SIZE),
        "--batch_size", "4", "--epochs", "1", "--num_workers", "0", *extra,
    ]  # fmt: skip


@pytest.fixture
def train_args() -> Callable[..., list[str]]:
    """(data, model_path, *extra flags) -> `petseg train` argv of a 1-epoch tiny UNet run."""
    return tiny_train_args


@pytest.fixture
def fails_with(capsys: pytest.CaptureFixture) -> Callable[..., str]:
    """(argv, *fragments): run the CLI in-process; assert exit 2 and one stderr line holding
    every fragment; return the line."""

    def run(argv: list[str], *fragments: str) -> str:
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("petseg ")]
        assert len(lines) == 1, err
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
        return lines[0]

    return run


@pytest.fixture
def usage_error(capsys: pytest.CaptureFixture) -> Callable[[list[str]], str]:
    """(argv): assert the parser refuses it with exit 2 and one stderr line; return the line."""

    def run(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    return run


@pytest.fixture
def ctrl_c_at_poll() -> Callable[[int], Callable[..., Any]]:
    """(count) -> a stand-in for petseg.train.stop_requests_on_ctrl_c: Ctrl-C from its COUNTth
    poll on (training polls before each batch and after each epoch)."""

    def at(count: int) -> Callable[..., Any]:
        @contextlib.contextmanager
        def stop_requests(enabled: bool = True) -> Iterator[Callable[[], bool]]:
            polls = itertools.count(1)
            yield lambda: next(polls) >= count

        return stop_requests

    return at


def tiny_config(model_type: str = "unet", image_size: int = SIZE, **model: Any) -> TrainConfig:
    """The preset's config with another image size and model fields (tuples for widths)."""
    preset = PRESETS[model_type]
    recipe = replace(preset.recipe, image_size=image_size)
    return TrainConfig(replace(preset.model, **model), recipe, Path(f"runs/{model_type}.pt"))


@pytest.fixture
def train_config() -> Callable[..., TrainConfig]:
    """(model_type="unet", image_size=32, **model fields) -> a TrainConfig for checkpoints."""
    return tiny_config


@pytest.fixture
def write_checkpoint() -> Callable[..., Path]:
    """(path, model, config=tiny_config(), **extra) -> path, holding `model` as a checkpoint
    trained with `config` (ImageNet normalization); extra: epoch, best_dice..."""

    def write(path: Path, model: nn.Module, config: TrainConfig | None = None, **extra: Any):
        checkpoint = make_checkpoint(
            model, config or tiny_config(), mean=IMAGENET_MEAN, std=IMAGENET_STD, **extra
        )
        save_checkpoint(path, checkpoint)
        return path

    return write


@pytest.fixture
def checkpoint_path(tmp_path: Path, write_checkpoint: Callable[..., Path]) -> Path:
    """A tiny UNet checkpoint (untrained: for tests about inputs, not accuracy)."""
    torch.manual_seed(0)
    model = build_model("unet", widths=[4, 8])
    return write_checkpoint(tmp_path / "tiny.pt", model, tiny_config(widths=(4, 8)), epoch=1)


@pytest.fixture
def flags_to_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., TrainConfig]:
    """(*flags) -> the TrainConfig that `petseg train FLAGS` hands to fit (which is not run)."""

    def resolve(*flags: str) -> TrainConfig:
        seen: dict[str, TrainConfig] = {}
        monkeypatch.setattr(petseg.train, "fit", lambda config, **_: seen.setdefault("c", config))
        argv = ["train", "--data_path", str(tmp_path), "--model_path", str(tmp_path / "m.pt")]
        assert main([*argv, *flags]) == 0
        return seen["c"]

    return resolve


@pytest.fixture
def names() -> SimpleNamespace:
    """The small dataset's image names: .trainval (18 train, 2 valid) and .test."""
    return SimpleNamespace(trainval=TRAINVAL, test=TEST)


def save_tiny_unet(path: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A two-level UNet checkpoint taught for a few steps that bright blobs on a dark background
    are pet: real weights and mixed masks, in about a second."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model("unet", widths=[4, 8])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for _ in range(40):
        images = torch.rand(8, 3, image_size, image_size, generator=generator) * 0.35
        masks = torch.zeros(8, 1, image_size, image_size)
        for index in range(8):
            top, left = torch.randint(0, image_size // 2, (2,), generator=generator).tolist()
            height, width = torch.randint(4, image_size // 2, (2,), generator=generator).tolist()
            masks[index, :, top : top + height, left : left + width] = 1.0
        images = images + 0.6 * masks
        logits = model((images - mean) / std)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    config = tiny_config(image_size=image_size, widths=(4, 8))
    checkpoint = make_checkpoint(model.eval(), config, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    save_checkpoint(path, checkpoint)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny UNet checkpoint (see save_tiny_unet) shared by the tests that only run a model."""
    return save_tiny_unet(tmp_path_factory.mktemp("tiny") / "tiny.pt")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems under tmp_path, e.g. `tmpfs(64)` (KiB) or `tmpfs(64,
    read_only=True)`, to meet a full disk or a read-only one for real; skips where mounting is
    not permitted (not root, or a container without the capability)."""
    mounted: list[Path] = []

    def mount(size_kib: int, *, read_only: bool = False) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        options = f"size={size_kib}k" + (",ro" if read_only else "")
        if shutil.which("mount") is None:
            pytest.skip("no mount command to make a tmpfs")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], capture_output=True, check=False)
