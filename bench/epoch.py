"""End-to-end training throughput of `petseg train` (data loading included) vs the model alone.

Runs `petseg train` for a few epochs on DATA_DIR in a scratch folder, reads the training seconds
of each epoch from its history, and measures the model-only step rate (random tensors, same
model, size, batch and precision) in the same process. Prints JSON lines; the ratio shows how
much of the model's speed the data path keeps. --precision bf16 trains and measures in bf16
autocast with channels_last, as `petseg train --precision auto` does on a CPU with native bf16.
--num_workers is passed to `petseg train` as given (default auto, petseg's own choice).

    python bench/epoch.py ../shared/data/oxford-iiit-pet-sample --model_type resnet34_unet \
        --image_size 128 --batch_size 16 --epochs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from petseg.data.oxford_pet import read_split_names
from petseg.models import build_model
from throughput import measure  # bench/throughput.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--model_type", default="resnet34_unet")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num_workers", default="auto", help="a count or auto (default)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--model_steps", type=int, default=5)
    parser.add_argument("--no_cache", action="store_true", help="train without the image cache")
    args = parser.parse_args()

    train_images = len(read_split_names(args.data_dir, "train"))
    used_per_epoch = train_images // args.batch_size * args.batch_size  # drop_last
    with tempfile.TemporaryDirectory() as scratch:
        model_path = Path(scratch) / "bench.pt"
        command = [
            sys.executable, "-m", "petseg", "train", "--data_path", str(args.data_dir),
            "--model_type", args.model_type, "--image_size", str(args.image_size),
            "--batch_size", str(args.batch_size), "--epochs", str(args.epochs),
            "--num_workers", args.num_workers, "--precision", args.precision,
            "--model_path", str(model_path), *(["--no_cache"] if args.no_cache else []),
            "--short_run", "off",  # every epoch at full size, like the model-only rate
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with model_path.with_name("bench.history.csv").open() as handle:
            rows = list(csv.DictReader(handle))
    for row in rows:
        rate = used_per_epoch / float(row["train_seconds"])
        print(json.dumps({"epoch": int(row["epoch"]), "end_to_end_img_per_s": round(rate, 2),
                          "train_seconds": round(float(row["train_seconds"]), 1)}))  # fmt: skip
    # The first epoch pays for worker start-up and cold caches; the last is the steady state.
    end_to_end = used_per_epoch / float(rows[-1]["train_seconds"])
    bf16 = args.precision == "bf16"
    model_only = measure(
        lambda: build_model(args.model_type), size=args.image_size, batch_size=args.batch_size,
        steps=args.model_steps, channels_last=bf16, bf16=bf16, train=True,
    )  # fmt: skip
    print(json.dumps({
        "model_type": args.model_type, "image_size": args.image_size,
        "batch_size": args.batch_size, "num_workers": args.num_workers,
        "precision": args.precision,
        "cache": not args.no_cache,
        "end_to_end_img_per_s": round(end_to_end, 2), "model_only_img_per_s": round(model_only, 2),
        "ratio": round(end_to_end / model_only, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
