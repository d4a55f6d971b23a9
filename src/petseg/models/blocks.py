"""Building blocks shared by the models: the activation, DoubleConv and the decoder block."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from petseg.choices import ACTIVATIONS, UPSAMPLES

Upsample = Literal["transpose", "nearest"]


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
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            make_activation(activation),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            make_activation(activation),
        )


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, then DoubleConv.

    upsample="transpose": ConvTranspose2d(k=2, s=2) halving the channels (the classic UNet);
    a feature map of odd size upsamples one pixel short, so it is zero-padded to the skip.
    upsample="nearest": nearest-neighbour resize straight to the target size, channels kept.
    With ``skip_channels=0`` the block upsamples to the ``size`` given to forward.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        upsample: Upsample = "nearest",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.upsample = upsample
        if upsample == "transpose":
            up_channels = in_channels // 2
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, up_channels, 2, stride=2)
        elif upsample == "nearest":
            up_channels = in_channels
            self.up = nn.Identity()
        else:
            raise ValueError(f"unknown upsample {upsample!r}: {' or '.join(map(repr, UPSAMPLES))}")
        self.conv = DoubleConv(up_channels + skip_channels, out_channels, activation=activation)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        target = tuple(skip.shape[-2:]) if skip is not None else size
        if target is None:
            raise ValueError("DecoderBlock needs a skip tensor or an output size")
        if self.upsample == "transpose":
            x = self.up(x)
            pad_h, pad_w = target[0] - x.shape[-2], target[1] - x.shape[-1]
            if pad_h or pad_w:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        else:
            x = F.interpolate(x, size=target, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)
