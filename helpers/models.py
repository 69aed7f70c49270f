"""Backbones, classification heads and ``build_classifier``.

One registry of backbones (``BACKBONES``): the ImageNet networks of ``keras.applications`` and
the three Keras lacks, written here with plain Keras layers (AlexNet, SqueezeNet 1.1, GoogLeNet);
and one registry of classification heads named after the paper they reproduce (``HEADS``). A
classifier is ``input -> backbone (nested model named after its registry key) -> head``.

Inputs are clean images in [0, 1] (what ``helpers.preprocessing`` presets produce). The last
stage of preprocessing, normalisation, is the model's first layer (:class:`ImageNormalisation`,
registry :data:`NORMALISATIONS`): with ImageNet weights the backbone's own convention (caffe
BGR-mean, torch mean/std, [-1, 1], or 0-255 into MobileNetV3's built-in rescaling), with random
weights the paper's normalisation. Input scaling so travels with the weights, and a saved
``.keras`` model takes the pipeline's images as they are; it cannot be fed wrongly.

Weights are always a parameter: ``None`` (random start), ``"imagenet"`` (Keras' own cache,
``$KERAS_HOME/models`` or ``~/.keras/models``, downloaded there on first use; offline, a missing
file raises :class:`WeightsUnavailableError` saying which file to put where; AlexNet and
GoogLeNet get torchvision's published weights, converted once, see
:mod:`helpers.torchvision_weights`) or a path to a ``.h5``/``.weights.h5`` file saved from the
same backbone. Every backbone uses its 224 px ImageNet file at any input size (MobileNetV2's
96-192 px variants, trained at those sizes, are not used).

Output contract: every classifier outputs class probabilities, either ``num_classes`` softmax
units or, for the heads of papers 002 and 004 on a two-class task, one sigmoid unit (the
probability of class 1) in a layer named ``<head>_sigmoid``; ``helpers.training.predict_proba``
turns the latter into two columns.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import layers, ops
from keras.applications import imagenet_utils

from helpers.torchvision_weights import (
    GOOGLENET_INCEPTIONS,
    TORCHVISION_FILES,
    WeightsUnavailableError,
    default_models_dir,
    ensure_keras_weights,
)

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
SQUEEZENET_WEIGHTS_URL = "https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/"
SQUEEZENET_IMAGENET_FILE = "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
DOWNLOAD_TIMEOUT_S = 20.0
IMAGENET_CLASSES = 1000

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

# Bokade et al. (2024) keep AlexNet's fc6/fc7 and replace fc8 (4096 ReLU units each, dropout
# 0.5 before each, as in the ImageNet AlexNet); SqueezeNet's conv10 is replaced by a new 1x1 conv.
ALEXNET_FC_UNITS = 4096
ALEXNET_DROPOUT = 0.5
SQUEEZENET_DROPOUT = 0.5
GOOGLENET_DROPOUT = 0.2  # torchvision's GoogLeNet top (dropout 0.2 before the 1000-way FC)
GOOGLENET_BN_EPSILON = 0.001  # torchvision's BasicConv2d
GOOGLENET_BN_MOMENTUM = 0.9  # torch momentum 0.1 = Keras momentum 0.9


@dataclass(frozen=True)
class Backbone:
    """One entry of ``BACKBONES``: how to build a network and feed it.

    ``imagenet_normalisation`` is the input convention its ImageNet weights were trained with (a
    key of :data:`NORMALISATIONS`); ``preprocess_input`` is ``keras.applications``' function for
    the same convention on 0-255 input (kept for comparison: the model does this itself).
    """

    name: str
    display_name: str
    constructor: Callable[..., keras.Model]
    preprocess_input: Callable
    default_input_size: tuple[int, int]
    min_input_size: int
    imagenet_files: tuple[str, ...]
    weights_base_url: str = ""  # folder URL Keras downloads ``imagenet_files`` from
    written_here: bool = False  # True for the networks of this module (not keras.applications)
    imagenet_normalisation: str = "tf"
    builtin_rescaling: bool = False  # the constructor's include_preprocessing (MobileNetV3)


# --------------------------------------------------------------------------------------------
# Normalisation: the model's first layer
# --------------------------------------------------------------------------------------------

IMAGENET = "imagenet"
"""The ``normalisation`` setting meaning "the backbone's own ImageNet convention"."""
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # torchvision / keras "torch" mode, on [0, 1]
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras "caffe" mode, on 0-255 BGR

NORMALISATIONS: dict[str, str] = {
    "caffe": "ImageNet 'caffe' convention: RGB to BGR on 0-255, minus the ImageNet channel means "
             "(103.939, 116.779, 123.68), not scaled",
    "torch": "ImageNet 'torch' convention: RGB in [0, 1] minus the channel means (0.485, 0.456, "
             "0.406), divided by the channel standard deviations (0.229, 0.224, 0.225)",
    "tf": "ImageNet 'tf' convention: [-1, 1] (x / 127.5 - 1 on 0-255)",
    "raw255": "0-255, into the network's own built-in rescaling layer (MobileNetV3)",
    "zero_mean": "per image: (x - mean) / standard deviation over all its pixels and channels "
                 "(paper 000, eq. 10)",
    "mean_normalisation": "per image: x minus its mean over all pixels and channels (paper 003)",
    "decimal_scaling": "per image: the 8-bit values divided by 10^j, the smallest power of ten "
                       "above their largest magnitude (paper 003's alternative)",
    "unit": "none: the clean image in [0, 1] as the preset prepared it",
}
"""Normalisation name -> what :class:`ImageNormalisation` computes from a clean image in [0, 1]."""


@keras.saving.register_keras_serializable(package="helpers")
class ImageNormalisation(layers.Layer):
    """The last preprocessing stage as the model's first layer: clean [0, 1] images in, the
    representation the backbone expects out (``mode``: a key of :data:`NORMALISATIONS`).

    Written with ``keras.ops`` only, so it runs and saves on every backend; a saved model
    reloads with it once ``helpers.models`` is imported.
    """

    def __init__(self, mode: str = "unit", **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {mode!r}; known: {', '.join(NORMALISATIONS)}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mode = self.mode
        if mode == "unit":
            return x
        if mode == "tf":
            return x * 2.0 - 1.0
        if mode == "raw255":
            return x * 255.0
        if mode == "caffe":
            mean = ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
            return ops.flip(x, axis=-1) * 255.0 - mean
        if mode == "torch":
            mean = ops.convert_to_tensor(IMAGENET_MEAN_RGB, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(IMAGENET_STD_RGB, dtype=self.compute_dtype)
            return (x - mean) / std
        axes = tuple(range(1, len(x.shape)))
        if mode == "decimal_scaling":
            values = x * 255.0
            peak = ops.max(ops.abs(values), axis=axes, keepdims=True)
            safe = ops.where(peak > 0, peak, ops.ones_like(peak))
            power = ops.floor(ops.log10(safe)) + 1.0
            return ops.where(peak > 0, values / ops.power(10.0, power), values)
        centred = x - ops.mean(x, axis=axes, keepdims=True)
        if mode == "mean_normalisation":
            return centred
        std = ops.std(x, axis=axes, keepdims=True)  # zero_mean
        return centred / ops.where(std > 0, std, ops.ones_like(std))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def input_normalisation(backbone: str, normalisation: str) -> str:
    """The concrete :data:`NORMALISATIONS` key: ``"imagenet"`` becomes the backbone's own."""
    if normalisation == IMAGENET:
        return get_backbone(backbone).imagenet_normalisation
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; known: {IMAGENET}, "
                         f"{', '.join(NORMALISATIONS)}")
    return normalisation


def default_normalisation(weights: str | Path | None) -> str:
    """``"imagenet"`` (the backbone's convention) for ImageNet or file weights, else ``"unit"``."""
    return IMAGENET if weights is not None else "unit"


def describe_normalisation(backbone: str, normalisation: str) -> str:
    """E.g. ``"caffe (ImageNet 'caffe' convention: ...)"`` for reports and run records."""
    parts = []
    for name in backbone.split("+"):
        mode = input_normalisation(name, normalisation)
        parts.append(f"{mode} ({NORMALISATIONS[mode]})" if "+" not in backbone
                     else f"{get_backbone(name).display_name} pathway: {mode}")
    return "; ".join(parts)


def torch_preprocess_input(x, data_format=None):
    """ImageNet "torch" preprocessing: RGB scaled to [0, 1], minus mean, over std."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="torch")


def tf_preprocess_input(x, data_format=None):
    """ImageNet "tf" preprocessing: 0-255 to [-1, 1]."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def caffe_preprocess_input(x, data_format=None):
    """ImageNet "caffe" preprocessing: RGB -> BGR, minus the ImageNet mean, not scaled."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="caffe")


# --------------------------------------------------------------------------------------------
# The three networks Keras lacks. Same signature as keras.applications constructors.
# --------------------------------------------------------------------------------------------


def _inputs_for(input_shape: tuple[int, int, int] | None,
                default: tuple[int, int]) -> keras.KerasTensor:
    return keras.Input(shape=tuple(input_shape) if input_shape else (*default, 3), name="input")


def _no_weights_argument(weights, name: str) -> None:
    if weights is not None:
        raise ValueError(f"{name}: the constructor builds random weights only; load weights with "
                         f"helpers.models.build_backbone(weights=...)")


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


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


MOBILENETV2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(
        "vgg16", "VGG16", keras.applications.VGG16,
        keras.applications.vgg16.preprocess_input, (224, 224), 32,
        ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "vgg16/", imagenet_normalisation="caffe",
    ),
    "vgg19": Backbone(
        "vgg19", "VGG19", keras.applications.VGG19,
        keras.applications.vgg19.preprocess_input, (224, 224), 32,
        ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "vgg19/", imagenet_normalisation="caffe",
    ),
    "resnet50": Backbone(
        "resnet50", "ResNet50", keras.applications.ResNet50,
        keras.applications.resnet50.preprocess_input, (224, 224), 32,
        ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "resnet/", imagenet_normalisation="caffe",
    ),
    "resnet50v2": Backbone(
        "resnet50v2", "ResNet50V2", keras.applications.ResNet50V2,
        keras.applications.resnet_v2.preprocess_input, (224, 224), 32,
        ("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "resnet/", imagenet_normalisation="tf",
    ),
    "mobilenetv2": Backbone(
        "mobilenetv2", "MobileNetV2", keras.applications.MobileNetV2,
        keras.applications.mobilenet_v2.preprocess_input, (224, 224), 32,
        (MOBILENETV2_FILE,), KERAS_WEIGHTS_URL + "mobilenet_v2/", imagenet_normalisation="tf",
    ),
    "mobilenetv3small": Backbone(
        "mobilenetv3small", "MobileNetV3Small", keras.applications.MobileNetV3Small,
        keras.applications.mobilenet_v3.preprocess_input, (224, 224), 32,
        ("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",),
        KERAS_WEIGHTS_URL + "mobilenet_v3/", imagenet_normalisation="raw255",
        builtin_rescaling=True,
    ),
    "mobilenetv3large": Backbone(
        "mobilenetv3large", "MobileNetV3Large", keras.applications.MobileNetV3Large,
        keras.applications.mobilenet_v3.preprocess_input, (224, 224), 32,
        ("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",),
        KERAS_WEIGHTS_URL + "mobilenet_v3/", imagenet_normalisation="raw255",
        builtin_rescaling=True,
    ),
    "densenet121": Backbone(
        "densenet121", "DenseNet121", keras.applications.DenseNet121,
        keras.applications.densenet.preprocess_input, (224, 224), 32,
        ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "densenet/", imagenet_normalisation="torch",
    ),
    "inceptionv3": Backbone(
        "inceptionv3", "InceptionV3", keras.applications.InceptionV3,
        keras.applications.inception_v3.preprocess_input, (299, 299), 75,
        ("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "inception_v3/", imagenet_normalisation="tf",
    ),
    # Minimum sizes of the three below are exact: the smallest input whose last pooling
    # still gets a full window (AlexNet 63, SqueezeNet 31); GoogLeNet pools with "same"
    # padding and works at any size, 32 is kept as for Keras' networks.
    # AlexNet and GoogLeNet: torchvision's ImageNet weights, converted (helpers.torchvision_weights).
    # GoogLeNet's are used with torchvision's transform_input, which turns torch-normalised input
    # into [-1, 1]: its convention is "tf".
    "alexnet": Backbone(
        "alexnet", "AlexNet", AlexNet, torch_preprocess_input, (227, 227), 63,
        (TORCHVISION_FILES["alexnet"].keras_file,), TORCHVISION_FILES["alexnet"].url_base,
        written_here=True, imagenet_normalisation="torch",
    ),
    "squeezenet": Backbone(
        "squeezenet", "SqueezeNet 1.1", SqueezeNet, caffe_preprocess_input, (227, 227), 31,
        (SQUEEZENET_IMAGENET_FILE,), SQUEEZENET_WEIGHTS_URL, written_here=True,
        imagenet_normalisation="caffe",
    ),
    "googlenet": Backbone(
        "googlenet", "GoogLeNet", GoogLeNet, tf_preprocess_input, (224, 224), 32,
        (TORCHVISION_FILES["googlenet"].keras_file,), TORCHVISION_FILES["googlenet"].url_base,
        written_here=True, imagenet_normalisation="tf",
    ),
}

# Published parameter counts with the 1000-class ImageNet top, learnable weights only (batch-
# norm moving statistics excluded, as torchvision counts). Sources: torchvision.models weights
# documentation ("num_params" of AlexNet_Weights.IMAGENET1K_V1, SqueezeNet1_1_Weights.
# IMAGENET1K_V1, GoogLeNet_Weights.IMAGENET1K_V1).
PUBLISHED_PARAMETERS: dict[str, int] = {
    "alexnet": 61_100_840,
    "squeezenet": 1_235_496,
    "googlenet": 6_624_904,
}


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------

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

# The loss each head's paper trained with, where it is not the cross-entropy matching the output.
HEAD_LOSSES: dict[str, str] = {"paper004": "mse"}


def _lookup(registry: dict, name: str, kind: str):
    if name not in registry:
        raise KeyError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def get_backbone(name: str) -> Backbone:
    """The ``BACKBONES`` entry for ``name`` (KeyError listing the known names)."""
    return _lookup(BACKBONES, name, "backbone")


WEIGHTS_ORIGINS: dict[str, str] = {
    "squeezenet": "rcmalli/keras-squeezenet port",
    "alexnet": "torchvision, converted",
    "googlenet": "torchvision, converted",
}
"""Where a backbone's ImageNet weights come from when it is not keras.applications."""


def describe_weights(weights: str | Path | None, backbone: str | None = None) -> str:
    """Human-readable weights origin for reports (``backbone`` makes "imagenet" more precise)."""
    if weights is None:
        return "random init (weights=None)"
    if backbone is not None and "+" in backbone:  # a fusion, e.g. FUSION_NAME
        return ", ".join(f"{describe_weights(weights, name)} ({get_backbone(name).display_name} pathway)"
                         for name in backbone.split("+"))
    if str(weights) == "imagenet":
        origin = WEIGHTS_ORIGINS.get(backbone or "")
        return f"imagenet ({origin})" if origin else "imagenet"
    return f"file: {Path(weights).name}"


def keras_models_dir() -> Path:
    """Keras' weights cache, read now: ``$KERAS_HOME/models`` or ``~/.keras/models``.

    Keras itself reads ``KERAS_HOME`` once at import; this function reads it at call time so
    that a notebook or test can point it elsewhere after ``import keras``.
    """
    return default_models_dir()


def imagenet_file_name(name: str, input_shape: tuple[int, int, int] | None = None) -> str:
    """The Keras cache file holding ``name``'s no-top ImageNet weights (the same at any size)."""
    return get_backbone(name).imagenet_files[0]


def cached_imagenet_weights(name: str) -> str | None:
    """The path of backbone ``name``'s ImageNet file when it is already in Keras' cache, else None
    (nothing is downloaded)."""
    try:
        return str(imagenet_weights_path(name, download=False))
    except WeightsUnavailableError:
        return None


def _download_imagenet_file(file_name: str, url: str, models_dir: Path) -> Path:
    """Keras' own download into ``models_dir``, with a socket timeout (no endless hang)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return Path(keras.utils.get_file(file_name, url, cache_subdir=models_dir.name,
                                         cache_dir=str(models_dir.parent)))
    finally:
        socket.setdefaulttimeout(previous)


def imagenet_weights_path(name: str, *, download: bool = True) -> Path:
    """Path of the cached ImageNet file of backbone ``name``, downloading it if it is missing.

    AlexNet and GoogLeNet: torchvision's file, downloaded and converted once
    (:func:`helpers.torchvision_weights.ensure_keras_weights`). Others: Keras' own file and
    download. Offline and not cached: :class:`WeightsUnavailableError` saying which file to put where.
    """
    backbone = get_backbone(name)
    models_dir = keras_models_dir()
    if name in TORCHVISION_FILES:
        return ensure_keras_weights(name, models_dir, download=download)
    file_name = imagenet_file_name(name)
    cached = models_dir / file_name
    if cached.is_file():
        return cached
    url = backbone.weights_base_url + file_name
    try:
        if not download:
            raise FileNotFoundError("not cached, and download=False")
        return _download_imagenet_file(file_name, url, models_dir)
    except Exception as error:  # noqa: BLE001 - any failure means "not available"
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone.display_name} are not available: expected the "
            f"file {file_name!r} at {cached} ($KERAS_HOME/models, or ~/.keras/models when "
            f"KERAS_HOME is unset; KERAS_HOME={os.environ.get('KERAS_HOME')!r}), and "
            f"downloading it from {url} failed ({type(error).__name__}: {error}). "
            f"Fix: run once with network access so that Keras downloads it, or copy the file "
            f"into $KERAS_HOME/models, or use weights=None for a random start."
        ) from error


def _check_input_shape(backbone: Backbone,
                       input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(side) for side in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{backbone.display_name}: input_shape must be (height, width, "
                         f"channels) with positive sizes, got {input_shape!r}")
    if min(shape[:2]) < backbone.min_input_size:
        raise ValueError(
            f"{backbone.display_name} needs inputs of at least {backbone.min_input_size}x"
            f"{backbone.min_input_size} pixels, got {shape[0]}x{shape[1]}")
    return shape


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def load_h5_weights_by_name(model: keras.Model, path: str | Path) -> int:
    """Load a Keras 2 (legacy layout) ``.h5`` weights file into ``model`` by layer name.

    The file's layer names are matched with "/" read as "_" (Keras 3 forbids "/" in names).
    Every layer of ``model`` that has weights must be in the file with arrays of the same
    shapes; layers only in the file are ignored (e.g. a classifier ``model`` lacks). Returns
    how many layers were loaded. Errors name the file and the layer.
    """
    import h5py  # installed with Keras

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 weights file ({error})") from error
    with handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise ValueError(f"{path}: not a Keras 2 legacy weights file (no 'layer_names' "
                             f"attribute); save Keras 3 weights as .weights.h5 instead")
        in_file: dict[str, list[np.ndarray]] = {}
        for layer_name in (_text(n) for n in group.attrs["layer_names"]):
            layer_group = group[layer_name]
            names = [_text(n) for n in layer_group.attrs.get("weight_names", [])]
            in_file[layer_name.replace("/", "_")] = [np.asarray(layer_group[n]) for n in names]
    loaded = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        arrays = in_file.get(layer.name)
        if arrays is None:
            raise ValueError(f"{path}: has no weights for layer {layer.name!r} of {model.name}")
        expected = [tuple(weight.shape) for weight in layer.weights]
        found = [array.shape for array in arrays]
        if expected != found:
            raise ValueError(f"{path}: layer {layer.name!r} of {model.name} has weight shapes "
                             f"{expected} but the file holds {found}")
        layer.set_weights(arrays)
        loaded += 1
    return loaded


def _is_legacy_h5(path: Path) -> bool:
    if path.name.endswith(".weights.h5"):
        return False
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            group = handle["model_weights"] if "model_weights" in handle else handle
            return "layer_names" in group.attrs
    except OSError:
        return False


def build_backbone(name: str, *, weights: str | Path | None,
                   input_shape: tuple[int, int, int],
                   builtin_rescaling: bool | None = None) -> keras.Model:
    """The backbone ``name`` without its ImageNet classifier, as a model named ``name``.

    ``builtin_rescaling`` (MobileNetV3 only): keep its own input rescaling layer; None keeps it
    exactly when the model is fed in its ImageNet convention (see :func:`build_classifier`).
    """
    backbone = get_backbone(name)
    shape = _check_input_shape(backbone, input_shape)
    weights_path: Path | None = None
    if weights is not None and str(weights) == "imagenet":
        weights_path = imagenet_weights_path(name)
    elif weights is not None:
        weights_path = Path(weights)
        if not weights_path.is_file():
            raise FileNotFoundError(f"weights file not found: {weights_path}")
        if weights_path.suffix != ".h5":
            raise ValueError(f"weights file {weights_path} must be a .h5 or .weights.h5 file")
    extra = {}
    if backbone.builtin_rescaling:
        extra["include_preprocessing"] = True if builtin_rescaling is None else bool(builtin_rescaling)
    model = backbone.constructor(include_top=False, weights=None, input_shape=shape, name=name, **extra)
    if weights_path is not None:
        try:
            if backbone.written_here and _is_legacy_h5(weights_path):
                load_h5_weights_by_name(model, weights_path)
            else:
                model.load_weights(str(weights_path))
        except Exception as error:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"could not load weights file {weights_path} into "
                             f"{backbone.display_name} {shape}: {error}") from error
    return model


def count_parameters(name: str, *, include_top: bool = True,
                     input_shape: tuple[int, int, int] | None = None) -> int:
    """Learnable parameters of backbone ``name`` (1000-class ImageNet top with ``include_top``).

    Batch-norm moving statistics are not counted (they are not learned), as in torchvision's
    published numbers. Builds the network once with random weights at its default input size.
    """
    backbone = get_backbone(name)
    shape = input_shape or (*backbone.default_input_size, 3)
    model = backbone.constructor(include_top=include_top, weights=None, input_shape=shape,
                                 name=name)
    return _learnable(model)


def _learnable(model: keras.Model) -> int:
    """Weights that are not batch-norm moving statistics, counted whatever ``trainable`` says."""
    moving = {id(weight) for layer in all_layers(model)
              if isinstance(layer, layers.BatchNormalization)
              for weight in (layer.moving_mean, layer.moving_variance)}
    return int(sum(math.prod(weight.shape) for weight in model.weights
                   if id(weight) not in moving))


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of ``model``, those of nested models included (depth first)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def parse_freeze(freeze: str | int) -> str | int:
    """``"base"``, ``"none"`` or an int N >= 0 (``"top-N"`` is read as N); ValueError otherwise."""
    if isinstance(freeze, bool) or not isinstance(freeze, (str, int)):
        raise ValueError(f"freeze must be 'base', 'none', an int or 'top-N', got {freeze!r}")
    if isinstance(freeze, str) and freeze.startswith("top-") and freeze[4:].isdigit():
        return int(freeze[4:])
    if isinstance(freeze, str) and freeze not in ("base", "none"):
        raise ValueError(f"freeze must be 'base', 'none', an int or 'top-N', got {freeze!r}")
    if isinstance(freeze, int) and freeze < 0:
        raise ValueError(f"freeze must be 'base', 'none', an int >= 0 or 'top-N', got {freeze!r}")
    return freeze


def _apply_freeze(model: keras.Model, freeze: str | int, display_name: str) -> None:
    """Set the backbone's trainable flags for ``freeze`` ('base', 'none', N or 'top-N').

    Keras 3 runs a BatchNormalization layer whose ``trainable`` is False in inference mode
    (moving statistics, no updates), whatever ``training`` the outer ``fit`` passes; a
    ``training=False`` given when the backbone is wired into the classifier does *not*
    survive ``fit``. So inference-mode batch norm is obtained through the flags: with
    ``"base"`` everything is frozen; with ``N`` the last N non-BatchNormalization layers are
    trainable and every BatchNormalization layer stays frozen (Keras' fine-tuning advice).
    """
    freeze = parse_freeze(freeze)
    if freeze in ("base", "none"):
        model.trainable = freeze == "none"
        for layer in model.layers:  # Keras does not reset an earlier top-N setting itself
            layer.trainable = freeze == "none"
        return
    candidates = [layer for layer in model.layers
                  if not isinstance(layer, (layers.BatchNormalization, layers.InputLayer))]
    if not 0 <= freeze <= len(candidates):
        raise ValueError(f"freeze={freeze}: {display_name} has {len(candidates)} layers that "
                         f"can be trained (batch norm excluded)")
    model.trainable = True
    unfrozen = {id(layer) for layer in candidates[len(candidates) - freeze:]}
    for layer in model.layers:
        layer.trainable = id(layer) in unfrozen


def find_backbone(classifier: keras.Model) -> keras.Model:
    """The nested backbone model of a ``build_classifier`` model (named after its registry key)."""
    for layer in classifier.layers:
        if isinstance(layer, keras.Model) and layer.name in BACKBONES:
            return layer
    raise ValueError(f"model {classifier.name} has no nested backbone named after one of "
                     f"{', '.join(sorted(BACKBONES))}")


def set_freeze(classifier: keras.Model, freeze: str | int) -> keras.Model:
    """Re-freeze a built classifier's backbone (as ``build_classifier(freeze=...)``); return it.

    The head stays trainable. Recompile afterwards: Keras reads the flags at compile time.
    """
    base = find_backbone(classifier)
    _apply_freeze(base, freeze, get_backbone(base.name).display_name)
    return classifier


def head_name(model: keras.Model) -> str | None:
    """The ``HEADS`` key of a ``build_classifier`` model (from its name), or None."""
    suffix = model.name.rsplit("_", 1)[-1]
    return suffix if suffix in HEADS else None


def output_kind(model: keras.Model) -> str:
    """``"sigmoid"`` for a one-unit output (probability of class 1), else ``"softmax"``."""
    return "sigmoid" if int(model.output_shape[-1]) == 1 else "softmax"


SCRATCH_BN_MOMENTUM = 0.9


def set_batch_norm_momentum(model: keras.Model, momentum: float) -> int:
    """Set the moving-average momentum of every batch-norm layer in ``model``; return how many.

    Keras' applications use 0.99, made for ImageNet-length training. A backbone trained from
    random weights (``weights=None``) for a few hundred steps would keep moving statistics close
    to their initial values, so its validation and test outputs would be near chance although
    training accuracy climbs. With 0.9 they settle within a few dozen steps.
    """
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            count += 1
        elif isinstance(layer, keras.Model):
            count += set_batch_norm_momentum(layer, momentum)
    return count


def build_classifier(backbone: str, *, head: str = "paper000",
                     weights: str | Path | None = None, freeze: str | int = "base",
                     input_shape: tuple[int, int, int] | None = None, num_classes: int = 2,
                     seed: int | None = None, normalisation: str | None = None) -> keras.Model:
    """``image -> normalisation -> backbone -> head``, named ``<backbone>_<head>``, outputting
    class probabilities. The input is a clean image in [0, 1].

    ``normalisation``: a key of :data:`NORMALISATIONS`, or ``"imagenet"`` for the backbone's
    own ImageNet convention; None means ``"imagenet"`` with weights and ``"unit"`` without
    (:func:`default_normalisation`). It is the layer ``normalisation`` of the model.

    ``freeze``: ``"base"`` (backbone frozen, its batch norm in inference mode), ``"none"``
    (everything trainable, batch norm statistics updated by ``fit``) or ``N`` / ``"top-N"``
    (exactly the backbone's last N non-batch-norm layers trainable; its batch norm stays
    frozen, so in inference mode, as Keras' fine-tuning guide advises). With ``weights=None``
    the backbone's batch-norm momentum is lowered to ``SCRATCH_BN_MOMENTUM`` (see
    ``set_batch_norm_momentum``). ``seed`` seeds every random initialiser (via
    ``keras.utils.set_random_seed``) and the head's dropout. The heads of papers 002 and 004
    end in one sigmoid unit for two classes (see the module docstring).
    """
    spec = get_backbone(backbone)
    head_fn = _lookup(HEADS, head, "head")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    freeze = parse_freeze(freeze)
    if input_shape is None:
        input_shape = (*spec.default_input_size, 3)
    mode = input_normalisation(backbone, normalisation or default_normalisation(weights))
    if seed is not None:
        keras.utils.set_random_seed(seed)
    base = build_backbone(backbone, weights=weights, input_shape=input_shape,
                          builtin_rescaling=mode == "raw255")
    if weights is None:
        set_batch_norm_momentum(base, SCRATCH_BN_MOMENTUM)
    _apply_freeze(base, freeze, spec.display_name)
    inputs = keras.Input(shape=tuple(base.input_shape[1:]), name="image")
    normalised = ImageNormalisation(mode, name="normalisation")(inputs)
    features = base(normalised)  # batch-norm mode follows the trainable flags (see _apply_freeze)
    outputs = head_fn(features, num_classes=num_classes, seed=seed, backbone=backbone)
    return keras.Model(inputs, outputs, name=f"{backbone}_{head}")


def parameter_summary(model: keras.Model) -> str:
    """``"parameters: 4,100,674 (trainable 4,066,562)"``: total and trainable weight counts."""
    trainable = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    return f"parameters: {model.count_params():,} (trainable {trainable:,})"


# --------------------------------------------------------------------------------------------
# The ResNet50 + AlexNet fusion (paper 003)
# --------------------------------------------------------------------------------------------

# Akhi et al. (seed 003) run "the initial convolutional and pooling layers of ResNet50 ...
# followed by the identity and convolutional blocks" in parallel with "the first few
# convolutional layers of AlexNet", concatenate the two sets of feature maps, refine them with
# "a series of convolutional layers", flatten, and classify with FC layers (dropout, batch norm)
# and a softmax. Where each pathway is cut, how many refining convolutions and how wide the FC
# layers are, the paper does not say: the defaults below (ResNet50 up to stage 3, AlexNet up to
# block 2, one 3x3 refining convolution of 256 filters, the paper003 head's 512/256 units and
# dropout 0.5) are ours. Where the two maps differ in size, the larger is resized (bilinear) to
# the smaller.

FUSION_NAME = "resnet50+alexnet"  # the backbone name of the fusion in helpers.studies
# ResNet50 stage -> the keras.applications layer that ends it (stage 1 is conv1 + pool).
RESNET50_STAGES: dict[int, str] = {2: "conv2_block3_out", 3: "conv3_block4_out",
                                   4: "conv4_block6_out", 5: "conv5_block3_out"}
# AlexNet block -> the layer of this module's AlexNet that ends it (blocks 1, 2, 5 end in pooling).
ALEXNET_BLOCKS: dict[int, str] = {1: "pool1", 2: "pool2", 3: "conv3", 4: "conv4", 5: "pool5"}
# Pathway name -> (word for a cut point, the cut points). One entry per network the fusion uses.
PATHWAY_STAGES: dict[str, tuple[str, dict[int, str]]] = {
    "resnet50": ("stage", RESNET50_STAGES),
    "alexnet": ("block", ALEXNET_BLOCKS),
}
FUSION_REFINE_FILTERS: tuple[int, ...] = (256,)
FUSION_FC_UNITS = PAPER003_FC_UNITS
FUSION_BN_MOMENTUM = PAPER000_BN_MOMENTUM
FUSION_FREEZE_MODES = ("none", "base")


def _pathway_layer(name: str, stage: int) -> tuple[str, str]:
    """(the pathway model's name, the layer it ends at); ValueError naming the valid choices."""
    if name not in PATHWAY_STAGES:
        raise ValueError(f"unknown fusion pathway {name!r}; valid: "
                         f"{', '.join(PATHWAY_STAGES)}")
    word, cuts = PATHWAY_STAGES[name]
    if isinstance(stage, bool) or stage not in cuts:
        raise ValueError(f"unknown {word} {stage!r} for the {name} pathway; valid: "
                         f"{', '.join(str(key) for key in cuts)}")
    return f"{name}_to_{word}{stage}", cuts[stage]


def pathway(name: str, *, stage: int, weights: str | Path | None,
            input_shape: tuple[int, int, int]) -> keras.Model:
    """Backbone ``name`` (from ``BACKBONES``) cut after ``stage``, e.g. ``resnet50_to_stage3``.

    ``stage`` is a key of ``RESNET50_STAGES`` (ResNet50) or ``ALEXNET_BLOCKS`` (AlexNet).
    ``weights`` as in ``build_backbone``.
    """
    model_name, layer_name = _pathway_layer(name, stage)
    base = build_backbone(name, weights=weights, input_shape=input_shape)
    return keras.Model(base.input, base.get_layer(layer_name).output, name=model_name)


def fusion_min_input_size(pathways: tuple[str, ...] = ("resnet50", "alexnet")) -> int:
    """Smallest input side every pathway accepts (AlexNet's 63 px for the default fusion)."""
    for name in pathways:
        if name not in PATHWAY_STAGES:
            raise ValueError(f"unknown fusion pathway {name!r}; valid: "
                             f"{', '.join(PATHWAY_STAGES)}")
    return max(get_backbone(name).min_input_size for name in pathways)


def fusion_model_name(pathways: tuple[str, ...]) -> str:
    """``fusion_resnet50_alexnet`` for two pathways, ``pathway_<name>`` for one."""
    if len(pathways) == 1:
        return f"pathway_{pathways[0]}"
    return "fusion_" + "_".join(pathways)


def _fusion_refine_and_head(x: keras.KerasTensor, *, num_classes: int,
                            seed: int | None) -> keras.KerasTensor:
    """(conv 3x3 -> BN -> ReLU) per refine entry, flatten, (FC -> BN -> ReLU -> dropout) x2, softmax."""
    for index, filters in enumerate(FUSION_REFINE_FILTERS, start=1):
        x = layers.Conv2D(filters, 3, padding="same", name=f"fusion_refine{index}_conv")(x)
        x = layers.BatchNormalization(momentum=FUSION_BN_MOMENTUM,
                                      name=f"fusion_refine{index}_bn")(x)
        x = layers.Activation("relu", name=f"fusion_refine{index}_relu")(x)
    x = layers.Flatten(name="fusion_flatten")(x)
    x = _dense_blocks(x, FUSION_FC_UNITS, prefix="fusion", seed=seed)  # paper 003's FC layers
    return _output(x, "fusion", num_classes)


def build_fusion(*, pathways: tuple[str, ...] = ("resnet50", "alexnet"), resnet_stage: int = 3,
                 alexnet_blocks: int = 2, weights: str | Path | None = None,
                 freeze: str = "none", input_shape: tuple[int, int, int] = (227, 227, 3),
                 num_classes: int = 3, seed: int | None = None,
                 normalisation: str | None = None) -> keras.Model:
    """Paper 003's fusion: ResNet50 and AlexNet pathways -> concat -> refine -> FC -> softmax.

    One input ``image`` feeds every pathway (the data's preprocessing is the preset's). With
    two pathways, a map larger than the smallest is resized to it (``<pathway>_resize``,
    bilinear) before ``fusion_concat``; with one pathway the model is that pathway's baseline
    (``pathway_<name>``) with exactly the same refinement and head, for a like-for-like
    comparison. Cut points: ``resnet_stage`` (``RESNET50_STAGES``), ``alexnet_blocks``
    (``ALEXNET_BLOCKS``).

    ``weights``: None (random start; pathway batch-norm momentum lowered to
    ``SCRATCH_BN_MOMENTUM``) or "imagenet" (Keras' ResNet50, torchvision's AlexNet). Each
    pathway has its own normalisation layer ``<pathway>_normalisation`` (``normalisation`` as
    in :func:`build_classifier`: with "imagenet" each pathway gets its own convention, caffe
    for ResNet50 and torch for AlexNet). ``freeze``: "none" (all trainable) or "base" (both pathways frozen,
    their batch norm in inference mode; refinement and head trainable). ``seed`` seeds every
    initialiser (``keras.utils.set_random_seed``) and the dropouts.
    """
    names = tuple(pathways)
    if not 1 <= len(names) <= 2 or len(set(names)) != len(names):
        raise ValueError(f"pathways must be one or two different names of "
                         f"{', '.join(PATHWAY_STAGES)}, got {pathways!r}")
    stages = {"resnet50": resnet_stage, "alexnet": alexnet_blocks}
    for name in names:
        _pathway_layer(name, stages.get(name, 0))
        _check_input_shape(get_backbone(name), input_shape)
    if freeze not in FUSION_FREEZE_MODES:
        raise ValueError(f"freeze must be one of {', '.join(FUSION_FREEZE_MODES)} for the "
                         f"fusion, got {freeze!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=tuple(int(side) for side in input_shape), name="image")
    maps = {}
    for name in names:
        model = pathway(name, stage=stages[name], input_shape=input_shape, weights=weights)
        if weights is None:
            set_batch_norm_momentum(model, SCRATCH_BN_MOMENTUM)
        _apply_freeze(model, freeze, get_backbone(name).display_name)
        mode = input_normalisation(name, normalisation or default_normalisation(weights))
        normalised = ImageNormalisation(mode, name=f"{name}_normalisation")(inputs)
        maps[name] = model(normalised)  # batch-norm mode follows the trainable flags
    if len(names) == 1:
        x = maps[names[0]]
    else:
        height = min(int(tensor.shape[1]) for tensor in maps.values())
        width = min(int(tensor.shape[2]) for tensor in maps.values())
        resized = []
        for name, tensor in maps.items():
            if tuple(tensor.shape[1:3]) != (height, width):
                tensor = layers.Resizing(height, width, interpolation="bilinear",
                                         name=f"{name}_resize")(tensor)
            resized.append(tensor)
        x = layers.Concatenate(name="fusion_concat")(resized)
    outputs = _fusion_refine_and_head(x, num_classes=num_classes, seed=seed)
    return keras.Model(inputs, outputs, name=fusion_model_name(names))


def architecture_figure(model: keras.Model, path: str | Path) -> Path | None:
    """Draw ``model`` to ``path`` with ``keras.utils.plot_model``; None without pydot/graphviz.

    The format follows the suffix (".png" when none). When it returns None no file is written;
    print ``model.summary()`` instead.
    """
    import shutil
    import tempfile

    from helpers.paths import atomic_path

    target = Path(path)
    with tempfile.TemporaryDirectory() as folder:
        drawn = Path(folder) / (target.name if target.suffix else target.name + ".png")
        try:
            keras.utils.plot_model(model, to_file=str(drawn), show_shapes=True,
                                   show_layer_names=True, expand_nested=False, dpi=96)
        except (ImportError, OSError):
            return None
        if not drawn.is_file():  # in IPython Keras prints the missing package instead of raising
            return None
        with atomic_path(target) as tmp:
            shutil.copyfile(drawn, tmp)
    return target
