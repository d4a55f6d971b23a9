"""Conv3x3: nn.Conv2d's results, with the weight gradient from gathered patches on small maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from petseg.models import build_model, convs
from petseg.models.convs import Conv3x3


def paired(in_channels: int, out_channels: int, stride: int = 1) -> tuple[Conv3x3, nn.Conv2d]:
    torch.manual_seed(0)
    conv = Conv3x3(in_channels, out_channels, stride)
    reference = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
    reference.load_state_dict(conv.state_dict())
    return conv, reference


def run(
    module: nn.Module, x: torch.Tensor, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, input gradient and weight gradient of a squared-sum loss."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = module(x)
    (out.float() ** 2).sum().backward()
    return out.detach(), x.grad, module.weight.grad


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_small_maps_give_nn_conv2d_results_with_the_gathered_weight_gradient(
    bf16: bool, channels_last: bool
) -> None:
    conv, reference = paired(64, 32)
    x = torch.randn(2, 64, 4, 4)  # 32 output pixels for 64 input channels: the product
    if channels_last:
        conv, reference = (m.to(memory_format=torch.channels_last) for m in (conv, reference))
        x = x.contiguous(memory_format=torch.channels_last)
    assert conv.gathers_weight_gradient(x)
    out, grad_x, grad_weight = run(conv, x, bf16)
    ref_out, ref_grad_x, ref_grad_weight = run(reference, x, bf16)
    assert out.dtype == ref_out.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad_x, ref_grad_x)
    assert grad_weight.dtype == torch.float32
    tolerance = 1e-2 if bf16 else 1e-5
    torch.testing.assert_close(grad_weight, ref_grad_weight, rtol=tolerance, atol=tolerance)
    assert grad_weight.stride() == conv.weight.stride()  # no relayout when accumulated


def test_the_gathered_weight_gradient_passes_gradcheck() -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: convs._PatchGradConv.apply(a, b, 1), (x, weight))


def test_the_patches_are_the_windows_around_each_output_pixel() -> None:
    x = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).view(2, 2, 3, 3)
    rows = convs.patches(x, 3, 1).view(2, 3, 3, 3, 3, 2)  # (n, y, x, kh, kw, c)
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    for n, y, x_, i, j, c in [(0, 0, 0, 0, 0, 0), (1, 2, 1, 1, 2, 1), (0, 1, 1, 2, 2, 0)]:
        assert rows[n, y, x_, i, j, c] == padded[n, c, y + i, x_ + j]


@pytest.mark.parametrize(
    "case",
    ["large map", "stride 2", "eval", "no grad", "frozen weight"],
)
def test_everywhere_else_it_is_nn_conv2d(case: str) -> None:
    conv, reference = paired(8, 8, stride=2 if case == "stride 2" else 1)
    x = torch.randn(2, 8, 16, 16) if case == "large map" else torch.randn(1, 8, 2, 2)
    if case == "eval":
        conv.eval()
    if case == "frozen weight":
        conv.weight.requires_grad_(False)
    if case == "no grad":
        with torch.no_grad():
            assert not conv.gathers_weight_gradient(x)
            assert torch.equal(conv(x), reference(x))
        return
    assert not conv.gathers_weight_gradient(x)
    assert torch.equal(conv(x), reference(x))


def test_the_resnet34_unet_trains_to_the_same_gradients_with_the_product_and_without(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = build_model("resnet34_unet", drop_path=0.0)
    model = model.to(memory_format=torch.channels_last)
    images, masks = torch.randn(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    used = [m for m in model.modules() if isinstance(m, Conv3x3) and m.stride == (1, 1)]

    def gradients() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        nn.functional.binary_cross_entropy_with_logits(model(images), masks).backward()
        return [p.grad.clone() for p in model.parameters()]

    taken: list[bool] = []

    def record(module: Conv3x3, inputs: tuple[torch.Tensor]) -> None:
        taken.append(module.gathers_weight_gradient(inputs[0]))

    hooks = [m.register_forward_pre_hook(record) for m in used]
    with_product = gradients()
    for hook in hooks:
        hook.remove()
    monkeypatch.setattr(convs, "ROWS_PER_CHANNEL", 0.0)
    without = gradients()
    assert any(taken) and not all(taken)  # the bottom of the network only
    for a, b in zip(with_product, without, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
