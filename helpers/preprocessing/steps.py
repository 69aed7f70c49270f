"""The pure image steps ``image in -> image out`` and their registry :data:`STEPS`."""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Size = int | tuple[int, int]


def to_float(img: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Convert to float32 in [0, 1], dividing integers by the largest value of their bit depth.

    That depth is ``bits`` when given (e.g. ``bits=12`` for :mod:`helpers.phantoms`' images),
    else the dtype's: uint8 / 255, uint16 / 65535 (a 16-bit array is taken at its full range,
    never guessed from its values). :func:`~helpers.preprocessing.read_image` returns files of a
    smaller stored depth (a 12-bit DICOM, a PGM with maxval 4095) already as float32 in [0, 1],
    so its output needs no ``bits``. A value above ``2**bits - 1`` raises ValueError. bool gives
    0/1; float input is only cast to float32.
    """
    if img.dtype in (np.uint8, np.uint16):
        if bits is None:
            top = int(np.iinfo(img.dtype).max)
        else:
            if not 1 <= bits <= 8 * img.dtype.itemsize:
                raise ValueError(f"to_float: bits={bits} does not fit a {img.dtype} image")
            top = 2**bits - 1
            if img.size and int(img.max()) > top:
                raise ValueError(f"to_float: value {int(img.max())} is above {top}, "
                                 f"the largest of {bits} bits")
        return unit_float(img, top)
    if img.dtype == np.bool_ or np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32)
    raise ValueError(f"to_float: unsupported dtype {img.dtype} (expected uint8, uint16, bool or float)")


def unit_float(values: np.ndarray, top: int) -> np.ndarray:
    """Integers ``values`` divided by ``top`` as float32, in one pass (the bytes of
    ``values.astype(np.float32) / top`` without the intermediate copy)."""
    return np.divide(values, np.float32(top), dtype=np.float32)


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
    limit = clip_limit * (256 if _eight_bit_levels(img) else 1)
    equaliser = cv2.createCLAHE(clipLimit=limit, tileGridSize=(tile_grid, tile_grid))
    channels = [img] if img.ndim == 2 else [img[:, :, c] for c in range(img.shape[2])]
    out = [unit_float(equaliser.apply(_to_uint16(c)), 65535) for c in channels]
    return out[0] if img.ndim == 2 else np.stack(out, axis=-1)


def _eight_bit_levels(img: np.ndarray, sample: int = 4096) -> bool:
    """True when every value is (within 1e-3 of 1/255) a multiple of 1/255, as ``np.allclose``
    decides; the first ``sample`` values are checked first, so finer data is told at once."""
    flat = img.reshape(-1)
    head = flat[:sample] * 255
    if not np.allclose(head, np.rint(head), atol=1e-3):
        return False
    scaled = flat * 255
    return bool(np.allclose(scaled, np.rint(scaled), atol=1e-3))


def _to_uint16(channel: np.ndarray) -> np.ndarray:
    """A [0, 1] float channel rounded to 0..65535 (``rint(c * 65535)``, in place of temporaries)."""
    scaled = np.multiply(channel, 65535, dtype=np.float32)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint16)


def otsu_crop_box(img: np.ndarray, margin: float = 0.02) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the crop :func:`otsu_crop` makes (rows ``top:bottom``,
    columns ``left:right``), or None where it crops nothing (an empty mask). For cropping other
    arrays in lockstep with the image, e.g. a lesion mask."""
    _require_grey(img, "otsu_crop")
    mask = otsu_mask(_as_float(img))
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    pad_y, pad_x = round(margin * h), round(margin * w)
    top, bottom = max(0, rows[0] - pad_y), min(h, rows[-1] + 1 + pad_y)
    left, right = max(0, cols[0] - pad_x), min(w, cols[-1] + 1 + pad_x)
    return int(top), int(bottom), int(left), int(right)


def otsu_crop(img: np.ndarray, margin: float = 0.02) -> np.ndarray:
    """Crop to the bounding box of :func:`otsu_mask`, widened by ``margin`` of each side
    (:func:`otsu_crop_box`).

    An image whose mask is empty (e.g. all black) is returned unchanged. Colour input (channels
    that differ) raises ValueError; grey copied to three channels is accepted.
    """
    box = otsu_crop_box(img, margin)
    img = _as_float(img)
    if box is None:
        return img
    top, bottom, left, right = box
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
