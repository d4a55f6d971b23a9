"""Device and precision choice; stopping on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch

from petseg.errors import PetsegError, Terminated
from petseg.runtime import (
    cpu_flags,
    preserved_random_state,
    resolve_device,
    resolve_precision,
    stop_requests_on_ctrl_c,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("cpu_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_uses_bf16_only_with_native_support(cpu_bf16: bool, expected: str) -> None:
    assert resolve_precision("auto", CPU, cpu_bf16=cpu_bf16) == expected


@pytest.mark.parametrize(("cuda_bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_prefers_bf16_then_fp16(cuda_bf16: bool, expected: str) -> None:
    assert resolve_precision("auto", CUDA, cuda_bf16=cuda_bf16) == expected


def test_explicit_choices_are_kept_where_the_hardware_allows() -> None:
    assert resolve_precision("fp32", CPU, cpu_bf16=True) == "fp32"
    assert resolve_precision("bf16", CPU, cpu_bf16=False) == "bf16"  # allowed, only slow
    assert resolve_precision("fp16", CUDA, cuda_bf16=True) == "fp16"


@pytest.mark.parametrize(
    ("requested", "device", "fragment"),
    [("fp16", CPU, "needs a CUDA GPU"), ("bf16", CUDA, "no bfloat16"), ("fp8", CPU, "unknown")],
)
def test_impossible_precisions_are_user_errors(requested, device, fragment) -> None:
    with pytest.raises(PetsegError, match=fragment):
        resolve_precision(requested, device, cpu_bf16=False, cuda_bf16=False)


def test_the_probe_reads_this_machines_flags() -> None:
    flags = cpu_flags()
    assert isinstance(flags, frozenset)
    # every x86-64 Linux machine reports at least SSE2; elsewhere the probe returns nothing
    assert not flags or "sse2" in flags or "fp" in flags or "neon" in flags or "asimd" in flags


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(PetsegError, match="unknown device"):
        resolve_device("tpu")


# --- stopping on Ctrl-C or SIGTERM ------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "stopped_as", "code"),
    [(signal.SIGINT, KeyboardInterrupt, 130), (signal.SIGTERM, Terminated, 143)],
)
def test_a_stop_signal_asks_to_stop_then_leaves_as_its_kind(signum, stopped_as, code) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as caught, stop_requests_on_ctrl_c() as stop_requested:
        assert not stop_requested()
        os.kill(os.getpid(), signum)  # the handler runs before kill returns, in this thread
        assert stop_requested()
        raise KeyboardInterrupt  # what the training loop does once it has saved
    assert type(caught.value) is stopped_as
    assert getattr(caught.value, "exit_code", 130) == code
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_sigterm_stops_at_once() -> None:
    with pytest.raises(Terminated), stop_requests_on_ctrl_c():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("the second SIGTERM did not interrupt")


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_work_inside_a_preserved_random_state_leaves_no_trace_on_later_draws() -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = draws()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with preserved_random_state():
        inside = draws()
        torch.nn.Dropout(0.5)(torch.ones(100))
    assert draws() == expected == inside
