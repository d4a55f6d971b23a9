"""Model registry: names as used by ``--model_type`` -> model classes."""

from __future__ import annotations

from typing import Any

from torch import nn

from petseg.errors import PetsegError
from petseg.models.resnet_unet import ResNet34UNet
from petseg.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "resnet34_unet": ResNet34UNet,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered model; ``kwargs`` go to its constructor."""
    try:
        model_class = MODELS[name]
    except KeyError:
        raise PetsegError(
            f"unknown model type {name!r}: choose one of {', '.join(MODELS)}"
        ) from None
    return model_class(**kwargs)


__all__ = ["MODELS", "ResNet34UNet", "UNet", "build_model"]
