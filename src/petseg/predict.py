"""`petseg predict`: masks for the test split or for any image files, at each image's own size.

Optional pictures beside each mask NAME.png: NAME_overlay.png (the image with the mask tinted)
and NAME_cutout.png (RGBA: the image's pixels, transparent outside the mask). All are at the
original size in the orientation viewers display (EXIF orientation applied).

Two backends run the model: PyTorch on a checkpoint, ONNX Runtime on a file from `petseg export`.
Each becomes a `Predictor`, a function from normalized batches to probabilities plus the
preprocessing it expects; loading, resizing back and writing are the same for both.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from petseg import postprocess
from petseg.checkpoint import (
    check_model_type,
    checkpoint_config,
    load_checkpoint,
    model_from_checkpoint,
)
from petseg.choices import BACKENDS
from petseg.config import INFERENCE_BATCH_SIZE
from petseg.data.loading import ensure_dataset, make_loader, resolve_num_workers
from petseg.data.oxford_pet import DECODE_ERRORS, Split, load_rgb, read_split_names
from petseg.data.transforms import PairTransform, eval_transform
from petseg.errors import PetsegError
from petseg.files import ensure_folder
from petseg.inference import inference_model, pet_probabilities
from petseg.onnx_model import load_onnx_model, session_logits
from petseg.pictures import cutout, overlay, save_png
from petseg.runtime import autocast, compiled, resolve_device, resolve_precision

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
OVERLAY_SUFFIX, CUTOUT_SUFFIX = "_overlay", "_cutout"  # NAME_overlay.png, NAME_cutout.png

Item = tuple[torch.Tensor, tuple[int, int], int, np.ndarray | None]
SKIP_BAD_HINT = "pass --skip_bad to leave unreadable images out"
NOTHING_READABLE = "no readable image left to predict"


@dataclass(frozen=True)
class Unreadable:
    """An image that failed to decode in the loader, with the reason (with skip_bad only)."""

    index: int
    message: str


@dataclass(frozen=True)
class Predictor:
    """A loaded model, whatever runs it, and the preprocessing and threshold it comes with."""

    probabilities: Callable[[torch.Tensor], torch.Tensor]  # (N, 3, S, S) -> (N, 1, S, S) probs
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float
    device: torch.device  # where the input batches go
    description: str  # how it runs, for the summary line


def resolve_backend(model_path: Path, backend: str | None) -> str:
    """None: onnxruntime for a .onnx file, else torch. A backend given must suit the file."""
    is_onnx = model_path.suffix.lower() == ".onnx"
    if backend is None:
        return "onnxruntime" if is_onnx else "torch"
    if backend not in BACKENDS:
        raise PetsegError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch" and is_onnx:
        raise PetsegError(
            f"{model_path}: is an ONNX model; use --backend onnxruntime (or leave --backend out)"
        )
    if backend == "onnxruntime" and not is_onnx:
        raise PetsegError(
            f"{model_path}: --backend onnxruntime needs a .onnx file; make one with "
            f"petseg export --model_path {model_path} --output MODEL.onnx"
        )
    return backend


def load_predictor(
    model_path: Path,
    backend: str | None = None,
    *,
    device_name: str = "auto",
    precision: str = "fp32",
    model_type: str | None = None,
    tta: bool = False,
    compile: bool = False,
) -> Predictor:
    """The checkpoint (torch) or exported ONNX file (onnxruntime) as a Predictor.

    compile: torch.compile the model (the torch backend only).
    """
    if resolve_backend(model_path, backend) == "onnxruntime":
        if compile:
            raise PetsegError("--compile applies to --backend torch, not to an ONNX model")
        return onnx_predictor(
            model_path, device_name=device_name, precision=precision, model_type=model_type, tta=tta
        )
    return torch_predictor(
        model_path,
        device_name=device_name,
        precision=precision,
        model_type=model_type,
        tta=tta,
        compile=compile,
    )


def torch_predictor(
    model_path: Path,
    *,
    device_name: str,
    precision: str,
    model_type: str | None,
    tta: bool,
    compile: bool = False,
) -> Predictor:
    checkpoint = load_checkpoint(model_path)
    config = checkpoint_config(checkpoint)
    check_model_type(config.model.model_type, model_type, model_path)
    device = resolve_device(device_name)
    precision = resolve_precision(precision, device)
    model = compiled(
        inference_model(model_from_checkpoint(checkpoint, model_path).to(device)), compile
    )

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return pet_probabilities(model, images, tta=tta)

    norm = checkpoint["normalization"]
    return Predictor(
        probabilities,
        image_size=config.recipe.image_size,
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        threshold=float(checkpoint.get("threshold", 0.5)),
        device=device,
        description=f"torch {precision} on {device.type}",
    )


def onnx_predictor(
    model_path: Path, *, device_name: str, precision: str, model_type: str | None, tta: bool
) -> Predictor:
    if precision not in ("auto", "fp32"):
        raise PetsegError(
            f"--precision {precision} applies to --backend torch; the exported ONNX model "
            "runs in fp32"
        )
    session, info = load_onnx_model(model_path, device_name)
    check_model_type(info.model_type, model_type, model_path)
    logits = session_logits(session)
    provider = session.get_providers()[0].removesuffix("ExecutionProvider")
    return Predictor(
        lambda images: pet_probabilities(logits, images, tta=tta),
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
        threshold=info.threshold,
        device=torch.device("cpu"),  # ORT takes numpy arrays; its CUDA provider copies them
        description=f"onnxruntime fp32 on {provider}",
    )


class ImageFiles(Dataset):
    """Images for inference: (image tensor at the model size, original (H, W), index, original).

    keep_original: also return the decoded (H, W, 3) uint8 image (else None), for the pictures.
    skip_bad: an image that does not decode becomes an Unreadable instead of an error.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform: PairTransform,
        keep_original: bool = False,
        skip_bad: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.keep_original = keep_original
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item | Unreadable:
        try:
            image = load_rgb(self.paths[index], exif_transpose=True)
        except PetsegError as error:
            if self.skip_bad:
                return Unreadable(index, str(error))
            raise PetsegError(f"{error}; {SKIP_BAD_HINT}") from None
        original = image if self.keep_original else None
        return self.transform.image_only(image), image.shape[:2], index, original


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """Expand folders to their image files (sorted, not recursive); keep files as given."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PetsegError(
                    f"{item}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise PetsegError(f"{item}: no such file or folder")
    return paths


def readable_images(paths: Sequence[Path], skip_bad: bool = False) -> list[Path]:
    """The paths whose header reads as an image. The first that does not stops here, before any
    work, or with skip_bad each is reported on stderr and left out."""
    readable = []
    for path in paths:
        try:
            probe_image(path)
        except PetsegError as error:
            if not skip_bad:
                raise PetsegError(f"{error}; {SKIP_BAD_HINT}") from None
            warn_skipped(str(error))
        else:
            readable.append(path)
    if not readable:
        raise PetsegError(NOTHING_READABLE)
    return readable


def warn_skipped(message: str) -> None:
    """One line on stderr per image left out (skip_bad), clear of the progress bar."""
    tqdm.write(f"petseg: skipping {message}", file=sys.stderr)


def probe_image(path: Path) -> None:
    """Read the header only: fails fast on non-images and decompression bombs before any work."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except DECODE_ERRORS as error:
        raise PetsegError(f"{path}: not an image petseg can read ({error})") from None
    if width < 1 or height < 1:
        raise PetsegError(f"{path}: image has no pixels ({width}x{height})")


def output_names(stem: str, overlays: bool, cutouts: bool) -> list[str]:
    """File names predict writes for an image named STEM: the mask first, then the pictures."""
    return [
        f"{stem}.png",
        *([f"{stem}{OVERLAY_SUFFIX}.png"] if overlays else []),
        *([f"{stem}{CUTOUT_SUFFIX}.png"] if cutouts else []),
    ]


def check_output_names(paths: Sequence[Path], overlays: bool, cutouts: bool) -> None:
    """Refuse inputs whose outputs would overwrite each other (cat.jpg and cat_overlay.jpg)."""
    owners: dict[str, Path] = {}
    for path in paths:
        for name in output_names(path.stem, overlays, cutouts):
            if name in owners and owners[name] != path:
                raise PetsegError(
                    f"{path}: its output {name} would overwrite the one of {owners[name]}; "
                    "predict them into separate --save_dir folders"
                )
            owners[name] = path


def split_images(data_path: Path, split: Split) -> list[Path]:
    return [data_path / "images" / f"{name}.jpg" for name in read_split_names(data_path, split)]


@torch.inference_mode()
def predict_masks(
    model_path: Path,
    save_dir: Path,
    *,
    inputs: Sequence[Path] = (),
    data_path: Path | None = None,
    split: Split = "test",
    batch_size: int = INFERENCE_BATCH_SIZE,
    num_workers: int | None = None,
    device_name: str = "auto",
    threshold: float | None = None,
    mirror: str | None = None,
    model_type: str | None = None,
    tta: bool = False,
    precision: str = "fp32",
    overlays: bool = False,
    cutouts: bool = False,
    backend: str | None = None,
    compile: bool = False,
    largest_component: bool = False,
    skip_bad: bool = False,
) -> list[Path]:
    """Write one 0/255 PNG mask per image, named after it, at its original size.

    Images come from `inputs` (files or folders) or, without inputs, from a dataset split.
    tta: average with the flipped image's probabilities. overlays, cutouts: also write
    NAME_overlay.png and NAME_cutout.png. backend: "torch" (a checkpoint) or "onnxruntime"
    (a .onnx file from petseg export); None picks by the file's suffix. compile:
    torch.compile the model (torch backend). largest_component: keep each mask's largest
    connected region only (it drops the smaller of two pets). skip_bad: leave out images that
    cannot be read, with a warning each, instead of stopping. Returns the paths written.
    """
    predictor = load_predictor(
        model_path,
        backend,
        device_name=device_name,
        precision=precision,
        model_type=model_type,
        tta=tta,
        compile=compile,
    )
    if inputs:
        given = collect_images(inputs)
        paths = readable_images(given, skip_bad)
    elif data_path is not None:
        ensure_dataset(data_path, mirror)
        given = paths = split_images(data_path, split)
    else:
        raise PetsegError("predict needs image files or folders, or --data_path for a split")
    check_output_names(paths, overlays, cutouts)
    if threshold is None:
        threshold = predictor.threshold
    if not 0.0 < threshold < 1.0:
        raise PetsegError(f"--threshold must be between 0 and 1, got {threshold}")
    ensure_folder(save_dir)

    size = predictor.image_size
    dataset = ImageFiles(
        paths,
        eval_transform(size, predictor.mean, predictor.std),
        keep_original=overlays or cutouts,
        skip_bad=skip_bad,
    )
    loader = make_loader(
        dataset,
        batch_size,
        shuffle=False,
        num_workers=resolve_num_workers(num_workers, predictor.device, decoded=False),
        device=predictor.device,
        collate_fn=_collate,
    )
    written: list[Path] = []
    done = 0  # images whose masks were written
    for images, sizes, indices, originals, unreadable in tqdm(
        loader, desc="predict", unit="batch", dynamic_ncols=True
    ):
        for bad in unreadable:
            warn_skipped(bad.message)
        if images is None:
            continue
        done += len(indices)
        probs = predictor.probabilities(images.to(predictor.device, non_blocking=True))
        for prob, (height, width), index, original in zip(
            probs, sizes, indices, originals, strict=True
        ):
            # Resize probabilities, not binary masks, so the mask edge is smooth at full size.
            full = F.interpolate(
                prob[None], size=(height, width), mode="bilinear", align_corners=False
            )[0, 0]
            pet = full > threshold
            if largest_component:
                pet = postprocess.largest_component(pet)
            mask = pet.to(torch.uint8).mul_(255).cpu().numpy()  # (H, W)
            stem = paths[index].stem
            pictures = [mask]
            if overlays:
                pictures.append(overlay(original, mask))
            if cutouts:
                pictures.append(cutout(original, mask))
            for name, picture in zip(output_names(stem, overlays, cutouts), pictures, strict=True):
                save_png(save_dir / name, picture)
                written.append(save_dir / name)
    kinds = ["masks"] + [
        k for k, wanted in (("overlays", overlays), ("cut-outs", cutouts)) if wanted
    ]
    what = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
    if not done:
        raise PetsegError(NOTHING_READABLE)
    skipped = len(given) - done
    left_out = f", {skipped} unreadable left out" if skipped else ""
    print(
        f"wrote {what} of {done} image{'s' if done != 1 else ''} to {save_dir} "
        f"(0 = background, 255 = pet, threshold {threshold:.2f}{', flip TTA' if tta else ''}"
        f"{', largest region only' if largest_component else ''}, "
        f"model size {size}x{size}, {predictor.description}, saved at each image's size)"
        f"{left_out}"
    )
    return written


def _collate(
    batch: list[Item | Unreadable],
) -> tuple[
    torch.Tensor | None, list[tuple[int, int]], list[int], list[np.ndarray | None], list[Unreadable]
]:
    """Stack the readable items; the unreadable ones (skip_bad) come apart, to be reported."""
    unreadable = [item for item in batch if isinstance(item, Unreadable)]
    items = [item for item in batch if not isinstance(item, Unreadable)]
    if not items:
        return None, [], [], [], unreadable
    images, sizes, indices, originals = zip(*items, strict=True)
    return torch.stack(images), list(sizes), list(indices), list(originals), unreadable
