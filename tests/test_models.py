"""Model registry, output shapes, gradients, parameter counts, the encoders and the shared decoder."""

from __future__ import annotations

import copy
import itertools
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from petseg.errors import PetsegError
from petseg.models import MODELS, ResNet34UNet, UNet, build_model
from petseg.models.decoder import DecoderBlock, EncoderDecoder, UNetDecoder
from petseg.models.resnet import BasicBlock, ResNetEncoder
from petseg.models.unet import UNetEncoder

MODEL_NAMES = sorted(MODELS)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def double_conv_parameters(in_channels: int, out_channels: int) -> int:
    """Two bias-free 3x3 convs, each followed by a BatchNorm (weight + bias)."""
    return (
        9 * in_channels * out_channels + 2 * out_channels + 9 * out_channels**2 + 2 * out_channels
    )


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def default_models() -> dict[str, nn.Module]:
    """One default-sized instance per registered model, in eval mode (shared by shape tests)."""
    torch.manual_seed(0)
    return {name: MODELS[name]().eval() for name in MODEL_NAMES}


# --- registry ---------------------------------------------------------------------------------


def test_registry_holds_both_architectures() -> None:
    assert {"unet": UNet, "resnet34_unet": ResNet34UNet} == MODELS


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model_returns_an_instance_of_the_registered_class(name: str) -> None:
    kwargs = {"widths": (8, 16)} if name == "unet" else {}
    assert type(build_model(name, **kwargs)) is MODELS[name]


def test_build_model_unknown_name_raises_petseg_error_listing_valid_names() -> None:
    with pytest.raises(PetsegError) as info:
        build_model("resnet50_unet")
    message = str(info.value)
    assert "resnet50_unet" in message
    for name in MODELS:
        assert name in message
    assert "\n" not in message


def test_build_model_passes_keyword_arguments_to_the_constructor() -> None:
    model = build_model("unet", widths=[8, 16], num_classes=2, in_channels=1)
    assert isinstance(model, UNet)
    assert model.widths == (8, 16)
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 1, 12, 12))
    assert out.shape == (1, 2, 12, 12)


def test_build_model_passes_decoder_widths_to_resnet34_unet() -> None:
    model = build_model("resnet34_unet", decoder_widths=(16, 8, 8, 8, 4))
    assert isinstance(model, ResNet34UNet)
    assert model.head.in_channels == 4
    assert [block.conv[0].out_channels for block in model.decoder] == [16, 8, 8, 8, 4]


# --- shapes, values, gradients ----------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(64, 64), (67, 93), (100, 150), (333, 500)], ids=lambda s: f"{s[0]}x{s[1]}"
)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_is_one_logit_map_of_the_input_size(
    default_models: dict[str, nn.Module], name: str, size: tuple[int, int]
) -> None:
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = default_models[name](images)
    assert out.shape == (1, 1, *size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_items_are_independent_in_eval_mode(
    default_models: dict[str, nn.Module], name: str
) -> None:
    images = torch.randn(2, 3, 33, 47, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        both = default_models[name](images)
        second = default_models[name](images[1:])
    assert both.shape == (2, 1, 33, 47)
    torch.testing.assert_close(both[1:], second, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backward_gives_a_finite_gradient_to_every_trainable_parameter(name: str) -> None:
    torch.manual_seed(3)
    model = build_model(name).train()
    images = torch.randn(2, 3, 32, 32)
    targets = (torch.rand(2, 1, 32, 32) > 0.5).float()
    logits = model(images)
    assert torch.isfinite(logits).all()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    not_finite = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"non-finite gradient for {not_finite[:5]}"
    # The head sits right before the loss: its gradient cannot vanish.
    assert model.head.weight.grad.abs().sum() > 0


TINY = {"unet": {"widths": (4, 8, 16)}, "resnet34_unet": {"decoder_widths": (16, 8, 8, 8, 8)}}
# unet: encoder (4, 8, 16, 32), blocks 32 + 16, 16 + 8, 8 + 4; resnet34_unet: encoder
# (64, 64, 128, 256, 512), blocks 512 + 256, 16 + 128, 8 + 64, 8 + 64, then 8 with no skip
DECODER_INPUTS = {"unet": [48, 24, 12], "resnet34_unet": [768, 144, 72, 72, 8]}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_gives_the_logits_of_the_default_layout(name: str) -> None:
    torch.manual_seed(4)
    model = build_model(name, **TINY[name]).eval()
    images = torch.randn(2, 3, 37, 29)
    with torch.no_grad():
        expected = model(images)
        model.to(memory_format=torch.channels_last)
        got = model(images.contiguous(memory_format=torch.channels_last))
    assert got.shape == (2, 1, 37, 29)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_is_an_encoder_and_a_decoder_built_from_its_out_channels(name: str) -> None:
    model = build_model(name, **TINY[name]).eval()
    assert isinstance(model, EncoderDecoder)
    assert isinstance(model.decoder, UNetDecoder)
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 40, 56))
    # the encoder contract: maps from high to low resolution, out_channels their channels
    assert [f.shape[1] for f in features] == list(model.encoder.out_channels)
    assert all(a.shape[-1] > b.shape[-1] for a, b in itertools.pairwise(features))
    # each decoder block takes the previous output (the deepest feature first) plus its skip
    assert [block.conv[0].in_channels for block in model.decoder] == DECODER_INPUTS[name]
    assert model.head.in_channels == model.decoder.out_channels[-1]


def test_the_models_import_no_run_configuration() -> None:
    # the models own their defaults; petseg.config stays a layer above them
    code = "import sys, petseg.models; print('petseg.config' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# --- parameter counts -------------------------------------------------------------------------


def test_transpose_unet_has_the_milesial_parameter_count() -> None:
    n = count_parameters(UNet(upsample="transpose"))
    assert round(n / 1e6, 1) == 31.0
    assert n == 31_037_633


def test_default_unet_upsamples_nearest(default_models: dict[str, nn.Module]) -> None:
    model = default_models["unet"]
    assert model.upsample == "nearest"
    assert count_parameters(model) == 31_384_833  # counted in the nearest test below


def test_default_resnet34_unet_has_about_24_5_million_parameters(
    default_models: dict[str, nn.Module],
) -> None:
    assert round(count_parameters(default_models["resnet34_unet"]) / 1e6, 1) == 24.5


def test_small_unet_widths_give_the_hand_counted_parameters() -> None:
    # stem DoubleConv(3, 8)                      216 + 16 + 576 + 16    =   824
    # down DoubleConv(8, 16)                     1152 + 32 + 2304 + 32  =  3520
    # bottleneck DoubleConv(16, 32)              4608 + 64 + 9216 + 64  = 13952
    # up 1: ConvT(32->16, k2) 2048 + 16; DoubleConv(32, 16) 6976      =  9040
    # up 2: ConvT(16->8, k2) 512 + 8;   DoubleConv(16, 8) 1760        =  2280
    # head Conv1x1(8 -> 1) 8 + 1                                       =     9
    model = UNet(widths=(8, 16), upsample="transpose")
    assert model.widths == (8, 16)
    assert count_parameters(model) == 824 + 3520 + 13952 + 9040 + 2280 + 9 == 29_625
    assert double_conv_parameters(3, 8) == 824


def test_small_unet_widths_work_on_odd_sizes() -> None:
    model = UNet(widths=(4, 8, 16), upsample="transpose").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 37, 23))
    assert out.shape == (2, 1, 37, 23)
    assert torch.isfinite(out).all()


def test_nearest_upsampling_feeds_the_full_width_to_each_decoder_block() -> None:
    # as in the hand count above, but each decoder DoubleConv takes the upsampled map at its
    # full width, not halved by a ConvTranspose2d, plus the skip:
    # up 1: DoubleConv(32 + 16, 16) 6912 + 32 + 2304 + 32             =  9280
    # up 2: DoubleConv(16 + 8, 8)   1728 + 16 + 576 + 16              =  2336
    model = UNet(widths=(8, 16), upsample="nearest")
    assert model.upsample == "nearest"
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    assert count_parameters(model) == 824 + 3520 + 13952 + 9280 + 2336 + 9 == 29_921
    assert double_conv_parameters(48, 16) == 9280
    assert count_parameters(UNet(upsample="nearest")) == 31_384_833


def test_nearest_upsampling_unet_works_on_odd_sizes() -> None:
    model = UNet(widths=(4, 8, 16), upsample="nearest").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 37, 23))
    assert out.shape == (2, 1, 37, 23)
    assert torch.isfinite(out).all()


def test_unknown_unet_upsampling_raises_value_error() -> None:
    with pytest.raises(ValueError, match="upsample"):
        UNet(widths=(4, 8), upsample="bilinear")  # type: ignore[arg-type]


@pytest.mark.parametrize("widths", [(), (7, 16), (8, 15), (0, 8), (1,), (8, -2)])
def test_invalid_unet_widths_raise_value_error(widths: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="widths"):
        UNet(widths=widths)


@pytest.mark.parametrize("decoder_widths", [(256, 128, 64, 32), (256, 128, 64, 32, 16, 8)])
def test_resnet34_unet_rejects_a_wrong_number_of_decoder_widths(
    decoder_widths: tuple[int, ...],
) -> None:
    with pytest.raises(ValueError, match="decoder_widths"):
        ResNet34UNet(decoder_widths=decoder_widths)


def test_smaller_resnet34_unet_decoder_has_fewer_parameters_and_same_output_shape(
    default_models: dict[str, nn.Module],
) -> None:
    model = ResNet34UNet(decoder_widths=(16, 8, 8, 8, 4)).eval()
    assert count_parameters(model) < count_parameters(default_models["resnet34_unet"]) - 2_000_000
    with torch.no_grad():
        out = model(torch.randn(1, 3, 45, 71))
    assert out.shape == (1, 1, 45, 71)


# --- ResNet34 encoder -------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["deep", "classic"])
@pytest.mark.parametrize("size", [(64, 64), (65, 97), (33, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_resnet34_encoder_returns_five_features_at_strides_2_to_32(
    size: tuple[int, int], stem: str
) -> None:
    encoder = ResNetEncoder(stem=stem).eval()
    assert encoder.out_channels == (64, 64, 128, 256, 512)
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, *size))
    assert len(features) == 5
    for feature, channels, stride in zip(
        features, encoder.out_channels, (2, 4, 8, 16, 32), strict=True
    ):
        expected = (1, channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert tuple(feature.shape) == expected


def test_the_deep_stem_is_three_3x3_convs_striding_once() -> None:
    convs = [m for m in ResNetEncoder().stem if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 32), (32, 64)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    classic = [m for m in ResNetEncoder(stem="classic").stem if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in classic] == [((7, 7), (2, 2), 64)]


def test_the_deep_stem_has_the_hand_counted_extra_parameters() -> None:
    # deep: convs 3*32*9 + 32*32*9 + 32*64*9 = 28512, BatchNorms 2*(32 + 32 + 64) = 256;
    # classic: conv 3*64*49 = 9408, BatchNorm 128
    deep, classic = (count_parameters(ResNetEncoder(stem=s)) for s in ("deep", "classic"))
    assert deep - classic == (28512 + 256) - (9408 + 128) == 19232


def test_an_unknown_stem_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stem 'wide'"):
        ResNetEncoder(stem="wide")


@pytest.mark.parametrize(("activation", "kind"), [("relu", nn.ReLU), ("silu", nn.SiLU)])
def test_the_activation_is_used_in_the_encoder_and_the_decoder_alike(
    activation: str, kind: type[nn.Module]
) -> None:
    model = ResNet34UNet(decoder_widths=(16, 8, 8, 8, 8), activation=activation)
    for part in (model.encoder.stem, model.encoder.stages, model.decoder):
        activations = [m for m in part.modules() if isinstance(m, (nn.ReLU, nn.SiLU))]
        assert activations and all(type(m) is kind for m in activations)
    # 3 in the stem, one module per residual block (applied after its first conv and after
    # the sum) in the 16 blocks, 2 per decoder block in the 5 blocks
    assert sum(isinstance(m, kind) for m in model.modules()) == 3 + 16 + 10


@pytest.mark.parametrize(("activation", "kind"), [("relu", nn.ReLU), ("silu", nn.SiLU)])
def test_the_unet_uses_its_activation_in_every_double_conv(
    activation: str, kind: type[nn.Module]
) -> None:
    model = UNet(widths=(8, 16), activation=activation)
    activations = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.SiLU))]
    # 2 per DoubleConv: the stem, one level down, the bottleneck and two decoder blocks
    assert len(activations) == 2 * 5 and all(type(m) is kind for m in activations)
    assert UNet(widths=(8, 16)).activation == "relu"  # the classic UNet's when not chosen


def test_the_activation_changes_the_outputs_not_the_parameters() -> None:
    models = []
    for activation in ("relu", "silu"):
        torch.manual_seed(0)
        models.append(ResNet34UNet(decoder_widths=(16, 8, 8, 8, 8), activation=activation).eval())
    relu, silu = models
    for (name, a), (_, b) in zip(relu.state_dict().items(), silu.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(relu(images), silu(images))


def test_an_unknown_activation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        ResNet34UNet(activation="gelu")


def test_resnet34_encoder_has_the_resnet34_block_layout() -> None:
    encoder = ResNetEncoder()
    assert [len(stage) for stage in encoder.stages] == [3, 4, 6, 3]


def test_encoder_out_channels_follow_custom_widths() -> None:
    encoder = ResNetEncoder(layers=(1, 1), widths=(8, 16)).eval()
    assert encoder.out_channels == (8, 8, 16)
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 20, 30))
    assert [tuple(f.shape) for f in features] == [(1, 8, 10, 15), (1, 8, 5, 8), (1, 16, 3, 4)]


def test_encoder_rejects_layers_and_widths_of_different_lengths() -> None:
    with pytest.raises(ValueError):
        ResNetEncoder(layers=(3, 4, 6), widths=(64, 128, 256, 512))


# --- decoder ----------------------------------------------------------------------------


def test_transpose_decoder_block_pads_an_odd_size_to_the_skip() -> None:
    block = DecoderBlock(8, 4, 6, upsample="transpose").eval()
    with torch.no_grad():
        out = block(torch.randn(1, 8, 3, 5), torch.randn(1, 4, 7, 11))
    assert out.shape == (1, 6, 7, 11)


def test_nearest_decoder_block_without_skip_upsamples_to_the_given_size() -> None:
    block = DecoderBlock(8, 0, 4, upsample="nearest").eval()
    with torch.no_grad():
        out = block(torch.randn(1, 8, 3, 5), None, size=(9, 13))
    assert out.shape == (1, 4, 9, 13)


def test_decoder_block_needs_a_skip_or_a_size() -> None:
    block = DecoderBlock(8, 0, 4)
    with pytest.raises(ValueError):
        block(torch.randn(1, 8, 3, 5))


def test_decoder_block_rejects_an_unknown_upsample_mode() -> None:
    with pytest.raises(ValueError, match="bilinear"):
        DecoderBlock(8, 4, 4, upsample="bilinear")  # type: ignore[arg-type]


class PyramidEncoder(nn.Module):
    """A stand-in encoder: one stride-2 1x1 conv per level, so features at 1/2, 1/4, ..."""

    def __init__(self, out_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 1, stride=2)
            for c_in, c_out in zip((3, *out_channels[:-1]), out_channels, strict=True)
        )
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = [self.convs[0](images)]
        for conv in self.convs[1:]:
            features.append(conv(features[-1]))
        return features


@pytest.mark.parametrize("upsample", ["nearest", "transpose"])
def test_the_decoder_derives_its_blocks_from_any_encoders_out_channels(upsample: str) -> None:
    encoder = PyramidEncoder((6, 10, 14))
    # two skips (10 at 1/4, 6 at 1/2), then one block without a skip back to the input size
    decoder = UNetDecoder(encoder.out_channels, (12, 8, 4), upsample=upsample)  # type: ignore[arg-type]
    halve = upsample == "transpose"
    ups = [14 // 2 if halve else 14, 12 // 2 if halve else 12, 8 // 2 if halve else 8]
    assert [block.conv[0].in_channels for block in decoder] == [ups[0] + 10, ups[1] + 6, ups[2]]
    model = EncoderDecoder(encoder, decoder, num_classes=2, deep_supervision=True)
    images = torch.randn(2, 3, 37, 29)  # odd at every level
    logits, aux = model.train()(images)
    assert logits.shape == (2, 2, 37, 29)
    assert [tuple(a.shape) for a in aux] == [(2, 2, 10, 8), (2, 2, 19, 15)]  # at 1/4 and 1/2
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 2, 37, 29)


def test_the_decoder_widths_default_to_the_skip_channels() -> None:
    decoder = UNetDecoder((6, 10, 14))
    assert decoder.out_channels == (10, 6)
    assert [block.conv[-3].out_channels for block in decoder] == [10, 6]


@pytest.mark.parametrize("widths", [(8,), (8, 8, 8, 8)])
def test_the_decoder_refuses_widths_that_do_not_fit_the_skips(widths: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="need 2 or 3 values"):
        UNetDecoder((6, 10, 14), widths)


@pytest.mark.parametrize("size", [(64, 48), (37, 23)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_unet_encoder_returns_a_feature_per_width_and_the_bottleneck(size: tuple[int, int]) -> None:
    encoder = UNetEncoder(widths=(4, 8, 16)).eval()
    assert encoder.out_channels == (4, 8, 16, 32)
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, *size))
    shapes = [
        (1, c, size[0] // 2**level, size[1] // 2**level) for level, c in enumerate((4, 8, 16, 32))
    ]
    assert [tuple(f.shape) for f in features] == shapes


@pytest.mark.parametrize(
    ("model_type", "kwargs", "scales"),
    [
        # one head per decoder block but the last: at 1/16 .. 1/2 of the input for the
        # ResNet34-UNet, at 1/4 and 1/2 for a three-level UNet
        ("resnet34_unet", {"decoder_widths": (16, 16, 8, 8, 8)}, (16, 8, 4, 2)),
        ("unet", {"widths": (8, 16, 32)}, (4, 2)),
    ],
)
def test_deep_supervision_adds_auxiliary_outputs_in_training_only(
    model_type: str, kwargs: dict[str, tuple[int, ...]], scales: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = build_model(model_type, **kwargs, deep_supervision=True)
    torch.manual_seed(0)
    plain = build_model(model_type, **kwargs)
    # the heads are made last: every other layer starts from the weights it has without them
    for name, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    images = torch.randn(2, 3, 64, 48)
    logits, aux = model.train()(images)
    assert logits.shape == (2, 1, 64, 48)
    assert [tuple(a.shape) for a in aux] == [(2, 1, 64 // s, 48 // s) for s in scales]
    (logits.sum() + sum(a.sum() for a in aux)).backward()
    assert all(head.weight.grad is not None for head in model.aux_heads)
    # the training pass moved the BatchNorm statistics: give the plain model the same ones
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads")}
    )
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(images), plain(images))  # eval: the main head alone
    assert isinstance(plain.train()(images), torch.Tensor)  # without it: logits alone


def test_drop_path_rates_rise_linearly_from_the_first_block_to_the_last() -> None:
    encoder = ResNetEncoder(drop_path=0.3)
    rates = [block.drop_path for stage in encoder.stages for block in stage]
    assert len(rates) == 16  # ResNet34: 3 + 4 + 6 + 3 blocks
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    steps = [b - a for a, b in itertools.pairwise(rates)]
    assert all(step == pytest.approx(0.02) for step in steps)


def test_drop_path_skips_whole_residual_branches_in_training_only() -> None:
    torch.manual_seed(0)
    block = BasicBlock(8, 8, drop_path=0.5)
    nn.init.constant_(block.bn2.bias, 1.0)  # a residual branch that is never zero
    x = torch.randn(64, 8, 4, 4)
    with torch.no_grad():
        trained = block.train()(x)
        shortcut_only = torch.relu(x)  # a dropped branch leaves act(x + 0)
        dropped = [torch.equal(trained[i], shortcut_only[i]) for i in range(len(x))]
        assert 16 < sum(dropped) < 48  # about half of the 64 images, each whole or not at all
        without = copy.deepcopy(block)
        without.drop_path = 0.0
        # the kept branches are scaled by 1 / (1 - 0.5); training-mode BatchNorm uses the
        # batch's statistics, so the branch is the same with or without dropping
        twin = copy.deepcopy(without)  # its BatchNorm's running statistics move here
        branch = twin.bn2(twin.conv2(twin.act(twin.bn1(twin.conv1(x)))))
        kept = [i for i in range(len(x)) if not dropped[i]]
        assert torch.allclose(trained[kept], torch.relu(x + 2 * branch)[kept], atol=1e-5)
        # eval mode: no dropping and no rescaling, the same output as without drop path
        assert torch.equal(block.eval()(x), without.eval()(x))
        assert not torch.equal(block(x), shortcut_only)


def test_drop_path_keeps_the_parameters_and_the_eval_outputs() -> None:
    models = []
    for rate in (0.0, 0.2):
        torch.manual_seed(0)
        models.append(ResNet34UNet(decoder_widths=(16, 8, 8, 8, 8), drop_path=rate).eval())
    plain, dropped = models
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), dropped.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(images), dropped(images))


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_a_drop_path_outside_zero_to_one_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="drop_path must be in"):
        ResNetEncoder(drop_path=rate)
