"""The training step: non-finite losses are skipped, then stop the run; autocast precision;
--compile; the epoch line's estimate of the time left."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from petseg.cli import main
from petseg.errors import PetsegError
from petseg.evaluate import evaluate_model
from petseg.models import build_model
from petseg.optimizers import AdamW
from petseg.train import (
    TrainStep,
    gradients_finite,
    time_left,
    time_training_steps,
    train_one_epoch,
)

CPU = torch.device("cpu")


def batches(count: int, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(2, 3, size, size, generator=generator),
         (torch.rand(2, 1, size, size, generator=generator) > 0.5).float())
        for _ in range(count)
    ]  # fmt: skip


def nan_on(bad_batches: set[int]):
    """BCE, except NaN on the given (1-based) batches."""
    calls = {"n": 0}
    bce = nn.BCEWithLogitsLoss()

    def loss_fn(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = bce(logits, masks)
        return loss * float("nan") if calls["n"] in bad_batches else loss

    return loss_fn


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("unet", widths=[4, 8])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        key: value.clone() for key, value in model.state_dict().items() if value.is_floating_point()
    }


def run(model, loss_fn, data, **kwargs) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = TrainStep(model, optimizer, loss_fn, CPU, progress=False, **kwargs)
    return train_one_epoch(step, data).mean_loss


def test_a_non_finite_step_is_skipped_and_leaves_the_weights_alone() -> None:
    model = tiny_model()
    before = snapshot(model)
    # Every batch NaN but fewer than the limit: no step taken, nothing learned, no error; the
    # epoch's loss is NaN (no finite step), which fit() counts as divergence.
    assert math.isnan(run(model, nan_on({1, 2, 3}), batches(3), max_nonfinite=5))
    after = snapshot(model)
    for key in before:
        if "running" not in key:  # BatchNorm statistics move in the forward pass
            assert torch.equal(before[key], after[key]), key


@pytest.mark.parametrize(
    ("model_type", "kwargs"),
    [("resnet34_unet", {"decoder_widths": [8, 8, 8, 8, 8]}), ("unet", {"widths": [4, 8, 16]})],
)
def test_deep_supervision_trains_the_auxiliary_heads_and_counts_their_loss(
    model_type: str, kwargs: dict[str, list[int]]
) -> None:
    torch.manual_seed(0)
    model = build_model(model_type, **kwargs, deep_supervision=True)
    before = snapshot(model)
    data = batches(2, size=32)
    loss = run(model, nn.BCEWithLogitsLoss(), data)
    after = snapshot(model)
    assert any(k.startswith("aux_heads") for k in before)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("aux_heads"))
    # the reported loss is the deep-supervised one: above the main head's BCE alone
    torch.manual_seed(0)
    plain = build_model(model_type, **kwargs)
    assert loss > run(plain, nn.BCEWithLogitsLoss(), data)


def test_training_goes_on_after_an_isolated_non_finite_step() -> None:
    model = tiny_model()
    before = snapshot(model)
    loss = run(model, nan_on({2}), batches(4), max_nonfinite=2)
    assert 0 < loss < 10  # the mean over the three finite batches
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])


def test_repeated_non_finite_steps_stop_training_with_a_clear_error() -> None:
    with pytest.raises(PetsegError, match="non-finite for 3 batches in a row"):
        run(tiny_model(), nan_on({1, 2, 3, 4}), batches(4), max_nonfinite=3)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_gradients_finite(bad: float) -> None:
    model = nn.Linear(2, 1)
    assert gradients_finite(model)  # no gradients yet
    model(torch.ones(1, 2)).sum().backward()
    assert gradients_finite(model)
    model.weight.grad[0, 0] = bad
    assert not gradients_finite(model)


def inf_gradient_on(model: nn.Module, bad_batches: set[int]) -> None:
    """The first weight's gradient becomes infinite on the given (1-based) backward passes,
    while the loss stays finite."""
    calls = {"n": 0}

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad.fill_(float("inf")) if calls["n"] in bad_batches else grad

    next(model.parameters()).register_hook(hook)


@pytest.mark.parametrize("clip_grad", [0.0, 0.5])
def test_a_step_with_finite_loss_but_non_finite_gradients_is_skipped(clip_grad: float) -> None:
    model = tiny_model()
    inf_gradient_on(model, {1, 2})
    before = snapshot(model)
    # Both steps skipped: their losses are finite but do not count (no step was taken).
    assert math.isnan(run(model, nn.BCEWithLogitsLoss(), batches(2), clip_grad=clip_grad))
    after = snapshot(model)
    for key in before:
        if "running" not in key:
            assert torch.equal(before[key], after[key]), key


@pytest.mark.parametrize(
    ("clip_grad", "optimizer"), [(0.0, "torch"), (0.5, "torch"), (0.5, "petseg")]
)
def test_the_steps_timed_for_an_estimate_skip_non_finite_gradients(
    clip_grad: float, optimizer: str
) -> None:
    """A half-size step can overflow where full-size ones do not; the steps timed before epoch 1
    must skip it as training does, or they leave NaN weights behind."""
    model = tiny_model()
    inf_gradient_on(model, {1, 2})
    before = snapshot(model)
    kind = AdamW if optimizer == "petseg" else torch.optim.AdamW
    step = TrainStep(model, kind(model.parameters(), lr=1e-2, fused=True), nn.BCEWithLogitsLoss(),
                     CPU, clip_grad=clip_grad, progress=False)  # fmt: skip
    time_training_steps(step, batches(2), steps=2)
    after = snapshot(model)
    for key in before:
        if "running" not in key:
            assert torch.equal(before[key], after[key]), key


def test_clipping_steps_exactly_as_clip_grad_norm_and_reads_the_norm_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = batches(3)
    clipped = tiny_model()
    norm_calls = {"n": 0}
    real_norm = torch.linalg.vector_norm

    def counting_norm(*args, **kwargs):
        norm_calls["n"] += 1
        return real_norm(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "vector_norm", counting_norm)
    run(clipped, nn.BCEWithLogitsLoss(), data, clip_grad=0.05)
    monkeypatch.undo()
    # clip_grad_norm_ takes one norm of the per-tensor norms a step; a second pass over the
    # gradients (gradients_finite) would add one norm per gradient.
    assert norm_calls["n"] <= 3 * 2

    torch.manual_seed(0)
    reference = tiny_model()
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    clipped_any = False
    for images, masks in data:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(reference(images), masks).backward()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
        clipped_any |= bool(norm > 0.05)
        optimizer.step()
    assert clipped_any  # the threshold is low enough to clip
    expected, actual = snapshot(reference), snapshot(clipped)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_bf16_autocast_trains_and_evaluates_on_cpu() -> None:
    model = tiny_model()
    loss = run(model, nn.BCEWithLogitsLoss(), batches(2), precision="bf16")
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    fp32 = evaluate_model(model, batches(2), CPU, progress=False).scores.summary()
    bf16 = evaluate_model(model, batches(2), CPU, progress=False, precision="bf16")
    assert bf16.scores.num_images == fp32["num_images"] == 4
    assert bf16.scores.summary()["dice"] == pytest.approx(fp32["dice"], abs=0.05)


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    """A 12-image copy of the official layout (10 train, 2 valid)."""
    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    names = [f"Breed_{index}" for index in range(12)]
    for index, name in enumerate(names):
        pixels = np.random.default_rng(index).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        trimap = np.full((40, 48), 2, dtype=np.uint8)
        trimap[10:30, 12:36] = 1
        Image.fromarray(pixels).save(root / "images" / f"{name}.jpg")
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
    (root / "annotations" / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in names))
    (root / "annotations" / "test.txt").write_text("".join(f"{n} 1 1 1\n" for n in names[:2]))
    return root


def compile_argv(pets: Path, model_path: Path) -> list[str]:
    return [
        "train", "--data_path", str(pets), "--model_path", str(model_path), "--model_type",
        "unet", "--unet_widths", "4,8", "--image_size", "32", "--batch_size", "4", "--epochs",
        "1", "--num_workers", "0", "--compile",
    ]  # fmt: skip


def assert_plain_state_dict(model_path: Path) -> None:
    keys = set(torch.load(model_path, weights_only=True)["state_dict"])
    assert keys == set(build_model("unet", widths=[4, 8]).state_dict())


def test_compile_trains_through_the_wrapper_and_saves_the_plain_state_dict(
    pets, tmp_path, monkeypatch
) -> None:
    # The eager backend traces like inductor but skips code generation (minutes on 2 cores).
    compiled = []
    real_compile = torch.compile

    def eager_compile(model: nn.Module) -> nn.Module:
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    model_path = tmp_path / "m.pt"
    assert main(compile_argv(pets, model_path)) == 0
    assert len(compiled) == 1
    assert_plain_state_dict(model_path)
    assert_plain_state_dict(model_path.with_name("m.last.pt"))


@pytest.mark.slow
def test_compile_with_inductor_trains_and_evaluates(pets, tmp_path) -> None:
    model_path = tmp_path / "m.pt"
    assert main(compile_argv(pets, model_path)) == 0
    assert_plain_state_dict(model_path)
    argv = ["evaluate", "--model_path", str(model_path), "--data_path", str(pets), "--compile"]
    assert main([*argv, "--num_workers", "0"]) == 0


@pytest.mark.parametrize(
    ("epoch_seconds", "epochs_left", "expected"),
    [
        ([10.0, 20.0], 3, ", about 45 s left"),
        ([100.0, 300.0], 3, ", about 10 min left"),
        ([0.1], 2, ", about 1 s left"),
        ([1477.5], 49, ", about 20.1 h left"),
        ([60.0], 90, ", about 1.5 h left"),
        ([60.0], 0, ""),
        ([], 5, ""),
    ],
)
def test_time_left_scales_the_mean_epoch_by_the_epochs_left(
    epoch_seconds: list[float], epochs_left: int, expected: str
) -> None:
    assert time_left(epoch_seconds, epochs_left) == expected


def test_each_epoch_line_but_the_last_estimates_the_time_left(pets, tmp_path, capsys) -> None:
    argv = compile_argv(pets, tmp_path / "m.pt")
    argv = [*argv[: argv.index("--epochs")], "--epochs", "2", "--num_workers", "0"]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "train loss" in line]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert lines[0].endswith(" s left") and "left" not in lines[1]


def test_a_resumed_part_of_an_epoch_is_not_timed_for_the_estimate(
    pets, tmp_path, capsys, monkeypatch, ctrl_c_at_poll
) -> None:
    model_path = tmp_path / "m.pt"
    argv = compile_argv(pets, model_path)
    argv = [*argv[: argv.index("--epochs")], "--epochs", "3", "--num_workers", "0"]

    # epoch 1 = 2 whole batches (10 images, batch 4) + 1 poll, so the 5th poll comes before
    # the 2nd batch of epoch 2
    monkeypatch.setattr("petseg.train.stop_requests_on_ctrl_c", ctrl_c_at_poll(5))
    assert main(argv) == 130
    saved = torch.load(model_path.with_name("m.last.pt"), weights_only=True)
    assert saved["epoch"] == 1 and saved["partial_epoch"]["batches"] == 1
    monkeypatch.undo()
    capsys.readouterr()
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "train loss" in line]
    # epoch 2 ran one batch short of whole: no estimate though epoch 3 is left
    assert [line.split()[1] for line in lines] == ["2/3", "3/3"]
    assert all("left" not in line for line in lines)


@pytest.mark.parametrize("with_scaler", [False, True])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 4.0])
def test_clip_grad_caps_the_norm_of_the_step(with_scaler: bool, fraction: float) -> None:
    """Plain SGD at rate 1 steps by minus the gradient, so the step is the (clipped) gradient;
    under a gradient scaler the clipping sees the unscaled gradient."""
    data = batches(1)
    loss_fn = nn.BCEWithLogitsLoss()

    def conv() -> nn.Module:
        torch.manual_seed(0)
        return nn.Conv2d(3, 1, kernel_size=3, padding=1)

    reference = conv()
    loss_fn(reference(data[0][0]), data[0][1]).backward()
    gradient = torch.cat([p.grad.flatten() for p in reference.parameters()])
    norm = float(gradient.norm())
    model = conv()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu") if with_scaler else None
    step = TrainStep(model, optimizer, loss_fn, CPU, scaler=scaler, clip_grad=fraction * norm,
                     progress=False)  # fmt: skip
    train_one_epoch(step, data)
    step = before - torch.cat([p.detach().flatten() for p in model.parameters()])
    # 0 = off; a cap above the norm leaves the gradient as it is; one below scales it down to it
    expected = gradient * min(1.0, fraction) if fraction > 0 else gradient
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-7)
    if fraction == 0.25:
        assert float(step.norm()) == pytest.approx(0.25 * norm, rel=1e-4)
