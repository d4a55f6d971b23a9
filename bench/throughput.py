"""Model-only throughput: training steps (forward + backward + Adam) and inference, images/s.

Prints one JSON line per (model, setting). Settings: fp32, channels_last, bf16 autocast with
channels_last, and fp32 under torch.compile (its compile time is the warm-up, reported apart).
With segmentation-models-pytorch installed (`pip install -e ".[bench]"`), its Unet(resnet34,
encoder_weights=None) runs as model `smp` in the same process with the same settings, and a
ratio is printed. --unet_widths adds a UNet of those widths (the lighter CPU option) beside the
default one; --decoder_widths adds a ResNet34-UNet with those decoder widths, --stem one with
that encoder stem (--stem classic: the 7x7 one), --activation one with that activation,
--unet_upsample nearest a UNet with that decoder upsampling (with --unet_widths, of those widths), and
each ResNet34-UNet row also prints its ratio to the default ResNet34-UNet in plain fp32. With
onnxruntime installed (pip install "petseg[onnx]"), the "onnxruntime" setting times the model as
`petseg export` writes it (fp32, CPU provider, inference only) and prints its ratio to eager
fp32 inference. The "petseg" setting (inference only) times the model as `petseg evaluate` and
`predict` run it (BatchNorm folded, channels_last) in fp32, "petseg+bf16" the same under bf16
autocast, which `--precision auto` picks on CPUs with AVX512-BF16; every row also gets its ratio
to smp at smp's best plain-PyTorch setting. --repeats N runs every measurement in N interleaved
rounds and prints medians, which the ratios use: single rounds swing by up to 20% on a shared
machine.

    python bench/throughput.py --image_size 256 --batch_size 4 --steps 5
    python bench/throughput.py --models resnet34_unet,smp --settings fp32,fp32+channels_last
    python bench/throughput.py --models unet --unet_widths 32,64,128,256 --settings fp32
    python bench/throughput.py --models unet --unet_upsample nearest --settings fp32 --modes train
    python bench/throughput.py --models resnet34_unet,smp --decoder_widths 128,64,32,16,16
    python bench/throughput.py --models resnet34_unet --stem classic --settings fp32,petseg
    python bench/throughput.py --models resnet34_unet --activation silu --settings fp32
    python bench/throughput.py --models resnet34_unet --settings fp32,onnxruntime --modes infer
    python bench/throughput.py --models resnet34_unet,smp --repeats 5 \
        --settings fp32,fp32+channels_last,petseg,onnxruntime
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from petseg.choices import ACTIVATIONS, STEMS, UPSAMPLES
from petseg.inference import inference_model as petseg_inference_model
from petseg.models import build_model

SETTINGS = {
    "fp32": {"channels_last": False, "bf16": False},
    "fp32+channels_last": {"channels_last": True, "bf16": False},
    "bf16+channels_last": {"channels_last": True, "bf16": True},
    "fp32+compile": {"channels_last": False, "bf16": False, "compile": True},
    # inference only: the model as petseg predict and evaluate run it (BatchNorm folded, NHWC),
    # in fp32, and in bf16 as `--precision auto` runs it on CPUs with native bf16
    "petseg": {"channels_last": True, "bf16": False, "inference_model": True},
    "petseg+bf16": {"channels_last": True, "bf16": True, "inference_model": True},
    "petseg+compile": {"channels_last": True, "bf16": False, "inference_model": True,
                       "compile": True},
}  # fmt: skip
INFERENCE_ONLY = {"petseg", "petseg+bf16", "petseg+compile"}
# smp's best configuration is its best under plain PyTorch, without petseg's inference preparation
SMP_OWN_SETTINGS = {"fp32", "fp32+channels_last", "bf16+channels_last", "fp32+compile"}
ONNXRUNTIME = "onnxruntime"  # a setting of its own: the exported model under ONNX Runtime
SMP = "smp"  # segmentation_models_pytorch.Unet("resnet34"), the reference implementation


def smp_unet() -> nn.Module | None:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return None
    return smp.Unet("resnet34", encoder_weights=None, classes=1)


def measure(
    make_model: Callable[[], nn.Module],
    *,
    size: int,
    batch_size: int,
    steps: int,
    channels_last: bool,
    bf16: bool,
    train: bool,
    compile: bool = False,
    inference_model: bool = False,
    timings: dict[str, float] | None = None,
) -> float:
    """Images per second over `steps` timed iterations after one warm-up.

    compile: torch.compile the model; the warm-up then compiles. inference_model: prepare it as
    petseg.inference.inference_model does (inference only). timings, when given, receives the
    warm-up's seconds as "warmup_s".
    """
    torch.manual_seed(0)
    model = make_model()
    if inference_model:
        model = petseg_inference_model(model)
    images = torch.randn(batch_size, 3, size, size)
    masks = (torch.rand(batch_size, 1, size, size) > 0.5).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train(train)
    if compile:
        model = torch.compile(model)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if not train:
                with torch.inference_mode():
                    model(images)
                return
            logits = model(images)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    if timings is not None:
        timings["warmup_s"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - started)


def measure_onnxruntime(
    make_model: Callable[[], nn.Module], *, size: int, batch_size: int, steps: int
) -> float:
    """Images per second of the exported model in ONNX Runtime (CPU provider, default threads),
    over `steps` timed runs after one warm-up, on the inputs `measure` uses."""
    from petseg.export import onnx_bytes
    from petseg.onnx_model import CPU_PROVIDER, INPUT_NAME, open_session

    torch.manual_seed(0)
    model = make_model().eval()
    images = torch.randn(batch_size, 3, size, size).numpy()
    session = open_session(onnx_bytes(model, size), [CPU_PROVIDER])
    session.run(None, {INPUT_NAME: images})
    started = time.perf_counter()
    for _ in range(steps):
        session.run(None, {INPUT_NAME: images})
    return batch_size * steps / (time.perf_counter() - started)


def run_one(
    make_model: Callable[[], nn.Module],
    setting: str,
    mode: str,
    args: argparse.Namespace,
    has_onnxruntime: bool,
) -> tuple[float | None, float]:
    """(images per second, warm-up seconds) of one measurement; None where it does not apply."""
    if mode == "train" and (setting in INFERENCE_ONLY or setting == ONNXRUNTIME):
        return None, 0.0
    if setting == ONNXRUNTIME:
        if not has_onnxruntime:
            return None, 0.0
        rate = measure_onnxruntime(
            make_model, size=args.image_size, batch_size=args.batch_size, steps=args.steps
        )
        return rate, 0.0
    timings = {"warmup_s": 0.0}
    rate = measure(
        make_model,
        size=args.image_size,
        batch_size=args.batch_size,
        steps=args.steps,
        train=mode == "train",
        timings=timings,
        **SETTINGS[setting],
    )
    return rate, timings["warmup_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--models", default=f"resnet34_unet,unet,{SMP}", help="comma-separated, run in order"
    )
    settings = [*SETTINGS, ONNXRUNTIME]
    parser.add_argument(
        "--settings", default=",".join(settings), help=f"comma-separated: {', '.join(settings)}"
    )
    parser.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of every measurement; ratios use medians"
    )
    parser.add_argument(
        "--unet_widths",
        default=None,
        metavar="W1,W2,...",
        help="also measure a UNet of these widths, as model unet[W1,W2,...] after the others",
    )
    parser.add_argument(
        "--unet_upsample",
        default=None,
        choices=UPSAMPLES,
        help="also measure a UNet with this decoder upsampling (of the --unet_widths if given), "
        "as unet[upsample=U] or unet[W1,W2,...,upsample=U]",
    )
    parser.add_argument(
        "--decoder_widths",
        default=None,
        metavar="W1,...,W5",
        help="also measure a ResNet34-UNet with these decoder widths, as resnet34_unet[W1,...]",
    )
    parser.add_argument(
        "--stem",
        default=None,
        choices=STEMS,
        help="also measure a ResNet34-UNet with this encoder stem, as resnet34_unet[stem=S]",
    )
    parser.add_argument(
        "--activation",
        default=None,
        choices=ACTIVATIONS,
        help="also measure a ResNet34-UNet with this activation, as resnet34_unet[activation=A]",
    )
    parser.add_argument(
        "--drop_path",
        type=float,
        default=None,
        metavar="RATE",
        help="also measure a ResNet34-UNet with this stochastic-depth rate (0: off), as "
        "resnet34_unet[drop_path=RATE]",
    )
    args = parser.parse_args()

    makers: dict[str, Callable[[], nn.Module]] = {
        "resnet34_unet": lambda: build_model("resnet34_unet"),
        "unet": lambda: build_model("unet"),
    }
    if smp_unet() is not None:
        makers[SMP] = smp_unet  # type: ignore[assignment]
    names = args.models.split(",")
    if args.unet_widths:
        widths = [int(width) for width in args.unet_widths.split(",")]
        name = f"unet[{','.join(map(str, widths))}]"
        makers[name] = lambda: build_model("unet", widths=widths)
        names.append(name)
    if args.unet_upsample:
        base = {"widths": widths} if args.unet_widths else {}
        prefix = f"{','.join(map(str, widths))}," if args.unet_widths else ""
        name = f"unet[{prefix}upsample={args.unet_upsample}]"
        makers[name] = lambda: build_model("unet", upsample=args.unet_upsample, **base)
        names.append(name)
    if args.decoder_widths:
        decoder = [int(width) for width in args.decoder_widths.split(",")]
        name = f"resnet34_unet[{','.join(map(str, decoder))}]"
        makers[name] = lambda: build_model("resnet34_unet", decoder_widths=decoder)
        names.append(name)
    if args.stem:
        name = f"resnet34_unet[stem={args.stem}]"
        makers[name] = lambda: build_model("resnet34_unet", stem=args.stem)
        names.append(name)
    if args.activation:
        name = f"resnet34_unet[activation={args.activation}]"
        makers[name] = lambda: build_model("resnet34_unet", activation=args.activation)
        names.append(name)
    if args.drop_path is not None:
        name = f"resnet34_unet[drop_path={args.drop_path:g}]"
        makers[name] = lambda: build_model("resnet34_unet", drop_path=args.drop_path)
        names.append(name)
    unknown = [setting for setting in args.settings.split(",") if setting not in settings]
    if unknown:
        parser.error(f"unknown settings {unknown}: choose from {', '.join(settings)}")
    has_onnxruntime = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))
    if ONNXRUNTIME in args.settings.split(",") and not has_onnxruntime:
        print(json.dumps({"setting": ONNXRUNTIME, "skipped": 'pip install "petseg[onnx]"'}))
    runs: dict[tuple[str, str, str], list[float]] = {}
    for repeat in range(args.repeats):  # rounds over every measurement, so drift hits all alike
        for name in names:
            if name not in makers:
                if repeat == 0:
                    reason = "pip install segmentation-models-pytorch" if name == SMP else "unknown"
                    print(json.dumps({"model": name, "skipped": reason}))
                continue
            for setting in args.settings.split(","):
                for mode in args.modes.split(","):
                    rate, warmup = run_one(makers[name], setting, mode, args, has_onnxruntime)
                    if rate is None:
                        continue
                    runs.setdefault((name, setting, mode), []).append(rate)
                    print(json.dumps({
                        "model": name, "setting": setting, "mode": mode, "repeat": repeat,
                        "image_size": args.image_size, "batch_size": args.batch_size,
                        "img_per_s": round(rate, 2), "warmup_s": round(warmup, 1),
                        "max_rss_mb": round(
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                        "threads": torch.get_num_threads(),
                    }), flush=True)  # fmt: skip
    results = {key: statistics.median(rates) for key, rates in runs.items()}
    if args.repeats > 1:
        for (name, setting, mode), rate in results.items():
            print(json.dumps({"median": True, "model": name, "setting": setting, "mode": mode,
                              "img_per_s": round(rate, 2), "runs": len(runs[name, setting, mode])}))  # fmt: skip
    for (name, setting, mode), rate in results.items():
        eager = results.get((name, "fp32", mode))
        if setting == ONNXRUNTIME and eager:
            print(json.dumps({"ratio": "onnxruntime / eager fp32", "model": name,
                              "mode": mode, "value": round(rate / eager, 3)}))  # fmt: skip
        plain = results.get(("resnet34_unet", "fp32", mode))
        if (
            name.startswith("resnet34_unet")
            and plain
            and (name, setting) != ("resnet34_unet", "fp32")
        ):
            print(json.dumps({"ratio": "/ resnet34_unet plain fp32", "model": name,
                              "setting": setting, "mode": mode,
                              "value": round(rate / plain, 3)}))  # fmt: skip
        reference = results.get((SMP, setting, mode))
        if name != SMP and reference:
            print(json.dumps({"ratio": f"{name} / {SMP}", "setting": setting,
                              "mode": mode, "value": round(rate / reference, 3)}))  # fmt: skip
    for (name, setting, mode), rate in results.items():
        smp_rates = {
            key[1]: value
            for key, value in results.items()
            if key[::2] == (SMP, mode) and key[1] in SMP_OWN_SETTINGS
        }
        if name != SMP and smp_rates:
            best = max(smp_rates, key=smp_rates.__getitem__)
            print(json.dumps({"ratio": f"{name} {setting} / {SMP} at its best ({best})",
                              "mode": mode, "value": round(rate / smp_rates[best], 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
