"""One training run per --model_path: a lock file beside it, held for the run's life.

Two runs writing the same checkpoints would each report success while only the last writer's
model survived. The lock is an flock on NAME.pt.lock, which the kernel releases when the
process dies however it dies (kill -9 included); the file says who holds it (pid, host, start
time) so that a refusal can name the holder. Where the file system has no flock (some network
file systems), a lock left by a process that is no longer running on this host is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from petseg.errors import PetsegError
from petseg.files import ensure_folder, write_error

LOCK_SUFFIX = ".lock"


def lock_path(model_path: Path) -> Path:
    """runs/r34.pt -> runs/r34.pt.lock"""
    return model_path.with_name(model_path.name + LOCK_SUFFIX)


@contextlib.contextmanager
def run_lock(model_path: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of `model_path` for the block; a PetsegError naming the holder when another
    live run holds it. enabled=False (ranks other than 0 under torchrun) holds nothing."""
    if not enabled:
        yield
        return
    path = lock_path(Path(model_path))
    fd = _acquire(path, Path(model_path))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held, so no waiting run locks a file about to vanish
        os.close(fd)


def _acquire(path: Path, model_path: Path) -> int:
    ensure_folder(path.parent)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise write_error(path, error) from None
        try:
            try:
                locked = _flock(fd)
            except BlockingIOError:  # a live process holds it
                raise PetsegError(_held_message(model_path, path, _read_holder(fd))) from None
            previous = _read_holder(fd)
            if not locked and previous and _alive_elsewhere(previous):
                raise PetsegError(_held_message(model_path, path, previous))
            if not _still_at(fd, path):  # its last holder removed it between open and flock
                os.close(fd)
                continue
            if previous and previous.get("pid") != os.getpid():
                print(f"petseg: {_stale_note(path, previous)}", file=sys.stderr)
            _write_holder(fd, path)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _flock(fd: int) -> bool:
    """Take the flock; False where the file system does not support flock. A lock held by a
    live process raises BlockingIOError."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    return True


def _read_holder(fd: int) -> dict[str, object]:
    """The holder a lock file names ({} when blank or unreadable)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, path: Path) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except OSError as error:
        raise write_error(path, error) from None


def _alive_elsewhere(holder: dict[str, object]) -> bool:
    """Without flock: whether the holder may still run (on another host it cannot be told)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _still_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "a process that is starting"
    return (
        f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')}"
    )


def _held_message(model_path: Path, path: Path, holder: dict[str, object]) -> str:
    return (
        f"{model_path}: another training run is writing it ({_describe(holder)}; lock {path}); "
        "wait for it to end or choose another --model_path"
    )


def _stale_note(path: Path, holder: dict[str, object]) -> str:
    return f"taking over {path}, left by {_describe(holder)}, which is no longer running"
