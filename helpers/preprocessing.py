"""Image preprocessing: reading, pure image steps, per-paper presets and a cache of prepared arrays.

Every step is a pure function ``image in -> image out`` registered in :data:`STEPS`. A
:class:`Preset` is a named list of steps with parameters (one per paper, in :data:`PRESETS`);
:func:`apply_preset` runs one on an image and :func:`prepare_arrays` runs one over a manifest,
caching the stacked result on disk under a key that hashes every input.

Conventions: steps take and return ``float32`` images (integer images are converted with
:func:`to_float` first), grey ``HxW`` or colour ``HxWx3``; masks are ``bool``.

A preset ends at a *clean image*: RGB, values in ``[0, 1]``, nothing specific to a backbone or to
its weights. The last stage, normalisation (the paper's per-image standardisation, or the
backbone's ImageNet convention when it starts from ImageNet weights), runs inside the model as a
layer (:class:`helpers.models.ImageNormalisation`), after augmentation; each preset names the
paper's normalisation in :attr:`Preset.normalisation`. Cached arrays are stored as float16, grey
presets with one channel (:func:`prepare_arrays`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np
import pandas as pd

from helpers import studies
from helpers.paths import atomic_path, cache_dir as default_cache_dir

PREPROCESSING_VERSION = "2"
"""Bumped whenever a step changes its output, so that old cached arrays are not reused."""

Size = int | tuple[int, int]
CLEAN_TOLERANCE = 0.25
"""How far (of the unit range) a preset's output may overshoot [0, 1] before it is an error
(a bicubic resize overshoots a little and is clipped; a normalisation step would exceed it)."""
CACHE_DTYPE = np.float16
"""Prepared arrays are stored and held as float16 (11 significant bits: finer than 8-bit images)."""


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or of an unsupported kind."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _fail(path: Path, problem: str) -> ImageReadError:
    return ImageReadError(f"{path}: {problem}")


def _read_with_opencv(path: Path, color: bool) -> np.ndarray:
    """PGM/PNG/JPEG/TIFF through ``cv2.imdecode`` (which returns None on failure: checked)."""
    data = path.read_bytes()
    if not data:
        raise _fail(path, "file is empty")
    if path.suffix.lower() == ".png" and b"IEND" not in data[-1024:]:
        raise _fail(path, "truncated PNG (no IEND chunk at the end)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise _fail(path, "OpenCV could not decode the file (corrupt or truncated?)")
    if img.dtype not in (np.uint8, np.uint16):
        raise _fail(path, f"unsupported pixel type {img.dtype} (expected 8- or 16-bit)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.stack([img] * 3, axis=-1) if color else img
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise _fail(path, f"unsupported image shape {img.shape}")
    code = {(3, True): cv2.COLOR_BGR2RGB, (4, True): cv2.COLOR_BGRA2RGB,
            (3, False): cv2.COLOR_BGR2GRAY, (4, False): cv2.COLOR_BGRA2GRAY}[(img.shape[2], color)]
    return cv2.cvtColor(img, code)


def _first_number(value: Any) -> float:
    """First value of a DICOM single- or multi-valued numeric element, as float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _dicom_values(ds: Any, raw: np.ndarray, path: Path) -> np.ndarray:
    """Apply rescale and VOI window (when present and sane) and map to [0, 2**BitsStored - 1].

    Order as in DICOM: modality rescale, then the first VOI window (LINEAR, LINEAR_EXACT or
    SIGMOID). VOI LUT Sequence tables are not applied. A rescale whose output leaves the stored
    range (without a window to bring it back) is skipped with a warning.
    """
    bits = int(getattr(ds, "BitsStored", 8 * raw.dtype.itemsize))
    max_value = 2**bits - 1
    values = raw.astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    rescaled = values * slope + intercept
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if has_window:
        try:
            center, width = _first_number(ds.WindowCenter), _first_number(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            center, width = math.nan, math.nan
        has_window = math.isfinite(center) and math.isfinite(width) and width >= 1
    rescale_ok = math.isfinite(slope) and math.isfinite(intercept) and slope != 0
    if has_window:
        values = rescaled if rescale_ok else values
        function = str(getattr(ds, "VOILUTFunction", "LINEAR")).upper()
        if function == "SIGMOID":
            fraction = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "LINEAR_EXACT":
            fraction = np.clip((values - center) / width + 0.5, 0.0, 1.0)
        else:
            fraction = np.clip((values - (center - 0.5)) / (width - 1 or 1) + 0.5, 0.0, 1.0)
        values = fraction * max_value
    else:
        if int(getattr(ds, "PixelRepresentation", 0)) == 1:  # signed: shift into unsigned range
            values = values + 2 ** (bits - 1)
            rescaled = rescaled + 2 ** (bits - 1)
        if rescale_ok and (slope, intercept) != (1.0, 0.0):
            if rescaled.min() >= 0 and rescaled.max() <= max_value:
                values = rescaled
            else:
                warnings.warn(f"{path}: rescale slope/intercept leave the stored range; not applied")
    values = np.clip(np.rint(values), 0, max_value)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = max_value - values  # so that dense tissue is bright
    return values.astype(np.uint8 if bits <= 8 else np.uint16)


def _read_dicom(path: Path, color: bool) -> np.ndarray:
    """DICOM through pydicom (RLE Lossless and uncompressed need numpy only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many kinds for corrupt files
        raise _fail(path, f"not a readable DICOM file ({error})") from error
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _fail(path, "DICOM file has no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as error:
        raise _fail(path, f"cannot decode DICOM pixel data ({error})") from error
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise _fail(path, "multi-frame DICOM is not supported")
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        rgb = raw if raw.dtype in (np.uint8, np.uint16) else np.clip(raw, 0, None).astype(np.uint16)
        return rgb if color else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if raw.ndim != 2:
        raise _fail(path, f"unexpected DICOM pixel array shape {raw.shape}")
    grey = _dicom_values(ds, raw, path)
    return np.stack([grey] * 3, axis=-1) if color else grey


READERS: dict[str, Callable[[Path, bool], np.ndarray]] = {
    ".pgm": _read_with_opencv, ".png": _read_with_opencv, ".jpg": _read_with_opencv,
    ".jpeg": _read_with_opencv, ".tif": _read_with_opencv, ".tiff": _read_with_opencv,
    ".bmp": _read_with_opencv, ".dcm": _read_dicom, ".dicom": _read_dicom,
}
"""File extension -> reader ``(path, color) -> array``."""


def read_image(path: str | Path, *, color: bool = False) -> np.ndarray:
    """Read an image file in its native dtype (uint8/uint16).

    ``color=False`` gives a 2-D grey array (colour files are converted to grey);
    ``color=True`` gives ``HxWx3`` RGB. DICOM MONOCHROME1 is inverted so dense tissue is bright.
    Raises :class:`ImageReadError` naming the file for every problem.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise _fail(path, f"unsupported extension {path.suffix!r} (known: {', '.join(READERS)})")
    if not path.is_file():
        raise _fail(path, "file not found")
    return reader(path, color)


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def to_float(img: np.ndarray) -> np.ndarray:
    """Convert to float32 in [0, 1], scaled by the dtype's range.

    uint8 / 255; uint16 / 4095 when its maximum is <= 4095 (12-bit data), else / 65535;
    bool to 0/1; float input is only cast to float32.
    """
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        full_scale = 4095.0 if img.size and int(img.max()) <= 4095 else 65535.0
        return img.astype(np.float32) / full_scale
    if img.dtype == np.bool_ or np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32)
    raise ValueError(f"to_float: unsupported dtype {img.dtype} (expected uint8, uint16, bool or float)")


def _as_float(img: np.ndarray) -> np.ndarray:
    return img if img.dtype == np.float32 else to_float(img)


def _grey(img: np.ndarray) -> np.ndarray:
    img = _as_float(img)
    return img if img.ndim == 2 else cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2GRAY)


def is_colour(img: np.ndarray) -> bool:
    """True for an ``HxWx3`` (or ``x4``) image whose channels differ (grey copied to RGB is not colour)."""
    if img.ndim != 3 or img.shape[2] < 3:
        return False
    return not (np.array_equal(img[:, :, 0], img[:, :, 1])
                and np.array_equal(img[:, :, 0], img[:, :, 2]))


def _require_grey(img: np.ndarray, step: str) -> None:
    """Refuse colour input to a step that only makes sense for a grey mammogram."""
    if is_colour(img):
        raise ValueError(
            f"{step}: expects a grey mammogram (HxW), got a colour image of shape {img.shape}; "
            "it looks for a bright breast on a dark background, which colour (histopathology) "
            "images do not have: leave this step out of colour presets")


def downscale(img: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """Shrink (INTER_AREA) so that the longest side is at most ``max_side``; never enlarges."""
    img = _as_float(img)
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    scale = max_side / max(h, w)
    new_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, new_size, interpolation=cv2.INTER_AREA)


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of float values (histogram of ``bins`` bins over their range)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centers)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of ``mask`` with its holes filled."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(component)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _ellipse(size: int) -> np.ndarray:
    size = max(1, int(size)) | 1  # odd
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def otsu_mask(img: np.ndarray) -> np.ndarray:
    """Breast mask: Otsu threshold, 3x3 opening, largest component, holes filled (bool HxW)."""
    grey = _grey(img)
    mask = (grey > _otsu_threshold(grey)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(3))
    return _largest_component_filled(mask)


def remove_artefacts(img: np.ndarray, threshold: float | None = None, otsu_frac: float = 0.5,
                     kernel_frac: float = 0.02) -> np.ndarray:
    """Zero everything outside the breast, which deletes burned-in labels and markers.

    Threshold (``None``: ``otsu_frac`` times Otsu's threshold; half of it keeps the faint
    fatty skin line that Otsu's own threshold cuts off), morphological opening then closing
    with an elliptic kernel of side ``kernel_frac * min(h, w)`` (opening cuts thin bridges to
    labels, closing mends the skin line), keep the largest connected component (the breast)
    with holes filled.
    An image with nothing above the threshold is returned unchanged. Colour input (channels
    that differ) raises ValueError; grey copied to three channels is accepted.
    """
    _require_grey(img, "remove_artefacts")
    img = _as_float(img)
    grey = _grey(img)
    level = otsu_frac * _otsu_threshold(grey) if threshold is None else float(threshold)
    mask = (grey > level).astype(np.uint8)
    kernel = _ellipse(max(3, round(kernel_frac * min(grey.shape))))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    breast = _largest_component_filled(mask)
    if not breast.any():
        return img
    return img * (breast[..., None] if img.ndim == 3 else breast).astype(np.float32)


def median_filter(img: np.ndarray, ksize: int = 3) -> np.ndarray:
    """Median filter with an odd square window of side ``ksize`` (salt-and-pepper noise)."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"median_filter: ksize must be odd and positive, got {ksize}")
    img = _as_float(img)
    if ksize == 1:
        return img
    if ksize <= 5:
        return cv2.medianBlur(img, ksize)
    from scipy.ndimage import median_filter as scipy_median

    window = (ksize, ksize, 1) if img.ndim == 3 else (ksize, ksize)
    return scipy_median(img, size=window, mode="reflect").astype(np.float32)


def gaussian_filter(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (Gaussian noise)."""
    if sigma <= 0:
        raise ValueError(f"gaussian_filter: sigma must be > 0, got {sigma}")
    return cv2.GaussianBlur(_as_float(img), (0, 0), sigmaX=sigma, sigmaY=sigma)


def bilateral_filter(img: np.ndarray, d: int = 5, sigma_color: float = 0.1,
                     sigma_space: float = 5.0) -> np.ndarray:
    """Edge-preserving bilateral filter; ``sigma_color`` is in intensity units of [0, 1]."""
    return cv2.bilateralFilter(_as_float(img), d, sigma_color, sigma_space)


def clahe(img: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast Limited Adaptive Histogram Equalisation on a [0, 1] float image, via uint16.

    Colour images are equalised per channel. ``clip_limit`` keeps its usual 8-bit meaning
    (times the height of a uniform histogram over the image's grey levels): for data with only
    8-bit levels (multiples of 1/255) OpenCV's 16-bit limit is multiplied by 256, so the
    result equals 8-bit CLAHE; for finer data the 65536-bin histogram is used as it is.
    """
    img = np.clip(_as_float(img), 0.0, 1.0)
    eight_bit_levels = bool(np.allclose(img * 255, np.rint(img * 255), atol=1e-3))
    limit = clip_limit * (256 if eight_bit_levels else 1)
    equaliser = cv2.createCLAHE(clipLimit=limit, tileGridSize=(tile_grid, tile_grid))
    channels = [img] if img.ndim == 2 else [img[:, :, c] for c in range(img.shape[2])]
    out = [equaliser.apply(np.rint(c * 65535).astype(np.uint16)).astype(np.float32) / 65535
           for c in channels]
    return out[0] if img.ndim == 2 else np.stack(out, axis=-1)


def otsu_crop(img: np.ndarray, margin: float = 0.02) -> np.ndarray:
    """Crop to the bounding box of :func:`otsu_mask`, widened by ``margin`` of each side.

    An image whose mask is empty (e.g. all black) is returned unchanged. Colour input (channels
    that differ) raises ValueError; grey copied to three channels is accepted.
    """
    _require_grey(img, "otsu_crop")
    img = _as_float(img)
    mask = otsu_mask(img)
    if not mask.any():
        return img
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    pad_y, pad_x = round(margin * h), round(margin * w)
    top, bottom = max(0, rows[0] - pad_y), min(h, rows[-1] + 1 + pad_y)
    left, right = max(0, cols[0] - pad_x), min(w, cols[-1] + 1 + pad_x)
    return img[top:bottom, left:right].copy()


def contrast_stretch(img: np.ndarray, low_pct: float = 2, high_pct: float = 98) -> np.ndarray:
    """Map the ``low_pct`` percentile to 0 and ``high_pct`` to 1, clipping outside.

    A flat image (both percentiles equal) falls back to :func:`scale_01`.
    """
    img = _as_float(img)
    low, high = np.percentile(img, [low_pct, high_pct])
    if high <= low:
        return scale_01(img)
    return np.clip((img - low) / (high - low), 0.0, 1.0).astype(np.float32)


RESIZE_METHODS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
}


def _size_hw(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def resize(img: np.ndarray, size: Size, method: str = "area") -> np.ndarray:
    """Resize to ``size`` (int for a square, or ``(h, w)``) with nearest/bilinear/bicubic/area."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize: unknown method {method!r} (known: {', '.join(RESIZE_METHODS)})")
    h, w = _size_hw(size)
    out = cv2.resize(_as_float(img), (w, h), interpolation=RESIZE_METHODS[method])
    if img.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel
        out = out[:, :, None]
    return out


def grey_to_rgb(img: np.ndarray) -> np.ndarray:
    """Repeat a grey ``HxW`` (or ``HxWx1``) image into ``HxWx3``; ``HxWx3`` passes through."""
    img = _as_float(img)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim != 2:
        raise ValueError(f"grey_to_rgb: expected HxW, HxWx1 or HxWx3, got shape {img.shape}")
    return np.repeat(img[:, :, None], 3, axis=2)


def scale_01(img: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant image becomes all zeros."""
    img = _as_float(img)
    low, high = float(img.min()), float(img.max())
    if high <= low:
        return np.zeros_like(img)
    return ((img - low) / (high - low)).astype(np.float32)


STEPS: dict[str, Callable[..., np.ndarray]] = {
    "to_float": to_float, "downscale": downscale, "remove_artefacts": remove_artefacts,
    "median_filter": median_filter, "gaussian_filter": gaussian_filter,
    "bilateral_filter": bilateral_filter, "clahe": clahe, "otsu_crop": otsu_crop,
    "contrast_stretch": contrast_stretch, "resize": resize, "grey_to_rgb": grey_to_rgb,
    "scale_01": scale_01,
}
"""Step name -> pure function ``(img, **params) -> img``."""

CROP_STEPS = frozenset({"otsu_crop", "remove_artefacts"})
"""Steps skipped when a lesion patch is cut (they would crop or mask the patch itself)."""


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


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
    [0, 1] when the backbone starts from random weights (see the module docstring).
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


def cut_patch(img: np.ndarray, roi: tuple[float, float, float], roi_scale: float = 2.0) -> np.ndarray:
    """Square patch of side ``max(2 * roi_scale * r, 32)`` centred on ``(cx, cy)``, zero-padded."""
    cx, cy, r = (float(v) for v in roi)
    if not all(math.isfinite(v) for v in (cx, cy, r)) or r < 0:
        raise ValueError(f"invalid roi {roi!r}: expected finite (cx, cy, r) with r >= 0")
    side = max(round(2 * roi_scale * r), 32)
    top, left = round(cy - side / 2), round(cx - side / 2)
    patch = np.zeros((side, side) + img.shape[2:], img.dtype)
    h, w = img.shape[:2]
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + side, h), min(left + side, w)
    if src_bottom > src_top and src_right > src_left:
        patch[src_top - top:src_bottom - top, src_left - left:src_right - left] = \
            img[src_top:src_bottom, src_left:src_right]
    return patch


def default_roi(img: np.ndarray) -> tuple[float, float, float]:
    """ROI for a row without one: centroid of the Otsu breast mask, ``r = min(h, w) / 8``.

    The mask is computed on a copy downscaled to 512 px (speed); an empty mask gives the
    image centre.
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


def apply_preset(img: np.ndarray, preset: str | Preset, *, image_size: Size,
                 roi: tuple[float, float, float] | None = None, roi_scale: float = 2.0,
                 return_steps: bool = False) -> np.ndarray | list[tuple[str, np.ndarray]]:
    """Run a preset on one image; the result is a clean float32 ``(h, w, 3)`` image in [0, 1].

    ``roi=(cx, cy, r)`` (pixels of the stored image, top-left origin) first cuts a lesion
    patch (:func:`cut_patch`) and skips the crop steps (:data:`CROP_STEPS`).
    ``return_steps=True`` returns ``[(step name, image after it), ...]`` (with ``"patch"``
    first when a roi is given).
    """
    preset = get_preset(preset)
    if not any(step.name == "resize" for step in preset.steps):
        raise ValueError(f"preset {preset.name!r} has no 'resize' step, so image_size cannot apply")
    size = _size_hw(image_size)
    history: list[tuple[str, np.ndarray]] = []
    if roi is not None:
        img = cut_patch(img, roi, roi_scale)
        history.append(("patch", img))
    for step in preset.steps:
        if roi is not None and step.name in CROP_STEPS:
            continue
        params = dict(step.params)
        if step.name == "resize":
            params["size"] = size
        img = STEPS[step.name](img, **params)
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
    return history if return_steps else img


# --------------------------------------------------------------------------------------------
# Cache of prepared arrays
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedArrays:
    """Stacked preprocessed images of a manifest and where they are cached.

    ``manifest`` holds the kept rows in order with a fresh 0..N-1 index, so ``x[i]`` is row ``i``.
    """

    x: np.ndarray
    manifest: pd.DataFrame
    skipped: list[tuple[str, str]]
    cache_file: Path
    from_cache: bool


def _roi_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def parse_roi(text: str, image_path: str = "") -> tuple[float, float, float] | None:
    """Parse a manifest roi ``"cx,cy,r"``; ``""`` gives None. Bad text raises ValueError."""
    text = _roi_text(text)
    if not text:
        return None
    try:
        cx, cy, r = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{image_path}: roi {text!r} is not 'cx,cy,r'") from None
    if not all(math.isfinite(v) for v in (cx, cy, r)) or r < 0:
        raise ValueError(f"{image_path}: roi {text!r} must be finite with r >= 0")
    return cx, cy, r


def _file_stamp(path: str) -> tuple[int, int]:
    try:
        info = Path(path).stat()
    except OSError:
        return -1, -1
    return info.st_size, info.st_mtime_ns


def cache_key(manifest: pd.DataFrame, preset: str | Preset, *, image_size: Size,
              use_roi: bool = False, roi_scale: float = 2.0) -> str:
    """sha256 over the version, preset (steps and colour), size, roi settings and each row's file identity."""
    preset = get_preset(preset)
    rows = manifest["roi"] if "roi" in manifest.columns else [""] * len(manifest)
    payload = {
        "version": PREPROCESSING_VERSION,
        "preset": preset.name,
        "steps": [[step.name, sorted(dict(step.params).items())] for step in preset.steps],
        "image_size": list(_size_hw(image_size)),
        "color": bool(preset.color),
        "use_roi": bool(use_roi),
        "roi_scale": float(roi_scale),
        "rows": [[str(path), _roi_text(roi), *_file_stamp(str(path))]
                 for path, roi in zip(manifest["image_path"], rows)],
    }
    return hashlib.sha256(json.dumps(payload, default=repr).encode()).hexdigest()


def as_rgb(x: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` from stored ``(N, H, W, 1)`` grey arrays as a read-only view (no copy)."""
    return np.broadcast_to(x, (*x.shape[:3], 3)) if x.shape[-1] == 1 else x


def _load_cached(cache_file: Path, manifest: pd.DataFrame) -> PreparedArrays | None:
    try:
        with np.load(cache_file, allow_pickle=False) as data:
            x, kept = data["x"], data["kept"]
            skipped = [tuple(item) for item in json.loads(str(data["skipped"]))]
        if x.dtype != CACHE_DTYPE or x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) != len(kept):
            raise ValueError(f"holds {x.dtype} {x.shape}, expected {np.dtype(CACHE_DTYPE)} (N, H, W, 1 or 3)")
    except Exception as error:  # unreadable cache: rebuild it
        warnings.warn(f"{cache_file}: unreadable cache file, rebuilding ({error})")
        return None
    rows = manifest.iloc[kept].reset_index(drop=True)
    return PreparedArrays(as_rgb(x), rows, skipped, cache_file, from_cache=True)


def prepare_arrays(manifest: pd.DataFrame, preset: str | Preset, *, image_size: Size,
                   use_roi: bool = False, roi_scale: float = 2.0, cache_dir: Path | None = None,
                   on_error: str = "raise", progress: bool = False) -> PreparedArrays:
    """Preprocess every manifest row into one ``(N, h, w, 3)`` array of clean images, cached on disk.

    The array is float16 in [0, 1] (:data:`CACHE_DTYPE`); for a grey preset it is stored with
    one channel and returned as a read-only three-channel view of it (:func:`as_rgb`), so it
    takes a sixth of the memory of three float32 channels.

    ``use_roi=True`` cuts a lesion patch per row from its ``roi`` ("cx,cy,r"); a row with an
    empty roi is centred on its Otsu breast mask with ``r = min(h, w) / 8`` (:func:`default_roi`).
    The cache file ``<dir>/<preset>-<h>x<w>-<key16>.npz`` (dir defaults to
    ``helpers.paths.cache_dir()/"arrays"``) is reused when :func:`cache_key` matches, without
    reading any image. ``on_error``: "raise" (ImageReadError naming the file) or "skip".
    Files are read grey, or RGB when ``preset.color`` is True (histopathology).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if "image_path" not in manifest.columns:
        raise ValueError("manifest has no 'image_path' column")
    if use_roi and "roi" not in manifest.columns:
        raise ValueError("use_roi=True needs a 'roi' column in the manifest")
    preset = get_preset(preset)
    h, w = _size_hw(image_size)
    key = cache_key(manifest, preset, image_size=(h, w), use_roi=use_roi, roi_scale=roi_scale)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "arrays"
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", preset.name)
    cache_file = folder / f"{safe_name}-{h}x{w}-{key[:16]}.npz"
    if cache_file.is_file():
        cached = _load_cached(cache_file, manifest)
        if cached is not None:
            return cached

    from tqdm import tqdm

    images: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    rois = manifest["roi"] if "roi" in manifest.columns else [""] * len(manifest)
    rows = tqdm(enumerate(zip(manifest["image_path"], rois)), total=len(manifest),
                disable=not progress, desc=f"preprocessing ({preset.name})")
    for position, (path, roi_text) in rows:
        try:
            img = read_image(path, color=preset.color)
            roi = None
            if use_roi:
                roi = parse_roi(roi_text, str(path)) or default_roi(img)
            images.append(apply_preset(img, preset, image_size=(h, w), roi=roi, roi_scale=roi_scale))
            kept.append(position)
        except ImageReadError as error:
            if on_error == "raise":
                raise
            skipped.append((str(path), str(error)))
    channels = 3 if preset.color else 1  # grey presets repeat one channel: store it once
    x = (np.stack([image[..., :channels] for image in images]).astype(CACHE_DTYPE) if images
         else np.zeros((0, h, w, channels), CACHE_DTYPE))
    with atomic_path(cache_file) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, x=x, kept=np.asarray(kept, np.int64),
                     skipped=np.array(json.dumps(skipped)))
    rows_kept = manifest.iloc[kept].reset_index(drop=True)
    return PreparedArrays(as_rgb(x), rows_kept, skipped, cache_file, from_cache=False)
