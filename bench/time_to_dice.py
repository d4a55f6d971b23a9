"""Time to a good model: test Dice against seconds of training, petseg beside the references.

On one machine, one run after another, on the same image size and the official splits (train =
trainval lines whose index % 10 != 0, test = test.txt, read by petseg.data), it trains

  petseg  petseg's default recipe for --model_type, through the same code path as `petseg train`
          (petseg.cli.main), once per epoch budget in --budgets (the ResNet34-UNet's default
          trains budgets of up to 20 epochs with its short-run recipe, petseg.config.ShortRun). A OneCycle run is not a prefix
          of a longer one (its schedule spans the whole run), so petseg's curve is one point per
          budget, each a separate run from scratch: (its training seconds, the test Dice of the
          checkpoint that run hands over). Between budgets the curve is interpolated linearly.
  smp     segmentation_models_pytorch's Unet("resnet34", encoder_weights=None, classes=1) in a
          standard plain-PyTorch loop at its best setting (bench/reference_loop.py): BCE + soft
          Dice, AdamW with torch's OneCycleLR peaking at 1e-3, batch 16, the lab's resize-1.12x +
          random crop + flip (albumentations), bf16 autocast on CUDA and on CPUs with native bf16,
          channels_last; --reference_epochs epochs, the test split scored after each.
  lab     the lab report's loop in the same plain loop: BCE, Adam 1e-4 constant, the same
          augmentation and batch, on the lab report's model (ResNet34-UNet: petseg's with the 7x7
          stem, ReLU and no stochastic depth; UNet: the classic one, ConvTranspose2d upsampling;
          bench/quality.py REFERENCE_MODELS); a constant rate makes each epoch a true prefix.

Seconds are training time only: data loading and the optimizer steps of every epoch, summed;
validation, test scoring and start-up are off the clock for all runs alike. Start-up includes
the steps a --progressive petseg run times at both sizes before epoch 1 for its estimate (about
16 steps, a few seconds; its history's train_seconds leave them out). Dice is the test
split's mean per-image Dice at threshold 0.5 (petseg.metrics) at the training size.

It prints one table (seconds to reach each of --levels, final Dice, training seconds per run)
and, against each reference run, petseg's time to reach the reference's final Dice as a share of
the reference's training time, and petseg's Dice at the reference's training time. Rules: an
epoch curve reaches a level at the end of the first epoch at or above it and holds the last
finished epoch's Dice; the budget curve crosses a level where the line between two neighbouring
budgets first does, is not measured before its smallest budget, and holds the largest budget's
Dice after it. For --model_type resnet34_unet the targets (docs/experiments.md, issue 51) are
checked against smp: time share <= 0.40, Dice at smp's time >= smp's final + 0.02, and the
40-epoch budget's Dice >= 0.86 as a quality guard; --model_type unet reports without targets.
It draws Dice against seconds for all runs as one PNG and appends one JSON line per run and a
summary line (machine: CPU model, native bf16, threads, torch version, commit) to --out.

    python bench/time_to_dice.py ../shared/data/oxford-iiit-pet-sample --image_size 128
    python bench/time_to_dice.py DATA --model_type unet
    # a lever for petseg's default: `petseg train` flags after -- go to the petseg run only
    python bench/time_to_dice.py DATA --runs petseg -- --batch_size 16 --learning-rate 2e-3
    # the picture of the last invocation in a results file, again, without training
    python bench/time_to_dice.py --replot bench/results/time-to-dice.jsonl --plot PNG
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dice_curves import (
    TARGET_TIME_SHARE,
    Comparison,
    Curve,
    Point,
    Target,
    compare,
    targets,
    time_to_level,
)
from petseg.cli import main as petseg_main
from petseg.data.oxford_pet import missing_archives
from petseg.errors import PetsegError
from petseg.files import atomic_write_bytes, ensure_folder
from petseg.losses import bce_dice_loss, bce_loss
from petseg.models import build_model
from petseg.runtime import resolve_device, resolve_precision, seed_everything
from quality import REFERENCE_MODELS, environment  # bench/, beside this script
from reference_loop import Recipe, reference_precision, split_set, train_reference
from throughput import smp_unet

RUNS = ("petseg", "smp", "lab")
DEFAULT_RUNS = {"resnet34_unet": "petseg,smp,lab", "unet": "petseg,lab"}
LEVELS = (0.70, 0.75, 0.80, 0.82, 0.835, 0.85)
RESULTS = Path(__file__).resolve().parent / "results"
SMP_MISSING = "segmentation-models-pytorch is not installed: pip install -e '.[bench]'"
REFERENCE_RECIPES = {
    "smp": Recipe(bce_dice_loss, "BCE + soft Dice", "adamw", 1e-3, onecycle=True),
    "lab": Recipe(bce_loss, "BCE", "adam", 1e-4, onecycle=False),
}
RUN_KEYS = (
    "benchmark", "run", "label", "recipe", "model_type", "image_size", "seed", "curve",
    "points", "seconds_to", "final_dice", "train_seconds", "precision", "started",
    "environment",
)  # fmt: skip
SUMMARY_KEYS = (
    "benchmark", "summary", "model_type", "image_size", "seed", "runs", "comparisons",
    "targets", "rules", "started", "environment",
)  # fmt: skip
RULES = (
    "seconds: training only (evaluation off the clock); Dice: test, mean per-image at 0.5; "
    "epoch curves reach a level at the first epoch at or above it; the budget curve is linear "
    "between budgets, unmeasured before the smallest, the largest's Dice after it"
)


# --- the runs ---------------------------------------------------------------------------------


def run_petseg(args: argparse.Namespace, work_dir: Path) -> Curve:
    """One `petseg train` run from scratch per budget, each scored on the test split."""
    points = []
    for index, epochs in enumerate(args.budgets, 1):
        say(f"petseg: budget {index} of {len(args.budgets)}, --epochs {epochs}")
        model_path = work_dir / f"petseg-{epochs}ep.pt"
        petseg(
            "train", "--data_path", str(args.data_dir), "--model_type", args.model_type,
            "--image_size", str(args.image_size), "--epochs", str(epochs),
            "--seed", str(args.seed), "--device", args.device, "--model_path", str(model_path),
            *args.train_flags,
        )  # fmt: skip
        seconds = training_seconds(model_path.with_name(f"{model_path.stem}.history.csv"))
        dice = test_dice(args, model_path)
        say(f"petseg --epochs {epochs}: {seconds:.1f} s of training, test Dice {dice:.4f}")
        points.append(Point(epochs, seconds, dice))
    recipe = " ".join(["`petseg train` defaults", *args.train_flags])
    precision = resolve_precision(
        flag_value(args.train_flags, "--precision", "auto"), resolve_device(args.device)
    )
    return Curve(
        "petseg",
        f"petseg {args.model_type}",
        recipe,
        tuple(sorted(points, key=lambda p: p.seconds)),
        True,
        precision,
    )


def flag_value(flags: Sequence[str], name: str, default: str) -> str:
    """The value given to `name` in a flag list (the last one wins), else `default`."""
    values = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == name]
    return values[-1] if values else default


def petseg(*command: str) -> None:
    """Run a petseg command in this process, its output on stderr (stdout is the report)."""
    with contextlib.redirect_stdout(sys.stderr):
        code = petseg_main(list(command))
    if code != 0:
        raise SystemExit(f"time_to_dice: `petseg {' '.join(command)}` exited with {code}")


def training_seconds(history: Path) -> float:
    """The run's training seconds: each epoch's train_seconds in its history, validation not."""
    with history.open() as handle:
        return sum(float(row["train_seconds"]) for row in csv.DictReader(handle))


def test_dice(args: argparse.Namespace, model_path: Path) -> float:
    """The checkpoint's test Dice at threshold 0.5, as `petseg evaluate` reports it."""
    scores = model_path.with_suffix(".test.json")
    petseg(
        "evaluate", "--model_path", str(model_path), "--data_path", str(args.data_dir),
        "--split", "test", "--threshold", "0.5", "--device", args.device, "--output", str(scores),
    )  # fmt: skip
    return float(json.loads(scores.read_text())["dice"])


def run_reference(args: argparse.Namespace, run: str) -> Curve:
    """smp's standard loop or the lab report's, scored on the test split after every epoch."""
    recipe = REFERENCE_RECIPES[run]
    if run == "smp":
        label = "smp Unet(resnet34)"
    else:
        label = f"lab {args.model_type} ({', '.join(f'{k}={v}' for k, v in lab_model(args))})"
    say(f"{run}: {label}, {recipe.describe()}, epochs {args.reference_epochs}")
    device = resolve_device(args.device)
    seed_everything(args.seed)
    model = smp_unet() if run == "smp" else build_model(args.model_type, **dict(lab_model(args)))
    train_set = split_set(args.data_dir, "train", args.image_size)
    test_set = split_set(args.data_dir, "test", args.image_size)
    points, seconds = [], 0.0
    epochs = train_reference(
        model,
        recipe,
        train_set,
        test_set,
        epochs=args.reference_epochs,
        seed=args.seed,
        device=device,
    )
    for result in epochs:
        seconds += result.seconds
        points.append(Point(result.epoch, seconds, result.dice))
        say(
            f"{run}: epoch {result.epoch}/{args.reference_epochs}  loss {result.loss:.4f}  "
            f"test Dice {result.dice:.4f}  {result.seconds:.1f} s (training {seconds:.1f} s)"
        )
    return Curve(run, label, recipe.describe(), tuple(points), False, reference_precision(device))


def lab_model(args: argparse.Namespace) -> list[tuple[str, Any]]:
    return sorted(REFERENCE_MODELS[args.model_type].items())


def say(message: str) -> None:
    print(f"time_to_dice: {message}", file=sys.stderr, flush=True)


# --- the report -------------------------------------------------------------------------------


def format_table(curves: Sequence[Curve], levels: Sequence[float]) -> str:
    """Seconds to each level, final Dice and training seconds, one row per run."""
    header = ["run", *(f"{level:g}" for level in levels), "final Dice", "train s"]
    rows = [header]
    for curve in curves:
        reached = [time_to_level(curve, level) for level in levels]
        rows.append(
            [
                curve.run,
                *("-" if s is None else f"{s:.0f}" for s in reached),
                f"{curve.final.dice:.4f}",
                f"{curve.final.seconds:.0f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(
        [
            "seconds of training to reach test Dice (mean per-image, threshold 0.5; - not reached)",
            *lines,
            *(f"  {curve.run}: {curve.label}, {curve.recipe}" for curve in curves),
        ]
    )


def format_points(curve: Curve) -> str:
    budgets = ", ".join(f"{p.epochs} ep {p.seconds:.0f} s {p.dice:.4f}" for p in curve.points)
    return f"petseg budgets (separate runs: a OneCycle run is no prefix of a longer one): {budgets}"


def format_comparison(comparison: Comparison) -> str:
    ref = comparison.reference
    share, margin = comparison.time_share, comparison.dice_margin
    reached = (
        f"reaches it after {comparison.seconds_to_reference_dice:.0f} s "
        f"({share:.2f} of {ref}'s time)"
        if share is not None
        else "does not reach it within its budgets"
    )
    at_time = (
        f"{comparison.dice_at_reference_seconds:.4f} ({margin:+.4f})"
        if margin is not None
        else "not measured (before its smallest budget)"
    )
    return (
        f"petseg against {ref}: {ref} ends at Dice {comparison.reference_dice:.4f} after "
        f"{comparison.reference_seconds:.0f} s; petseg {reached}; petseg's Dice at {ref}'s "
        f"time: {at_time}"
    )


def format_target(target: Target) -> str:
    verdict = {True: "PASS", False: "FAIL", None: "not measured"}[target.passed]
    value = "-" if target.value is None else f"{target.value:.4f}"
    sign = "<=" if target.at_most else ">="
    return f"target: {target.name} = {value}, wanted {sign} {target.limit:g}: {verdict}"


def run_line(
    args: argparse.Namespace, curve: Curve, machine: dict[str, Any], started: str
) -> dict[str, Any]:
    """The JSON record of one run; `started` is the invocation's start, shared by its lines."""
    return {
        "benchmark": "time_to_dice",
        "run": curve.run,
        "label": curve.label,
        "recipe": curve.recipe,
        "model_type": args.model_type,
        "image_size": args.image_size,
        "seed": args.seed,
        "curve": "budgets" if curve.interpolated else "epochs",
        "points": [vars(point) for point in curve.points],
        "seconds_to": {f"{level:g}": time_to_level(curve, level) for level in args.levels},
        "final_dice": curve.final.dice,
        "train_seconds": curve.final.seconds,
        "precision": curve.precision,
        "started": started,
        "environment": machine,
    }


def summary_line(
    args: argparse.Namespace,
    curves: Sequence[Curve],
    comparisons: Sequence[Comparison],
    checked: Sequence[Target],
    machine: dict[str, Any],
    started: str,
) -> dict[str, Any]:
    """The JSON record of the comparisons and targets, after the runs' own lines."""
    return {
        "benchmark": "time_to_dice",
        "summary": True,
        "model_type": args.model_type,
        "image_size": args.image_size,
        "seed": args.seed,
        "runs": [curve.run for curve in curves],
        "comparisons": [vars(comparison) for comparison in comparisons],
        "targets": [{**vars(target), "passed": target.passed} for target in checked],
        "rules": RULES,
        "started": started,
        "environment": machine,
    }


def append_lines(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    """Append the records to a JSON-lines file, keeping the lines already there."""
    ensure_folder(path.parent)
    with path.open("a") as handle:
        handle.write("".join(json.dumps(line) + "\n" for line in lines))


def render_plot(curves: Sequence[Curve], title: str) -> bytes:
    """Dice against training seconds, one line per run, as PNG bytes. With smp among the runs,
    dotted lines mark its final Dice and the target's share of its training time."""
    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.add_subplot()
    for curve in curves:
        seconds = [point.seconds for point in curve.points]
        dice = [point.dice for point in curve.points]
        if curve.interpolated:  # budgets: points joined by the interpolation
            axes.plot(seconds, dice, marker="o", label=f"{curve.label} (one run per budget)")
            for point in curve.points:
                axes.annotate(
                    f"{point.epochs} ep",
                    (point.seconds, point.dice),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
        else:  # epochs: the Dice holds until the next epoch ends
            axes.plot(seconds, dice, marker=".", drawstyle="steps-post", label=curve.label)
    smp = [curve for curve in curves if curve.run == "smp"]
    if smp:
        axes.axhline(smp[0].final.dice, linestyle=":", color="grey", linewidth=1)
        axes.axvline(
            TARGET_TIME_SHARE * smp[0].final.seconds,
            linestyle=":",
            color="grey",
            linewidth=1,
            label=f"smp's final Dice; {TARGET_TIME_SHARE:.0%} of its time",
        )
    bottom = axis_bottom(curves)
    axes.set_ylim(bottom=bottom)
    axes.set_xlabel("training seconds (evaluation excluded)")
    axes.set_ylabel(f"test Dice (mean per-image, threshold 0.5; from {bottom:g})")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    stream = io.BytesIO()
    FigureCanvasAgg(figure).print_png(stream)
    return stream.getvalue()


def axis_bottom(curves: Sequence[Curve]) -> float:
    """Where the Dice axis starts: 0.15 below the lowest final Dice, on a 0.05 step, so the
    region the runs end in fills the picture (their first epochs may start below it)."""
    lowest = min(curve.final.dice for curve in curves) - 0.15
    return max(0.0, math.floor(round(lowest / 0.05, 6)) * 0.05)


def curves_from_lines(path: Path) -> tuple[list[Curve], str, dict[str, Any]]:
    """The curves of the last invocation recorded in a JSON-lines file (its summary line and
    the run lines sharing its `started`), with its model type and image size."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    summaries = [
        line for line in lines if line.get("benchmark") == "time_to_dice" and line.get("summary")
    ]
    if not summaries:
        raise SystemExit(f"time_to_dice: {path}: holds no time_to_dice summary line")
    last = summaries[-1]
    runs = [
        line
        for line in lines
        if line.get("benchmark") == "time_to_dice"
        and not line.get("summary")
        and line["started"] == last["started"]
    ]
    curves = [
        Curve(
            line["run"],
            line["label"],
            line["recipe"],
            tuple(Point(**point) for point in line["points"]),
            line["curve"] == "budgets",
            line["precision"],
        )
        for line in runs
    ]
    return curves, last["started"], last


def plot_title(model_type: str, image_size: int, seed: int) -> str:
    return f"{model_type} at {image_size} px, seed {seed}: test Dice against time"


def replot(args: argparse.Namespace) -> int:
    """Draw the last invocation in --replot's file again, without training."""
    curves, _, summary = curves_from_lines(args.replot)
    plot = args.plot_given or args.replot.with_name(
        f"time-to-dice-{summary['model_type']}-{summary['image_size']}px.png"
    )
    title = plot_title(summary["model_type"], summary["image_size"], summary["seed"])
    atomic_write_bytes(plot, render_plot(curves, title))
    print(f"drew {plot} from {len(curves)} runs in {args.replot}")
    return 0


# --- the command ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="time_to_dice.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "data_dir",
        type=Path,
        nargs="?",
        help="the dataset folder (images/, annotations/); not needed with --replot",
    )
    add("--image_size", type=int, default=128)
    add("--model_type", choices=sorted(REFERENCE_MODELS), default="resnet34_unet")
    add(
        "--budgets",
        type=int_list,
        default=[5, 10, 15, 20, 40],
        help="petseg's epoch budgets, one run from scratch each (default 5,10,15,20,40)",
    )
    add(
        "--reference_epochs",
        type=int,
        default=40,
        help="epochs of the smp and lab runs (default 40)",
    )
    add("--seed", type=int, default=0, help="the seed of every run (default 0)")
    add(
        "--runs",
        default=None,
        help="comma-separated, run in this order: petseg, smp, lab (default petseg,smp,lab; "
        "with --model_type unet petseg,lab)",
    )
    add(
        "--levels",
        type=float_list,
        default=list(LEVELS),
        help="the table's Dice levels (default 0.7,0.75,0.8,0.82,0.835,0.85)",
    )
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add(
        "--out",
        type=Path,
        default=RESULTS / "time-to-dice.jsonl",
        help="append the JSON lines here (default bench/results/time-to-dice.jsonl)",
    )
    add(
        "--plot",
        type=Path,
        default=None,
        help="the PNG, replaced (default beside OUT: time-to-dice-MODEL-SIZEpx.png)",
    )
    add(
        "--replot",
        type=Path,
        default=None,
        metavar="JSONL",
        help="train nothing: draw the last invocation recorded in JSONL again (to --plot)",
    )
    add(
        "--work_dir",
        type=Path,
        default=None,
        help="an empty folder to keep petseg's checkpoints in (default a temp folder)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options; `petseg train` flags after -- go to the petseg run."""
    parser = build_parser()
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_flags = argv[split + 1 :]
    args.runs = (args.runs or DEFAULT_RUNS[args.model_type]).split(",")
    unknown = [run for run in args.runs if run not in RUNS]
    if unknown:
        parser.error(f"--runs: unknown {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    if min(args.budgets) < 1 or args.reference_epochs < 1:
        parser.error("--budgets and --reference_epochs need at least 1 epoch each")
    if args.data_dir is None and args.replot is None:
        parser.error("the dataset folder is required (or --replot JSONL)")
    args.budgets = sorted(set(args.budgets))
    args.plot_given = args.plot
    args.plot = args.plot or args.out.with_name(
        f"time-to-dice-{args.model_type}-{args.image_size}px.png"
    )
    return args


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def float_list(text: str) -> list[float]:
    return [float(part) for part in text.split(",")]


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse before training what would fail or mislead after it."""
    missing = missing_archives(args.data_dir)
    if missing:
        raise SystemExit(
            f"time_to_dice: {args.data_dir}: not an Oxford-IIIT Pet folder (lacks its "
            f"{' and '.join(missing)}); `petseg download` fetches it"
        )
    if "smp" in args.runs and not smp_importable():
        raise SystemExit(f"time_to_dice: {SMP_MISSING} (or leave smp out of --runs)")
    if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
        raise SystemExit(f"time_to_dice: {args.work_dir}: not empty; give an empty --work_dir")
    for folder in {args.out.parent, args.plot.parent}:  # an hour of training, then no record
        ensure_folder(folder)
        if not os.access(folder, os.W_OK):
            raise SystemExit(f"time_to_dice: {folder}: cannot write the results here")


def smp_importable() -> bool:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.replot is not None:
        return replot(args)
    try:
        check_inputs(args)
        machine = environment(args.device, "auto")
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        curves = run_all(args, machine, started)
        comparisons, checked = judge(args, curves)
        print(report(args, curves, comparisons, checked))
        append_lines(args.out, [summary_line(args, curves, comparisons, checked, machine, started)])
        title = plot_title(args.model_type, args.image_size, args.seed)
        atomic_write_bytes(args.plot, render_plot(curves, title))
    except PetsegError as error:
        raise SystemExit(f"time_to_dice: {error}") from None
    print(f"appended {len(curves) + 1} lines to {args.out}; drew {args.plot}")
    return 0


def run_all(args: argparse.Namespace, machine: dict[str, Any], started: str) -> list[Curve]:
    """The runs one after another, each run's line appended as soon as it ends."""
    curves = []
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ensure_folder(work_dir)
        for run in args.runs:
            curve = run_petseg(args, work_dir) if run == "petseg" else run_reference(args, run)
            append_lines(args.out, [run_line(args, curve, machine, started)])
            curves.append(curve)
    return curves


def judge(
    args: argparse.Namespace, curves: Sequence[Curve]
) -> tuple[list[Comparison], list[Target]]:
    """petseg against each reference run, and the targets where they are set: the
    ResNet34-UNet against smp."""
    by_run = {curve.run: curve for curve in curves}
    if "petseg" not in by_run:
        return [], []
    comparisons = [
        compare(by_run["petseg"], by_run[ref]) for ref in ("smp", "lab") if ref in by_run
    ]
    checked = [
        target
        for comparison in comparisons
        if comparison.reference == "smp" and args.model_type == "resnet34_unet"
        for target in targets(by_run["petseg"], comparison)
    ]
    return comparisons, checked


def report(
    args: argparse.Namespace,
    curves: Sequence[Curve],
    comparisons: Sequence[Comparison],
    checked: Sequence[Target],
) -> str:
    """The table, petseg's budgets, the comparisons and the targets, as text."""
    lines = [format_table(curves, args.levels)]
    lines += [format_points(curve) for curve in curves if curve.run == "petseg"]
    lines += [format_comparison(comparison) for comparison in comparisons]
    lines += [format_target(target) for target in checked]
    if comparisons and not checked:
        lines.append("targets: none checked (set for --model_type resnet34_unet against smp)")
    return "\n".join([*lines, f"rules: {RULES}"])


if __name__ == "__main__":
    sys.exit(main())
