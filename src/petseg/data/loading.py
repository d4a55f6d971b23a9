"""DataLoaders over the splits, seeded per epoch, and fetching the dataset when it is absent
(or saying what is wrong with --data_path when a download is not what was meant)."""

from __future__ import annotations

import contextlib
import difflib
import itertools
import signal
import sys
from collections.abc import Callable, Iterator, Sized
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from petseg.config import DEFAULT_DATA_PATH, DEFAULT_NUM_WORKERS
from petseg.data.download import ARCHIVE_MD5, download_dataset
from petseg.data.oxford_pet import REQUIRED_PARTS, missing_archives, missing_parts
from petseg.errors import PetsegError


def ensure_dataset(root: Path, mirror: str | None = None, *, download: bool = False) -> None:
    """Download the archives whose contents are missing under root (no-op when complete), where
    a download is what the user meant (download_meant); otherwise a one-line PetsegError that
    names what is missing or the folder that was probably meant.

    download: the user asked for it (--download). A folder this call created for a download
    that then failed is removed again.
    """
    missing = missing_archives(root)
    if not missing:
        return
    if not (download or mirror is not None or download_meant(root)):
        raise PetsegError(data_path_problem(root))
    print(
        f"petseg: {root} lacks the Oxford-IIIT Pet {' and '.join(missing)}; downloading",
        file=sys.stderr,
    )
    created = folders_to_create(root)
    try:
        download_dataset(root, mirror)
    except BaseException:
        for folder in created:  # deepest first; rmdir removes only empty ones
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def folders_to_create(root: Path) -> list[Path]:
    """root and its missing parents, deepest first: what a download into root creates."""
    missing = []
    for folder in (root, *root.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def download_meant(root: Path) -> bool:
    """Whether downloading into `root` without --download is surely what the user wants: the
    default data folder, a missing folder named like it, an empty folder, or one holding the
    archives put there by hand. A typo, the images/ subfolder, or a dataset missing a file is
    not: downloading 800 MB there would only hide the mistake."""
    if root.resolve() == DEFAULT_DATA_PATH.resolve():
        return True
    if not root.exists():
        return root.name == DEFAULT_DATA_PATH.name
    if not root.is_dir():
        return False
    entries = {entry.name for entry in root.iterdir()}
    archives = {f"{name}.tar.gz" for name in ARCHIVE_MD5}
    return not entries or bool(entries & archives)


def data_path_problem(root: Path) -> str:
    """What is wrong with --data_path `root`, which lacks parts of the dataset, in one line."""
    layout = "the folder holding images/ and annotations/"
    fetch = f"or pass --download to download the dataset, about 800 MB, into {root}"
    if not root.exists():
        near = close_sibling(root)
        if near is not None:
            return f"{root}: no such folder; did you mean {near}? ({fetch})"
        return f"{root}: no such folder; point --data_path at {layout}, {fetch}"
    if not root.is_dir():
        return f"{root}: exists but is not a folder; point --data_path at {layout}"
    if root.name in REQUIRED_PARTS and not missing_archives(root.parent):
        return f"{root}: is the dataset's {root.name}/ subfolder; pass its parent {root.parent}"
    for child in sorted(entry for entry in root.iterdir() if entry.is_dir()):
        if not missing_archives(child):
            return f"{root}: holds the dataset one level down; pass --data_path {child}"
    parts = missing_parts(root)
    if len(parts) == sum(len(group) for group in REQUIRED_PARTS.values()):
        return f"{root}: holds no Oxford-IIIT Pet dataset; point --data_path at {layout}, {fetch}"
    more = f" and {len(parts) - 1} more" if len(parts) > 1 else ""
    return (
        f"{root / parts[0]}: missing{more}, so the dataset in {root} is incomplete; restore it, "
        f"or pass --download to fetch the {' and '.join(missing_archives(root))} archive again"
    )


def close_sibling(root: Path) -> Path | None:
    """A folder beside the missing `root` whose name is close to its name (a typo's target)."""
    try:
        names = [entry.name for entry in root.parent.iterdir() if entry.is_dir()]
    except OSError:
        return None
    near = difflib.get_close_matches(root.name, names, n=1, cutoff=0.75)
    return root.parent / near[0] if near else None


def seed_worker(worker_id: int) -> None:
    """Give each worker's augmentation RNG its own seed, derived from the loader's generator.

    Workers also ignore Ctrl-C and SIGTERM (sent to the whole process group by a terminal or
    SLURM): the main process decides how to stop (training saves a checkpoint first) and shuts
    them down itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
