"""The cache of prepared arrays: :func:`prepare_arrays` runs a preset over a manifest and stores
the stacked result on disk under :func:`cache_key` (which hashes every input)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.paths import atomic_path, cache_dir as default_cache_dir
from helpers.preprocessing.patches import PATCH_RADIUS, PATCH_SEED, normal_patch_roi
from helpers.preprocessing.presets import Preset, apply_preset, get_preset
from helpers.preprocessing.readers import ImageReadError, read_image
from helpers.preprocessing.steps import Size, _size_hw

PREPROCESSING_VERSION = "4"
"""Bumped whenever a step changes its output, so that old cached arrays are not reused."""

CACHE_DTYPE = np.float16
"""Prepared arrays are stored and held as float16 (11 significant bits: finer than 8-bit images)."""


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


def _normal_patches(manifest: pd.DataFrame) -> list[tuple[float, int] | None]:
    """Each row's lesion-free (patch radius, seed) from :func:`assign_normal_radii`, or None."""
    if PATCH_RADIUS not in manifest.columns or PATCH_SEED not in manifest.columns:
        return [None] * len(manifest)
    return [None if pd.isna(radius) or pd.isna(seed) or int(seed) < 0 else (float(radius), int(seed))
            for radius, seed in zip(manifest[PATCH_RADIUS], manifest[PATCH_SEED])]


def _file_stamp(path: str) -> tuple[int, int]:
    try:
        info = Path(path).stat()
    except OSError:
        return -1, -1
    return info.st_size, info.st_mtime_ns


def cache_key(manifest: pd.DataFrame, preset: str | Preset, *, image_size: Size,
              use_roi: bool = False, roi_scale: float = 2.0) -> str:
    """sha256 over the version, preset (steps and colour), size, roi settings and each row's file
    identity, roi, and lesion-free patch radius and seed (:func:`assign_normal_radii`)."""
    preset = get_preset(preset)
    rows = manifest["roi"] if "roi" in manifest.columns else [""] * len(manifest)
    normal_patches = ["" if patch is None else f"{patch[0]!r}@{patch[1]}"
                      for patch in _normal_patches(manifest)]
    payload = {
        "version": PREPROCESSING_VERSION,
        "preset": preset.name,
        "steps": [[step.name, sorted(dict(step.params).items())] for step in preset.steps],
        "image_size": list(_size_hw(image_size)),
        "color": bool(preset.color),
        "use_roi": bool(use_roi),
        "roi_scale": float(roi_scale),
        "rows": [[str(path), _roi_text(roi), normal, *_file_stamp(str(path))]
                 for path, roi, normal in zip(manifest["image_path"], rows, normal_patches)],
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


def _require_normal_patches(manifest: pd.DataFrame, rois: Any, normal_patches: list) -> None:
    """ValueError naming the first lesion-free row (empty roi) without a patch radius and seed."""
    for path, roi_text, patch in zip(manifest["image_path"], rois, normal_patches):
        if patch is None and parse_roi(roi_text, str(path)) is None:
            raise ValueError(f"{path}: a lesion-free row (empty roi) needs a patch radius and seed "
                             f"(columns {PATCH_RADIUS!r}, {PATCH_SEED!r}) for use_roi=True: give them with "
                             f"helpers.preprocessing.assign_normal_radii(manifest, seed)")


def prepare_arrays(manifest: pd.DataFrame, preset: str | Preset, *, image_size: Size,
                   use_roi: bool = False, roi_scale: float = 2.0, cache_dir: Path | None = None,
                   on_error: str = "raise", progress: bool = False) -> PreparedArrays:
    """Preprocess every manifest row into one ``(N, h, w, 3)`` array of clean images, cached on disk.

    The array is float16 in [0, 1] (:data:`CACHE_DTYPE`); for a grey preset it is stored with
    one channel and returned as a read-only three-channel view of it (:func:`as_rgb`), so it
    takes a sixth of the memory of three float32 channels.

    ``use_roi=True`` cuts a lesion patch per row from its ``roi`` ("cx,cy,r"); a lesion-free row
    (empty roi) is cut like one, with the radius and seed :func:`assign_normal_radii` gave it, at
    a seeded random position inside the breast (:func:`normal_patch_roi`); a lesion-free row
    without them is a ValueError naming its file.
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
    normal_patches = _normal_patches(manifest) if use_roi else [None] * len(manifest)
    if use_roi:
        _require_normal_patches(manifest, rois, normal_patches)
    rows = tqdm(enumerate(zip(manifest["image_path"], rois, normal_patches)), total=len(manifest),
                disable=not progress, desc=f"preprocessing ({preset.name})")
    for position, (path, roi_text, normal_patch) in rows:
        try:
            img = read_image(path, color=preset.color)
            roi = None
            if use_roi:
                roi = parse_roi(roi_text, str(path))
                if roi is None:
                    radius, seed = normal_patch
                    roi = normal_patch_roi(img, radius, seed, roi_scale, source=str(path))
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
