"""The training recipe: flags reach the config, the schedule drives the optimizer, the strong
augmentation keeps image and mask aligned, and the tuned threshold is stored in the checkpoint
and used by evaluate and predict."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import petseg.evaluate
import petseg.segmenter
import petseg.train
from petseg import cli
from petseg.checkpoint import history_path, last_checkpoint_path, load_checkpoint
from petseg.config import (
    PRESETS,
    EvaluateConfig,
    PredictConfig,
    ResNet34UNetConfig,
    UNetConfig,
    model_kwargs,
)
from petseg.data.oxford_pet import OxfordPetDataset
from petseg.data.transforms import eval_transform, train_transform
from petseg.evaluate import choose_threshold, evaluate_checkpoint
from petseg.models import build_model
from petseg.predict import predict
from petseg.schedules import learning_rate_at
from petseg.train import THRESHOLD_CANDIDATES, describe_recipe, tune_checkpoint_threshold

SIZE = 16


def test_recipe_flags_in_both_spellings_reach_the_config(flags_to_config) -> None:
    config = flags_to_config(
        "--loss", "bce", "--optimizer", "adam",
        "--weight-decay", "0", "--scheduler", "constant", "--warmup_epochs", "2",
        "--augment", "lab", "--no-tune-threshold", "-lr", "1e-4", "--clip-grad", "0.5",
    )  # fmt: skip
    recipe = config.recipe
    assert recipe.learning_rate == 1e-4
    assert (recipe.loss, recipe.optimizer, recipe.weight_decay) == ("bce", "adam", 0.0)
    assert (recipe.scheduler, recipe.warmup_epochs, recipe.augment) == ("constant", 2.0, "lab")
    assert recipe.tune_threshold is False
    assert recipe.clip_grad == 0.5
    assert "gradient norm clipped to 0.5," in describe_recipe(recipe)
    assert "clipped" not in describe_recipe(replace(recipe, clip_grad=0))


def test_training_uses_and_records_the_model_types_augmentation_and_clipping(
    tmp_path: Path, monkeypatch, make_dataset, train_args
) -> None:
    levels: list[str] = []
    caps: list[float] = []
    real = petseg.train.train_transform
    real_clip = petseg.train.clip_gradients

    def spy(*args, augment: str, **kwargs):
        levels.append(augment)
        return real(*args, augment=augment, **kwargs)

    def clip_spy(optimizer, parameters, max_norm):
        caps.append(max_norm)
        return real_clip(optimizer, parameters, max_norm)

    monkeypatch.setattr(petseg.train, "train_transform", spy)
    monkeypatch.setattr(petseg.train, "clip_gradients", clip_spy)
    data = make_dataset(tmp_path / "pets")
    for extra, expected, clip in (
        ((), "lab", 1.0),
        (("--augment", "strong", "--clip_grad", "0"), "strong", 0.0),
    ):
        model_path = tmp_path / f"{expected}.pt"
        caps.clear()
        assert cli.main(train_args(data, model_path, *extra)) == 0
        assert levels[-1] == expected
        recipe = load_checkpoint(model_path)["config"]["recipe"]
        assert (recipe["augment"], recipe["clip_grad"]) == (expected, clip)
        # training itself clips at the recorded norm on every step, or never
        assert set(caps) == ({clip} if clip else set())


def test_training_records_the_model_types_batch_size_and_a_resume_keeps_its_own(
    tmp_path: Path, capsys, make_dataset
) -> None:
    data = make_dataset(tmp_path / "pets")  # 18 training images

    def batch_size(model_path: Path, *flags: str) -> int:
        argv = ["train", "--data_path", str(data), "--model_path", str(model_path), *flags]
        assert cli.main([*argv, "--image_size", "32", "--num_workers", "0"]) == 0
        config = load_checkpoint(last_checkpoint_path(model_path))["config"]
        return config["recipe"]["batch_size"]

    r34 = ("--model_type", "resnet34_unet", "--decoder_widths", "16,16,8,8,8", "--epochs", "1")
    assert batch_size(tmp_path / "r34.pt", *r34, "--short_run", "off") == 4
    assert "strong augmentation, batch 4" in capsys.readouterr().out
    # a run of at most 20 epochs trains with the short-run recipe
    assert batch_size(tmp_path / "short.pt", *r34) == 8
    assert "flip augmentation, batch 8" in capsys.readouterr().out
    # and the ResNet34-UNet's own clipping default, where the UNet's is 1.0
    r34_recipe = load_checkpoint(last_checkpoint_path(tmp_path / "r34.pt"))["config"]["recipe"]
    assert r34_recipe["clip_grad"] == 0.5
    unet = ("--model_type", "unet", "--unet_widths", "4,8", "--epochs", "1")
    assert batch_size(tmp_path / "unet.pt", *unet) == 8
    # a run resumes with the batch size it started with, unless one is given
    assert batch_size(tmp_path / "six.pt", *r34, "--batch_size", "6") == 6
    assert batch_size(tmp_path / "six.pt", "--epochs", "2") == 6
    assert batch_size(tmp_path / "six.pt", "--epochs", "3", "--batch_size", "3") == 3


def test_training_records_the_model_types_learning_rate_and_a_resume_keeps_its_own(
    tmp_path: Path, capsys, make_dataset
) -> None:
    data = make_dataset(tmp_path / "pets")

    def peak(model_path: Path, *flags: str) -> tuple[float, float]:
        """The recorded peak rate and the optimizer's rate after the run's last step."""
        argv = ["train", "--data_path", str(data), "--model_path", str(model_path), *flags]
        assert cli.main([*argv, "--image_size", "32", "--num_workers", "0"]) == 0
        checkpoint = load_checkpoint(last_checkpoint_path(model_path))
        optimizer_rate = checkpoint["optimizer"]["param_groups"][0]["lr"]
        return checkpoint["config"]["recipe"]["learning_rate"], optimizer_rate

    unet = ("--unet_widths", "4,8", "--scheduler", "constant", "--epochs", "1")
    assert peak(tmp_path / "unet.pt", *unet) == (5e-4, 5e-4)
    assert "adamw lr 0.0005 " in capsys.readouterr().out
    r34 = ("--model_type", "resnet34_unet", "--decoder_widths", "16,16,8,8,8")
    assert peak(tmp_path / "r34.pt", *r34, "--scheduler", "constant", "--epochs", "1") == (
        1e-3,
        1e-3,
    )
    # a run resumes with the rate it started with, unless one is given
    assert peak(tmp_path / "fast.pt", *unet, "-lr", "0.02") == (0.02, 0.02)
    assert peak(tmp_path / "fast.pt", "--scheduler", "constant", "--epochs", "2") == (0.02, 0.02)
    got = peak(tmp_path / "fast.pt", "--scheduler", "constant", "--epochs", "3", "-lr", "0.01")
    assert got == (0.01, 0.01)


@pytest.mark.parametrize("flag", ["--weight_decay", "--clip_grad"])
def test_a_negative_weight_decay_or_clipping_norm_is_a_usage_error(capsys, flag: str) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", flag, "-1"])
    assert flag in capsys.readouterr().err


def test_strong_augmentation_moves_image_and_mask_together() -> None:
    # the image is white exactly where the mask is pet; after scale, rotation, shift and crop
    # the two must still agree everywhere but at interpolated edges
    mask = np.zeros((120, 160), dtype=np.uint8)
    mask[30:90, 50:120] = 1
    image = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
    transform = train_transform(64, mean=(0, 0, 0), std=(1, 1, 1), augment="strong", seed=3)
    moved = 0
    for _ in range(10):
        image_t, mask_t = transform(image, mask)
        assert set(mask_t.unique().tolist()) <= {0.0, 1.0}
        # colour jitter changes brightness, not which pixels are bright
        bright = image_t.mean(0) > image_t.mean(0).max() / 2
        assert (bright == (mask_t[0] > 0.5)).float().mean() > 0.95
        moved += not torch.equal(mask_t, train_transform(64, augment="lab", seed=3)(image, mask)[1])
    assert moved >= 5  # the geometry really differs from the lab's crop and flip


class FaintRed(nn.Module):
    """Probability 0.4 on red pixels, 0.1 elsewhere: only a threshold below 0.4 finds the pet."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red = (images[:, :1] > images[:, 2:3]).float()
        return torch.logit(0.1 + 0.3 * red)


def write_red_pets(root: Path, names: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    trimap = np.full((SIZE, SIZE), 2, dtype=np.uint8)
    trimap[:, : SIZE // 2] = 1
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    pixels[:, : SIZE // 2] = (255, 0, 0)
    for name in names:
        Image.fromarray(pixels).save(root / "images" / f"{name}.jpg", format="PNG")  # lossless
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
    listing = "".join(f"{name} 1 1 1\n" for name in names)
    (root / "annotations" / "trainval.txt").write_text(listing)
    (root / "annotations" / "test.txt").write_text(listing)
    return root


def test_choose_threshold_prefers_the_best_then_the_nearest_to_half() -> None:
    assert choose_threshold([0.3, 0.4, 0.5, 0.6], [0.8, 0.9, 0.85, 0.9]) == 0.4  # tie: nearer
    assert choose_threshold([0.3, 0.4, 0.5, 0.6], [0.8, 0.9, 0.85, 0.7]) == 0.4
    assert choose_threshold([0.3, 0.4, 0.5, 0.6], [0.9, 0.9, 0.9, 0.9]) == 0.5
    assert choose_threshold([0.3, 0.35, 0.4], [1.0, 1.0, 0.0]) == 0.35


def test_the_tuned_threshold_is_stored_and_used_by_evaluate_and_predict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_checkpoint, train_config
) -> None:
    names = [f"Abyssinian_{index}" for index in range(1, 11)]  # the first line is valid
    root = write_red_pets(tmp_path / "pets", names)
    path = write_checkpoint(tmp_path / "faint.pt", nn.Identity(), train_config(image_size=SIZE))
    for module in (petseg.train, petseg.evaluate, petseg.segmenter):
        monkeypatch.setattr(module, "model_from_checkpoint", lambda *_: FaintRed())
    scored = EvaluateConfig(path, root, num_workers=0, precision="fp32")
    before = evaluate_checkpoint(scored)
    assert before["threshold"] == 0.5 and before["dice"] == 0.0  # 0.4 < 0.5: nothing found

    valid = OxfordPetDataset(root, "valid", eval_transform(SIZE))
    chosen = tune_checkpoint_threshold(path, valid, 4, torch.device("cpu"), "fp32")
    # 0.30 and 0.35 find the pet exactly; of the two, 0.35 is nearer 0.5
    assert chosen == pytest.approx(0.35)
    stored = load_checkpoint(path)
    assert stored["threshold"] == pytest.approx(0.35)
    sweep = stored["threshold_sweep"]
    assert sweep["thresholds"] == list(THRESHOLD_CANDIDATES)
    assert sweep["dice"][:2] == [1.0, 1.0] and max(sweep["dice"][2:]) == 0.0

    after = evaluate_checkpoint(scored)
    assert after["threshold"] == pytest.approx(0.35) and after["dice"] == 1.0
    assert after["original_resolution"]["dice"] == 1.0
    forced = evaluate_checkpoint(replace(scored, threshold=0.5))
    assert forced["threshold"] == 0.5 and forced["dice"] == 0.0

    photo = root / "images" / f"{names[0]}.jpg"
    predict(PredictConfig(path, (photo,), save_dir=tmp_path / "out", num_workers=0))
    with Image.open(tmp_path / "out" / f"{names[0]}.png") as written:
        mask = np.asarray(written)
    assert (mask[:, : SIZE // 2] == 255).all() and (mask[:, SIZE // 2 :] == 0).all()
    # an explicit --threshold still wins over the stored one
    predict(PredictConfig(path, (photo,), save_dir=tmp_path / "out5", num_workers=0, threshold=0.5))
    with Image.open(tmp_path / "out5" / f"{names[0]}.png") as written:
        assert not np.asarray(written).any()


@pytest.mark.parametrize(
    ("scheduler", "warmup_epochs", "shown"),
    [("onecycle", None, None), ("onecycle", 4.0, "4 warmup epochs"),
     ("cosine", None, "1 warmup epochs"), ("constant", 2.0, None)],
)  # fmt: skip
def test_the_recipe_line_names_the_warmup_that_training_uses(
    scheduler: str, warmup_epochs: float | None, shown: str | None
) -> None:
    recipe = replace(PRESETS["unet"].recipe, scheduler=scheduler, warmup_epochs=warmup_epochs)
    line = describe_recipe(recipe)
    assert f"{scheduler} schedule" in line
    if shown is None:
        assert "warmup" not in line
    else:
        assert f"{scheduler} schedule, {shown}," in line


def test_onecycle_rises_over_the_chosen_warmup_epochs(
    tmp_path: Path, make_dataset, train_args
) -> None:
    data = make_dataset(tmp_path / "pets")  # 18 train images: 4 steps of 4 per epoch
    model_path = tmp_path / "m.pt"
    argv = train_args(data, model_path, "--epochs", "2", "--scheduler", "onecycle",
                      "--warmup_epochs", "1", "-lr", "0.01")  # fmt: skip
    assert cli.main(argv) == 0
    with history_path(model_path).open() as handle:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(handle)]
    # the first epoch's last step is the peak; OneCycleLR's 30% would have peaked at step 1
    assert rates[0] == pytest.approx(0.01)
    assert rates[1] == pytest.approx(
        learning_rate_at(7, base_lr=0.01, total_steps=8, scheduler="onecycle", warmup_steps=4)
    )


def test_training_follows_the_schedule_and_stores_a_tuned_threshold(
    tmp_path: Path, make_dataset, train_args
) -> None:
    data = make_dataset(tmp_path / "pets")  # 18 train images: 4 steps of 4 per epoch
    model_path = tmp_path / "m.pt"
    argv = train_args(data, model_path, "--epochs", "2", "--scheduler", "cosine", "--tune_threshold",
                      "--warmup_epochs", "1", "-lr", "0.01")  # fmt: skip
    assert cli.main(argv) == 0
    with history_path(model_path).open() as handle:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(handle)]
    # each row holds the rate of the epoch's last step: steps 3 and 7 of 8, warmup 4
    expected = [
        learning_rate_at(step, base_lr=0.01, total_steps=8, scheduler="cosine", warmup_steps=4)
        for step in (3, 7)
    ]
    assert rates == pytest.approx(expected)
    checkpoint = load_checkpoint(model_path)
    assert checkpoint["threshold"] in THRESHOLD_CANDIDATES
    assert checkpoint["threshold_sweep"]["split"] == "valid"
    assert checkpoint["config"]["recipe"]["scheduler"] == "cosine"
    assert "threshold_sweep" not in load_checkpoint(model_path.with_name("m.last.pt"))


@pytest.mark.parametrize("flags", [[], ["--tune_threshold", "--no-tune-threshold"]])
def test_without_tuning_the_threshold_stays_one_half(
    tmp_path: Path, flags: list[str], make_dataset, train_args
) -> None:
    data = make_dataset(tmp_path / "pets")
    model_path = tmp_path / "m.pt"
    assert cli.main(train_args(data, model_path, *flags)) == 0
    checkpoint = load_checkpoint(model_path)
    assert checkpoint["threshold"] == 0.5 and "threshold_sweep" not in checkpoint


R34 = PRESETS["resnet34_unet"].model
UNET = PRESETS["unet"].model


def test_width_flags_reach_the_model_config_in_both_spellings(flags_to_config) -> None:
    resnet = ("--model_type", "resnet34_unet")
    lean = flags_to_config(*resnet, "--decoder-widths", "64,32,16,8,8").model
    assert lean == ResNet34UNetConfig(
        decoder_widths=(64, 32, 16, 8, 8),
        stem="deep",
        activation="silu",
        drop_path=0.1,
        deep_supervision=False,
    )
    assert flags_to_config("--model-type", "resnet34_unet").model == R34
    assert flags_to_config(*resnet, "--stem", "classic").model.stem == "classic"
    for activation in ("relu", "silu"):
        chosen = flags_to_config(*resnet, "--activation", activation).model
        assert chosen.activation == activation
    unet = flags_to_config("--unet_widths", "8,16").model
    assert unet == UNetConfig(
        widths=(8, 16), upsample="nearest", activation="relu", deep_supervision=False
    )
    silu = flags_to_config("--unet_widths", "8,16", "--activation", "silu").model
    assert silu == replace(unet, activation="silu")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model_type", "resnet34_unet", "--decoder_widths", "64,32,16"], "needs 5 values"),
        (["--model_type", "unet", "--decoder_widths", "64,32,16,8,8"], "resnet34_unet only"),
        (["--model_type", "unet", "--stem", "classic"], "--stem applies to"),
    ],
)
def test_bad_architecture_flags_are_one_line_errors(tmp_path, capsys, flags, message) -> None:
    assert cli.main(["train", "--data_path", str(tmp_path), *flags]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--stem", "--activation"])
def test_an_unknown_stem_or_activation_is_a_usage_error(usage_error, flag: str) -> None:
    line = usage_error(["train", "--model_type", "resnet34_unet", flag, "wide"])
    assert f"{flag}: invalid choice: 'wide'" in line


def test_a_lean_decoder_is_stored_and_rebuilt_by_evaluate(
    tmp_path: Path, make_dataset, train_args
) -> None:
    data = make_dataset(tmp_path / "pets")
    model_path = tmp_path / "lean.pt"
    assert cli.main(as_resnet34_unet(train_args(data, model_path), "16,8,8,8,4")) == 0
    assert load_checkpoint(model_path)["config"]["model"] == {
        "model_type": "resnet34_unet",
        "decoder_widths": [16, 8, 8, 8, 4],
        "stem": "deep",
        "activation": "silu",
        "drop_path": 0.0,  # a 1-epoch run: the short-run recipe's
        "deep_supervision": False,
    }
    output = tmp_path / "scores.json"
    evaluate = ["evaluate", "--model_path", str(model_path), "--data_path", str(data)]
    assert cli.main([*evaluate, "--num_workers", "0", "--output", str(output)]) == 0
    assert output.exists()


def as_resnet34_unet(argv: list[str], decoder_widths: str = "16,16,8,8,8") -> list[str]:
    """The tiny UNet's train argv for a ResNet34-UNet with a lean decoder."""
    argv = list(argv)
    argv[argv.index("unet")] = "resnet34_unet"
    at = argv.index("--unet_widths")
    argv[at : at + 2] = ["--decoder_widths", decoder_widths]
    return argv


def evaluates(model_path: Path, data: Path) -> bool:
    scores = evaluate_checkpoint(EvaluateConfig(model_path, data, num_workers=0))
    return 0.0 <= scores["dice"] <= 1.0


@pytest.mark.parametrize("model_type", ["resnet34_unet", "unet"])
def test_deep_supervision_trains_saves_and_evaluates_through_the_cli(
    tmp_path: Path, model_type: str, make_dataset, train_args
) -> None:
    data = make_dataset(tmp_path / "pets")
    model_path = tmp_path / "ds.pt"
    argv = train_args(data, model_path, "--deep-supervision")
    if model_type == "resnet34_unet":
        argv = as_resnet34_unet(argv)
    assert cli.main(argv) == 0
    checkpoint = load_checkpoint(model_path)
    assert checkpoint["config"]["model"]["model_type"] == model_type
    assert checkpoint["config"]["model"]["deep_supervision"] is True
    assert any(key.startswith("aux_heads.") for key in checkpoint["state_dict"])
    assert evaluates(model_path, data)


def test_unet_upsample_defaults_to_nearest(flags_to_config) -> None:
    assert flags_to_config().model == UNET and UNET.upsample == "nearest"
    for spelling in ("--unet_upsample", "--unet-upsample"):
        assert flags_to_config(spelling, "transpose").model == replace(UNET, upsample="transpose")


def test_unet_upsample_is_stored_in_the_checkpoint_and_rebuilt_by_evaluate(
    tmp_path: Path, make_dataset, train_args
) -> None:
    data = make_dataset(tmp_path / "pets")
    model_path = tmp_path / "near.pt"
    assert cli.main(train_args(data, model_path, "--unet_upsample", "nearest")) == 0
    checkpoint = load_checkpoint(model_path)
    assert checkpoint["config"]["model"]["upsample"] == "nearest"
    assert not any(".up.weight" in key for key in checkpoint["state_dict"])  # no ConvTranspose2d
    assert evaluates(model_path, data)


def test_unet_upsample_on_the_resnet34_unet_or_unknown_is_refused(
    tmp_path: Path, make_dataset, train_args, fails_with, usage_error
) -> None:
    data = make_dataset(tmp_path / "pets")
    argv = as_resnet34_unet(train_args(data, tmp_path / "r.pt", "--unet_upsample", "nearest"))
    fails_with(argv, "--unet_upsample", "unet only")
    assert not (tmp_path / "r.pt").exists()
    assert "--unet_upsample" in usage_error(["train", "--unet_upsample", "bilinear"])


def test_drop_path_defaults_to_the_presets_rate_and_zero_turns_it_off(flags_to_config) -> None:
    resnet = ("--model_type", "resnet34_unet")
    assert flags_to_config(*resnet).model.drop_path == 0.1
    for spelling in ("--drop_path", "--drop-path"):
        assert flags_to_config(*resnet, spelling, "0.25").model.drop_path == 0.25
    off = flags_to_config(*resnet, "--drop_path", "0").model
    assert off.drop_path == 0.0
    assert build_model("resnet34_unet", **model_kwargs(off)).encoder.stages[-1][-1].drop_path == 0
    # the UNet has no residual blocks: no drop path in its config
    assert not hasattr(flags_to_config().model, "drop_path")


def test_drop_path_is_stored_in_the_checkpoint_and_rebuilt_by_evaluate(
    tmp_path: Path, make_dataset, train_args
) -> None:
    data = make_dataset(tmp_path / "pets")
    model_path = tmp_path / "dp.pt"
    assert cli.main(as_resnet34_unet(train_args(data, model_path, "--drop_path", "0.2"))) == 0
    assert load_checkpoint(model_path)["config"]["model"]["drop_path"] == 0.2
    assert evaluates(model_path, data)


def test_drop_path_on_the_unet_or_out_of_range_is_refused(
    tmp_path: Path, make_dataset, train_args, fails_with, usage_error
) -> None:
    data = make_dataset(tmp_path / "pets")
    fails_with(train_args(data, tmp_path / "u.pt", "--drop_path", "0.1"),
               "--drop_path", "resnet34_unet only")  # fmt: skip
    assert not (tmp_path / "u.pt").exists()
    for bad in ("1", "-0.1", "x"):
        assert "--drop_path" in usage_error(
            ["train", "--model_type", "resnet34_unet", "--drop_path", bad]
        )
