"""Classification heads named after the paper they reproduce (``HEADS``). A head names no loss:
the loss is a setting (the paper's recipe names it; see :mod:`helpers.plan`)."""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from helpers.models.alexnet import _alexnet_fc
from helpers.models.squeezenet import SQUEEZENET_DROPOUT

# FC1/FC2 widths of the paper000 head. Mahmood et al. (2021) name the layers (GAP, BN, FC1,
# FC2, dropout 0.5, softmax) but give no unit counts; 1024 and 512 ReLU units is our choice
# (the usual widths of such transfer-learning heads), stated here and in the lesson. The head's
# batch norm uses momentum 0.9 (Keras' default 0.99 leaves its moving statistics near their
# start for the few hundred steps of a CPU run, so validation would see unnormalised features).
PAPER000_FC_UNITS = (1024, 512)
PAPER000_DROPOUT = 0.5
PAPER000_BN_MOMENTUM = 0.9

# Kumar et al. (2022), seed 002, the Keras code of each model: the layers after the pretrained
# base, as ("dropout", rate) / ("dense", ReLU units), before the one-unit sigmoid output. How
# the base is pooled is not shown; we use global average pooling. Backbones the report did not
# use get the VGG16 stack (its first model).
PAPER002_STACKS: dict[str, tuple[tuple[str, float], ...]] = {
    "vgg": (("dropout", 0.4), ("dense", 384), ("dropout", 0.3), ("dense", 64), ("dropout", 0.2)),
    "mobilenet": (("dropout", 0.4), ("dense", 256), ("dropout", 0.3), ("dense", 32),
                  ("dropout", 0.2)),
    "resnet": (("dropout", 0.4), ("dense", 256), ("dense", 32), ("dense", 32), ("dropout", 0.2)),
}

# Akhi et al. (seed 003): "fully connected layers with dropout and batch normalisation" then a
# softmax over the classes; the widths and the rate are not stated: 512 and 256, 0.5 are ours.
PAPER003_FC_UNITS = (512, 256)
PAPER003_DROPOUT = 0.5

# Abu Al-Haija and Manasra (2020), seed 004: FC 1024, 40% dropout, ReLU, one sigmoid unit.
PAPER004_FC_UNITS = 1024
PAPER004_DROPOUT = 0.4


# Output layers compute in float32 also under the mixed_float16 policy (Keras' mixed-precision
# advice: a float16 softmax/sigmoid is numerically fragile); no change under float32.
OUTPUT_DTYPE = "float32"


def _output(x: keras.KerasTensor, head: str, num_classes: int) -> keras.KerasTensor:
    return layers.Dense(num_classes, activation="softmax", dtype=OUTPUT_DTYPE,
                        name=f"{head}_output")(x)


def _sigmoid_or_softmax(x: keras.KerasTensor, head: str, num_classes: int) -> keras.KerasTensor:
    """One sigmoid unit ``<head>_sigmoid`` for two classes; softmax ``<head>_output`` above."""
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype=OUTPUT_DTYPE, name=f"{head}_sigmoid")(x)
    return _output(x, head, num_classes)


def paper000_head(features: keras.KerasTensor, *, num_classes: int, seed: int | None = None,
                  backbone: str = "") -> keras.KerasTensor:
    """Mahmood et al. (2021): GAP -> batch norm -> FC1 -> FC2 -> dropout 0.5 -> softmax."""
    x = layers.GlobalAveragePooling2D(name="paper000_gap")(features)
    x = layers.BatchNormalization(momentum=PAPER000_BN_MOMENTUM, name="paper000_bn")(x)
    for index, units in enumerate(PAPER000_FC_UNITS, start=1):
        x = layers.Dense(units, activation="relu", name=f"paper000_fc{index}")(x)
    x = layers.Dropout(PAPER000_DROPOUT, seed=seed, name="paper000_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype=OUTPUT_DTYPE,
                        name="paper000_output")(x)


def paper001_head(features: keras.KerasTensor, *, num_classes: int, seed: int | None = None,
                  backbone: str = "") -> keras.KerasTensor:
    """Bokade et al. (2024): the network's own classifier with a new last layer.

    AlexNet: flatten -> fc6, fc7 (dropout 0.5, 4096 ReLU each) -> new FC -> softmax.
    SqueezeNet: dropout 0.5 -> new 1x1 conv with ``num_classes`` filters (conv10) -> ReLU ->
    global average pooling -> softmax. Other backbones: GAP -> new FC -> softmax.
    """
    if backbone == "alexnet":
        x = layers.Flatten(name="paper001_flatten")(features)
        x = _alexnet_fc(x, prefix="paper001_", seed=seed)
        return _output(x, "paper001", num_classes)
    if backbone == "squeezenet":
        x = layers.Dropout(SQUEEZENET_DROPOUT, seed=seed, name="paper001_drop9")(features)
        x = layers.Conv2D(num_classes, 1, name="paper001_conv10")(x)
        x = layers.Activation("relu", name="paper001_relu_conv10")(x)
        x = layers.GlobalAveragePooling2D(name="paper001_pool10")(x)
        return layers.Activation("softmax", dtype=OUTPUT_DTYPE, name="paper001_output")(x)
    x = layers.GlobalAveragePooling2D(name="paper001_gap")(features)
    return _output(x, "paper001", num_classes)


def _paper002_stack(backbone: str) -> tuple[tuple[str, float], ...]:
    for family in ("vgg", "mobilenet", "resnet"):
        if backbone.startswith(family):
            return PAPER002_STACKS[family]
    return PAPER002_STACKS["vgg"]


def paper002_head(features: keras.KerasTensor, *, num_classes: int, seed: int | None = None,
                  backbone: str = "") -> keras.KerasTensor:
    """Kumar et al. (2022): GAP -> the report's dropout/dense stack -> one sigmoid unit.

    The stack depends on the backbone family (``PAPER002_STACKS``: VGG, MobileNet, ResNet; others
    get VGG16's). More than two classes: a softmax layer replaces the sigmoid unit.
    """
    x = layers.GlobalAveragePooling2D(name="paper002_gap")(features)
    dense = dropout = 0
    for kind, value in _paper002_stack(backbone):
        if kind == "dropout":
            dropout += 1
            x = layers.Dropout(value, seed=seed, name=f"paper002_dropout{dropout}")(x)
        else:
            dense += 1
            x = layers.Dense(int(value), activation="relu", name=f"paper002_fc{dense}")(x)
    return _sigmoid_or_softmax(x, "paper002", num_classes)


def paper003_head(features: keras.KerasTensor, *, num_classes: int, seed: int | None = None,
                  backbone: str = "") -> keras.KerasTensor:
    """Akhi et al.: GAP -> (FC -> batch norm -> ReLU -> dropout) x2 -> softmax over the classes."""
    x = layers.GlobalAveragePooling2D(name="paper003_gap")(features)
    x = _dense_blocks(x, PAPER003_FC_UNITS, prefix="paper003", seed=seed)
    return _output(x, "paper003", num_classes)


def _dense_blocks(x: keras.KerasTensor, units: tuple[int, ...], *, prefix: str,
                  seed: int | None) -> keras.KerasTensor:
    """(FC -> batch norm -> ReLU -> dropout) per entry of ``units`` (paper 003's head and fusion),
    layers ``<prefix>_fc1``, ``<prefix>_bn1``, ``<prefix>_relu1``, ``<prefix>_dropout1``, ..."""
    for index, width in enumerate(units, start=1):
        x = layers.Dense(width, name=f"{prefix}_fc{index}")(x)
        x = layers.BatchNormalization(momentum=PAPER000_BN_MOMENTUM, name=f"{prefix}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{prefix}_relu{index}")(x)
        x = layers.Dropout(PAPER003_DROPOUT, seed=seed, name=f"{prefix}_dropout{index}")(x)
    return x


def paper004_head(features: keras.KerasTensor, *, num_classes: int, seed: int | None = None,
                  backbone: str = "") -> keras.KerasTensor:
    """Abu Al-Haija and Manasra (2020): GAP -> FC 1024 -> dropout 0.4 -> ReLU -> one sigmoid.

    Trained with MSE (``helpers.training`` picks it from the head). More than two classes: a
    softmax layer replaces the sigmoid unit.
    """
    x = layers.GlobalAveragePooling2D(name="paper004_gap")(features)
    x = layers.Dense(PAPER004_FC_UNITS, name="paper004_fc")(x)
    x = layers.Dropout(PAPER004_DROPOUT, seed=seed, name="paper004_dropout")(x)
    x = layers.Activation("relu", name="paper004_relu")(x)
    return _sigmoid_or_softmax(x, "paper004", num_classes)


HEADS: dict[str, Callable[..., keras.KerasTensor]] = {
    "paper000": paper000_head,
    "paper001": paper001_head,
    "paper002": paper002_head,
    "paper003": paper003_head,
    "paper004": paper004_head,
}
