"""Scan the dataset before training: every listed image and trimap decoded once, problems named.

A *fatal* problem makes a sample unusable (missing, undecodable or truncated file, image and
trimap of different sizes, trimap values outside {1, 2, 3}); a *note* is something petseg
handles but the user may want to know (an image that is not RGB and will be converted).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from petseg.data.oxford_pet import DECODE_ERRORS, SPLITS, Split, read_split_names
from petseg.errors import PetsegError

TRIMAP_VALUES = frozenset({1, 2, 3})
MODE_NAMES = {
    "P": "palette",
    "RGBA": "RGBA",
    "L": "grayscale",
    "LA": "grayscale + alpha",
    "CMYK": "CMYK",
    "I;16": "16-bit",
    "I": "32-bit integer",
    "1": "1-bit",
    "PA": "palette + alpha",
}


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class SampleReport:
    name: str
    problems: tuple[Problem, ...]

    @property
    def usable(self) -> bool:
        return not any(problem.fatal for problem in self.problems)


def _open_fully(path: Path, what: str) -> tuple[Image.Image | None, list[Problem]]:
    """Decode the whole file (a truncated JPEG only fails on the last rows)."""
    if not path.is_file():
        return None, [Problem(path, f"{what} missing")]
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy(), []
    except DECODE_ERRORS as error:
        return None, [Problem(path, f"cannot decode {what} ({error})")]


def check_sample(root: Path, name: str) -> SampleReport:
    """Decode one image and its trimap and report what is wrong or unusual about them."""
    image_path = root / "images" / f"{name}.jpg"
    mask_path = root / "annotations" / "trimaps" / f"{name}.png"
    image, problems = _open_fully(image_path, "image")
    trimap, mask_problems = _open_fully(mask_path, "trimap")
    problems += mask_problems
    if image is not None and image.mode != "RGB":
        mode = MODE_NAMES.get(image.mode, image.mode)
        problems.append(Problem(image_path, f"{mode} image, converted to RGB", fatal=False))
    if trimap is not None:
        values = set(np.unique(np.asarray(trimap.convert("L"))).tolist())
        unexpected = sorted(values - TRIMAP_VALUES)
        if unexpected:
            problems.append(
                Problem(
                    mask_path,
                    f"unexpected trimap values {unexpected} "
                    "(expected 1 pet, 2 background, 3 border)",
                )
            )
    if image is not None and trimap is not None and image.size != trimap.size:
        problems.append(
            Problem(
                mask_path,
                f"trimap size {trimap.size[0]}x{trimap.size[1]} "
                f"differs from its image's {image.size[0]}x{image.size[1]}",
            )
        )
    return SampleReport(name, tuple(problems))


def check_split_files(
    root: Path, splits: Iterable[Split] = SPLITS
) -> tuple[dict[Split, list[str]], list[Problem]]:
    """Names per split and the problems of the split files themselves (missing, empty, duplicates)."""
    names: dict[Split, list[str]] = {}
    problems: list[Problem] = []
    for split in splits:
        try:
            names[split] = read_split_names(root, split)
        except PetsegError as error:
            path_text, _, message = str(error).partition(": ")
            problems.append(Problem(Path(path_text), message))
            names[split] = []
    for list_file, splits_in_file in (
        ("trainval.txt", ("train", "valid")),
        ("test.txt", ("test",)),
    ):
        listed = [name for split in splits_in_file if split in names for name in names[split]]
        for name, count in Counter(listed).items():
            if count > 1:
                problems.append(
                    Problem(root / "annotations" / list_file, f"{name} is listed {count} times")
                )
    return names, problems


def check_samples(
    root: Path,
    names: Sequence[str],
    *,
    progress: bool = True,
    desc: str = "checking data",
    workers: int = 2,
) -> list[SampleReport]:
    """check_sample over many names; PIL decodes outside the GIL, so threads use both cores."""
    unique = list(dict.fromkeys(names))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reports = pool.map(lambda name: check_sample(root, name), unique)
        return list(
            tqdm(
                reports,
                total=len(unique),
                desc=desc,
                unit="image",
                leave=False,
                disable=not progress,
                dynamic_ncols=True,
            )
        )


def checked_names(root: Path, split: Split, skip_bad: bool, *, report: bool = True) -> list[str]:
    """The names of a split whose samples decode cleanly.

    Without skip_bad the first unusable sample stops the run with a one-line error; with it,
    each unusable sample is reported once on stderr and left out. report=False hides the bar
    and the warnings (the other ranks under torchrun, which reach the same verdicts).
    """
    names = read_split_names(root, split)
    reports = check_samples(root, names, progress=report, desc=f"checking {split} data")
    bad = [sample for sample in reports if not sample.usable]
    if bad and not skip_bad:
        first = next(problem for problem in bad[0].problems if problem.fatal)
        more = f" ({len(bad) - 1} more bad samples)" if len(bad) > 1 else ""
        raise PetsegError(
            f"{first}{more}; run `petseg check --data_path {root}` for the list, "
            "or pass --skip_bad to leave bad samples out"
        )
    for sample in bad if report else []:
        for problem in sample.problems:
            if problem.fatal:
                print(f"petseg: skipping {sample.name} ({split} split): {problem}", file=sys.stderr)
    bad_names = {sample.name for sample in bad}
    kept = [name for name in names if name not in bad_names]
    if not kept:
        raise PetsegError(f"{root}: no usable sample left in the {split} split")
    return kept


def check_dataset(root: Path, *, progress: bool = True) -> int:
    """`petseg check`: print every problem and a summary; return 0 when no sample is unusable."""
    if not root.is_dir():
        raise PetsegError(f"{root}: no such folder")
    names, problems = check_split_files(root)
    all_names = [name for split in SPLITS for name in names[split]]
    reports = check_samples(root, all_names, progress=progress)
    problems += [problem for report in reports for problem in report.problems]
    for problem in problems:
        print(f"{'error' if problem.fatal else 'note '}  {problem}")
    errors = [problem for problem in problems if problem.fatal]
    unusable = sum(not report.usable for report in reports)
    notes = Counter(problem.message for problem in problems if not problem.fatal)
    sizes = ", ".join(f"{split} {len(names[split])}" for split in SPLITS)
    note_text = "; ".join(f"{count} x {message}" for message, count in notes.items()) or "none"
    print(
        f"checked {len(reports)} samples in {root} ({sizes}): {len(errors)} errors, "
        f"{unusable} unusable samples; notes: {note_text}"
    )
    return 1 if errors else 0
