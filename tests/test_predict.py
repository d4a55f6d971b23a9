"""predict on synthetic photos with a colour-reading model: masks, overlays and cut-outs line up
pixel for pixel with the image as displayed (size, EXIF orientation, mode)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import petseg.predict
import petseg.segmenter
from petseg.cli import main
from petseg.config import PredictConfig
from petseg.data.oxford_pet import load_rgb
from petseg.errors import PetsegError
from petseg.predict import predict

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
    monkeypatch.setattr(petseg.segmenter, "model_from_checkpoint", lambda *_: RedIsPet())
    return path


def predict_masks(model_path: Path, save_dir: Path, inputs: list[Path], **options) -> None:
    predict(PredictConfig(model_path, tuple(inputs), save_dir=save_dir, num_workers=0, **options))


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
    predict_masks(model_path, save_dir, [photo], overlays=True, cutouts=True)

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
    predict_masks(model_path, save_dir, [photo], overlays=True, cutouts=True)
    stem = photo.stem
    written = sorted(p.name for p in save_dir.iterdir())
    assert written == [f"{stem}.png", f"{stem}_cutout.png", f"{stem}_overlay.png"]
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
    predict_masks(model_path, save_dir, [photo])
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
        predict_masks(model_path, tmp_path / "out", inputs, overlays=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    # without --overlay the names do not collide
    predict_masks(model_path, tmp_path / "out", inputs)
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


# --- at any scale: parts, resuming, a streamed file list; inputs are never overwritten -----------


def write_photos(folder: Path, count: int) -> list[Path]:
    """`count` tiny PNG photos, half of each red (pet to RedIsPet)."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = red_rectangle(4, 5, slice(0, 2), slice(0, 5))
    paths = [folder / f"photo_{index:05d}.png" for index in range(count)]
    for path in paths:
        Image.fromarray(pixels).save(path)
    return paths


def cli(model_path: Path, save_dir: Path, *args: str | Path) -> int:
    argv = ["predict", "--model_path", str(model_path), "--save_dir", str(save_dir)]
    return main([*argv, "--num_workers", "0", *map(str, args)])


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("petseg predict")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_parts_cover_every_image_exactly_once(model_path: Path, tmp_path: Path, capsys) -> None:
    photos = write_photos(tmp_path / "photos", 40)
    written: dict[int, list[str]] = {}
    for part in range(3):
        out = tmp_path / f"part{part}"
        assert cli(model_path, out, tmp_path / "photos", "--num_parts", 3, "--part_id", part) == 0
        written[part] = sorted(p.stem for p in out.iterdir())
        assert f"part --part_id {part} of --num_parts 3" in capsys.readouterr().out
    everything = sorted(stem for stems in written.values() for stem in stems)
    assert everything == sorted(p.stem for p in photos)  # none twice, none left out
    assert all(written.values())
    # an image's part depends on its name only: alone, it lands in the same part
    alone = photos[7]
    for part in range(3):
        out = tmp_path / f"alone{part}"
        assert cli(model_path, out, alone, "--num_parts", 3, "--part_id", part) == 0
        made = (out / f"{alone.stem}.png").exists()
        assert made == (alone.stem in written[part])
        if not made:
            assert "no image falls in this part" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [(["--num_parts", "3", "--part_id", "3"], "--part_id must be from 0 to 2"),
     (["--part_id", "1"], "--part_id must be from 0 to 0")],
)  # fmt: skip
def test_a_part_id_outside_the_parts_is_one_line(
    model_path: Path, tmp_path: Path, capsys, flags: list[str], fragment: str
) -> None:
    write_photos(tmp_path / "photos", 2)
    assert cli(model_path, tmp_path / "out", tmp_path / "photos", *flags) == 2
    assert fragment in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        cli(model_path, tmp_path / "out", tmp_path / "photos", "--num_parts", "0")


def test_skip_existing_leaves_finished_images_alone_and_redoes_the_rest(
    model_path: Path, tmp_path: Path, capsys
) -> None:
    write_photos(tmp_path / "photos", 5)
    out = tmp_path / "out"
    assert cli(model_path, out, tmp_path / "photos", "--overlay") == 0
    finished = out / "photo_00000.png"
    finished.write_bytes(b"left alone")  # shows whether the rerun rewrote it
    (out / "photo_00001.png").unlink()  # a mask missing
    (out / "photo_00002_overlay.png").unlink()  # an overlay missing: the image is redone
    capsys.readouterr()
    assert cli(model_path, out, tmp_path / "photos", "--overlay", "--skip_existing") == 0
    printed = capsys.readouterr().out
    assert "of 2 images" in printed and "3 already done left alone" in printed
    assert finished.read_bytes() == b"left alone"
    for name in ("photo_00001.png", "photo_00002_overlay.png"):
        with Image.open(out / name) as picture:
            assert picture.size == (5, 4)
    assert cli(model_path, out, tmp_path / "photos", "--overlay", "--skip_existing") == 0
    assert "all 5 images already have their outputs" in capsys.readouterr().out
    # asking for a new kind of output redoes every image
    assert cli(model_path, out, tmp_path / "photos", "--cutout", "--skip_existing") == 0
    assert "of 5 images" in capsys.readouterr().out


def test_loader_workers_share_the_images_still_to_do(model_path: Path, tmp_path: Path, capsys):
    photos = write_photos(tmp_path / "photos", 30)
    out = tmp_path / "out"
    out.mkdir()
    for photo in photos[::3]:  # done before: left alone
        (out / f"{photo.stem}.png").write_bytes(b"done")
    argv = ["predict", "--model_path", str(model_path), str(tmp_path / "photos")]
    assert main([*argv, "--save_dir", str(out), "--num_workers", "2", "--skip_existing"]) == 0
    assert "of 20 images" in capsys.readouterr().out
    assert sorted(p.stem for p in out.iterdir()) == sorted(p.stem for p in photos)
    assert sum((out / f"{p.stem}.png").read_bytes() == b"done" for p in photos) == 10


def test_an_interrupted_run_leaves_whole_pngs_only_and_skip_existing_finishes_it(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    write_photos(tmp_path / "photos", 12)
    assert cli(model_path, tmp_path / "reference", tmp_path / "photos", "--cutout") == 0
    reference = {p.name: p.read_bytes() for p in (tmp_path / "reference").iterdir()}
    calls = 0
    fsync = os.fsync

    def interrupted_fsync(fd: int) -> None:  # Ctrl-C in the middle of the 9th file's write
        nonlocal calls
        calls += 1
        if calls == 9:
            raise KeyboardInterrupt
        fsync(fd)

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    out = tmp_path / "out"
    args = (tmp_path / "photos", "--cutout", "--batch_size", "4")
    assert cli(model_path, out, *args) == 130
    assert "--skip_existing" in capsys.readouterr().err
    left = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(left) == 8 and all(name.endswith(".png") for name in left)  # no temp file
    assert all(reference[name] == data for name, data in left.items())
    monkeypatch.setattr(os, "fsync", fsync)
    assert cli(model_path, out, *args, "--skip_existing") == 0
    assert "of 8 images" in capsys.readouterr().out  # image 5 lost its cut-out: redone
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference


def test_temp_files_of_a_killed_run_are_removed_by_the_next(model_path: Path, tmp_path: Path):
    photos = write_photos(tmp_path / "photos", 6)
    part = petseg.predict.part_of(photos[1], 2)
    other = next(p for p in photos if petseg.predict.part_of(p, 2) != part)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".{photos[1].stem}_overlay.png.k3j4h5z8.tmp"  # what kill -9 mid-write leaves
    kept = [out / f".{other.stem}.png.a1b2c3d4.tmp", out / ".notes.txt.a1b2c3d4.tmp"]
    for path in (stale, *kept):
        path.write_bytes(b"half a PNG")
    assert cli(model_path, out, tmp_path / "photos", "--num_parts", 2, "--part_id", part) == 0
    assert not stale.exists()
    assert all(path.exists() for path in kept)  # another part's (it may be running), not a PNG's


def test_the_progress_bar_shows_images_per_second(model_path: Path, tmp_path: Path, capsys):
    write_photos(tmp_path / "photos", 3)
    assert cli(model_path, tmp_path / "out", tmp_path / "photos") == 0
    assert "img/s" in capsys.readouterr().err


@pytest.fixture
def fast_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory (tmpfs) where there is one: every PNG is fsynced, which on a disk
    costs milliseconds a file."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="petseg-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # thousands of images written under tracemalloc
def test_memory_stays_flat_over_thousands_of_images(model_path: Path, fast_folder: Path) -> None:
    """Nothing is kept per image but its name for the clash check: the peak of Python memory
    (numpy arrays included) grows by far less than a decoded photo per extra image."""

    def peak_bytes(count: int) -> int:
        folder = fast_folder / f"photos{count}"
        write_photos(folder, count)
        config = PredictConfig(model_path, (folder,), save_dir=fast_folder / f"out{count}",
                               batch_size=64, num_workers=0)  # fmt: skip
        tracemalloc.start()
        try:
            predict(config)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert len(list(config.save_dir.iterdir())) == count

    predict(PredictConfig(model_path, tuple(write_photos(fast_folder / "warm", 2)),
                          save_dir=fast_folder / "warm_out", num_workers=0))  # fmt: skip
    small, large = peak_bytes(200), peak_bytes(2000)
    per_image = (large - small) / 1800
    assert per_image < 250, f"{per_image:.0f} bytes more peak memory per image"


def png_photos(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_save_dir_equal_to_the_input_folder_is_refused_before_any_write(
    model_path: Path, tmp_path: Path, capsys
) -> None:
    photos = tmp_path / "photos"
    write_photos(photos, 3)
    before = png_photos(photos)
    assert cli(model_path, photos, photos) == 2
    assert "is an input folder" in one_error_line(capsys)
    (tmp_path / "link").symlink_to(photos)  # the same folder by another name
    assert cli(model_path, tmp_path / "link", photos) == 2
    assert "is an input folder" in one_error_line(capsys)
    assert cli(model_path, photos / ".." / "photos", photos, "--skip_existing") == 2
    assert "is an input folder" in one_error_line(capsys)
    assert png_photos(photos) == before


def test_an_output_that_is_an_input_file_is_refused(
    model_path: Path, tmp_path: Path, capsys
) -> None:
    photos = tmp_path / "photos"
    first, second = write_photos(photos, 2)
    before = png_photos(photos)
    # a photo named on its own, predicted into its own folder: its mask would replace it
    assert cli(model_path, photos, first) == 2
    assert f"would overwrite the input {first}" in one_error_line(capsys)
    # a link in the save_dir that points at an input
    out = tmp_path / "out"
    out.mkdir()
    (out / second.name).symlink_to(second)
    assert cli(model_path, out, photos) == 2
    assert f"would overwrite the input {second}" in one_error_line(capsys)
    assert png_photos(photos) == before
    assert [p.name for p in out.iterdir()] == [second.name]
    # a JPEG photo whose mask lands beside it replaces nothing: allowed
    jpeg = photos / "dog.jpg"
    Image.fromarray(red_rectangle(6, 6, slice(0, 3), slice(0, 6))).save(jpeg)
    assert cli(model_path, photos, jpeg) == 0
    assert (photos / "dog.png").is_file() and png_photos(photos).items() >= before.items()


def test_an_unwritable_save_dir_is_one_line_before_any_work(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    write_photos(tmp_path / "photos", 2)

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    decoded: list[Path] = []
    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    monkeypatch.setattr(petseg.predict, "load_rgb", lambda path, **_: decoded.append(path))
    assert cli(model_path, tmp_path / "out", tmp_path / "photos") == 2
    line = one_error_line(capsys)
    assert f"{tmp_path / 'out'}: cannot write here (Permission denied)" in line
    assert decoded == []  # refused before the first photo was decoded


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_a_failed_write_is_one_line_naming_the_file(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, code: int
) -> None:
    write_photos(tmp_path / "photos", 3)
    replace = os.replace

    def failing(source: str, target: str) -> None:
        if Path(target).name == "photo_00001.png":
            raise OSError(code, os.strerror(code))
        replace(source, target)

    monkeypatch.setattr(os, "replace", failing)
    out = tmp_path / "out"
    assert cli(model_path, out, tmp_path / "photos", "--batch_size", "1") == 2
    line = one_error_line(capsys)
    assert f"{out / 'photo_00001.png'}: cannot write ({os.strerror(code)})" in line
    assert "--skip_existing" in line
    assert [p.name for p in out.iterdir()] == ["photo_00000.png"]  # no temp file left
