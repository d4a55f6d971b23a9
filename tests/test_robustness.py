"""Bad inputs get one clear line and exit code 2; crashes lose at most the running epoch.

Each test of the first part is one row of the table in docs/robustness.md (the row id is in the
test name). Data is synthetic: a small copy of the official layout built per test.
"""

from __future__ import annotations

import csv
import errno
import itertools
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from petseg.checkpoint import history_path, last_checkpoint_path, save_checkpoint
from petseg.cli import main
from petseg.errors import PetsegError


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- data path and dataset contents -----------------------------------------------------------


def test_row01_nonexistent_data_path_without_network(tmp_path, fails_with, train_args) -> None:
    missing = tmp_path / "no-such-folder"
    mirror = f"http://127.0.0.1:{closed_port()}"
    fails_with(
        train_args(missing, tmp_path / "m.pt", "--mirror", mirror),
        "cannot download",
        "--mirror",
        "point --data_path at its folder",
    )
    assert not (tmp_path / "m.pt").exists()
    assert not missing.exists()  # the folder made for the download went with it


def test_row02_data_path_is_a_file(tmp_path, fails_with, train_args) -> None:
    not_a_folder = tmp_path / "pets.txt"
    not_a_folder.write_text("hello")
    fails_with(train_args(not_a_folder, tmp_path / "m.pt"), str(not_a_folder))


def test_row03_empty_split_file(data, tmp_path, fails_with, train_args) -> None:
    (data / "annotations" / "trainval.txt").write_text("")
    fails_with(train_args(data, tmp_path / "m.pt"), "trainval.txt", "empty")


def test_row04_listed_image_missing(data, tmp_path, fails_with, train_args, names) -> None:
    missing = data / "images" / f"{names.trainval[3]}.jpg"
    missing.unlink()
    fails_with(train_args(data, tmp_path / "m.pt"), str(missing), "missing")


def test_row05_undecodable_image(data, tmp_path, fails_with, train_args, names) -> None:
    broken = data / "images" / f"{names.trainval[4]}.jpg"
    broken.write_bytes(b"\x00garbage, not a JPEG" * 10)
    fails_with(train_args(data, tmp_path / "m.pt"), str(broken), "cannot decode image")


def test_row06_truncated_jpeg(data, tmp_path, fails_with, train_args, names) -> None:
    truncated = data / "images" / f"{names.trainval[5]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    fails_with(train_args(data, tmp_path / "m.pt"), str(truncated), "truncated")


def test_row07_image_and_trimap_sizes_differ(data, tmp_path, fails_with, train_args, names) -> None:
    trimap = data / "annotations" / "trimaps" / f"{names.trainval[6]}.png"
    Image.fromarray(np.full((10, 10), 2, dtype=np.uint8)).save(trimap)
    fails_with(train_args(data, tmp_path / "m.pt"), str(trimap), "differs")


def test_row08_unexpected_trimap_values(data, tmp_path, fails_with, train_args, names) -> None:
    trimap = data / "annotations" / "trimaps" / f"{names.trainval[7]}.png"
    Image.fromarray(np.full((40, 48), 7, dtype=np.uint8)).save(trimap)
    fails_with(train_args(data, tmp_path / "m.pt"), str(trimap), "[7]")


def test_row09_skip_bad_warns_once_per_file_and_trains(
    data, tmp_path, capsys, train_args, names
) -> None:
    bad = [names.trainval[2], names.trainval[8]]
    for name in bad:
        (data / "images" / f"{name}.jpg").write_bytes(b"not an image")
    model_path = tmp_path / "m.pt"
    assert main(train_args(data, model_path, "--skip_bad")) == 0
    err = capsys.readouterr().err
    for name in bad:
        assert err.count(f"skipping {name} ") == 1
    checkpoint = torch.load(model_path, weights_only=True)
    assert checkpoint["epoch"] == 1


def test_row10_check_lists_problems_and_exits_1(data, capsys, names) -> None:
    (data / "images" / f"{names.trainval[1]}.jpg").write_bytes(b"junk")
    rgba = Image.new("RGBA", (48, 40), (200, 10, 10, 255))
    rgba.save(data / "images" / f"{names.test[0]}.jpg", format="PNG")  # as in the real dataset
    (data / "annotations" / "test.txt").write_text(
        f"{names.test[0]} 1 1 1\n{names.test[0]} 1 1 1\n"
    )
    assert main(["check", "--data_path", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"error  {data / 'images' / names.trainval[1]}.jpg: cannot decode image" in out
    assert "RGBA image, converted to RGB" in out
    assert f"{names.test[0]} is listed 2 times" in out
    assert "2 errors, 1 unusable samples" in out


def test_row10b_check_of_a_clean_dataset_exits_0(data, capsys) -> None:
    assert main(["check", "--data_path", str(data)]) == 0
    assert "0 errors" in capsys.readouterr().out


# --- model type and checkpoints ---------------------------------------------------------------


def test_row11_unknown_model_type(data, usage_error) -> None:
    line = usage_error(["train", "--data_path", str(data), "--model_type", "resnet50"])
    assert "invalid choice: 'resnet50'" in line and "see `petseg train --help`" in line


def test_row12_model_path_not_a_checkpoint(data, tmp_path, fails_with) -> None:
    notes = tmp_path / "notes.pt"
    notes.write_text("my training notes")
    fails_with(
        ["evaluate", "--model_path", str(notes), "--data_path", str(data)],
        str(notes),
        "not a readable checkpoint",
    )


def test_row13_truncated_checkpoint(checkpoint_path, data, fails_with) -> None:
    data_bytes = checkpoint_path.read_bytes()
    checkpoint_path.write_bytes(data_bytes[: len(data_bytes) // 2])
    fails_with(
        ["evaluate", "--model_path", str(checkpoint_path), "--data_path", str(data)],
        "truncated or corrupt",
    )


def test_row14_checkpoint_of_another_architecture(checkpoint_path, data, fails_with) -> None:
    fails_with(
        ["evaluate", "--model_path", str(checkpoint_path), "--data_path", str(data),
         "--model_type", "resnet34_unet"],
        "holds a unet model, not resnet34_unet",
    )  # fmt: skip
    # and resuming its training with another architecture
    shutil.copy(checkpoint_path, last_checkpoint_path(checkpoint_path))
    fails_with(
        ["train", "--data_path", str(data), "--model_path", str(checkpoint_path),
         "--model_type", "resnet34_unet", "--epochs", "3"],
        "holds a unet model",
    )  # fmt: skip


class _Payload:
    """Unpickling this runs open(marker, "w"): what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_row15_malicious_checkpoint_is_refused_unexecuted(tmp_path, data, fails_with) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "petseg-checkpoint", "payload": _Payload(marker)}, evil)
    fails_with(
        ["predict", "--model_path", str(evil), str(data / "images")],
        "refused to load",
        "weights_only",
    )
    assert not marker.exists()


# --- predict inputs ---------------------------------------------------------------------------


def predict_args(checkpoint_path: Path, save_dir: Path, *inputs: Path) -> list[str]:
    return ["predict", "--model_path", str(checkpoint_path), "--save_dir", str(save_dir),
            "--num_workers", "0", *map(str, inputs)]  # fmt: skip


def test_row16_predict_on_a_non_image_file(checkpoint_path, tmp_path, fails_with) -> None:
    text = tmp_path / "readme.jpg"
    text.write_text("not really a jpeg")
    fails_with(predict_args(checkpoint_path, tmp_path / "out", text), str(text))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_row17_predict_on_an_empty_folder(checkpoint_path, tmp_path, fails_with) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    fails_with(predict_args(checkpoint_path, tmp_path / "out", empty), "no image files")


def test_row18_predict_on_a_decompression_bomb(checkpoint_path, tmp_path, monkeypatch, fails_with):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (200, 200)).save(bomb)  # 40,000 pixels, over twice the limit set below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    fails_with(predict_args(checkpoint_path, tmp_path / "out", bomb), str(bomb), "bomb")


def test_row19_predict_on_a_1x1_image(checkpoint_path, tmp_path) -> None:
    tiny = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tiny)
    assert main(predict_args(checkpoint_path, tmp_path / "out", tiny)) == 0
    with Image.open(tmp_path / "out" / "dot.png") as mask:
        assert mask.size == (1, 1)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_row20_predict_on_grayscale_and_cmyk_jpegs(checkpoint_path, tmp_path, mode) -> None:
    photo = tmp_path / f"photo_{mode}.jpg"
    Image.new(mode, (37, 23)).save(photo, format="JPEG")
    assert main(predict_args(checkpoint_path, tmp_path / "out", photo)) == 0
    with Image.open(tmp_path / "out" / f"photo_{mode}.png") as mask:
        assert mask.size == (37, 23) and mask.mode == "L"


def test_row21_unwritable_save_dir(checkpoint_path, data, tmp_path, fails_with, names) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    fails_with(
        predict_args(checkpoint_path, blocker / "masks", data / "images" / f"{names.test[0]}.jpg"),
        str(blocker),
    )
    assert blocker.read_text() == "a file where a folder should be"


def test_row22_same_named_images_would_overwrite(checkpoint_path, tmp_path, fails_with) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "cat.jpg")
    fails_with(
        predict_args(checkpoint_path, tmp_path / "out", tmp_path / "a", tmp_path / "b"),
        "cat.png would overwrite",
    )


def test_row23_threshold_out_of_range(checkpoint_path, tmp_path, usage_error) -> None:
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    argv = [*predict_args(checkpoint_path, tmp_path / "out", photo), "--threshold", "1.5"]
    assert "argument --threshold: must be between 0 and 1" in usage_error(argv)
    assert not (tmp_path / "out").exists()


def truncated_jpeg(path: Path) -> None:
    """A JPEG cut in half: its header reads, its pixels do not decode."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """a.jpg, c.jpg readable; b.jpg not an image; d.jpg truncated."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "c"):
        Image.new("RGB", (30, 20), (200, 40, 40)).save(folder / f"{name}.jpg")
    (folder / "b.jpg").write_text("not an image")
    truncated_jpeg(folder / "d.jpg")
    return folder


def test_row39_an_unreadable_photo_stops_predict(checkpoint_path, photos, tmp_path, fails_with):
    args = predict_args(checkpoint_path, tmp_path / "out", photos)
    fails_with(args, str(photos / "b.jpg"), "not an image", "--skip_bad")
    assert not (tmp_path / "out").exists()
    (photos / "b.jpg").unlink()  # left: a truncated JPEG, found only when decoded
    fails_with(args, str(photos / "d.jpg"), "cannot decode image", "--skip_bad")


def test_row39_skip_bad_leaves_unreadable_photos_out(
    checkpoint_path, photos, tmp_path, capsys, fails_with
):
    # batch 1: the truncated JPEG is a batch of its own, with nothing to stack
    out = tmp_path / "out"
    args = [*predict_args(checkpoint_path, out, photos), "--skip_bad", "--batch_size", "1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    skipped = [line for line in captured.err.splitlines() if line.startswith("petseg: skipping")]
    assert len(skipped) == 2
    assert str(photos / "b.jpg") in skipped[0] and str(photos / "d.jpg") in skipped[1]
    assert "masks of 2 images" in captured.out and "2 unreadable left out" in captured.out
    for name in ("a", "c"):
        (photos / f"{name}.jpg").unlink()
    fails_with(args, "no readable image left")


def test_row39_skip_bad_on_a_split(
    checkpoint_path, data, tmp_path, capsys, fails_with, names
) -> None:
    truncated_jpeg(data / "images" / f"{names.test[0]}.jpg")
    with (data / "annotations" / "test.txt").open("a") as split_file:
        split_file.write("Ghost_1 1 1 1\n")  # listed, no image
    args = ["predict", "--model_path", str(checkpoint_path), "--data_path", str(data),
            "--save_dir", str(tmp_path / "out"), "--num_workers", "0"]  # fmt: skip
    fails_with(args, f"{names.test[0]}.jpg", "--skip_bad")
    assert main([*args, "--skip_bad"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{names.test[1]}.png"]
    captured = capsys.readouterr()
    assert f"skipping {data / 'images' / names.test[0]}.jpg: cannot decode" in captured.err
    assert f"skipping {data / 'images' / 'Ghost_1'}.jpg: file not found" in captured.err
    assert "masks of 1 image " in captured.out and "2 unreadable left out" in captured.out


# --- numbers and devices ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [("--epochs", "0", "must be >= 1"), ("--learning-rate", "-0.001", "must be > 0"),
     ("--batch_size", "0", "must be >= 1"),
     # non-finite or absurd: refused before any work, not trained into a broken model
     ("-lr", "inf", "must be a finite number, got inf"), ("-lr", "nan", "finite number"),
     ("-lr", "1e6", "must be > 0 and <= 1, got 1e+06"), ("--weight_decay", "5", "<= 1"),
     ("--clip_grad", "inf", "finite"), ("--warmup_epochs", "nan", "finite"),
     ("--drop_path", "inf", "finite"), ("--dist_timeout", "inf", "finite")],
)  # fmt: skip
def test_row24_invalid_numbers(data, tmp_path, flag, value, fragment, train_args, usage_error):
    line = usage_error([*train_args(data, tmp_path / "m.pt"), flag, value])
    assert line.startswith("petseg train: error: argument ") and flag in line, line
    assert fragment in line and line.endswith("see `petseg train --help`")
    assert not (tmp_path / "m.pt").exists()


def test_row25_batch_size_larger_than_the_dataset(data, tmp_path, fails_with, train_args) -> None:
    fails_with(
        [*train_args(data, tmp_path / "m.pt"), "--batch_size", "64"],
        "--batch_size 64 is larger than the training split (18 images",
    )


def test_row26_cuda_asked_without_a_gpu(data, tmp_path, fails_with, train_args) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    fails_with([*train_args(data, tmp_path / "m.pt"), "--device", "cuda"], "--device cpu")


def test_row27_out_of_memory_gets_a_hint(data, tmp_path, capsys, monkeypatch, train_args) -> None:
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("petseg.train.fit", exhausted)
    assert main(train_args(data, tmp_path / "m.pt")) == 1
    err = capsys.readouterr().err
    assert "out of memory; try a smaller --batch_size or --image_size" in err
    assert "Traceback" not in err


def test_row28_evaluate_empty_split_name(checkpoint_path, data, fails_with) -> None:
    (data / "annotations" / "test.txt").write_text("\n\n")
    fails_with(
        ["evaluate", "--model_path", str(checkpoint_path), "--data_path", str(data)],
        "test split is empty",
    )


# --- crash safety -----------------------------------------------------------------------------


def launch_training(argv: list[str], epochs: int) -> subprocess.Popen:
    argv = [*argv, "--epochs", str(epochs), "--num_workers", "2"]
    return subprocess.Popen(
        [sys.executable, "-m", "petseg", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal job
    )


def wait_for_epoch(model_path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    last = last_checkpoint_path(model_path)
    deadline = time.monotonic() + timeout
    while not last.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.05)


@pytest.fixture
def slow_data(tmp_path: Path, make_dataset) -> Path:
    """More images so an epoch lasts long enough to be interrupted in the middle."""
    return make_dataset(tmp_path / "pets", [f"Breed_{i}" for i in range(1, 81)])


@pytest.mark.slow
def test_kill_9_mid_training_loses_at_most_the_running_epoch(
    slow_data, tmp_path, train_args
) -> None:
    model_path = tmp_path / "run" / "m.pt"
    process = launch_training(train_args(slow_data, model_path), epochs=3)
    wait_for_epoch(model_path, process)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    newest = torch.load(last_checkpoint_path(model_path), weights_only=True)
    assert newest["epoch"] >= 1

    resumed = subprocess.run(
        [sys.executable, "-m", "petseg", *train_args(slow_data, model_path), "--epochs", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {last_checkpoint_path(model_path)}: epoch {newest['epoch']}" in (
        resumed.stdout
    )
    assert torch.load(last_checkpoint_path(model_path), weights_only=True)["epoch"] == 3


@pytest.mark.slow
def test_ctrl_c_saves_the_steps_taken_and_exits_130_with_one_line(
    slow_data, tmp_path, train_args
) -> None:
    model_path = tmp_path / "run" / "m.pt"
    process = launch_training(train_args(slow_data, model_path), epochs=50)
    wait_for_epoch(model_path, process)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(f"petseg train: interrupted: {last_checkpoint_path(model_path)}")
    assert "run the same command to resume" in last_line
    saved = torch.load(last_checkpoint_path(model_path), weights_only=True)
    assert saved["epoch"] >= 1
    batches = saved.get("partial_epoch", {}).get("batches", 0)
    assert (f"and {batches} batches of the next" in last_line) == (batches > 0)

    resumed = subprocess.run(
        [sys.executable, "-m", "petseg", *train_args(slow_data, model_path), "--epochs",
         str(saved["epoch"] + 1)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last_checkpoint_path(model_path), weights_only=True)["epoch"] == (
        saved["epoch"] + 1
    )


def test_resume_after_ctrl_c_in_mid_epoch_is_exact(
    data, tmp_path, monkeypatch, train_args, ctrl_c_at_poll
) -> None:
    """Ctrl-C one batch into epoch 2, resume: the same weights as two epochs straight."""
    straight, interrupted = tmp_path / "straight.pt", tmp_path / "interrupted.pt"
    extra = ("--num_workers", "2", "--learning-rate", "1e-3", "--epochs", "2")
    assert main([*train_args(data, straight, *extra)]) == 0

    # polled before each batch and after each epoch: epoch 1 = 4 batches (18 images, batch 4)
    # + 1, so the 7th poll comes before the 2nd batch of epoch 2
    monkeypatch.setattr("petseg.train.stop_requests_on_ctrl_c", ctrl_c_at_poll(7))
    assert main([*train_args(data, interrupted, *extra)]) == 130
    saved = torch.load(last_checkpoint_path(interrupted), weights_only=True)
    assert saved["epoch"] == 1 and saved["partial_epoch"]["batches"] == 1
    monkeypatch.undo()
    assert main([*train_args(data, interrupted, *extra)]) == 0

    a = torch.load(last_checkpoint_path(straight), weights_only=True)
    b = torch.load(last_checkpoint_path(interrupted), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], tensor, rtol=0, atol=1e-6, msg=key)
    assert a["valid_scores"] == pytest.approx(b["valid_scores"])


@pytest.mark.slow
def test_resume_is_exact(data, tmp_path, train_args) -> None:
    """Two epochs straight equal one epoch, a restart, and one more: same weights.

    A constant rate: extending --epochs reshapes a onecycle or cosine schedule (its length is
    the total), which is why this run's rates would differ; a resume with the same --epochs
    follows the same curve (test_resume_after_ctrl_c_in_mid_epoch_is_exact)."""
    straight, split = tmp_path / "straight.pt", tmp_path / "split.pt"
    extra = ("--num_workers", "2", "--learning-rate", "1e-3", "--scheduler", "constant")
    assert main([*train_args(data, straight, *extra), "--epochs", "2"]) == 0
    assert main([*train_args(data, split, *extra), "--epochs", "1"]) == 0
    assert main([*train_args(data, split, *extra), "--epochs", "2"]) == 0
    a = torch.load(last_checkpoint_path(straight), weights_only=True)
    b = torch.load(last_checkpoint_path(split), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], tensor, rtol=0, atol=1e-6, msg=key)
    assert a["valid_scores"] == pytest.approx(b["valid_scores"])


def test_atomic_write_keeps_the_old_checkpoint_when_saving_fails(
    checkpoint_path, monkeypatch
) -> None:
    before = checkpoint_path.read_bytes()

    def broken_save(obj, handle) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(PetsegError, match="disk full"):
        save_checkpoint(checkpoint_path, {"format": "petseg-checkpoint"})
    assert checkpoint_path.read_bytes() == before
    assert [p.name for p in checkpoint_path.parent.iterdir() if p.suffix == ".tmp"] == []


def test_row29_predict_without_inputs_or_data_path(checkpoint_path, fails_with) -> None:
    fails_with(["predict", "--model_path", str(checkpoint_path)], "needs image files")


def test_row33_check_on_a_missing_folder(tmp_path, fails_with) -> None:
    missing = tmp_path / "nothing"
    fails_with(["check", "--data_path", str(missing)], str(missing), "no such folder")


def test_row09b_other_ranks_skip_the_same_samples_silently(data, capsys, names) -> None:
    from petseg.data.check import checked_names

    (data / "images" / f"{names.trainval[2]}.jpg").write_bytes(b"not an image")
    quiet = checked_names(data, "train", skip_bad=True, report=False)
    assert capsys.readouterr().err == ""
    loud = checked_names(data, "train", skip_bad=True)
    assert quiet == loud and names.trainval[2] not in loud
    assert capsys.readouterr().err.count(f"skipping {names.trainval[2]} ") == 1


# --- data path mistakes are not downloads (issue 48, item 6) ----------------------------------


def test_row40_a_typo_in_data_path_suggests_the_folder_meant(
    data, tmp_path, fails_with, train_args
) -> None:
    typo = data.with_name("pest")
    fails_with(train_args(typo, tmp_path / "m.pt"), f"{typo}: no such folder; did you "
               f"mean {data}?", "--download")  # fmt: skip
    assert not typo.exists()
    elsewhere = tmp_path / "nothing-like-it"
    fails_with(train_args(elsewhere, tmp_path / "m.pt"), "no such folder; point "
               "--data_path at the folder holding images/ and annotations/")  # fmt: skip
    assert not elsewhere.exists()


def test_row41_the_images_subfolder_suggests_its_parent(
    data, tmp_path, fails_with, train_args
) -> None:
    for part in ("images", "annotations"):
        fails_with(train_args(data / part, tmp_path / "m.pt"),
                   f"{data / part}: is the dataset's {part}/ subfolder; pass its parent {data}")  # fmt: skip


def test_row42_a_dataset_missing_a_file_names_it(checkpoint_path, data, tmp_path, fails_with):
    (data / "annotations" / "test.txt").unlink()
    fails_with(
        ["evaluate", "--model_path", str(checkpoint_path), "--data_path", str(data)],
        f"{data / 'annotations' / 'test.txt'}: missing, so the dataset in {data} is incomplete",
        "--download",
    )
    assert sorted(p.name for p in data.iterdir()) == ["annotations", "images"]


def test_row43_the_folder_above_the_dataset_points_down(
    data, tmp_path, fails_with, train_args
) -> None:
    fails_with(train_args(data.parent, tmp_path / "m.pt"),
               f"{data.parent}: holds the dataset one level down; pass --data_path {data}")  # fmt: skip


def test_row44_download_asked_for_goes_ahead_and_a_failure_leaves_no_folder(
    tmp_path, monkeypatch, fails_with, train_args
) -> None:
    asked: list[tuple[Path, str | None]] = []

    def offline(root: Path, mirror: str | None = None) -> list[str]:
        asked.append((root, mirror))
        root.mkdir(parents=True, exist_ok=True)  # as download_dataset does first
        raise PetsegError("cannot download (offline)")

    monkeypatch.setattr("petseg.data.loading.download_dataset", offline)
    wanted = tmp_path / "new" / "my-pets"
    fails_with([*train_args(wanted, tmp_path / "m.pt"), "--download"], "offline")
    assert asked == [(wanted, None)] and not wanted.parent.exists()
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is clearly meant for the dataset: no --download needed
    fails_with(train_args(empty, tmp_path / "m.pt"), "offline")
    assert asked[-1] == (empty, None) and empty.is_dir()


# --- misleading model files (item 7) ----------------------------------------------------------


def test_row45_evaluate_given_an_onnx_file(data, tmp_path, fails_with) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x08\x12\x07pytorch")
    fails_with(
        ["evaluate", "--model_path", str(onnx_file), "--data_path", str(data)],
        f"{onnx_file}: is an ONNX model, not a checkpoint; this command needs the .pt checkpoint",
    )


def test_row46_a_folder_as_model_path(checkpoint_path, data, fails_with) -> None:
    fails_with(
        ["evaluate", "--model_path", str(checkpoint_path.parent), "--data_path", str(data)],
        f"{checkpoint_path.parent}: is a folder, not a checkpoint; pass one of its checkpoint "
        "files (tiny.pt)",
    )


# --- outputs are checked first; a failed write is one line and a rerun repairs (item 3) ------


def test_row47_evaluate_output_is_a_folder(
    checkpoint_path, data, tmp_path, capsys, fails_with
) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    args = ["evaluate", "--model_path", str(checkpoint_path), "--data_path", str(data),
            "--output", str(folder)]  # fmt: skip
    fails_with(args, f"{folder}: is a folder; name a file to write instead")
    assert "Dice" not in capsys.readouterr().out  # refused before evaluating
    assert list(folder.iterdir()) == []


def test_row48_train_on_a_read_only_file_system(
    data, tmpfs, capsys, fails_with, train_args
) -> None:
    model_path = tmpfs(64, read_only=True) / "m.pt"
    fails_with(train_args(data, model_path), "cannot write (Read-only file system)")
    assert "training" not in capsys.readouterr().out


def history_epochs(model_path: Path) -> list[dict[str, str]]:
    with history_path(model_path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_consistent(model_path: Path, epochs: int) -> None:
    """Best checkpoint, last checkpoint and history tell the same story."""
    last = torch.load(last_checkpoint_path(model_path), weights_only=True)
    best = torch.load(model_path, weights_only=True)
    rows = history_epochs(model_path)
    assert last["epoch"] == epochs
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    dice = [float(row["valid_dice"]) for row in rows]
    assert best["epoch"] == 1 + dice.index(max(dice))  # the first epoch with the best Dice
    assert best["valid_scores"]["dice"] == pytest.approx(max(dice))


@pytest.mark.parametrize(("failing", "at_write"), [("best", 1), ("last", 2), ("history", 2)])
def test_row49_a_full_disk_mid_run_is_one_line_and_a_rerun_repairs(
    data, tmp_path, capsys, monkeypatch, failing, at_write, fails_with, train_args
) -> None:
    model_path = tmp_path / "runs" / "m.pt"
    target = {"best": model_path, "last": last_checkpoint_path(model_path),
              "history": history_path(model_path)}[failing]  # fmt: skip
    writes = itertools.count(1)
    real_replace = os.replace

    def disk_fills(source, destination, **kwargs) -> None:
        if Path(destination) == target and next(writes) == at_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, destination, **kwargs)

    monkeypatch.setattr(os, "replace", disk_fills)
    args = train_args(data, model_path, "--epochs", "2")
    fails_with(args, f"{target}: cannot write (No space left on device); free some disk "
               "space and run again")  # fmt: skip
    assert not [p for p in model_path.parent.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(args) == 0
    assert_consistent(model_path, epochs=2)
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    named = re.findall(r"(?:checkpoint|last epoch|history|curves) (\S+?)(?:,|$)", closing)
    assert len(named) == 4 and all(Path(path).exists() for path in named), closing


def test_row50_stale_temp_files_of_a_killed_write_are_removed(data, tmp_path, train_args) -> None:
    model_path = tmp_path / "m.pt"
    stale = [tmp_path / ".m.pt.x1y2z3w4.tmp", tmp_path / ".m.last.pt.abcdefgh.tmp",
             tmp_path / ".m.history.csv.12345678.tmp"]  # fmt: skip
    mine = tmp_path / ".m.pt.my-notes.tmp"
    for path in [*stale, mine]:
        path.write_bytes(b"half a file")
    assert main(train_args(data, model_path)) == 0
    assert not any(path.exists() for path in stale) and mine.exists()


# --- one run per model path (item 4) ----------------------------------------------------------


def test_row51_a_second_run_on_the_same_model_path_is_refused(
    data, tmp_path, fails_with, train_args
) -> None:
    model_path = tmp_path / "m.pt"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path\n"
         "from petseg.runlock import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()",
         str(model_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fails_with(train_args(data, model_path), f"{model_path}: another training run is "
                   f"writing it (process {holder.pid} on {socket.gethostname()}, started ")  # fmt: skip
    finally:
        holder.communicate("")
    assert not model_path.exists() and not last_checkpoint_path(model_path).exists()
    assert main(train_args(data, model_path)) == 0  # free once the other run ended


# --- divergence is never a success (item 2) ---------------------------------------------------


def poisoned_adamw(monkeypatch: pytest.MonkeyPatch, at_step: int, value: float) -> None:
    """After optimizer step `at_step`, every weight times `value` (NaN: every weight NaN), as a
    learning rate of inf or 1e6 does."""
    real_step = torch.optim.AdamW.step
    steps = itertools.count(1)

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        if next(steps) == at_step:
            with torch.no_grad():
                for group in self.param_groups:
                    for parameter in group["params"]:
                        parameter.mul_(value)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_row52_a_model_gone_nan_is_not_saved_and_the_run_fails(
    data, tmp_path, monkeypatch, fails_with, train_args
):
    model_path = tmp_path / "m.pt"
    poisoned_adamw(monkeypatch, at_step=1, value=math.nan)
    fails_with(train_args(data, model_path, "--optimizer", "adamw"),
               "training diverged in epoch 1 (", "nothing saved; lower --learning-rate")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets"]


def test_row53_an_exploding_loss_stops_and_keeps_the_last_good_epoch(
    data, tmp_path, monkeypatch, fails_with, train_args
) -> None:
    model_path = tmp_path / "m.pt"
    args = train_args(data, model_path, "--optimizer", "adamw", "--epochs", "2")
    poisoned_adamw(monkeypatch, at_step=5, value=1e4)  # epoch 1 has 4 steps (18 images, batch 4)
    fails_with(args, "training diverged in epoch 2 (",
               f"{last_checkpoint_path(model_path)} (epoch 1) and {model_path} stay as they were")  # fmt: skip
    assert_consistent(model_path, epochs=1)
    monkeypatch.undo()
    assert main(args) == 0  # the same command resumes after epoch 1
    assert_consistent(model_path, epochs=2)


# --- what a checkpoint holds (item 8) ---------------------------------------------------------


def test_row54_the_best_checkpoint_holds_no_optimizer_state(
    data, tmp_path, fails_with, train_args
) -> None:
    model_path = tmp_path / "m.pt"
    assert main(train_args(data, model_path)) == 0
    best = torch.load(model_path, weights_only=True)
    last = torch.load(last_checkpoint_path(model_path), weights_only=True)
    assert "optimizer" not in best and "optimizer" in last
    assert model_path.stat().st_size < last_checkpoint_path(model_path).stat().st_size
    # a best checkpoint alone cannot be resumed, and is not trained over
    last_checkpoint_path(model_path).unlink()
    before = model_path.read_bytes()
    fails_with(train_args(data, model_path, "--epochs", "2"),
               f"{model_path}: exists, but m.last.pt, which training resumes from, does not")  # fmt: skip
    assert model_path.read_bytes() == before


def test_row55_a_missing_best_checkpoint_is_rewritten_from_the_last(
    data, tmp_path, capsys, train_args
):
    model_path = tmp_path / "m.pt"
    assert main(train_args(data, model_path)) == 0
    model_path.unlink()
    assert main(train_args(data, model_path)) == 0  # already trained: nothing else to do
    assert f"rewrote the missing {model_path} from epoch 1" in capsys.readouterr().err
    assert_consistent(model_path, epochs=1)
    assert "optimizer" not in torch.load(model_path, weights_only=True)


# --- SIGTERM (item 5) -------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_saves_the_steps_taken_and_exits_143_with_one_line(
    slow_data, tmp_path, train_args
) -> None:
    """As schedulers stop jobs: SIGTERM to the process group (the data workers get it too)."""
    model_path = tmp_path / "run" / "m.pt"
    process = launch_training(train_args(slow_data, model_path), epochs=50)
    wait_for_epoch(model_path, process)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(
        f"petseg train: terminated (SIGTERM): {last_checkpoint_path(model_path)} holds epoch "
    ), last_line
    assert "run the same command to resume" in last_line
    saved = torch.load(last_checkpoint_path(model_path), weights_only=True)
    batches = saved.get("partial_epoch", {}).get("batches", 0)
    assert (f"and {batches} batches of the next" in last_line) == (batches > 0)
    assert not (model_path.parent / (model_path.name + ".lock")).exists()
