"""Building blocks shared by the encoders and the decoder: the activation and DoubleConv."""

from __future__ import annotations

from torch import nn

from petseg.choices import ACTIVATIONS
from petseg.models.convs import Conv3x3


def make_activation(name: str = "relu") -> nn.Module:
    """relu (He et al.'s ResNet, the classic UNet) or silu (x * sigmoid(x), Hendrycks & Gimpel
    2016; Ramachandran et al. 2017), in place."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}: {' or '.join(map(repr, ACTIVATIONS))}")


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BatchNorm -> activation) twice; the conv bias is redundant before BatchNorm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        activation: str = "relu",
    ) -> None:
        mid_channels = mid_channels or out_channels
        super().__init__(
            Conv3x3(in_channels, mid_channels),
            nn.BatchNorm2d(mid_channels),
            make_activation(activation),
            Conv3x3(mid_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            make_activation(activation),
        )
