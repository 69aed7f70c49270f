"""SqueezeNet 1.1, written with plain Keras layers (layer names of rcmalli/keras-squeezenet)."""

from __future__ import annotations

import keras
from keras import layers

from helpers.models.common import IMAGENET_CLASSES, _inputs_for, _no_weights_argument

# Dropout before conv10. Bokade et al. (2024) replace SqueezeNet's conv10 by a new 1x1 conv
# (see helpers.models.heads.paper001_head).
SQUEEZENET_DROPOUT = 0.5

# SqueezeNet 1.1 fire modules: (name, squeeze filters, expand filters), pools after 3 and 5.
SQUEEZENET_FIRES = ((2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128),
                    (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256))


def _fire(x: keras.KerasTensor, index: int, squeeze: int, expand: int) -> keras.KerasTensor:
    """Fire module: squeeze 1x1 -> (expand 1x1 | expand 3x3) concatenated, ReLU after each."""
    prefix = f"fire{index}_"
    x = layers.Conv2D(squeeze, 1, name=prefix + "squeeze1x1")(x)
    x = layers.Activation("relu", name=prefix + "relu_squeeze1x1")(x)
    left = layers.Conv2D(expand, 1, name=prefix + "expand1x1")(x)
    left = layers.Activation("relu", name=prefix + "relu_expand1x1")(left)
    right = layers.Conv2D(expand, 3, padding="same", name=prefix + "expand3x3")(x)
    right = layers.Activation("relu", name=prefix + "relu_expand3x3")(right)
    return layers.Concatenate(name=prefix + "concat")([left, right])


def SqueezeNet(include_top: bool = False, weights: None = None,
               input_shape: tuple[int, int, int] | None = None, classes: int = IMAGENET_CLASSES,
               name: str = "squeezenet") -> keras.Model:
    """SqueezeNet 1.1 (Iandola et al. 2016, the v1.1 of the authors' repository).

    conv1 3x3/2 64 -> pool -> fire2, fire3 -> pool -> fire4, fire5 -> pool -> fire6..fire9; top:
    dropout 0.5 (``drop9``), ``conv10`` 1x1 ``classes`` + ReLU, global average pooling, softmax.
    With the 1000-class top: 1,235,496 parameters (torchvision's ``squeezenet1_1``). Layer names
    are those of the Keras 2 port rcmalli/keras-squeezenet with "/" written "_" (Keras 3 forbids
    "/" in names): ``fire2/squeeze1x1`` is ``fire2_squeeze1x1`` here.
    """
    _no_weights_argument(weights, "SqueezeNet")
    inputs = _inputs_for(input_shape, (227, 227))
    x = layers.Conv2D(64, 3, strides=2, name="conv1")(inputs)
    x = layers.Activation("relu", name="relu_conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for index, squeeze, expand in SQUEEZENET_FIRES:
        x = _fire(x, index, squeeze, expand)
        if index in (3, 5):
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{index}")(x)
    if include_top:
        x = layers.Dropout(SQUEEZENET_DROPOUT, name="drop9")(x)
        x = layers.Conv2D(classes, 1, name="conv10")(x)
        x = layers.Activation("relu", name="relu_conv10")(x)
        x = layers.GlobalAveragePooling2D(name="pool10")(x)
        x = layers.Activation("softmax", name="loss")(x)
    return keras.Model(inputs, x, name=name)
