"""The classic UNet (Ronneberger et al. 2015) as in the lab report, with BatchNorm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from petseg.models.blocks import DecoderBlock, DoubleConv, Upsample


class UNet(nn.Module):
    """Encoder of DoubleConv + max-pool levels, a bottleneck doubling the widest width, a decoder of
    upsampling + skip concatenation + DoubleConv, and a 1x1 head returning logits.

    upsample="nearest" (default): a nearest-neighbour resize keeping the channels, so each
    DoubleConv takes the full width plus the skip. upsample="transpose" (the classic UNet's):
    ConvTranspose2d halving the channels; odd sizes are handled by padding in the decoder.
    activation: "relu" (the classic UNet's, default) or "silu", in every DoubleConv.
    deep_supervision: a 1x1 head on each decoder block but the last; in training mode forward
    returns (logits, [auxiliary logits at 1/8 .. 1/2 of the input size with the default widths])
    for petseg.losses.deep_supervision_loss. In eval mode it returns the logits alone.
    Any input height and width works.
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
        super().__init__()
        widths = tuple(int(width) for width in widths)
        if not widths or any(width < 2 or width % 2 for width in widths):
            raise ValueError(f"UNet widths must be even and >= 2, got {widths}")
        self.widths = widths
        self.upsample = upsample
        self.activation = activation
        self.stem = DoubleConv(in_channels, widths[0], activation=activation)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(
            DoubleConv(widths[i], widths[i + 1], activation=activation)
            for i in range(len(widths) - 1)
        )
        self.bottleneck = DoubleConv(widths[-1], widths[-1] * 2, activation=activation)
        decoder_in = (widths[-1] * 2, *reversed(widths[1:]))
        self.up = nn.ModuleList(
            DecoderBlock(c_in, skip, skip, upsample=upsample, activation=activation)
            for c_in, skip in zip(decoder_in, reversed(widths), strict=True)
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        # made last, so the other layers start from the same weights as without
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(width, num_classes, 1) for width in reversed(widths[1:]))
            if deep_supervision
            else None
        )

    def forward(
        self, images: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        skips = [self.stem(images)]
        for down in self.down:
            skips.append(down(self.pool(skips[-1])))
        x = self.bottleneck(self.pool(skips[-1]))
        aux: list[torch.Tensor] = []
        heads = self.aux_heads if self.training and self.aux_heads is not None else []
        for index, (up, skip) in enumerate(zip(self.up, reversed(skips), strict=True)):
            x = up(x, skip)
            if index < len(heads):
                aux.append(heads[index](x))
        logits = self.head(x)  # (N, num_classes, H, W)
        return (logits, aux) if heads else logits
