"""A dataset folder the size of the full Oxford-IIIT Pet, made of links to a smaller one, for timing.

Where the full dataset cannot be downloaded, an epoch over as many images as it has (3680 trainval
lines: 3312 train, 368 valid) can still be timed: this writes DEST with --trainval names, the
sample's trainval images repeated under new numbers (NAME_k becomes NAME_(k + 10000 r) in round
r, so breeds and species still parse), as symbolic links to SOURCE's files, and SOURCE's test
list. The pixels repeat, so its Dice scores mean nothing; only the time per epoch does.

    python bench/full_size.py ../shared/data/oxford-iiit-pet-sample /tmp/pets-full
    petseg train --data_path /tmp/pets-full --model_type resnet34_unet --image_size 256 \
        --epochs 2 --model_path /tmp/full.pt   # then read /tmp/full.history.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.data.oxford_pet import read_split_names

FULL_TRAINVAL = 3680  # lines of the full dataset's annotations/trainval.txt
FILES = (("images", ".jpg"), ("annotations/trimaps", ".png"))


def list_lines(path: Path) -> list[str]:
    """The lines of a split file that name an image (no blanks, no # comments)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise SystemExit(f"{path}: cannot read split file ({error.strerror})") from None
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def renumbered(name: str, round_: int) -> str:
    """NAME_k as NAME_(k + 10000 * round_); round 0 keeps the name."""
    stem, _, number = name.rpartition("_")
    if round_ == 0:
        return name
    if not stem or not number.isdigit():
        raise SystemExit(f"{name}: not an Oxford-IIIT Pet name (BREED_NUMBER)")
    return f"{stem}_{int(number) + 10000 * round_}"


def link_files(source: Path, dest: Path, name: str, new_name: str) -> None:
    for folder, suffix in FILES:
        target = (source / folder / f"{name}{suffix}").resolve()
        if not target.is_file():
            raise SystemExit(f"{target}: missing, needed for {new_name}")
        (dest / folder / f"{new_name}{suffix}").symlink_to(target)


def make_full_size(source: Path, dest: Path, trainval: int = FULL_TRAINVAL) -> None:
    """Write DEST: `trainval` trainval lines repeating SOURCE's, and SOURCE's test lines."""
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest}: exists and is not empty; give a new folder")
    lines = list_lines(source / "annotations" / "trainval.txt")
    test_lines = list_lines(source / "annotations" / "test.txt")
    for folder, _ in FILES:
        (dest / folder).mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(trainval):
        name, *rest = lines[index % len(lines)].split(maxsplit=1)
        new_name = renumbered(name, index // len(lines))
        link_files(source, dest, name, new_name)
        written.append(" ".join([new_name, *rest]))
    linked = {line.split()[0] for line in written}
    for line in test_lines:
        name = line.split()[0]
        if name not in linked:
            link_files(source, dest, name, name)
            linked.add(name)
    (dest / "annotations" / "trainval.txt").write_text("\n".join(written) + "\n")
    (dest / "annotations" / "test.txt").write_text("\n".join(test_lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a dataset folder (images/, annotations/)")
    parser.add_argument("dest", type=Path, help="a new folder")
    parser.add_argument("--trainval", type=int, default=FULL_TRAINVAL)
    args = parser.parse_args()
    make_full_size(args.source, args.dest, args.trainval)
    splits = {
        split: len(read_split_names(args.dest, split)) for split in ("train", "valid", "test")
    }
    print(f"{args.dest}: " + ", ".join(f"{count} {split}" for split, count in splits.items()))


if __name__ == "__main__":
    main()
