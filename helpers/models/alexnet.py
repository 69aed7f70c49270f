"""AlexNet (torchvision's single-stream ``alexnet``), written with plain Keras layers."""

from __future__ import annotations

import keras
from keras import layers

from helpers.models.common import IMAGENET_CLASSES, _inputs_for, _no_weights_argument

# Bokade et al. (2024) keep AlexNet's fc6/fc7 and replace fc8 (4096 ReLU units each, dropout
# 0.5 before each, as in the ImageNet AlexNet).
ALEXNET_FC_UNITS = 4096
ALEXNET_DROPOUT = 0.5


def AlexNet(include_top: bool = False, weights: None = None,
            input_shape: tuple[int, int, int] | None = None, classes: int = IMAGENET_CLASSES,
            name: str = "alexnet") -> keras.Model:
    """Single-stream AlexNet ("One weird trick", Krizhevsky 2014; torchvision's ``alexnet``).

    conv 11x11/4 64 (zero padding 2) -> max pool 3/2 -> conv 5x5 192 -> pool -> conv 3x3 384
    -> 3x3 256 -> 3x3 256 -> pool. At 224 or 227 px the features are 6x6x256. Top: dropout,
    FC 4096, dropout, FC 4096, FC ``classes`` (softmax). With the 1000-class top it has
    61,100,840 parameters, torchvision's count. This is *not* the two-stream network of
    Krizhevsky et al. (2012: 96/256/384/384/256 kernels split over two GPUs, about 60M
    parameters, local response normalisation), which no common library ships.
    """
    _no_weights_argument(weights, "AlexNet")
    inputs = _inputs_for(input_shape, (227, 227))
    x = layers.ZeroPadding2D(2, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 11, strides=4, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(192, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = _alexnet_fc(x, prefix="")
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _alexnet_fc(x: keras.KerasTensor, *, prefix: str, seed: int | None = None) -> keras.KerasTensor:
    """AlexNet's fc6/fc7: dropout, FC 4096 ReLU, dropout, FC 4096 ReLU."""
    for index in (6, 7):
        x = layers.Dropout(ALEXNET_DROPOUT, seed=seed, name=f"{prefix}drop{index}")(x)
        x = layers.Dense(ALEXNET_FC_UNITS, activation="relu", name=f"{prefix}fc{index}")(x)
    return x
