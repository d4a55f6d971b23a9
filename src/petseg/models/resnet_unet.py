"""UNet whose encoder is a ResNet34 written from scratch."""

from __future__ import annotations

from collections.abc import Sequence

from petseg.models.decoder import EncoderDecoder, UNetDecoder
from petseg.models.resnet import ResNetEncoder


class ResNet34UNet(EncoderDecoder):
    """ResNet34 encoder, a UNetDecoder with one block per skip plus one back to the input
    resolution (nearest upsampling), a 1x1 head.

    decoder_widths: the five decoder blocks' widths, deepest first (smp's and the lab's).

    stem: the encoder's stem, "deep" (three 3x3 convs) or "classic" (one 7x7 conv); see
    petseg.models.resnet.make_stem.

    activation: "silu" (the default, chosen on the sample: docs/experiments.md) or "relu" (as
    in torchvision and smp), in the encoder and the decoder alike.

    drop_path: stochastic depth in the encoder's residual blocks, the last block's rate (0 at
    the first, linear in between; see petseg.models.resnet.ResNetEncoder); training only. The
    default 0.1 was chosen on the sample (docs/experiments.md); 0 turns it off.

    deep_supervision: see petseg.models.decoder.EncoderDecoder; the auxiliary logits are at
    1/16 .. 1/2 of the input size.
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
        encoder = ResNetEncoder(
            in_channels, layers=(3, 4, 6, 3), stem=stem, activation=activation, drop_path=drop_path
        )
        if len(decoder_widths) != len(encoder.out_channels):
            raise ValueError(
                f"decoder_widths needs {len(encoder.out_channels)} values, got {decoder_widths}"
            )
        decoder = UNetDecoder(
            encoder.out_channels, decoder_widths, upsample="nearest", activation=activation
        )
        super().__init__(encoder, decoder, num_classes, deep_supervision)
