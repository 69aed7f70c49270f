"""Lesion-free patches drawn like lesion patches, so that size and position cannot tell the classes apart.

A lesion patch is cut around its lesion (``roi`` "cx,cy,r", side :func:`patch_side`). A
lesion-free (normal) row gets, from :func:`assign_normal_radii`, a radius drawn from the lesion
radii of its own dataset and a sampling seed; when its image is read, :func:`normal_patch_roi`
places the window at a seeded random position wholly inside the breast (:func:`breast_mask`).
Both classes then share the distribution of patch sizes (hence of resampling and sharpness) and
lie inside the breast. :func:`in_breast_fraction` measures the latter for any patch.
"""

from __future__ import annotations

import hashlib
import math
import os

import cv2
import numpy as np
import pandas as pd

from helpers.preprocessing.presets import patch_side, patch_window
from helpers.preprocessing.steps import (
    _as_float,
    _ellipse,
    _grey,
    _largest_component_filled,
    _otsu_threshold,
    downscale,
)

PATCH_RADIUS = "patch_radius"
"""Manifest column: a lesion-free row's sampled patch radius in pixels (NaN for lesion rows)."""

PATCH_SEED = "patch_seed"
"""Manifest column: a lesion-free row's seed for its patch position (-1 for lesion rows)."""

MASK_MAX_SIDE = 512
"""The breast mask for placing and measuring patches is computed on a copy this size (speed)."""


def _has_roi(rois: pd.Series) -> pd.Series:
    return rois.fillna("").astype(str).str.strip().ne("")


def _lesion_radius(roi: str, where: str) -> float:
    try:
        radius = float(roi.split(",")[2])
    except (IndexError, ValueError):
        raise ValueError(f"{where}: roi {roi!r} is not 'cx,cy,r'") from None
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"{where}: roi {roi!r} must have a finite radius >= 0")
    return radius


GROUP_COLUMNS: tuple[str, ...] = ("dataset", "source")
"""Lesion-free rows draw their radii from the lesions of rows alike in these columns (where the
manifest has them): the same dataset, and an external test set (``source`` "test") apart from the
training data, so no test-set lesion sizes the training patches."""


def row_seed(seed: int, group: str, relative_path: str) -> int:
    """A 32-bit seed from the run seed, the row's group and its file (its path within the group's folder)."""
    text = f"{int(seed)}/{group}/{relative_path}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _relative_paths(paths: list[str]) -> list[str]:
    """Paths relative to the folder they share, so seeds do not depend on where the data lies."""
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    root = os.path.commonpath(paths)
    return [os.path.relpath(path, root) for path in paths]


def assign_normal_radii(manifest: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A copy of ``manifest`` in which every lesion-free row (empty ``roi``) has a patch radius and seed.

    Each lesion-free row's radius (column :data:`PATCH_RADIUS`) is drawn, with replacement, from
    the lesion radii of the rows of the same dataset (and source, :data:`GROUP_COLUMNS`; the whole
    manifest when it has neither column), so both classes share one distribution of patch sizes. Its
    :data:`PATCH_SEED` comes from ``seed`` and the row's file (:func:`row_seed`): the draw does
    not depend on the row order, and the same run seed gives the same patches (and cache).
    Lesion rows get NaN and -1. ValueError: a lesion-free row labelled other than "normal" (an
    abnormal image without lesion coordinates), or a dataset with lesion-free rows and no lesion
    radius to draw from.
    """
    for column in ("image_path", "roi"):
        if column not in manifest.columns:
            raise ValueError(f"manifest has no {column!r} column: no patches can be drawn")
    out = manifest.copy()
    has_roi = _has_roi(out["roi"])
    if "label" in out.columns:
        unlabelled = ~has_roi & out["label"].ne("normal")
        if unlabelled.any():
            row = out[unlabelled].iloc[0]
            raise ValueError(f"{row['image_path']}: a {row['label']!r} image without lesion coordinates "
                             f"(empty roi) cannot get a lesion-free patch ({int(unlabelled.sum())} such rows)")
    columns = [out[column].astype(str) for column in GROUP_COLUMNS if column in out.columns]
    groups = pd.Series(["/".join(values) for values in zip(*columns)] if columns else [""] * len(out),
                       index=out.index, dtype=object)
    radii = np.full(len(out), np.nan)
    seeds = np.full(len(out), -1, np.int64)
    for group in sorted(groups.unique()):
        in_group = (groups == group).to_numpy()
        normal = in_group & ~has_roi.to_numpy()
        if not normal.any():
            continue
        lesions = out.loc[in_group & has_roi.to_numpy()]
        lesion_radii = np.array([_lesion_radius(str(roi), str(path))
                                 for roi, path in zip(lesions["roi"], lesions["image_path"])])
        if lesion_radii.size == 0:
            raise ValueError(f"dataset {group or '(unnamed)'}: {int(normal.sum())} lesion-free images but "
                             f"no lesion roi to draw their patch sizes from")
        paths = _relative_paths([str(p) for p in out.loc[in_group, "image_path"]])
        for position, relative in zip(np.flatnonzero(in_group), paths):
            if not normal[position]:
                continue
            seeds[position] = row_seed(seed, group, relative)
            radii[position] = float(np.random.default_rng([seeds[position], 0]).choice(lesion_radii))
    out[PATCH_RADIUS] = radii
    out[PATCH_SEED] = seeds
    return out


def breast_mask(img: np.ndarray, otsu_frac: float = 0.5, kernel_frac: float = 0.02,
                blur_frac: float = 0.01) -> np.ndarray:
    """The whole breast (bool HxW): a Gaussian-blurred copy (sigma ``blur_frac`` of the short side)
    above ``otsu_frac`` times its Otsu threshold, opened and closed with an elliptic kernel of
    ``kernel_frac`` of the short side, largest component with holes filled.

    Not :func:`otsu_mask`: on an MLO view with a bright pectoral muscle, Otsu's own level can
    split muscle from breast and keep only the muscle (it does on the synthetic phantoms), so
    lesion-free windows would be drawn from the muscle. Half its level keeps the whole breast
    with its fatty skin line (as paper 000's ``remove_artefacts`` does); the blur keeps
    background noise from joining it.
    """
    grey = _grey(img)
    grey = cv2.GaussianBlur(grey, (0, 0), max(1.0, blur_frac * min(grey.shape)))
    mask = (grey > otsu_frac * _otsu_threshold(grey)).astype(np.uint8)
    kernel = _ellipse(max(3, round(kernel_frac * min(grey.shape))))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return _largest_component_filled(mask)


def _small_mask(img: np.ndarray) -> tuple[np.ndarray, float, float]:
    """:func:`breast_mask` of a copy downscaled to :data:`MASK_MAX_SIDE`, and its (y, x) scales."""
    h, w = img.shape[:2]
    small = downscale(_as_float(img), MASK_MAX_SIDE)
    return breast_mask(small), small.shape[0] / h, small.shape[1] / w


def _window_counts(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """For each pixel as centre, the breast pixels in a ``height x width`` window (outside counts 0)."""
    hs, ws = mask.shape
    padded = np.zeros((hs + 2 * height, ws + 2 * width), np.int64)
    padded[height:height + hs, width:width + ws] = mask
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), np.int64)
    integral[1:, 1:] = padded.cumsum(0).cumsum(1)
    tops = np.arange(hs)[:, None] + height - height // 2
    lefts = np.arange(ws)[None, :] + width - width // 2
    return (integral[tops + height, lefts + width] - integral[tops, lefts + width]
            - integral[tops + height, lefts] + integral[tops, lefts])


def normal_patch_roi(img: np.ndarray, radius: float, seed: int, roi_scale: float = 2.0,
                     source: str = "") -> tuple[float, float, float]:
    """``(cx, cy, radius)`` of a lesion-free patch: a seeded random centre whose window lies inside the breast.

    The window is the one :func:`cut_patch` cuts (side :func:`patch_side`). The breast mask
    (:func:`breast_mask`, Otsu-based) is computed on a copy downscaled to :data:`MASK_MAX_SIDE`
    px, where an integral image gives, for every centre, the breast pixels in its window
    (enlarged by one small pixel on each side, so the full-size window is inside too). The
    centre is drawn uniformly among the centres whose window holds the most breast pixels: every
    centre whose window lies wholly inside the breast when there is one; when the window is too
    large for that (a patch wider than the breast), the few centres with the largest in-breast
    fraction. ValueError (naming ``source``): no breast found (an empty mask), or a bad radius.
    """
    if not math.isfinite(float(radius)) or radius < 0:
        raise ValueError(f"{source}: patch radius {radius!r} must be finite and >= 0")
    h, w = img.shape[:2]
    mask, sy, sx = _small_mask(img)
    if not mask.any():
        raise ValueError(f"{source}: no breast found (empty breast mask): a lesion-free patch cannot be placed")
    side = patch_side(radius, roi_scale)
    height, width = math.ceil(side * sy) + 2, math.ceil(side * sx) + 2
    counts = _window_counts(mask, height, width)
    ys, xs = np.nonzero(counts == counts.max())
    pick = int(np.random.default_rng([int(seed), 1]).integers(len(ys)))
    cx = (xs[pick] + 0.5) / sx - 0.5
    cy = (ys[pick] + 0.5) / sy - 0.5
    return float(cx), float(cy), float(radius)


def in_breast_fraction(img: np.ndarray, roi: tuple[float, float, float], roi_scale: float = 2.0) -> float:
    """The share of the patch window :func:`cut_patch` cuts at ``roi`` that lies inside :func:`breast_mask`.

    The mask is computed as :func:`normal_patch_roi` does and brought back to full size
    (nearest neighbour); parts of the window past the image border count as outside.
    """
    h, w = img.shape[:2]
    mask, _, _ = _small_mask(img)
    full = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    top, left, side = patch_window(roi, roi_scale)
    inside = full[max(top, 0):max(min(top + side, h), 0), max(left, 0):max(min(left + side, w), 0)]
    return float(inside.sum()) / side ** 2
