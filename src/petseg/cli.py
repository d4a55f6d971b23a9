"""The `petseg` command: argparse subcommands, each calling one function.

Every flag is accepted with underscores (the lab scripts' spelling) and with hyphens.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from petseg import __version__
from petseg.config import (
    ACTIVATIONS,
    DEFAULT_ACTIVATION,
    DEFAULT_AUGMENT,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLIP_GRAD,
    DEFAULT_DATA_PATH,
    DEFAULT_DECODER_WIDTHS,
    DEFAULT_DROP_PATH,
    DEFAULT_LEARNING_RATE,
    DEFAULT_NUM_WORKERS,
    DEFAULT_STEM,
    DEFAULT_UNET_ACTIVATION,
    DEFAULT_UNET_UPSAMPLE,
    DEFAULT_UNET_WIDTHS,
    INFERENCE_BATCH_SIZE,
    STEMS,
    UNET_UPSAMPLES,
    DataConfig,
    RecipeConfig,
    TrainConfig,
)
from petseg.errors import PetsegError
from petseg.schedules import COSINE_WARMUP_EPOCHS  # torch-free

MODEL_TYPES = ("unet", "resnet34_unet")  # mirrors petseg.models.MODELS without importing torch
SPLITS = ("train", "valid", "test")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # mirrors petseg.runtime.PRECISIONS
DEFAULTS = TrainConfig()
DIST_BACKENDS = ("auto", "nccl", "gloo")  # mirrors petseg.distributed without importing torch
DIST_TIMEOUT_S = 600.0
# Mirror petseg.losses.LOSSES, petseg.schedules.SCHEDULERS, petseg.train.OPTIMIZERS and
# petseg.data.transforms.AUGMENTS without importing torch (tests check they agree).
LOSSES = ("bce", "dice", "bce_dice")
SCHEDULERS = ("constant", "cosine", "onecycle")
OPTIMIZERS = ("adam", "adamw")
AUGMENTS = ("lab", "flip", "strong")
RECIPE = DEFAULTS.recipe
BACKENDS = ("torch", "onnxruntime")  # mirrors petseg.segmenter.BACKENDS without importing torch
PARITY_IMAGES = 8  # mirrors petseg.export.DEFAULT_PARITY_IMAGES


def _number(kind: Callable[[str], Any], minimum: float, strict: bool = False) -> Callable:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value < minimum or (strict and value == minimum):
            relation = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1)
positive_float = _number(float, 0.0, strict=True)
MAX_GALLERY = 100  # rows of one contact sheet; more would exceed what a PNG viewer shows well


def _gallery_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_GALLERY:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_GALLERY}, got {text}")
    return value


def _workers(text: str) -> int | None:
    """--num_workers: a count, or auto (None) for petseg.data.loading.resolve_num_workers."""
    if text == "auto":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 or auto, got {text}")
    return int(text)


def _fraction(text: str, zero: bool) -> float:
    """A float below 1, above 0 (or from 0 with `zero`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid float") from None
    above = value >= 0.0 if zero else value > 0.0
    if not above or value >= 1.0:
        bounds = ">= 0 and < 1" if zero else "between 0 and 1 (exclusive)"
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
    return value


def _probability(text: str) -> float:
    return _fraction(text, zero=False)


def _drop_rate(text: str) -> float:
    return _fraction(text, zero=True)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ints"
        ) from None
    if any(width < 2 or width % 2 for width in widths):
        raise argparse.ArgumentTypeError(f"widths must be even numbers >= 2, got {text}")
    return widths


def _flag(parser: argparse.ArgumentParser, name: str, *extra: str, **kwargs: Any) -> None:
    """Add --name with both spellings, e.g. --data_path and --data-path."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}", *extra])
    parser.add_argument(*spellings, dest=name, **kwargs)


def _add_precision_flag(parser: argparse.ArgumentParser, default: str) -> None:
    _flag(
        parser,
        "precision",
        choices=PRECISIONS,
        default=default,
        help="autocast precision: auto = bf16 on GPUs and CPUs with native bf16, fp16 on older "
        f"GPUs, else fp32 (default {default})",
    )


def _add_largest_component_flag(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "largest_component",
        action="store_true",
        help="keep only the largest connected pet region of each mask, dropping stray specks "
        "(on a photo of two pets it drops the smaller one)",
    )


def _add_tta_flag(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "tta",
        action="store_true",
        help="test-time augmentation: average the probabilities of each image and its "
        "horizontal mirror (twice the compute)",
    )


def _add_runtime_flags(
    parser: argparse.ArgumentParser, batch_size: int | None, batch_help: str
) -> None:
    _flag(parser, "batch_size", type=positive_int, default=batch_size, help=batch_help)
    _flag(
        parser,
        "num_workers",
        type=_workers,
        default=None,
        metavar="N",
        help="data loading processes, or auto (the default): 0 when training on a CPU from the "
        f"decoded-image cache, else {DEFAULT_NUM_WORKERS}",
    )
    _flag(
        parser,
        "device",
        choices=DEVICES,
        default="auto",
        help="auto = CUDA when available, else CPU (default auto)",
    )


def _add_skip_bad_flag(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "skip_bad",
        action="store_true",
        help="leave out samples that cannot be used (missing, undecodable, mismatched) with a "
        "warning each, instead of stopping before the run starts",
    )


def _add_compile_flag(parser: argparse.ArgumentParser, what: str) -> None:
    _flag(
        parser,
        "compile",
        action="store_true",
        help=f"torch.compile the model for {what}. On a 2-core CPU (ResNet34-UNet, 128 px) "
        "training was no faster and inference 1.3x, after 20-60 s of compiling at the start "
        "(docs/speed.md)",
    )


def _add_cache_flags(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "no_cache",
        action="store_true",
        help="decode every image every epoch instead of reading the train and valid splits from "
        "the decoded-image cache (images decoded and resized once, kept as uint8 .npy files)",
    )
    _flag(
        parser,
        "cache_dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the decoded-image cache goes (default DATA_PATH/.petseg-cache, or "
        "~/.cache/petseg when the data folder is read-only); rebuilt when the size or the files "
        "change, safe to delete",
    )


def _add_data_flags(
    parser: argparse.ArgumentParser, default: Path | None, download_flag: bool = True
) -> None:
    _flag(
        parser,
        "data_path",
        type=Path,
        default=default,
        help=(
            "dataset folder with images/ and annotations/; downloaded when it is the default "
            "folder, or is empty, or with --download"
            if download_flag
            else "folder to download the dataset into (what it already holds is kept)"
        )
        + (f" (default {default})" if default else ""),
    )
    if download_flag:
        _flag(
            parser,
            "download",
            action="store_true",
            help="download what the dataset at --data_path lacks (about 800 MB) into that folder, "
            "whatever its name",
        )
    _flag(
        parser,
        "mirror",
        default=None,
        metavar="URL",
        help="base URL serving images.tar.gz and annotations.tar.gz instead of Oxford's",
    )


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for `torchrun ... -m petseg train`; a single process ignores them."""
    _flag(
        parser,
        "dist_backend",
        choices=DIST_BACKENDS,
        default="auto",
        help="under torchrun: auto = nccl on CUDA, gloo on CPU (default auto)",
    )
    _flag(
        parser,
        "dist_timeout",
        type=positive_float,
        default=DIST_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: how long to wait for the other processes to join, and in any "
        f"collective step, before failing (default {DIST_TIMEOUT_S:g})",
    )
    _flag(
        parser,
        "sync_batchnorm",
        action="store_true",
        help="under torchrun on GPUs: BatchNorm statistics over the whole batch of all processes",
    )


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """The training recipe (config.RecipeConfig); the lab report's is `--loss bce --optimizer
    adam --weight_decay 0 --scheduler constant --learning-rate 1e-4 --augment lab --clip_grad 0`."""
    recipe = parser.add_argument_group(
        "recipe",
        "petseg's default recipe; the lab report's is --loss bce --optimizer adam "
        "--weight_decay 0 --scheduler constant --learning-rate 1e-4 --augment lab --clip_grad 0",
    )
    _flag(
        recipe,
        "loss",
        choices=LOSSES,
        default=RECIPE.loss,
        help=f"bce, soft Dice (per image), or their sum (default {RECIPE.loss})",
    )
    _flag(
        recipe,
        "optimizer",
        choices=OPTIMIZERS,
        default=RECIPE.optimizer,
        help=f"adamw = Adam with decoupled weight decay (default {RECIPE.optimizer})",
    )
    _flag(
        recipe,
        "weight_decay",
        type=_number(float, 0.0),
        default=RECIPE.weight_decay,
        help=f"weight decay (default {RECIPE.weight_decay:g})",
    )
    _flag(
        recipe,
        "scheduler",
        choices=SCHEDULERS,
        default=RECIPE.scheduler,
        help="learning rate per step: constant; cosine (linear warmup, then cosine decay to 1%% "
        "of the peak); onecycle (torch's OneCycleLR curve, warmup over 30%% of the steps unless "
        "--warmup_epochs says otherwise) "
        f"(default {RECIPE.scheduler})",
    )
    _flag(
        recipe,
        "warmup_epochs",
        type=_number(float, 0.0),
        default=RECIPE.warmup_epochs,
        help="epochs of rising rate: the cosine schedule's linear warmup (default "
        f"{COSINE_WARMUP_EPOCHS:g}) or the onecycle schedule's rise to its peak (default 30%% "
        "of the training)",
    )
    _flag(
        recipe,
        "augment",
        choices=AUGMENTS,
        default=RECIPE.augment,
        help="lab: the lab report's resize to 1.12x, random crop and flip; flip: the whole image, "
        "flipped half the time; strong: the whole image, flipped, randomly scaled, rotated and shifted, and "
        "colour jitter "
        "(default: "
        + ", ".join(f"{level} for {model}" for model, level in DEFAULT_AUGMENT.items())
        + ")",
    )
    _flag(
        recipe,
        "clip_grad",
        type=_number(float, 0.0),
        default=RECIPE.clip_grad,
        metavar="MAX_NORM",
        help="scale the gradients down so that their global L2 norm is at most MAX_NORM before "
        "each optimizer step; 0 = no clipping (default: "
        + ", ".join(f"{norm:g} for {model}" for model, norm in DEFAULT_CLIP_GRAD.items())
        + ")",
    )
    recipe.add_argument(
        "--tune_threshold",
        "--tune-threshold",
        dest="tune_threshold",
        action="store_true",
        default=RECIPE.tune_threshold,
        help="after training, store in the checkpoint the decision threshold (0.30-0.70) that "
        "scores best on the valid split; evaluate and predict use it (default off: on a "
        "small valid split the choice is noise)",
    )
    recipe.add_argument(
        "--no_tune_threshold",
        "--no-tune-threshold",
        dest="tune_threshold",
        action="store_false",
        help="keep the threshold at 0.5 (the default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petseg",
        description="Pet vs background segmentation on Oxford-IIIT Pet (UNet, ResNet34-UNet).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"petseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    download = commands.add_parser(
        "download", help="download and extract the dataset", allow_abbrev=False
    )
    _add_data_flags(download, DEFAULT_DATA_PATH, download_flag=False)

    check = commands.add_parser(
        "check", help="scan the dataset for unusable or unusual files", allow_abbrev=False
    )
    _flag(
        check,
        "data_path",
        type=Path,
        default=DEFAULT_DATA_PATH,
        help=f"dataset folder to scan (default {DEFAULT_DATA_PATH})",
    )

    train = commands.add_parser(
        "train", help="train a model (resumes when --model_path exists)", allow_abbrev=False
    )
    _add_data_flags(train, DEFAULT_DATA_PATH)
    _flag(
        train,
        "model_type",
        choices=MODEL_TYPES,
        default=None,
        help="architecture (default unet; when resuming, the checkpoint's)",
    )
    _flag(
        train,
        "model_path",
        type=Path,
        default=None,
        help="best checkpoint; NAME.last.pt and NAME.history.csv go beside it "
        "(default runs/MODEL_TYPE.pt)",
    )
    _flag(
        train,
        "epochs",
        type=positive_int,
        default=DEFAULTS.epochs,
        help=f"total number of epochs, counting resumed ones (default {DEFAULTS.epochs})",
    )
    _flag(
        train,
        "learning_rate",
        "--learning-rate",
        "-lr",
        type=positive_float,
        default=None,
        help="peak learning rate of the schedule (the lab report used 1e-4, constant; default: "
        + ", ".join(f"{rate:g} for {model}" for model, rate in DEFAULT_LEARNING_RATE.items())
        + "; a resumed run keeps its own)",
    )
    _flag(
        train,
        "image_size",
        type=_number(int, 32),
        default=DEFAULTS.data.image_size,
        help=f"square training size in pixels (default {DEFAULTS.data.image_size})",
    )
    _flag(
        train,
        "seed",
        type=int,
        default=DEFAULTS.seed,
        help=f"random seed (default {DEFAULTS.seed})",
    )
    _flag(
        train,
        "unet_widths",
        type=_widths,
        default=DEFAULT_UNET_WIDTHS,
        metavar="W1,W2,...",
        help=f"unet channel widths per level (default {','.join(map(str, DEFAULT_UNET_WIDTHS))})",
    )
    _flag(
        train,
        "unet_upsample",
        choices=UNET_UPSAMPLES,
        default=None,
        help="unet decoder upsampling: nearest (a nearest-neighbour resize keeping the channels) "
        "or transpose (ConvTranspose2d halving them, the classic UNet's); default "
        f"{DEFAULT_UNET_UPSAMPLE}",
    )
    _flag(
        train,
        "decoder_widths",
        type=_widths,
        default=None,
        metavar="W1,...,W5",
        help="resnet34_unet decoder block widths, deepest first (default "
        f"{','.join(map(str, DEFAULT_DECODER_WIDTHS))})",
    )
    _flag(
        train,
        "stem",
        choices=STEMS,
        default=None,
        help="resnet34_unet encoder stem: deep (three 3x3 convs, default) or classic (one 7x7 "
        "conv, as in torchvision and smp)",
    )
    _flag(
        train,
        "activation",
        choices=ACTIVATIONS,
        default=None,
        help="activation in the encoder and the decoder: relu (the classic UNet's, torchvision's "
        f"and smp's) or silu; default {DEFAULT_ACTIVATION} for resnet34_unet, "
        f"{DEFAULT_UNET_ACTIVATION} for unet",
    )
    _flag(
        train,
        "drop_path",
        type=_drop_rate,
        default=None,
        metavar="RATE",
        help="resnet34_unet: stochastic depth in the encoder, the probability of skipping the "
        "last residual block's branch per image in training (0 at the first block, linear in "
        f"between; default {DEFAULT_DROP_PATH}, 0 turns it off)",
    )
    train.add_argument(
        "--deep_supervision",
        "--deep-supervision",
        action="store_true",
        help="also train a 1x1 head on each decoder block but the last (their loss weighs "
        "0.5); inference uses only the main head",
    )
    _add_recipe_flags(train)
    _add_precision_flag(train, DEFAULTS.precision)
    _add_compile_flag(train, "training")
    _add_skip_bad_flag(train)
    _add_cache_flags(train)
    _add_runtime_flags(
        train,
        None,
        "images per batch and process: under torchrun each step uses batch_size x processes "
        "(default: "
        + ", ".join(f"{size} for {model}" for model, size in DEFAULT_BATCH_SIZE.items())
        + ")",
    )
    _add_distributed_flags(train)

    evaluate = commands.add_parser(
        "evaluate", help="score a checkpoint on a split", allow_abbrev=False
    )
    _flag(evaluate, "model_path", type=Path, required=True, help="checkpoint to evaluate")
    _add_data_flags(evaluate, DEFAULT_DATA_PATH)
    _flag(evaluate, "split", choices=SPLITS, default="test", help="split to score (default test)")
    _flag(
        evaluate,
        "output",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="also write the scores and per-image Dice as JSON",
    )
    _flag(
        evaluate,
        "gallery",
        type=_gallery_size,
        default=0,
        metavar="N",
        help=f"also draw the N worst images (by per-image Dice, N <= {MAX_GALLERY}) as a PNG "
        "contact sheet: image, ground truth, prediction, error map",
    )
    _flag(
        evaluate,
        "gallery_path",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="where --gallery goes (default OUTPUT_STEM.gallery.png beside --output, "
        "else NAME.SPLIT.gallery.png beside the checkpoint)",
    )
    _flag(
        evaluate,
        "threshold",
        type=_probability,
        default=None,
        help="probability threshold (default: the checkpoint's, tuned on the valid split when "
        "trained with --tune_threshold, else 0.5)",
    )
    _add_tta_flag(evaluate)
    _add_largest_component_flag(evaluate)
    _add_precision_flag(evaluate, "auto")
    _flag(
        evaluate,
        "model_type",
        choices=MODEL_TYPES,
        default=None,
        help="optional: checked against the checkpoint's",
    )
    _add_compile_flag(evaluate, "inference")
    _add_skip_bad_flag(evaluate)
    _add_runtime_flags(
        evaluate, INFERENCE_BATCH_SIZE, f"images per batch (default {INFERENCE_BATCH_SIZE})"
    )

    predict = commands.add_parser(
        "predict",
        help="write PNG masks (and overlays, cut-outs) for images or a split",
        allow_abbrev=False,
    )
    predict.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="image files or folders (default: the split of --data_path)",
    )
    _flag(
        predict,
        "model_path",
        type=Path,
        required=True,
        help="checkpoint to use, or a .onnx file from petseg export",
    )
    _flag(
        predict,
        "backend",
        choices=BACKENDS,
        default=None,
        help="what runs the model: torch (a checkpoint) or onnxruntime (a .onnx file, needs "
        'pip install "petseg[onnx]"); default: onnxruntime for a .onnx file, else torch',
    )
    _add_data_flags(predict, None)
    _flag(
        predict,
        "split",
        choices=SPLITS,
        default="test",
        help="split of --data_path to predict when no PATH is given (default test)",
    )
    _flag(
        predict,
        "save_dir",
        type=Path,
        default=Path("predictions"),
        help="folder for the masks; never an input folder (default predictions)",
    )
    _flag(
        predict,
        "threshold",
        type=_probability,
        default=None,
        help="probability threshold (default: the checkpoint's, tuned on the valid split when "
        "trained with --tune_threshold, else 0.5)",
    )
    _flag(
        predict,
        "overlay",
        action="store_true",
        help="also write NAME_overlay.png: the image with the predicted pet tinted",
    )
    _flag(
        predict,
        "cutout",
        action="store_true",
        help="also write NAME_cutout.png: RGBA, the pet on a transparent background",
    )
    _flag(
        predict,
        "skip_bad",
        action="store_true",
        help="leave out images that cannot be read (not an image, truncated, or missing from "
        "the split) with a warning each, instead of stopping at the first",
    )
    _add_tta_flag(predict)
    _add_largest_component_flag(predict)
    _add_precision_flag(predict, "auto")
    _flag(
        predict,
        "model_type",
        choices=MODEL_TYPES,
        default=None,
        help="optional: checked against the checkpoint's",
    )
    _add_compile_flag(predict, "inference")
    _add_runtime_flags(
        predict, INFERENCE_BATCH_SIZE, f"images per batch (default {INFERENCE_BATCH_SIZE})"
    )
    _add_scale_flags(predict)
    _add_serve_parser(commands)

    export = commands.add_parser(
        "export",
        help="write a checkpoint's model as ONNX (dynamic batch, height, width) after a parity "
        "check against PyTorch",
        description="Export to ONNX (input 'images' (N, 3, H, W) float32, normalized as the "
        "checkpoint says; output 'logits' (N, 1, H, W)), with the image size, normalization, "
        "threshold and model type in the file's metadata. Before writing, ONNX Runtime is run "
        "against PyTorch (fp32) at the checkpoint's image size and at an odd non-square size: "
        "parity holds when max |logit diff| <= 1e-3 and the masks at the threshold agree at "
        "every pixel whose probability is more than 1e-3 from the threshold. Otherwise nothing "
        'is written and the exit code is 2. Needs pip install "petseg[onnx]".',
        allow_abbrev=False,
    )
    _flag(export, "model_path", type=Path, required=True, help="checkpoint to export")
    _flag(
        export,
        "output",
        type=Path,
        default=None,
        metavar="FILE.onnx",
        help="where the ONNX model goes (default MODEL_PATH with the suffix .onnx)",
    )
    _flag(
        export,
        "data_path",
        type=Path,
        default=None,
        help="check parity on test-split images of this dataset (default: on random inputs)",
    )
    _flag(
        export,
        "parity_images",
        type=positive_int,
        default=PARITY_IMAGES,
        metavar="N",
        help=f"how many images (or random inputs) the parity check runs (default {PARITY_IMAGES})",
    )
    return parser


def _add_scale_flags(predict: argparse.ArgumentParser) -> None:
    """predict over folders of any size: split across processes or machines, and resume."""
    _flag(
        predict,
        "num_parts",
        type=positive_int,
        default=1,
        metavar="N",
        help="split the images into N parts by a hash of their names, one per process or "
        "machine (default 1); see docs/use-a-model.md",
    )
    _flag(
        predict,
        "part_id",
        type=_number(int, 0),
        default=0,
        metavar="K",
        help="which part this process predicts, 0 to N-1 (default 0)",
    )
    _flag(
        predict,
        "skip_existing",
        action="store_true",
        help="leave alone the images whose outputs all exist in --save_dir: rerun an "
        "interrupted command with it to continue where it stopped",
    )


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="a local web page and HTTP API that segment the photos you drop on it",
        description="Serve a page (pick or drop a photo: mask, overlay and cut-out) and its "
        "API: POST /predict with the image file as the body answers the mask PNG "
        "(?output=overlay or ?output=cutout for the others); GET /health describes the "
        "model. See docs/use-a-model.md.",
        allow_abbrev=False,
    )
    _flag(
        serve,
        "model_path",
        type=Path,
        required=True,
        help="checkpoint to serve, or a .onnx file from petseg export",
    )
    _flag(
        serve,
        "host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it "
        "to the network)",
    )
    _flag(
        serve,
        "port",
        type=_number(int, 0),
        default=8000,
        help="port to listen on, 0 for any free one (default 8000)",
    )
    _flag(serve, "device", choices=DEVICES, default="auto", help="auto = CUDA when available")
    _add_precision_flag(serve, "auto")
    _add_tta_flag(serve)


def run_serve(args: argparse.Namespace) -> None:
    from petseg.segmenter import Segmenter
    from petseg.serve import serve

    if not 0 <= args.port <= 65535:
        raise PetsegError(f"--port must be from 0 to 65535, got {args.port}")
    segmenter = Segmenter.load(args.model_path, args.device, args.precision, args.tta)
    serve(segmenter, args.host, args.port)


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


def _model_kwargs(
    model_type: str,
    unet_widths: tuple[int, ...],
    decoder_widths: tuple[int, ...] | None,
    deep_supervision: bool = False,
    stem: str | None = None,
    activation: str | None = None,
    drop_path: float | None = None,
    unet_upsample: str | None = None,
) -> dict[str, Any]:
    """Constructor arguments for the chosen model from the architecture flags."""
    if model_type != "unet" and unet_upsample is not None:
        raise PetsegError("--unet_upsample applies to --model_type unet only")
    if model_type == "unet":
        for given, flag in ((decoder_widths is not None, "--decoder_widths"),
                            (stem is not None, "--stem"),
                            (drop_path is not None, "--drop_path")):  # fmt: skip
            if given:
                raise PetsegError(f"{flag} applies to --model_type resnet34_unet only")
        # the upsampling always (older checkpoints, which lack it, had transpose; see
        # petseg.checkpoint.LEGACY_MODEL_KWARGS)
        # the activation and deep supervision only when set, so checkpoints without them load
        # as the classic ReLU UNet without auxiliary heads
        return (
            {"widths": list(unet_widths), "upsample": unet_upsample or DEFAULT_UNET_UPSAMPLE}
            | ({"activation": activation} if activation is not None else {})
            | ({"deep_supervision": True} if deep_supervision else {})
        )
    widths = DEFAULT_DECODER_WIDTHS if decoder_widths is None else decoder_widths
    if len(widths) != len(DEFAULT_DECODER_WIDTHS):
        raise PetsegError(
            f"--decoder_widths needs {len(DEFAULT_DECODER_WIDTHS)} values (one per decoder block), "
            f"got {len(widths)}: {','.join(map(str, widths))}"
        )
    # the stem, the activation and drop path always (older checkpoints, which lack them, had
    # the 7x7 stem, ReLU or no drop path, see petseg.checkpoint.LEGACY_MODEL_KWARGS); deep
    # supervision only when set, so checkpoints without it load as before
    return {
        "decoder_widths": list(widths),
        "stem": stem or DEFAULT_STEM,
        "activation": activation or DEFAULT_ACTIVATION,
        "drop_path": DEFAULT_DROP_PATH if drop_path is None else drop_path,
    } | ({"deep_supervision": True} if deep_supervision else {})


def run_train(args: argparse.Namespace) -> None:
    from petseg.config import ModelConfig
    from petseg.distributed import world_session
    from petseg.runlock import run_lock
    from petseg.train import fit, resume_hint

    model_type = args.model_type or "unet"
    kwargs = _model_kwargs(
        model_type,
        args.unet_widths,
        args.decoder_widths,
        args.deep_supervision,
        args.stem,
        args.activation,
        args.drop_path,
        args.unet_upsample,
    )
    config = TrainConfig(
        data=DataConfig(
            args.data_path,
            args.image_size,
            args.num_workers,
            args.mirror,
            args.skip_bad,
            cache=not args.no_cache,
            cache_dir=args.cache_dir,
        ),
        model=ModelConfig(model_type, kwargs),
        model_path=args.model_path or Path("runs") / f"{model_type}.pt",
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        device=args.device,
        seed=args.seed,
        precision=args.precision,
        recipe=RecipeConfig(
            loss=args.loss,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            scheduler=args.scheduler,
            warmup_epochs=args.warmup_epochs,
            augment=args.augment,
            clip_grad=args.clip_grad,
            tune_threshold=args.tune_threshold,
        ),
        compile=args.compile,
    )
    session = world_session(
        args.device,
        backend=args.dist_backend,
        timeout_s=args.dist_timeout,
        sync_batchnorm=args.sync_batchnorm,
    )
    try:
        with session as world, run_lock(config.model_path, enabled=world.is_main):
            fit(config, model_type_given=args.model_type is not None, world=world)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (errors.Terminated): keep which
        interrupt.args = (resume_hint(config.model_path),)
        raise


def run_evaluate(args: argparse.Namespace) -> None:
    from petseg.evaluate import evaluate_checkpoint

    evaluate_checkpoint(
        args.model_path,
        args.data_path,
        split=args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device_name=args.device,
        mirror=args.mirror,
        output=args.output,
        skip_bad=args.skip_bad,
        model_type=args.model_type,
        tta=args.tta,
        precision=args.precision,
        gallery=args.gallery,
        gallery_path=args.gallery_path,
        threshold=args.threshold,
        compile=args.compile,
        largest_component=args.largest_component,
    )


def run_predict(args: argparse.Namespace) -> None:
    from petseg.config import PredictConfig
    from petseg.predict import RESUME_HINT, predict

    config = PredictConfig(
        model_path=args.model_path,
        inputs=tuple(args.inputs),
        data_path=args.data_path,
        split=args.split,
        mirror=args.mirror,
        save_dir=args.save_dir,
        overlays=args.overlay,
        cutouts=args.cutout,
        threshold=args.threshold,
        tta=args.tta,
        largest_component=args.largest_component,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        model_type=args.model_type,
        compile=args.compile,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        skip_bad=args.skip_bad,
        skip_existing=args.skip_existing,
        num_parts=args.num_parts,
        part_id=args.part_id,
    )
    try:
        predict(config)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(RESUME_HINT) from None


def run_export(args: argparse.Namespace) -> None:
    from petseg.export import export_onnx

    export_onnx(
        args.model_path,
        args.output or args.model_path.with_suffix(".onnx"),
        data_path=args.data_path,
        parity_images=args.parity_images,
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "check": run_check,
    "download": run_download,
    "train": run_train,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "export": run_export,
    "serve": run_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        download_if_asked(args)
        code = COMMANDS[args.command](args)
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
        print(
            f"petseg {args.command}: error: out of memory; try a smaller --batch_size "
            "or --image_size",
            file=sys.stderr,
        )
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
