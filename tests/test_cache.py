"""The decoded-image cache: the same tensors as decoding, rebuilt when stale or damaged."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import petseg.train
from petseg.cli import main
from petseg.config import DEFAULT_NUM_WORKERS
from petseg.data.cache import CACHE_FOLDER, DecodedImages, cached_images
from petseg.data.loading import make_loader, resolve_num_workers
from petseg.data.oxford_pet import OxfordPetDataset, read_split_names
from petseg.data.transforms import eval_transform, train_resize_edge, train_transform
from petseg.errors import PetsegError

SIZE = 32
EDGE = train_resize_edge(SIZE, "lab")  # 36: the UNet's default, and it crops
TRAINVAL = [f"Breed_{index}" for index in range(1, 21)]  # 18 train, 2 valid
TEST = ["Other_1", "Other_2"]


def write_sample(root: Path, name: str, index: int, height: int = 41, width: int = 53) -> None:
    """A noise photo (odd size, so every resize interpolates) and a trimap with all 3 classes."""
    rng = np.random.default_rng(index)
    trimap = np.full((height, width), 2, dtype=np.uint8)
    trimap[height // 5 : 4 * height // 5, width // 6 : 3 * width // 5] = 1
    trimap[height // 5 : height // 5 + 3, width // 6 : 3 * width // 5] = 3
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / f"{name}.jpg", quality=90)
    Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")


@pytest.fixture
def data(tmp_path: Path, make_dataset) -> Path:
    return make_dataset(tmp_path / "pets", TRAINVAL, TEST, write=write_sample)


def cache_of(root: Path, split: str = "train", edge: int = EDGE, **kwargs) -> DecodedImages:
    decoded = cached_images(root, split, read_split_names(root, split), edge, **kwargs)
    assert decoded is not None
    return decoded


def datasets(
    root: Path, split: str, augment: str = "lab", **kwargs
) -> tuple[OxfordPetDataset, OxfordPetDataset]:
    """The split decoded from the files and read from the cache, with matching transforms."""
    if split == "train":
        plain, resized, edge = (
            train_transform(SIZE, augment=augment),
            train_transform(SIZE, augment=augment, resized_input=True),
            train_resize_edge(SIZE, augment),
        )
    else:
        plain, resized, edge = eval_transform(SIZE), eval_transform(SIZE, resized_input=True), SIZE
    decoded = cache_of(root, split, edge)
    return (
        OxfordPetDataset(root, split, plain, **kwargs),
        OxfordPetDataset(root, split, resized, decoded=decoded, **kwargs),
    )


def assert_same_items(first: OxfordPetDataset, second: OxfordPetDataset) -> None:
    assert len(first) == len(second)
    for index in range(len(first)):
        for a, b in zip(first[index], second[index], strict=True):
            assert torch.equal(a, b), index


@pytest.mark.parametrize(
    ("split", "augment"), [("train", "lab"), ("train", "strong"), ("valid", "lab")]
)
def test_cached_items_equal_decoded_items_for_the_same_augmentation_seed(
    data, split, augment
) -> None:
    plain, cached = datasets(data, split, augment)
    for seed in (0, 12345):
        plain.set_augment_seed(seed)
        cached.set_augment_seed(seed)
        assert_same_items(plain, cached)


def test_cached_items_with_border_equal_decoded_ones(data) -> None:
    assert_same_items(*datasets(data, "valid", with_border=True))


def test_cached_batches_through_workers_equal_decoded_ones(data) -> None:
    batches = []
    for dataset in datasets(data, "train"):
        dataset.set_augment_seed(7)
        loader = make_loader(dataset, 5, shuffle=False, num_workers=2, device=torch.device("cpu"))
        batches.append(list(loader))
    for (images_a, masks_a), (images_b, masks_b) in zip(*batches, strict=True):
        assert torch.equal(images_a, images_b) and torch.equal(masks_a, masks_b)


def test_each_epochs_augment_seed_reaches_the_workers(data) -> None:
    _, cached = datasets(data, "train")
    loader = make_loader(cached, 6, shuffle=False, num_workers=2, device=torch.device("cpu"))

    def epoch(seed: int) -> list[torch.Tensor]:
        cached.set_augment_seed(seed)
        return [images for images, _ in loader]

    first, second, first_again = epoch(1), epoch(2), epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, first_again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_cache_lives_in_the_data_folder_and_is_reused(data, capsys) -> None:
    decoded = cache_of(data)
    built = capsys.readouterr().out
    assert decoded.folder == data / CACHE_FOLDER / f"train-{EDGE}px"
    assert "built in" in built and str(decoded.folder) in built and "MB" in built
    index = json.loads((decoded.folder / "index.json").read_text())
    assert index["key"]["count"] == 18 and index["key"]["edge"] == EDGE
    assert not [path for path in decoded.folder.iterdir() if path.suffix == ".tmp"]
    cache_of(data)
    assert "reused" in capsys.readouterr().out


def test_another_size_gets_its_own_cache(data, capsys) -> None:
    small, large = cache_of(data, edge=EDGE), cache_of(data, edge=EDGE + 10)
    assert small.folder != large.folder
    assert capsys.readouterr().out.count("built in") == 2
    assert large[0][0].shape == (EDGE + 10, EDGE + 10, 3)
    assert small[0][0].shape == (EDGE, EDGE, 3)


def test_a_changed_source_file_rebuilds_the_cache(data, capsys) -> None:
    cache_of(data)
    name = read_split_names(data, "train")[3]
    write_sample(data, name, index=999)
    path = data / "images" / f"{name}.jpg"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    plain, cached = datasets(data, "train")
    assert "rebuilding" in capsys.readouterr().err
    plain.set_augment_seed(1)
    cached.set_augment_seed(1)
    assert_same_items(plain, cached)


def test_other_names_rebuild_the_cache(data, capsys) -> None:
    cache_of(data)
    names = read_split_names(data, "train")[1:]  # as --skip_bad leaving one out
    decoded = cached_images(data, "train", names, EDGE)
    assert decoded is not None and len(decoded) == 17
    assert "rebuilding" in capsys.readouterr().err


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def flip_a_pixel(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0xFF
    path.write_bytes(raw)


def garble(path: Path) -> None:
    path.write_bytes(b"\x93NUMPY garbage" + os.urandom(64))


@pytest.mark.parametrize(
    ("file", "damage", "reason"),
    [
        ("images.npy", truncate, "truncated"),
        ("trimaps.npy", flip_a_pixel, "corrupt"),
        ("images.npy", garble, "truncated"),
        ("trimaps.npy", Path.unlink, "missing"),
        ("index.json", garble, "unreadable"),
        ("index.json", Path.unlink, None),
    ],
)
def test_a_damaged_cache_is_rebuilt_not_used(data, capsys, file, damage, reason) -> None:
    plain, _ = datasets(data, "train")
    damage(cache_of(data).folder / file)
    capsys.readouterr()
    decoded = cache_of(data)
    err = capsys.readouterr().err
    if reason:
        assert reason in err and "rebuilding" in err
    cached = OxfordPetDataset(
        data, "train", train_transform(SIZE, augment="lab", resized_input=True), decoded=decoded
    )
    plain.set_augment_seed(3)
    cached.set_augment_seed(3)
    assert_same_items(plain, cached)


def test_a_read_only_data_folder_falls_back_to_the_user_cache(data, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    data.chmod(0o555)
    try:
        decoded = cache_of(data)
    finally:
        data.chmod(0o755)
    assert not (data / CACHE_FOLDER).exists()
    assert decoded.folder.is_relative_to(tmp_path / "home-cache" / "petseg")


def test_no_writable_place_means_no_cache_and_a_note(data, tmp_path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    names = read_split_names(data, "train")
    assert cached_images(data, "train", names, EDGE, cache_dir=locked / "cache") is None
    assert "decoding every epoch" in capsys.readouterr().err


def test_only_readers_wait_for_the_builder(data) -> None:
    names = read_split_names(data, "train")
    assert cached_images(data, "train", names, EDGE, build=False) is None
    cache_of(data)
    assert cached_images(data, "train", names, EDGE, build=False) is not None


def test_a_pickled_cache_carries_paths_not_pixels(data) -> None:
    decoded = cache_of(data)
    payload = pickle.dumps(decoded)
    assert len(payload) < 2_000
    copy = pickle.loads(payload)
    for (image_a, trimap_a), (image_b, trimap_b) in zip(
        (decoded[i] for i in range(3)), (copy[i] for i in range(3)), strict=True
    ):
        assert np.array_equal(image_a, image_b) and np.array_equal(trimap_a, trimap_b)


def test_a_cache_rebuilt_by_another_run_is_refused_not_misread(data) -> None:
    copy = pickle.loads(pickle.dumps(cache_of(data)))  # a worker that has not opened it yet
    names = read_split_names(data, "train")[2:]
    cached_images(data, "train", names, EDGE, report=False)  # another run, other names
    with pytest.raises(PetsegError, match="rebuilt by another run"):
        copy[0]


def train_argv(data: Path, model_path: Path, *extra: str) -> list[str]:
    return [
        "train", "--data_path", str(data), "--model_path", str(model_path),
        "--model_type", "unet", "--unet_widths", "4,8", "--image_size", str(SIZE),
        "--batch_size", "4", "--epochs", "1", "--num_workers", "0", "-lr", "1e-3", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(("augment", "edge"), [("lab", EDGE), ("strong", SIZE)])
def test_training_with_and_without_the_cache_gives_the_same_weights(
    data, tmp_path, augment, edge
) -> None:
    cached, plain = tmp_path / "cached.pt", tmp_path / "plain.pt"
    level = ("--augment", augment)
    assert main(train_argv(data, cached, *level, "--cache_dir", str(tmp_path / "c"))) == 0
    assert main(train_argv(data, plain, *level, "--no-cache")) == 0
    # the strong level zooms by its own random scale, so its cache holds images at the size
    assert sorted(path.name for path in (tmp_path / "c").iterdir()) == sorted(
        {f"train-{edge}px", f"valid-{SIZE}px"}
    )
    assert not (data / CACHE_FOLDER).exists()
    a = torch.load(cached, weights_only=True)
    b = torch.load(plain, weights_only=True)
    for key, tensor in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], tensor), key
    assert a["valid_scores"] == b["valid_scores"]
    assert a["config"]["data"]["cache"] and not b["config"]["data"]["cache"]


def test_auto_workers_are_zero_only_for_a_cpu_reading_the_cache() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_num_workers(None, cpu, decoded=True) == 0
    assert resolve_num_workers(None, cpu, decoded=False) == DEFAULT_NUM_WORKERS
    assert resolve_num_workers(None, cuda, decoded=True) == DEFAULT_NUM_WORKERS
    for requested in (0, 3):
        for device in (cpu, cuda):
            assert resolve_num_workers(requested, device, decoded=True) == requested


@pytest.mark.parametrize(
    ("extra", "workers", "said"),
    [
        ((), 0, True),
        (("--no-cache",), DEFAULT_NUM_WORKERS, True),
        (("--num_workers", "1"), 1, False),
    ],
)
def test_cpu_training_loads_the_cache_in_the_main_process_unless_told(
    data, tmp_path, monkeypatch, capsys, extra, workers, said
) -> None:
    used: list[int] = []

    def spy(*args, **kwargs):
        used.append(kwargs["num_workers"])
        return make_loader(*args, **kwargs)

    monkeypatch.setattr(petseg.train, "make_loader", spy)
    argv = train_argv(data, tmp_path / "m.pt", *extra)
    at = argv.index("--num_workers")
    del argv[at : at + 2]  # the helper's explicit 0
    assert main(argv) == 0
    assert used == [workers, workers]  # train and valid loaders
    out = capsys.readouterr().out
    assert (f"data loading: {workers} worker processes (--num_workers auto)" in out) == said


def test_skip_bad_trains_from_a_cache_without_the_bad_sample(data, tmp_path, capsys) -> None:
    bad = read_split_names(data, "train")[4]
    (data / "images" / f"{bad}.jpg").write_bytes(b"not an image")
    assert main(train_argv(data, tmp_path / "m.pt", "--skip_bad")) == 0
    assert "17 images" in capsys.readouterr().out
    index = json.loads((data / CACHE_FOLDER / f"train-{EDGE}px" / "index.json").read_text())
    assert index["key"]["count"] == 17
