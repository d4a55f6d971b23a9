"""UNet whose encoder is a ResNet34 written from scratch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from petseg.models.blocks import DecoderBlock
from petseg.models.resnet import ResNetEncoder


class ResNet34UNet(nn.Module):
    """ResNet34 encoder, a decoder block per encoder feature (deepest first, each using the next
    shallower feature as its skip), one last block back to the input resolution, a 1x1 head.

    stem: the encoder's stem, "deep" (three 3x3 convs) or "classic" (one 7x7 conv); see
    petseg.models.resnet.make_stem.

    activation: "silu" (the default, chosen on the sample: docs/experiments.md) or "relu" (as
    in torchvision and smp), in the encoder and the decoder alike.

    drop_path: stochastic depth in the encoder's residual blocks, the last block's rate (0 at
    the first, linear in between; see petseg.models.resnet.ResNetEncoder); training only. The
    default 0.1 was chosen on the sample (docs/experiments.md); 0 turns it off.

    deep_supervision: a 1x1 head on each decoder block but the last; in training mode forward
    returns (logits, [auxiliary logits at 1/16 .. 1/2 of the input size]) for
    petseg.losses.deep_supervision_loss. In eval mode it returns the logits alone, as without.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        decoder_widths: Sequence[int] = (256, 128, 64, 32, 16),
        deep_supervision: bool = False,
        stem: str = "deep",
        activation: str = "silu",
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(
            in_channels, layers=(3, 4, 6, 3), stem=stem, activation=activation, drop_path=drop_path
        )
        skips = self.encoder.out_channels[:-1][::-1]  # 1/16 .. 1/2
        if len(decoder_widths) != len(skips) + 1:
            raise ValueError(f"decoder_widths needs {len(skips) + 1} values, got {decoder_widths}")
        decoder_in = (self.encoder.out_channels[-1], *decoder_widths[:-1])
        self.decoder = nn.ModuleList(
            DecoderBlock(c_in, skip, c_out, upsample="nearest", activation=activation)
            for c_in, skip, c_out in zip(decoder_in, (*skips, 0), decoder_widths, strict=True)
        )
        self.head = nn.Conv2d(decoder_widths[-1], num_classes, kernel_size=1)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(width, num_classes, 1) for width in decoder_widths[:-1])
            if deep_supervision
            else None
        )

    def forward(
        self, images: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.encoder(images)
        x = features[-1]
        skips: list[torch.Tensor | None] = [*features[:-1][::-1], None]
        aux: list[torch.Tensor] = []
        heads = self.aux_heads if self.training and self.aux_heads is not None else []
        for index, (block, skip) in enumerate(zip(self.decoder, skips, strict=True)):
            x = block(x, skip, size=images.shape[-2:])
            if index < len(heads):
                aux.append(heads[index](x))
        logits = self.head(x)  # (N, num_classes, H, W)
        return (logits, aux) if heads else logits
