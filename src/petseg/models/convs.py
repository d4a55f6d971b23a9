"""Conv3x3: a 3x3 conv whose weight gradient, on a CPU on small maps, is one matrix product.

On a CPU oneDNN computes a convolution's weight gradient well on large maps and badly on the
small ones at the bottom of a network: a 512-channel 3x3 conv on the 4x4 maps of a batch of 8
128-px images takes it 4-14 ms, though the work is one (512 x 128) @ (128 x 4608) product that
takes under 1 ms (`bench/conv_weight_grad.py`). Such convs hold most of a ResNet34's weights,
so in a short step their weight gradients cost more than their arithmetic. Where a batch's
output pixels are at most as many as the input channels, Conv3x3 computes that gradient as the
product of the output gradient with the input's patches, gathered channels last so that the
product comes out in the weights' own channels_last layout. The forward pass and the input gradient
stay oneDNN's; elsewhere (a GPU, larger maps, eval, no gradient) it is nn.Conv2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The product wins on a CPU while a batch's output pixels are at most this many per input
# channel (measured in bf16 and fp32: bench/conv_weight_grad.py).
ROWS_PER_CHANNEL = 1.0


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False), its weight
    gradient as the module docstring says."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gathers_weight_gradient(x):
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        with torch.autocast("cpu", enabled=False):  # as autocast would: both operands in dtype
            return _PatchGradConv.apply(x.to(dtype), self.weight.to(dtype), self.padding[0])

    def gathers_weight_gradient(self, x: torch.Tensor) -> bool:
        """Whether this call computes the weight gradient as one product of gathered patches."""
        return (
            self.training
            and x.device.type == "cpu"
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and self.stride == (1, 1)
            and x.dim() == 4
            and x.shape[0] * x.shape[2] * x.shape[3] <= ROWS_PER_CHANNEL * self.in_channels
        )


class _PatchGradConv(torch.autograd.Function):
    """A stride-1 'same' convolution; backward: the input gradient from oneDNN, the weight
    gradient as output gradient (rows, out) transposed @ patches (rows, k * k * in)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)  # type: ignore[attr-defined]
        ctx.padding = padding  # type: ignore[attr-defined]
        return F.conv2d(x, weight, None, 1, padding)

    @staticmethod
    def backward(
        ctx: object, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        padding: int = ctx.padding  # type: ignore[attr-defined]
        needs_x, needs_weight, _ = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_x = grad_weight = None
        if needs_x:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=padding)
        if needs_weight:
            out_channels, in_channels, k, _ = weight.shape
            rows = grad.permute(0, 2, 3, 1).reshape(-1, out_channels)  # (n*h*w, out)
            product = rows.t() @ patches(x, k, padding)  # (out, k*k*in), (kh, kw, in) order
            grad_weight = product.view(out_channels, k, k, in_channels).permute(0, 3, 1, 2)
        return grad_x, grad_weight, None


def patches(x: torch.Tensor, k: int, padding: int) -> torch.Tensor:
    """(n*h*w, k*k*c): row (n, y, x) holds the k x k input window around output pixel (y, x),
    ordered (kh, kw, c) so that a product with it is laid out channels last."""
    n, c, h, w = x.shape
    shifted = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)  # (n, h + 2p, w + 2p, c)
    windows = [shifted[:, i : i + h, j : j + w] for i in range(k) for j in range(k)]
    return torch.stack(windows, dim=3).reshape(n * h * w, k * k * c)
