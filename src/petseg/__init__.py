"""petseg: pet vs background segmentation on Oxford-IIIT Pet, models written from scratch.

``petseg.Segmenter`` is the Python API for a trained model (docs/use-a-model.md); it is
imported on first use, so ``import petseg`` (and the command line's --help) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Prediction", "Segmenter", "__version__"]

if TYPE_CHECKING:
    from petseg.segmenter import Prediction, Segmenter

_LAZY = {"Segmenter", "Prediction"}  # names of petseg.segmenter, which imports torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from petseg import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'petseg' has no attribute {name!r}")
