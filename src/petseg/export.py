"""`petseg export`: a checkpoint's model as an ONNX file, checked against PyTorch, then written.

The graph takes ``images`` (N, 3, H, W) and returns ``logits`` (N, 1, H, W) with N, H and W
dynamic; the file's metadata carries the rest (see `petseg.onnx_model`). It is built and checked
in memory and written (atomically) only when ONNX Runtime reproduces PyTorch:

- max |logit difference| <= LOGIT_TOLERANCE over every pixel of every parity input, and
- the masks at the checkpoint's threshold agree at every pixel whose PyTorch probability is
  more than NEAR_THRESHOLD away from the threshold (pixels that close may flip either way).

Parity runs at the checkpoint's image size and at one odd, non-square size.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petseg.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from petseg.config import PARITY_IMAGES
from petseg.data.oxford_pet import load_rgb, read_split_names
from petseg.data.transforms import eval_transform
from petseg.errors import PetsegError
from petseg.files import atomic_write_bytes, check_output_file
from petseg.onnx_model import (
    CPU_PROVIDER,
    INPUT_NAME,
    OUTPUT_NAME,
    metadata_from_checkpoint,
    open_session,
    require,
    session_logits,
)

OPSET = 17  # run by every onnxruntime >= 1.14
LOGIT_TOLERANCE = 1e-3
NEAR_THRESHOLD = 1e-3
PARITY_BATCH = 8  # parity inputs per forward pass, to bound memory
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against PyTorch (fp32, eval) on the same inputs of one size."""

    height: int
    width: int
    max_logit_diff: float
    mask_pixels: int
    differing: int  # mask pixels that differ
    differing_far: int  # of those, pixels whose probability is not near the threshold

    def passed(self, logit_tolerance: float = LOGIT_TOLERANCE) -> bool:
        return self.max_logit_diff <= logit_tolerance and self.differing_far == 0

    def describe_masks(self) -> str:
        if not self.differing:
            return "masks identical"
        return (
            f"masks identical except {self.differing} of {self.mask_pixels} pixels within "
            f"{NEAR_THRESHOLD:g} of the threshold"
        )


def export_onnx(
    model_path: Path,
    output: Path,
    *,
    data_path: Path | None = None,
    parity_images: int = PARITY_IMAGES,
    logit_tolerance: float = LOGIT_TOLERANCE,
) -> list[Parity]:
    """Export the checkpoint at model_path to `output` (.onnx) once parity holds; print a summary.

    data_path: check parity on the first `parity_images` test images of this dataset, else on
    as many deterministic random inputs. Nothing is written when parity fails.
    """
    require("onnx", "petseg export")
    require("onnxruntime", "petseg export")
    if output.suffix.lower() != ".onnx":
        raise PetsegError(f"{output}: the exported file's name must end in .onnx")
    checkpoint = load_checkpoint(model_path)
    check_output_file(output)
    model = model_from_checkpoint(checkpoint, model_path).eval()
    size = checkpoint_config(checkpoint).recipe.image_size
    threshold = float(checkpoint.get("threshold", 0.5))
    norm = checkpoint["normalization"]
    if data_path is not None:
        images = load_test_images(data_path, parity_images, size, norm["mean"], norm["std"])
        source = f"{len(images)} test image{'s' if len(images) != 1 else ''}"
    else:
        images = torch.randn(
            parity_images, 3, size, size, generator=torch.Generator().manual_seed(0)
        )
        source = f"{parity_images} random input{'s' if parity_images != 1 else ''}"

    data = with_metadata(onnx_bytes(model, size), metadata_from_checkpoint(checkpoint, model_path))
    logits = session_logits(open_session(data, [CPU_PROVIDER], path=output))
    other = other_size(size)
    results = [
        compare(model, logits, images, threshold),
        compare(model, logits, resize(images, other), threshold),
    ]
    for result in results:
        if not result.passed(logit_tolerance):
            raise PetsegError(
                f"parity check failed at {result.height}x{result.width}: max |logit diff| "
                f"{result.max_logit_diff:.1e} (tolerance {logit_tolerance:g}), "
                f"{result.differing_far} mask pixels differ away from the threshold; "
                f"{output} not written"
            )
    atomic_write_bytes(output, data)
    sizes = " and ".join(f"{r.height}x{r.width}" for r in results)
    worst = max(r.max_logit_diff for r in results)
    masks = (
        "masks identical"
        if not any(r.differing for r in results)
        else "; ".join(f"{r.height}x{r.width}: {r.describe_masks()}" for r in results)
    )
    print(
        f"exported {model_path} -> {output} ({len(data) / 1e6:.1f} MB, opset {OPSET}, dynamic "
        f"batch/height/width); parity on {source} at {sizes}: max |logit diff| {worst:.1e}, "
        f"{masks}"
    )
    return results


def trace_size(image_size: int) -> int:
    """The side 2**k - 1 >= image_size at which the model is traced.

    The UNet decoder pads a feature map only where the skip is one pixel larger, which happens
    at odd sizes; tracing records only the branches taken, so at a size odd at every level
    (2**k - 1 halves to 2**(k-1) - 1) the pads are recorded, with amounts computed from the
    input's shape, and the graph is right at even and odd sizes alike.
    """
    return 2 ** image_size.bit_length() - 1


def onnx_bytes(model: nn.Module, image_size: int) -> bytes:
    """The model as a serialized ONNX graph, dynamic in batch, height and width.

    The TorchScript exporter (torch.onnx.export(dynamo=False)) is used: it needs onnx but not
    onnxscript, takes seconds rather than tens of seconds, and exists in every supported torch.
    The dynamo exporter, torch's default since 2.9, turned the decoder's pad branch into a
    silent assumption that H and W are multiples of 16 when traced at 128x128.
    """
    side = trace_size(image_size)
    example = torch.zeros(2, 3, side, side)
    options: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5
        options["dynamo"] = False
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter's deprecation notice, and tracer notes about the pad branch that
        # trace_size makes safe (and parity then checks at an odd size).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: DYNAMIC_AXES, OUTPUT_NAME: DYNAMIC_AXES},
            opset_version=OPSET,
            do_constant_folding=True,
            **options,
        )
    return buffer.getvalue()


def with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """The serialized model with `metadata` as its metadata_props, checked by onnx.checker."""
    onnx = require("onnx", "petseg export")
    proto = onnx.load_model_from_string(data)
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = "petseg pet/background segmentation: sigmoid(logits) > threshold is pet"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def load_test_images(
    data_path: Path, count: int, size: int, mean: list[float], std: list[float]
) -> torch.Tensor:
    """The first `count` test-split images, (N, 3, size, size) as evaluate and predict see them."""
    if not (data_path / "annotations" / "test.txt").is_file():
        raise PetsegError(
            f"{data_path}: no annotations/test.txt for parity images; run petseg download "
            "--data_path there, or leave out --data_path to check on random inputs"
        )
    transform = eval_transform(size, mean, std)
    names = read_split_names(data_path, "test")[:count]
    return torch.stack(
        [transform.image_only(load_rgb(data_path / "images" / f"{name}.jpg")) for name in names]
    )


def other_size(size: int) -> tuple[int, int]:
    """An odd, non-square (H, W) larger than size x size: checks the dynamic axes."""
    return (size + size // 4) | 1, (size + size // 2) | 1


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def compare(model: nn.Module, onnx_logits: Any, images: torch.Tensor, threshold: float) -> Parity:
    """PyTorch and ONNX Runtime on the same (N, 3, H, W) images, PARITY_BATCH at a time."""
    max_diff, differing, differing_far = 0.0, 0, 0
    for batch in images.split(PARITY_BATCH):
        expected = model(batch).float()  # (B, 1, H, W) logits
        actual = onnx_logits(batch)
        if actual.shape != expected.shape:
            raise PetsegError(
                f"parity check failed: ONNX Runtime returned shape {tuple(actual.shape)} "
                f"for input {tuple(batch.shape)}, PyTorch {tuple(expected.shape)}"
            )
        diff = float((actual - expected).abs().max())
        max_diff = max(max_diff, diff if math.isfinite(diff) else math.inf)
        probs = torch.sigmoid(expected)
        flipped = (probs > threshold) != (torch.sigmoid(actual) > threshold)
        differing += int(flipped.sum())
        differing_far += int((flipped & ((probs - threshold).abs() > NEAR_THRESHOLD)).sum())
    return Parity(
        height=images.shape[-2],
        width=images.shape[-1],
        max_logit_diff=max_diff,
        mask_pixels=images.shape[0] * images.shape[-2] * images.shape[-1],
        differing=differing,
        differing_far=differing_far,
    )
