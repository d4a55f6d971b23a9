"""Atomic writes: whole files or none, with ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from petseg.errors import PetsegError
from petseg.files import atomic_write_text, atomic_writer


def test_written_files_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path: Path) -> None:
    target = tmp_path / "history.csv"
    previous = os.umask(0o022)
    try:
        atomic_write_text(target, "epoch\n1\n")
    finally:
        os.umask(previous)
    assert target.read_text() == "epoch\n1\n"
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "masks" / "cat.png"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["cat.png"]


def test_a_file_where_the_folder_should_be_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    with pytest.raises(PetsegError, match="runs"):
        atomic_write_text(blocker / "m.history.csv", "x")
