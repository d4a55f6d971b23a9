"""Oxford-IIIT Pet on disk: layout, official splits, trimap -> binary mask, and the Dataset.

Layout (as the official archives extract)::

    ROOT/images/NAME.jpg
    ROOT/annotations/trimaps/NAME.png     1 = pet, 2 = background, 3 = border
    ROOT/annotations/trainval.txt         "NAME CLASS SPECIES BREED" per line
    ROOT/annotations/test.txt

Splits follow the lab's loader so numbers compare: train = trainval lines whose index % 10 != 0,
valid = index % 10 == 0, test = test.txt. The border class counts as pet; evaluation can also ask
for the border itself (``with_border``) to score the band separately.

Names follow the Oxford convention ``BREED_NUMBER``; cat breeds are capitalised
(``Abyssinian_12``), dog breeds are not (``american_bulldog_7``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from petseg.choices import SPLITS
from petseg.errors import PetsegError

Split = Literal["train", "valid", "test"]

# Which archive provides which part of the layout; download.py fetches the missing archives.
REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "images": ("images",),
    "annotations": (
        "annotations/trainval.txt",
        "annotations/test.txt",
        "annotations/trimaps",
    ),
}

# Trimap classes.
PET, BACKGROUND, BORDER = 1, 2, 3

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class DecodedPairs(Protocol):
    """A split's (image (E, E, 3), trimap (E, E)) uint8 arrays by index, already decoded and
    through the transform's first resize (petseg.data.cache.DecodedImages)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


def missing_parts(root: Path) -> list[str]:
    """The parts of the layout (REQUIRED_PARTS' relative paths) absent under `root`."""
    return [
        part for parts in REQUIRED_PARTS.values() for part in parts if not (root / part).exists()
    ]


def missing_archives(root: Path) -> list[str]:
    """Names of the archives ("images", "annotations") whose contents are absent under `root`."""
    return [
        archive
        for archive, parts in REQUIRED_PARTS.items()
        if not all((root / part).exists() for part in parts)
    ]


def image_path(root: Path, name: str) -> Path:
    return root / "images" / f"{name}.jpg"


def trimap_path(root: Path, name: str) -> Path:
    return root / "annotations" / "trimaps" / f"{name}.png"


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


def breed_of(name: str) -> str:
    """Breed of an image name: the name without its trailing _NUMBER ("great_pyrenees_3")."""
    stem, _, number = name.rpartition("_")
    return stem if stem and number.isdigit() else name


def species_of(name: str) -> str:
    """ "cat" for capitalised breed names (the Oxford convention), else "dog"."""
    return "cat" if name[:1].isupper() else "dog"


def trimap_to_mask(trimap: np.ndarray) -> np.ndarray:
    """Trimap (1 pet, 2 background, 3 border) -> uint8 mask with 1 for pet and border, else 0."""
    return (trimap != BACKGROUND).astype(np.uint8)


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
    return trimap_to_mask(load_trimap(path))


def load_trimap(path: Path) -> np.ndarray:
    """Read a trimap PNG as its (H, W) uint8 classes (1 pet, 2 background, 3 border)."""
    try:
        with Image.open(path) as trimap:
            return np.array(trimap.convert("L"))  # writable: torch warns on read-only arrays
    except FileNotFoundError:
        raise PetsegError(f"{path}: trimap not found") from None
    except DECODE_ERRORS as error:
        raise PetsegError(f"{path}: cannot decode trimap ({error})") from None


def load_pair(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode a sample: its (H, W, 3) image and (H, W) trimap classes, checked to agree in size."""
    image = load_rgb(image_path(root, name))
    trimap = load_trimap(trimap_path(root, name))
    if image.shape[:2] != trimap.shape:
        raise PetsegError(
            f"{trimap_path(root, name)}: trimap size {trimap.shape[::-1]} differs from "
            f"its image's {image.shape[1::-1]}"
        )
    return image, trimap


class OxfordPetDataset(Dataset):
    """(image, mask) pairs of one split; `transform` maps uint8 arrays to tensors.

    Items are ``(image (3, H, W) float, mask (1, H, W) float in {0, 1})`` after the transform.
    with_border: items gain a third tensor, ``border (1, H, W) float in {0, 1}``, the trimap's
    border class. The transform then sees the trimap's classes as the mask, so its geometry
    (nearest for masks) moves mask and border together.
    decoded: the pairs of `names` from the decoded-image cache, read instead of the files; the
    transform must then start after its first resize (``resized_input=True``).
    """

    def __init__(
        self,
        root: Path,
        split: Split,
        transform: Transform,
        names: Sequence[str] | None = None,
        *,
        with_border: bool = False,
        decoded: DecodedPairs | None = None,
    ) -> None:
        """names: a subset of the split (e.g. without bad samples); default the whole split.

        with_border: items also carry the trimap's border band (see __getitem__).
        """
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.with_border = with_border
        self.names = list(names) if names is not None else read_split_names(self.root, split)
        self.decoded = decoded
        if decoded is not None and len(decoded) != len(self.names):
            raise ValueError(f"{len(decoded)} decoded pairs for {len(self.names)} names")
        self.augment_seed: int | None = None
        missing = [
            path
            for name in self.names
            for path in (self.image_path(name), self.mask_path(name))
            if not path.is_file()
        ]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PetsegError(f"{missing[0]}: listed in the {split} split but missing{more}")

    def set_augment_seed(self, seed: int | None) -> None:
        """Seed each item's augmentation from (seed, index): the same draw whatever the worker,
        the order or an interruption, so a run resumed mid-epoch sees what it would have seen."""
        self.augment_seed = seed

    def image_path(self, name: str) -> Path:
        return image_path(self.root, name)

    def mask_path(self, name: str) -> Path:
        return trimap_path(self.root, name)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        name = self.names[index]
        if self.augment_seed is not None and hasattr(self.transform, "set_seed"):
            self.transform.set_seed((self.augment_seed * 1_000_003 + index) % 2**32)
        if self.decoded is not None:
            image, trimap = self.decoded[index]
        else:
            image, trimap = load_pair(self.root, name)
        if not self.with_border:
            return self.transform(image, trimap_to_mask(trimap))
        image_t, classes = self.transform(image, trimap)  # classes: (1, H, W) trimap values
        return image_t, (classes != BACKGROUND).float(), (classes == BORDER).float()
