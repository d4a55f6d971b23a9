"""ONNX models written by `petseg export`: the optional extra, their metadata, and running them.

The .onnx file describes itself: its metadata_props hold what inference needs beside the graph
(model type, image size, normalization, threshold), so ONNX Runtime needs nothing but the file.
Graph contract: input ``images`` (N, 3, H, W) float32, RGB scaled to [0, 1] then normalized with
the metadata's mean and std; output ``logits`` (N, 1, H, W) float32. N, H and W are dynamic.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from petseg import __version__
from petseg.checkpoint import checkpoint_config
from petseg.config import model_kwargs
from petseg.errors import PetsegError

ONNX_FORMAT = "petseg-onnx"
ONNX_FORMAT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "images", "logits"
INSTALL_HINT = 'pip install "petseg[onnx]"'
CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"


def require(module: str, purpose: str) -> ModuleType:
    """Import onnx or onnxruntime, or fail with one line saying how to install the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PetsegError(
            f"{purpose} needs the optional package {module}, which is not installed; "
            f"run: {INSTALL_HINT}"
        ) from None


@dataclass(frozen=True)
class OnnxModelInfo:
    """The metadata `petseg export` stores in the ONNX file."""

    model_type: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float
    petseg_version: str


def metadata_from_checkpoint(checkpoint: dict[str, Any], source: Path) -> dict[str, str]:
    """The metadata_props (string to string) of the ONNX model exported from `checkpoint`."""
    norm = checkpoint["normalization"]
    config = checkpoint_config(checkpoint)
    return {
        "format": ONNX_FORMAT,
        "format_version": str(ONNX_FORMAT_VERSION),
        "petseg_version": __version__,
        "model_type": config.model.model_type,
        "model_kwargs": json.dumps(model_kwargs(config.model)),
        "image_size": str(config.recipe.image_size),
        "mean": json.dumps([float(value) for value in norm["mean"]]),
        "std": json.dumps([float(value) for value in norm["std"]]),
        "threshold": repr(float(checkpoint.get("threshold", 0.5))),
        "source_checkpoint": source.name,
        "input": f"{INPUT_NAME}: (N, 3, H, W) float32 RGB in [0, 1], then (x - mean) / std",
        "output": f"{OUTPUT_NAME}: (N, 1, H, W) float32; sigmoid(logits) > threshold is pet",
    }


def info_from_metadata(metadata: dict[str, str], path: Path) -> OnnxModelInfo:
    if metadata.get("format") != ONNX_FORMAT:
        raise PetsegError(
            f"{path}: not an ONNX model from petseg export (no '{ONNX_FORMAT}' metadata); "
            "export the checkpoint with petseg export"
        )
    try:
        return OnnxModelInfo(
            model_type=metadata["model_type"],
            image_size=int(metadata["image_size"]),
            mean=tuple(float(value) for value in json.loads(metadata["mean"])),
            std=tuple(float(value) for value in json.loads(metadata["std"])),
            threshold=float(metadata["threshold"]),
            petseg_version=metadata.get("petseg_version", "unknown"),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise PetsegError(
            f"{path}: petseg metadata is incomplete or unreadable ({error})"
        ) from None


def providers_for(device_name: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers for --device: CUDA first when asked for or available, then CPU."""
    if device_name == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device_name == "cuda":
        raise PetsegError(
            f"--device cuda: this onnxruntime has no {CUDA_PROVIDER} (install onnxruntime-gpu), "
            "or use --device cpu"
        )
    return [CPU_PROVIDER]


def open_session(source: Path | bytes, providers: list[str], path: Path | None = None) -> Any:
    """An ONNX Runtime InferenceSession on a file or on serialized model bytes."""
    ort = require("onnxruntime", "the onnxruntime backend")
    where = path if path is not None else source
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider notices on every run
    try:
        return ort.InferenceSession(
            str(source) if isinstance(source, Path) else source, options, providers=providers
        )
    except Exception as error:  # ORT raises its own Fail/InvalidProtobuf/... types
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise PetsegError(
            f"{where}: not a readable ONNX model ({type(error).__name__}: {reason})"
        ) from None


def load_onnx_model(path: Path, device_name: str = "auto") -> tuple[Any, OnnxModelInfo]:
    """Open an ONNX file from `petseg export`: (InferenceSession, its metadata)."""
    path = Path(path)
    ort = require("onnxruntime", "the onnxruntime backend")
    if not path.is_file():
        raise PetsegError(f"{path}: ONNX model not found")
    session = open_session(path, providers_for(device_name, ort.get_available_providers()))
    info = info_from_metadata(dict(session.get_modelmeta().custom_metadata_map), path)
    inputs = [node.name for node in session.get_inputs()]
    if inputs != [INPUT_NAME]:
        raise PetsegError(f"{path}: expected one input named {INPUT_NAME!r}, found {inputs}")
    return session, info


def session_logits(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The session as a function from (N, 3, H, W) normalized images to (N, 1, H, W) logits."""

    def logits(images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(out)

    return logits
