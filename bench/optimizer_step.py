"""The optimizer step alone, on one model's parameters and random gradients, all measured in
this one process.

Implementations of AdamW: torch's default and foreach ones and its fused kernel, and petseg's
(petseg.optimizers: the fused kernel fed contiguous views of channels_last tensors). With
--channels_last (how `petseg train` holds a model's weights, the default here) torch's fused
kernel copies every 4-d tensor into the contiguous layout and back. Then two clipped steps, as
a clipped training run takes them: torch's clip_grad_norm_ before its fused step, and
petseg.optimizers.clip_gradients, whose factor the step applies. Prints one JSON line per
implementation and the ratios against torch's fused kernel.

--train_steps SIZE,BATCH ... also times whole bf16 training steps (forward, backward, clipping
at 0.5, step; channels_last) on random images with each of the two clipped steps, interleaved.

    python bench/optimizer_step.py --model_type resnet34_unet --train_steps 64,8 128,8 128,4
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from conv_weight_grad import median_ms  # bench/, beside this script
from petseg.config import PRESETS, model_kwargs
from petseg.losses import bce_dice_loss
from petseg.models import build_model
from petseg.optimizers import AdamW, clip_gradients
from quality import environment

IMPLEMENTATIONS = {
    "default": (torch.optim.AdamW, {}),
    "foreach": (torch.optim.AdamW, {"foreach": True}),
    "fused": (torch.optim.AdamW, {"fused": True}),
    "petseg": (AdamW, {"fused": True}),
}
CLIP_NORM = 1e-3  # below the random gradients' norm: every step clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_type", choices=sorted(PRESETS), default="resnet34_unet")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--channels_last", action=argparse.BooleanOptionalAction, default=True,
        help="hold the weights channels_last, as petseg train does (default: on)",
    )  # fmt: skip
    parser.add_argument("--train_steps", nargs="*", default=[], metavar="SIZE,BATCH")
    args = parser.parse_args()
    functions = {}
    for name, (kind, kwargs) in IMPLEMENTATIONS.items():
        functions[name] = plain_step(args, kind, kwargs)
    functions["clip+fused"] = clipped_step(args, torch.optim.AdamW, torch_clip)
    functions["clip+petseg"] = clipped_step(args, AdamW, petseg_clip)
    ms = median_ms(functions, args.repeats, args.steps)
    common = {"bench": "optimizer_step", "model_type": args.model_type, "optimizer": "adamw",
              "channels_last": args.channels_last}  # fmt: skip
    for name, value in ms.items():
        line = {**common, "implementation": name, "ms_per_step": round(value, 2),
                "environment": environment("cpu", "fp32")}  # fmt: skip
        print(json.dumps(line))
    ratios = {
        "fused_speedup_over_default": round(ms["default"] / ms["fused"], 2),
        "petseg_over_fused": round(ms["petseg"] / ms["fused"], 3),
        "clip_petseg_over_clip_fused": round(ms["clip+petseg"] / ms["clip+fused"], 3),
    }
    print(json.dumps({**common, **ratios}))
    for size, batch in (map(int, item.split(",")) for item in args.train_steps):
        steps = {
            name: train_step(args, size, batch, kind, clip)
            for name, kind, clip in (("torch", torch.optim.AdamW, torch_clip),
                                     ("petseg", AdamW, petseg_clip))
        }  # fmt: skip
        ms = median_ms(steps, args.repeats, 2)
        print(json.dumps({**common, "train_step": f"{size} px, batch {batch}, bf16",
                          "ms_torch": round(ms["torch"], 1), "ms_petseg": round(ms["petseg"], 1),
                          "petseg_over_torch": round(ms["petseg"] / ms["torch"], 3),
                          "environment": environment("cpu", "bf16")}))  # fmt: skip


def model_with_gradients(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(args.model_type, **model_kwargs(PRESETS[args.model_type].model))
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)  # keeps the parameter's layout
    return model


def plain_step(args: argparse.Namespace, kind: type, kwargs: dict) -> Callable[[], None]:
    model = model_with_gradients(args)
    optimizer = kind(model.parameters(), lr=1e-3, weight_decay=1e-2, **kwargs)
    return optimizer.step


def torch_clip(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cap: float) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), cap)


def petseg_clip(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cap: float) -> None:
    clip_gradients(optimizer, model.parameters(), cap)


def clipped_step(
    args: argparse.Namespace, kind: type, clip: Callable[..., None]
) -> Callable[[], None]:
    model = model_with_gradients(args)
    optimizer = kind(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    grads = [p.grad.clone() for p in model.parameters()]

    def step() -> None:
        for parameter, grad in zip(model.parameters(), grads, strict=True):
            parameter.grad.copy_(grad)  # clipping shrank them; the same work every step
        clip(model, optimizer, CLIP_NORM)
        optimizer.step()

    return step


def train_step(
    args: argparse.Namespace, size: int, batch: int, kind: type, clip: Callable[..., None]
) -> Callable[[], None]:
    """One bf16 training step of the model on random images, clipped at 0.5 by `clip`."""
    model = model_with_gradients(args).train()
    optimizer = kind(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(batch, 1, size, size) > 0.5).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
        loss = bce_dice_loss(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip(model, optimizer, 0.5)
        optimizer.step()

    return step


if __name__ == "__main__":
    main()
