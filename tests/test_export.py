"""ONNX export and the onnxruntime backend: dynamic axes, metadata, the parity check and its
failure path, predict's masks under both backends, and the error without the optional extra."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import petseg.export
from petseg import __version__
from petseg.checkpoint import make_checkpoint, save_checkpoint
from petseg.cli import build_parser, main
from petseg.config import PRESETS, PredictConfig, TrainConfig
from petseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from petseg.errors import PetsegError
from petseg.export import export_onnx, other_size, trace_size
from petseg.models import MODELS, build_model
from petseg.onnx_model import CPU_PROVIDER, CUDA_PROVIDER, providers_for
from petseg.predict import predict

SIZE = 32
TINY = {"unet": {"widths": (4, 8)}, "resnet34_unet": {"decoder_widths": (8, 8, 8, 8, 8)}}
HAS_EXTRA = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_EXTRA, reason='needs pip install "petseg[onnx]"')


def with_batchnorm_statistics(model: nn.Module) -> nn.Module:
    """The model in eval mode with BatchNorm statistics and scales as training leaves them, not
    the initial ones (zero-initialized residual scales make ResNet blocks identities)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def tiny_model(model_type: str) -> nn.Module:
    """A small model with non-trivial BatchNorm statistics (eval differs from train mode), and
    logits of both signs spread well away from 0, so that few pixels sit near the threshold."""
    torch.manual_seed(0)
    model = with_batchnorm_statistics(build_model(model_type, **TINY[model_type]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # logits = 8 * standardized logits on random inputs
        logits = model(torch.randn(2, 3, SIZE, SIZE, generator=generator))
        scale = 8 / logits.std()
        model.head.weight.mul_(scale)
        model.head.bias.sub_(logits.mean()).mul_(scale)
    return model


def trained_with(model_type: str, image_size: int, **model: tuple[int, ...]) -> TrainConfig:
    """The config a checkpoint of the model type's preset, at another size and widths, holds."""
    preset = PRESETS[model_type]
    recipe = replace(preset.recipe, image_size=image_size)
    return TrainConfig(replace(preset.model, **model), recipe, Path("m.pt"))


def save_tiny_checkpoint(path: Path, model_type: str) -> Path:
    config = trained_with(model_type, SIZE, **TINY[model_type])
    checkpoint = make_checkpoint(
        tiny_model(model_type), config, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    save_checkpoint(path, checkpoint)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """model type -> (checkpoint, exported .onnx), exported once for the module."""
    if not HAS_EXTRA:
        pytest.skip('needs pip install "petseg[onnx]"')
    folder = tmp_path_factory.mktemp("exported")
    pairs = {}
    for model_type in MODELS:
        checkpoint = save_tiny_checkpoint(folder / f"{model_type}.pt", model_type)
        output = folder / f"{model_type}.onnx"
        export_onnx(checkpoint, output, parity_images=3)  # traced at batch 2
        pairs[model_type] = (checkpoint, output)
    return pairs


def synthetic_photos(folder: Path) -> list[Path]:
    """Noise with a bright rectangle, at odd and even, square and non-square sizes."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate([(40, 48), (33, 57), (64, 64), (21, 30)]):
        pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
        pixels[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] += 140
        path = folder / f"pet_{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def fails_with(capsys: pytest.CaptureFixture, argv: list[str], *fragments: str) -> str:
    """Run the CLI in-process; assert exit 2 and one stderr line holding every fragment."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@needs_onnx
@pytest.mark.parametrize("model_type", list(MODELS))
def test_onnx_model_matches_pytorch_at_other_batch_sizes_and_image_sizes(
    exported: dict[str, tuple[Path, Path]], model_type: str
) -> None:
    import onnxruntime

    onnx_path = exported[model_type][1]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=[CPU_PROVIDER])
    (images_info,), (logits_info,) = session.get_inputs(), session.get_outputs()
    assert images_info.name == "images" and logits_info.name == "logits"
    assert isinstance(images_info.shape[0], str) and images_info.shape[1] == 3
    assert all(isinstance(dim, str) for dim in (*images_info.shape[2:], *logits_info.shape[2:]))
    model = tiny_model(model_type)
    generator = torch.Generator().manual_seed(2)
    # traced at 2x3x63x63; run at other batches and at even, odd and non-square sizes
    for batch, height, width in [(1, 32, 32), (3, 48, 64), (2, 37, 53), (1, 33, 47)]:
        images = torch.randn(batch, 3, height, width, generator=generator)
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        with torch.inference_mode():
            expected = model(images).numpy()
        assert logits.shape == (batch, 1, height, width)
        assert np.abs(logits - expected).max() < 1e-4


@needs_onnx
def test_metadata_holds_what_inference_needs(exported: dict[str, tuple[Path, Path]]) -> None:
    import onnx

    checkpoint, onnx_path = exported["resnet34_unet"]
    metadata = {prop.key: prop.value for prop in onnx.load(str(onnx_path)).metadata_props}
    assert metadata["format"] == "petseg-onnx"
    assert metadata["model_type"] == "resnet34_unet"
    assert metadata["image_size"] == str(SIZE)
    assert np.allclose(json.loads(metadata["mean"]), IMAGENET_MEAN)
    assert np.allclose(json.loads(metadata["std"]), IMAGENET_STD)
    assert float(metadata["threshold"]) == 0.5
    assert metadata["petseg_version"] == __version__
    assert metadata["source_checkpoint"] == checkpoint.name


@needs_onnx
def test_export_prints_one_summary_line_and_defaults_the_output_name(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", "unet")
    assert main(["export", "--model-path", str(checkpoint), "--parity-images", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    height, width = other_size(SIZE)
    assert out.startswith(f"exported {checkpoint} -> {tmp_path / 'tiny.onnx'} (")
    assert "opset 17, dynamic batch/height/width" in out
    assert f"parity on 3 random inputs at {SIZE}x{SIZE} and {height}x{width}" in out
    assert "max |logit diff|" in out
    assert (tmp_path / "tiny.onnx").is_file()


@needs_onnx
def test_parity_on_test_split_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "pets"
    (data / "annotations").mkdir(parents=True)
    photos = synthetic_photos(data / "images")
    for photo in photos:
        photo.with_suffix(".jpg").write_bytes(photo.read_bytes())  # PIL reads by content
    names = [photo.stem for photo in photos]
    (data / "annotations" / "test.txt").write_text("".join(f"{n} 1 1 1\n" for n in names))
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", "unet")
    argv = ["export", "--model_path", str(checkpoint), "--output", str(tmp_path / "m.onnx")]
    assert main([*argv, "--data_path", str(data), "--parity_images", "3"]) == 0
    assert "parity on 3 test images at 32x32" in capsys.readouterr().out


@needs_onnx
def test_failed_parity_writes_nothing_and_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", "unet")
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the previous export")
    with pytest.raises(PetsegError, match="parity check failed") as info:
        export_onnx(checkpoint, output, parity_images=1, logit_tolerance=-1.0)
    assert "not written" in str(info.value)

    # an exporter bug that shifts every logit by 0.01: refused from the command line too
    session_logits = petseg.export.session_logits

    def shifted(session: object):
        logits = session_logits(session)
        return lambda images: logits(images) + 0.01

    monkeypatch.setattr(petseg.export, "session_logits", shifted)
    argv = ["export", "--model_path", str(checkpoint), "--output", str(output)]
    fails_with(capsys, argv, "petseg export: error: parity check failed at 32x32", "1.0e-02")
    assert output.read_bytes() == b"the previous export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "tiny.pt"]


@needs_onnx
@pytest.mark.parametrize("model_type", list(MODELS))
def test_predict_with_onnxruntime_writes_the_same_files_as_torch(
    exported: dict[str, tuple[Path, Path]], model_type: str, tmp_path: Path
) -> None:
    """Byte-identical PNGs: the logits agree to ~1e-7 and no pixel of these images has a
    probability that close to the threshold (the head's weights are scaled up for that)."""
    checkpoint, onnx_path = exported[model_type]
    photos = synthetic_photos(tmp_path / "photos")
    for tta in (False, True):
        outputs = {}
        for backend, path in (("torch", checkpoint), ("onnxruntime", onnx_path)):
            save_dir = tmp_path / f"{backend}-{tta}"
            config = PredictConfig(
                path,
                tuple(photos),
                save_dir=save_dir,
                batch_size=3,
                num_workers=0,
                device="cpu",
                precision="fp32",
                tta=tta,
                overlays=True,
                cutouts=True,
                backend=backend,
            )
            predict(config)
            outputs[backend] = {p.name: p.read_bytes() for p in save_dir.iterdir()}
        assert len(outputs["torch"]) == 3 * len(photos)
        assert outputs["onnxruntime"] == outputs["torch"]
        masks = [
            np.asarray(Image.open(tmp_path / f"torch-{tta}" / f"{p.stem}.png")) for p in photos
        ]
        assert any(mask.any() for mask in masks) and any((mask == 0).any() for mask in masks)


@needs_onnx
def test_predict_picks_the_backend_from_the_suffix_and_refuses_a_mismatch(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint, onnx_path = exported["unet"]
    photo = synthetic_photos(tmp_path / "photos")[0]
    save_dir = tmp_path / "out"
    common = ["--save_dir", str(save_dir), "--num_workers", "0", str(photo)]
    assert main(["predict", "--model_path", str(onnx_path), "--tta", *common]) == 0
    assert "onnxruntime fp32 on CPU" in capsys.readouterr().out
    assert (save_dir / f"{photo.stem}.png").is_file()
    fails_with(
        capsys,
        ["predict", "--model_path", str(onnx_path), "--backend", "torch", *common],
        "is an ONNX model; use --backend onnxruntime",
    )
    fails_with(
        capsys,
        ["predict", "--model_path", str(checkpoint), "--backend", "onnxruntime", *common],
        "--backend onnxruntime needs a .onnx file",
        "petseg export --model_path",
    )
    fails_with(
        capsys,
        ["predict", "--model_path", str(onnx_path), "--precision", "bf16", *common],
        "--precision bf16 applies to --backend torch",
    )
    fails_with(
        capsys,
        ["predict", "--model_path", str(onnx_path), "--model_type", "resnet34_unet", *common],
        "holds a unet model, not resnet34_unet",
    )


@needs_onnx
def test_unusable_onnx_files_are_one_line_errors(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import onnx

    photo = synthetic_photos(tmp_path / "photos")[0]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf at all" * 10)
    plain = tmp_path / "plain.onnx"
    model = onnx.load(str(exported["unet"][1]))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    for path, message in [
        (garbage, "not a readable ONNX model"),
        (plain, "not an ONNX model from petseg export"),
        (tmp_path / "missing.onnx", "ONNX model not found"),
    ]:
        argv = [
            "predict",
            "--model_path",
            str(path),
            "--save_dir",
            str(tmp_path / "out"),
            str(photo),
        ]
        fails_with(capsys, argv, str(path), message)
    export = ["export", "--model_path", str(exported["unet"][0])]
    fails_with(capsys, [*export, "--output", str(tmp_path / "m.pt")], "must end in .onnx")
    fails_with(
        capsys,
        [*export, "--output", str(tmp_path / "m.onnx"), "--data_path", str(tmp_path / "none")],
        "no annotations/test.txt for parity images",
    )
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_without_the_extra_export_and_the_backend_say_how_to_install(
    missing: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", "unet")
    output = tmp_path / "tiny.onnx"
    err = fails_with(
        capsys,
        ["export", "--model_path", str(checkpoint), "--output", str(output)],
        "needs the optional package",
        'pip install "petseg[onnx]"',
    )
    assert err.startswith("petseg export: error: ")
    assert not output.exists()
    if missing == "onnxruntime":
        output.write_bytes(b"not reached")
        fails_with(
            capsys,
            ["predict", "--model_path", str(output), "--save_dir", str(tmp_path), "x.png"],
            'pip install "petseg[onnx]"',
        )


def test_export_and_backend_flags_parse_with_either_spelling() -> None:
    parser = build_parser()
    underscored = ["export", "--model_path", "m.pt", "--output", "m.onnx", "--data_path", "d"]
    hyphenated = ["export", "--model-path", "m.pt", "--output", "m.onnx", "--data-path", "d"]
    first = vars(parser.parse_args([*underscored, "--parity_images", "3"]))
    assert first == vars(parser.parse_args([*hyphenated, "--parity-images", "3"]))
    assert first["parity_images"] == 3 and first["output"] == Path("m.onnx")
    assert vars(parser.parse_args(["export", "--model_path", "m.pt"]))["output"] is None
    predict = ["predict", "--model_path", "m.onnx", "x.jpg", "--backend", "onnxruntime"]
    assert vars(parser.parse_args(predict))["backend"] == "onnxruntime"
    assert vars(parser.parse_args(predict[:-2]))["backend"] is None
    with pytest.raises(SystemExit):
        parser.parse_args([*predict[:-1], "tensorrt"])
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--model_path", "m.pt", "--parity_images", "0"])


@pytest.mark.parametrize(
    ("size", "side"), [(32, 63), (64, 127), (100, 127), (127, 127), (256, 511)]
)
def test_trace_size_is_odd_at_every_level(size: int, side: int) -> None:
    assert trace_size(size) == side
    while side > 1:
        assert side % 2 == 1
        side //= 2


def test_onnxruntime_providers_follow_the_device() -> None:
    both = [CUDA_PROVIDER, CPU_PROVIDER]
    assert providers_for("cpu", both) == [CPU_PROVIDER]
    assert providers_for("auto", both) == both
    assert providers_for("auto", [CPU_PROVIDER]) == [CPU_PROVIDER]
    assert providers_for("cuda", both) == both
    with pytest.raises(PetsegError, match="onnxruntime-gpu"):
        providers_for("cuda", [CPU_PROVIDER])


@needs_onnx
@pytest.mark.slow
def test_full_size_resnet34_unet_parity_on_real_test_images(
    sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(0)
    # untrained: logits near 0, so the near-threshold allowance of the mask check is exercised
    model = with_batchnorm_statistics(build_model("resnet34_unet"))
    checkpoint = tmp_path / "r34.pt"
    save_checkpoint(
        checkpoint,
        make_checkpoint(
            model, trained_with("resnet34_unet", 64), mean=IMAGENET_MEAN, std=IMAGENET_STD
        ),
    )
    output = tmp_path / "r34.onnx"
    argv = ["export", "--model_path", str(checkpoint), "--output", str(output)]
    assert main([*argv, "--data_path", str(sample_data)]) == 0
    out = capsys.readouterr().out
    assert "parity on 8 test images at 64x64 and 81x97" in out
    assert output.stat().st_size > 90e6  # 24.4 M float32 weights
