"""One training run per --model_path: the lock file, its refusal, and stale locks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import petseg.runlock
from petseg.errors import PetsegError
from petseg.runlock import lock_path, run_lock


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    model_path = tmp_path / "runs" / "m.pt"
    with run_lock(model_path):
        holder = json.loads(lock_path(model_path).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(PetsegError) as caught, run_lock(model_path):
            pass
    message = str(caught.value)
    assert message.startswith(f"{model_path}: another training run is writing it (process ")
    assert f"process {os.getpid()} on {socket.gethostname()}, started " in message
    assert "choose another --model_path" in message
    assert not lock_path(model_path).exists()  # released and removed
    with run_lock(model_path):  # and free again
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys) -> None:
    model_path = tmp_path / "m.pt"
    pid = dead_pid()
    holder = {"pid": pid, "host": socket.gethostname(), "started": "earlier"}
    lock_path(model_path).write_text(json.dumps(holder))
    with run_lock(model_path):
        assert json.loads(lock_path(model_path).read_text())["pid"] == os.getpid()
    assert f"left by process {pid} on {socket.gethostname()}" in capsys.readouterr().err


def test_without_flock_a_live_holder_still_refuses_and_a_dead_one_is_taken_over(
    tmp_path, monkeypatch
) -> None:
    """Some network file systems have no flock: the pid and host in the file decide."""
    monkeypatch.setattr(petseg.runlock, "_flock", lambda fd: False)
    model_path = tmp_path / "m.pt"
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}
    lock_path(model_path).write_text(json.dumps(live))
    with pytest.raises(PetsegError, match=f"process {os.getppid()} on"), run_lock(model_path):
        pass
    other_host = {"pid": 1, "host": "another-node", "started": "earlier"}
    lock_path(model_path).write_text(json.dumps(other_host))
    with pytest.raises(PetsegError, match="another-node"), run_lock(model_path):
        pass
    lock_path(model_path).write_text(json.dumps(live | {"pid": dead_pid()}))
    with run_lock(model_path):
        pass


def test_disabled_holds_nothing(tmp_path: Path) -> None:
    with run_lock(tmp_path / "m.pt", enabled=False):
        assert not lock_path(tmp_path / "m.pt").exists()
