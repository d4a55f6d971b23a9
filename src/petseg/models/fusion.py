"""Inference-time folding of BatchNorm into the convolution before it.

In eval mode BatchNorm is an affine map per channel, so conv -> BN equals one conv with scaled
weights and a bias: the same logits (to float rounding) with one pass over each feature map
fewer. Training keeps the BatchNorm layers; only inference copies are folded.
"""

from __future__ import annotations

import copy
import itertools

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every conv -> BatchNorm pair folded into the conv.

    Pairs are found in two places: adjacent (Conv2d, BatchNorm2d) children of an nn.Sequential,
    and the attribute names a module lists in its `conv_bn_pairs` (e.g. a residual block's
    ("conv1", "bn1")). A folded BatchNorm becomes nn.Identity; `model` itself is not changed.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        pairs: list[tuple[str, str]] = list(getattr(module, "conv_bn_pairs", ()))
        if isinstance(module, nn.Sequential):
            pairs += list(itertools.pairwise(module._modules))
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return folded
