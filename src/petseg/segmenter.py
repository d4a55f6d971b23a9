"""petseg.Segmenter: a trained model as a Python object, and petseg's one inference path.

``Segmenter.load`` opens a checkpoint (.pt, run by PyTorch) or a model from ``petseg export``
(.onnx, run by ONNX Runtime); ``predict`` takes a photo (a path, a PIL image, an (H, W, 3) uint8
array or the bytes of an image file) and answers a `Prediction` at the photo's own size, in the
orientation viewers display (EXIF orientation applied). ``petseg predict`` and ``petseg serve``
both run through it, so the resizing, normalization and threshold live only here.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from petseg import postprocess
from petseg.checkpoint import (
    check_model_type,
    checkpoint_config,
    load_checkpoint,
    model_from_checkpoint,
)
from petseg.choices import BACKENDS
from petseg.config import INFERENCE_BATCH_SIZE
from petseg.data.oxford_pet import DECODE_ERRORS, load_rgb
from petseg.data.transforms import PairTransform, eval_transform
from petseg.errors import PetsegError
from petseg.files import atomic_write_bytes
from petseg.inference import inference_model, pet_probabilities
from petseg.onnx_model import load_onnx_model, session_logits
from petseg.pictures import cutout, overlay
from petseg.runtime import autocast, compiled, resolve_device, resolve_precision

OUTPUTS = ("mask", "overlay", "cutout")  # the pictures a Prediction draws
ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]  # noqa: UP007 (a runtime alias)


class TooManyPixels(PetsegError):
    """An image whose header promises more pixels than the caller allows (a decompression bomb)."""


@dataclass(frozen=True)
class Backend:
    """A loaded model, whatever runs it, with the preprocessing and threshold it comes with."""

    probabilities: Callable[[torch.Tensor], torch.Tensor]  # (N, 3, S, S) -> (N, 1, S, S) probs
    model_type: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float
    device: torch.device  # where the input batches go
    description: str  # how it runs, for summary lines
    tta: bool = False


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


def torch_backend(
    model_path: Path,
    *,
    device: str,
    precision: str,
    model_type: str | None,
    tta: bool,
    compile: bool = False,
) -> Backend:
    checkpoint = load_checkpoint(model_path)
    config = checkpoint_config(checkpoint)
    check_model_type(config.model.model_type, model_type, model_path)
    where = resolve_device(device)
    precision = resolve_precision(precision, where)
    model = compiled(
        inference_model(model_from_checkpoint(checkpoint, model_path).to(where)), compile
    )

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        with autocast(where, precision):
            return pet_probabilities(model, images, tta=tta)

    norm = checkpoint["normalization"]
    return Backend(
        probabilities,
        model_type=config.model.model_type,
        image_size=config.recipe.image_size,
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        threshold=float(checkpoint.get("threshold", 0.5)),
        device=where,
        description=f"torch {precision} on {where.type}",
        tta=tta,
    )


def onnx_backend(
    model_path: Path, *, device: str, precision: str, model_type: str | None, tta: bool
) -> Backend:
    if precision not in ("auto", "fp32"):
        raise PetsegError(
            f"--precision {precision} applies to --backend torch; the exported ONNX model "
            "runs in fp32"
        )
    session, info = load_onnx_model(model_path, device)
    check_model_type(info.model_type, model_type, model_path)
    logits = session_logits(session)
    provider = session.get_providers()[0].removesuffix("ExecutionProvider")
    return Backend(
        lambda images: pet_probabilities(logits, images, tta=tta),
        model_type=info.model_type,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
        threshold=info.threshold,
        device=torch.device("cpu"),  # ORT takes numpy arrays; its CUDA provider copies them
        description=f"onnxruntime fp32 on {provider}",
        tta=tta,
    )


def rgb_of(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a PIL image as viewers display it (EXIF orientation applied)."""
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def decode_image_bytes(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of an encoded image file. max_pixels: refuse (TooManyPixels)
    an image whose header promises more, before decoding its pixels."""
    if not data:
        raise PetsegError("empty image: no bytes to decode")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise TooManyPixels(
                    f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                    f"{max_pixels:,}"
                )
            return rgb_of(image)
    except Image.DecompressionBombError as error:
        raise TooManyPixels(f"image refused as a decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise PetsegError("not an image petseg can read (unknown format)") from None
    except DECODE_ERRORS as error:
        raise PetsegError(f"not an image petseg can read ({error})") from None


def pixels_of(image: ImageInput) -> np.ndarray:
    """Any accepted input as (H, W, 3) uint8 pixels, or a one-line PetsegError saying why not."""
    if isinstance(image, (str, Path)):
        return load_rgb(Path(image), exif_transpose=True)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(image))
    if isinstance(image, Image.Image):
        try:
            return rgb_of(image)
        except DECODE_ERRORS as error:
            raise PetsegError(f"PIL image cannot be converted to RGB ({error})") from None
    if isinstance(image, np.ndarray):
        return checked_array(image)
    raise PetsegError(
        "expected a file path, image file bytes, a PIL image or an (H, W, 3) uint8 array, "
        f"got {type(image).__name__}"
    )


def checked_array(array: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 array with at least one pixel, as is; anything else is refused."""
    if array.dtype != np.uint8:
        raise PetsegError(
            f"expected an (H, W, 3) uint8 array, got dtype {array.dtype}; for floats in [0, 1] "
            "pass (array * 255).round().astype(np.uint8)"
        )
    if array.ndim != 3 or array.shape[2] != 3:
        raise PetsegError(f"expected an (H, W, 3) uint8 RGB array, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise PetsegError(f"array has no pixels (shape {array.shape})")
    return array


class Prediction:
    """One photo's result at the photo's own size.

    mask: (H, W) uint8, 255 where pet, 0 elsewhere. probabilities, overlay and cutout are
    computed on first use. image: the (H, W, 3) uint8 photo as decoded (None when the caller
    did not keep it; overlay and cutout need it).
    """

    def __init__(
        self, mask: np.ndarray, model_probs: torch.Tensor, image: np.ndarray | None
    ) -> None:
        self.mask = mask
        self.image = image
        self._model_probs = model_probs  # (S, S) float32 on the CPU: the model's output

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the photo and of every picture here."""
        return self.mask.shape[0], self.mask.shape[1]

    @cached_property
    def probabilities(self) -> np.ndarray:
        """(H, W) float32 probability that each pixel is pet: the model's output resized as for
        the mask (bilinear), so thresholding them gives the mask before --largest_component."""
        return full_size(self._model_probs, self.size).numpy()

    @cached_property
    def overlay(self) -> np.ndarray:
        """(H, W, 3) uint8: the photo with the pet tinted."""
        return overlay(self._photo("overlay"), self.mask)

    @cached_property
    def cutout(self) -> np.ndarray:
        """(H, W, 4) uint8 RGBA: the photo's pixels, transparent outside the pet."""
        return cutout(self._photo("cutout"), self.mask)

    def picture(self, output: str = "mask") -> np.ndarray:
        """The mask, overlay or cutout by name (OUTPUTS)."""
        if output not in OUTPUTS:
            raise PetsegError(f"unknown output {output!r}: choose one of {', '.join(OUTPUTS)}")
        return getattr(self, output)

    def png(self, output: str = "mask") -> bytes:
        """The picture named `output` encoded as PNG (what petseg predict writes)."""
        buffer = io.BytesIO()
        Image.fromarray(self.picture(output)).save(buffer, format="PNG")
        return buffer.getvalue()

    def save(self, path: str | Path, output: str = "mask") -> Path:
        """Write the picture named `output` as a PNG at `path`, atomically; returns the path."""
        path = Path(path)
        atomic_write_bytes(path, self.png(output))
        return path

    def _photo(self, output: str) -> np.ndarray:
        if self.image is None:
            raise PetsegError(f"the {output} needs the photo, which this prediction did not keep")
        return self.image


def full_size(model_probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(S, S) probabilities resized to (H, W), bilinear: resizing probabilities rather than a
    binary mask keeps the mask's edge smooth at full size."""
    return F.interpolate(model_probs[None, None], size=size, mode="bilinear", align_corners=False)[
        0, 0
    ]


class Segmenter:
    """A trained model ready to segment photos: use ``Segmenter.load(path)``."""

    def __init__(
        self, backend: Backend, *, threshold: float | None = None, largest_component: bool = False
    ) -> None:
        threshold = backend.threshold if threshold is None else float(threshold)
        if not 0.0 < threshold < 1.0:
            raise PetsegError(f"threshold must be between 0 and 1, got {threshold}")
        self.backend = backend
        self.threshold = threshold
        self.largest_component = largest_component
        # Picklable, so DataLoader workers can prepare photos exactly as predict() does.
        self.transform: PairTransform = eval_transform(
            backend.image_size, backend.mean, backend.std
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        precision: str = "auto",
        tta: bool = False,
        *,
        threshold: float | None = None,
        largest_component: bool = False,
        backend: str | None = None,
        model_type: str | None = None,
        compile: bool = False,
    ) -> Segmenter:
        """Open a checkpoint (.pt) or an exported .onnx file.

        device: auto, cpu or cuda. precision: auto, fp32, bf16 or fp16 (the .onnx runs fp32).
        tta: also run the mirrored photo and average. threshold: the probability above which a
        pixel is pet (default: the model's own, tuned when trained with --tune_threshold).
        largest_component: keep only each mask's largest connected region. backend: torch or
        onnxruntime (default by suffix). model_type: checked against the file's. compile:
        torch.compile the model (torch only).
        """
        path = Path(path)
        if resolve_backend(path, backend) == "onnxruntime":
            if compile:
                raise PetsegError("--compile applies to --backend torch, not to an ONNX model")
            loaded = onnx_backend(
                path, device=device, precision=precision, model_type=model_type, tta=tta
            )
        else:
            loaded = torch_backend(
                path,
                device=device,
                precision=precision,
                model_type=model_type,
                tta=tta,
                compile=compile,
            )
        return cls(loaded, threshold=threshold, largest_component=largest_component)

    @property
    def image_size(self) -> int:
        """The square size the model sees; photos are resized to it and the mask back."""
        return self.backend.image_size

    @property
    def model_type(self) -> str:
        return self.backend.model_type

    @property
    def description(self) -> str:
        """How the model runs, e.g. 'torch fp32 on cpu'."""
        return self.backend.description

    def predict(self, image: ImageInput) -> Prediction:
        """Segment one photo: a path, a PIL image, an (H, W, 3) uint8 array or file bytes."""
        return self.predict_batch([image])[0]

    def predict_batch(
        self, images: Iterable[ImageInput], batch_size: int = INFERENCE_BATCH_SIZE
    ) -> list[Prediction]:
        """Segment many photos, `batch_size` at a time through the model; results in order.

        Each result keeps its photo and mask in memory: for folders of thousands of photos use
        ``petseg predict``, which streams them to files.
        """
        if batch_size < 1:
            raise PetsegError(f"batch_size must be >= 1, got {batch_size}")
        results: list[Prediction] = []
        chunk: list[np.ndarray] = []
        for image in images:
            chunk.append(pixels_of(image))
            if len(chunk) == batch_size:
                results.extend(self.predict_pixels(chunk))
                chunk = []
        if chunk:
            results.extend(self.predict_pixels(chunk))
        return results

    def predict_pixels(self, photos: Sequence[np.ndarray]) -> list[Prediction]:
        """Segment decoded (H, W, 3) uint8 photos in one batch."""
        batch = torch.stack([self.prepare(photo) for photo in photos])
        return self.predict_prepared(batch, [p.shape[:2] for p in photos], photos)

    def prepare(self, photo: np.ndarray) -> torch.Tensor:
        """(3, S, S) float32: the photo resized to the model's size and normalized."""
        return self.transform.image_only(photo)

    @torch.inference_mode()
    def predict_prepared(
        self,
        batch: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        photos: Sequence[np.ndarray | None],
    ) -> list[Prediction]:
        """Masks for a (N, 3, S, S) batch from `prepare`, at each photo's (H, W) in `sizes`.

        photos: the decoded photos (or None each) that overlay and cutout draw on.
        """
        probs = self.backend.probabilities(batch.to(self.backend.device, non_blocking=True))
        return [
            self._prediction(prob[0], (int(height), int(width)), photo)
            for prob, (height, width), photo in zip(probs, sizes, photos, strict=True)
        ]

    def _prediction(
        self, model_probs: torch.Tensor, size: tuple[int, int], photo: np.ndarray | None
    ) -> Prediction:
        pet = full_size(model_probs, size) > self.threshold
        if self.largest_component:
            pet = postprocess.largest_component(pet)
        mask = pet.to(torch.uint8).mul_(255).cpu().numpy()  # (H, W)
        return Prediction(mask, model_probs.float().cpu(), photo)

    def info(self) -> dict[str, Any]:
        """What the model is and how it runs, as plain values (for GET /health)."""
        return {
            "model_type": self.model_type,
            "image_size": self.image_size,
            "threshold": self.threshold,
            "tta": self.backend.tta,
            "largest_component": self.largest_component,
            "runs_on": self.description,
        }
