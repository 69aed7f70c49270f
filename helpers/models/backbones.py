"""Building a registered backbone without its ImageNet classifier (:func:`build_backbone`):
input-size check and weights loading, Keras 2 legacy ``.h5`` files read by layer name."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from helpers.models.registry import Backbone, get_backbone, imagenet_weights_path


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
