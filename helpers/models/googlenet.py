"""GoogLeNet / Inception v1 in torchvision's configuration, written with plain Keras layers."""

from __future__ import annotations

import keras
from keras import layers

from helpers.models.common import IMAGENET_CLASSES, _inputs_for, _no_weights_argument
from helpers.torchvision_weights import GOOGLENET_INCEPTIONS

GOOGLENET_DROPOUT = 0.2  # torchvision's GoogLeNet top (dropout 0.2 before the 1000-way FC)
GOOGLENET_BN_EPSILON = 0.001  # torchvision's BasicConv2d
GOOGLENET_BN_MOMENTUM = 0.9  # torch momentum 0.1 = Keras momentum 0.9


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int, name: str,
             strides: int = 1) -> keras.KerasTensor:
    """torchvision's BasicConv2d: conv (no bias) -> batch norm (eps 0.001) -> ReLU."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      name=name + "_conv")(x)
    x = layers.BatchNormalization(epsilon=GOOGLENET_BN_EPSILON, momentum=GOOGLENET_BN_MOMENTUM,
                                  name=name + "_bn")(x)
    return layers.Activation("relu", name=name + "_relu")(x)


def _inception(x: keras.KerasTensor, key: str, ch1: int, ch3red: int, ch3: int, ch5red: int,
               ch5: int, pool_proj: int) -> keras.KerasTensor:
    prefix = f"inception{key}_"
    branch1 = _conv_bn(x, ch1, 1, prefix + "branch1")
    branch2 = _conv_bn(_conv_bn(x, ch3red, 1, prefix + "branch2_0"), ch3, 3, prefix + "branch2_1")
    # torchvision uses a 3x3 convolution in the "5x5" branch (its documented deviation, kept for
    # its weights); the 6,624,904 parameters count depends on it.
    branch3 = _conv_bn(_conv_bn(x, ch5red, 1, prefix + "branch3_0"), ch5, 3, prefix + "branch3_1")
    pooled = layers.MaxPooling2D(3, strides=1, padding="same", name=prefix + "branch4_pool")(x)
    branch4 = _conv_bn(pooled, pool_proj, 1, prefix + "branch4_1")
    return layers.Concatenate(name=prefix + "concat")([branch1, branch2, branch3, branch4])


def GoogLeNet(include_top: bool = False, weights: None = None,
              input_shape: tuple[int, int, int] | None = None, classes: int = IMAGENET_CLASSES,
              name: str = "googlenet") -> keras.Model:
    """GoogLeNet / Inception v1 (Szegedy et al. 2014) in torchvision's configuration.

    Every convolution is followed by batch norm (eps 0.001) and ReLU; local response
    normalisation is omitted (batch norm replaces it) and there are no auxiliary classifiers;
    the "5x5" branch uses 3x3 kernels as torchvision does. Nine inception modules (3a, 3b,
    4a-4e, 5a, 5b) with the paper's filter numbers. Top: global average pooling, dropout 0.2,
    FC ``classes``: 6,624,904 learnable parameters with 1000 classes (torchvision's count; the
    paper's original with LRN and 5x5 kernels has about 6.8M).
    """
    _no_weights_argument(weights, "GoogLeNet")
    inputs = _inputs_for(input_shape, (224, 224))
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=GOOGLENET_BN_EPSILON, momentum=GOOGLENET_BN_MOMENTUM,
                                  name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool1")(x)
    x = _conv_bn(x, 64, 1, "conv2")
    x = _conv_bn(x, 192, 3, "conv3")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool2")(x)
    for spec in GOOGLENET_INCEPTIONS:
        x = _inception(x, *spec)
        if spec[0] == "3b":
            x = layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool3")(x)
        elif spec[0] == "4e":
            x = layers.MaxPooling2D(2, strides=2, padding="same", name="maxpool4")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avgpool")(x)
        x = layers.Dropout(GOOGLENET_DROPOUT, name="dropout")(x)
        x = layers.Dense(classes, activation="softmax", name="fc")(x)
    return keras.Model(inputs, x, name=name)
