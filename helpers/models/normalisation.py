"""Normalisation, the last preprocessing stage, as the model's first layer:
:class:`ImageNormalisation` and the registry of what it computes (:data:`NORMALISATIONS`)."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops

from helpers.models.registry import get_backbone

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
