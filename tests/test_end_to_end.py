"""End to end on the real Oxford-IIIT Pet sample: train, resume, evaluate and predict via the CLI.

One short ResNet34-UNet run at 64 px is shared by the tests of this module (about a minute on
two CPU cores); a tiny-width UNet checks the other architecture through the same commands.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from petseg.checkpoint import curves_path, history_path, last_checkpoint_path
from petseg.cli import main
from petseg.data.oxford_pet import OxfordPetDataset, load_rgb, read_split_names
from petseg.data.transforms import eval_transform
from petseg.metrics import SegmentationScores

pytestmark = pytest.mark.slow

SIZE = 64
EPOCHS = 2
# exact comparisons with training's own scores need the same arithmetic on every CPU
FP32 = ("--precision", "fp32")


@pytest.fixture(scope="module", autouse=True)
def private_cache_home(tmp_path_factory: pytest.TempPathFactory):
    """Training caches decoded images in the sample, or in ~/.cache where the sample is
    read-only (as in CI): keep the latter in a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache-home")))
        yield


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """The installed command as a user runs it: a separate process, exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "petseg", *argv], capture_output=True, text=True, check=False
    )


def all_pet_dice(root: Path, split: str) -> float:
    """Per-image Dice of the trivial prediction 'everything is pet': the bar to beat clearly."""
    dataset = OxfordPetDataset(root, split, eval_transform(SIZE))
    scores = SegmentationScores()
    for index in range(len(dataset)):
        _, mask = dataset[index]
        scores.update(torch.ones_like(mask, dtype=torch.bool)[None], mask[None] > 0.5)
    return scores.summary()["dice"]


@pytest.fixture(scope="module")
def trained(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("run")
    model_path = run_dir / "r34.pt"
    done = run_cli(
        "train",
        "--data_path",
        str(sample_data),
        "--model_type",
        "resnet34_unet",
        "--epochs",
        str(EPOCHS),
        "--batch_size",
        "16",
        "--learning-rate",
        "1e-3",
        "--image_size",
        str(SIZE),
        "--model_path",
        str(model_path),
        "--num_workers",
        "2",
        "--tune_threshold",
        # fp32 whatever the CPU: the tests below compare training's validation with `evaluate`
        # to 1e-6, which holds in fp32; on a CPU with AVX512-BF16, auto would train and score in
        # bf16, where evaluate's BatchNorm-folded model rounds differently (6e-5 in Dice here)
        *FP32,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {
        "model_path": model_path,
        "stdout": done.stdout,
        "stderr": done.stderr,
        "data": sample_data,
    }


def test_training_writes_checkpoints_history_and_summaries(trained: dict) -> None:
    model_path = trained["model_path"]
    assert model_path.is_file() and last_checkpoint_path(model_path).is_file()
    summaries = [line for line in trained["stdout"].splitlines() if line.startswith("epoch ")]
    assert len(summaries) == EPOCHS
    assert all("valid Dice" in line and "train loss" in line for line in summaries)
    assert "epoch 1/2" in trained["stderr"]  # the tqdm bar
    with history_path(model_path).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == list(range(1, EPOCHS + 1))


def test_training_draws_curves_beside_the_checkpoint(trained: dict) -> None:
    curves = curves_path(trained["model_path"])
    assert curves.name == "r34.curves.png"
    assert curves.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(curves) as image:
        image.verify()  # a complete, uncorrupted PNG
    with Image.open(curves) as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 200
    assert not list(curves.parent.glob(".*.tmp"))  # written atomically, no leftovers


def test_checkpoint_is_self_describing_and_pickle_free(trained: dict) -> None:
    checkpoint = torch.load(trained["model_path"], weights_only=True)
    assert checkpoint["config"]["model"]["model_type"] == "resnet34_unet"
    assert checkpoint["config"]["recipe"]["image_size"] == SIZE
    assert checkpoint["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert 1 <= checkpoint["epoch"] <= EPOCHS
    assert checkpoint["config"]["recipe"]["learning_rate"] == pytest.approx(1e-3)
    assert checkpoint["best_dice"] == pytest.approx(checkpoint["valid_scores"]["dice"])


def test_valid_dice_clearly_beats_all_pet_and_matches_evaluate(trained: dict, tmp_path) -> None:
    checkpoint = torch.load(trained["model_path"], weights_only=True)
    baseline = all_pet_dice(trained["data"], "valid")
    assert checkpoint["best_dice"] > baseline + 0.05, (checkpoint["best_dice"], baseline)

    output = tmp_path / "valid.json"
    done = run_cli(
        "evaluate",
        "--model_path",
        str(trained["model_path"]),
        "--data_path",
        str(trained["data"]),
        "--split",
        "valid",
        "--output",
        str(output),
        "--num_workers",
        "0",
        "--threshold",
        "0.5",
        *FP32,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(output.read_text())
    # evaluate and training's validation share one code path: same images, same Dice (training
    # validates at 0.5; the threshold is tuned after the last epoch)
    assert results["dice"] == pytest.approx(checkpoint["best_dice"], abs=1e-6)
    sweep = checkpoint["threshold_sweep"]
    tuned_dice = sweep["dice"][sweep["thresholds"].index(checkpoint["threshold"])]
    assert tuned_dice >= checkpoint["best_dice"] - 1e-9
    tuned = run_cli(
        "evaluate", "--model_path", str(trained["model_path"]), "--data_path",
        str(trained["data"]), "--split", "valid", "--output", str(output), "--num_workers", "0",
        *FP32,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert json.loads(output.read_text())["dice"] == pytest.approx(tuned_dice, abs=1e-6)
    assert results["num_images"] == 30
    assert {
        "dice",
        "dice_dataset",
        "iou",
        "pixel_accuracy",
        "num_images",
        "split",
        "image_size",
    } <= results.keys()
    assert results["split"] == "valid" and results["image_size"] == SIZE
    assert len(results["per_image_dice"]) == 30
    assert np.mean(list(results["per_image_dice"].values())) == pytest.approx(results["dice"])
    assert "Dice, mean of per-image Dice" in done.stdout


def test_predict_writes_a_mask_per_test_image_at_its_size(trained: dict, tmp_path) -> None:
    save_dir = tmp_path / "masks"
    done = run_cli(
        "predict",
        "--model_path",
        str(trained["model_path"]),
        "--data_path",
        str(trained["data"]),
        "--save_dir",
        str(save_dir),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = read_split_names(trained["data"], "test")
    assert sorted(p.stem for p in save_dir.glob("*.png")) == sorted(names)
    for name in names[:: len(names) // 12]:
        with Image.open(trained["data"] / "images" / f"{name}.jpg") as image:
            size = image.size
        with Image.open(save_dir / f"{name}.png") as mask:
            assert mask.size == size and mask.mode == "L"
            assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_evaluate_by_breed_with_gallery_and_tta(trained: dict, tmp_path) -> None:
    output = tmp_path / "valid.json"
    done = run_cli(
        "evaluate",
        "--model_path",
        str(trained["model_path"]),
        "--data_path",
        str(trained["data"]),
        "--split",
        "valid",
        "--output",
        str(output),
        "--gallery",
        "4",
        "--tta",
        "--num_workers",
        "0",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(output.read_text())
    breeds = {group["name"]: group for group in results["per_breed"]}
    assert set(breeds) == {"Abyssinian", "Bengal", "american_bulldog"}
    assert sum(group["num_images"] for group in breeds.values()) == 30
    assert [group["dice"] for group in results["per_breed"]] == sorted(
        group["dice"] for group in results["per_breed"]
    )
    assert {group["name"] for group in results["per_species"]} == {"cat", "dog"}
    # the real trimaps have a border band: a few percent of the pixels
    assert 0.01 < results["border_fraction"] < 0.3
    assert 0.0 <= results["border_accuracy"] <= 1.0
    assert results["tta"] is True
    with Image.open(results["gallery"]) as gallery:
        assert gallery.format == "PNG"
    assert "By breed, hardest first" in done.stdout


def test_predict_overlays_and_cutouts_match_the_image(trained: dict, tmp_path) -> None:
    image_path = sorted((trained["data"] / "images").glob("*.jpg"))[0]
    save_dir = tmp_path / "out"
    code = main(
        [
            "predict",
            "--model_path",
            str(trained["model_path"]),
            str(image_path),
            "--save_dir",
            str(save_dir),
            "--overlay",
            "--cutout",
            "--num_workers",
            "0",
        ]
    )
    assert code == 0
    original = load_rgb(image_path, exif_transpose=True)
    with Image.open(save_dir / f"{image_path.stem}.png") as mask_file:
        mask = np.asarray(mask_file)
    with Image.open(save_dir / f"{image_path.stem}_cutout.png") as cutout_file:
        assert cutout_file.mode == "RGBA"
        cutout = np.asarray(cutout_file)
    with Image.open(save_dir / f"{image_path.stem}_overlay.png") as overlay_file:
        assert overlay_file.size == (original.shape[1], original.shape[0])
    assert np.array_equal(cutout[..., :3], original)
    assert np.array_equal(cutout[..., 3], mask)


def test_predict_on_files_and_folders(trained: dict, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    image_names = sorted((trained["data"] / "images").glob("*.jpg"))[:3]
    for path in image_names:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    single = image_names[0]
    save_dir = tmp_path / "out"
    code = main(
        [
            "predict",
            "--model_path",
            str(trained["model_path"]),
            str(folder),
            "--save_dir",
            str(save_dir),
            "--num_workers",
            "0",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in save_dir.iterdir()) == sorted(
        f"{p.stem}.png" for p in image_names
    )
    code = main(
        [
            "predict",
            "--model_path",
            str(trained["model_path"]),
            str(single),
            "--save_dir",
            str(tmp_path / "one"),
            "--num_workers",
            "0",
        ]
    )
    assert code == 0 and (tmp_path / "one" / f"{single.stem}.png").is_file()


def test_resume_continues_epoch_count_and_optimizer_state(trained: dict, tmp_path) -> None:
    # Work on a copy so the other tests keep the 2-epoch run.
    model_path = tmp_path / "r34.pt"
    for source in (
        trained["model_path"],
        last_checkpoint_path(trained["model_path"]),
        history_path(trained["model_path"]),
    ):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    before = torch.load(last_checkpoint_path(model_path), weights_only=True)
    steps_before = before["optimizer"]["state"][0]["step"].item()

    # No --model_type: the checkpoint says what it is.
    done = run_cli(
        "train",
        "--data_path",
        str(trained["data"]),
        "--epochs",
        str(EPOCHS + 1),
        "--batch_size",
        "16",
        "--learning-rate",
        "1e-3",
        "--image_size",
        str(SIZE),
        "--model_path",
        str(model_path),
        "--num_workers",
        "2",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {last_checkpoint_path(model_path)}: epoch {EPOCHS} done" in done.stdout
    summaries = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(summaries) == 1 and summaries[0].startswith(f"epoch {EPOCHS + 1}/{EPOCHS + 1}")

    after = torch.load(last_checkpoint_path(model_path), weights_only=True)
    assert after["epoch"] == EPOCHS + 1
    assert after["config"]["model"]["model_type"] == "resnet34_unet"
    steps_per_epoch = steps_before / EPOCHS
    # Adam's step counter continued from the checkpoint instead of restarting at zero.
    assert after["optimizer"]["state"][0]["step"].item() == pytest.approx(
        steps_before + steps_per_epoch
    )
    with history_path(model_path).open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3]

    # A finished run is not trained further, and a conflicting --model_type is refused.
    again = run_cli(
        "train",
        "--data_path",
        str(trained["data"]),
        "--epochs",
        str(EPOCHS + 1),
        "--model_path",
        str(model_path),
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout
    wrong = run_cli(
        "train",
        "--data_path",
        str(trained["data"]),
        "--model_type",
        "unet",
        "--epochs",
        "9",
        "--model_path",
        str(model_path),
    )
    assert wrong.returncode == 2
    assert "resnet34_unet" in wrong.stderr and "Traceback" not in wrong.stderr


def test_unet_trains_evaluates_and_predicts(sample_data: Path, tmp_path) -> None:
    model_path = tmp_path / "unet.pt"
    code = main(
        [
            "train",
            "--data_path",
            str(sample_data),
            "--model_type",
            "unet",
            "--unet_widths",
            "8,16,32,64",
            "--epochs",
            "1",
            "--batch_size",
            "16",
            "-lr",
            "1e-3",
            "--image_size",
            str(SIZE),
            "--model_path",
            str(model_path),
            "--num_workers",
            "0",
        ]
    )
    assert code == 0
    checkpoint = torch.load(model_path, weights_only=True)
    model = checkpoint["config"]["model"]
    assert (model["model_type"], model["widths"], model["upsample"]) == (
        "unet", [8, 16, 32, 64], "nearest",
    )  # fmt: skip
    output = tmp_path / "test.json"
    assert (
        main(
            [
                "evaluate",
                "--model_path",
                str(model_path),
                "--data_path",
                str(sample_data),
                "--output",
                str(output),
                "--num_workers",
                "0",
            ]
        )
        == 0
    )
    results = json.loads(output.read_text())
    assert results["num_images"] == 298 and results["split"] == "test"
    assert 0.0 <= results["dice"] <= 1.0
