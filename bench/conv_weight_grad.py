"""Conv3x3's weight gradient on a CPU: oneDNN's against the product of gathered patches.

For each distinct 3x3 stride-1 conv of the model at --image_size and --batch_size, times the
weight gradient both ways (median of interleaved rounds) and says which one Conv3x3 picks; then
times whole training steps (bf16 autocast or fp32, channels_last, clipping and the fused AdamW,
as `petseg train` steps) with the product where Conv3x3 picks it and with oneDNN everywhere,
in interleaved rounds, and prints the ratio. JSON lines; all figures from this one process.

    python bench/conv_weight_grad.py --image_size 128 --batch_size 8
    python bench/conv_weight_grad.py --image_size 64 --batch_size 8 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from petseg.config import PRESETS, model_kwargs
from petseg.losses import bce_dice_loss
from petseg.models import build_model, convs
from quality import environment  # bench/, beside this script


def median_ms(functions: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict:
    """Each function's median over `rounds` interleaved rounds of its mean over `calls` calls."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.perf_counter()
            for _ in range(calls):
                function()
            times[name].append((time.perf_counter() - started) / calls * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def conv_shapes(model: torch.nn.Module, size: int, batch: int) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, map edge) of each distinct stride-1 Conv3x3 the model runs."""
    shapes: set[tuple[int, int, int]] = set()

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _: object) -> None:
        if module.stride == (1, 1):
            shapes.add((module.in_channels, module.out_channels, inputs[0].shape[-1]))

    hooks = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, convs.Conv3x3)
    ]
    with torch.no_grad():
        model(torch.zeros(batch, 3, size, size))
    for hook in hooks:
        hook.remove()
    return sorted(shapes, key=lambda shape: (-shape[0], shape[2]))


def weight_grad_functions(
    shape: tuple[int, int, int], batch: int, dtype: torch.dtype
) -> dict[str, Callable[[], object]]:
    c_in, c_out, edge = shape
    layout = torch.channels_last
    x = torch.randn(batch, c_in, edge, edge, dtype=dtype).contiguous(memory_format=layout)
    grad = torch.randn(batch, c_out, edge, edge, dtype=dtype).contiguous(memory_format=layout)
    weight = torch.randn(c_out, c_in, 3, 3, dtype=dtype).contiguous(memory_format=layout)
    mask = [False, False, True]

    def onednn() -> object:
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
        )

    def product() -> object:
        return grad.permute(0, 2, 3, 1).reshape(-1, c_out).t() @ convs.patches(x, 3, 1)

    return {"onednn": onednn, "product": product}


def train_step_function(model: torch.nn.Module, size: int, batch: int, precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(batch, 1, size, size) > 0.5).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
        loss = bce_dice_loss(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_type", choices=sorted(PRESETS), default="resnet34_unet")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = build_model(args.model_type, **model_kwargs(PRESETS[args.model_type].model))
    model = model.to(memory_format=torch.channels_last).train()
    common = {"bench": "conv_weight_grad", "model_type": args.model_type,
              "image_size": args.image_size, "batch_size": args.batch_size,
              "precision": args.precision}  # fmt: skip
    for shape in conv_shapes(model, args.image_size, args.batch_size):
        ms = median_ms(weight_grad_functions(shape, args.batch_size, dtype), args.rounds, 5)
        example = torch.empty(args.batch_size, shape[0], shape[2], shape[2])
        picked = (
            "product" if convs.Conv3x3(*shape[:2]).gathers_weight_gradient(example) else "onednn"
        )
        line = {**common, "conv": f"{shape[0]}->{shape[1]} at {shape[2]}x{shape[2]}",
                "onednn_ms": round(ms["onednn"], 2), "product_ms": round(ms["product"], 2),
                "conv3x3_picks": picked}  # fmt: skip
        print(json.dumps(line), flush=True)

    step = train_step_function(model, args.image_size, args.batch_size, args.precision)
    share = convs.ROWS_PER_CHANNEL

    def with_share(value: float) -> Callable[[], None]:
        def run() -> None:
            convs.ROWS_PER_CHANNEL = value
            step()

        return run

    ms = median_ms({"onednn": with_share(0.0), "conv3x3": with_share(share)}, args.rounds, 2)
    convs.ROWS_PER_CHANNEL = share
    line = {**common, "train_step_onednn_ms": round(ms["onednn"], 1),
            "train_step_conv3x3_ms": round(ms["conv3x3"], 1),
            "ratio": round(ms["conv3x3"] / ms["onednn"], 3),
            "environment": environment("cpu", args.precision)}  # fmt: skip
    print(json.dumps(line))


if __name__ == "__main__":
    main()
