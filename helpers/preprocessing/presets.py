"""Per-paper presets (:class:`Preset`, :data:`PRESETS`, :func:`get_preset`), lesion patches and
:func:`apply_preset`, which runs a preset on one image up to a clean image in [0, 1]."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np

from helpers import studies
from helpers.preprocessing.steps import (
    CROP_STEPS,
    STEPS,
    Size,
    _as_float,
    _size_hw,
    downscale,
    otsu_crop_box,
    otsu_mask,
)

CLEAN_TOLERANCE = 0.25
"""How far (of the unit range) a preset's output may overshoot [0, 1] before it is an error
(a bicubic resize overshoots a little and is clipped; a normalisation step would exceed it)."""


@dataclass(frozen=True)
class Step:
    """One step of a preset: a name in :data:`STEPS` and its keyword parameters."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in STEPS:
            raise KeyError(f"unknown step {self.name!r}; known steps: {', '.join(STEPS)}")


@dataclass(frozen=True)
class Preset:
    """A paper's preprocessing recipe. ``study`` is the study key ("000".."004") or None.

    The ``resize`` step gets its size from ``image_size`` at apply time (profiles fix sizes).
    ``color=True`` reads the files as RGB (histopathology); False reads them grey (mammograms).
    ``normalisation`` is the paper's own last step, applied inside the model to images in
    [0, 1] when the backbone starts from random weights (see the ``helpers.preprocessing`` docstring).
    """

    name: str
    steps: tuple[Step, ...]
    description: str
    study: str | None = None
    color: bool = False
    normalisation: str = "unit"  # the paper's, a key of helpers.models.NORMALISATIONS (in the model)


def _recipe(study: str) -> studies.Recipe:
    return studies.get_study(study).recipe


def _hw_text(size: tuple[int, int] | None) -> str:
    return "no size stated" if size is None else f"{size[0]}x{size[1]} (height x width)"


PAPER003_NORMALISATIONS: tuple[str, ...] = tuple(_recipe("003").preprocessing_params["normalisation"])
"""The normalisations paper 003 names (read from helpers.studies); each is a model normalisation."""

PAPER003_NORMALISATION = "mean_normalisation"
"""The one preset ``paper003`` names (the paper does not say which it used, see its description)."""


def _paper001() -> Preset:
    recipe = _recipe("001")
    return Preset(
        name="paper001",
        study="001",
        description=(
            f"Bokade et al. 2024 (paper 001, section 2.2): resize to {_hw_text(recipe.input_size)} "
            "(size set by the profile), contrast stretching "
            f"('{recipe.preprocessing_params['contrast_stretch']}'), three channels "
            f"('{_hw_text(recipe.input_size).split(' ')[0]}x3'), in the paper's order (resize, "
            "then stretching). "
            "The paper states no interpolation and no other scaling. Chosen here: area "
            "interpolation (the paper's MATLAB imresize smooths before shrinking, which OpenCV's "
            "area method does and its bicubic does not); stretching over the full range (0th to "
            "100th percentile, i.e. minimum to 0 and maximum to L), where L = 1 for float images, "
            "so the output is in [0, 1] (= [0, 255] for the paper's 8-bit images divided by 255)."
        ),
        steps=(
            Step("to_float"),
            Step("resize", {"method": "area"}),
            Step("contrast_stretch", {"low_pct": 0, "high_pct": 100}),
            Step("grey_to_rgb"),
        ),
    )


def _paper002() -> Preset:
    recipe = _recipe("002")
    return Preset(
        name="paper002",
        study="002",
        color=True,
        description=(
            "Kumar et al. 2022 (paper 002, methodology 'Data Preprocessing'): histopathology "
            "(BreakHis) read in colour, resized to one size ('IMG_SIZE', value "
            f"{'not shown' if recipe.input_size is None else recipe.input_size}; size set by the "
            "profile), pixel values normalised to [0, 1] (the method's example). Chosen here: "
            "bilinear interpolation (the default of the TensorFlow image resizing the paper's code "
            "calls through its unshown load_image) and [0, 1] by dividing by the type's maximum "
            "(255 for 8-bit PNG); grey files are copied to three channels. The paper's code "
            "instead applies each backbone's preprocess_input inside the model."
        ),
        steps=(
            Step("to_float"),
            Step("resize", {"method": "bilinear"}),
            Step("grey_to_rgb"),
        ),
    )


def _paper003() -> Preset:
    return Preset(
        name="paper003",
        study="003",
        normalisation=PAPER003_NORMALISATION,
        description=(
            "Akhi et al. (paper 003, section III B-C): resize (the paper describes nearest, "
            "bilinear, bicubic and area interpolation and 'selected the suitable' one per model "
            "without saying which; no size stated, set by the profile), then normalisation by "
            f"{' or '.join(PAPER003_NORMALISATIONS)}, again chosen per model without saying which. "
            "Chosen here: area interpolation (the method the paper calls highest quality, and the "
            "right one for shrinking mammograms); grey copied to three channels. The normalisation "
            "runs inside the model (from random weights): mean normalisation (subtract the image's "
            "mean, no division by the standard deviation; per image), because the paper calls "
            "decimal scaling 'not as common' and 'selectively used'; NORMALISATION = "
            "'decimal_scaling' gives the other (the 8-bit values divided by a power of ten)."
        ),
        steps=(Step("to_float"), Step("resize", {"method": "area"}), Step("grey_to_rgb")),
    )


def _paper004() -> Preset:
    recipe = _recipe("004")
    return Preset(
        name="paper004",
        study="004",
        color=True,
        description=(
            "Abu Al-Haija and Manasra 2020 (paper 004, 'Data Resizing'): BreakHis RGB images "
            f"(700x460, landscape) resized to {_hw_text(recipe.input_size)}, i.e. the paper's "
            f"'{recipe.input_size[1]}x{recipe.input_size[0]}' (Img_width {recipe.input_size[1]}, "
            f"Img_height {recipe.input_size[0]}), landscape like the originals (size "
            "set by the profile; the paper profile uses this one), three channels, 'normalised' "
            "by a method the paper does not name. Chosen here: nearest-neighbour interpolation "
            "(the default of keras.preprocessing's image loading, which the paper names) and "
            "[0, 1] by dividing by 255 (the usual rescale of Keras' data generators); grey files "
            "are copied to three channels."
        ),
        steps=(
            Step("to_float"),
            Step("resize", {"method": "nearest"}),
            Step("grey_to_rgb"),
        ),
    )


PRESETS: dict[str, Preset] = {
    "paper000": Preset(
        name="paper000",
        study="000",
        description=(
            "Mahmood et al. 2021 (paper 000, section 4.1): label/artefact removal by morphological "
            "opening and closing, median filter, CLAHE, Otsu breast region, resize with "
            "nearest-neighbour interpolation (224x224 in the paper; size set by the profile), "
            "grey copied to 3 channels; its zero-mean normalisation (eq. 10; computed per image) "
            "runs inside the model when it starts from random weights. "
            "The paper states no other parameters; chosen here: downscale to 1024 px first (speed, "
            "not in the paper), artefact mask thresholded at half the Otsu level (keeps the skin "
            "line) with an elliptic kernel of 2% of the short side for opening/closing, median 3x3, CLAHE clip 2.0 on an 8x8 tile grid, crop margin 2%. The "
            "paper also names Gaussian and bilateral filters; its Figure 1 uses the median filter "
            "only, and so does this preset (both filters are available as steps)."
        ),
        steps=(
            Step("to_float"),
            Step("downscale", {"max_side": 1024}),
            Step("remove_artefacts", {"threshold": None, "otsu_frac": 0.5, "kernel_frac": 0.02}),
            Step("median_filter", {"ksize": 3}),
            Step("clahe", {"clip_limit": 2.0, "tile_grid": 8}),
            Step("otsu_crop", {"margin": 0.02}),
            Step("resize", {"method": "nearest"}),
            Step("grey_to_rgb"),
        ),
        normalisation="zero_mean",
    ),
    "minimal": Preset(
        name="minimal",
        study=None,
        description=(
            "Baseline for comparisons and fast runs: to [0, 1], downscale to 1024 px, crop to the "
            "Otsu breast region (2% margin), area resize, grey to 3 channels, min-max to [0, 1]; "
            "no further normalisation."
        ),
        steps=(
            Step("to_float"),
            Step("downscale", {"max_side": 1024}),
            Step("otsu_crop", {"margin": 0.02}),
            Step("resize", {"method": "area"}),
            Step("grey_to_rgb"),
            Step("scale_01"),
        ),
    ),
    "paper001": _paper001(),
    "paper002": _paper002(),
    "paper003": _paper003(),
    "paper004": _paper004(),
}
"""Preset name -> :class:`Preset`."""


def get_preset(name_or_preset: str | Preset) -> Preset:
    """Return the preset itself, or the registered one of that name (KeyError lists names)."""
    if isinstance(name_or_preset, Preset):
        return name_or_preset
    if isinstance(name_or_preset, str):
        if name_or_preset not in PRESETS:
            raise KeyError(f"unknown preset {name_or_preset!r}; known presets: {', '.join(PRESETS)}")
        return PRESETS[name_or_preset]
    raise TypeError(f"expected a preset name or Preset, got {type(name_or_preset).__name__}")


MIN_PATCH_SIDE = 32
"""The smallest side of a cut patch in pixels of the stored image (:func:`patch_side`)."""


def patch_side(r: float, roi_scale: float = 2.0) -> int:
    """Side in pixels of the square patch cut around a roi of radius ``r``: ``max(2 * roi_scale * r, 32)``."""
    return max(round(2 * roi_scale * float(r)), MIN_PATCH_SIDE)


def patch_window(roi: tuple[float, float, float], roi_scale: float = 2.0) -> tuple[int, int, int]:
    """``(top, left, side)`` of the patch :func:`cut_patch` cuts (may reach past the image border)."""
    cx, cy, r = (float(v) for v in roi)
    if not all(math.isfinite(v) for v in (cx, cy, r)) or r < 0:
        raise ValueError(f"invalid roi {roi!r}: expected finite (cx, cy, r) with r >= 0")
    side = patch_side(r, roi_scale)
    return round(cy - side / 2), round(cx - side / 2), side


def cut_patch(img: np.ndarray, roi: tuple[float, float, float], roi_scale: float = 2.0) -> np.ndarray:
    """Square patch of side :func:`patch_side` centred on ``(cx, cy)``, zero-padded past the border."""
    top, left, side = patch_window(roi, roi_scale)
    patch = np.zeros((side, side) + img.shape[2:], img.dtype)
    h, w = img.shape[:2]
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + side, h), min(left + side, w)
    if src_bottom > src_top and src_right > src_left:
        patch[src_top - top:src_bottom - top, src_left - left:src_right - left] = \
            img[src_top:src_bottom, src_left:src_right]
    return patch


def breast_centred_roi(img: np.ndarray) -> tuple[float, float, float]:
    """The centroid of the Otsu breast mask with ``r = min(h, w) / 8``: the *old* rule for a
    lesion-free image, kept only for demonstrations (lesson 1's shortcut section, a display patch).

    Never use it to prepare training data: its patches differ from lesion patches in scale,
    sharpness and position, a shortcut a classifier learns instead of the lesion. Training data
    gets :func:`helpers.preprocessing.normal_patch_roi`. The mask is computed on a copy
    downscaled to 512 px (speed); an empty mask gives the image centre.
    """
    h, w = img.shape[:2]
    small = downscale(_as_float(img), 512)
    mask = otsu_mask(small)
    if mask.any():
        ys, xs = np.nonzero(mask)
        cx = (xs.mean() + 0.5) * w / small.shape[1] - 0.5
        cy = (ys.mean() + 0.5) * h / small.shape[0] - 0.5
    else:
        cx, cy = (w - 1) / 2, (h - 1) / 2
    return float(cx), float(cy), min(h, w) / 8


RESCALING_STEPS = frozenset({"downscale", "resize"})
"""Steps that rescale the whole image: a mask given to :func:`apply_preset` is rescaled with it."""


def _mask_coverage(mask: np.ndarray, img: np.ndarray) -> np.ndarray:
    """A boolean ``mask`` of ``img``'s height and width as float32 coverage (1 inside, 0 outside)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape != img.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} does not match the image's {img.shape[:2]} "
                         f"(a mask is HxW, in the stored image's pixels)")
    return (mask != 0).astype(np.float32)


def _follow_step(coverage: np.ndarray, step: str, before: np.ndarray, after: np.ndarray,
                 params: Mapping[str, Any]) -> np.ndarray:
    """The mask coverage after ``step`` turned image ``before`` into ``after``: cropped with it
    (``otsu_crop``), rescaled with it (:data:`RESCALING_STEPS`, area interpolation), else as it was
    (a step that keeps the geometry); a step that changes the shape otherwise is an error."""
    if step == "otsu_crop":
        box = otsu_crop_box(before, **params)
        if box is None:
            return coverage
        top, bottom, left, right = box
        return coverage[top:bottom, left:right]
    if step in RESCALING_STEPS and after.shape[:2] != coverage.shape:
        height, width = after.shape[:2]
        return cv2.resize(coverage, (width, height), interpolation=cv2.INTER_AREA)
    if after.shape[:2] != coverage.shape:
        raise ValueError(f"step {step!r} changes the image's shape ({before.shape[:2]} -> {after.shape[:2]}) "
                         f"in a way a mask cannot follow")
    return coverage


def apply_preset(img: np.ndarray, preset: str | Preset, *, image_size: Size,
                 roi: tuple[float, float, float] | None = None, roi_scale: float = 2.0,
                 return_steps: bool = False, mask: np.ndarray | None = None
                 ) -> np.ndarray | list[tuple[str, np.ndarray]] | tuple[np.ndarray, np.ndarray]:
    """Run a preset on one image; the result is a clean float32 ``(h, w, 3)`` image in [0, 1].

    ``roi=(cx, cy, r)`` (pixels of the stored image, top-left origin) first cuts a lesion
    patch (:func:`cut_patch`) and skips the crop steps (:data:`CROP_STEPS`).
    ``return_steps=True`` returns ``[(step name, image after it), ...]`` (with ``"patch"``
    first when a roi is given).

    ``mask`` (bool HxW in the stored image's pixels, e.g. a lesion) follows the image's geometry
    in lockstep: patched, cropped (``otsu_crop``'s box) and rescaled with it; the call then
    returns ``(image, mask)``, the image exactly as without a mask. Rescaling uses area
    interpolation and a pixel is in the result's mask when the mask covers any part of it, so
    a lesion smaller than a pixel of the result (a calcification at 32 px) is kept, not dropped
    as nearest-neighbour sampling could. Not with ``return_steps``.
    """
    preset = get_preset(preset)
    if not any(step.name == "resize" for step in preset.steps):
        raise ValueError(f"preset {preset.name!r} has no 'resize' step, so image_size cannot apply")
    if mask is not None and return_steps:
        raise ValueError("apply_preset: give mask or return_steps, not both")
    size = _size_hw(image_size)
    coverage = None if mask is None else _mask_coverage(mask, img)
    history: list[tuple[str, np.ndarray]] = []
    if roi is not None:
        img = cut_patch(img, roi, roi_scale)
        if coverage is not None:
            coverage = cut_patch(coverage, roi, roi_scale)
        history.append(("patch", img))
    for step in preset.steps:
        if roi is not None and step.name in CROP_STEPS:
            continue
        params = dict(step.params)
        if step.name == "resize":
            params["size"] = size
        before = img
        img = STEPS[step.name](img, **params)
        if coverage is not None:
            coverage = _follow_step(coverage, step.name, before, img, params)
        history.append((step.name, img))
    if img.shape != (*size, 3) or img.dtype != np.float32:
        raise ValueError(f"preset {preset.name!r} produced {img.dtype} {img.shape}, "
                         f"expected float32 {(*size, 3)} (does it end with resize and grey_to_rgb?)")
    if not np.isfinite(img).all() or img.min() < -CLEAN_TOLERANCE or img.max() > 1 + CLEAN_TOLERANCE:
        raise ValueError(f"preset {preset.name!r} produced values outside [0, 1] "
                         f"([{np.nanmin(img):.4g}, {np.nanmax(img):.4g}]): a preset ends at a clean "
                         f"image; normalisation belongs to the model (helpers.models.NORMALISATIONS)")
    img = np.clip(img, 0.0, 1.0)  # a bicubic resize may overshoot by a little
    if return_steps:
        history[-1] = (history[-1][0], img)
    if coverage is not None:
        return img, coverage > 0
    return history if return_steps else img
