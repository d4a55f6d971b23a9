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
