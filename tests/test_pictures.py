"""Pictures on hand-made pixels: error map colours, overlay, cut-out, gallery and curves PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from petseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from petseg.pictures import (
    ERROR_MAP_DIMMING,
    FALSE_NEGATIVE_RGB,
    FALSE_POSITIVE_RGB,
    GalleryRow,
    curves_figure,
    cutout,
    error_map,
    overlay,
    render_curves,
    render_gallery,
    to_uint8_image,
    truth_picture,
)
from petseg.schedules import schedule_points

# pred     target    expected colour
# 1 1 0    1 0 0     tp fp tn
# 0 0 1    1 0 1     fn tn tp
PREDS = np.array([[1, 1, 0], [0, 0, 1]], dtype=np.uint8)
TARGETS = np.array([[1, 0, 0], [1, 0, 1]], dtype=np.uint8)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def test_error_map_colours_false_positives_red_and_false_negatives_blue() -> None:
    picture = error_map(PREDS, TARGETS)
    assert picture.shape == (2, 3, 3) and picture.dtype == np.uint8
    assert tuple(picture[0, 1]) == FALSE_POSITIVE_RGB
    assert tuple(picture[1, 0]) == FALSE_NEGATIVE_RGB
    correct = [(0, 0), (0, 2), (1, 1), (1, 2)]
    for row, col in correct:
        assert tuple(picture[row, col]) == (0, 0, 0)  # black without an image
    assert FALSE_POSITIVE_RGB != FALSE_NEGATIVE_RGB


def test_error_map_on_an_image_dims_the_correct_pixels() -> None:
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    picture = error_map(PREDS.astype(bool), TARGETS.astype(bool), image)
    dimmed = round(200 * ERROR_MAP_DIMMING)
    assert tuple(picture[0, 1]) == FALSE_POSITIVE_RGB
    assert tuple(picture[1, 0]) == FALSE_NEGATIVE_RGB
    for row, col in [(0, 0), (0, 2), (1, 1), (1, 2)]:
        assert tuple(picture[row, col]) == (dimmed,) * 3
    assert (image == 200).all()  # the input is left alone


def test_error_map_rejects_masks_of_different_shapes() -> None:
    with pytest.raises(ValueError):
        error_map(PREDS, TARGETS[:, :2])


def test_overlay_tints_only_the_mask() -> None:
    image = photo(4, 5)
    mask = np.zeros((4, 5), dtype=np.uint8)
    mask[1:3, 2:] = 255
    picture = overlay(image, mask, color=(0, 255, 0), alpha=0.5)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    outside = mask == 0
    assert np.array_equal(picture[outside], image[outside])
    expected = np.round(image[~outside] * 0.5 + np.array([0, 255, 0]) * 0.5)
    assert np.array_equal(picture[~outside], expected.astype(np.uint8))


def test_cutout_alpha_is_the_mask_and_rgb_is_the_image() -> None:
    image = photo(5, 7, seed=1)
    mask = np.zeros((5, 7), dtype=np.uint8)
    mask[2:, :4] = 255
    rgba = cutout(image, mask)
    assert rgba.shape == (5, 7, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba[..., :3], image)
    assert np.array_equal(rgba[..., 3], mask)
    assert np.array_equal(cutout(image, mask > 0)[..., 3], mask)  # a boolean mask too
    with pytest.raises(ValueError):
        cutout(image, mask[:, :6])


def test_to_uint8_image_undoes_the_eval_normalization() -> None:
    image = photo(8, 8, seed=4)
    tensor, _ = eval_transform(8)(image, np.zeros((8, 8), dtype=np.uint8))
    restored = to_uint8_image(tensor, IMAGENET_MEAN, IMAGENET_STD)
    assert restored.shape == (8, 8, 3) and restored.dtype == np.uint8
    assert np.abs(restored.astype(int) - image.astype(int)).max() <= 1


def test_truth_picture_shows_the_border_grey_inside_the_pet() -> None:
    truth = np.array([[1, 1], [0, 0]], dtype=bool)
    border = np.array([[0, 1], [0, 0]], dtype=bool)
    picture = truth_picture(truth, border)
    assert picture[0, 0].tolist() == [255] * 3
    assert 0 < picture[0, 1, 0] < 255
    assert picture[1].max() == 0


def gallery_row(name: str, dice: float, seed: int) -> GalleryRow:
    truth = np.zeros((16, 16), dtype=bool)
    truth[4:12, 4:12] = True
    pred = np.roll(truth, 3, axis=1)
    return GalleryRow(
        name, dice, photo(16, 16, seed), truth, pred, border=truth ^ np.roll(truth, 1)
    )


def test_gallery_is_a_png_with_a_row_per_image() -> None:
    one = open_png(render_gallery([gallery_row("Bengal_1", 0.41, 0)], "worst"))
    three = open_png(
        render_gallery([gallery_row(f"pug_{i}", 0.5 + i / 10, i) for i in range(3)], "worst")
    )
    assert one.width == three.width
    assert three.height > 2 * one.height  # about one cell height per row
    with pytest.raises(ValueError):
        render_gallery([], "empty")


def history_row(epoch: int, **values: float | str) -> dict[str, float | str]:
    row: dict[str, float | str] = {
        "epoch": epoch,
        "train_loss": 0.7 / epoch,
        "valid_loss": 0.8 / epoch,
        "valid_dice": 0.5 + epoch / 20,
        "valid_dice_dataset": 0.55 + epoch / 20,
        "valid_iou": 0.4,
        "learning_rate": 1e-3,
        "seconds": 10.0,
    }
    return row | values


def test_curves_render_from_csv_text_with_blanks_or_a_single_epoch() -> None:
    history = [history_row(epoch) for epoch in range(1, 51)]
    from_csv = [{key: str(value) for key, value in row.items()} for row in history]
    from_csv[3]["valid_loss"] = ""  # a blank cell is drawn as a gap, not an error
    data = render_curves(from_csv)
    assert len(data) < 200_000  # small enough to rewrite every epoch and to commit
    picture = open_png(data)
    assert 600 <= picture.width <= 1200 and picture.height <= 400
    assert open_png(render_curves([history_row(1)])).size == picture.size
    with pytest.raises(ValueError):
        render_curves([])


@pytest.mark.parametrize(("loss", "title"), [("bce", "BCE"), ("dice", "soft Dice"),
                                             ("bce_dice", "BCE + soft Dice")])  # fmt: skip
def test_the_loss_panel_names_the_loss_trained_with(loss: str, title: str) -> None:
    loss_ax = curves_figure([history_row(1), history_row(2)], loss=loss).axes[0]
    assert loss_ax.get_title() == f"{title} loss per image"


def test_half_size_epochs_are_shaded_and_their_valid_loss_does_not_flatten_the_curves() -> None:
    # --progressive: epochs 1-2 at half size, validated at full size (a valid loss of 65)
    history = [history_row(epoch) for epoch in range(1, 6)]
    history[1]["valid_loss"] = 65.0
    loss_ax, dice_ax, lr_ax = curves_figure(history, low_res_epochs=2).axes
    low, high = loss_ax.get_ylim()
    assert low == 0 and 0.7 < high < 1.0  # the largest other loss is epoch 1's 0.8
    for ax in (loss_ax, dice_ax, lr_ax):
        (span,) = ax.patches
        assert span.get_x() == pytest.approx(0.5) and span.get_width() == pytest.approx(2)
    assert "half size" in [text.get_text() for text in loss_ax.get_legend().get_texts()]
    # without half-size epochs the same spike is on the axis, and nothing is shaded
    plain = curves_figure(history).axes[0]
    assert plain.get_ylim()[1] >= 65 and not plain.patches


def test_a_one_epoch_run_draws_its_points_on_sane_axes() -> None:
    """One epoch of onecycle: the loss and Dice points sit mid-axis (not on a 0.95-1.05
    stretch), and the rate panel draws the schedule, not only its last step's 2e-09."""
    steps, peak = 10, 5e-4
    rates = schedule_points(steps, steps, base_lr=peak, total_steps=steps, scheduler="onecycle")
    history = [history_row(1, learning_rate=peak / 25 / 1e4)]
    loss_ax, dice_ax, lr_ax = curves_figure(history, learning_rates=rates).axes
    for ax in (loss_ax, dice_ax, lr_ax):
        low, high = ax.get_xlim()
        assert low <= 0.5 and high >= 1.5
    assert all(line.get_marker() == "o" for line in loss_ax.get_lines())
    assert [line.get_marker() for line in dice_ax.get_lines()][:2] == ["o", "o"]
    low, high = dice_ax.get_ylim()
    assert 0.1 <= high - low <= 0.2 and low <= 0.6 <= high  # history_row(1)'s Dice is 0.6
    assert not dice_ax.yaxis.get_major_formatter().get_useOffset()
    (drawn,) = lr_ax.get_lines()
    assert max(drawn.get_ydata()) == pytest.approx(peak)
    assert lr_ax.get_ylim()[0] == 0
