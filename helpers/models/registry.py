"""The backbone registry (``BACKBONES``, :class:`Backbone`, :func:`get_backbone`) and its
ImageNet weights: file names, origins, Keras' cache and the download
(:func:`imagenet_weights_path`)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras.applications import imagenet_utils

from helpers.models.alexnet import AlexNet
from helpers.models.googlenet import GoogLeNet
from helpers.models.squeezenet import SqueezeNet
from helpers.torchvision_weights import (
    TORCHVISION_FILES,
    WeightsUnavailableError,
    default_models_dir,
    ensure_keras_weights,
)

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
SQUEEZENET_WEIGHTS_URL = "https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/"
SQUEEZENET_IMAGENET_FILE = "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
DOWNLOAD_TIMEOUT_S = 20.0


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
    written_here: bool = False  # True for the networks of this package (not keras.applications)
    imagenet_normalisation: str = "tf"
    builtin_rescaling: bool = False  # the constructor's include_preprocessing (MobileNetV3)


def torch_preprocess_input(x, data_format=None):
    """ImageNet "torch" preprocessing: RGB scaled to [0, 1], minus mean, over std."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="torch")


def tf_preprocess_input(x, data_format=None):
    """ImageNet "tf" preprocessing: 0-255 to [-1, 1]."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def caffe_preprocess_input(x, data_format=None):
    """ImageNet "caffe" preprocessing: RGB -> BGR, minus the ImageNet mean, not scaled."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="caffe")


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
