"""The classic UNet (Ronneberger et al. 2015) as in the lab report, with BatchNorm."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from petseg.models.blocks import DoubleConv
from petseg.models.decoder import EncoderDecoder, UNetDecoder, Upsample


class UNetEncoder(nn.Module):
    """A DoubleConv per level with a 2x2 max-pool between levels, then a bottleneck DoubleConv
    doubling the widest width.

    forward returns features from high to low resolution: one per width (the first at the input
    resolution) and the bottleneck's; ``out_channels`` lists their channel counts.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.stem = DoubleConv(in_channels, widths[0], activation=activation)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(
            DoubleConv(c_in, c_out, activation=activation)
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.bottleneck = DoubleConv(widths[-1], widths[-1] * 2, activation=activation)
        self.out_channels: tuple[int, ...] = (*widths, widths[-1] * 2)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(images)]
        for down in self.down:
            features.append(down(self.pool(features[-1])))
        features.append(self.bottleneck(self.pool(features[-1])))
        return features


class UNet(EncoderDecoder):
    """UNetEncoder, a UNetDecoder whose blocks are as wide as their skips, a 1x1 head.

    upsample="nearest" (default): a nearest-neighbour resize keeping the channels, so each
    DoubleConv takes the full width plus the skip. upsample="transpose" (the classic UNet's):
    ConvTranspose2d halving the channels; odd sizes are handled by padding in the decoder.
    activation: "relu" (the classic UNet's, default) or "silu", in every DoubleConv.
    deep_supervision: see petseg.models.decoder.EncoderDecoder; the auxiliary logits are at
    1/8 .. 1/2 of the input size with four widths. Any input height and width works.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        widths: Sequence[int] = (64, 128, 256, 512),
        upsample: Upsample = "nearest",
        activation: str = "relu",
        deep_supervision: bool = False,
    ) -> None:
        widths = tuple(int(width) for width in widths)
        # even, so that a transpose upsampling's halved channels match the skip's
        if not widths or any(width < 2 or width % 2 for width in widths):
            raise ValueError(f"UNet widths must be even and >= 2, got {widths}")
        encoder = UNetEncoder(in_channels, widths, activation)
        decoder = UNetDecoder(encoder.out_channels, upsample=upsample, activation=activation)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        self.widths = widths
        self.upsample = upsample
        self.activation = activation
