"""Seeding and device choice: the only code that touches process-wide state."""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn

from petseg.choices import DEVICES, PRECISIONS
from petseg.errors import PetsegError, Terminated

# What a terminal (Ctrl-C) and schedulers (SLURM, docker stop, timeout, Kubernetes) send to stop
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run the block, then put back the random states of Python, NumPy and torch (CPU and every
    CUDA device): work inside it, such as timing steps on a copy of the model, leaves no trace
    on what the run draws afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a user error."""
    if name not in DEVICES:
        raise PetsegError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PetsegError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    return torch.device(name)


# CPU flags of native bfloat16 arithmetic; without them oneDNN emulates bf16, far slower than
# fp32 (docs/speed.md).
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has native bfloat16 instructions (AVX512-BF16 or AMX)."""
    return bool(NATIVE_BF16_CPU_FLAGS & cpu_flags())


def resolve_precision(
    requested: str,
    device: torch.device,
    *,
    cpu_bf16: bool | None = None,
    cuda_bf16: bool | None = None,
) -> str:
    """'fp32', 'bf16' or 'fp16' for autocast on `device`.

    auto: bf16 on CUDA GPUs that support it and on CPUs with native bf16 instructions, fp16
    (with a gradient scaler) on older GPUs, fp32 otherwise. cpu_bf16 / cuda_bf16 override the
    hardware probes (for tests).
    """
    if requested not in PRECISIONS:
        raise PetsegError(f"unknown precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return "bf16" if cuda_bf16 else "fp16"
        if requested == "bf16" and not cuda_bf16:
            raise PetsegError(
                "--precision bf16: this GPU has no bfloat16 support; use fp16 or auto"
            )
        return requested
    if requested == "fp16":
        raise PetsegError("--precision fp16 needs a CUDA GPU; on CPU use bf16, fp32 or auto")
    if cpu_bf16 is None:
        cpu_bf16 = cpu_has_native_bf16()
    if requested == "auto":
        return "bf16" if cpu_bf16 else "fp32"
    return requested


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """Mixed-precision context for forward passes; fp32 is a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile(model) when enabled, else model itself.

    The compiled wrapper shares the model's parameters; keep saving `model`, whose state_dict
    keys carry no ``_orig_mod.`` prefix. Compiling happens on the first calls (tens of seconds).
    """
    return torch.compile(model) if enabled else model


@contextlib.contextmanager
def stop_requests_on_ctrl_c(enabled: bool = True) -> Iterator[Callable[[], bool]]:
    """Yield a function telling whether Ctrl-C was pressed or SIGTERM received; the first only
    asks the training loop to stop at the next batch (so it can save), a second one interrupts
    at once. A KeyboardInterrupt leaving the block after a SIGTERM becomes errors.Terminated,
    whose exit code is 143.

    Signal handlers belong to the main thread; elsewhere, or when not enabled, both signals
    keep their usual meaning and the function always answers False.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        if requested.is_set():
            raise Terminated() if signal.SIGTERM in received else KeyboardInterrupt
        requested.set()
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        print(
            f"\npetseg: {name}: stopping after this batch to save a checkpoint (again: stop now)",
            file=sys.stderr,
        )

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        yield requested.is_set
    except KeyboardInterrupt as error:
        if signal.SIGTERM in received and not isinstance(error, Terminated):
            raise Terminated(*error.args) from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
