"""BatchNorm folding for inference: same logits, no BatchNorm left, the trained model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from petseg.inference import inference_model
from petseg.models import build_model
from petseg.models.fusion import fold_batchnorm

# case -> (model type, constructor arguments)
SMALL = {
    "unet": ("unet", {"widths": (8, 16, 32)}),
    "resnet34_unet": ("resnet34_unet", {"decoder_widths": (32, 16, 16, 8, 8)}),
    "resnet34_unet-7x7-stem-relu": (  # the lab report's and smp's model
        "resnet34_unet",
        {"decoder_widths": (32, 16, 16, 8, 8), "stem": "classic", "activation": "relu"},
    ),
}
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("single_thread")


def trained_like(name: str) -> nn.Module:
    """A small model whose BatchNorm layers hold non-trivial statistics and affine parameters,
    as after training (fresh ones are the identity map, which would hide a wrong fold)."""
    torch.manual_seed(0)
    model_type, kwargs = SMALL[name]
    model = build_model(model_type, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 48, 48) * 2 + 0.5)
    return model.eval()


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_folded_model_gives_the_same_logits_with_no_batchnorm_left(name: str) -> None:
    model = trained_like(name)
    folded = fold_batchnorm(model)
    images = torch.randn(2, 3, 45, 61)  # odd, non-square
    with torch.inference_mode():
        expected, got = model(images), folded(images)
    assert count_batchnorms(folded) == 0
    # the logits are far above the tolerance, so the comparison is not between near-zero maps
    assert expected.abs().max() > 100 * TOLERANCE
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_folding_leaves_the_trained_model_as_it_was(name: str) -> None:
    model = trained_like(name)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    batchnorms = count_batchnorms(model)
    fold_batchnorm(model.train())
    assert model.training
    assert count_batchnorms(model) == batchnorms > 0
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_inference_model_is_eval_channels_last_and_agrees() -> None:
    model = trained_like("resnet34_unet")
    prepared = inference_model(model)
    assert not prepared.training
    first_conv = next(m for m in prepared.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(prepared(images), model(images), atol=1e-4, rtol=1e-4)
