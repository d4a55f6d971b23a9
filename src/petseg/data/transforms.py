"""Paired (image, mask) pipelines: albumentations applies one geometry to both, so they never drift."""

from __future__ import annotations

import os
from collections.abc import Sequence

# albumentations asks PyPI for a newer version at every import (up to 2 s, and a warning
# offline); a command-line tool must not phone home on each run. Users can still set it to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch

from petseg.choices import AUGMENTS

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Training augmentation levels (petseg.choices.AUGMENTS, see train_transform), each with the
# factor of the size that the training pipeline first resizes to before its random crop. lab
# zooms 1.12x, as the lab report's resize-then-crop; flip is lab's flip on the whole image;
# strong zooms by its random scale instead and keeps the whole image (docs/experiments.md).
TRAIN_ZOOM: dict[str, float] = {"lab": 1.12, "flip": 1.0, "strong": 1.0}


class PairTransform:
    """Callable (uint8 image (H, W, 3), uint8 mask (H, W)) -> (float (3, S, S), float (1, S, S))."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline

    def set_seed(self, seed: int) -> None:
        """Seed the augmentation RNG (albumentations keeps its own, apart from numpy and torch)."""
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(image=image, mask=mask)
        image_t = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(out["mask"]))[None].float()
        return image_t, mask_t

    def image_only(self, image: np.ndarray) -> torch.Tensor:
        """The image half of the pipeline, for inference on photos without masks."""
        out = self.pipeline(image=image)
        return torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))


def pipeline_versions() -> dict[str, str]:
    """Versions of the libraries that resize (the decoded-image cache is only valid for them)."""
    return {"albumentations": A.__version__, "opencv": cv2.__version__}


def _normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)


def first_resize(edge: int) -> A.Resize:
    """Both pipelines' first step, to edge x edge: image bilinear, mask nearest (albumentations'
    default). It draws no random numbers, so the decoded-image cache can store its output and the
    pipeline built with resized_input=True gives the same tensors from it."""
    return A.Resize(edge, edge, interpolation=cv2.INTER_LINEAR)


def train_resize_edge(size: int, augment: str) -> int:
    """The edge of the `augment` level's first resize, before the random crop to size."""
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
    return round(size * TRAIN_ZOOM[augment])


def train_transform(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
    augment: str = "strong",
    *,
    resized_input: bool = False,
) -> PairTransform:
    """Resize to train_resize_edge, then the `augment` level's random ops, crop to size, normalize.

    lab: the lab report's resize to 1.12x, random crop and horizontal flip;
    flip: a resize to size and the horizontal flip, nothing else;
    strong: a resize to size, a random scale (0.75-1.25x), rotation (up to 15 degrees) and shift,
    the flip, and colour jitter; pixels moved in from outside are black background.
    resized_input: the inputs are already first_resize(train_resize_edge(size, augment))'s
    output (the decoded-image cache); the pipeline starts after it.
    """
    edge = train_resize_edge(size, augment)
    geometry: list[A.BasicTransform] = []
    colour: list[A.BasicTransform] = []
    if augment == "strong":
        geometry = [
            A.Affine(
                scale=(0.75, 1.25),
                rotate=(-15, 15),
                translate_percent=(-0.06, 0.06),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.7,
            )
        ]
        colour = [A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=0.6)]
    pipeline = A.Compose(
        [
            *([] if resized_input else [first_resize(edge)]),
            *geometry,
            A.RandomCrop(size, size),  # the whole image where edge == size
            A.HorizontalFlip(p=0.5),
            *colour,
            _normalize(mean, std),
        ],
        seed=seed,
    )
    return PairTransform(pipeline)


def eval_transform(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    resized_input: bool = False,
) -> PairTransform:
    """Resize image (bilinear) and mask (nearest) to size x size, normalize the image.

    resized_input: the inputs are already first_resize(size)'s output; only normalize.
    """
    pipeline = A.Compose([*([] if resized_input else [first_resize(size)]), _normalize(mean, std)])
    return PairTransform(pipeline)
