"""Looking at built models: every nested layer, parameter counts, the architecture figure."""

from __future__ import annotations

import math
from pathlib import Path

import keras
from keras import layers

from helpers.models.registry import get_backbone


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


def parameter_summary(model: keras.Model) -> str:
    """``"parameters: 4,100,674 (trainable 4,066,562)"``: total and trainable weight counts."""
    trainable = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    return f"parameters: {model.count_params():,} (trainable {trainable:,})"


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
