"""Paper 003's ResNet50 + AlexNet fusion (:func:`build_fusion`) and its pathways."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from helpers.models.backbones import _check_input_shape, build_backbone
from helpers.models.classifier import (
    SCRATCH_BN_MOMENTUM,
    _apply_freeze,
    set_batch_norm_momentum,
)
from helpers.models.heads import PAPER000_BN_MOMENTUM, PAPER003_FC_UNITS, _dense_blocks, _output
from helpers.models.normalisation import (
    ImageNormalisation,
    default_normalisation,
    input_normalisation,
)
from helpers.models.registry import get_backbone

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
# AlexNet block -> the layer of helpers.models.alexnet's AlexNet that ends it (blocks 1, 2, 5
# end in pooling).
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
