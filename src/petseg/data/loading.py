"""DataLoaders over the splits, seeded per epoch, and fetching the dataset when it is absent."""

from __future__ import annotations

import itertools
import signal
import sys
from collections.abc import Callable, Iterator, Sized
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from petseg.config import DEFAULT_NUM_WORKERS
from petseg.data.download import download_dataset
from petseg.data.oxford_pet import missing_archives


def ensure_dataset(root: Path, mirror: str | None = None) -> None:
    """Download the archives whose contents are missing under root (no-op when complete)."""
    missing = missing_archives(root)
    if missing:
        print(
            f"petseg: {root} lacks the Oxford-IIIT Pet {' and '.join(missing)}; downloading",
            file=sys.stderr,
        )
        download_dataset(root, mirror)


def seed_worker(worker_id: int) -> None:
    """Give each worker's augmentation RNG its own seed, derived from the loader's generator.

    Workers also ignore Ctrl-C: the main process decides how to stop (training saves a
    checkpoint first) and shuts them down itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_seed"):
        transform.set_seed(info.seed % 2**32)


def resolve_num_workers(requested: int | None, device: torch.device, *, decoded: bool) -> int:
    """The loader's worker processes: `requested`, or when none was asked for (None), 0 on a CPU
    reading the decoded-image cache and DEFAULT_NUM_WORKERS otherwise.

    From the cache a worker only crops, flips and normalizes small arrays, so on a CPU the
    processes take cores from the model instead of hiding work (bench/epoch.py, docs/speed.md).
    A GPU, or a loader that decodes JPEGs, keeps the workers, which decode beside the model
    where there are cores to spare.
    """
    if requested is not None:
        return requested
    return 0 if device.type == "cpu" and decoded else DEFAULT_NUM_WORKERS


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        # Workers start afresh each epoch: that is how the epoch's set_augment_seed reaches
        # their copy of the dataset (persistent workers would keep the first epoch's seed).
        persistent_workers=False,
        collate_fn=collate_fn,
        sampler=sampler,
    )


class SkipFirst(Sampler[int]):
    """Another sampler's indices less the first `skip`: the rest of an interrupted epoch.

    The base sampler's order depends only on (seed, epoch), so skipping the indices already
    trained on resumes the epoch exactly where it stopped.
    """

    def __init__(self, base: Sampler[int], skip: int = 0) -> None:
        self.base = base
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        assert isinstance(self.base, Sized)
        return max(len(self.base) - self.skip, 0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
