"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

A crash at any moment leaves either the old file or the new one, never a half-written one; a
write that fails (full disk, read-only file system, permissions) is a one-line PetsegError
naming the file, and the previous file stays. Output paths are checked before a command's work
starts (check_output_file), and temp files left by a killed write are removed then.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from petseg.errors import PetsegError

TEMP_SUFFIX = ".tmp"
PROBE_SUFFIX = ".probe"  # probe_folder's
# What to do about a failed write, by errno; other errors get the system's words only.
WRITE_HINTS: dict[int, str] = {
    errno.ENOSPC: "free some disk space and run again",
    errno.EDQUOT: "free some disk space (quota) and run again",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EIO: "the disk or network file system reported an error; check it and run again",
}


def ensure_folder(folder: Path) -> None:
    """Create folder (and parents), with a one-line error when that is impossible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PetsegError(f"{folder}: exists and is not a folder") from None
    except OSError as error:
        raise PetsegError(f"{folder}: cannot create folder ({error.strerror})") from None


def write_error(path: Path, error: OSError) -> PetsegError:
    """The one-line error for a failed write of `path`: the system's reason and what to do."""
    if isinstance(error, IsADirectoryError):
        return PetsegError(f"{path}: is a folder; name a file to write instead")
    reason = error.strerror or str(error) or type(error).__name__
    hint = WRITE_HINTS.get(error.errno or 0)
    return PetsegError(f"{path}: cannot write ({reason}){'; ' + hint if hint else ''}")


def check_output_file(path: Path) -> None:
    """Fail now, not after the work, when `path` cannot be written: a folder is in its place,
    its folder cannot be created, or nothing can be written there. Also removes the temp files
    that a killed write of `path` left."""
    path = Path(path)
    if path.is_dir():
        raise write_error(path, IsADirectoryError(errno.EISDIR, "Is a directory"))
    ensure_folder(path.parent)
    remove_stale_temps(path)
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
    except OSError as error:
        raise write_error(path, error) from None
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):  # another process's cleanup may have been first
        os.unlink(probe)


def check_output_files(paths: Iterable[Path]) -> None:
    for path in paths:
        check_output_file(path)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def probe_folder(path: Path) -> tempfile.TemporaryDirectory:
    """A temporary folder beside `path` for trial writes of its files (a time measurement);
    the next check_output_file(path) removes one that a killed run left."""
    return tempfile.TemporaryDirectory(
        prefix=_temp_prefix(path), suffix=PROBE_SUFFIX, dir=Path(path).parent
    )


def stale_temps(path: Path) -> list[Path]:
    """The temp files of atomic writes of `path` (a killed write leaves one) and its probe
    folders: exactly the names tempfile gives them, so nothing else is ever matched."""
    names = re.escape(_temp_prefix(path)) + r"[a-z0-9_]{8}"
    file_name = re.compile(names + re.escape(TEMP_SUFFIX))
    folder_name = re.compile(names + re.escape(PROBE_SUFFIX))
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    return [
        entry
        for entry in entries
        if not entry.is_symlink()
        and (
            (file_name.fullmatch(entry.name) and entry.is_file())
            or (folder_name.fullmatch(entry.name) and entry.is_dir())
        )
    ]


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files and folders stale_temps finds; returns them."""
    removed = []
    for temp in stale_temps(Path(path)):
        if temp.is_dir():  # best effort: a folder only a killed measurement wrote into
            shutil.rmtree(temp, ignore_errors=True)
            removed.append(temp)
            continue
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed.append(temp)
    return removed


class _RecordingFile:
    """The temp file, remembering an OSError from write: torch.save reports a failed write as a
    RuntimeError that has lost the cause (ENOSPC, EIO...)."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it replaces `path`, on an exception it is discarded.

    An OSError while writing, syncing or renaming becomes write_error's one-line PetsegError.
    """
    path = Path(path)
    ensure_folder(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX
        )
    except OSError as error:
        raise write_error(path, error) from None
    recording = None
    try:
        with os.fdopen(fd, "wb") as handle:
            recording = _RecordingFile(handle)
            yield cast(BinaryIO, recording)
            handle.flush()
            # mkstemp makes the file private (0600); give it the mode a plain open() would.
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        cause = error if isinstance(error, OSError) else recording and recording.error
        if isinstance(cause, OSError) and not isinstance(error, KeyboardInterrupt):
            raise write_error(path, cause) from None
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; restore at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
