"""Data-parallel training under torchrun: process group, one device per process, sharded validation.

``torchrun --nproc_per_node N -m petseg train ...`` starts N copies of the command, each with
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment. Each copy trains a
DistributedDataParallel replica on its share of the training images; gradients are averaged, so
the replicas stay identical. Rank 0 alone writes checkpoints and history, and alone prints: the
other ranks' stdout is discarded, since every line `train` prints would repeat rank 0's. Errors
go to stderr and show from every rank.

Validation splits the images over the ranks without the repeats DistributedSampler pads with,
gathers the per-image counts back into dataset order, and scores them as a single process would.

Every collective waits at most --dist_timeout seconds, so a rank that dies or stalls makes the
others fail with a one-line error instead of hanging (torchrun also stops the whole group when
one process exits with an error).

The process group is process-wide state; `world_session` creates it and destroys it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Sampler

from petseg.choices import DIST_BACKENDS
from petseg.config import DIST_TIMEOUT_S
from petseg.data.oxford_pet import missing_archives
from petseg.errors import PetsegError
from petseg.evaluate import Evaluation
from petseg.metrics import SegmentationScores
from petseg.runtime import resolve_device

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
# Rank r offsets its augmentation seed by r x this, more than any run's epoch count, so no two
# (epoch, rank) pairs share a seed; rank 0 keeps the single-process seed.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class World:
    """Where this process stands: a single process is rank 0 of a world of one, without a group."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0  # the process's index on its node, which picks its GPU
    size: int = 1
    backend: str | None = None  # "nccl" or "gloo" under torchrun; None: no process group
    timeout_s: float = DIST_TIMEOUT_S
    sync_batchnorm: bool = False

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    return all(name in environ for name in TORCHRUN_VARIABLES)


def read_ranks(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment variables, checked."""
    described = " ".join(f"{name}={environ.get(name)}" for name in TORCHRUN_VARIABLES)
    try:
        rank, local_rank, size = (int(environ[name]) for name in TORCHRUN_VARIABLES)
    except ValueError:
        raise PetsegError(f"{described}: torchrun's variables must be integers") from None
    if not 0 <= rank < size or local_rank < 0:
        raise PetsegError(f"{described}: RANK must lie in 0..WORLD_SIZE-1, LOCAL_RANK >= 0")
    return rank, local_rank, size


def choose_device_and_backend(
    device_name: str, backend: str, local_rank: int
) -> tuple[torch.device, str]:
    """cuda:LOCAL_RANK with nccl, or the CPU with gloo; other pairings are refused."""
    if backend not in DIST_BACKENDS:
        raise PetsegError(
            f"unknown --dist_backend {backend!r}: choose one of {', '.join(DIST_BACKENDS)}"
        )
    device = resolve_device(device_name)
    if device.type == "cuda":
        if backend == "gloo":
            raise PetsegError(
                "--dist_backend gloo with a CUDA device: petseg uses gloo for CPU training only; "
                "use --dist_backend nccl (or auto) on GPUs, or --device cpu"
            )
        if not tdist.is_nccl_available():
            raise PetsegError(
                "this PyTorch build has no NCCL for multi-GPU training; use --device cpu "
                "(gloo) or a CUDA build of PyTorch"
            )
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise PetsegError(
                f"LOCAL_RANK {local_rank} but this node has {count} GPU(s): start at most "
                f"{count} processes per node (--nproc_per_node {count})"
            )
        return torch.device("cuda", local_rank), "nccl"
    if backend == "nccl":
        raise PetsegError(
            f"--dist_backend nccl needs CUDA GPUs but the device is {device.type}; "
            "use --dist_backend gloo (or auto) on CPUs"
        )
    return device, "gloo"


@contextlib.contextmanager
def world_session(
    device_name: str,
    *,
    backend: str = "auto",
    timeout_s: float = DIST_TIMEOUT_S,
    sync_batchnorm: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> Iterator[World]:
    """The World of this process; under torchrun, joined to the process group for the block.

    Outside torchrun this is a world of one on `device_name`, and nothing else changes. Under
    torchrun: the group is joined within `timeout_s` (the same limit then holds for every
    collective), ranks other than 0 run with stdout discarded, a lost peer or a timeout becomes a
    one-line PetsegError, and the group is destroyed on the way out.
    """
    if not launched_by_torchrun(environ):
        yield World(resolve_device(device_name))
        return
    rank, local_rank, size = read_ranks(environ)
    device, backend = choose_device_and_backend(device_name, backend, local_rank)
    if sync_batchnorm and device.type != "cuda":
        raise PetsegError(
            "--sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm does not run on the "
            "CPU); drop it"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    address = f"{environ.get('MASTER_ADDR', '?')}:{environ.get('MASTER_PORT', '?')}"
    try:
        tdist.init_process_group(
            backend,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    except (RuntimeError, ValueError) as error:  # DistError is a RuntimeError
        raise PetsegError(
            f"rank {rank} of {size}: cannot join the process group at {address} within "
            f"--dist_timeout {timeout_s:g} s ({_reason(error)}); check that every process was "
            "started and that the address is reachable from this node"
        ) from None
    world = World(device, rank, local_rank, size, backend, timeout_s, sync_batchnorm)
    try:
        with _stdout_on_main_only(world):
            yield world
    except RuntimeError as error:
        if not _is_collective_failure(error):
            raise
        raise PetsegError(
            f"rank {rank} of {size}: lost contact with the other processes ({_reason(error)}); "
            f"another process failed (see its output) or stalled for more than --dist_timeout "
            f"{timeout_s:g} s"
        ) from None
    finally:
        tdist.destroy_process_group()


def _is_collective_failure(error: RuntimeError) -> bool:
    # Store and NCCL failures raise DistError; gloo raises plain RuntimeErrors that name it.
    return isinstance(error, tdist.DistError) or "gloo" in str(error)


def _reason(error: BaseException) -> str:
    """The first line of a c10d error, without its leading [source/file.cc:line] tag."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return re.sub(r"^\[[^\]]*\]\s*", "", lines[0])[:200]


@contextlib.contextmanager
def _stdout_on_main_only(world: World) -> Iterator[None]:
    if world.is_main:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def require_dataset(world: World, data_path: Path) -> None:
    """Under torchrun the dataset must be there already: N processes must not download at once."""
    missing = missing_archives(data_path)
    if world.distributed and missing:
        raise PetsegError(
            f"{data_path}: lacks the Oxford-IIIT Pet {' and '.join(missing)}; under torchrun "
            f"run `petseg download --data_path {data_path}` first (on every node without "
            "shared storage)"
        )


def check_same_start(world: World, start_epoch: int, model_path: Path) -> None:
    """Every rank must resume from the same epoch, or the ranks would train different loops."""
    if not world.distributed:
        return
    mine = torch.tensor([start_epoch], dtype=torch.int64, device=world.device)
    epochs = [torch.empty_like(mine) for _ in range(world.size)]
    tdist.all_gather(epochs, mine)
    seen = [int(epoch.item()) for epoch in epochs]
    if len(set(seen)) > 1:
        raise PetsegError(
            f"{model_path}: the processes found different checkpoints (epochs done, by rank: "
            f"{seen}); on several nodes --model_path must be on storage that every node shares"
        )


def wrap_model(model: nn.Module, world: World) -> nn.Module:
    """The module to train: `model` itself, or DistributedDataParallel around it under torchrun.

    `model` stays the one to save and to evaluate: the wrapper shares its parameters. SyncBatchNorm
    replaces the BatchNorm layers in place, keeping their parameters and buffers, so the optimizer
    and the saved state_dict (same keys) are unaffected.
    """
    if not world.distributed:
        return model
    if world.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def train_sampler(dataset: Dataset, world: World, seed: int) -> DistributedSampler | None:
    """Under torchrun, each rank's share of a shuffle that depends on (seed, epoch): call
    set_epoch every epoch. Ranks get equal shares (DistributedSampler repeats a few images to
    make them so), hence equal batch counts, which DDP needs."""
    if not world.distributed:
        return None
    return DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, seed=seed)


def shard_indices(num_items: int, rank: int, size: int) -> range:
    """Rank `rank` of `size` takes items rank, rank + size, ...: each item exactly once overall."""
    return range(rank, num_items, size)


class ShardSampler(Sampler[int]):
    """This rank's `shard_indices`, in order, without padding (validation counts each image once)."""

    def __init__(self, num_items: int, rank: int, size: int) -> None:
        self.indices = shard_indices(num_items, rank, size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def valid_sampler(dataset: Dataset, world: World) -> ShardSampler | None:
    if not world.distributed:
        return None
    return ShardSampler(len(dataset), world.rank, world.size)


def interleave_shards(shards: Sequence[torch.Tensor], num_items: int) -> torch.Tensor:
    """Undo `shard_indices`: shards[r] holds the rows of items r, r + W, ...; returns all rows in
    item order."""
    size = len(shards)
    merged = shards[0].new_empty((num_items, *shards[0].shape[1:]))
    for rank, shard in enumerate(shards):
        expected = len(shard_indices(num_items, rank, size))
        if shard.shape[0] != expected:
            raise ValueError(f"shard {rank} of {size} has {shard.shape[0]} rows, not {expected}")
        merged[rank::size] = shard
    return merged


def gather_evaluation(evaluation: Evaluation, num_images: int, world: World) -> Evaluation:
    """All ranks' per-image counts in dataset order, and the loss averaged over all images.

    `evaluation` covers this rank's `ShardSampler` images; the result equals, on every rank, the
    evaluation of the whole set by one process (never an average of per-rank averages).
    """
    if not world.distributed:
        return evaluation
    counts = evaluation.scores.counts  # (images of this rank, 4)
    longest = math.ceil(num_images / world.size)
    padded = torch.zeros(longest, 4, dtype=torch.int64, device=world.device)
    padded[: counts.shape[0]] = counts.to(world.device)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    tdist.all_gather(parts, padded)
    shards = [
        part[: len(shard_indices(num_images, rank, world.size))].cpu()
        for rank, part in enumerate(parts)
    ]
    scores = SegmentationScores([interleave_shards(shards, num_images)])

    # A rank without images (more ranks than images) has no loss and weighs nothing.
    weight = counts.shape[0] if evaluation.loss is not None else 0
    loss_and_weight = torch.tensor(
        [(evaluation.loss or 0.0) * weight, weight], dtype=torch.float64, device=world.device
    )
    tdist.all_reduce(loss_and_weight)
    loss_sum, images = loss_and_weight.tolist()
    return Evaluation(scores=scores, loss=loss_sum / images if images else None)


def mean_over_ranks(value: float, world: World) -> float:
    """The mean of a per-rank mean. Exact for the train loss: every rank sees as many images."""
    if not world.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=world.device)
    tdist.all_reduce(total)
    return total.item() / world.size


@torch.no_grad()
def broadcast_buffers(model: nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, which each rank updated
    with its own last batch), so all ranks validate the model that rank 0 saves."""
    if not world.distributed:
        return
    for buffer in model.buffers():
        tdist.broadcast(buffer, src=0)


def barrier(world: World) -> None:
    if world.distributed:
        tdist.barrier()
