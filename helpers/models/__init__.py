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

The package's modules, lower ones first (each imports only those above it):

- ``common``: what the hand-written networks share (their input, ``IMAGENET_CLASSES``);
- ``alexnet``, ``squeezenet``, ``googlenet``: the three networks Keras lacks, with the
  signature of ``keras.applications`` constructors;
- ``registry``: :class:`Backbone`, ``BACKBONES``, :func:`get_backbone` and the ImageNet weights
  (file names, origins, Keras' cache, the download: :func:`imagenet_weights_path`);
- ``normalisation``: :class:`ImageNormalisation` and ``NORMALISATIONS``;
- ``backbones``: :func:`build_backbone` and weights loading (:func:`load_h5_weights_by_name`);
- ``summary``: :func:`all_layers`, parameter counts, :func:`architecture_figure`;
- ``heads``: ``HEADS`` (a head names no loss: the run's settings do);
- ``classifier``: :func:`build_classifier`, the freeze modes and :func:`set_freeze`;
- ``fusion``: paper 003's ResNet50 + AlexNet fusion, :func:`build_fusion`.

Every public name is re-exported here: use ``helpers.models.X``.
"""

from __future__ import annotations

from helpers import backend  # noqa: F401  (imports Keras quietly)
from helpers.models.alexnet import ALEXNET_DROPOUT, ALEXNET_FC_UNITS, AlexNet
from helpers.models.backbones import build_backbone, load_h5_weights_by_name
from helpers.models.classifier import (
    SCRATCH_BN_MOMENTUM,
    build_classifier,
    find_backbone,
    head_name,
    output_kind,
    parse_freeze,
    set_batch_norm_momentum,
    set_freeze,
)
from helpers.models.common import IMAGENET_CLASSES
from helpers.models.fusion import (
    ALEXNET_BLOCKS,
    FUSION_BN_MOMENTUM,
    FUSION_FC_UNITS,
    FUSION_FREEZE_MODES,
    FUSION_NAME,
    FUSION_REFINE_FILTERS,
    PATHWAY_STAGES,
    RESNET50_STAGES,
    build_fusion,
    fusion_min_input_size,
    fusion_model_name,
    pathway,
)
from helpers.models.googlenet import (
    GOOGLENET_BN_EPSILON,
    GOOGLENET_BN_MOMENTUM,
    GOOGLENET_DROPOUT,
    GoogLeNet,
)
from helpers.models.heads import (
    HEADS,
    OUTPUT_DTYPE,
    PAPER000_BN_MOMENTUM,
    PAPER000_DROPOUT,
    PAPER000_FC_UNITS,
    PAPER002_STACKS,
    PAPER003_DROPOUT,
    PAPER003_FC_UNITS,
    PAPER004_DROPOUT,
    PAPER004_FC_UNITS,
    paper000_head,
    paper001_head,
    paper002_head,
    paper003_head,
    paper004_head,
)
from helpers.models.normalisation import (
    CAFFE_MEAN_BGR,
    IMAGENET,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    NORMALISATIONS,
    ImageNormalisation,
    default_normalisation,
    describe_normalisation,
    input_normalisation,
)
from helpers.models.registry import (
    BACKBONES,
    DOWNLOAD_TIMEOUT_S,
    KERAS_WEIGHTS_URL,
    MOBILENETV2_FILE,
    PUBLISHED_PARAMETERS,
    SQUEEZENET_IMAGENET_FILE,
    SQUEEZENET_WEIGHTS_URL,
    WEIGHTS_ORIGINS,
    Backbone,
    cached_imagenet_weights,
    caffe_preprocess_input,
    describe_weights,
    get_backbone,
    imagenet_file_name,
    imagenet_weights_path,
    keras_models_dir,
    tf_preprocess_input,
    torch_preprocess_input,
)
from helpers.models.squeezenet import SQUEEZENET_DROPOUT, SQUEEZENET_FIRES, SqueezeNet
from helpers.models.summary import (
    all_layers,
    architecture_figure,
    count_parameters,
    parameter_summary,
)
from helpers.torchvision_weights import (
    GOOGLENET_INCEPTIONS,
    TORCHVISION_FILES,
    WeightsUnavailableError,
    default_models_dir,
    ensure_keras_weights,
)

__all__ = [
    "ALEXNET_BLOCKS", "ALEXNET_DROPOUT", "ALEXNET_FC_UNITS", "AlexNet", "BACKBONES", "Backbone",
    "CAFFE_MEAN_BGR", "DOWNLOAD_TIMEOUT_S", "FUSION_BN_MOMENTUM", "FUSION_FC_UNITS",
    "FUSION_FREEZE_MODES", "FUSION_NAME", "FUSION_REFINE_FILTERS", "GOOGLENET_BN_EPSILON",
    "GOOGLENET_BN_MOMENTUM", "GOOGLENET_DROPOUT", "GOOGLENET_INCEPTIONS", "GoogLeNet",
    "HEADS", "IMAGENET", "IMAGENET_CLASSES", "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB", "ImageNormalisation", "KERAS_WEIGHTS_URL", "MOBILENETV2_FILE",
    "NORMALISATIONS", "OUTPUT_DTYPE", "PAPER000_BN_MOMENTUM", "PAPER000_DROPOUT",
    "PAPER000_FC_UNITS", "PAPER002_STACKS", "PAPER003_DROPOUT", "PAPER003_FC_UNITS",
    "PAPER004_DROPOUT", "PAPER004_FC_UNITS", "PATHWAY_STAGES", "PUBLISHED_PARAMETERS",
    "RESNET50_STAGES", "SCRATCH_BN_MOMENTUM", "SQUEEZENET_DROPOUT", "SQUEEZENET_FIRES",
    "SQUEEZENET_IMAGENET_FILE", "SQUEEZENET_WEIGHTS_URL", "SqueezeNet", "TORCHVISION_FILES",
    "WEIGHTS_ORIGINS", "WeightsUnavailableError", "all_layers", "architecture_figure",
    "build_backbone", "build_classifier", "build_fusion", "cached_imagenet_weights",
    "caffe_preprocess_input", "count_parameters", "default_models_dir", "default_normalisation",
    "describe_normalisation", "describe_weights", "ensure_keras_weights", "find_backbone",
    "fusion_min_input_size", "fusion_model_name", "get_backbone", "head_name",
    "imagenet_file_name", "imagenet_weights_path", "input_normalisation", "keras_models_dir",
    "load_h5_weights_by_name", "output_kind", "paper000_head", "paper001_head", "paper002_head",
    "paper003_head", "paper004_head", "parameter_summary", "parse_freeze", "pathway",
    "set_batch_norm_momentum", "set_freeze", "tf_preprocess_input", "torch_preprocess_input",
]
