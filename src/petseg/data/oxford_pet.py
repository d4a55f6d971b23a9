"""Oxford-IIIT Pet on disk: layout, official splits, trimap -> binary mask, and the Dataset.

Layout (as the official archives extract)::

    ROOT/images/NAME.jpg
    ROOT/annotations/trimaps/NAME.png     1 = pet, 2 = background, 3 = border
    ROOT/annotations/trainval.txt         "NAME CLASS SPECIES BREED" per line
    ROOT/annotations/test.txt

Splits follow the lab's loader so numbers compare: train = trainval lines whose index % 10 != 0,
valid = index % 10 == 0, test = test.txt. The border class counts as pet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from petseg.errors import PetsegError

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")

# Which archive provides which part of the layout; download.py fetches the missing archives.
REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "images": ("images",),
    "annotations": (
        "annotations/trainval.txt",
        "annotations/test.txt",
        "annotations/trimaps",
    ),
}

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def missing_archives(root: Path) -> list[str]:
    """Names of the archives ("images", "annotations") whose contents are absent under `root`."""
    return [
        archive
        for archive, parts in REQUIRED_PARTS.items()
        if not all((root / part).exists() for part in parts)
    ]


def read_split_names(root: Path, split: Split) -> list[str]:
    """Image names of a split, in file order."""
    if split not in SPLITS:
        raise PetsegError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    list_file = root / "annotations" / ("test.txt" if split == "test" else "trainval.txt")
    try:
        lines = list_file.read_text().splitlines()
    except OSError as error:
        raise PetsegError(f"{list_file}: cannot read split file ({error.strerror})") from None
    names = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    if split == "train":
        names = [name for index, name in enumerate(names) if index % 10 != 0]
    elif split == "valid":
        names = [name for index, name in enumerate(names) if index % 10 == 0]
    if not names:
        raise PetsegError(f"{list_file}: the {split} split is empty")
    return names


def trimap_to_mask(trimap: np.ndarray) -> np.ndarray:
    """Trimap (1 pet, 2 background, 3 border) -> uint8 mask with 1 for pet and border, else 0."""
    return (trimap != 2).astype(np.uint8)


# What PIL raises for files it cannot decode; DecompressionBombError keeps its bomb guard on.
DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
)


def load_rgb(path: Path, exif_transpose: bool = False) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 array, whatever its mode (palette, RGBA, L, CMYK).

    exif_transpose: rotate as the EXIF orientation says, i.e. as image viewers display it.
    The dataset's trimaps follow the stored pixel order, so training and evaluation keep it.
    """
    try:
        with Image.open(path) as image:
            if exif_transpose:
                image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise PetsegError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise PetsegError(f"{path}: is a folder, not an image") from None
    except DECODE_ERRORS as error:
        raise PetsegError(f"{path}: cannot decode image ({error})") from None


def load_mask(path: Path) -> np.ndarray:
    """Read a trimap PNG and return the (H, W) binary uint8 mask."""
    try:
        with Image.open(path) as trimap:
            return trimap_to_mask(np.asarray(trimap.convert("L")))
    except FileNotFoundError:
        raise PetsegError(f"{path}: trimap not found") from None
    except DECODE_ERRORS as error:
        raise PetsegError(f"{path}: cannot decode trimap ({error})") from None


class OxfordPetDataset(Dataset):
    """(image, mask) pairs of one split; `transform` maps uint8 arrays to tensors.

    Items are ``(image (3, H, W) float, mask (1, H, W) float in {0, 1})`` after the transform.
    """

    def __init__(
        self,
        root: Path,
        split: Split,
        transform: Transform,
        names: Sequence[str] | None = None,
    ) -> None:
        """names: a subset of the split (e.g. without bad samples); default the whole split."""
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.names = list(names) if names is not None else read_split_names(self.root, split)
        missing = [
            path
            for name in self.names
            for path in (self.image_path(name), self.mask_path(name))
            if not path.is_file()
        ]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PetsegError(f"{missing[0]}: listed in the {split} split but missing{more}")

    def image_path(self, name: str) -> Path:
        return self.root / "images" / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        return self.root / "annotations" / "trimaps" / f"{name}.png"

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        image = load_rgb(self.image_path(name))
        mask = load_mask(self.mask_path(name))
        if image.shape[:2] != mask.shape:
            raise PetsegError(
                f"{self.mask_path(name)}: trimap size {mask.shape[::-1]} differs from "
                f"its image's {image.shape[1::-1]}"
            )
        return self.transform(image, mask)
