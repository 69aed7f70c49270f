"""What the hand-written networks (AlexNet, SqueezeNet, GoogLeNet) share: their input and the
check that their constructors build random weights only (same signature as
``keras.applications`` constructors)."""

from __future__ import annotations

import keras

IMAGENET_CLASSES = 1000


def _inputs_for(input_shape: tuple[int, int, int] | None,
                default: tuple[int, int]) -> keras.KerasTensor:
    return keras.Input(shape=tuple(input_shape) if input_shape else (*default, 3), name="input")


def _no_weights_argument(weights, name: str) -> None:
    if weights is not None:
        raise ValueError(f"{name}: the constructor builds random weights only; load weights with "
                         f"helpers.models.build_backbone(weights=...)")
