"""Where a network looks: CAM, Grad-CAM, and a localisation score against the true lesions.

**CAM** (class activation mapping, Zhou et al. 2016; paper 000, section 4.3, eq. 11): for a network
whose head starts with global average pooling (GAP) over the last convolutional maps ``f_k``, the
map of class ``c`` is ``M_c(x, y) = sum_k w_k^c f_k(x, y)``, with ``w_k^c`` the weight from GAP
unit ``k`` to the class score. Paper 000's head has batch norm, two ReLU layers and dropout between
GAP and the softmax, so it has no single ``w_k^c``: :func:`class_activation_map` uses the head's
linearisation at each image, ``w_k^c = d y^c / d g_k`` (the gradient of the class score ``y^c``,
before softmax, with respect to the GAP features ``g``). For a GAP -> Dense head that is exactly
the Dense kernel's ``w_k^c`` (the textbook CAM); for a deeper head it is the weight the head gives
unit ``k`` at this image (batch norm in inference mode is affine; ReLUs contribute where active).
It is not the product of the Dense kernels, which would count units a ReLU switches off.

**Grad-CAM** (Selvaraju et al. 2017), any network and any spatial layer ``A`` (``K`` channels on an
``h x w`` grid): ``alpha_k^c = mean_ij d y^c / d A_k(i, j)``, map ``ReLU(sum_k alpha_k^c A_k)``.
At the GAP's input ``alpha_k^c = w_k^c / (h w)``, so Grad-CAM there equals ReLU(CAM) up to a factor
(tested). The class score ``y^c`` is the output layer's logit (before softmax; for one sigmoid unit
``z`` for class 1 and ``-z`` for class 0), so a saturated probability does not flatten the map.

The target layer (:func:`target_layer`) is by default the last layer with a 4-D (spatial) output:
for a ``build_classifier`` model the nested backbone's last feature map (SqueezeNet with paper 001's
head: the new conv10 after it); for the fusion (``build_fusion``) the refined fused map
``fusion_refine1_relu`` after the concatenation, which both pathways feed, so its gradients weigh
both (the map is at the smaller pathway's resolution). A layer inside the nested backbone may be
named (e.g. ``"block_16_project"``) where it is a cut point of the backbone's graph.

Only the gradient is backend-specific: :func:`_gradients_tensorflow` (``tf.GradientTape``),
:func:`_gradients_jax` (``jax.grad`` of a ``stateless_call``) and :func:`_gradients_torch`
(``torch.autograd.grad`` of the model's call), chosen by ``keras.backend.backend()``; the three give
the same maps for the same weights (tested). A backend without gradients (NumPy, OpenVINO) raises
NotImplementedError. The rest is ``keras.ops``.

**Localisation** (none of the papers measure it): on the test images whose lesion position is known
(:func:`lesion_masks`: the phantoms' true lesion masks, or a dataset's centre and radius as a disc,
brought into the model's input geometry with the preset), the **pointing game** (does the map's
maximum fall inside the lesion?) and the **mass inside** (the share of the map's sum inside the
lesion), with 95 % bootstrap intervals over patients, beside two maps that know nothing: a
**uniform** map and a **centred** Gaussian (:func:`localisation_scores`). With lesion-centred patches
the centred map is near perfect by construction: there, beating it is not to be expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from helpers import backend  # noqa: F401  (imports Keras quietly)
import keras
from keras import ops

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from helpers.pipeline import PreparedData
    from helpers.plan import RunSettings

OVERLAYS_FILE = "cam_overlays.png"
"""The overlays figure a run writes into its folder (:func:`explain_run`)."""

METHODS = ("grad-cam", "cam")
CLASS_EXPLAINED = "true class"
CENTRED_SIGMA = 0.25
"""The centred baseline: a Gaussian at the image centre with this standard deviation (of the side)."""
ROI_SCALE = 2.0
"""The patch scale the pipeline cuts lesion patches with (``prepare_arrays``' default)."""


# ---------------------------------------------------------------------------------------------
# The target layer: image -> feature map, and feature map -> class scores
# ---------------------------------------------------------------------------------------------

@dataclass
class CamTarget:
    """A network split at its target layer: ``to_map`` (image -> the layer's feature maps,
    ``(N, h, w, K)``) and ``from_map`` (those maps -> the class logits before softmax, ``(N, C)``,
    or ``(N, 1)`` for one sigmoid unit). Both share the network's layers (no copies)."""

    name: str
    to_map: keras.Model
    from_map: keras.Model

    @property
    def sigmoid(self) -> bool:
        """Does the network end in one sigmoid unit (the probability of class 1)?"""
        return int(self.from_map.output.shape[-1]) == 1


class _ClassLogits(keras.layers.Layer):
    """A Dense output layer's class scores before its activation, ``x @ kernel + bias``, with the
    Dense layer's own variables (tracked, so that a stateless call sees them)."""

    def __init__(self, dense: keras.layers.Dense, **kwargs: Any) -> None:
        super().__init__(name=f"{dense.name}_logits", dtype=dense.dtype_policy, **kwargs)
        self.dense = dense

    def call(self, x):
        logits = ops.matmul(x, self.dense.kernel)
        return logits if self.dense.bias is None else ops.add(logits, self.dense.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.dense.units)


def _activation_name(layer: keras.layers.Layer) -> str | None:
    """The name of a layer's activation function ("softmax", "linear", ...), or None.
    (Not ``keras.activations.serialize``, which imports TensorFlow under any backend.)"""
    activation = getattr(layer, "activation", None)
    return None if activation is None else getattr(activation, "__name__", type(activation).__name__)


def _logits(output_layer: keras.layers.Layer, x: keras.KerasTensor, model_name: str) -> keras.KerasTensor:
    """The class scores before the output layer's softmax/sigmoid, from that layer's input ``x``."""
    activation = _activation_name(output_layer)
    if isinstance(output_layer, keras.layers.Dense):
        if activation in ("softmax", "sigmoid"):
            return _ClassLogits(output_layer)(x)
        if activation == "linear":
            return output_layer(x)
    elif isinstance(output_layer, keras.layers.Activation) and activation in ("softmax", "sigmoid"):
        return x
    raise ValueError(f"model {model_name}: its output layer {output_layer.name!r} "
                     f"({type(output_layer).__name__}, activation {activation!r}) is not a softmax/sigmoid "
                     f"Dense or Activation layer, so its class scores cannot be read")


def _is_spatial(shape: Sequence[Any]) -> bool:
    return len(shape) == 4


def _candidates(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D output: top-level ones, then those inside nested models."""
    names = [layer.name for layer in model.layers[1:] if _is_spatial(layer.output.shape)]
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            names += [f"{layer.name}/{inner.name}" for inner in layer.layers[1:] if _is_spatial(inner.output.shape)]
    return names


def _find(model: keras.Model, name: str) -> tuple[keras.layers.Layer, keras.layers.Layer | None]:
    """``(top-level layer, layer inside it or None)`` named ``name`` (``"host/inner"`` or a plain
    name, looked up at the top level first); ValueError listing the candidates."""
    host_name, _, inner_name = name.rpartition("/")
    tops = {layer.name: layer for layer in model.layers}
    if not host_name and name in tops:
        return tops[name], None
    for host in model.layers:
        if isinstance(host, keras.Model) and (not host_name or host.name == host_name):
            inner = {layer.name: layer for layer in host.layers}.get(inner_name)
            if inner is not None:
                return host, inner
    raise ValueError(f"model {model.name} has no layer {name!r}; layers with a spatial (4-D) output: "
                     f"{', '.join(_candidates(model)) or 'none'}")


def _chain_split(model: keras.Model, host: keras.Model, inner: keras.layers.Layer | None
                 ) -> tuple[keras.Model, keras.Model]:
    """``(to_map, from_map)`` of a chain model (``build_classifier``: image -> normalisation ->
    backbone -> head) at the nested ``host``'s output, or at ``inner`` inside it, rebuilt from new
    inputs with the same layers (as :func:`helpers.training.split_at_backbone` does)."""
    position = model.layers.index(host)
    before, after = model.layers[1:position], model.layers[position + 1:]
    if inner is None:
        upper, lower = host, None
    else:
        upper = keras.Model(host.input, inner.output, name=f"{host.name}_to_{inner.name}")
        try:
            lower = keras.Model(inner.output, host.output, name=f"{host.name}_from_{inner.name}")
        except ValueError as error:
            raise ValueError(f"layer {host.name}/{inner.name} of model {model.name} is not a cut point of "
                             f"{host.name}: its output depends on paths around that layer (a residual or "
                             f"dense connection); choose a block's output ({error})") from None
    image = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    x = image
    for layer in before:
        x = layer(x)
    feature_map = upper(x)
    maps = keras.Input(shape=tuple(feature_map.shape[1:]), name="feature_map")
    y = maps if lower is None else lower(maps)
    for layer in after[:-1]:
        y = layer(y)
    logits = _logits(after[-1], y, model.name)
    return (keras.Model(image, feature_map, name=f"{model.name}_to_map"),
            keras.Model(maps, logits, name=f"{model.name}_from_map"))


def target_layer(model: keras.Model, name: str | None = None) -> CamTarget:
    """``model`` split at its Grad-CAM target layer: the last layer whose output is a 4-D spatial
    feature map (``name=None``), or the layer called ``name`` (a top-level layer, or a layer
    inside the nested backbone, ``"block_16_project"`` or ``"mobilenetv2/block_16_project"``).

    A top-level layer (e.g. the fusion's ``fusion_refine1_relu``) is cut in the model's own graph;
    the nested backbone, or a layer inside it, in a chain model (``build_classifier``), by
    rebuilding the chain around it. ValueError: no such layer (the candidates are listed), a layer
    whose output is not 4-D, a nested layer in a model that is not a chain, or one that is not a
    cut point of its network.
    """
    if name is None:
        spatial = [layer for layer in model.layers[1:-1] if _is_spatial(layer.output.shape)]
        if not spatial:
            raise ValueError(f"model {model.name} has no layer with a spatial (4-D) output: nothing to map")
        host, inner = spatial[-1], None
    else:
        host, inner = _find(model, name)
    found = host if inner is None else inner
    label = host.name if inner is None else f"{host.name}/{inner.name}"
    if not _is_spatial(found.output.shape):
        raise ValueError(f"layer {label} of model {model.name} has output shape {tuple(found.output.shape)}, "
                         f"not a spatial (N, h, w, channels) map; candidates: {', '.join(_candidates(model))}")
    output_layer = model.layers[-1]
    if isinstance(host, keras.Model):
        from helpers.models import find_backbone

        try:
            is_chain = find_backbone(model) is host
        except ValueError:
            is_chain = False
        if not is_chain:
            raise ValueError(f"layer {label} of model {model.name}: a nested model's maps can be cut only in a "
                             f"build_classifier model (a chain around its backbone); choose a top-level layer: "
                             f"{', '.join(n for n in _candidates(model) if '/' not in n)}")
        to_map, from_map = _chain_split(model, host, inner)
    else:
        logits = _logits(output_layer, output_layer.input, model.name)
        to_map = keras.Model(model.input, host.output, name=f"{model.name}_to_map")
        from_map = keras.Model(host.output, logits, name=f"{model.name}_from_map")
    return CamTarget(label, to_map, from_map)


# ---------------------------------------------------------------------------------------------
# Gradients: the only backend-specific part
# ---------------------------------------------------------------------------------------------

def _gradients_tensorflow(scores: keras.Model, inputs: np.ndarray, selector: np.ndarray) -> np.ndarray:
    """d sum(scores(inputs) * selector) / d inputs with TensorFlow's GradientTape."""
    import tensorflow as tf

    x = tf.convert_to_tensor(inputs, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(tf.cast(scores(x, training=False), tf.float32) * selector)
    return tape.gradient(total, x).numpy()


def _gradients_jax(scores: keras.Model, inputs: np.ndarray, selector: np.ndarray) -> np.ndarray:
    """d sum(scores(inputs) * selector) / d inputs with ``jax.grad`` of the model's stateless call."""
    import jax
    import jax.numpy as jnp

    trainable = [variable.value for variable in scores.trainable_variables]
    non_trainable = [variable.value for variable in scores.non_trainable_variables]

    def total(x):
        outputs, _ = scores.stateless_call(trainable, non_trainable, x, training=False)
        return jnp.sum(outputs.astype(jnp.float32) * selector)

    return np.asarray(jax.grad(total)(jnp.asarray(inputs, dtype=jnp.float32)))


def _gradients_torch(scores: keras.Model, inputs: np.ndarray, selector: np.ndarray) -> np.ndarray:
    """d sum(scores(inputs) * selector) / d inputs with ``torch.autograd.grad`` of the model's call."""
    import torch

    x = ops.convert_to_tensor(inputs, dtype="float32").detach().requires_grad_(True)  # on Keras' device
    with torch.enable_grad():
        outputs = scores(x, training=False)
        total = torch.sum(outputs.float() * torch.as_tensor(selector, dtype=torch.float32, device=outputs.device))
        (gradient,) = torch.autograd.grad(total, x)
    return gradient.detach().cpu().numpy()


GRADIENTS = {"tensorflow": _gradients_tensorflow, "jax": _gradients_jax, "torch": _gradients_torch}
"""Keras backend -> the function computing the gradient of the selected class scores."""


def score_gradients(scores: keras.Model, inputs: Any, selector: np.ndarray) -> np.ndarray:
    """The gradient of ``sum(scores(inputs) * selector)`` with respect to ``inputs`` (numpy): each
    image's gradient of its own selected class score (inference mode, so images are independent).
    NotImplementedError on a backend without a gradient function here (NumPy, OpenVINO: they compute no
    gradients)."""
    name = keras.backend.backend()
    if name not in GRADIENTS:
        raise NotImplementedError(f"CAM/Grad-CAM gradients are written for the {', '.join(GRADIENTS)} backends; "
                                  f"Keras runs on {name!r} here, which computes no gradients: set "
                                  f"KERAS_BACKEND to one of {', '.join(GRADIENTS)}")
    return GRADIENTS[name](scores, ops.convert_to_numpy(inputs), np.asarray(selector, dtype=np.float32))


def class_selector(class_index: int | Sequence[int] | np.ndarray, n: int, outputs: int) -> np.ndarray:
    """``(n, outputs)`` weights picking each image's class score: one-hot over softmax logits, or for
    one sigmoid logit ``z`` +1 (class 1: ``z``) or -1 (class 0: ``-z``, as ``p_0 = sigmoid(-z)``)."""
    given = np.asarray(class_index, dtype=np.int64)
    if given.ndim > 1 or given.size not in (1, n):
        raise ValueError(f"class_index must be one class or one per image ({n}), got shape {given.shape}")
    classes = np.broadcast_to(given.reshape(-1), (n,))
    top = 2 if outputs == 1 else outputs
    if classes.size and (classes.min() < 0 or classes.max() >= top):
        raise ValueError(f"class_index {sorted(set(classes.tolist()))} out of range for {top} classes")
    if outputs == 1:
        return np.where(classes == 1, 1.0, -1.0).astype(np.float32)[:, None]
    return np.eye(outputs, dtype=np.float32)[classes]


# ---------------------------------------------------------------------------------------------
# CAM and Grad-CAM
# ---------------------------------------------------------------------------------------------

def to_input_size(maps: Any, size: tuple[int, int]) -> np.ndarray:
    """Raw maps ``(N, h, w)`` -> ``(N, H, W)`` in [0, 1]: ReLU, bilinear resize to the input size
    (``keras.ops.image.resize``), divided by each map's maximum (a map without positive values
    stays all zero)."""
    maps = ops.relu(ops.cast(maps, "float32"))
    resized = ops.image.resize(ops.expand_dims(maps, -1), tuple(size), interpolation="bilinear")[..., 0]
    resized = ops.relu(resized)
    peak = ops.max(resized, axis=(1, 2), keepdims=True)
    scaled = resized / ops.where(peak > 0, peak, 1.0)  # an all-zero map stays zero
    return ops.convert_to_numpy(scaled).astype(np.float32)


def _batches(images: np.ndarray, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield start, np.asarray(images[start:start + batch_size], dtype=np.float32)


def _check_images(model: keras.Model, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.input_shape[1:]):
        raise ValueError(f"images of shape {images.shape} do not fit model {model.name}'s input "
                         f"(N, {', '.join(str(side) for side in model.input_shape[1:])})")
    return images


def grad_cam(model: keras.Model, images: np.ndarray, class_index: int | Sequence[int] | np.ndarray, *,
             layer: str | None = None, target: CamTarget | None = None, batch_size: int = 32,
             raw: bool = False) -> np.ndarray:
    """Grad-CAM maps ``(N, H, W)`` in [0, 1] at the input size (see the module docstring): for each
    image the map of its class (``class_index``: one int, or one per image).

    ``layer``: the target layer's name (default: :func:`target_layer`'s choice); ``target``: a
    :class:`CamTarget` already built (reused across calls). ``raw=True`` returns
    ``sum_k alpha_k A_k`` at the layer's resolution, before ReLU, resizing and scaling.
    """
    images = _check_images(model, images)
    target = target or target_layer(model, layer)
    selector = class_selector(class_index, len(images), int(target.from_map.output.shape[-1]))
    parts = []
    for start, x in _batches(images, batch_size):
        feature_maps = target.to_map(x, training=False)
        gradients = score_gradients(target.from_map, feature_maps, selector[start:start + len(x)])
        weights = ops.mean(gradients, axis=(1, 2))                      # alpha_k: (N, K)
        cam = ops.einsum("nhwk,nk->nhw", ops.cast(feature_maps, "float32"), weights)
        parts.append(ops.convert_to_numpy(cam) if raw else to_input_size(cam, images.shape[1:3]))
    return np.concatenate(parts).astype(np.float32)


def _gap_layer(model: keras.Model) -> tuple[int, keras.layers.Layer]:
    for position in range(len(model.layers) - 1, 0, -1):
        if isinstance(model.layers[position], keras.layers.GlobalAveragePooling2D):
            return position, model.layers[position]
    raise ValueError(f"model {model.name} has no global average pooling layer: CAM needs one (the heads of "
                     f"papers 000-004 have it, AlexNet's paper001 head and the fusion do not); use grad_cam")


def class_activation_map(model: keras.Model, images: np.ndarray, class_index: int | Sequence[int] | np.ndarray,
                         *, batch_size: int = 32, raw: bool = False) -> np.ndarray:
    """CAM as paper 000 defines it (eq. 11; see the module docstring): ``sum_k w_k^c f_k(x, y)`` over
    the maps ``f_k`` that the head's global average pooling pools, ``w_k^c = d y^c / d g_k`` (the
    Dense kernel itself for a GAP -> Dense head; the head's linearisation at the image otherwise).

    Returns ``(N, H, W)`` in [0, 1] at the input size (ReLU, bilinear resize, divided by the maximum:
    what :func:`grad_cam` returns), or with ``raw=True`` eq. 11 itself, ``(N, h, w)`` at the maps'
    resolution with its negative values. ValueError: a model without GAP in a chain after its maps.
    """
    images = _check_images(model, images)
    position, gap = _gap_layer(model)
    source = model.layers[position - 1]
    target = target_layer(model, source.name)
    features = keras.Input(shape=tuple(gap.output.shape[1:]), name="gap_features")
    x = features
    for layer in model.layers[position + 1:-1]:
        x = layer(x)
    head = keras.Model(features, _logits(model.layers[-1], x, model.name), name=f"{model.name}_head")
    selector = class_selector(class_index, len(images), int(head.output.shape[-1]))
    parts = []
    for start, batch in _batches(images, batch_size):
        maps = ops.cast(target.to_map(batch, training=False), "float32")
        weights = score_gradients(head, ops.mean(maps, axis=(1, 2)), selector[start:start + len(batch)])  # w_k^c
        cam = ops.einsum("nhwk,nk->nhw", maps, weights)
        parts.append(ops.convert_to_numpy(cam) if raw else to_input_size(cam, images.shape[1:3]))
    return np.concatenate(parts).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Lesion masks in the model's input geometry
# ---------------------------------------------------------------------------------------------

def disc_mask(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean ``shape`` mask of the pixels whose centre is within ``r`` of ``(cx, cy)`` (top-left
    origin, pixel units); at least the pixel under the centre when ``r`` is below half a pixel."""
    ys, xs = np.ogrid[:shape[0], :shape[1]]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= max(float(r), 0.5) ** 2


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def lesion_position(row: "pd.Series") -> tuple[str, Any] | None:
    """Where a manifest row says its lesion is: ``("mask", path)`` (the synthetic dataset's true
    lesion mask, column ``lesion_mask_path``), ``("disc", (cx, cy, r))`` (its ``roi``; MIAS: the
    image's first lesion of its severity, as the adapter keeps it), or None. CBIS-DDSM, Mini-DDSM
    and INbreast give none: their adapters do not read ROI masks or lesion outlines (roi "")."""
    from helpers.datasets import LESION_MASK_COLUMN
    from helpers.preprocessing import parse_roi

    path = _text(row.get(LESION_MASK_COLUMN, ""))
    if path:
        return "mask", path
    roi = parse_roi(_text(row.get("roi", "")), str(row.get("image_path", "")))
    return None if roi is None else ("disc", roi)


def lesion_source(row: "pd.Series") -> str | None:
    """What :func:`lesion_position` reads for ``row``, in words (for the report), or None."""
    position = lesion_position(row)
    if position is None:
        return None
    dataset = _text(row.get("dataset", "")) or "the dataset"
    if position[0] == "mask":
        return "phantom lesion masks" if dataset == "synthetic" else f"{dataset} lesion masks"
    return f"{dataset} centre and radius (disc)"


def lesion_masks(data: "PreparedData", split: str = "test", *, with_images: bool = False
                 ) -> list[np.ndarray | None] | tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """For every image of ``split`` (in the order of ``data.x[split]``), its lesion as a boolean
    ``(H, W)`` mask in the model's input geometry, or None where the data gives no position (normal
    images, a dataset without lesion positions) or the lesion lies outside the preset's crop.

    The original image is read again and the run's preset applied with the mask in lockstep
    (:func:`helpers.preprocessing.apply_preset` with ``mask=``: the same lesion patch, Otsu crop
    and resizing). ``with_images=True`` also returns those images (float32, for checking that they
    equal the cached arrays; None where there is no mask).
    """
    from helpers import pipeline
    from helpers.preprocessing import apply_preset, get_preset, parse_roi, read_image

    settings = data.settings
    preset = get_preset(settings.preset)
    use_roi = pipeline.uses_roi_patches(settings, data.manifest)
    rows = data.manifest[data.manifest["split"] == split]
    if len(rows) != len(data.x[split]):
        raise ValueError(f"split {split!r}: the manifest has {len(rows)} rows but data.x holds {len(data.x[split])}")
    masks: list[np.ndarray | None] = []
    images: list[np.ndarray | None] = []
    for _, row in rows.iterrows():
        position = lesion_position(row)
        if position is None:
            masks.append(None)
            images.append(None)
            continue
        image = read_image(row["image_path"], color=preset.color)
        if position[0] == "mask":
            lesion = read_image(position[1]) > 0.5
            lesion = lesion if lesion.ndim == 2 else lesion[..., 0]
            if lesion.shape != image.shape[:2]:
                raise ValueError(f"{position[1]}: lesion mask of shape {lesion.shape} does not match its image "
                                 f"{row['image_path']} ({image.shape[:2]})")
        else:
            lesion = disc_mask(image.shape[:2], *position[1])
        roi = parse_roi(_text(row.get("roi", "")), str(row["image_path"])) if use_roi else None
        image, mask = apply_preset(image, preset, image_size=settings.image_size, roi=roi, roi_scale=ROI_SCALE,
                                   mask=lesion)
        masks.append(mask if mask.any() else None)
        images.append(image if mask.any() else None)
    return (masks, images) if with_images else masks


# ---------------------------------------------------------------------------------------------
# Localisation scores
# ---------------------------------------------------------------------------------------------

def pointing_hit(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The pointing game for one map: the share of the map's maxima that lie in ``mask`` (1 or 0 for
    one maximum; with ties every pixel at the maximum counts, so a constant map scores the lesion's
    area share, exactly what a uniformly random guess expects)."""
    peaks = heatmap >= heatmap.max()
    return float(np.count_nonzero(peaks & mask)) / float(np.count_nonzero(peaks))


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's sum inside ``mask``; a map that is zero everywhere says nothing and is
    scored as the uniform map (the lesion's area share)."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else float(mask.mean())


def centred_map(shape: tuple[int, int], sigma: float = CENTRED_SIGMA) -> np.ndarray:
    """A Gaussian at the image centre, standard deviation ``sigma`` of each side, maximum 1 (for an
    even side the four central pixels tie)."""
    ys = (np.arange(shape[0]) - (shape[0] - 1) / 2) / (sigma * shape[0])
    xs = (np.arange(shape[1]) - (shape[1] - 1) / 2) / (sigma * shape[1])
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))


def _patient_bootstrap(values: np.ndarray, patients: np.ndarray, n_boot: int, seed: int,
                       level: float) -> list[float | None]:
    """Percentile interval of the mean of ``values``, resampling whole patients with replacement."""
    if n_boot == 0:
        return [None, None]
    groups, index = np.unique(patients.astype(str), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(groups))
    counts = np.bincount(index, minlength=len(groups)).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(groups), size=(int(n_boot), len(groups)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return [float(low), float(high)]


def localisation_scores(maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray | None],
                        patients: Sequence[str] | np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, Any]:
    """Pointing game (:func:`pointing_hit`) and mass inside (:func:`mass_inside`) of ``maps`` on the
    images whose mask is not None (nor empty): means over those images, each with a ``level``
    percentile bootstrap interval over whole patients (``n_boot`` resamples, ``seed``); and the same
    two scores of the ``uniform`` map (both equal the mean lesion area share) and of the ``centred``
    map (:func:`centred_map`) on the same images. ValueError: no image to score, a map whose shape
    differs from its mask's, or a negative map value.
    """
    maps = list(maps)
    patients = np.asarray(patients)
    if not len(maps) == len(masks) == len(patients):
        raise ValueError(f"maps ({len(maps)}), masks ({len(masks)}) and patients ({len(patients)}) differ in length")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    scored = [i for i, mask in enumerate(masks) if mask is not None and np.any(mask)]
    if not scored:
        raise ValueError("no image has a lesion mask: nothing to score")
    scores = {"pointing": [], "mass": [], "area": [], "centred_pointing": [], "centred_mass": []}
    centred: dict[tuple[int, int], np.ndarray] = {}
    for i in scored:
        heatmap, mask = np.asarray(maps[i], dtype=np.float64), np.asarray(masks[i], dtype=bool)
        if heatmap.shape != mask.shape:
            raise ValueError(f"image {i}: map of shape {heatmap.shape} and lesion mask of shape {mask.shape} differ")
        if heatmap.min() < 0:
            raise ValueError(f"image {i}: the map has negative values ({heatmap.min():.3g}); give maps in [0, 1]")
        reference = centred.setdefault(mask.shape, centred_map(mask.shape))
        scores["pointing"].append(pointing_hit(heatmap, mask))
        scores["mass"].append(mass_inside(heatmap, mask))
        scores["area"].append(float(mask.mean()))
        scores["centred_pointing"].append(pointing_hit(reference, mask))
        scores["centred_mass"].append(mass_inside(reference, mask))
    values = {key: np.asarray(items) for key, items in scores.items()}
    who = patients[scored]
    return {
        "n_images": len(scored),
        "n_patients": int(len(set(who.astype(str)))),
        "pointing_game": {"value": float(values["pointing"].mean()),
                          "ci": _patient_bootstrap(values["pointing"], who, int(n_boot), seed, level)},
        "mass_inside": {"value": float(values["mass"].mean()),
                        "ci": _patient_bootstrap(values["mass"], who, int(n_boot), seed + 1, level)},
        "baselines": {"uniform": {"pointing_game": float(values["area"].mean()),
                                  "mass_inside": float(values["area"].mean())},
                      "centred": {"pointing_game": float(values["centred_pointing"].mean()),
                                  "mass_inside": float(values["centred_mass"].mean())}},
        "n_boot": int(n_boot),
    }


def localisation_table(block: dict[str, Any]) -> "pd.DataFrame":
    """metrics.json's ``localisation`` block as a table: the model's maps, then the uniform and the
    centred map, pointing game and mass inside (with the model's 95 % intervals); or one row with
    the reason where it is unavailable."""
    import pandas as pd

    if block.get("status") != "ok":
        return pd.DataFrame([{"status": block.get("status"), "reason": block.get("reason", "")}])

    def interval(entry: dict[str, Any]) -> str:
        low, high = entry["ci"]
        return "" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"

    rows = [{"map": f"{block['method']} ({block['target_layer']})",
             "pointing game": block["pointing_game"]["value"], "pointing game 95% CI": interval(block["pointing_game"]),
             "mass inside": block["mass_inside"]["value"], "mass inside 95% CI": interval(block["mass_inside"])}]
    for name, entry in block["baselines"].items():
        rows.append({"map": f"{name} (baseline)", "pointing game": entry["pointing_game"],
                     "pointing game 95% CI": "", "mass inside": entry["mass_inside"], "mass inside 95% CI": ""})
    return pd.DataFrame(rows).set_index("map").round(3)


# ---------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------

def pick_examples(y_true: np.ndarray, y_pred: np.ndarray, masks: Sequence[np.ndarray | None] | None = None, *,
                  n_correct: int = 4, n_wrong: int = 4, seed: int = 0) -> np.ndarray:
    """Indices of up to ``n_correct`` correctly and ``n_wrong`` wrongly classified images (correct
    ones first), drawn at random (``seed``) with the images that have a lesion mask first."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    has_lesion = (np.array([m is not None and bool(np.any(m)) for m in masks]) if masks is not None
                  else np.zeros(len(y_true), bool))
    rng = np.random.default_rng(seed)
    picked = []
    for wanted, count in ((True, n_correct), (False, n_wrong)):
        pool = np.flatnonzero((y_true == y_pred) == wanted)
        pool = rng.permutation(pool)
        pool = np.concatenate([pool[has_lesion[pool]], pool[~has_lesion[pool]]])
        picked.extend(pool[:count].tolist())
    return np.asarray(picked, dtype=np.int64)


def plot_overlays(images: Sequence[np.ndarray] | np.ndarray, maps: Sequence[np.ndarray] | np.ndarray, *,
                  masks: Sequence[np.ndarray | None] | None = None, titles: Sequence[str] | None = None,
                  ncols: int = 4, size: float = 2.0, alpha: float = 0.45, title: str = "") -> "Figure":
    """Each map as a heatmap (jet, 0 to 1) over its image (grey), with the true lesion's outline
    (white) where its mask is known."""
    from helpers.figures import IMAGE_DPI, new_figure

    count = len(images)
    if len(maps) != count or (masks is not None and len(masks) != count):
        raise ValueError(f"images ({count}), maps ({len(maps)}) and masks differ in number")
    ncols = max(1, min(ncols, count))
    nrows = max(1, int(np.ceil(count / ncols)))
    fig = new_figure(figsize=(size * ncols, size * nrows + (0.6 if title else 0)), dpi=IMAGE_DPI)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= count:
            continue
        image = np.asarray(images[i], dtype=np.float32)
        ax.imshow(image[..., 0] if image.ndim == 3 else image, cmap="gray", vmin=0.0, vmax=1.0)
        ax.imshow(np.asarray(maps[i]), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        if masks is not None and masks[i] is not None and np.any(masks[i]):
            ax.contour(np.asarray(masks[i], dtype=float), levels=[0.5], colors="white", linewidths=1)
        ax.set_title(titles[i] if titles else "", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# A run: maps of the test images, overlays and the localisation block of metrics.json
# ---------------------------------------------------------------------------------------------

@dataclass
class RunExplanation:
    """What :func:`explain_run` computed: the ``localisation`` block of metrics.json, each test
    image's map (of its true class) and lesion mask, the images shown and the overlays figure."""

    block: dict[str, Any]
    maps: np.ndarray
    masks: list[np.ndarray | None]
    examples: np.ndarray
    figure: "Figure"


def explain_run(settings: "RunSettings", data: "PreparedData", model: keras.Model, run_dir: Path | str,
                y_prob: np.ndarray, *, method: str = "grad-cam", layer: str | None = None,
                figure_name: str = OVERLAYS_FILE) -> RunExplanation:
    """Maps of every test image for its **true** class (Grad-CAM, or CAM with ``method="cam"``),
    their localisation scores against the test images' lesions (:func:`lesion_masks`,
    :func:`localisation_scores`, ``settings.n_boot`` resamples), and an overlays figure of a few
    correct and wrong test images (:func:`pick_examples`; titled true / predicted class) written to
    ``run_dir/cam_overlays.png``.

    The block: ``status`` "ok" with ``method``, ``target_layer``, ``class_explained``, ``lesions``
    (where positions came from), ``input`` ("lesion-centred patches" or "whole images"), and the
    scores of :func:`localisation_scores`; or ``status`` "unavailable" with its ``reason`` and the
    descriptive keys (no scores) where no test image has a lesion position.
    """
    from helpers import evaluation, pipeline

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    x, y_true = data.x["test"], data.y["test"]
    if len(y_prob) != len(y_true):
        raise ValueError(f"y_prob has {len(y_prob)} rows, the test split {len(y_true)} images")
    if method == "cam":
        target_name = target_layer(model, model.layers[_gap_layer(model)[0] - 1].name).name
        maps = class_activation_map(model, x, y_true, batch_size=settings.batch_size)
    else:
        target = target_layer(model, layer)
        target_name = target.name
        maps = grad_cam(model, x, y_true, target=target, batch_size=settings.batch_size)
    masks = lesion_masks(data, "test")
    rows = data.manifest[data.manifest["split"] == "test"]
    sources = sorted({source for source in (lesion_source(row) for _, row in rows.iterrows()) if source})
    block: dict[str, Any] = {
        "status": "ok", "method": method, "target_layer": target_name, "class_explained": CLASS_EXPLAINED,
        "lesions": "; ".join(sources) or "none",
        "input": "lesion-centred patches" if pipeline.uses_roi_patches(settings, data.manifest) else "whole images",
    }
    if any(mask is not None for mask in masks):
        block.update(localisation_scores(maps, masks, data.patients["test"], n_boot=settings.n_boot,
                                         seed=settings.seed))
    else:
        block.update({"status": "unavailable", "n_images": 0, "n_patients": 0, "n_boot": int(settings.n_boot),
                      "reason": f"the data gives no lesion positions for the test images ({settings.dataset})"})
    y_pred = np.asarray(y_prob).argmax(axis=1)
    examples = pick_examples(y_true, y_pred, masks, seed=settings.seed)
    names = data.class_names
    titles = [f"true {names[y_true[i]]}, predicted {names[y_pred[i]]}" for i in examples]
    what = (f"{'Grad-CAM' if method == 'grad-cam' else 'CAM'} of the true class at {target_name}, test images "
            f"(white: the lesion)")
    figure = plot_overlays(x[examples], maps[examples], masks=[masks[i] for i in examples], titles=titles,
                           title=pipeline.figure_title(settings, what))
    evaluation.save_figure(figure, Path(run_dir) / figure_name)
    return RunExplanation(block, maps, masks, examples, figure)
