"""The `petseg` command: a parser per command from shared flag groups, each calling one function.

Flags take underscores (the lab scripts' spelling) or hyphens. A wrong flag or value is one line
naming the command's --help, exit code 2. Train flags default to "not given" (petseg.config).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from petseg import __version__, choices
from petseg.budget import duration_flag, parse_duration
from petseg.cli_help import EXPORT_HELP, HELP, RECIPE_HELP, SERVE_HELP
from petseg.config import (
    DEFAULT_DATA_PATH,
    DIST_TIMEOUT_S,
    INFERENCE_BATCH_SIZE,
    LIMITS,
    PARITY_IMAGES,
    PRESETS,
    TRAIN_FLAGS,
    Bounds,
    EvaluateConfig,
    PredictConfig,
    TrainConfig,
    short_run_variant,
    shown,
    to_plain,
)
from petseg.errors import PetsegError


class Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line pointing at the command's --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.commands: dict[str, Parser] = {}  # the subcommands' parsers, by name
        self._subparsers_action: Any = None

    def add_command(self, name: str, help: str, run: Callable, **kwargs: Any) -> Parser:
        """The parser of a subcommand that calls `run` (kept in `commands` for its errors)."""
        if self._subparsers_action is None:
            self._subparsers_action = self.add_subparsers(dest="command", metavar="COMMAND")
        self.commands[name] = self._subparsers_action.add_parser(name, help=help, **kwargs)
        self.commands[name].set_defaults(run=run)
        return self.commands[name]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


@dataclass(frozen=True)
class Number:
    """A flag's int or float, refused when not finite or outside LIMITS[name] (if any)."""

    kind: type
    name: str = ""

    def __call__(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            message = f"{text!r} is not a valid {self.kind.__name__}"
            raise argparse.ArgumentTypeError(message) from None
        problem = LIMITS.get(self.name, Bounds(-math.inf)).problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value


def workers(text: str) -> int | None:
    """--num_workers: a count, or auto (None) for petseg.data.loading.resolve_num_workers."""
    if text == "auto":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 or auto, got {text}")
    return int(text)


def duration(text: str) -> float:
    """--time_budget: seconds from 90s, 30m, 2h, 1h30m (petseg.budget.parse_duration)."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def widths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        message = f"{text!r} is not a comma-separated list of ints"
        raise argparse.ArgumentTypeError(message) from None
    if any(width < 2 or width % 2 for width in values):
        raise argparse.ArgumentTypeError(f"widths must be even numbers >= 2, got {text}")
    return values


def flag(parser: Any, name: str, *extra: str, **kwargs: Any) -> None:
    """Add --name with both spellings (--data_path, --data-path); its help from HELP unless
    given, with the presets' default where they set one."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}", *extra])
    help = kwargs.pop("help", HELP.get(name, ""))
    preset = preset_default(name) if "default" not in kwargs else ""
    kwargs.setdefault("dest", name)
    parser.add_argument(*spellings, help=f"{help} ({preset})" if preset else help, **kwargs)


def switch(parser: Any, name: str, **kwargs: Any) -> None:
    """An on/off flag; `petseg train`'s default to not given (None)."""
    flag(parser, name, action="store_const", const=True, **{"default": None, **kwargs})


def preset_default(name: str) -> str:
    """'default 50', or per model type 'default: unet 8, resnet34_unet 4'; '' for a flag the
    presets do not set."""
    part, field_name = TRAIN_FLAGS.get(name, ("", ""))
    if part not in ("model", "recipe") or name == "warmup_epochs":  # its default is the schedule's
        return ""
    values = {
        model_type: shown(getattr(getattr(preset, part), field_name))
        for model_type, preset in PRESETS.items()
        if hasattr(getattr(preset, part), field_name)
    }
    if len(values) == len(PRESETS) and len(set(values.values())) == 1:
        return f"default {next(iter(values.values()))}"
    return "default: " + ", ".join(f"{model_type} {value}" for model_type, value in values.items())


def add_data_flags(
    parser: Any, default: Path | None = DEFAULT_DATA_PATH, said: Path | None = DEFAULT_DATA_PATH
) -> None:
    """--data_path (its default `said` in the help), --download and --mirror."""
    help = HELP["data_path"] + (f" (default {said})" if said else "")
    flag(parser, "data_path", type=Path, default=default, help=help)
    flag(parser, "download", action="store_true")
    flag(parser, "mirror", metavar="URL", default=None)


def add_runtime_flags(parser: Any, default: str | None = "auto") -> None:
    """Where and how the model runs."""
    flag(parser, "device", choices=choices.DEVICES, default=default)
    flag(parser, "precision", choices=choices.PRECISIONS, default=default)
    switch(parser, "compile")
    flag(parser, "num_workers", type=workers, metavar="N", default=None)


def add_inference_flags(parser: Parser) -> None:
    """What evaluate and predict share: the threshold, post-processing, how the model runs."""
    flag(parser, "threshold", type=Number(float, "threshold"), default=None)
    flag(parser, "tta", action="store_true")
    flag(parser, "largest_component", action="store_true")
    checked = "checked against the checkpoint's"
    flag(parser, "model_type", choices=choices.MODEL_TYPES, default=None, help=checked)
    add_runtime_flags(parser)
    batch, size = (
        Number(int, "batch_size"),
        f"images per batch (default {INFERENCE_BATCH_SIZE})",
    )
    flag(parser, "batch_size", type=batch, default=INFERENCE_BATCH_SIZE, help=size)


def add_train_flags(parser: Parser) -> None:
    """Where the run goes and how this process runs it; then the model and the recipe."""
    add_data_flags(parser, default=None)
    flag(parser, "model_path", type=Path)
    add_runtime_flags(parser, default=None)
    switch(parser, "skip_bad")
    flag(parser, "no_cache", action="store_const", const=False, dest="cache")
    flag(parser, "cache_dir", type=Path, metavar="DIR")
    flag(parser, "print_config", action="store_true")
    group = parser.add_argument_group("torchrun", "under torchrun only")
    flag(group, "dist_backend", choices=choices.DIST_BACKENDS, default="auto")
    timeout = Number(float, "dist_timeout")
    flag(group, "dist_timeout", type=timeout, default=DIST_TIMEOUT_S, metavar="SECONDS")
    flag(group, "sync_batchnorm", action="store_true")
    add_model_flags(parser.add_argument_group("model", "a resumed run keeps its own"))
    add_recipe_flags(parser.add_argument_group("recipe", RECIPE_HELP))


def add_model_flags(group: Any) -> None:
    """The architecture: petseg.config.UNetConfig or ResNet34UNetConfig."""
    flag(group, "model_type", choices=choices.MODEL_TYPES)
    flag(group, "unet_widths", type=widths, metavar="W1,W2,...")
    flag(group, "unet_upsample", choices=choices.UPSAMPLES)
    flag(group, "decoder_widths", type=widths, metavar="W1,...,W5")
    flag(group, "stem", choices=choices.STEMS)
    flag(group, "activation", choices=choices.ACTIVATIONS)
    flag(group, "drop_path", type=Number(float, "drop_path"), metavar="RATE")
    switch(group, "deep_supervision")


def add_recipe_flags(group: Any) -> None:
    """How the model learns: petseg.config.RecipeConfig."""
    flag(group, "image_size", type=Number(int, "image_size"), metavar="PIXELS")
    flag(group, "epochs", type=Number(int, "epochs"), metavar="N")
    flag(group, "time_budget", type=duration, metavar="DURATION")
    flag(group, "batch_size", type=Number(int, "batch_size"), metavar="N")
    flag(group, "learning_rate", "-lr", type=Number(float, "learning_rate"), metavar="RATE")
    flag(group, "weight_decay", type=Number(float, "weight_decay"), metavar="DECAY")
    flag(group, "warmup_epochs", type=Number(float, "warmup_epochs"), metavar="EPOCHS")
    flag(group, "clip_grad", type=Number(float, "clip_grad"), metavar="MAX_NORM")
    flag(group, "progressive", type=Number(float, "progressive"), metavar="SHARE")
    flag(group, "short_run", choices=choices.SHORT_RUN)
    flag(group, "loss", choices=choices.LOSSES)
    flag(group, "optimizer", choices=choices.OPTIMIZERS)
    flag(group, "scheduler", choices=choices.SCHEDULERS)
    flag(group, "augment", choices=choices.AUGMENTS)
    switch(group, "tune_threshold")
    flag(group, "no_tune_threshold", action="store_const", const=False, dest="tune_threshold")
    flag(group, "seed", type=Number(int))


def add_evaluate_flags(parser: Parser) -> None:
    flag(parser, "model_path", type=Path, required=True, help="checkpoint to evaluate")
    add_data_flags(parser)
    flag(parser, "split", choices=choices.SPLITS, help="split to score (default test)")
    scores = "also write the scores and per-image Dice as JSON"
    flag(parser, "output", type=Path, metavar="FILE.json", help=scores)
    worst = "also draw the N worst images (by per-image Dice) as a PNG contact sheet"
    flag(parser, "gallery", type=Number(int, "gallery"), metavar="N", help=worst)
    where = "where --gallery goes (default beside --output, else beside the checkpoint)"
    flag(parser, "gallery_path", type=Path, metavar="FILE.png", help=where)
    add_inference_flags(parser)
    flag(parser, "skip_bad", action="store_true")
    parser.set_defaults(**config_defaults(EvaluateConfig))


def add_predict_flags(parser: Parser) -> None:
    inputs = "image files or folders (default: the split of --data_path)"
    parser.add_argument("inputs", nargs="*", type=Path, metavar="PATH", help=inputs)
    flag(parser, "model_path", type=Path, required=True, help="checkpoint, or .onnx from export")
    backend = "default: onnxruntime for a .onnx file (needs petseg[onnx]), else torch"
    flag(parser, "backend", choices=choices.BACKENDS, default=None, help=backend)
    add_data_flags(parser, default=None, said=None)
    flag(parser, "split", choices=choices.SPLITS, help="without PATH: this split (default test)")
    save_dir = "folder for the masks, never an input folder (default predictions)"
    flag(parser, "save_dir", type=Path, help=save_dir)
    flag(parser, "overlay", action="store_true", dest="overlays", help="also NAME_overlay.png")
    flag(parser, "cutout", action="store_true", dest="cutouts", help="also NAME_cutout.png (RGBA)")
    skip_bad = "leave out unreadable images with a warning each instead of stopping"
    flag(parser, "skip_bad", action="store_true", help=skip_bad)
    add_inference_flags(parser)
    group = parser.add_argument_group("at scale", "any number of images (docs/use-a-model.md)")
    parts = "split the images into N parts by a hash of their names (default 1)"
    flag(group, "num_parts", type=Number(int, "num_parts"), metavar="N", help=parts)
    flag(group, "part_id", type=Number(int, "part_id"), metavar="K", help="this part, 0 to N-1")
    flag(group, "skip_existing", action="store_true", help="rerun to continue where it stopped")
    parser.set_defaults(**config_defaults(PredictConfig))


def add_serve_flags(parser: Parser) -> None:
    flag(parser, "model_path", type=Path, required=True, help="checkpoint, or .onnx from export")
    host = "address to listen on: 127.0.0.1 (default) this machine only, 0.0.0.0 the network"
    flag(parser, "host", default="127.0.0.1", help=host)
    port = "port to listen on, 0 for any free one (default 8000)"
    flag(parser, "port", type=Number(int, "port"), default=8000, help=port)
    flag(parser, "device", choices=choices.DEVICES, default="auto")
    flag(parser, "precision", choices=choices.PRECISIONS, default="auto")
    flag(parser, "tta", action="store_true")


def add_export_flags(parser: Parser) -> None:
    flag(parser, "model_path", type=Path, required=True, help="checkpoint to export")
    output = "where the ONNX file goes (default MODEL_PATH with the suffix .onnx)"
    flag(parser, "output", type=Path, metavar="FILE.onnx", help=output)
    parity_data = "check parity on this dataset's test images (default: on random inputs)"
    flag(parser, "data_path", type=Path, help=parity_data)
    parity = f"images (or random inputs) the parity check runs (default {PARITY_IMAGES})"
    count = Number(int, "parity_images")
    flag(parser, "parity_images", type=count, default=PARITY_IMAGES, metavar="N", help=parity)


def config_defaults(kind: type) -> dict[str, Any]:
    return {item.name: item.default for item in fields(kind) if item.default is not MISSING}


def build_parser() -> Parser:
    description = "Pet vs background segmentation on Oxford-IIIT Pet (UNet, ResNet34-UNet)."
    parser = Parser(prog="petseg", description=description)
    parser.add_argument("--version", action="version", version=f"petseg {__version__}")
    download = parser.add_command("download", "download and extract the dataset", run_download)
    into = f"folder to download into, keeping what it holds (default {DEFAULT_DATA_PATH})"
    flag(download, "data_path", type=Path, default=DEFAULT_DATA_PATH, help=into)
    flag(download, "mirror", metavar="URL", default=None)
    check = parser.add_command("check", "scan the dataset for unusable files", run_check)
    flag(check, "data_path", type=Path, default=DEFAULT_DATA_PATH, help="dataset folder to scan")
    train = "train a model (resumes when --model_path exists)"
    add_train_flags(parser.add_command("train", train, run_train))
    evaluate = "score a checkpoint on a split"
    add_evaluate_flags(parser.add_command("evaluate", evaluate, run_evaluate))
    predict = "write PNG masks (and overlays, cut-outs) for images or a split"
    add_predict_flags(parser.add_command("predict", predict, run_predict))
    serve = "a local web page and HTTP API that segment the photos you drop on it"
    add_serve_flags(parser.add_command("serve", serve, run_serve, description=SERVE_HELP))
    export = "write a checkpoint's model as ONNX after a parity check"
    add_export_flags(parser.add_command("export", export, run_export, description=EXPORT_HELP))
    return parser


def run_download(args: argparse.Namespace) -> None:
    from petseg.data.download import download_dataset

    fetched = download_dataset(args.data_path, args.mirror)
    if fetched:
        print(f"downloaded {' and '.join(fetched)} into {args.data_path}")
    else:
        print(f"{args.data_path} already holds the dataset; nothing to download")


def run_check(args: argparse.Namespace) -> int:
    from petseg.data.check import check_dataset

    return check_dataset(args.data_path)


def given_train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The train flags given on the command line (all default to None: not given)."""
    names = (*TRAIN_FLAGS, "model_type")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_train(args: argparse.Namespace) -> None:
    from petseg.distributed import world_session
    from petseg.runlock import run_lock
    from petseg.train import config_from_flags, fit
    from petseg.train_state import resume_hint

    flags = given_train_flags(args)
    settings = config_from_flags(flags)
    if args.print_config:
        print(json.dumps(to_plain(settings), indent=2))
        if settings.time_budget_s is not None:
            print(budget_note(settings), file=sys.stderr)
        return
    session = world_session(
        settings.device,
        backend=args.dist_backend,
        timeout_s=args.dist_timeout,
        sync_batchnorm=args.sync_batchnorm,
    )
    try:
        with session as world, run_lock(settings.model_path, enabled=world.is_main):
            fit(settings, world=world, short_run=short_run_variant(settings, flags))
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (errors.Terminated): keep which
        interrupt.args = (resume_hint(settings.model_path),)
        raise


def budget_note(config: TrainConfig) -> str:
    """What --print_config cannot show of a time budget: the epochs are chosen at run time."""
    budget = duration_flag(config.time_budget_s or 0)
    recipe = (
        ", and the short-run recipe if they are few (--short_run auto)"
        if config.short_run == "auto"
        else ""
    )
    return (
        f"petseg train: time budget {budget}: a new run chooses its epochs (at most "
        f"{config.recipe.epochs}){recipe} when training starts; a resumed run keeps its own"
    )


def run_evaluate(args: argparse.Namespace) -> None:
    from petseg.evaluate import evaluate_checkpoint

    evaluate_checkpoint(EvaluateConfig(**config_values(EvaluateConfig, args)))


def config_values(kind: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags that are fields of the dataclass."""
    return {item.name: getattr(args, item.name) for item in fields(kind)}


def run_predict(args: argparse.Namespace) -> None:
    from petseg.predict import RESUME_HINT, predict

    values = config_values(PredictConfig, args)
    try:
        predict(PredictConfig(**{**values, "inputs": tuple(args.inputs)}))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(RESUME_HINT) from None


def run_serve(args: argparse.Namespace) -> None:
    from petseg.segmenter import Segmenter
    from petseg.serve import serve

    segmenter = Segmenter.load(args.model_path, args.device, args.precision, args.tta)
    serve(segmenter, args.host, args.port)


def run_export(args: argparse.Namespace) -> None:
    from petseg.export import export_onnx

    output = args.output or args.model_path.with_suffix(".onnx")
    export_onnx(args.model_path, output, data_path=args.data_path, parity_images=args.parity_images)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = parser.commands.get(args.command, parser)
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        download_if_asked(args)
        code = args.run(args)
    except PetsegError as error:
        print(f"petseg {args.command}: error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # errors.Terminated (SIGTERM) carries its own code
        detail = f": {error}" if str(error) else ""
        label = getattr(error, "label", "interrupted")
        print(f"petseg {args.command}: {label}{detail}", file=sys.stderr)
        return getattr(error, "exit_code", 130)
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "out of memory" not in str(error).lower():
            raise
        hint = "out of memory; try a smaller --batch_size or --image_size"
        print(f"petseg {args.command}: error: {hint}", file=sys.stderr)
        return 1
    return code or 0


def download_if_asked(args: argparse.Namespace) -> None:
    """--download: fetch what the dataset lacks before the command runs. Not under torchrun,
    where every process would download at once (training then says to run petseg download)."""
    if not getattr(args, "download", False) or args.data_path is None:
        return
    if "LOCAL_RANK" in os.environ:  # petseg.distributed.launched_by_torchrun, without torch
        return
    from petseg.data.loading import ensure_dataset

    ensure_dataset(args.data_path, args.mirror, download=True)


def user_message(error: PetsegError) -> str:
    """The one-line message, also for an error re-raised from a DataLoader worker.

    The worker's re-raise carries the whole worker traceback as the message; its last line is
    ``petseg.errors.PetsegError: <the original message>``.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split("PetsegError: ", 1)[-1]
    return text.splitlines()[0] if text else "unknown error"
