"""The --help text of petseg's flags and commands, kept apart so cli.py reads as the parser's
structure. Say why in one line; measured numbers live in docs/, not here."""

from __future__ import annotations

from petseg.budget import duration_flag
from petseg.config import (
    CPU_TIME_BUDGET_S,
    DEFAULT_NUM_WORKERS,
    DIST_TIMEOUT_S,
    PRESETS,
    flag_default,
)


def short_run_help() -> str:
    """--short_run's help, from the presets' ShortRun settings."""
    recipes = "; ".join(
        f"{model_type}: up to {preset.short_run.max_epochs} epochs, "
        + " ".join(
            f"--{flag} {value:g}" if isinstance(value, float) else f"--{flag} {value}"
            for flag, value in preset.short_run.settings
        )
        for model_type, preset in PRESETS.items()
        if preset.short_run is not None
    )
    return (
        "the preset's recipe for short runs, where it reaches a better model sooner than the full "
        f"one ({recipes}; flags given win): auto (default) for a run of at most that many epochs "
        "(with --time_budget: when the budget buys no more of the full recipe's), on, or off"
    )


# The --help of each flag; where a model type's preset sets it, its default is added.
HELP = {
    "data_path": "dataset folder (images/, annotations/); downloaded if default, empty, or asked",
    "download": "download what the dataset at --data_path lacks (about 800 MB) into that folder",
    "mirror": "base URL serving images.tar.gz and annotations.tar.gz instead of Oxford's",
    "device": "auto = CUDA when available, else CPU (default auto)",
    "precision": "autocast: auto (default) = bf16 where native, fp16 on older GPUs, else fp32",
    "compile": "torch.compile the model; it pays off on GPUs (docs/speed.md)",
    "num_workers": f"loaders, or auto: 0 on a CPU reading the cache, else {DEFAULT_NUM_WORKERS}",
    "skip_bad": "leave out unusable samples (missing, undecodable, mismatched), warning of each",
    "threshold": "decision threshold (default the checkpoint's: 0.5, or --tune_threshold's)",
    "tta": "average the probabilities of each image and its mirror image (twice the compute)",
    "largest_component": "keep each mask's largest connected region (drops specks, and a 2nd pet)",
    "model_path": "best checkpoint, NAME.last.pt beside it (default runs/MODEL_TYPE.pt); resumed",
    "no_cache": "decode every image every epoch instead of reading the decoded-image cache",
    "cache_dir": "decoded-image cache folder (default DATA_PATH/.petseg-cache, else ~/.cache)",
    "print_config": "print the resolved config as JSON and exit without training",
    "dist_backend": "auto = nccl on CUDA, gloo on CPU (default auto)",
    "dist_timeout": f"the wait for the other processes, in any step (default {DIST_TIMEOUT_S:g})",
    "sync_batchnorm": "on GPUs: BatchNorm statistics over the whole batch of all processes",
    "model_type": "architecture (default unet; when resuming, the checkpoint's)",
    "unet_widths": "unet channel widths per level",
    "unet_upsample": "unet decoder upsampling: nearest, or transpose (the classic UNet's)",
    "decoder_widths": "resnet34_unet decoder block widths, deepest first",
    "stem": "resnet34_unet encoder stem: deep (three 3x3 convs) or classic (one 7x7 conv)",
    "activation": "in the encoder and the decoder: relu (the classic UNet's) or silu",
    "drop_path": "resnet34_unet stochastic depth: the last encoder block's rate; 0 turns it off",
    "deep_supervision": "also train a 1x1 head on each decoder block but the last (loss x0.5)",
    "image_size": "square training size in pixels; evaluate and predict use it too",
    "epochs": "total number of epochs, counting resumed ones; with --time_budget, the most it "
    "may choose",
    "time_budget": "finish training, validation and checkpoints within DURATION (90s, 30m, 2h, "
    "1h30m): a measurement of a few steps before epoch 1 chooses the epochs, at most --epochs "
    "(default the preset's); a resumed run keeps them. Default on a CPU without --epochs: "
    f"{duration_flag(CPU_TIME_BUDGET_S)}; on a GPU: none",
    "batch_size": "images per batch and process (torchrun: a step takes batch_size x processes)",
    "learning_rate": "peak learning rate of the schedule, at most 1",
    "weight_decay": "weight decay, at most 1",
    "warmup_epochs": "epochs of rising rate: the cosine schedule's linear warmup (default 1) "
    "or the onecycle schedule's rise (default 30%% of the steps)",
    "clip_grad": "clip the gradients' global L2 norm to MAX_NORM before each step; 0 = never",
    "progressive": "train the first SHARE of the epochs at half --image_size (each batch "
    "downscaled 2x after augmentation), the rest, and always the last, at full size; 0 = never",
    "short_run": short_run_help(),
    "loss": "bce, soft Dice (per image), or their sum",
    "optimizer": "adamw = Adam with decoupled weight decay",
    "scheduler": "learning rate per step: constant; cosine (linear warmup, then decay to 1%% "
    "of the peak); onecycle (torch's OneCycleLR curve)",
    "augment": "lab: the lab report's resize to 1.12x, random crop and flip; flip: the whole "
    "image, flipped; strong: the whole image, flipped, scaled, rotated, shifted, colour jitter",
    "tune_threshold": "after training, store the threshold (0.3-0.7) best on the valid split",
    "no_tune_threshold": "keep the threshold at 0.5",
    "seed": f"random seed (default {flag_default('seed')})",
}
RECIPE_HELP = (
    "defaults: the model type's preset (why: docs/experiments.md), or a resumed run's own. The "
    "lab report's recipe is --loss bce --optimizer adam --weight_decay 0 --scheduler constant "
    "--learning-rate 1e-4 --augment lab --clip_grad 0"
)
EXPORT_HELP = (
    "Write ONNX (images (N, 3, H, W) in, logits (N, 1, H, W) out, metadata) once ONNX Runtime "
    "matches PyTorch at two sizes (logits within 1e-3, masks equal away from the threshold); "
    "else nothing is written, exit 2. Needs petseg[onnx]."
)
SERVE_HELP = (
    "A page (drop a photo: mask, overlay, cut-out) and its API: POST /predict with the image as "
    "the body answers the mask PNG (?output=overlay|cutout); GET /health. docs/use-a-model.md."
)
