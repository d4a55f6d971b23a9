"""predict on synthetic photos with a colour-reading model: masks, overlays and cut-outs line up
pixel for pixel with the image as displayed (size, EXIF orientation, mode)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import petseg.predict
from petseg.cli import main
from petseg.data.oxford_pet import load_rgb
from petseg.errors import PetsegError
from petseg.predict import predict_masks

RED, BLUE = (255, 0, 0), (0, 0, 255)
MODEL_SIZE = 32


class RedIsPet(nn.Module):
    """Logits from colour alone: red pixels are pet, blue ones background."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 10 * (images[:, :1] - images[:, 2:3])  # (N, 1, H, W)


@pytest.fixture
def model_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_checkpoint, train_config
) -> Path:
    path = write_checkpoint(
        tmp_path / "colour.pt", nn.Identity(), train_config(image_size=MODEL_SIZE)
    )
    monkeypatch.setattr(petseg.predict, "model_from_checkpoint", lambda *_: RedIsPet())
    return path


def red_rectangle(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    """Blue (H, W, 3) picture with a red rectangle: what RedIsPet calls pet."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[...] = BLUE
    pixels[rows, cols] = RED
    return pixels


def save_jpeg_with_orientation(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=98, exif=exif)
    path.write_bytes(buffer.getvalue())


def read(path: Path) -> tuple[np.ndarray, str]:
    with Image.open(path) as image:
        return np.asarray(image), image.mode


def agreement(mask: np.ndarray, expected: np.ndarray) -> float:
    return float(((mask > 0) == expected.astype(bool)).mean())


def test_an_exif_rotated_jpeg_gets_its_mask_in_the_displayed_orientation(
    model_path: Path, tmp_path: Path
) -> None:
    # Stored 64 wide x 32 tall, red in the stored top-left quarter; orientation 6 means
    # "rotate 90 degrees clockwise to display", so viewers show 32 x 64 with red top-right.
    stored = red_rectangle(32, 64, slice(0, 16), slice(0, 32))
    photo = tmp_path / "in" / "rotated.jpg"
    photo.parent.mkdir()
    save_jpeg_with_orientation(photo, stored, orientation=6)
    save_dir = tmp_path / "out"
    predict_masks(model_path, save_dir, inputs=[photo], num_workers=0, overlays=True, cutouts=True)

    displayed_red = np.rot90(stored[..., 0] > 128, k=-1)  # clockwise
    assert displayed_red.shape == (64, 32) and displayed_red[0, -1] and not displayed_red[0, 0]
    mask, mode = read(save_dir / "rotated.png")
    assert mode == "L" and mask.shape == (64, 32)
    assert agreement(mask, displayed_red) > 0.97
    assert agreement(mask, np.rot90(stored[..., 0] > 128, k=1)) < 0.6  # not the other way round
    overlay, _ = read(save_dir / "rotated_overlay.png")
    cutout, cutout_mode = read(save_dir / "rotated_cutout.png")
    assert overlay.shape == (64, 32, 3)
    assert cutout_mode == "RGBA" and cutout.shape == (64, 32, 4)
    assert np.array_equal(cutout[..., 3], mask)
    assert np.array_equal(cutout[..., :3], load_rgb(photo, exif_transpose=True))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_cutout_alpha_is_the_mask_and_rgb_the_image_whatever_the_mode(
    model_path: Path, tmp_path: Path, mode: str
) -> None:
    pixels = red_rectangle(23, 37, slice(5, 18), slice(3, 20))  # odd, non-square size
    photo = tmp_path / f"pet_{mode}.png"
    image = Image.fromarray(pixels)
    image = image.quantize(4) if mode == "P" else image.convert(mode)
    image.save(photo)
    save_dir = tmp_path / "out"
    written = predict_masks(
        model_path, save_dir, inputs=[photo], num_workers=0, overlays=True, cutouts=True
    )
    stem = photo.stem
    assert [p.name for p in written] == [f"{stem}.png", f"{stem}_overlay.png", f"{stem}_cutout.png"]
    mask, _ = read(save_dir / f"{stem}.png")
    cutout, cutout_mode = read(save_dir / f"{stem}_cutout.png")
    overlay, _ = read(save_dir / f"{stem}_overlay.png")
    original = load_rgb(photo, exif_transpose=True)
    assert mask.shape == (23, 37) and set(np.unique(mask)) <= {0, 255}
    assert cutout_mode == "RGBA"
    assert np.array_equal(cutout[..., 3], mask)
    assert np.array_equal(cutout[..., :3], original)
    assert np.array_equal(overlay[mask == 0], original[mask == 0])
    if mode != "L":  # grey has no red: nothing is pet
        assert agreement(mask, pixels[..., 0] > 128) > 0.95
        assert (overlay[mask > 0] != original[mask > 0]).any(axis=-1).all()


def test_without_flags_only_masks_are_written(model_path: Path, tmp_path: Path) -> None:
    photo = tmp_path / "cat.png"
    Image.fromarray(red_rectangle(8, 8, slice(0, 4), slice(0, 8))).save(photo)
    save_dir = tmp_path / "out"
    predict_masks(model_path, save_dir, inputs=[photo], num_workers=0)
    assert sorted(p.name for p in save_dir.iterdir()) == ["cat.png"]


def test_threshold_and_tta_through_the_command_line(model_path: Path, tmp_path: Path) -> None:
    photo = tmp_path / "dog.png"
    Image.fromarray(red_rectangle(16, 16, slice(0, 16), slice(0, 6))).save(photo)
    for spelling in ("--save_dir", "--save-dir"):
        save_dir = tmp_path / spelling
        argv = ["predict", "--model_path", str(model_path), str(photo), spelling, str(save_dir)]
        assert main([*argv, "--num_workers", "0", "--tta", "--threshold", "0.3", "--cutout"]) == 0
        mask, _ = read(save_dir / "dog.png")
        assert agreement(mask, red_rectangle(16, 16, slice(0, 16), slice(0, 6))[..., 0]) > 0.9
        assert (save_dir / "dog_cutout.png").is_file()
        assert not (save_dir / "dog_overlay.png").exists()


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "half"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_threshold_outside_zero_one_is_a_usage_error(value: str, command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        paths = ["x.jpg"] if command == "predict" else []
        main([command, "--model_path", "m.pt", *paths, "--threshold", value])
    assert exit_info.value.code == 2
    assert "threshold" in capsys.readouterr().err


def test_outputs_that_would_overwrite_each_other_are_refused(
    model_path: Path, tmp_path: Path
) -> None:
    for name in ("cat.png", "cat_overlay.png"):
        Image.fromarray(red_rectangle(8, 8, slice(0, 4), slice(0, 8))).save(tmp_path / name)
    inputs = [tmp_path / "cat.png", tmp_path / "cat_overlay.png"]
    with pytest.raises(PetsegError, match=r"cat_overlay\.png") as info:
        predict_masks(model_path, tmp_path / "out", inputs=inputs, num_workers=0, overlays=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    # without --overlay the names do not collide
    predict_masks(model_path, tmp_path / "out", inputs=inputs, num_workers=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cat.png",
        "cat_overlay.png",
    ]


@pytest.mark.parametrize("flag", [[], ["--largest_component"]])
def test_largest_component_drops_a_speck_from_the_written_mask(
    model_path: Path, tmp_path: Path, flag: list[str]
) -> None:
    pixels = red_rectangle(32, 32, slice(4, 20), slice(4, 20))
    pixels[26:29, 26:29] = RED  # a 3x3 speck apart from the pet
    photo = tmp_path / "cat.png"
    Image.fromarray(pixels).save(photo)
    save_dir = tmp_path / "out"
    argv = ["predict", "--model_path", str(model_path), str(photo), "--save_dir", str(save_dir)]
    assert main([*argv, "--num_workers", "0", *flag]) == 0
    mask, _ = read(save_dir / "cat.png")
    assert agreement(mask[:22, :22], pixels[:22, :22, 0] > 128) == 1.0  # the pet, either way
    assert (mask[24:, 24:] > 0).any() == (not flag)
