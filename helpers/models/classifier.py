"""``build_classifier`` (image -> normalisation -> backbone -> head) and freezing: the freeze
modes, :func:`set_freeze`, batch-norm momentum, and finding the parts of a built classifier."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from helpers.models.backbones import build_backbone
from helpers.models.heads import HEADS
from helpers.models.normalisation import (
    ImageNormalisation,
    default_normalisation,
    input_normalisation,
)
from helpers.models.registry import BACKBONES, _lookup, get_backbone


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
    end in one sigmoid unit for two classes (see the ``helpers.models`` docstring).
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
