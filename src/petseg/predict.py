"""`petseg predict`: masks for the test split or for any image files, at each image's own size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from petseg.checkpoint import check_model_type, load_checkpoint, model_from_checkpoint
from petseg.data.loading import ensure_dataset, make_loader
from petseg.data.oxford_pet import DECODE_ERRORS, Split, load_rgb, read_split_names
from petseg.data.transforms import PairTransform, eval_transform
from petseg.errors import PetsegError
from petseg.files import atomic_writer, ensure_folder
from petseg.runtime import resolve_device

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageFiles(Dataset):
    """Images for inference: (image tensor at the model size, original (H, W), index)."""

    def __init__(self, paths: Sequence[Path], transform: PairTransform) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, tuple[int, int], int]:
        image = load_rgb(self.paths[index], exif_transpose=True)
        return self.transform.image_only(image), image.shape[:2], index


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """Expand folders to their image files (sorted, not recursive); keep files as given."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PetsegError(
                    f"{item}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise PetsegError(f"{item}: no such file or folder")
    for path in paths:
        probe_image(path)
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise PetsegError(
                f"{path}: its mask would overwrite the one of {stems[path.stem]} "
                "(same name); predict them into separate --save_dir folders"
            )
        stems[path.stem] = path
    return paths


def probe_image(path: Path) -> None:
    """Read the header only: fails fast on non-images and decompression bombs before any work."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except DECODE_ERRORS as error:
        raise PetsegError(f"{path}: not an image petseg can read ({error})") from None
    if width < 1 or height < 1:
        raise PetsegError(f"{path}: image has no pixels ({width}x{height})")


def split_images(data_path: Path, split: Split) -> list[Path]:
    return [data_path / "images" / f"{name}.jpg" for name in read_split_names(data_path, split)]


@torch.inference_mode()
def predict_masks(
    model_path: Path,
    save_dir: Path,
    *,
    inputs: Sequence[Path] = (),
    data_path: Path | None = None,
    split: Split = "test",
    batch_size: int = 16,
    num_workers: int = 2,
    device_name: str = "auto",
    threshold: float | None = None,
    mirror: str | None = None,
    model_type: str | None = None,
) -> list[Path]:
    """Write one 0/255 PNG mask per image, named after it, at its original size.

    Images come from `inputs` (files or folders) or, without inputs, from a dataset split.
    """
    checkpoint = load_checkpoint(model_path)
    check_model_type(checkpoint, model_type, model_path)
    device = resolve_device(device_name)
    if inputs:
        paths = collect_images(inputs)
    elif data_path is not None:
        ensure_dataset(data_path, mirror)
        paths = split_images(data_path, split)
    else:
        raise PetsegError("predict needs image files or folders, or --data_path for a split")
    if threshold is None:
        threshold = float(checkpoint.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise PetsegError(f"--threshold must be between 0 and 1, got {threshold}")
    ensure_folder(save_dir)

    model = model_from_checkpoint(checkpoint, model_path).to(device).eval()
    size, norm = int(checkpoint["image_size"]), checkpoint["normalization"]
    dataset = ImageFiles(paths, eval_transform(size, norm["mean"], norm["std"]))
    loader = make_loader(
        dataset,
        batch_size,
        shuffle=False,
        num_workers=num_workers,
        device=device,
        collate_fn=_collate,
    )
    written: list[Path] = []
    for images, sizes, indices in tqdm(loader, desc="predict", unit="batch", dynamic_ncols=True):
        logits = model(images.to(device, non_blocking=True)).float()  # (N, 1, S, S)
        for logit, (height, width), index in zip(logits, sizes, indices, strict=True):
            # Resize logits, not binary masks, so the mask edge is smooth at the original size.
            full = F.interpolate(
                logit[None], size=(height, width), mode="bilinear", align_corners=False
            )[0, 0]
            mask = (torch.sigmoid(full) > threshold).to(torch.uint8).mul_(255).cpu().numpy()
            out_path = save_dir / f"{paths[index].stem}.png"
            save_mask(out_path, mask)
            written.append(out_path)
    print(
        f"wrote {len(written)} masks to {save_dir} (0 = background, 255 = pet, "
        f"threshold {threshold:.2f}, model size {size}x{size}, saved at each image's size)"
    )
    return written


def _collate(
    batch: list[tuple[torch.Tensor, tuple[int, int], int]],
) -> tuple[torch.Tensor, list[tuple[int, int]], list[int]]:
    images, sizes, indices = zip(*batch, strict=True)
    return torch.stack(images), list(sizes), list(indices)


def save_mask(path: Path, mask: np.ndarray) -> None:
    """Save an (H, W) uint8 mask as an 8-bit grayscale PNG, atomically."""
    with atomic_writer(path) as handle:
        Image.fromarray(mask).save(handle, format="PNG")
