"""Mask post-processing: keep the largest connected pet region of each predicted mask.

A pet is one connected region in nearly every Oxford-IIIT Pet image, so specks the model marks
away from it are false positives. Opt-in (`--largest_component`): on a photo of two pets it
keeps only the larger one.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# 8-connectivity: pixels touching at a corner belong to the same region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected region of a boolean (H, W) mask, as a boolean mask.

    An empty mask stays empty; among regions of equal size the first in raster order is kept.
    """
    if mask.dim() != 2:
        raise ValueError(f"largest_component takes an (H, W) mask, got shape {tuple(mask.shape)}")
    labels, count = ndimage.label(mask.cpu().numpy(), structure=_EIGHT_CONNECTED)
    if count <= 1:
        return mask.clone()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0  # the background label
    kept = torch.from_numpy(labels == int(sizes.argmax()))
    return kept.to(mask.device)


def largest_components(masks: torch.Tensor) -> torch.Tensor:
    """largest_component of each mask in a boolean (N, 1, H, W) batch."""
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"largest_components takes (N, 1, H, W) masks, got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return masks.clone()
    return torch.stack([largest_component(mask[0])[None] for mask in masks])
