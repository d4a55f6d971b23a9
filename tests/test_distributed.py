"""Data-parallel training: sharded validation, backend and device checks, timeouts, and torchrun.

The torchrun test launches two CPU processes (gloo) on a 290-image subset of the real sample:
261 train and 29 valid images, an odd count, so DistributedSampler would have padded validation.
It trains a narrow UNet: on CPU, gloo's all-reduce of the ResNet34-UNet's 24 M gradients takes
about 2 s a step, too slow to learn anything in a test's budget.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from petseg import cli, distributed
from petseg.checkpoint import history_path, last_checkpoint_path
from petseg.distributed import (
    ShardSampler,
    World,
    choose_device_and_backend,
    interleave_shards,
    launched_by_torchrun,
    read_ranks,
    shard_indices,
    world_session,
)
from petseg.errors import PetsegError
from petseg.evaluate import Evaluation
from petseg.metrics import SegmentationScores

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with petseg importable from this checkout, for child processes."""
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


@pytest.mark.parametrize("size", [1, 2, 4, 7, 64])
def test_shards_cover_every_index_exactly_once(size: int) -> None:
    shards = [list(shard_indices(30, rank, size)) for rank in range(size)]
    assert sorted(index for shard in shards for index in shard) == list(range(30))
    lengths = {len(shard) for shard in shards}
    assert max(lengths) - min(lengths) <= 1
    assert [list(ShardSampler(30, rank, size)) for rank in range(size)] == shards


@pytest.mark.parametrize("size", [2, 4, 7])
def test_interleaving_the_shards_restores_dataset_order(size: int) -> None:
    rows = torch.arange(30 * 4).reshape(30, 4)
    shards = [rows[list(shard_indices(30, rank, size))] for rank in range(size)]
    assert torch.equal(interleave_shards(shards, 30), rows)
    with pytest.raises(ValueError, match="shard 0"):
        interleave_shards([shards[0][:-1], *shards[1:]], 30)


def test_sharded_scores_equal_single_process_scores_where_padding_would_not() -> None:
    generator = torch.Generator().manual_seed(0)
    preds = torch.rand(7, 1, 8, 8, generator=generator) > 0.5
    targets = torch.rand(7, 1, 8, 8, generator=generator) > 0.3
    whole = SegmentationScores()
    whole.update(preds, targets)
    shards = []
    for rank in range(2):
        part = SegmentationScores()
        part.update(preds[rank::2], targets[rank::2])
        shards.append(part.counts)
    merged = SegmentationScores([interleave_shards(shards, 7)])
    assert merged.summary() == whole.summary()
    # What DistributedSampler does (pad rank 1 with image 0) counts one image twice.
    padded = SegmentationScores([whole.counts, whole.counts[:1]])
    assert padded.summary()["num_images"] == 8
    assert padded.summary()["dice"] != pytest.approx(whole.summary()["dice"], abs=1e-6)


def test_torchrun_is_recognised_by_its_variables() -> None:
    assert not launched_by_torchrun({})
    assert not launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    assert launched_by_torchrun({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})
    assert read_ranks({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == (3, 1, 4)
    with pytest.raises(PetsegError, match="RANK=4"):
        read_ranks({"RANK": "4", "LOCAL_RANK": "0", "WORLD_SIZE": "4"})
    with pytest.raises(PetsegError, match="integers"):
        read_ranks({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "4"})


def test_backend_follows_the_device_and_a_mismatch_is_refused(monkeypatch) -> None:
    assert choose_device_and_backend("cpu", "auto", 0) == (torch.device("cpu"), "gloo")
    assert choose_device_and_backend("cpu", "gloo", 3) == (torch.device("cpu"), "gloo")
    with pytest.raises(PetsegError, match="nccl needs CUDA"):
        choose_device_and_backend("cpu", "nccl", 0)
    with pytest.raises(PetsegError, match="--dist_backend"):
        choose_device_and_backend("cpu", "mpi", 0)

    # A CUDA node, faked: two GPUs.
    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(distributed.tdist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device_and_backend("cuda", "auto", 1) == (torch.device("cuda", 1), "nccl")
    with pytest.raises(PetsegError, match="gloo with a CUDA device"):
        choose_device_and_backend("cuda", "gloo", 0)
    with pytest.raises(PetsegError, match="--nproc_per_node 2"):
        choose_device_and_backend("cuda", "auto", 2)


def test_a_single_process_has_no_group_and_trains_the_model_itself() -> None:
    with world_session("cpu", environ={}) as world:
        assert world == World(torch.device("cpu"))
        assert not world.distributed and world.is_main
        model = torch.nn.Linear(2, 1)
        assert distributed.wrap_model(model, world) is model
        assert distributed.valid_sampler(range(5), world) is None
        assert distributed.train_sampler(range(5), world, seed=1) is None
        evaluation = Evaluation(SegmentationScores(), loss=0.5)
        assert distributed.gather_evaluation(evaluation, 0, world) is evaluation
        assert distributed.mean_over_ranks(0.25, world) == 0.25


def test_sync_batchnorm_on_cpu_is_refused_before_joining() -> None:
    environ = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    with (
        pytest.raises(PetsegError, match="--sync_batchnorm needs CUDA"),
        world_session("cpu", sync_batchnorm=True, environ=environ),
    ):
        pass


def test_unreachable_rendezvous_is_a_one_line_error_within_the_timeout(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    port = free_port()  # nobody listens there
    for name, value in {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code = cli.main(
        [
            "train",
            "--device",
            "cpu",
            "--dist_timeout",
            "1",
            "--data_path",
            str(tmp_path),
            "--model_path",
            str(tmp_path / "m.pt"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert time.monotonic() - started < 30
    assert f"127.0.0.1:{port}" in err and "--dist_timeout 1" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# Two ranks without torchrun (the same variables it sets): both gather their shard of 7 images'
# counts; then rank 1 stalls and rank 0's next collective must give up after the timeout.
TWO_RANKS = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    from petseg.distributed import gather_evaluation, mean_over_ranks, shard_indices
    from petseg.distributed import world_session
    from petseg.errors import PetsegError
    from petseg.evaluate import Evaluation
    from petseg.metrics import SegmentationScores

    counts = torch.arange(7 * 4).reshape(7, 4)
    try:
        with world_session("cpu", timeout_s=2) as world:
            mine = counts[list(shard_indices(7, world.rank, world.size))]
            gathered = gather_evaluation(
                Evaluation(SegmentationScores([mine]), loss=float(world.rank)), 7, world
            )
            print(json.dumps({"counts": gathered.scores.counts.tolist(),
                              "loss": gathered.loss}), file=sys.stderr, flush=True)
            if world.rank == 1:
                time.sleep(120)  # stalls; the test ends it
            started = time.monotonic()
            try:
                mean_over_ranks(1.0, world)
            finally:
                print(f"waited {time.monotonic() - started:.1f}", file=sys.stderr, flush=True)
    except PetsegError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        os._exit(2)
    """
)


def test_two_ranks_gather_every_image_once_and_a_stalled_rank_times_out() -> None:
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_RANKS],
            env=subprocess_env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                OMP_NUM_THREADS="1",
            ),
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        rank0_output = ranks[0].communicate(timeout=120)[1]
        stalled = ranks[1].poll() is None  # rank 0 gave up by itself, not because rank 1 left
    finally:
        ranks[1].kill()
    outputs = [rank0_output, ranks[1].communicate()[1]]
    assert stalled
    expected = torch.arange(7 * 4).reshape(7, 4).tolist()
    for output in outputs:
        gathered = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
        assert gathered["counts"] == expected
        assert gathered["loss"] == pytest.approx((0 * 4 + 1 * 3) / 7)  # weighted by images
    rank0 = outputs[0].splitlines()
    assert ranks[0].returncode == 2, outputs[0][-2000:]
    error = next(line for line in rank0 if line.startswith("error: "))
    assert "rank 0 of 2: lost contact" in error and "--dist_timeout 2" in error
    waited = float(next(line for line in rank0 if line.startswith("waited ")).split()[1])
    assert waited >= 1.5  # it did wait for the timeout


def test_distributed_flags_and_their_defaults() -> None:
    args = cli.build_parser().parse_args(["train"])
    assert (args.dist_backend, args.dist_timeout, args.sync_batchnorm) == ("auto", 600.0, False)
    args = cli.build_parser().parse_args(
        ["train", "--dist-backend", "gloo", "--dist-timeout", "30", "--sync-batchnorm"]
    )
    assert (args.dist_backend, args.dist_timeout, args.sync_batchnorm) == ("gloo", 30.0, True)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--dist_backend", "mpi"])


def test_train_help_says_the_batch_size_is_per_process(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "images per batch and process" in help_text
    assert "batch_size x processes" in help_text


# --- torchrun on the real sample ------------------------------------------------------------

SIZE = 64
SUBSET_LINES = 290  # trainval lines: every 10th is valid -> 261 train, 29 valid
VALID_IMAGES = 29


@pytest.fixture(scope="module")
def subset(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's first 290 trainval images, by links (no copies)."""
    root = tmp_path_factory.mktemp("subset")
    (root / "annotations").mkdir()
    (root / "images").symlink_to(sample_data / "images")
    (root / "annotations" / "trimaps").symlink_to(sample_data / "annotations" / "trimaps")
    lines = (sample_data / "annotations" / "trainval.txt").read_text().splitlines()
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines[:SUBSET_LINES]) + "\n")
    (root / "annotations" / "test.txt").write_text(lines[0] + "\n")
    return root


def torchrun_train(data: Path, model_path: Path, epochs: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "petseg",
            "train",
            "--data_path",
            str(data),
            "--model_type",
            "unet",
            "--unet_widths",
            "8,16,32,64",
            "--image_size",
            str(SIZE),
            "--epochs",
            str(epochs),
            "--batch_size",
            "8",
            "-lr",
            "3e-3",
            # a constant rate: one epoch of warmup would leave the model predicting nothing,
            # and equal scores of an empty prediction would prove little
            "--scheduler",
            "constant",
            "--tune_threshold",
            "--num_workers",
            "0",
            "--device",
            "cpu",
            "--dist_timeout",
            "60",
            # fp32 whatever the CPU: the test compares training's validation with `evaluate`,
            # which in bf16 (auto on AVX512-BF16) runs a BatchNorm-folded model that rounds
            # differently (4e-4 in Dice here)
            "--precision",
            "fp32",
            "--model_path",
            str(model_path),
        ],
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_torchrun_trains_matches_evaluate_and_resumes(subset: Path, tmp_path: Path, capsys):
    model_path = tmp_path / "unet.pt"
    done = torchrun_train(subset, model_path, epochs=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.glob("*.pt")) == ["unet.last.pt", "unet.pt"]
    summaries = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(summaries) == 1  # rank 0 only
    assert done.stdout.count("training unet") == 1
    assert done.stdout.count("estimated: about") == 1  # during epoch 1, by rank 0
    assert "data parallel over 2 processes (gloo): batch 8 per process, 16 per step" in done.stdout
    # rank 0 built the image cache while rank 1 waited, then both read it
    assert done.stdout.count("cache: train split") == 1 and "built in" in done.stdout
    assert (subset / ".petseg-cache" / "train-72px" / "index.json").is_file()

    checkpoint = torch.load(model_path, weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["world_size"] == 2
    assert checkpoint["valid_scores"]["num_images"] == VALID_IMAGES  # once each, no padding
    printed = float(summaries[0].split("valid Dice ")[1].split()[0])
    assert printed == pytest.approx(checkpoint["valid_scores"]["dice"], abs=1e-4)

    output = tmp_path / "valid.json"
    assert (
        cli.main(
            [
                "evaluate",
                "--model_path",
                str(model_path),
                "--data_path",
                str(subset),
                "--split",
                "valid",
                "--num_workers",
                "0",
                "--output",
                str(output),
                "--threshold",
                "0.5",  # training validates at 0.5; rank 0 tunes the threshold afterwards
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert checkpoint["threshold_sweep"]["split"] == "valid"
    capsys.readouterr()
    single = json.loads(output.read_text())
    assert single["num_images"] == VALID_IMAGES
    assert single["dice"] > 0.1  # the model predicts something, so equal scores mean something
    for key in ("dice", "dice_dataset", "iou"):
        assert single[key] == pytest.approx(checkpoint["valid_scores"][key], abs=1e-4), key

    resumed = torchrun_train(subset, model_path, epochs=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"resuming from {last_checkpoint_path(model_path)}: epoch 1") == 1
    summaries = [line for line in resumed.stdout.splitlines() if line.startswith("epoch ")]
    assert len(summaries) == 1 and summaries[0].startswith("epoch 2/2")
    last = torch.load(last_checkpoint_path(model_path), weights_only=True)
    assert last["epoch"] == 2
    with history_path(model_path).open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2]
