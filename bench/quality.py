"""Accuracy of a training recipe: train with `petseg train`, score the best checkpoint on test.

Each seed runs the same code path as the `petseg train` command (petseg.cli.main), then
`petseg evaluate` on the test split: at the checkpoint's threshold with and without flip TTA
(test_*, test_tta_*), at threshold 0.5 (test_t50_*), and keeping each mask's largest connected
region (test_lcc_*, `--largest_component`); and on the train split without augmentation
(fit_*), how well the model fits the images it learned from: a low fit_dice means more
training or capacity can help, a fit far above test means the recipe overfits. Prints one
JSON line per seed and a summary line with the mean and standard deviation across seeds. Dice is the mean of
per-image Dice at the checkpoint's threshold; dataset Dice and IoU come from summed pixels;
all at the training size, and again at each image's original size. Each line also records its
`environment`: the commit (with '+changes' when the checkout differs from it), the petseg and
torch versions, the device, the CPU model, the precision `--precision` resolved to, whether the
CPU has native bf16, and the thread count.

    python bench/quality.py ../shared/data/oxford-iiit-pet-sample --model_type resnet34_unet \
        --image_size 128 --epochs 40 --seeds 3
    # the issue's reference recipe and model (ResNet34-UNet: the 7x7 stem, ReLU; UNet:
    # ConvTranspose2d upsampling) through petseg's flags:
    python bench/quality.py DATA --recipe plain --epochs 40
    # any other `petseg train` flags after --, e.g. an ablation:
    python bench/quality.py DATA --epochs 40 -- --loss bce
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from petseg import __version__
from petseg.checkpoint import load_checkpoint
from petseg.cli import main as petseg_main
from petseg.config import EvaluateConfig
from petseg.evaluate import evaluate_checkpoint
from petseg.runtime import cpu_has_native_bf16, resolve_device, resolve_precision

# Recipes by name, as `petseg train` flags. plain: the reference (BCE, Adam, OneCycle
# 1e-3, batch 16, the lab's crop and flip); lab: the lab report's constant Adam 1e-4.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "plain": [
        "--loss", "bce", "--optimizer", "adam", "--weight_decay", "0", "--scheduler", "onecycle",
        "--learning-rate", "1e-3", "--augment", "lab", "--batch_size", "16", "--clip_grad", "0",
    ],
    "lab": [
        "--loss", "bce", "--optimizer", "adam", "--weight_decay", "0", "--scheduler", "constant",
        "--learning-rate", "1e-4", "--augment", "lab", "--batch_size", "16", "--clip_grad", "0",
    ],
}  # fmt: skip
# The references' models as petseg.models.build_model arguments: the lab report's
# ResNet34-UNet, like smp's, has the 7x7 stem, ReLU and no stochastic depth; its UNet, the
# classic one, upsamples with ConvTranspose2d. bench/time_to_dice.py builds them from here.
REFERENCE_MODELS: dict[str, dict[str, Any]] = {
    "resnet34_unet": {"stem": "classic", "activation": "relu", "drop_path": 0.0},
    "unet": {"upsample": "transpose"},
}
# The `petseg train` flag that sets each of those arguments.
MODEL_ARGUMENT_FLAGS = {
    "stem": "--stem", "activation": "--activation", "drop_path": "--drop_path",
    "upsample": "--unet_upsample",
}  # fmt: skip
REPORTED = ("dice", "dice_dataset", "iou")


def reference_model_flags(model_type: str) -> list[str]:
    """`petseg train` flags that build the lab report's model of this type."""
    arguments = REFERENCE_MODELS.get(model_type, {})
    return [
        text for key, value in arguments.items() for text in (MODEL_ARGUMENT_FLAGS[key], str(value))
    ]


def recipe_flags(recipe: str, model_type: str) -> list[str]:
    """`petseg train` flags of a named recipe; the references also get the lab report's model,
    and never the default's short-run settings."""
    if recipe == "default":
        return list(RECIPES[recipe])
    return [*RECIPES[recipe], *reference_model_flags(model_type), "--short_run", "off"]


def code_version() -> str | None:
    """The checkout's commit, with '+changes' when files differ from it; None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True,
        )  # fmt: skip
    except OSError:
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+changes" if status.stdout.strip() else "")


def cpu_model() -> str | None:
    """The CPU's model name as Linux reports it; None elsewhere."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def environment(device: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """Where a run trains: what --device and --precision resolve to here, and the machine."""
    where = resolve_device(device)
    return {
        "code": code_version(),
        "petseg": __version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "precision": resolve_precision(precision, where),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
    }


def run_seed(args: argparse.Namespace, seed: int, work_dir: Path) -> dict[str, Any]:
    model_path = work_dir / f"{args.model_type}-{args.recipe}-seed{seed}.pt"
    command = [
        "train", "--data_path", str(args.data_dir), "--model_type", args.model_type,
        "--image_size", str(args.image_size), "--epochs", str(args.epochs),
        "--num_workers", "auto" if args.num_workers is None else str(args.num_workers),
        "--seed", str(seed), "--model_path", str(model_path),
        *recipe_flags(args.recipe, args.model_type),
        *([] if args.batch_size is None else ["--batch_size", str(args.batch_size)]),
        *args.train_flags,
    ]  # fmt: skip
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON lines
        code = petseg_main(command)
        if code != 0:
            raise SystemExit(f"petseg {' '.join(command)} exited with {code}")
        train_seconds = time.perf_counter() - started
        # the checkpoint's threshold (tuned on valid or 0.5), with and without TTA, and 0.5;
        # test_lcc: each mask's largest connected region only (--largest_component);
        # fit: the train split, evaluated like test (no augmentation)
        scores = {
            name: evaluate_checkpoint(
                EvaluateConfig(
                    model_path,
                    args.data_dir,
                    split=split,
                    num_workers=args.num_workers,
                    tta=tta,
                    threshold=threshold,
                    largest_component=largest,
                    precision="fp32",
                )
            )
            for name, split, tta, threshold, largest in (
                ("test", "test", False, None, False),
                ("test_tta", "test", True, None, False),
                ("test_t50", "test", False, 0.5, False),
                ("test_lcc", "test", False, None, True),
                ("fit", "train", False, None, False),
            )
        }
    checkpoint = load_checkpoint(model_path)
    config = checkpoint["config"]
    result: dict[str, Any] = {
        "model_type": args.model_type,
        "recipe": args.recipe,
        "seed": seed,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "best_epoch": checkpoint["epoch"],
        "valid_dice": checkpoint["valid_scores"]["dice"],
        "threshold": checkpoint["threshold"],
        "train_minutes": round(train_seconds / 60, 2),
        "environment": environment(config["device"], config["precision"]),
        "train_flags": [*recipe_flags(args.recipe, args.model_type), *args.train_flags],
        "model_kwargs": {
            key: value for key, value in config["model"].items() if key != "model_type"
        },
        "resolved_recipe": config["recipe"],
    }
    for name, results in scores.items():
        for key in REPORTED:
            result[f"{name}_{key}"] = results[key]
            result[f"{name}_original_{key}"] = results["original_resolution"][key]
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "summary": True,
        "model_type": results[0]["model_type"],
        "recipe": results[0]["recipe"],
        "train_flags": results[0]["train_flags"],
        "model_kwargs": results[0]["model_kwargs"],
        "environment": results[0]["environment"],
        "seeds": [result["seed"] for result in results],
        "epochs": results[0]["epochs"],
        "image_size": results[0]["image_size"],
    }
    keys = [key for key in results[0] if key.startswith(("test", "fit", "valid_dice"))]
    for key in keys:
        values = [result[key] for result in results]
        summary[f"{key}_mean"] = round(statistics.fmean(values), 4)
        summary[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--model_type", default="resnet34_unet")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--batch_size", type=int, default=None, help="default: the recipe's, else petseg's"
    )
    parser.add_argument(
        "--num_workers",
        type=lambda text: None if text == "auto" else int(text),
        default=None,
        help="a count or auto (default): petseg's own choice",
    )
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds (0, 1, ...)")
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    parser.add_argument(
        "--work_dir", type=Path, default=None, help="keep checkpoints here (default a temp dir)"
    )
    parser.add_argument("--output", type=Path, default=None, help="also append the JSON lines")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_flags = argv[split + 1 :]  # more `petseg train` flags, after --

    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            result = run_seed(args, seed, work_dir)
            results.append(result)
            emit(result, args.output)
        emit(summarize(results), args.output)


def emit(record: dict[str, Any], output: Path | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if output is not None:
        with output.open("a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
