"""The valid values of every option with a fixed set of choices, in one torch-free module.

The command line offers these and the modules that implement them import them from here, so a
choice cannot be offered without being implemented (each module's tests run every choice).
"""

from __future__ import annotations

MODEL_TYPES = ("unet", "resnet34_unet")  # petseg.models.MODELS
LOSSES = ("bce", "dice", "bce_dice")  # petseg.losses
SCHEDULERS = ("constant", "cosine", "onecycle")  # petseg.schedules
OPTIMIZERS = ("adam", "adamw")  # petseg.optimizers.build_optimizer
AUGMENTS = ("lab", "flip", "strong")  # petseg.data.transforms
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # petseg.runtime.resolve_precision
DEVICES = ("auto", "cpu", "cuda")  # petseg.runtime.resolve_device
BACKENDS = ("torch", "onnxruntime")  # what runs the model in petseg predict
SPLITS = ("train", "valid", "test")  # petseg.data.oxford_pet
DIST_BACKENDS = ("auto", "nccl", "gloo")  # petseg.distributed, under torchrun
STEMS = ("deep", "classic")  # the ResNet34 encoder's stem (petseg.models.resnet)
ACTIVATIONS = ("relu", "silu")  # petseg.models.blocks
UPSAMPLES = ("nearest", "transpose")  # the UNet decoder's upsampling (petseg.models.blocks)
SHORT_RUN = ("auto", "on", "off")  # a preset's recipe for short runs (petseg.config.ShortRun)
