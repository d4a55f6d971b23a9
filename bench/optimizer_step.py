"""The optimizer step alone: torch's AdamW with its default implementation, foreach, and the
fused kernel petseg trains with, on one model's parameters and random gradients.

Prints one JSON line per implementation and the fused kernel's speed-up over the default, all
measured in this one process. At batch 4 a training step of the ResNet34-UNet at 128 px is a few
hundred milliseconds on a 2-core CPU, so the optimizer's share is worth measuring.

    python bench/optimizer_step.py --model_type resnet34_unet
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from petseg.config import PRESETS, model_kwargs
from petseg.models import build_model
from quality import environment  # bench/, beside this script

IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def time_steps(optimizer: torch.optim.Optimizer, steps: int, repeats: int) -> float:
    """The median over `repeats` of the mean seconds of `steps` optimizer steps."""
    optimizer.step()  # creates the state
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        runs.append((time.perf_counter() - started) / steps)
    return sorted(runs)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_type", choices=sorted(PRESETS), default="resnet34_unet")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model_type, **model_kwargs(PRESETS[args.model_type].model))
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    seconds = {}
    for name, kwargs in IMPLEMENTATIONS.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, **kwargs)
        seconds[name] = time_steps(optimizer, args.steps, args.repeats)
        line = {"bench": "optimizer_step", "model_type": args.model_type, "optimizer": "adamw",
                "implementation": name, "ms_per_step": round(seconds[name] * 1000, 2),
                "environment": environment("cpu", "fp32")}  # fmt: skip
        print(json.dumps(line))
    print(
        json.dumps(
            {
                "bench": "optimizer_step",
                "model_type": args.model_type,
                "fused_speedup_over_default": round(seconds["default"] / seconds["fused"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
