"""Atomic writes: whole files or none, with ordinary permissions; a failed write is one line."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
import torch

from petseg.checkpoint import save_checkpoint
from petseg.errors import PetsegError
from petseg.files import (
    atomic_write_text,
    atomic_writer,
    check_output_file,
    probe_folder,
    remove_stale_temps,
)


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


# --- a failed write is one line naming the file; the previous file stays ---------------------


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "free some disk space"),
        (OSError(errno.EIO, "Input/output error"), "check it and run again"),
        (PermissionError(errno.EACCES, "Permission denied"), "a folder you can write to"),
        (OSError(errno.EROFS, "Read-only file system"), "a writable file system"),
        (IsADirectoryError(errno.EISDIR, "Is a directory"), "is a folder"),
    ],
)
def test_an_oserror_while_writing_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, words: str
) -> None:
    target = tmp_path / "runs" / "m.history.csv"
    atomic_write_text(target, "old")

    def failing_fsync(fd: int) -> None:
        raise error

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(PetsegError) as caught:
        atomic_write_text(target, "new")
    message = str(caught.value)
    assert message.startswith(f"{target}: ") and "\n" not in message
    assert words in message
    if not isinstance(error, IsADirectoryError):
        assert error.strerror in message
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == [target.name]


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmpfs) -> None:
    """A real ENOSPC, through torch.save, which reports a failed write as a RuntimeError."""
    folder = tmpfs(256)
    target = folder / "m.pt"
    save_checkpoint(target, {"format": "petseg-checkpoint", "weights": torch.zeros(1000)})
    before = target.read_bytes()
    with pytest.raises(PetsegError) as caught:
        save_checkpoint(target, {"format": "petseg-checkpoint", "weights": torch.zeros(200_000)})
    assert str(caught.value) == (
        f"{target}: cannot write (No space left on device); free some disk space and run again"
    )
    assert target.read_bytes() == before
    assert os.listdir(folder) == ["m.pt"]


def test_a_read_only_file_system_is_refused_before_the_work(tmpfs) -> None:
    target = tmpfs(64, read_only=True) / "scores.json"
    with pytest.raises(PetsegError, match="Read-only file system"):
        check_output_file(target)


def test_check_output_file_refuses_a_folder_where_the_file_goes(tmp_path: Path) -> None:
    (tmp_path / "scores.json").mkdir()
    with pytest.raises(PetsegError, match=r"scores\.json: is a folder; name a file"):
        check_output_file(tmp_path / "scores.json")


def test_check_output_file_creates_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "scores.json"
    check_output_file(target)
    assert os.listdir(tmp_path / "new") == []


def test_stale_temps_of_a_killed_write_are_removed_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "m.pt"
    target.write_text("the model")
    stale = [tmp_path / ".m.pt.k3j_9x2a.tmp", tmp_path / ".m.pt.00000000.tmp"]
    kept = [
        tmp_path / ".m.pt.notes.tmp",  # not mkstemp's eight characters
        tmp_path / ".m.last.pt.abcdefgh.tmp",  # another file's
        tmp_path / "m.pt.abcdefgh.tmp",  # no leading dot: not petseg's name
    ]
    for path in stale + kept:
        path.write_text("x")
    check_output_file(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [target, *kept])


def test_a_probe_folder_a_killed_run_left_is_removed_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "m.pt"
    with probe_folder(target) as live:  # the name a measurement gets
        assert Path(live).name.startswith(".m.pt.") and Path(live).name.endswith(".probe")
    stale = tmp_path / ".m.pt.ab_12cd9.probe"
    (stale / "m.pt").parent.mkdir()
    (stale / "m.pt").write_text("a checkpoint written to time it")
    kept = [
        tmp_path / ".m.pt.abcdefgh.probe.d",  # not the name
        tmp_path / ".other.pt.abcdefgh.probe",  # another model's, perhaps being measured now
        tmp_path / ".m.pt.12345678.tmp",  # a folder where a temp file would be: not removed
    ]
    for folder in kept:
        folder.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (tmp_path / ".m.pt.symlink1.probe").symlink_to(outside)
    check_output_file(target)
    assert not stale.exists() and all(folder.is_dir() for folder in kept)
    assert (outside / "keep.txt").exists()


def test_a_probe_removed_by_another_process_is_not_an_error(tmp_path, monkeypatch) -> None:
    """Under torchrun every rank checks the outputs, and one rank's stale-temp cleanup can
    remove another's probe between its creation and its removal."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_cleaned_up(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        remove_stale_temps(tmp_path / "m.pt")  # what the other rank does meanwhile
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_cleaned_up)
    check_output_file(tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []
