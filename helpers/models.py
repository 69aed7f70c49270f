"""Backbones, classification heads and ``build_classifier``.

One registry of ImageNet backbones from ``keras.applications`` (``BACKBONES``) and one of
classification heads named after the paper they reproduce (``HEADS``). A classifier is
``input -> backbone (nested model named after its registry key) -> head -> softmax``.

Inputs are expected *already preprocessed* with ``BACKBONES[name].preprocess_input``; the
preprocessing is not baked into the model so that saved models stay plain Keras layers.

Weights are always a parameter: ``None`` (random start), ``"imagenet"`` (Keras' own cache,
``$KERAS_HOME/models`` or ``~/.keras/models``; a missing file offline raises
:class:`WeightsUnavailableError` saying how to fix it) or a path to a ``.h5``/``.weights.h5``
file saved from the same backbone.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import layers

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
DOWNLOAD_TIMEOUT_S = 20.0
MOBILENETV2_SIZES = (96, 128, 160, 192, 224)

# FC1/FC2 widths of the paper000 head. Mahmood et al. (2021) name the layers (GAP, BN, FC1,
# FC2, dropout 0.5, softmax) but give no unit counts; 1024 and 512 ReLU units is our choice
# (the usual widths of such transfer-learning heads), stated here and in the lesson. The head's
# batch norm uses momentum 0.9 (Keras' default 0.99 leaves its moving statistics near their
# start for the few hundred steps of a CPU run, so validation would see unnormalised features).
PAPER000_FC_UNITS = (1024, 512)
PAPER000_DROPOUT = 0.5
PAPER000_BN_MOMENTUM = 0.9


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in Keras' cache nor downloadable (offline)."""


@dataclass(frozen=True)
class Backbone:
    """One entry of ``BACKBONES``: how to build a network and feed it."""

    name: str
    display_name: str
    constructor: Callable[..., keras.Model]
    preprocess_input: Callable
    default_input_size: tuple[int, int]
    min_input_size: int
    imagenet_files: tuple[str, ...]
    weights_base_url: str = ""  # folder URL Keras downloads ``imagenet_files`` from


def _mobilenetv2_file(rows: int) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(
        "vgg16", "VGG16", keras.applications.VGG16,
        keras.applications.vgg16.preprocess_input, (224, 224), 32,
        ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "vgg16/",
    ),
    "vgg19": Backbone(
        "vgg19", "VGG19", keras.applications.VGG19,
        keras.applications.vgg19.preprocess_input, (224, 224), 32,
        ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "vgg19/",
    ),
    "resnet50": Backbone(
        "resnet50", "ResNet50", keras.applications.ResNet50,
        keras.applications.resnet50.preprocess_input, (224, 224), 32,
        ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "resnet/",
    ),
    "resnet50v2": Backbone(
        "resnet50v2", "ResNet50V2", keras.applications.ResNet50V2,
        keras.applications.resnet_v2.preprocess_input, (224, 224), 32,
        ("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "resnet/",
    ),
    "mobilenetv2": Backbone(
        "mobilenetv2", "MobileNetV2", keras.applications.MobileNetV2,
        keras.applications.mobilenet_v2.preprocess_input, (224, 224), 32,
        tuple(_mobilenetv2_file(rows) for rows in MOBILENETV2_SIZES),
        KERAS_WEIGHTS_URL + "mobilenet_v2/",
    ),
    "mobilenetv3small": Backbone(
        "mobilenetv3small", "MobileNetV3Small", keras.applications.MobileNetV3Small,
        keras.applications.mobilenet_v3.preprocess_input, (224, 224), 32,
        ("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",),
        KERAS_WEIGHTS_URL + "mobilenet_v3/",
    ),
    "mobilenetv3large": Backbone(
        "mobilenetv3large", "MobileNetV3Large", keras.applications.MobileNetV3Large,
        keras.applications.mobilenet_v3.preprocess_input, (224, 224), 32,
        ("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",),
        KERAS_WEIGHTS_URL + "mobilenet_v3/",
    ),
    "densenet121": Backbone(
        "densenet121", "DenseNet121", keras.applications.DenseNet121,
        keras.applications.densenet.preprocess_input, (224, 224), 32,
        ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "densenet/",
    ),
    "inceptionv3": Backbone(
        "inceptionv3", "InceptionV3", keras.applications.InceptionV3,
        keras.applications.inception_v3.preprocess_input, (299, 299), 75,
        ("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        KERAS_WEIGHTS_URL + "inception_v3/",
    ),
}


def paper000_head(features: keras.KerasTensor, *, num_classes: int,
                  seed: int | None = None) -> keras.KerasTensor:
    """Mahmood et al. (2021): GAP -> batch norm -> FC1 -> FC2 -> dropout 0.5 -> softmax."""
    x = layers.GlobalAveragePooling2D(name="paper000_gap")(features)
    x = layers.BatchNormalization(momentum=PAPER000_BN_MOMENTUM, name="paper000_bn")(x)
    for index, units in enumerate(PAPER000_FC_UNITS, start=1):
        x = layers.Dense(units, activation="relu", name=f"paper000_fc{index}")(x)
    x = layers.Dropout(PAPER000_DROPOUT, seed=seed, name="paper000_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="paper000_output")(x)


HEADS: dict[str, Callable[..., keras.KerasTensor]] = {
    "paper000": paper000_head,
}


def _lookup(registry: dict, name: str, kind: str):
    if name not in registry:
        raise KeyError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def get_backbone(name: str) -> Backbone:
    """The ``BACKBONES`` entry for ``name`` (KeyError listing the known names)."""
    return _lookup(BACKBONES, name, "backbone")


def describe_weights(weights: str | Path | None) -> str:
    """Human-readable weights origin for reports."""
    if weights is None:
        return "random init (weights=None)"
    if str(weights) == "imagenet":
        return "imagenet"
    return f"file: {Path(weights).name}"


def keras_models_dir() -> Path:
    """Keras' weights cache, read now: ``$KERAS_HOME/models`` or ``~/.keras/models``.

    Keras itself reads ``KERAS_HOME`` once at import; this function reads it at call time so
    that a notebook or test can point it elsewhere after ``import keras``.
    """
    home = os.environ.get("KERAS_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".keras"
    return base / "models"


def imagenet_file_name(name: str, input_shape: tuple[int, int, int]) -> str:
    """The Keras cache file holding ``name``'s no-top ImageNet weights for ``input_shape``.

    MobileNetV2 has one file per square size in 96/128/160/192/224; other sizes use 224.
    """
    backbone = get_backbone(name)
    if not backbone.imagenet_files:
        raise WeightsUnavailableError(f"{backbone.display_name} has no ImageNet weights in Keras")
    if name == "mobilenetv2":
        rows, cols = input_shape[0], input_shape[1]
        return _mobilenetv2_file(rows if rows == cols and rows in MOBILENETV2_SIZES else 224)
    return backbone.imagenet_files[0]


def _download_imagenet_file(file_name: str, url: str, models_dir: Path) -> Path:
    """Keras' own download into ``models_dir``, with a socket timeout (no endless hang)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return Path(keras.utils.get_file(file_name, url, cache_subdir=models_dir.name,
                                         cache_dir=str(models_dir.parent)))
    finally:
        socket.setdefaulttimeout(previous)


def _imagenet_weights_path(backbone: Backbone, input_shape: tuple[int, int, int]) -> Path:
    """Path of the cached ImageNet file, downloading it through Keras if it is missing."""
    file_name = imagenet_file_name(backbone.name, input_shape)
    models_dir = keras_models_dir()
    cached = models_dir / file_name
    if cached.is_file():
        return cached
    url = backbone.weights_base_url + file_name
    try:
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


def build_backbone(name: str, *, weights: str | Path | None,
                   input_shape: tuple[int, int, int]) -> keras.Model:
    """The backbone ``name`` without its ImageNet classifier, as a model named ``name``."""
    backbone = get_backbone(name)
    shape = _check_input_shape(backbone, input_shape)
    weights_path: Path | None = None
    if weights is not None and str(weights) == "imagenet":
        weights_path = _imagenet_weights_path(backbone, shape)
    elif weights is not None:
        weights_path = Path(weights)
        if not weights_path.is_file():
            raise FileNotFoundError(f"weights file not found: {weights_path}")
        if weights_path.suffix != ".h5":
            raise ValueError(f"weights file {weights_path} must be a .h5 or .weights.h5 file")
    model = backbone.constructor(include_top=False, weights=None, input_shape=shape, name=name)
    if weights_path is not None:
        try:
            model.load_weights(str(weights_path))
        except Exception as error:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"could not load weights file {weights_path} into "
                             f"{backbone.display_name} {shape}: {error}") from error
    return model


def _apply_freeze(model: keras.Model, freeze: str | int, display_name: str) -> None:
    """Set the backbone's trainable flags for ``freeze`` ('base', 'none' or an int N).

    Keras 3 runs a BatchNormalization layer whose ``trainable`` is False in inference mode
    (moving statistics, no updates), whatever ``training`` the outer ``fit`` passes; a
    ``training=False`` given when the backbone is wired into the classifier does *not*
    survive ``fit``. So inference-mode batch norm is obtained through the flags: with
    ``"base"`` everything is frozen; with ``N`` the last N non-BatchNormalization layers are
    trainable and every BatchNormalization layer stays frozen (Keras' fine-tuning advice).
    """
    if isinstance(freeze, bool) or not isinstance(freeze, (str, int)):
        raise ValueError(f"freeze must be 'base', 'none' or an int, got {freeze!r}")
    if freeze in ("base", "none"):
        model.trainable = freeze == "none"
        return
    if isinstance(freeze, str):
        raise ValueError(f"freeze must be 'base', 'none' or an int, got {freeze!r}")
    candidates = [layer for layer in model.layers
                  if not isinstance(layer, (layers.BatchNormalization, layers.InputLayer))]
    if not 0 <= freeze <= len(candidates):
        raise ValueError(f"freeze={freeze}: {display_name} has {len(candidates)} layers that "
                         f"can be trained (batch norm excluded)")
    model.trainable = True
    unfrozen = {id(layer) for layer in candidates[len(candidates) - freeze:]}
    for layer in model.layers:
        layer.trainable = id(layer) in unfrozen


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
                     seed: int | None = None) -> keras.Model:
    """Backbone + head classifier named ``<backbone>_<head>``, outputting class probabilities.

    ``freeze``: ``"base"`` (backbone frozen, its batch norm in inference mode), ``"none"``
    (everything trainable, batch norm statistics updated by ``fit``) or ``N`` (exactly the
    backbone's last N non-batch-norm layers trainable; its batch norm stays frozen, so in
    inference mode, as Keras' fine-tuning guide advises). With ``weights=None`` the backbone's
    batch-norm momentum is lowered to ``SCRATCH_BN_MOMENTUM`` (see ``set_batch_norm_momentum``).
    ``seed`` seeds every random initialiser
    (via ``keras.utils.set_random_seed``) and the head's dropout.
    """
    spec = get_backbone(backbone)
    head_fn = _lookup(HEADS, head, "head")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if input_shape is None:
        input_shape = (*spec.default_input_size, 3)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    base = build_backbone(backbone, weights=weights, input_shape=input_shape)
    if weights is None:
        set_batch_norm_momentum(base, SCRATCH_BN_MOMENTUM)
    _apply_freeze(base, freeze, spec.display_name)
    inputs = keras.Input(shape=tuple(base.input_shape[1:]), name="image")
    features = base(inputs)  # batch-norm mode follows the trainable flags (see _apply_freeze)
    outputs = head_fn(features, num_classes=num_classes, seed=seed)
    return keras.Model(inputs, outputs, name=f"{backbone}_{head}")


def parameter_summary(model: keras.Model) -> str:
    """``"parameters: 4,100,674 (trainable 4,066,562)"``: total and trainable weight counts."""
    trainable = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    return f"parameters: {model.count_params():,} (trainable {trainable:,})"
