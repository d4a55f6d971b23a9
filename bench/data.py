"""Data-path cost alone: seconds per training item, decoded from the files or from the cache.

No model runs, so the figure holds on a busy machine too: CPU seconds per item are reported
beside wall-clock images/s. The cache is built first (not timed) in DATA_DIR/.petseg-cache.

    python bench/data.py ../shared/data/oxford-iiit-pet-sample --image_size 128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from petseg.data.cache import cached_images
from petseg.data.oxford_pet import OxfordPetDataset, read_split_names
from petseg.data.transforms import AUGMENTS, train_resize_edge, train_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=2, help="epochs over the train split")
    parser.add_argument("--augment", choices=AUGMENTS, default="strong")
    args = parser.parse_args()

    names = read_split_names(args.data_dir, "train")
    decoded = cached_images(
        args.data_dir,
        "train",
        names,
        train_resize_edge(args.image_size, args.augment),
        report=False,
    )
    datasets = {
        "decode": OxfordPetDataset(
            args.data_dir, "train", train_transform(args.image_size, augment=args.augment)
        ),
        "cache": OxfordPetDataset(
            args.data_dir,
            "train",
            train_transform(args.image_size, augment=args.augment, resized_input=True),
            decoded=decoded,
        ),
    }
    for source, dataset in datasets.items():
        dataset.set_augment_seed(0)
        dataset[0]  # warm: page cache, first-call set-up
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.passes):
            for index in range(len(dataset)):
                dataset[index]
        items = args.passes * len(dataset)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(json.dumps({
            "source": source, "image_size": args.image_size, "items": items,
            "img_per_s": round(items / wall, 1), "cpu_ms_per_item": round(1000 * cpu / items, 2),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
