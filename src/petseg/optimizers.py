"""The optimizers petseg trains with: torch's Adam and AdamW on their fused kernels, fed
channels_last tensors without copies, and gradient clipping folded into the step.

torch's fused kernel walks a parameter, its gradient and its two moment buffers as flat arrays.
Given channels_last tensors (the layout petseg trains convolutions in) it copies each into
the contiguous layout and back: on a 2-core CPU a ResNet34-UNet's channels_last AdamW step took
30-35 ms where the views below take 18-20 ms (`bench/optimizer_step.py`). The four tensors share one layout, so the optimizers here
hand the kernel views of them permuted into contiguous order: the same elements in the same
pairs, updated in place, bit for bit what torch computes.

Clipping the gradients' global norm reads every gradient to take the norm and then reads and
writes every gradient again to scale it. The fused kernel already divides each gradient by a
scale on its way in (torch's GradScaler uses this to unscale fp16 gradients), so
`clip_gradients` hands it the clipping factor instead of scaling the gradients itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from petseg.choices import OPTIMIZERS
from petseg.config import RecipeConfig
from petseg.errors import PetsegError

FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")  # where torch has fused Adam and AdamW kernels
CLIP_EPSILON = 1e-6  # added to the norm before dividing, as torch.nn.utils.clip_grad_norm_ does


class _DenseViews:
    """Hands the fused kernel each parameter's tensors permuted into contiguous order, and
    divides the gradients by a pending clipping factor in the same pass."""

    _clip_divisor: torch.Tensor | None = None

    # torch's step gathers a group's tensors for the kernel in _init_group, a private method;
    # tests/test_optimizers.py pins the update to torch's and checks that no 4-d tensor is
    # copied, so a torch that changed it fails there instead of training slower or wrong.
    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps):  # type: ignore[no-untyped-def]
        has_complex = super()._init_group(  # type: ignore[misc]
            group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
        )
        if group["fused"]:
            tensors = [params, grads, exp_avgs, exp_avg_sqs]
            if group["amsgrad"]:
                tensors.append(max_exp_avg_sqs)
            for i in range(len(params)):
                views = dense_views([items[i] for items in tensors])
                for items, view in zip(tensors, views, strict=True):
                    items[i] = view
        return has_complex

    def divide_gradients(self, divisor: torch.Tensor) -> None:
        """Divide every gradient by `divisor` (a one-element float32 tensor on the
        parameters' device) inside the next step, instead of in a pass of its own."""
        self._clip_divisor = divisor

    def step(self, closure=None):  # type: ignore[no-untyped-def]
        divisor, self._clip_divisor = self._clip_divisor, None
        if divisor is None:
            return super().step(closure)  # type: ignore[misc]
        self.grad_scale = divisor  # read by torch's fused step, as GradScaler sets it
        try:
            return super().step(closure)  # type: ignore[misc]
        finally:
            del self.grad_scale


class Adam(_DenseViews, torch.optim.Adam):
    """torch.optim.Adam; with fused=True, channels_last tensors reach the kernel uncopied."""


class AdamW(_DenseViews, torch.optim.AdamW):
    """torch.optim.AdamW; with fused=True, channels_last tensors reach the kernel uncopied."""


def dense_views(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors, all permuted by the one order that makes the first contiguous, when that
    order makes every one of them contiguous; otherwise the tensors as they are."""
    tensors = list(tensors)
    first = tensors[0]
    if first.is_contiguous():
        return tensors
    order = sorted(range(first.dim()), key=lambda dim: -first.stride(dim))
    views = [tensor.permute(order) for tensor in tensors]
    if all(view.is_contiguous() for view in views):
        return views
    return tensors


def build_optimizer(model: nn.Module, recipe: RecipeConfig) -> torch.optim.Optimizer:
    """Adam (L2 penalty in the gradient) or AdamW (decoupled weight decay), one parameter group,
    on the fused kernel where torch has one."""
    if recipe.optimizer not in OPTIMIZERS:
        raise PetsegError(
            f"unknown optimizer {recipe.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    kind = AdamW if recipe.optimizer == "adamw" else Adam
    # The fused kernel updates all tensors in one pass: on a 2-core CPU a ResNet34-UNet's AdamW
    # step takes 18-20 ms against the default implementation's 52-59 (bench/optimizer_step.py).
    fused = next(model.parameters()).device.type in FUSED_OPTIMIZER_DEVICES
    return kind(
        model.parameters(),
        lr=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        fused=fused or None,
    )


def clip_gradients(
    optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter], max_norm: float
) -> torch.Tensor:
    """Scale the gradients down so that their global L2 norm is at most `max_norm`, as
    torch.nn.utils.clip_grad_norm_ does, and return that norm before clipping. A fused petseg
    optimizer divides the gradients in its next step; any other has them scaled here. A
    non-finite norm leaves the gradients alone: the caller skips the step."""
    with_grads = [p for p in parameters if p.grad is not None]
    if not with_grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm([p.grad for p in with_grads])
    if not bool(torch.isfinite(norm)):
        return norm
    if isinstance(optimizer, _DenseViews) and optimizer.defaults.get("fused"):
        divisor = torch.clamp((norm + CLIP_EPSILON) / max_norm, min=1.0)
        optimizer.divide_gradients(divisor.to(torch.float32))
    else:
        torch.nn.utils.clip_grads_with_norm_(with_grads, max_norm, norm)
    return norm
