"""The decoded-image cache: a split's images and trimaps decoded and resized once, kept on disk.

Decoding a JPEG and its trimap and resizing them costs more than the rest of the training
pipeline, and gives the same arrays every epoch. The cache stores the output of the pipeline's
first, deterministic step (transforms.first_resize) as plain uint8 .npy files that every
process, DataLoader workers included, memory-maps without pickle::

    CACHE/SPLIT-EDGEpx/images.npy    (N, E, E, 3) uint8: each image through first_resize(E)
    CACHE/SPLIT-EDGEpx/trimaps.npy   (N, E, E) uint8: its trimap classes, resized nearest
    CACHE/SPLIT-EDGEpx/index.json    the key, and each array's byte count and CRC-32

CACHE is DATA/.petseg-cache, or ~/.cache/petseg/DATA-HASH when the data folder cannot be written.
The key holds the edge and interpolations, the names in order, each source file's size and
mtime, and the decoders' versions. The index is written last; a folder whose index is missing,
whose key differs (another --image_size, --skip_bad leaving others out, a changed file) or whose
arrays fail the size or CRC check is rebuilt in place, each file replaced atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import PIL
from tqdm import tqdm

from petseg.data.oxford_pet import image_path, load_pair, trimap_path
from petseg.data.transforms import first_resize, pipeline_versions
from petseg.errors import PetsegError
from petseg.files import atomic_write_text, atomic_writer

CACHE_FORMAT = 1
CACHE_FOLDER = ".petseg-cache"
INDEX_FILE = "index.json"
IMAGES_FILE = "images.npy"
TRIMAPS_FILE = "trimaps.npy"
CHUNK_BYTES = 1 << 24


class DecodedImages:
    """One split's cached (image (E, E, 3), trimap (E, E)) uint8 pairs, by index.

    Each process maps the files on first use; pickling (a spawned DataLoader worker) sends the
    paths, not the arrays. A file replaced since the check (another run rebuilding the same
    folder) is refused rather than read.
    """

    def __init__(self, folder: Path, count: int, edge: int) -> None:
        self.folder = folder
        self.count = count
        self.edge = edge
        self.identity = {name: _identity(folder / name) for name in (IMAGES_FILE, TRIMAPS_FILE)}
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, trimaps = self.arrays()
        # Copies: writable (torch warns on read-only arrays) and a few tens of KB each.
        return np.array(images[index]), np.array(trimaps[index])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            for name, identity in self.identity.items():
                if _identity(self.folder / name) != identity:
                    raise PetsegError(
                        f"{self.folder / name}: the cache was rebuilt by another run while this "
                        "one used it; run again, or give each run its own --cache_dir"
                    )
            self._arrays = (
                np.load(self.folder / IMAGES_FILE, mmap_mode="r", allow_pickle=False),
                np.load(self.folder / TRIMAPS_FILE, mmap_mode="r", allow_pickle=False),
            )
        return self._arrays

    @property
    def nbytes(self) -> int:
        return sum(identity[1] for identity in self.identity.values())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}


def cached_images(
    root: Path,
    split: str,
    names: Sequence[str],
    edge: int,
    *,
    cache_dir: Path | None = None,
    build: bool = True,
    report: bool = True,
) -> DecodedImages | None:
    """The split's decoded pairs at edge x edge from the cache, built first when needed.

    cache_dir: where caches go instead of DATA/.petseg-cache (with its ~/.cache fallback).
    build: False only reads (torchrun ranks that wait for the one that builds).
    report: print where the cache is and how big, show a bar while building, and say why a cache
    was rebuilt or left out. Returns None (decode from the files) when no cache can be written.
    """
    key = cache_key(root, split, names, edge)
    folders = [folder / f"{split}-{edge}px" for folder in cache_folders(root, cache_dir)]
    for folder in folders:
        decoded, problem = open_cache(folder, key)
        if decoded is not None:
            _say(report, f"cache: {describe(decoded, split)}, reused")
            return decoded
        if problem and (folder / INDEX_FILE).exists():
            _say(report, f"cache: {folder}: {problem}; rebuilding", err=True)
    if not build:
        return None
    reasons = []
    for folder in folders:
        if not may_write(folder):
            reasons.append(f"{folder}: read-only")
            continue
        started = time.perf_counter()
        try:
            build_cache(folder, root, names, edge, key, progress=report, desc=f"caching {split}")
        except OSError as error:  # read-only or full disk: try the next place
            reasons.append(f"{folder}: {error.strerror or error}")
            continue
        decoded, problem = open_cache(folder, key)
        if decoded is None:
            reasons.append(f"{folder}: {problem} right after writing it")
            continue
        seconds = time.perf_counter() - started
        _say(report, f"cache: {describe(decoded, split)}, built in {seconds:.1f} s")
        return decoded
    _say(report, f"cache: cannot write one ({'; '.join(reasons)}); decoding every epoch", err=True)
    return None


def describe(decoded: DecodedImages, split: str) -> str:
    return (
        f"{split} split, {len(decoded)} images at {decoded.edge}x{decoded.edge} in "
        f"{decoded.folder} ({decoded.nbytes / 1e6:.1f} MB)"
    )


def cache_folders(root: Path, cache_dir: Path | None) -> list[Path]:
    """Where caches may go, first choice first: --cache_dir alone when given, else the data
    folder's .petseg-cache and then the user's cache folder (for read-only data)."""
    if cache_dir is not None:
        return [cache_dir]
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "petseg"
    resolved = root.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return [root / CACHE_FOLDER, user_cache / f"{resolved.name}-{digest}"]


def may_write(folder: Path) -> bool:
    """Whether folder, or the nearest existing folder above it, may be written to, by its
    permission bits too: root may write anywhere, but data marked read-only is left alone."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return (
        existing.is_dir() and os.access(existing, os.W_OK) and bool(existing.stat().st_mode & 0o222)
    )


def cache_key(root: Path, split: str, names: Sequence[str], edge: int) -> dict[str, Any]:
    """What the cached arrays depend on; any change means a rebuild."""
    resize = first_resize(edge)
    return {
        "format": CACHE_FORMAT,
        "split": split,
        "edge": edge,
        "interpolation": {
            "image": int(resize.interpolation),
            "mask": int(resize.mask_interpolation),
        },
        "count": len(names),
        "sources": sources_digest(root, names),
        "decoders": {"pillow": PIL.__version__, **pipeline_versions()},
    }


def sources_digest(root: Path, names: Iterable[str]) -> str:
    """SHA-256 of the names in order and each image's and trimap's size and mtime."""
    digest = hashlib.sha256()
    for name in names:
        for path in (image_path(root, name), trimap_path(root, name)):
            try:
                stat = path.stat()
            except OSError as error:
                raise PetsegError(f"{path}: cannot read ({error.strerror})") from None
            digest.update(f"{name}\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def open_cache(folder: Path, key: dict[str, Any]) -> tuple[DecodedImages | None, str]:
    """The cache in folder if it holds `key` intact, else (None, what is wrong with it)."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
    except FileNotFoundError:
        return None, "no cache yet"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, f"unreadable {INDEX_FILE}"
    if not isinstance(index, dict) or index.get("key") != key:
        return None, "made for other images, sizes or versions"
    files = index.get("files")
    count, edge = key["count"], key["edge"]
    shapes = {IMAGES_FILE: (count, edge, edge, 3), TRIMAPS_FILE: (count, edge, edge)}
    for name, shape in shapes.items():
        path = folder / name
        expected = files.get(name) if isinstance(files, dict) else None
        if not isinstance(expected, dict):
            return None, f"{INDEX_FILE} lacks {name}"
        if not path.is_file():
            return None, f"{name} is missing"
        try:
            if path.stat().st_size != expected.get("bytes"):
                return None, f"{name} is truncated or overwritten"
            if file_crc32(path) != expected.get("crc32"):
                return None, f"{name} is corrupt (CRC-32 differs)"
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            return None, f"{name} is unreadable ({error})"
        if array.shape != shape or array.dtype != np.uint8:
            return None, f"{name} holds {array.dtype} {array.shape}, not uint8 {shape}"
    decoded = DecodedImages(folder, count, edge)
    decoded.arrays()
    return decoded, ""


def build_cache(
    folder: Path,
    root: Path,
    names: Sequence[str],
    edge: int,
    key: dict[str, Any],
    *,
    progress: bool = True,
    desc: str = "caching",
    workers: int = 2,
) -> None:
    """Decode and resize every sample into folder's arrays, then write the index that vouches
    for them. OSError when the folder cannot be written (the partial files are removed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PetsegError(f"{folder}: exists and is not a folder") from None
    (folder / INDEX_FILE).unlink(missing_ok=True)  # the old index must not vouch for new arrays
    resize = first_resize(edge)

    def decode(name: str) -> tuple[np.ndarray, np.ndarray]:
        image, trimap = load_pair(root, name)
        out = resize(image=image, mask=trimap)
        return out["image"], out["mask"]

    count = len(names)
    crcs: dict[str, int] = {}
    with (
        atomic_writer(folder / IMAGES_FILE) as images_file,
        atomic_writer(folder / TRIMAPS_FILE) as trimaps_file,
        ThreadPoolExecutor(max_workers=workers) as pool,  # PIL and OpenCV release the GIL
    ):
        images_out = NpyWriter(images_file, (count, edge, edge, 3))
        trimaps_out = NpyWriter(trimaps_file, (count, edge, edge))
        bar = tqdm(
            pool.map(decode, names),
            total=count,
            desc=desc,
            unit="image",
            leave=False,
            disable=not progress,
            dynamic_ncols=True,
        )
        for image, trimap in bar:
            images_out.write(image)
            trimaps_out.write(trimap)
        crcs = {IMAGES_FILE: images_out.finish(), TRIMAPS_FILE: trimaps_out.finish()}
    files = {
        name: {"bytes": (folder / name).stat().st_size, "crc32": crc} for name, crc in crcs.items()
    }
    atomic_write_text(folder / INDEX_FILE, json.dumps({"key": key, "files": files}, indent=1))


class NpyWriter:
    """Streams a uint8 array of known shape into a .npy file row by row, with its CRC-32, so
    building never holds the whole split in memory."""

    def __init__(self, handle: BinaryIO, shape: tuple[int, ...]) -> None:
        self.handle = handle
        self.row_shape = shape[1:]
        self.rows_left = shape[0]
        self.crc = 0
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": shape}
        )
        self._put(header.getvalue())

    def write(self, row: np.ndarray) -> None:
        if row.shape != self.row_shape or row.dtype != np.uint8 or self.rows_left <= 0:
            raise ValueError(f"row {row.dtype} {row.shape} does not fit {self.row_shape}")
        self._put(np.ascontiguousarray(row).tobytes())
        self.rows_left -= 1

    def _put(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.handle.write(data)

    def finish(self) -> int:
        if self.rows_left:
            raise ValueError(f"{self.rows_left} rows never written")
        return self.crc


def file_crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def _identity(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime): changes when the file is replaced."""
    try:
        stat = path.stat()
    except OSError:
        return (0, -1, 0)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _say(report: bool, message: str, *, err: bool = False) -> None:
    if report:
        print(message, file=sys.stderr if err else sys.stdout)
