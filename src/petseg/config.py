"""Run configuration: frozen dataclasses, the default recipe of each model type (PRESETS), and
the one resolution of `petseg train` flags over a preset or a resumed run's config.

Torch-free, so the command line can build its parser and print a config without loading torch.
Why each default is what it is: docs/experiments.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from petseg.budget import duration_flag, low_res_epochs, plural
from petseg.choices import MODEL_TYPES
from petseg.errors import PetsegError

DEFAULT_DATA_PATH = Path("data/oxford-iiit-pet")
DEFAULT_MODEL_TYPE = "unet"
INFERENCE_BATCH_SIZE = 16  # images per batch for evaluate and predict, which do not learn
# Data loading processes when --num_workers is auto, except a CPU run reading the decoded-image
# cache, which loads in the main process (petseg.data.loading.resolve_num_workers).
DEFAULT_NUM_WORKERS = 2
DIST_TIMEOUT_S = 600.0  # under torchrun: the wait for the other processes, and in any collective
PARITY_IMAGES = 8  # images (or random inputs) petseg export checks ONNX against PyTorch on


@dataclass(frozen=True)
class UNetConfig:
    """petseg.models.UNet's constructor arguments."""

    model_type: ClassVar[str] = "unet"
    widths: tuple[int, ...]  # channels per level, shallowest first
    upsample: str  # petseg.choices.UPSAMPLES
    activation: str  # petseg.choices.ACTIVATIONS
    deep_supervision: bool  # a 1x1 head on each decoder block but the last, in training


@dataclass(frozen=True)
class ResNet34UNetConfig:
    """petseg.models.ResNet34UNet's constructor arguments."""

    model_type: ClassVar[str] = "resnet34_unet"
    decoder_widths: tuple[int, ...]  # one per decoder block, deepest first
    stem: str  # petseg.choices.STEMS
    activation: str  # petseg.choices.ACTIVATIONS
    drop_path: float  # stochastic depth: the last encoder block's rate, in training
    deep_supervision: bool


ModelConfig = UNetConfig | ResNet34UNetConfig
MODEL_CONFIGS: dict[str, type[UNetConfig] | type[ResNet34UNetConfig]] = {
    "unet": UNetConfig,
    "resnet34_unet": ResNet34UNetConfig,
}


@dataclass(frozen=True)
class RecipeConfig:
    """How the model learns. The lab report's recipe is `--loss bce --optimizer adam
    --weight_decay 0 --scheduler constant --learning-rate 1e-4 --augment lab --clip_grad 0`."""

    image_size: int  # square training size in pixels; evaluate and predict use it too
    epochs: int  # in all, counting resumed ones
    batch_size: int  # per process under torchrun
    learning_rate: float  # the schedule's peak
    loss: str  # petseg.choices.LOSSES
    optimizer: str  # petseg.choices.OPTIMIZERS
    weight_decay: float
    scheduler: str  # petseg.choices.SCHEDULERS
    warmup_epochs: float | None  # None: the schedule's own (petseg.schedules)
    augment: str  # petseg.choices.AUGMENTS
    clip_grad: float  # the gradients' largest global L2 norm before each step; 0: no clipping
    tune_threshold: bool  # choose the decision threshold on the valid split after training
    # The share of the epochs, the first ones, that train at half image_size (each augmented
    # batch downscaled 2x): cheaper epochs, by how much depends on the batch and the device.
    progressive: float = 0.0

    @property
    def low_res_epochs(self) -> int:
        """How many of the first epochs train at half image_size (petseg.budget)."""
        return low_res_epochs(self.progressive, self.epochs)


@dataclass(frozen=True)
class ShortRun:
    """What a preset changes for a run too short for its full recipe: at most `max_epochs`
    epochs, where larger batches, half-size epochs and less regularization reach a better model
    sooner (docs/experiments.md, "Time to a good model"). `settings`: (flag, value) pairs, each
    applied unless its flag is given."""

    max_epochs: int
    settings: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    recipe: RecipeConfig
    short_run: ShortRun | None = None


# The default recipe of each model type; every value was kept because it scored better on the
# sample than the alternatives tried (docs/experiments.md).
PRESETS: dict[str, Preset] = {
    "unet": Preset(
        UNetConfig(
            widths=(64, 128, 256, 512), upsample="nearest", activation="relu",
            deep_supervision=False,
        ),
        RecipeConfig(
            image_size=256, epochs=50, batch_size=8, learning_rate=5e-4, loss="bce_dice",
            optimizer="adamw", weight_decay=1e-2, scheduler="onecycle", warmup_epochs=None,
            augment="lab", clip_grad=1.0, tune_threshold=False,
        ),
    ),
    "resnet34_unet": Preset(
        ResNet34UNetConfig(
            decoder_widths=(256, 128, 64, 32, 16), stem="deep", activation="silu",
            drop_path=0.1, deep_supervision=False,
        ),
        RecipeConfig(
            image_size=256, epochs=50, batch_size=4, learning_rate=1e-3, loss="bce_dice",
            optimizer="adamw", weight_decay=1e-2, scheduler="onecycle", warmup_epochs=None,
            augment="strong", clip_grad=0.5, tune_threshold=False,
        ),
        ShortRun(
            max_epochs=20,
            settings=(("batch_size", 8), ("progressive", 0.5), ("drop_path", 0.0), ("augment", "flip")),
        ),
    ),
}  # fmt: skip
# A new CPU run given neither --epochs nor --time_budget: the presets take most of a day there.
CPU_TIME_BUDGET_S = 2 * 3600.0


@dataclass(frozen=True)
class DataConfig:
    data_path: Path = DEFAULT_DATA_PATH
    num_workers: int | None = None  # None: petseg.data.loading.resolve_num_workers chooses
    mirror: str | None = None  # base URL to download the archives from instead of Oxford's
    skip_bad: bool = False  # leave unusable samples out instead of stopping
    cache: bool = True  # read train/valid from the decoded-image cache (petseg.data.cache)
    cache_dir: Path | None = None  # where caches go; None: DATA/.petseg-cache


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the checkpoint stores it (petseg.checkpoint)."""

    model: ModelConfig
    recipe: RecipeConfig
    model_path: Path  # the best checkpoint; NAME.last.pt and NAME.history.csv go beside it
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 42
    precision: str = "auto"  # autocast, petseg.runtime.resolve_precision
    device: str = "auto"
    compile: bool = False  # torch.compile the training model
    # Seconds the run was to finish in: a new run chose recipe.epochs (at most the ones it was
    # given) from a measurement before its first epoch (petseg.budget); a resumed one keeps them.
    time_budget_s: float | None = None
    # Whether the preset's short-run recipe (ShortRun) is in the settings: on, off, or auto
    # while a new run's time budget has yet to choose (petseg.train.settle_short_run).
    short_run: str = "off"


@dataclass(frozen=True)
class EvaluateConfig:
    """`petseg evaluate`: score a checkpoint on a split."""

    model_path: Path
    data_path: Path = DEFAULT_DATA_PATH
    split: str = "test"
    threshold: float | None = None  # None: the checkpoint's
    tta: bool = False  # average each image's and its mirror's probabilities
    largest_component: bool = False  # score each mask's largest connected region only
    output: Path | None = None  # also write the scores as JSON
    gallery: int = 0  # also draw the N worst images
    gallery_path: Path | None = None  # None: beside the output, else beside the checkpoint
    model_type: str | None = None  # checked against the checkpoint's when given
    batch_size: int = INFERENCE_BATCH_SIZE
    num_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    skip_bad: bool = False
    mirror: str | None = None


@dataclass(frozen=True)
class PredictConfig:
    """One `petseg predict` run: the model, the images, and what goes where.

    inputs: image files or folders; without them, the `split` of `data_path`. overlays,
    cutouts: also write NAME_overlay.png and NAME_cutout.png. threshold: None keeps the
    model's. num_parts, part_id: keep only part `part_id` of the images (see
    petseg.predict.part_of), for one of `num_parts` processes or machines. skip_existing: leave
    alone the images whose outputs all exist (continues an interrupted run). skip_bad: leave
    out unreadable images with a warning each instead of stopping.
    """

    model_path: Path
    inputs: tuple[Path, ...] = ()
    data_path: Path | None = None
    split: str = "test"
    mirror: str | None = None
    save_dir: Path = Path("predictions")
    overlays: bool = False
    cutouts: bool = False
    threshold: float | None = None
    tta: bool = False
    largest_component: bool = False
    device: str = "auto"
    precision: str = "auto"
    backend: str | None = None
    model_type: str | None = None
    compile: bool = False
    batch_size: int = INFERENCE_BATCH_SIZE
    num_workers: int | None = None
    skip_bad: bool = False
    skip_existing: bool = False
    num_parts: int = 1
    part_id: int = 0

    def __post_init__(self) -> None:
        if self.num_parts < 1:
            raise PetsegError(f"--num_parts must be >= 1, got {self.num_parts}")
        if not 0 <= self.part_id < self.num_parts:
            raise PetsegError(
                f"--part_id must be from 0 to {self.num_parts - 1} for --num_parts "
                f"{self.num_parts}, got {self.part_id}"
            )
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise PetsegError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.batch_size < 1:
            raise PetsegError(f"--batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Bounds:
    """The sane range of a number setting; inf and nan are always out of it."""

    low: float
    high: float = math.inf
    low_open: bool = False  # low itself is out
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why `value` is out of range, e.g. 'must be >= 1, got 0'; None when it is in."""
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if above and below:
            return None
        low = f"{'>' if self.low_open else '>='} {self.low:g}"
        if math.isinf(self.high):
            return f"must be {low}, got {value:g}"
        if self.low_open and self.high_open:
            return f"must be between {self.low:g} and {self.high:g} (exclusive), got {value:g}"
        return f"must be {low} and {'<' if self.high_open else '<='} {self.high:g}, got {value:g}"


# Beyond these a value is a typo or a run that cannot learn: a learning rate or weight decay
# above 1 diverges in a few steps (docs/robustness.md).
LIMITS: dict[str, Bounds] = {
    "epochs": Bounds(1),
    "batch_size": Bounds(1),
    "image_size": Bounds(32),
    "learning_rate": Bounds(0, 1, low_open=True),
    "weight_decay": Bounds(0, 1),
    "warmup_epochs": Bounds(0),
    "clip_grad": Bounds(0),
    "progressive": Bounds(0, 1, high_open=True),
    "drop_path": Bounds(0, 1, high_open=True),
    "threshold": Bounds(0, 1, low_open=True, high_open=True),
    "gallery": Bounds(1, 100),  # rows of one contact sheet
    "dist_timeout": Bounds(0, low_open=True),
    "parity_images": Bounds(1),
    "num_parts": Bounds(1),
    "part_id": Bounds(0),
    "port": Bounds(0, 65535),
    "time_budget": Bounds(0, low_open=True),
}

# Where each `petseg train` flag goes: (part of TrainConfig, field); part "" is TrainConfig itself.
# A model flag must name a field of the model type's config.
MODEL_FLAGS: dict[str, str] = {
    "unet_widths": "widths",
    "unet_upsample": "upsample",
    "decoder_widths": "decoder_widths",
    "stem": "stem",
    "activation": "activation",
    "drop_path": "drop_path",
    "deep_supervision": "deep_supervision",
}
TRAIN_FLAGS: dict[str, tuple[str, str]] = {
    **{flag: ("model", name) for flag, name in MODEL_FLAGS.items()},
    **{item.name: ("recipe", item.name) for item in fields(RecipeConfig)},
    **{item.name: ("data", item.name) for item in fields(DataConfig)},
    **{name: ("", name) for name in ("model_path", "seed", "precision", "device", "compile")},
    "time_budget": ("", "time_budget_s"),
    "short_run": ("", "short_run"),
}
# Where this process runs rather than what it trains: a resumed run takes them from the flags,
# or their defaults, never from the checkpoint.
MACHINE_FLAGS = ("device", "compile", "num_workers")


def train_model_path(flags: Mapping[str, Any]) -> Path:
    """--model_path, or runs/MODEL_TYPE.pt (with the model type given, else the default's)."""
    model_type = flags.get("model_type") or DEFAULT_MODEL_TYPE
    return flags.get("model_path") or Path("runs") / f"{model_type}.pt"


def resolve_train_config(
    flags: Mapping[str, Any],
    resumed: TrainConfig | None = None,
    checkpoint: Path | None = None,
    *,
    on_cpu: bool = False,
) -> TrainConfig:
    """The run's config: the model type's preset, or the resumed run's config (read from
    `checkpoint`), with the given flags replaced. `flags` holds only the flags given (by
    name, as in TRAIN_FLAGS, plus model_type). A resumed run refuses any flag that would
    change its architecture, image size or time budget. A new run `on_cpu` without --epochs
    or --time_budget gets the time budget CPU_TIME_BUDGET_S."""
    model_path = train_model_path(flags)
    if resumed is None:
        preset = PRESETS[flags.get("model_type") or DEFAULT_MODEL_TYPE]
        budget = CPU_TIME_BUDGET_S if default_budget_applies(flags, on_cpu) else None
        base = TrainConfig(preset.model, preset.recipe, model_path, time_budget_s=budget)
    else:
        refuse_architecture_changes(flags, resumed, checkpoint or model_path)
        refuse_short_run_change(flags, resumed, checkpoint or model_path)
        refuse_budget_change(flags, resumed, checkpoint or model_path)
        base = replace(resumed, model_path=model_path)
        for flag in MACHINE_FLAGS:
            base = with_flag(base, flag, flag_default(flag))
    config = base
    for flag, value in flags.items():
        if flag not in ("model_type", "short_run"):
            config = with_flag(config, flag, value)
    if resumed is None:
        config = choose_short_run(config, flags)
    if resumed is not None and "time_budget" in flags:
        # The command that started a budget run again: its --epochs capped the epochs chosen.
        config = with_flag(config, "epochs", min(resumed.recipe.epochs, config.recipe.epochs))
    check_train_config(config)
    return config


def choose_short_run(config: TrainConfig, flags: Mapping[str, Any]) -> TrainConfig:
    """A new run with its preset's short-run settings (those of its flags not given) when
    --short_run is on, or auto and the run has at most ShortRun.max_epochs epochs. With a time
    budget, auto stays until the budget chooses (short_run_variant, petseg.train)."""
    choice = flags.get("short_run", "auto")
    short = PRESETS[config.model.model_type].short_run
    if short is None:
        if choice == "on":
            raise PetsegError(
                f"--short_run on: --model_type {config.model.model_type} has no short-run recipe"
            )
        return replace(config, short_run="off")
    if choice == "auto" and config.time_budget_s is None:
        choice = "on" if config.recipe.epochs <= short.max_epochs else "off"
    if choice == "on":
        return with_short_run(config, flags)
    return replace(config, short_run=choice)


def with_short_run(config: TrainConfig, flags: Mapping[str, Any]) -> TrainConfig:
    """`config` with its preset's short-run settings in place of the preset's, where the flag
    was not given."""
    short = PRESETS[config.model.model_type].short_run
    assert short is not None, config.model.model_type
    for flag, value in short.settings:
        if flag not in flags:
            config = with_flag(config, flag, value)
    return replace(config, short_run="on")


def short_run_variant(config: TrainConfig, flags: Mapping[str, Any]) -> TrainConfig | None:
    """For a new run whose time budget is to choose between its preset's full and short-run
    recipes (short_run auto): the same run with the short-run recipe. Else None."""
    if config.short_run != "auto":
        return None
    return with_short_run(config, flags)


def default_budget_applies(flags: Mapping[str, Any], on_cpu: bool) -> bool:
    """Whether a new run gets CPU_TIME_BUDGET_S: on a CPU, with neither --epochs nor
    --time_budget given."""
    return on_cpu and "epochs" not in flags and "time_budget" not in flags


def flag_default(flag: str) -> Any:
    """The default of a flag outside the preset (a TrainConfig or DataConfig field)."""
    part, name = TRAIN_FLAGS[flag]
    owner = DataConfig if part == "data" else TrainConfig
    return next(item.default for item in fields(owner) if item.name == name)


def with_flag(config: TrainConfig, flag: str, value: Any) -> TrainConfig:
    """`config` with one flag's value in its place."""
    part, name = TRAIN_FLAGS[flag]
    if not part:
        return replace(config, **{name: value})
    section = getattr(config, part)
    if part == "model" and name not in _field_names(section):
        others = [kind for kind, cls in MODEL_CONFIGS.items() if name in _field_names(cls)]
        raise PetsegError(f"--{flag} applies to --model_type {' or '.join(others)} only")
    return replace(config, **{part: replace(section, **{name: value})})


def _field_names(config: Any) -> set[str]:
    return {item.name for item in fields(config)}


def refuse_architecture_changes(
    flags: Mapping[str, Any], resumed: TrainConfig, checkpoint: Path
) -> None:
    """A resumed run keeps its model and image size: a flag asking for others is refused."""
    given_type = flags.get("model_type")
    if given_type is not None and given_type != resumed.model.model_type:
        raise PetsegError(
            f"{checkpoint}: holds a {resumed.model.model_type} model, not --model_type "
            f"{given_type}; drop --model_type to resume it, or pick another --model_path"
        )
    for flag in (*MODEL_FLAGS, "image_size"):
        if flag not in flags:
            continue
        with_flag(resumed, flag, flags[flag])  # a flag of the other model type: its own error
        part, name = TRAIN_FLAGS[flag]
        stored = getattr(getattr(resumed, part), name)
        if stored != flags[flag]:
            raise PetsegError(
                f"{checkpoint}: was trained with --{flag} {shown(stored)}, not "
                f"{shown(flags[flag])}; drop --{flag} to resume it, or pick another --model_path"
            )


def refuse_short_run_change(
    flags: Mapping[str, Any], resumed: TrainConfig, checkpoint: Path
) -> None:
    """A resumed run keeps the recipe it started with: --short_run asking for the other is
    refused (auto is always accepted)."""
    given = flags.get("short_run")
    if given is None or given in ("auto", resumed.short_run):
        return
    raise PetsegError(
        f"{checkpoint}: was started with --short_run {resumed.short_run}, which a resumed run "
        "keeps; drop --short_run to resume it, or pick another --model_path"
    )


def refuse_budget_change(flags: Mapping[str, Any], resumed: TrainConfig, checkpoint: Path) -> None:
    """A resumed run keeps the epochs its time budget chose (or was given): a --time_budget
    other than the one it started with is refused; --epochs still sets another number."""
    given = flags.get("time_budget")
    if given is None or given == resumed.time_budget_s:
        return
    epochs = resumed.recipe.epochs
    started = (
        f"chose its {plural(epochs, 'epoch')} for --time_budget {duration_flag(resumed.time_budget_s)}"
        if resumed.time_budget_s is not None
        else f"trains for --epochs {epochs}"
    )
    raise PetsegError(
        f"{checkpoint}: {started}, which a resumed run keeps; drop --time_budget (--epochs N "
        "sets another number), or pick another --model_path"
    )


def shown(value: Any) -> str:
    """A setting as its flag is written: 64,128 for widths, on/off for a switch."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def check_train_config(config: TrainConfig) -> None:
    """Refuse settings no run can use, with the flag's name (the parser checks them too)."""
    numbers = {**asdict(config.recipe), **asdict(config.model)}
    for name, bounds in LIMITS.items():
        value = numbers.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = bounds.problem(value)
            if problem:
                raise PetsegError(f"--{name} {problem}")
    if config.time_budget_s is not None:
        problem = LIMITS["time_budget"].problem(config.time_budget_s)
        if problem:
            raise PetsegError(f"--time_budget {problem}")
    if config.data.num_workers is not None and config.data.num_workers < 0:
        raise PetsegError(f"--num_workers cannot be negative, got {config.data.num_workers}")
    if isinstance(config.model, ResNet34UNetConfig):
        blocks = len(PRESETS["resnet34_unet"].model.decoder_widths)
        widths = config.model.decoder_widths
        if len(widths) != blocks:
            raise PetsegError(
                f"--decoder_widths needs {blocks} values (one per decoder block), "
                f"got {len(widths)}: {shown(widths)}"
            )


def model_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The model's constructor arguments."""
    return asdict(model)


def to_plain(config: TrainConfig) -> dict[str, Any]:
    """Nested dicts of plain values (paths as strings, tuples as lists), safe for a
    weights_only load; the model's part names its type."""
    plain = _plain(asdict(config))
    plain["model"] = {"model_type": config.model.model_type, **plain["model"]}
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_plain(plain: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig that to_plain wrote; KeyError, TypeError or ValueError when it is not one."""
    model = dict(plain["model"])
    model_type = model.pop("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}")
    model = {
        key: tuple(value) if isinstance(value, list) else value for key, value in model.items()
    }
    data = dict(plain["data"])
    data["data_path"] = Path(data["data_path"])
    data["cache_dir"] = Path(data["cache_dir"]) if data["cache_dir"] is not None else None
    top = {key: value for key, value in plain.items() if key not in ("model", "recipe", "data")}
    return TrainConfig(
        model=MODEL_CONFIGS[model_type](**model),
        recipe=RecipeConfig(**plain["recipe"]),
        data=DataConfig(**data),
        **{**top, "model_path": Path(top["model_path"])},
    )
