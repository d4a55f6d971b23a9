"""Shared fixtures. Real-data tests read the sample set named by PETSEG_SAMPLE_DATA and skip without it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import settings

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


def save_tiny_unet(path: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A two-level UNet checkpoint taught for a few steps that bright blobs on a dark background
    are pet: real weights and mixed masks, in about a second."""
    from petseg.checkpoint import make_checkpoint, save_checkpoint
    from petseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from petseg.models import build_model

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
    checkpoint = make_checkpoint(
        model.eval(),
        model_type="unet",
        model_kwargs={"widths": [4, 8]},
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
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
