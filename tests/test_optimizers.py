"""petseg's fused Adam and AdamW: torch's update bit for bit on channels_last tensors, without
the kernel's copies, and gradient clipping applied inside the step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from petseg.config import resolve_train_config
from petseg.optimizers import Adam, AdamW, build_optimizer, clip_gradients, dense_views

KINDS = {"adam": (Adam, torch.optim.Adam), "adamw": (AdamW, torch.optim.AdamW)}


def conv_net(channels_last: bool = True) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
        nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.SiLU(),
        nn.Conv2d(4, 1, 1),
    )  # fmt: skip
    return net.to(memory_format=torch.channels_last) if channels_last else net


def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 12, 12, generator=generator)
    return x.contiguous(memory_format=torch.channels_last)


def train(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int, clip=None) -> None:
    """`steps` steps on a loss large enough that a small cap clips every gradient."""
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        (net(images()) ** 2).mean().mul(100).backward()
        if clip is not None:
            clip(net, optimizer)
        optimizer.step()


def assert_same_bits(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("amsgrad", [False, True])
def test_the_fused_step_on_channels_last_tensors_is_torchs_bit_for_bit(
    kind: str, amsgrad: bool
) -> None:
    ours, theirs = KINDS[kind]
    net, reference = conv_net(), conv_net()
    optimizer = ours(net.parameters(), lr=1e-2, weight_decay=1e-2, amsgrad=amsgrad, fused=True)
    expected = theirs(
        reference.parameters(), lr=1e-2, weight_decay=1e-2, amsgrad=amsgrad, fused=True
    )
    train(net, optimizer, 4)
    train(reference, expected, 4)
    assert_same_bits(net, reference)
    weight = net[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    for name, value in optimizer.state[weight].items():
        if value.dim() == 4:  # the moments keep the parameter's layout
            assert value.stride() == weight.stride(), name
    # the state dict is torch's, so a checkpoint resumes with either class
    assert optimizer.state_dict()["param_groups"] == expected.state_dict()["param_groups"]
    assert optimizer.state_dict()["state"].keys() == expected.state_dict()["state"].keys()


def copied_shapes(step) -> list[list[int]]:
    """The shapes of the tensors that copy ops read while `step()` runs (torch.profiler: the
    kernel's own copies happen in C++, out of a dispatch mode's sight)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as profile:  # fmt: skip
        step()
    return [
        shape
        for event in profile.events()
        if event.name in ("aten::copy_", "aten::clone", "aten::contiguous")
        for shape in event.input_shapes[:1]
    ]


@pytest.mark.parametrize(("ours", "copies_weights"), [(True, False), (False, True)])
def test_the_fused_kernel_gets_channels_last_weights_without_copies(
    ours: bool, copies_weights: bool
) -> None:
    net = conv_net()
    kind = AdamW if ours else torch.optim.AdamW
    optimizer = kind(net.parameters(), lr=1e-3, fused=True)
    train(net, optimizer, 1)  # creates the state
    (net(images()) ** 2).mean().backward()
    shapes = copied_shapes(optimizer.step)
    assert any(len(shape) == 4 for shape in shapes) == copies_weights


def test_dense_views_permute_alike_or_not_at_all() -> None:
    weight = torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(weight)  # preserves the layout
    views = dense_views([weight, grad])
    assert all(view.is_contiguous() for view in views)
    assert [view.data_ptr() for view in views] == [weight.data_ptr(), grad.data_ptr()]
    assert torch.equal(views[1], grad.permute(0, 2, 3, 1))
    plain = torch.randn(4, 3, 3, 3)
    assert dense_views([plain, plain.clone()])[0] is plain
    mixed = [weight, grad.contiguous()]  # pairing these flat would mismatch elements
    assert all(a is b for a, b in zip(dense_views(mixed), mixed, strict=True))


def clip_ours(max_norm: float):
    def clip(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        clip_gradients(optimizer, net.parameters(), max_norm)

    return clip


def clip_torchs(max_norm: float):
    def clip(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)

    return clip


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_clipping_inside_the_step_matches_clip_grad_norm_(kind: str) -> None:
    ours, theirs = KINDS[kind]
    net, reference = conv_net(), conv_net()
    optimizer = ours(net.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    expected = theirs(reference.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    train(net, optimizer, 3, clip_ours(0.05))
    train(reference, expected, 3, clip_torchs(0.05))
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    # an unclipped step the same way is a different model: the clipping took effect
    unclipped = conv_net()
    train(unclipped, theirs(unclipped.parameters(), lr=1e-3, weight_decay=1e-2, fused=True), 3)
    assert not torch.allclose(net[0].weight, unclipped[0].weight, atol=1e-5)


def test_a_norm_under_the_cap_steps_as_if_unclipped_and_the_factor_lasts_one_step() -> None:
    net, reference = conv_net(), conv_net()
    optimizer = AdamW(net.parameters(), lr=1e-3, fused=True)
    expected = torch.optim.AdamW(reference.parameters(), lr=1e-3, fused=True)
    train(net, optimizer, 2, clip_ours(1e9))  # a divisor of exactly 1
    train(reference, expected, 2)
    assert_same_bits(net, reference)
    train(net, optimizer, 1, clip_ours(1e-3))  # clipped hard, once
    train(net, optimizer, 1)  # then a plain step: no factor left over
    assert optimizer._clip_divisor is None and not hasattr(optimizer, "grad_scale")


def test_clip_gradients_returns_the_norm_and_leaves_a_non_finite_one_to_the_caller() -> None:
    net = conv_net()
    optimizer = AdamW(net.parameters(), lr=1e-3, fused=True)
    (net(images()) ** 2).mean().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    torch.testing.assert_close(clip_gradients(optimizer, net.parameters(), 1e-3), expected)
    optimizer._clip_divisor = None
    net[0].weight.grad[0, 0, 0, 0] = float("nan")
    assert not torch.isfinite(clip_gradients(optimizer, net.parameters(), 1e-3))
    assert optimizer._clip_divisor is None


def test_clip_gradients_scales_in_place_for_an_optimizer_without_the_fused_step() -> None:
    net = conv_net(channels_last=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    (net(images()) ** 2).mean().mul(100).backward()
    norm = clip_gradients(optimizer, net.parameters(), 0.5)
    assert float(norm) > 0.5
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert float(clipped) == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_optimizer_runs_the_fused_kernel_on_a_cpu(optimizer: str) -> None:
    recipe = resolve_train_config({"optimizer": optimizer}).recipe
    built = build_optimizer(nn.Conv2d(3, 1, 1), recipe)
    assert built.defaults["fused"] is True
    assert isinstance(built, KINDS[optimizer][0])
    assert type(built).__name__.lower() == optimizer
    assert isinstance(copy.deepcopy(built), KINDS[optimizer][1])
