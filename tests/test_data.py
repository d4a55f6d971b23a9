"""Oxford-IIIT Pet loading on a tiny synthetic copy of the official layout, and the transforms."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from petseg.data.oxford_pet import (
    OxfordPetDataset,
    breed_of,
    load_mask,
    load_rgb,
    load_trimap,
    missing_archives,
    read_split_names,
    species_of,
    trimap_to_mask,
)
from petseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PairTransform,
    eval_transform,
    first_resize,
    train_resize_edge,
    train_transform,
)
from petseg.errors import PetsegError

HEIGHT, WIDTH = 12, 16  # every synthetic photo and trimap
TRAINVAL_NAMES = [f"Breed_{index}" for index in range(25)]
TEST_NAMES = ["Other_1", "Other_2", "Other_3"]
CONSTANT_RGB = (200, 100, 50)  # colour of TRAINVAL_NAMES[0], a photo of the valid split
PALETTE_NAME, RGBA_NAME, GREY_NAME, CMYK_NAME = TRAINVAL_NAMES[1:5]


# --- building the synthetic dataset -----------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def half_trimap(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Left half pet (border 3 in the top rows, pet 1 below), right half background 2."""
    trimap = np.full((height, width), 2, dtype=np.uint8)
    trimap[:, : width // 2] = 1
    trimap[:2, : width // 2] = 3
    return trimap


def photo_bytes(name: str, index: int) -> bytes:
    """JPEG bytes of a photo; a few have the odd modes (and formats) the real dataset has."""
    if name == TRAINVAL_NAMES[0]:
        constant = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
        constant[...] = CONSTANT_RGB
        return encode(Image.fromarray(constant), "JPEG", quality=100, subsampling=0)
    if name == PALETTE_NAME:
        return encode(palette_image(), "PNG")
    if name == RGBA_NAME:
        return encode(Image.new("RGBA", (WIDTH, HEIGHT), (1, 2, 3, 128)), "PNG")  # PNG in a .jpg
    if name == GREY_NAME:
        return encode(Image.new("L", (WIDTH, HEIGHT), 77), "JPEG", quality=100)
    if name == CMYK_NAME:
        return encode(Image.new("CMYK", (WIDTH, HEIGHT), (255, 0, 0, 0)), "JPEG", quality=100)
    pixels = np.random.default_rng(index).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG")


def palette_image() -> Image.Image:
    """Left half palette index 0 = (10, 20, 30), right half index 1 = (200, 100, 50)."""
    indices = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    indices[:, WIDTH // 2 :] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    return image


def write_trimap(path: Path, trimap: np.ndarray) -> None:
    path.write_bytes(encode(Image.fromarray(trimap, mode="L"), "PNG"))


def build_pet_root(root: Path) -> Path:
    images = root / "images"
    trimaps = root / "annotations" / "trimaps"
    images.mkdir(parents=True)
    trimaps.mkdir(parents=True)
    for index, name in enumerate(TRAINVAL_NAMES + TEST_NAMES):
        (images / f"{name}.jpg").write_bytes(photo_bytes(name, index))
        write_trimap(trimaps / f"{name}.png", half_trimap())
    (images / "Breed_0.mat").write_bytes(b"MATLAB 5.0 MAT-file, not an image\x00\x01\x02")
    annotations = root / "annotations"
    (annotations / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in TRAINVAL_NAMES))
    (annotations / "test.txt").write_text("".join(f"{n} 2 2 1\n" for n in TEST_NAMES))
    return root


@pytest.fixture
def pet_root(tmp_path: Path) -> Path:
    return build_pet_root(tmp_path / "oxford-iiit-pet")


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) normalized tensor -> values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return image * std + mean


def expected_normalized(rgb: tuple[int, int, int]) -> list[float]:
    return [(v / 255 - m) / s for v, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD, strict=True)]


# --- splits -----------------------------------------------------------------------------------


def test_splits_follow_the_index_mod_10_rule(pet_root: Path) -> None:
    train = read_split_names(pet_root, "train")
    valid = read_split_names(pet_root, "valid")
    assert valid == ["Breed_0", "Breed_10", "Breed_20"]
    assert len(train) == 22
    assert train == [f"Breed_{i}" for i in range(25) if i % 10 != 0]
    assert set(train).isdisjoint(valid)
    assert read_split_names(pet_root, "test") == TEST_NAMES


def test_blank_lines_in_a_split_file_are_ignored(pet_root: Path) -> None:
    listing = pet_root / "annotations" / "trainval.txt"
    listing.write_text(listing.read_text() + "\n\n")
    assert read_split_names(pet_root, "valid") == ["Breed_0", "Breed_10", "Breed_20"]
    assert len(read_split_names(pet_root, "train")) == 22


def test_an_empty_split_file_raises(pet_root: Path) -> None:
    listing = pet_root / "annotations" / "test.txt"
    listing.write_text("")
    with pytest.raises(PetsegError, match="empty") as info:
        read_split_names(pet_root, "test")
    assert str(listing) in str(info.value)


def test_a_single_trainval_line_leaves_the_train_split_empty(pet_root: Path) -> None:
    (pet_root / "annotations" / "trainval.txt").write_text("Breed_0 1 1 1\n")
    assert read_split_names(pet_root, "valid") == ["Breed_0"]
    with pytest.raises(PetsegError, match="train"):
        read_split_names(pet_root, "train")


def test_a_missing_split_file_raises_petseg_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PetsegError) as info:
        read_split_names(tmp_path, "test")
    assert str(tmp_path / "annotations" / "test.txt") in str(info.value)


def test_an_unknown_split_raises(pet_root: Path) -> None:
    with pytest.raises(PetsegError, match="trainval"):
        read_split_names(pet_root, "trainval")  # type: ignore[arg-type]


def test_empty_split_makes_dataset_construction_fail(pet_root: Path) -> None:
    (pet_root / "annotations" / "trainval.txt").write_text("\n")
    with pytest.raises(PetsegError):
        OxfordPetDataset(pet_root, "train", eval_transform(8))


# --- trimaps and masks ------------------------------------------------------------------------


def test_trimap_to_mask_counts_pet_and_border_as_foreground() -> None:
    trimap = np.array([[1, 2, 3], [3, 2, 1]], dtype=np.uint8)
    result = trimap_to_mask(trimap)
    assert result.dtype == np.uint8
    assert result.tolist() == [[1, 0, 1], [1, 0, 1]]


def test_load_mask_reads_a_trimap_png(pet_root: Path) -> None:
    result = load_mask(pet_root / "annotations" / "trimaps" / "Breed_3.png")
    expected = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    expected[:, : WIDTH // 2] = 1
    assert result.dtype == np.uint8
    assert np.array_equal(result, expected)


def test_load_mask_of_a_missing_or_broken_trimap_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.png"
    with pytest.raises(PetsegError) as info:
        load_mask(missing)
    assert str(missing) in str(info.value)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.raises(PetsegError) as info:
        load_mask(broken)
    assert str(broken) in str(info.value)


# --- decoding photos --------------------------------------------------------------------------


def test_load_rgb_of_a_palette_image(pet_root: Path) -> None:
    result = load_rgb(pet_root / "images" / f"{PALETTE_NAME}.jpg")
    assert result.shape == (HEIGHT, WIDTH, 3)
    assert result.dtype == np.uint8
    assert (result[:, : WIDTH // 2] == (10, 20, 30)).all()
    assert (result[:, WIDTH // 2 :] == (200, 100, 50)).all()


def test_load_rgb_of_an_rgba_png_saved_as_jpg_drops_alpha(pet_root: Path) -> None:
    result = load_rgb(pet_root / "images" / f"{RGBA_NAME}.jpg")
    assert result.shape == (HEIGHT, WIDTH, 3)
    assert result.dtype == np.uint8
    assert (result == (1, 2, 3)).all()


def test_load_rgb_of_a_greyscale_jpeg_repeats_the_grey_level(pet_root: Path) -> None:
    result = load_rgb(pet_root / "images" / f"{GREY_NAME}.jpg")
    assert result.shape == (HEIGHT, WIDTH, 3)
    assert result.dtype == np.uint8
    assert np.abs(result.astype(int) - 77).max() <= 1


def test_load_rgb_of_a_cmyk_jpeg(pet_root: Path) -> None:
    result = load_rgb(pet_root / "images" / f"{CMYK_NAME}.jpg")
    assert result.shape == (HEIGHT, WIDTH, 3)
    assert result.dtype == np.uint8
    # full cyan ink, no other ink -> RGB (0, 255, 255), give or take JPEG rounding
    assert np.abs(result.astype(int) - (0, 255, 255)).max() <= 3


def test_load_rgb_of_a_non_image_names_the_file(pet_root: Path) -> None:
    stray = pet_root / "images" / "Breed_0.mat"
    with pytest.raises(PetsegError) as info:
        load_rgb(stray)
    assert str(stray) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_rgb_of_a_missing_file_or_a_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(PetsegError, match="not found") as info:
        load_rgb(tmp_path / "nope.jpg")
    assert str(tmp_path / "nope.jpg") in str(info.value)
    with pytest.raises(PetsegError) as info:
        load_rgb(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_rgb_applies_exif_orientation_only_when_asked(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(Image.new("RGB", (6, 4), (0, 0, 0)), "JPEG", exif=exif))
    assert load_rgb(path).shape == (4, 6, 3)
    assert load_rgb(path, exif_transpose=True).shape == (6, 4, 3)


# --- missing archives -------------------------------------------------------------------------


def test_missing_archives_of_an_empty_folder(tmp_path: Path) -> None:
    assert missing_archives(tmp_path) == ["images", "annotations"]


def test_missing_archives_of_a_complete_layout(pet_root: Path) -> None:
    assert missing_archives(pet_root) == []


def test_missing_archives_without_images(pet_root: Path) -> None:
    for path in (pet_root / "images").iterdir():
        path.unlink()
    (pet_root / "images").rmdir()
    assert missing_archives(pet_root) == ["images"]


@pytest.mark.parametrize("part", ["trainval.txt", "test.txt", "trimaps"])
def test_missing_archives_reports_annotations_when_any_part_is_absent(
    pet_root: Path, part: str
) -> None:
    path = pet_root / "annotations" / part
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()
    assert missing_archives(pet_root) == ["annotations"]


# --- the dataset ------------------------------------------------------------------------------


def test_dataset_lengths_match_the_splits(pet_root: Path) -> None:
    transform = eval_transform(8)
    assert len(OxfordPetDataset(pet_root, "train", transform)) == 22
    assert len(OxfordPetDataset(pet_root, "valid", transform)) == 3
    assert len(OxfordPetDataset(pet_root, "test", transform)) == 3


def test_dataset_missing_image_fails_at_construction_naming_the_file(pet_root: Path) -> None:
    missing = pet_root / "images" / "Breed_7.jpg"
    missing.unlink()
    with pytest.raises(PetsegError) as info:
        OxfordPetDataset(pet_root, "train", eval_transform(8))
    assert str(missing) in str(info.value)
    # the valid split does not list Breed_7, so it is still usable
    assert len(OxfordPetDataset(pet_root, "valid", eval_transform(8))) == 3


def test_dataset_missing_trimap_fails_at_construction_naming_the_file(pet_root: Path) -> None:
    missing = pet_root / "annotations" / "trimaps" / "Other_2.png"
    missing.unlink()
    with pytest.raises(PetsegError) as info:
        OxfordPetDataset(pet_root, "test", eval_transform(8))
    assert str(missing) in str(info.value)


def test_dataset_item_of_an_undecodable_image_names_the_file(pet_root: Path) -> None:
    broken = pet_root / "images" / "Other_1.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    dataset = OxfordPetDataset(pet_root, "test", eval_transform(8))
    with pytest.raises(PetsegError) as info:
        dataset[0]
    assert str(broken) in str(info.value)


def test_dataset_item_whose_trimap_size_differs_raises(pet_root: Path) -> None:
    trimap = pet_root / "annotations" / "trimaps" / "Other_3.png"
    write_trimap(trimap, half_trimap(HEIGHT + 1, WIDTH))
    dataset = OxfordPetDataset(pet_root, "test", eval_transform(8))
    with pytest.raises(PetsegError) as info:
        dataset[2]
    assert str(trimap) in str(info.value)


def test_eval_transform_normalizes_a_constant_colour_exactly() -> None:
    image = np.empty((10, 14, 3), dtype=np.uint8)
    image[...] = (0, 128, 255)
    out_image, out_mask = eval_transform(6)(image, np.ones((10, 14), dtype=np.uint8))
    assert out_image.shape == (3, 6, 6)
    assert out_image.dtype == torch.float32
    for channel, value in enumerate(expected_normalized((0, 128, 255))):
        assert torch.allclose(out_image[channel], torch.full((6, 6), value), atol=1e-5)
    assert out_mask.shape == (1, 6, 6)
    assert (out_mask == 1).all()


def test_eval_item_image_is_normalized_and_mask_follows_the_trimap(pet_root: Path) -> None:
    size = 8
    dataset = OxfordPetDataset(pet_root, "valid", eval_transform(size))
    assert dataset.names[0] == TRAINVAL_NAMES[0]
    image, mask = dataset[0]
    assert image.shape == (3, size, size)
    assert image.dtype == torch.float32
    # (200/255 - 0.485)/0.229 = 1.307, (100/255 - 0.456)/0.224 = -0.285,
    # (50/255 - 0.406)/0.225 = -0.933; JPEG may move a level by a couple of steps
    for channel, value in enumerate(expected_normalized(CONSTANT_RGB)):
        tolerance = 3 / 255 / IMAGENET_STD[channel]
        assert (image[channel] - value).abs().max() <= tolerance
    assert mask.shape == (1, size, size)
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    expected = torch.zeros(1, size, size)
    expected[..., : size // 2] = 1  # left half pet (1 and border 3), right half background
    assert torch.equal(mask, expected)


def test_with_border_items_add_the_border_and_keep_the_same_mask(pet_root: Path) -> None:
    size = 8
    plain = OxfordPetDataset(pet_root, "valid", eval_transform(size))
    bordered = OxfordPetDataset(pet_root, "valid", eval_transform(size), with_border=True)
    image, mask = plain[0]
    image_b, mask_b, border = bordered[0]
    assert torch.equal(image, image_b)
    assert torch.equal(mask, mask_b)  # the headline convention is unchanged: border is pet
    # The border is the trimap's class 3 resized like a mask (nearest)...
    trimap = load_trimap(pet_root / "annotations" / "trimaps" / f"{plain.names[0]}.png")
    _, expected = eval_transform(size)(
        np.zeros((HEIGHT, WIDTH, 3), np.uint8), (trimap == 3).astype(np.uint8)
    )
    assert border.shape == (1, size, size)
    assert torch.equal(border, expected)
    # ...so with half_trimap it lies in the top rows of the left half, inside the pet mask.
    assert border.sum() > 0
    assert border[..., size // 2 :].sum() == 0 and border[..., size // 2 :, :].sum() == 0
    assert (mask_b[border > 0] == 1).all()


def test_load_trimap_keeps_the_three_classes(pet_root: Path) -> None:
    trimap = load_trimap(pet_root / "annotations" / "trimaps" / "Breed_3.png")
    assert trimap.shape == (HEIGHT, WIDTH)
    assert np.array_equal(trimap, half_trimap())


@pytest.mark.parametrize(
    ("name", "breed", "species"),
    [
        ("Abyssinian_100", "Abyssinian", "cat"),
        ("British_Shorthair_7", "British_Shorthair", "cat"),
        ("american_pit_bull_terrier_12", "american_pit_bull_terrier", "dog"),
        ("great_pyrenees_3", "great_pyrenees", "dog"),
        ("beagle", "beagle", "dog"),  # no trailing number: the whole name
        ("Sphynx_x", "Sphynx_x", "cat"),
    ],
)
def test_breed_and_species_follow_the_oxford_naming(name: str, breed: str, species: str) -> None:
    assert breed_of(name) == breed
    assert species_of(name) == species


def test_every_item_of_every_split_decodes_to_the_right_shapes(pet_root: Path) -> None:
    """The train split holds the palette, RGBA-as-PNG, greyscale and CMYK photos."""
    for split in ("train", "valid", "test"):
        dataset = OxfordPetDataset(pet_root, split, eval_transform(8))
        for index in range(len(dataset)):
            image, mask = dataset[index]
            assert image.shape == (3, 8, 8)
            assert mask.shape == (1, 8, 8)
            assert torch.isfinite(image).all()


def test_train_items_have_the_output_size(pet_root: Path) -> None:
    dataset = OxfordPetDataset(pet_root, "train", train_transform(8, seed=0))
    image, mask = dataset[3]
    assert image.shape == (3, 8, 8)
    assert image.dtype == torch.float32
    assert mask.shape == (1, 8, 8)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


# --- train transform: alignment and seeding ---------------------------------------------------


def red_marks_the_mask(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise photo whose red channel is 255 exactly on an off-centre (left) rectangle mask."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 6 : height * 5 // 6, width // 12 : width * 5 // 12] = 1
    image[..., 0] = mask * 255
    return image, mask


def red_says_pet(image: torch.Tensor) -> torch.Tensor:
    return (denormalize(image)[0] * 255 > 127).float()


def test_train_transform_keeps_mask_and_image_aligned_exactly_without_rescaling() -> None:
    # round(32 * 1.12) = 36: a 36x36 input is not rescaled, so the lab's crop and flip must
    # match exactly (the strong level's rotations interpolate: see test_recipe.py)
    image, mask = red_marks_the_mask(36, 36)
    flipped = []
    for seed in range(8):
        out_image, out_mask = train_transform(32, seed=seed, augment="lab")(image, mask)
        assert out_image.shape == (3, 32, 32)
        assert out_mask.shape == (1, 32, 32)
        assert torch.equal(red_says_pet(out_image), out_mask[0])
        columns = out_mask[0].nonzero()[:, 1].float()
        flipped.append(columns.mean().item() > 16)
    # the check above saw both orientations of the off-centre rectangle
    assert any(flipped)
    assert not all(flipped)


def test_only_the_lab_level_zooms_before_its_crop() -> None:
    assert train_resize_edge(128, "lab") == 143
    assert train_resize_edge(128, "flip") == 128
    assert train_resize_edge(128, "strong") == 128  # its random scale zooms instead
    with pytest.raises(ValueError, match="unknown augment"):
        train_resize_edge(128, "heavy")


def test_flip_level_gives_the_evaluation_input_or_its_mirror_and_nothing_else() -> None:
    image, mask = red_marks_the_mask(50, 70)
    plain_image, plain_mask = eval_transform(32)(image, mask)
    mirrored = []
    for seed in range(8):
        out_image, out_mask = train_transform(32, seed=seed, augment="flip")(image, mask)
        is_mirror = torch.equal(out_mask, plain_mask.flip(-1))
        expected = (
            (plain_image.flip(-1), plain_mask.flip(-1)) if is_mirror else (plain_image, plain_mask)
        )
        assert torch.equal(out_image, expected[0])
        assert torch.equal(out_mask, expected[1])
        mirrored.append(is_mirror)
    # the off-centre rectangle came out in both orientations
    assert any(mirrored)
    assert not all(mirrored)


def mask_edge(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood holds both classes: where interpolation may disagree."""
    mask = mask[None, None]
    return (F.max_pool2d(mask, 3, 1, 1) != -F.max_pool2d(-mask, 3, 1, 1))[0, 0]


@pytest.mark.parametrize("augment", ["lab", "strong"])
def test_train_transform_keeps_mask_and_image_aligned_when_rescaling(augment) -> None:
    # 50x70 to 32x32 (strong) or 36x36 (lab): the bilinear image and the nearest mask may
    # disagree along the mask's edge, nowhere else (a shift, flip or scale of one of them would)
    image, mask = red_marks_the_mask(50, 70)
    for seed in range(6):
        out_image, out_mask = train_transform(32, seed=seed, augment=augment)(image, mask)
        assert out_image.shape == (3, 32, 32)
        assert set(out_mask.unique().tolist()) == {0.0, 1.0}
        disagree = red_says_pet(out_image) != out_mask[0]
        assert disagree.float().mean().item() <= 0.08
        assert (disagree & ~mask_edge(out_mask[0])).float().mean().item() <= 0.01


def draws(transform: PairTransform, image: np.ndarray, mask: np.ndarray, n: int = 4) -> list:
    return [transform(image, mask) for _ in range(n)]


def same_draws(first: list, second: list) -> bool:
    return all(
        torch.equal(a_image, b_image) and torch.equal(a_mask, b_mask)
        for (a_image, a_mask), (b_image, b_mask) in zip(first, second, strict=True)
    )


def test_train_transform_with_the_same_seed_repeats_its_outputs() -> None:
    image, mask = red_marks_the_mask(50, 70)
    first = draws(train_transform(32, seed=123), image, mask)
    second = draws(train_transform(32, seed=123), image, mask)
    assert same_draws(first, second)


def test_train_transform_with_different_seeds_differs() -> None:
    image, mask = red_marks_the_mask(50, 70)
    first = draws(train_transform(32, seed=0), image, mask)
    second = draws(train_transform(32, seed=1), image, mask)
    assert not same_draws(first, second)


def test_set_seed_restarts_the_augmentation_stream() -> None:
    image, mask = red_marks_the_mask(50, 70)
    transform = train_transform(32, seed=5)
    first = draws(transform, image, mask)
    transform.set_seed(5)
    again = draws(transform, image, mask)
    assert same_draws(first, again)
    transform.set_seed(6)
    assert same_draws(
        draws(transform, image, mask), draws(train_transform(32, seed=6), image, mask)
    )


def test_eval_transform_is_deterministic_and_image_only_matches() -> None:
    image, mask = red_marks_the_mask(50, 70)
    transform = eval_transform(16)
    first_image, first_mask = transform(image, mask)
    second_image, second_mask = transform(image, mask)
    assert torch.equal(first_image, second_image)
    assert torch.equal(first_mask, second_mask)
    assert torch.equal(transform.image_only(image), first_image)


@pytest.mark.parametrize(
    ("make", "augment"),
    [(train_transform, "lab"), (train_transform, "strong"), (eval_transform, None)],
)
def test_resized_input_pipelines_continue_after_the_first_resize(make, augment) -> None:
    image, mask = red_marks_the_mask(50, 70)
    edge = train_resize_edge(32, augment) if augment else 32
    level = {"augment": augment} if augment else {}
    resized = first_resize(edge)(image=image, mask=mask)
    for seed in range(4):
        whole, rest = make(32, **level), make(32, resized_input=True, **level)
        whole.set_seed(seed)
        rest.set_seed(seed)
        for a, b in zip(whole(image, mask), rest(resized["image"], resized["mask"]), strict=True):
            assert torch.equal(a, b)
