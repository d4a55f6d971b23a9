"""evaluate on a tiny synthetic split with a colour-reading model, so every score is known:
per-species and per-breed tables, the border variants, the JSON and the worst-case gallery."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import petseg.evaluate
from petseg.checkpoint import save_checkpoint
from petseg.cli import main
from petseg.config import EvaluateConfig
from petseg.data.oxford_pet import OxfordPetDataset
from petseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from petseg.evaluate import default_gallery_path, evaluate_checkpoint, gallery_rows

SIZE = 8
# Every trimap: columns 0-2 pet, column 3 border, columns 4-7 background (border = pet: 32 px).
# Photos are red where the model should say pet, blue elsewhere:
RED_COLUMNS = {
    "Abyssinian_1": 4,  # red 0-3: exact                       Dice 1
    "Abyssinian_2": 8,  # all red: tp 32 fp 32                 Dice 64/96 = 2/3
    "Bengal_1": 3,  # red 0-2, border missed: tp 24 fn 8      Dice 48/56 = 6/7
    "beagle_1": 4,  # exact                                    Dice 1
    "beagle_2": 4,  # exact                                    Dice 1
}
PER_IMAGE_DICE = {
    "Abyssinian_1": 1,
    "Abyssinian_2": 2 / 3,
    "Bengal_1": 6 / 7,
    "beagle_1": 1,
    "beagle_2": 1,
}
# Outside the border: Abyssinian_2 tp 24 fp 32 -> 48/80 = 0.6, the others exact -> 1
DICE_BORDER_IGNORED = (1 + 0.6 + 1 + 1 + 1) / 5
# Border pixels: 8 per image, 40 in all; predicted pet in all but Bengal_1's -> 32/40
BORDER_ACCURACY, BORDER_FRACTION = 32 / 40, 40 / (5 * SIZE * SIZE)


class RedIsPet(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 10 * (images[:, :1] - images[:, 2:3])  # (N, 1, H, W)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def pet_root(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    trimap = np.full((SIZE, SIZE), 2, dtype=np.uint8)
    trimap[:, :3] = 1
    trimap[:, 3] = 3
    for name, red_columns in RED_COLUMNS.items():
        pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        pixels[..., 2] = 255
        pixels[:, :red_columns] = (255, 0, 0)
        (root / "images" / f"{name}.jpg").write_bytes(png_bytes(pixels))  # lossless
        (root / "annotations" / "trimaps" / f"{name}.png").write_bytes(png_bytes(trimap))
    listing = "".join(f"{name} 1 1 1\n" for name in RED_COLUMNS)
    (root / "annotations" / "test.txt").write_text(listing)
    (root / "annotations" / "trainval.txt").write_text(listing)
    return root


def scoring(model_path: Path, data_path: Path, **settings) -> EvaluateConfig:
    """Evaluate in fp32 without worker processes (the colour model is exact in any precision)."""
    return EvaluateConfig(model_path, data_path, num_workers=0, precision="fp32", **settings)


@pytest.fixture
def model_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_checkpoint, train_config
) -> Path:
    path = tmp_path / "runs" / "colour.pt"
    write_checkpoint(path, nn.Identity(), train_config(image_size=SIZE), epoch=3)
    monkeypatch.setattr(petseg.evaluate, "model_from_checkpoint", lambda *_: RedIsPet())
    return path


def test_evaluate_reports_species_breeds_and_border_variants(
    model_path: Path, pet_root: Path, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "scores.json"
    results = evaluate_checkpoint(scoring(model_path, pet_root, output=output))
    saved = json.loads(output.read_text())
    assert saved["per_image_dice"] == pytest.approx(PER_IMAGE_DICE)
    assert saved["dice"] == pytest.approx(np.mean(list(PER_IMAGE_DICE.values())))
    assert saved["dice_border_ignored"] == pytest.approx(DICE_BORDER_IGNORED)
    assert saved["border_accuracy"] == pytest.approx(BORDER_ACCURACY)
    assert saved["border_fraction"] == pytest.approx(BORDER_FRACTION)
    assert [group["name"] for group in saved["per_breed"]] == ["Abyssinian", "Bengal", "beagle"]
    # Abyssinian summed: tp 32 + 32, fp 32 -> 2 * 64 / (2 * 64 + 32)
    assert saved["per_breed"][0] == pytest.approx(
        {"name": "Abyssinian", "num_images": 2, "dice": (1 + 2 / 3) / 2, "dice_dataset": 128 / 160}
    )
    assert [group["name"] for group in saved["per_species"]] == ["cat", "dog"]
    assert saved["per_species"][0]["dice"] == pytest.approx((1 + 2 / 3 + 6 / 7) / 3)
    assert saved["per_species"][1] == pytest.approx(
        {"name": "dog", "num_images": 2, "dice": 1.0, "dice_dataset": 1.0}
    )
    assert saved["tta"] is False and "gallery" not in saved
    assert results["dice"] == saved["dice"]

    printed = capsys.readouterr().out
    assert "Dice, mean of per-image Dice" in printed  # the headline lines stay first
    assert "Dice, border ignored" in printed and "accuracy inside the band" in printed
    lines = printed.splitlines()
    species_at = next(i for i, line in enumerate(lines) if line.startswith("By species"))
    breed_at = next(i for i, line in enumerate(lines) if line.startswith("By breed"))
    assert [line.split()[0] for line in lines[species_at + 1 : breed_at]] == ["cat", "dog"]
    assert [line.split()[0] for line in lines[breed_at + 1 : breed_at + 4]] == [
        "Abyssinian",
        "Bengal",
        "beagle",
    ]


def test_gallery_shows_the_worst_images_with_their_masks(model_path: Path, pet_root: Path) -> None:
    norm = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    dataset = OxfordPetDataset(pet_root, "test", eval_transform(SIZE), with_border=True)
    dice = [PER_IMAGE_DICE[name] for name in dataset.names]
    rows = gallery_rows(
        RedIsPet(), dataset, [1, 2], dice, torch.device("cpu"), threshold=0.5, tta=False, norm=norm
    )
    assert [row.name for row in rows] == ["Abyssinian_2", "Bengal_1"]
    assert rows[0].dice == pytest.approx(2 / 3)
    truth = np.zeros((SIZE, SIZE), dtype=bool)
    truth[:, :4] = True
    assert all(np.array_equal(row.truth, truth) for row in rows)
    assert np.array_equal(rows[1].border, np.eye(SIZE, dtype=bool)[3][None].repeat(SIZE, 0))
    assert rows[0].pred.all()
    assert np.array_equal(rows[1].pred, truth & ~rows[1].border)
    assert rows[0].image.shape == (SIZE, SIZE, 3) and tuple(rows[0].image[0, 0]) == (255, 0, 0)


def test_gallery_flag_writes_a_png_beside_the_output(
    model_path: Path, pet_root: Path, tmp_path: Path
) -> None:
    output = tmp_path / "scores.json"
    argv = ["evaluate", "--model_path", str(model_path), "--data_path", str(pet_root)]
    assert main([*argv, "--num-workers", "0", "--output", str(output), "--gallery", "2"]) == 0
    gallery = tmp_path / "scores.gallery.png"
    assert json.loads(output.read_text())["gallery"] == str(gallery)
    with Image.open(gallery) as image:
        assert image.format == "PNG" and image.height > image.width / 2

    custom = tmp_path / "pictures" / "worst.png"
    assert main([*argv, "--num_workers", "0", "--gallery", "9", "--gallery-path", str(custom)]) == 0
    assert custom.is_file()  # 9 asked, 5 images: all of them


def test_gallery_path_defaults(tmp_path: Path) -> None:
    model = tmp_path / "runs" / "r34.pt"
    assert default_gallery_path(model, "test", tmp_path / "r34_test.json") == (
        tmp_path / "r34_test.gallery.png"
    )
    assert default_gallery_path(model, "valid", None) == tmp_path / "runs" / "r34.valid.gallery.png"


def test_gallery_path_without_gallery_is_a_one_line_error(
    model_path: Path, pet_root: Path, capsys
) -> None:
    argv = ["evaluate", "--model_path", str(model_path), "--data_path", str(pet_root)]
    assert main([*argv, "--gallery_path", "g.png"]) == 2
    err = capsys.readouterr().err
    assert "--gallery N" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "101", "many"])
def test_gallery_size_is_checked(value: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model_path", "m.pt", "--gallery", value])
    assert exit_info.value.code == 2


def test_tta_is_recorded(model_path: Path, pet_root: Path) -> None:
    plain = evaluate_checkpoint(scoring(model_path, pet_root))
    mirrored = evaluate_checkpoint(scoring(model_path, pet_root, tta=True))
    assert mirrored["tta"] is True and plain["tta"] is False
    assert mirrored["dice"] == pytest.approx(plain["dice"])  # a per-pixel model is mirror-proof


def test_scores_at_the_original_resolution_when_the_model_size_differs(
    model_path: Path, pet_root: Path, tmp_path: Path, capsys
) -> None:
    # the same colour model run at 3x3 and at 16x16: the masks resized back to 8x8 score as
    # the exact ones at 16; at 3 the coarse masks miss columns, and the 8x8 scores show it
    checkpoint = torch.load(model_path, weights_only=True)
    scores = {}
    for size in (3, 16):
        checkpoint["config"]["recipe"]["image_size"] = size
        sized = tmp_path / f"colour{size}.pt"
        save_checkpoint(sized, checkpoint)
        scores[size] = evaluate_checkpoint(scoring(sized, pet_root))
    expected = np.mean(list(PER_IMAGE_DICE.values()))
    assert scores[16]["original_resolution"]["dice"] == pytest.approx(expected)
    assert scores[3]["original_resolution"]["dice"] < expected - 0.01
    assert scores[3]["original_resolution"]["dice"] != pytest.approx(scores[3]["dice"])
    assert set(scores[3]["original_resolution"]) == {
        "dice",
        "dice_dataset",
        "iou",
        "pixel_accuracy",
    }
    assert "At each image's original size" in capsys.readouterr().out


def test_largest_component_drops_a_stray_speck_and_is_recorded(
    model_path: Path, pet_root: Path, capsys
) -> None:
    # a red pixel in the background corner of an exact image: a false positive of 1 pixel
    # (tp 32, fp 1: Dice 64/65) that keeping the largest region removes
    image_path = pet_root / "images" / "Abyssinian_1.jpg"
    pixels = np.asarray(Image.open(image_path)).copy()
    pixels[SIZE - 1, SIZE - 1] = (255, 0, 0)
    image_path.write_bytes(png_bytes(pixels))
    plain = evaluate_checkpoint(scoring(model_path, pet_root))
    kept = evaluate_checkpoint(scoring(model_path, pet_root, largest_component=True))
    expected = np.mean(list(PER_IMAGE_DICE.values()))
    assert plain["dice"] == pytest.approx(expected - (1 - 64 / 65) / 5)
    assert kept["dice"] == pytest.approx(expected)
    assert kept["original_resolution"]["dice"] == pytest.approx(expected)
    assert (plain["largest_component"], kept["largest_component"]) == (False, True)
    assert "largest region only" in capsys.readouterr().out
    # the gallery draws the mask that was scored
    dataset = OxfordPetDataset(pet_root, "test", eval_transform(SIZE), with_border=True)
    norm = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    specks = [
        gallery_rows(RedIsPet(), dataset, [0], [1.0], torch.device("cpu"), threshold=0.5,
                     tta=False, norm=norm, largest_component=largest)[0].pred[SIZE - 1, SIZE - 1]
        for largest in (False, True)
    ]  # fmt: skip
    assert specks == [True, False]


def test_largest_component_through_the_command_line(model_path: Path, pet_root: Path) -> None:
    output = pet_root / "scores.json"
    argv = ["evaluate", "--model_path", str(model_path), "--data_path", str(pet_root)]
    assert main([*argv, "--num_workers", "0", "--largest-component", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["largest_component"] is True
