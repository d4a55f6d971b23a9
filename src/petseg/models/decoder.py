"""The UNet decoder both models share, and the encoder-decoder model they are.

Encoder contract (as in segmentation_models.pytorch): an encoder's forward returns a list of
feature maps from high to low resolution and its ``out_channels`` lists their channel counts;
the decoder derives its blocks from that list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from petseg.choices import UPSAMPLES
from petseg.models.blocks import DoubleConv

Upsample = Literal["nearest", "transpose"]


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
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
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


class UNetDecoder(nn.ModuleList):
    """One DecoderBlock per skip, deepest first: the deepest encoder feature is upsampled to
    the next shallower one's size, concatenated with it, and so on up the encoder. The decoder
    is the list of its blocks (``decoder[i]`` is block i), so their parameters are decoder.i.*.

    encoder_channels: the encoder's ``out_channels``, high to low resolution; every feature
    but the deepest is a skip.
    widths: each block's output channels, deepest first. None makes each block as wide as its
    skip (the classic UNet). One width more than skips adds a last block without a skip that
    upsamples to the input size, for an encoder whose first feature is below it (a ResNet's
    stem is at 1/2).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        widths: Sequence[int] | None = None,
        upsample: Upsample = "nearest",
        activation: str = "relu",
    ) -> None:
        skips = tuple(encoder_channels[-2::-1])
        widths = skips if widths is None else tuple(widths)
        if len(widths) not in (len(skips), len(skips) + 1):
            raise ValueError(
                f"decoder widths {widths} need {len(skips)} or {len(skips) + 1} values "
                f"for encoder channels {tuple(encoder_channels)}"
            )
        in_channels = (encoder_channels[-1], *widths[:-1])
        skip_channels = (*skips, 0)[: len(widths)]
        super().__init__(
            DecoderBlock(c_in, skip, c_out, upsample=upsample, activation=activation)
            for c_in, skip, c_out in zip(in_channels, skip_channels, widths, strict=True)
        )
        self.out_channels: tuple[int, ...] = widths

    def forward(
        self,
        features: Sequence[torch.Tensor],
        size: Sequence[int],
        aux_heads: Sequence[nn.Module] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last block's output, and ``aux_heads[i]`` applied to block i's output.

        size: the input's (H, W), which a last block without a skip upsamples to. The heads
        are applied on the way, so each block's output is freed once the next has used it.
        """
        x = features[-1]
        skips = [*features[-2::-1], None][: len(self)]
        aux: list[torch.Tensor] = []
        for index, (block, skip) in enumerate(zip(self, skips, strict=True)):
            x = block(x, skip, size)
            if index < len(aux_heads):
                aux.append(aux_heads[index](x))
        return x, aux


class EncoderDecoder(nn.Module):
    """An encoder, a UNetDecoder built from its out_channels, and a 1x1 head returning logits
    at the input resolution.

    deep_supervision: a 1x1 head on each decoder block but the last; in training mode forward
    returns (logits, [auxiliary logits, deepest first]) for petseg.losses.deep_supervision_loss.
    In eval mode it returns the logits alone, as without.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: UNetDecoder,
        num_classes: int = 1,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = nn.Conv2d(decoder.out_channels[-1], num_classes, kernel_size=1)
        # made last, so every other layer starts from the weights it has without them
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(width, num_classes, 1) for width in decoder.out_channels[:-1])
            if deep_supervision
            else None
        )

    def forward(
        self, images: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.encoder(images)  # high to low resolution
        heads = self.aux_heads if self.training and self.aux_heads is not None else []
        x, aux = self.decoder(features, images.shape[-2:], heads)
        logits = self.head(x)  # (N, num_classes, H, W)
        return (logits, aux) if heads else logits
