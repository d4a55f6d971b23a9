"""`petseg predict`: masks for the test split or for any image files, at each image's own size.

Optional pictures beside each mask NAME.png: NAME_overlay.png (the image with the mask tinted)
and NAME_cutout.png (RGBA: the image's pixels, transparent outside the mask), all at the
original size in the orientation viewers display. The model runs through petseg.Segmenter.

Built for folders of any size: the images are listed folder by folder as they are needed (never
as one list of them all), --num_parts N --part_id K keeps one part of them for one process or
machine, every file is written atomically, and --skip_existing leaves alone the images whose
outputs all exist, so rerunning an interrupted command continues it. No output ever replaces
an input: a --save_dir that is an input folder is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from petseg.config import PredictConfig
from petseg.data.loading import ensure_dataset, make_loader, resolve_num_workers
from petseg.data.oxford_pet import DECODE_ERRORS, load_rgb, read_split_names
from petseg.data.transforms import PairTransform
from petseg.errors import PetsegError
from petseg.files import atomic_write_bytes, ensure_folder
from petseg.segmenter import Prediction, Segmenter

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# What each output adds to the image's name: NAME.png, NAME_overlay.png, NAME_cutout.png
NAME_SUFFIXES = {"mask": "", "overlay": "_overlay", "cutout": "_cutout"}
SKIP_BAD_HINT = "pass --skip_bad to leave unreadable images out"
NOTHING_READABLE = "no readable image left to predict"
RESUME_HINT = "rerun the same command with --skip_existing to continue where it stopped"
# A temp file of petseg.files.atomic_writer, left behind when a run is killed mid-write
TEMP_NAME = re.compile(r"\.(?P<name>.+\.png)\.[a-z0-9_]{8}\.tmp")


class Unreadable(NamedTuple):
    """An image that failed to decode in the loader, with the reason (with skip_bad only)."""

    path: Path
    message: str


class Item(NamedTuple):
    image: torch.Tensor  # (3, S, S), prepared by the Segmenter's transform
    size: tuple[int, int]  # the photo's (H, W)
    path: Path
    photo: np.ndarray | None  # (H, W, 3) uint8, kept for overlays and cut-outs only


class Batch(NamedTuple):
    images: torch.Tensor | None  # None when every image of the batch was unreadable
    sizes: list[tuple[int, int]]
    paths: list[Path]
    photos: list[np.ndarray | None]
    unreadable: list[Unreadable]


def output_name(stem: str, kind: str) -> str:
    return f"{stem}{NAME_SUFFIXES[kind]}.png"


def collision_key(stem: str) -> str:
    """The stem less any _overlay/_cutout endings: two images whose outputs could share a name
    (cat.jpg and cat.png; cat.png and cat_overlay.png) share this key."""
    while True:
        stripped = stem.removesuffix("_overlay").removesuffix("_cutout")
        if stripped == stem:
            return stem
        stem = stripped


def part_of(path: Path, num_parts: int) -> int:
    """Which of num_parts an image falls in: a hash of its name, so it does not depend on the
    order or the number of files listed, and images that could clash land in the same part."""
    key = collision_key(path.stem).encode("utf-8", "surrogateescape")
    return zlib.crc32(key) % num_parts


def listed_images(inputs: Sequence[Path]) -> Iterator[Path]:
    """Folders' image files (sorted per folder, not recursive) and files as given, one by one."""
    for item in inputs:
        if item.is_dir():
            names = sorted(
                entry.name
                for entry in os.scandir(item)
                if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file()
            )
            if not names:
                raise PetsegError(
                    f"{item}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            yield from (item / name for name in names)
        elif item.exists():
            yield item
        else:
            raise PetsegError(f"{item}: no such file or folder")


@dataclass(frozen=True)
class Photos:
    """The images of one run and part, listed afresh on every pass over them."""

    inputs: tuple[Path, ...]
    data_path: Path | None
    split: str
    num_parts: int = 1
    part_id: int = 0

    def __iter__(self) -> Iterator[Path]:
        if self.inputs:
            paths: Iterator[Path] = listed_images(self.inputs)
        else:
            assert self.data_path is not None
            folder = self.data_path / "images"
            paths = (
                folder / f"{name}.jpg" for name in read_split_names(self.data_path, self.split)
            )
        if self.num_parts == 1:
            return paths
        return (path for path in paths if part_of(path, self.num_parts) == self.part_id)

    def folders(self) -> list[Path]:
        """The folders whose image files are inputs."""
        if not self.inputs:
            return [self.data_path / "images"] if self.data_path else []
        return [item for item in self.inputs if item.is_dir()]


@dataclass(frozen=True)
class Outputs:
    """What a run writes for each image, and where."""

    save_dir: Path
    kinds: tuple[str, ...]  # mask first, then overlay and cutout when asked for
    skip_existing: bool = False

    def paths(self, stem: str) -> list[Path]:
        return [self.save_dir / output_name(stem, kind) for kind in self.kinds]

    def done(self, path: Path) -> bool:
        """With skip_existing: whether every output of the image at `path` is there already."""
        return self.skip_existing and all(out.exists() for out in self.paths(path.stem))


@dataclass(frozen=True)
class InputGuard:
    """Knows the run's inputs well enough to say whether writing a file would replace one."""

    save_dir: Path  # resolved
    folders: frozenset[Path]  # resolved input folders: each image file in them is an input
    files: frozenset[Path]  # resolved input files named one by one

    @classmethod
    def of(cls, photos: Photos, save_dir: Path) -> InputGuard:
        guard = cls(
            save_dir.resolve(),
            frozenset(folder.resolve() for folder in photos.folders()),
            frozenset(item.resolve() for item in photos.inputs if not item.is_dir()),
        )
        if guard.save_dir in guard.folders:
            raise PetsegError(
                f"--save_dir {save_dir} is an input folder: the masks would land among the "
                "photos and could replace them; choose another --save_dir"
            )
        return guard

    def replaces_input(self, name: str) -> Path | None:
        """The input that writing `name` into the save_dir would replace, if any."""
        target = self.save_dir / name
        if target.is_symlink():
            target = target.resolve()
        if target in self.files:
            return target
        is_image = target.suffix.lower() in IMAGE_SUFFIXES
        if target.parent in self.folders and is_image and target.exists():
            return target
        return None

    def check(self, path: Path, outputs: Outputs) -> None:
        for kind, out in zip(outputs.kinds, outputs.paths(path.stem), strict=True):
            replaced = self.replaces_input(out.name)
            if replaced is not None:
                raise PetsegError(
                    f"{out}: would overwrite the input {replaced} with the {kind} of {path}; "
                    "choose a --save_dir apart from the photos"
                )


class OutputNames:
    """Refuses a second image whose outputs share a name with an earlier one's (cat.jpg and
    cat.png; cat.png and cat_overlay.png with --overlay). Holds one stem per image; the earlier
    image is looked up again only to name it in the error."""

    def __init__(self, photos: Photos, kinds: Sequence[str]) -> None:
        self.photos = photos
        self.suffixes = [NAME_SUFFIXES[kind] for kind in kinds]
        self.stems: set[str] = set()

    def claim(self, path: Path) -> None:
        stem = path.stem
        for ours, theirs in itertools.product(self.suffixes, repeat=2):
            name = stem + ours  # an output name of this image, less .png
            other = name.removesuffix(theirs)
            if name.endswith(theirs) and other in self.stems:
                owner = self.first_named(other)
                if owner == path:
                    return  # the same file listed twice: predicted twice, harmlessly
                raise PetsegError(
                    f"{path}: its output {name}.png would overwrite the one of {owner}; "
                    "predict them into separate --save_dir folders"
                )
        self.stems.add(stem)

    def first_named(self, stem: str) -> Path | None:
        return next((path for path in self.photos if path.stem == stem), None)


@dataclass
class Plan:
    """What a first pass over the images found, before anything is written."""

    listed: int = 0  # images in this part
    done: int = 0  # left alone: their outputs all exist (--skip_existing)
    unreadable: set[Path] = field(default_factory=set)  # headers that did not read (skip_bad)

    @property
    def todo(self) -> int:
        return self.listed - self.done - len(self.unreadable)


def plan_run(
    photos: Photos, outputs: Outputs, guard: InputGuard, *, probe: bool, skip_bad: bool
) -> Plan:
    """One pass over the images: clashing names, outputs that are inputs and (probe) unreadable
    headers are refused here, before any file is written."""
    plan = Plan()
    names = OutputNames(photos, outputs.kinds)
    for path in photos:
        plan.listed += 1
        names.claim(path)
        guard.check(path, outputs)
        if outputs.done(path):
            plan.done += 1
        elif probe:
            try:
                probe_image(path)
            except PetsegError as error:
                if not skip_bad:
                    raise PetsegError(f"{error}; {SKIP_BAD_HINT}") from None
                warn_skipped(str(error))
                plan.unreadable.add(path)
    if plan.unreadable and not plan.todo:
        raise PetsegError(NOTHING_READABLE)
    return plan


def probe_image(path: Path) -> None:
    """Read the header only: fails fast on non-images and decompression bombs before any work."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except DECODE_ERRORS as error:
        raise PetsegError(f"{path}: not an image petseg can read ({error})") from None
    if width < 1 or height < 1:
        raise PetsegError(f"{path}: image has no pixels ({width}x{height})")


def warn_skipped(message: str) -> None:
    """One line on stderr per image left out (skip_bad), clear of the progress bar."""
    tqdm.write(f"petseg: skipping {message}", file=sys.stderr)


def prepare_save_dir(save_dir: Path, photos: Photos) -> None:
    """Create save_dir and make sure a file can be written there, before any work; remove the
    temp files that a killed run of this part left."""
    ensure_folder(save_dir)
    try:
        with tempfile.TemporaryFile(dir=save_dir):
            pass
    except OSError as error:
        raise PetsegError(f"{save_dir}: cannot write here ({error.strerror or error})") from None
    with os.scandir(save_dir) as entries:
        stale = [
            entry.path
            for entry in entries
            if (found := TEMP_NAME.fullmatch(entry.name))
            and part_of(Path(found["name"]), photos.num_parts) == photos.part_id
        ]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class PhotoStream(IterableDataset):
    """The images still to do, decoded and prepared; each loader worker takes every n-th."""

    def __init__(
        self,
        photos: Photos,
        transform: PairTransform,
        outputs: Outputs,
        unreadable: set[Path],
        *,
        keep_photos: bool,
        skip_bad: bool,
    ) -> None:
        self.photos = photos
        self.transform = transform
        self.outputs = outputs
        self.unreadable = unreadable
        self.keep_photos = keep_photos
        self.skip_bad = skip_bad

    def __iter__(self) -> Iterator[Item | Unreadable]:
        share: Iterator[Path] = iter(self.photos)
        worker = get_worker_info()
        if worker is not None:  # by position in the full listing, which writes cannot shift
            share = itertools.islice(share, worker.id, None, worker.num_workers)
        todo = (p for p in share if p not in self.unreadable and not self.outputs.done(p))
        return map(self.load, todo)

    def load(self, path: Path) -> Item | Unreadable:
        try:
            photo = load_rgb(path, exif_transpose=True)
        except PetsegError as error:
            if self.skip_bad:
                return Unreadable(path, str(error))
            raise PetsegError(f"{error}; {SKIP_BAD_HINT}") from None
        kept = photo if self.keep_photos else None
        return Item(self.transform.image_only(photo), photo.shape[:2], path, kept)


def collate(items: list[Item | Unreadable]) -> Batch:
    """Stack the readable items; the unreadable ones (skip_bad) come apart, to be reported."""
    unreadable = [item for item in items if isinstance(item, Unreadable)]
    good = [item for item in items if isinstance(item, Item)]
    images = torch.stack([item.image for item in good]) if good else None
    return Batch(
        images,
        [item.size for item in good],
        [item.path for item in good],
        [item.photo for item in good],
        unreadable,
    )


def write_outputs(path: Path, prediction: Prediction, outputs: Outputs, guard: InputGuard) -> None:
    """Write each output of one image atomically; an input is never replaced."""
    for kind, out in zip(outputs.kinds, outputs.paths(path.stem), strict=True):
        replaced = guard.replaces_input(out.name)
        if replaced is not None:
            raise PetsegError(f"{out}: refusing to overwrite the input {replaced} with a {kind}")
        try:
            atomic_write_bytes(out, prediction.png(kind))
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise PetsegError(f"{out}: cannot write ({reason}); {RESUME_HINT}") from None
        except PetsegError as error:
            raise PetsegError(f"{error}; {RESUME_HINT}") from None


def run_batches(
    segmenter: Segmenter,
    photos: Photos,
    outputs: Outputs,
    guard: InputGuard,
    plan: Plan,
    config: PredictConfig,
) -> tuple[int, int]:
    """Predict and write every image still to do: (images written, unreadable ones skipped)."""
    dataset = PhotoStream(
        photos,
        segmenter.transform,
        outputs,
        plan.unreadable,
        keep_photos=len(outputs.kinds) > 1,
        skip_bad=config.skip_bad,
    )
    device = segmenter.backend.device
    loader = make_loader(
        dataset,
        config.batch_size,
        shuffle=False,
        num_workers=resolve_num_workers(config.num_workers, device, decoded=False),
        device=device,
        collate_fn=collate,
    )
    written = skipped = 0
    with tqdm(total=plan.todo, desc="predict", unit="img", dynamic_ncols=True) as progress:
        for batch in loader:
            for bad in batch.unreadable:
                warn_skipped(bad.message)
            skipped += len(batch.unreadable)
            if batch.images is not None:
                predictions = segmenter.predict_prepared(batch.images, batch.sizes, batch.photos)
                for path, prediction in zip(batch.paths, predictions, strict=True):
                    write_outputs(path, prediction, outputs, guard)
                written += len(batch.paths)
            progress.update(len(batch.paths) + len(batch.unreadable))
    return written, skipped


@dataclass(frozen=True)
class PredictSummary:
    written: int  # images whose outputs this run wrote
    existing: int  # images left alone, their outputs already there (--skip_existing)
    unreadable: int  # images left out (--skip_bad)


def predict(config: PredictConfig) -> PredictSummary:
    """Write one 0/255 PNG mask per image (and the overlays and cut-outs asked for), named
    after it, at its original size; see PredictConfig for the options."""
    segmenter = Segmenter.load(
        config.model_path,
        config.device,
        config.precision,
        config.tta,
        threshold=config.threshold,
        largest_component=config.largest_component,
        backend=config.backend,
        model_type=config.model_type,
        compile=config.compile,
    )
    photos = photos_of(config)
    outputs = Outputs(config.save_dir, output_kinds(config), config.skip_existing)
    guard = InputGuard.of(photos, config.save_dir)
    plan = plan_run(photos, outputs, guard, probe=bool(config.inputs), skip_bad=config.skip_bad)
    if not plan.todo:
        return nothing_to_do(plan, config)
    prepare_save_dir(config.save_dir, photos)
    written, skipped = run_batches(segmenter, photos, outputs, guard, plan, config)
    if not written:
        raise PetsegError(NOTHING_READABLE)
    summary = PredictSummary(written, plan.done, len(plan.unreadable) + skipped)
    print(summary_line(summary, segmenter, config))
    return summary


def photos_of(config: PredictConfig) -> Photos:
    if not config.inputs:
        if config.data_path is None:
            raise PetsegError("predict needs image files or folders, or --data_path for a split")
        ensure_dataset(config.data_path, config.mirror)
    return Photos(
        tuple(config.inputs), config.data_path, config.split, config.num_parts, config.part_id
    )


def output_kinds(config: PredictConfig) -> tuple[str, ...]:
    return (
        "mask",
        *(["overlay"] if config.overlays else []),
        *(["cutout"] if config.cutouts else []),
    )


def part_label(config: PredictConfig) -> str:
    if config.num_parts == 1:
        return ""
    return f" (part --part_id {config.part_id} of --num_parts {config.num_parts})"


def nothing_to_do(plan: Plan, config: PredictConfig) -> PredictSummary:
    """A part with no images, or a rerun with every output there: say so, write nothing."""
    if not plan.listed and config.num_parts == 1:
        raise PetsegError(NOTHING_READABLE)
    if not plan.listed:
        print(f"no image falls in this part{part_label(config)}; nothing to do")
    else:
        print(
            f"all {plan.done} image{'s' if plan.done != 1 else ''} already have their outputs "
            f"in {config.save_dir}{part_label(config)}; nothing to do (--skip_existing)"
        )
    return PredictSummary(0, plan.done, 0)


def summary_line(summary: PredictSummary, segmenter: Segmenter, config: PredictConfig) -> str:
    kinds = [
        "masks",
        *(["overlays"] if config.overlays else []),
        *(["cut-outs"] if config.cutouts else []),
    ]
    what = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
    size = segmenter.image_size
    extras = [
        *([f"{summary.unreadable} unreadable left out"] if summary.unreadable else []),
        *([f"{summary.existing} already done left alone"] if summary.existing else []),
    ]
    return (
        f"wrote {what} of {summary.written} image{'s' if summary.written != 1 else ''} to "
        f"{config.save_dir} (0 = background, 255 = pet, threshold {segmenter.threshold:.2f}"
        f"{', flip TTA' if config.tta else ''}"
        f"{', largest region only' if config.largest_component else ''}, "
        f"model size {size}x{size}, {segmenter.description}, saved at each image's size)"
        f"{''.join(', ' + extra for extra in extras)}{part_label(config)}"
    )
