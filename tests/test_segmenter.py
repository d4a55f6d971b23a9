"""petseg.Segmenter, the Python API: every kind of input gives the same mask at the photo's own
size, batches agree with single calls, bad inputs get one clear line, and the README's example
runs as printed."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import petseg
from petseg.errors import PetsegError
from petseg.segmenter import OUTPUTS, Prediction, Segmenter

README = Path(__file__).resolve().parents[1] / "README.md"


def photo_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A bright blob on a dark noisy background: gives an untrained model mixed masks."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] += 150
    return pixels


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint: Path) -> Segmenter:
    return Segmenter.load(tiny_checkpoint, device="cpu", precision="fp32")


def test_every_kind_of_input_gives_the_same_mask_at_the_photos_size(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    pixels = photo_pixels(37, 53)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    results = [
        segmenter.predict(path),
        segmenter.predict(str(path)),
        segmenter.predict(path.read_bytes()),
        segmenter.predict(Image.fromarray(pixels)),
        segmenter.predict(pixels),
    ]
    mask = results[0].mask
    assert mask.shape == (37, 53) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}  # this model and photo give both
    for result in results[1:]:
        assert np.array_equal(result.mask, mask)


def test_an_exif_rotated_photo_is_segmented_as_displayed(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    stored = photo_pixels(24, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate it 90 degrees clockwise: 24 wide, 40 tall
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    for source in (path, path.read_bytes()):
        assert segmenter.predict(source).mask.shape == (40, 24)
    with Image.open(path) as opened:
        assert segmenter.predict(opened).mask.shape == (40, 24)


def test_probabilities_overlay_and_cutout_agree_with_the_mask(segmenter: Segmenter) -> None:
    pixels = photo_pixels(30, 45, seed=1)
    result = segmenter.predict(pixels)
    probs = result.probabilities
    assert probs.shape == (30, 45) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert np.array_equal(probs > segmenter.threshold, result.mask > 0)
    assert result.overlay.shape == (30, 45, 3)
    assert np.array_equal(result.overlay[result.mask == 0], pixels[result.mask == 0])
    assert result.cutout.shape == (30, 45, 4)
    assert np.array_equal(result.cutout[..., 3], result.mask)
    assert np.array_equal(result.cutout[..., :3], pixels)
    for output in OUTPUTS:
        with Image.open(io.BytesIO(result.png(output))) as decoded:
            assert np.array_equal(np.asarray(decoded), result.picture(output))


def test_save_writes_the_chosen_picture(segmenter: Segmenter, tmp_path: Path) -> None:
    result = segmenter.predict(photo_pixels(20, 20))
    written = result.save(tmp_path / "out" / "cat_cutout.png", "cutout")
    with Image.open(written) as image:
        assert image.mode == "RGBA" and image.size == (20, 20)
    assert [p.name for p in written.parent.iterdir()] == ["cat_cutout.png"]  # no temp left


def test_a_batch_gives_what_single_calls_give(segmenter: Segmenter) -> None:
    photos = [photo_pixels(20 + 7 * index, 33 - 3 * index, seed=index) for index in range(5)]
    batched = segmenter.predict_batch(photos, batch_size=2)
    assert [r.mask.shape for r in batched] == [p.shape[:2] for p in photos]
    for result, photo in zip(batched, photos, strict=True):
        assert np.array_equal(result.mask, segmenter.predict(photo).mask)
    assert segmenter.predict_batch([]) == []


def test_threshold_and_largest_component_options(tiny_checkpoint: Path) -> None:
    pixels = photo_pixels(40, 40, seed=2)
    plain = Segmenter.load(tiny_checkpoint, "cpu", "fp32").predict(pixels)
    low = Segmenter.load(tiny_checkpoint, "cpu", "fp32", threshold=0.01).predict(pixels)
    assert (low.mask >= plain.mask).all() and low.mask.sum() > plain.mask.sum()
    kept = Segmenter.load(tiny_checkpoint, "cpu", "fp32", largest_component=True)
    assert (kept.predict(pixels).mask <= plain.mask).all()
    with pytest.raises(PetsegError, match="threshold must be between 0 and 1"):
        Segmenter.load(tiny_checkpoint, threshold=1.0)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (np.zeros((8, 8, 3), dtype=np.float32), "dtype float32"),
        (np.zeros((8, 8), dtype=np.uint8), "shape (8, 8)"),
        (np.zeros((8, 8, 4), dtype=np.uint8), "shape (8, 8, 4)"),
        (np.zeros((0, 8, 3), dtype=np.uint8), "no pixels"),
        (b"definitely not an image", "not an image petseg can read"),
        (b"", "empty image"),
        ([1, 2, 3], "got list"),
    ],
    ids=["float", "grey", "rgba", "empty-array", "garbage-bytes", "no-bytes", "list"],
)
def test_bad_inputs_get_one_clear_line(segmenter: Segmenter, bad: object, fragment: str) -> None:
    with pytest.raises(PetsegError) as info:
        segmenter.predict(bad)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_files_get_one_line_naming_them(segmenter: Segmenter, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    missing = tmp_path / "missing.jpg"
    truncated = tmp_path / "half.png"
    Image.fromarray(photo_pixels(64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path, fragment in ((text, "cannot decode"), (missing, "file not found"),
                           (truncated, "cannot decode"), (tmp_path, "is a folder")):  # fmt: skip
        with pytest.raises(PetsegError) as info:
            segmenter.predict(path)
        assert str(path) in str(info.value) and fragment in str(info.value)


def test_a_missing_or_foreign_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PetsegError, match="checkpoint not found"):
        Segmenter.load(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint")
    with pytest.raises(PetsegError, match="not a readable checkpoint"):
        Segmenter.load(foreign)
    with pytest.raises(PetsegError, match=r"needs a \.onnx file"):
        Segmenter.load(foreign, backend="onnxruntime")


def test_import_petseg_stays_light_and_segmenter_is_exported() -> None:
    code = (
        "import sys, petseg; assert 'torch' not in sys.modules, 'torch imported';"
        "from petseg import Segmenter, Prediction; assert 'torch' in sys.modules;"
        "print(Segmenter.__module__, Prediction.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["petseg.segmenter", "Prediction"]
    assert petseg.Segmenter is Segmenter and petseg.Prediction is Prediction
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        petseg.Nope  # noqa: B018


def readme_example() -> str:
    """The ```python block of the README's "Use a trained model" section."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Use a trained model\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no '## Use a trained model' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block, "the section has no ```python block"
    return block.group(1)


def test_the_readme_example_runs_as_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path
) -> None:
    (tmp_path / "runs").mkdir()
    shutil.copyfile(tiny_checkpoint, tmp_path / "runs" / "resnet34_unet.pt")
    Image.fromarray(photo_pixels(48, 64)).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    code = readme_example()
    assert 'Segmenter.load("runs/resnet34_unet.pt")' in code and "photo.jpg" in code
    exec(compile(code, "README.md", "exec"), {})
    written = sorted(set(p.name for p in tmp_path.iterdir()) - {"runs", "photo.jpg"})
    assert written, "the example wrote nothing"
    for name in written:
        with Image.open(tmp_path / name) as picture:
            assert picture.size == (64, 48)
