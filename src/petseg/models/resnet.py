"""ResNet34 encoder from scratch (He et al. 2016), returning its feature maps for a UNet decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from petseg.choices import STEMS
from petseg.models.blocks import make_activation
from petseg.models.convs import Conv3x3


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 projection when the shape changes.

    drop_path: in training, the residual branch of each sample is dropped with this probability
    and the kept ones scaled by 1 / (1 - drop_path), so the block passes only its shortcut
    for that sample (stochastic depth, Huang et al. 2016); no effect in eval mode.
    """

    # conv -> BatchNorm pairs that petseg.models.fusion.fold_batchnorm folds for inference
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: str = "relu",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.drop_path = drop_path
        self.conv1 = Conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = Conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            out = out * out.new_empty((out.shape[0], 1, 1, 1)).bernoulli_(keep) / keep
        return self.act(out + self.downsample(x))


def make_stem(
    in_channels: int, width: int, stem: str = "deep", activation: str = "relu"
) -> nn.Sequential:
    """The encoder's first layers, down to 1/2 of the input size, as conv -> BN -> activation
    triples.

    classic: one 7x7 stride-2 conv (He et al. 2016). deep: three 3x3 convs of widths width/2,
    width/2, width, the first with stride 2 (ResNet-C in He et al. 2019, "Bag of Tricks"), which
    scored higher on the sample (docs/experiments.md).
    """
    if stem == "classic":
        shapes = [(in_channels, width, 7, 2)]
    elif stem == "deep":
        half = width // 2
        shapes = [(in_channels, half, 3, 2), (half, half, 3, 1), (half, width, 3, 1)]
    else:
        raise ValueError(f"unknown stem {stem!r}: {' or '.join(map(repr, STEMS))}")
    layers: list[nn.Module] = []
    for c_in, c_out, kernel, stride in shapes:
        layers += [
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
            make_activation(activation),
        ]
    return nn.Sequential(*layers)


def drop_path_rates(last: float, blocks: int) -> list[float]:
    """Stochastic-depth rates of `blocks` residual blocks: 0 for the first, `last` for the last,
    linear in between."""
    if blocks == 1:
        return [last]
    return [last * index / (blocks - 1) for index in range(blocks)]


class ResNetEncoder(nn.Module):
    """A stem at stride 2 (make_stem), 3x3 max-pool, then BasicBlock stages.

    forward returns features from high to low resolution: the stem at 1/2, then each stage
    (1/4, 1/8, 1/16, 1/32 for four stages); ``out_channels`` lists their channel counts.

    drop_path: the stochastic-depth rate of the last block; the rates rise linearly from 0 at
    the first block to it over the blocks in order (the linear decay rule of Huang et al. 2016).
    """

    def __init__(
        self,
        in_channels: int = 3,
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "deep",
        activation: str = "silu",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} differ in length")
        self.stem = make_stem(in_channels, widths[0], stem, activation)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        rates = iter(drop_path_rates(drop_path, sum(layers)))
        stages = []
        in_width = widths[0]
        for index, (blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if index == 0 else 2
            stage_rates = [next(rates) for _ in range(blocks)]
            stages.append(self._make_stage(in_width, width, stride, activation, stage_rates))
            in_width = width
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = (widths[0], *widths)
        self._init_weights()

    @staticmethod
    def _make_stage(
        in_channels: int, out_channels: int, stride: int, activation: str, rates: list[float]
    ) -> nn.Sequential:
        """One BasicBlock per drop-path rate; the first changes the width and the stride."""
        first = BasicBlock(in_channels, out_channels, stride, activation, rates[0])
        rest = (BasicBlock(out_channels, out_channels, 1, activation, rate) for rate in rates[1:])
        return nn.Sequential(first, *rest)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # BatchNorm keeps PyTorch's init (weight 1, bias 0) everywhere, the last BN of each
        # residual branch included: zeroing it (Goyal et al. 2017) scored lower on the sample
        # (docs/experiments.md).

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(images)]
        x = self.pool(features[0])
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
