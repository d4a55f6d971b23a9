"""bench/full_size.py: a full-dataset-sized folder of links that petseg reads like the real one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from petseg.data.check import check_sample
from petseg.data.oxford_pet import breed_of, read_split_names

SCRIPT = Path(__file__).parents[1] / "bench" / "full_size.py"
spec = importlib.util.spec_from_file_location("full_size", SCRIPT)
full_size = importlib.util.module_from_spec(spec)
spec.loader.exec_module(full_size)


def test_repeats_trainval_under_new_names_and_keeps_test(tmp_path: Path, data: Path) -> None:
    source = data  # 20 trainval, 2 test
    dest = tmp_path / "full"
    full_size.make_full_size(source, dest, trainval=50)

    train, valid = read_split_names(dest, "train"), read_split_names(dest, "valid")
    assert (len(train), len(valid)) == (45, 5)
    assert read_split_names(dest, "test") == read_split_names(source, "test")
    names = train + valid
    assert len(set(names)) == 50  # no name twice
    assert "Breed_20001" in names and "Breed_10010" in names
    assert {breed_of(name) for name in names} == {"Breed"}
    link = dest / "images" / "Breed_20001.jpg"
    assert link.is_symlink() and link.resolve() == (source / "images" / "Breed_1.jpg").resolve()
    assert all(check_sample(dest, name).usable for name in names)  # the links open


def test_refuses_a_folder_that_is_not_empty(data: Path) -> None:
    source = data
    with pytest.raises(SystemExit, match="not empty"):
        full_size.make_full_size(source, source, trainval=30)


def test_a_missing_split_file_is_named_and_nothing_is_written(tmp_path: Path, data: Path) -> None:
    source = data
    (source / "annotations" / "test.txt").unlink()
    dest = tmp_path / "full"
    with pytest.raises(SystemExit, match=r"test\.txt: cannot read split file"):
        full_size.make_full_size(source, dest, trainval=30)
    assert not dest.exists()
