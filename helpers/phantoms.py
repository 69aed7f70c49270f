"""Phantom mammograms: synthetic, labelled, deterministic images for lessons and tests.

Each synthetic patient has one breast (left or right) imaged in one or more views (CC, MLO).
All views of a patient are rendered from the same anatomy: breast shape, fibroglandular
texture and lesion live in one *canonical* frame (chest wall on the left, x to the nipple), and
each view is a rigid transform of that frame. The MLO view rotates the breast and adds the
pectoral muscle and the axillary tail in the upper chest-wall corner. Right breasts are mirrored
so that the chest wall lies on the image edge that matches the laterality, as in CBIS-DDSM.

What makes an image (intensities on a 12-bit scale, 0..4095, brighter = denser):
dark film background, breast silhouette with a darker thin periphery and a brighter skin line,
smooth-noise fibroglandular tissue (denser near the chest wall), a burned-in marker ("L CC")
in a far corner, film noise and a lesion: none (normal); benign: round/oval circumscribed mass
or a few coarse calcifications; malignant: irregular spiculated mass or a tight cluster of fine
pleomorphic micro-calcifications. ``difficulty`` (0..1) lowers lesion contrast and size, makes
tissue denser, lobulates benign margins and shortens spicules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import cv2
import numpy as np

LABELS: tuple[str, ...] = ("normal", "benign", "malignant")
VIEWS: tuple[str, ...] = ("CC", "MLO")
LATERALITIES: tuple[str, ...] = ("L", "R")
MAX_VALUE = 4095  # 12-bit range, like a digitised film
GENERATOR_VERSION = 1  # bump when the images change, so caches keyed on it are rebuilt

MASS_PROBABILITY = 0.7  # otherwise the lesion is a group of calcifications
MARKER_VALUE = 3950.0
_VIEW_CODES = {"CC": 1, "MLO": 2}


@dataclass
class Phantom:
    """One phantom image with its ground truth."""

    image: np.ndarray  # uint16 2-D, 0..4095
    breast_mask: np.ndarray  # bool 2-D, the true silhouette (without the label marker)
    lesion_mask: np.ndarray  # bool 2-D (all False for normal)
    label: str  # "normal" | "benign" | "malignant"
    view: str
    laterality: str
    roi: tuple[int, int, int] | None  # (cx, cy, r) top-left origin; None for normal
    marker_box: tuple[int, int, int, int]  # (x, y, w, h) of the burned-in label
    lesion_kind: str = ""  # "" (normal), "mass" or "calcifications"


@dataclass(frozen=True)
class _Lesion:
    """A lesion in the canonical frame (pixels)."""

    label: str
    kind: str
    cx: float
    cy: float
    radius: float  # mass radius or calcification cluster radius
    contrast: float
    extent: float  # radius of the circle that holds the whole lesion (the ROI)
    shape: dict  # kind-specific parameters


@dataclass(frozen=True)
class _Anatomy:
    """Patient-level parameters shared by every view."""

    laterality: str
    extent: float  # superellipse semi-axis from the chest wall towards the nipple
    half_height: float  # superellipse semi-axis along the chest wall
    centre_y: float
    exponent: float
    fat_level: float
    density: float  # amplitude of the fibroglandular tissue
    density_threshold: float
    texture: np.ndarray  # float32 (S, S) in [0, 1], canonical frame
    mlo_angle: float  # radians, rotation of the breast in the MLO view
    mlo_shift: float  # pixels, vertical shift of the breast in the MLO view
    pectoral_width: float
    pectoral_height: float
    pectoral_curve: float
    lesion: _Lesion | None


def _check_options(image_size: int, difficulty: float, views: tuple[str, ...]) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    views = tuple(views)
    if not views or len(set(views)) != len(views) or any(v not in VIEWS for v in views):
        raise ValueError(f"views must be distinct values from {VIEWS}, got {views!r}")


def _check_seed(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a size x size image, read-only float32."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def _smooth_noise(rng: np.random.Generator, size: int, grids=(4, 8, 16, 32),
                  weights=(1.0, 0.6, 0.35, 0.2)) -> np.ndarray:
    """Fractal-like smooth noise in [0, 1]: upsampled random grids of several scales."""
    total = np.zeros((size, size), np.float32)
    for cells, weight in zip(grids, weights):
        coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        total += weight * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    low, high = float(total.min()), float(total.max())
    return (total - low) / max(high - low, 1e-6)


def _make_lesion(rng: np.random.Generator, label: str, size: int, difficulty: float,
                 anatomy_shape: tuple[float, float, float, float]) -> _Lesion:
    """Draw a lesion of the given class somewhere well inside the breast."""
    extent, half_height, centre_y, exponent = anatomy_shape
    while True:  # rejection sampling of a centre inside the inner breast
        u, v = rng.uniform(0.25, 0.75), rng.uniform(-0.6, 0.6)
        if abs(u) ** exponent + abs(v) ** exponent <= 0.55:
            break
    cx, cy = u * extent, centre_y + v * half_height
    kind = "mass" if rng.random() < MASS_PROBABILITY else "calcifications"
    shape: dict = {}
    if kind == "mass":
        radius = size * rng.uniform(0.07, 0.10) * (1.0 - 0.3 * difficulty)
        contrast = rng.uniform(0.85, 1.15) * (900.0 - 500.0 * difficulty)
        shape["axis_ratio"] = rng.uniform(0.7, 1.0)
        shape["orientation"] = rng.uniform(0.0, np.pi)
        harmonics = np.arange(2, 8)
        if label == "benign":  # smooth, at most slightly lobulated margin
            amplitudes = np.where(harmonics <= 4, 0.15 * difficulty / 3.0, 0.0)
            shape["edge"] = 0.04
            extent_out = radius * (1.0 + 0.15 * difficulty)
        else:  # irregular core with radiating spicules
            amplitudes = rng.uniform(0.5, 1.0, harmonics.size) * 0.35 / np.sqrt(harmonics.size)
            shape["edge"] = 0.2
            count = max(5, int(round(rng.uniform(0.8, 1.2) * (14 - 6 * difficulty))))
            shape["spike_angles"] = np.sort(rng.uniform(0.0, 2 * np.pi, count))
            shape["spike_lengths"] = radius * rng.uniform(1.7, 2.6, count) * (1 - 0.3 * difficulty)
            shape["spike_width"] = max(0.8, 0.012 * size)
            shape["spike_contrast"] = 0.9 - 0.3 * difficulty
            extent_out = float(shape["spike_lengths"].max())
        shape["harmonics"] = harmonics
        shape["amplitudes"] = amplitudes
        shape["phases"] = rng.uniform(0.0, 2 * np.pi, harmonics.size)
    else:
        if label == "benign":  # a few coarse, large, round calcifications
            count = int(rng.integers(3, 7))
            radius = size * rng.uniform(0.04, 0.06)
            sizes = size * rng.uniform(0.01, 0.016, count)
            aspects = np.ones(count)
            contrast = 1400.0 - 600.0 * difficulty
        else:  # many fine, pleomorphic (elongated, uneven) micro-calcifications, tightly clustered
            count = int(rng.integers(12, 31))
            radius = size * rng.uniform(0.03, 0.045)
            sizes = size * rng.uniform(0.0025, 0.005, count)
            aspects = rng.uniform(1.0, 3.0, count)
            contrast = 1200.0 - 500.0 * difficulty
        sizes = np.maximum(sizes, 0.6)
        angle = rng.uniform(0.0, 2 * np.pi, count)
        distance = radius * np.sqrt(rng.uniform(0.0, 1.0, count))
        shape["offsets"] = np.stack([distance * np.cos(angle), distance * np.sin(angle)], 1)
        shape["sizes"] = sizes
        shape["aspects"] = aspects
        shape["orientations"] = rng.uniform(0.0, np.pi, count)
        shape["brightness"] = rng.uniform(0.7, 1.0, count)
        extent_out = radius + 2.0 * float(sizes.max())
    return _Lesion(label, kind, float(cx), float(cy), float(radius), float(contrast),
                   float(extent_out), shape)


def _make_anatomy(patient_index: int, seed: int, size: int, difficulty: float,
                  label: str | None) -> tuple[_Anatomy, str]:
    """Draw one patient's anatomy (and lesion). Anatomy draws come first, so they do not
    depend on the label."""
    rng = np.random.default_rng([seed, patient_index])
    laterality = LATERALITIES[int(rng.integers(0, 2))]
    extent = size * rng.uniform(0.5, 0.75)
    half_height = size * rng.uniform(0.33, 0.44)
    centre_y = size * rng.uniform(0.46, 0.54)
    exponent = rng.uniform(1.8, 2.6)
    fat_level = rng.uniform(1050.0, 1350.0)
    density = rng.uniform(400.0, 800.0) * (1.0 + 0.6 * difficulty * rng.random())
    density_threshold = rng.uniform(0.35, 0.55) - 0.15 * difficulty
    texture = _smooth_noise(rng, size)
    mlo_angle = np.deg2rad(rng.uniform(8.0, 16.0))
    mlo_shift = -size * rng.uniform(0.0, 0.05)
    pectoral_width = size * rng.uniform(0.25, 0.4)
    pectoral_height = size * rng.uniform(0.45, 0.65)
    pectoral_curve = rng.uniform(0.85, 1.2)
    chosen = label if label is not None else LABELS[int(rng.integers(0, 3))]
    lesion = None
    if chosen != "normal":
        lesion = _make_lesion(rng, chosen, size, difficulty,
                              (extent, half_height, centre_y, exponent))
    anatomy = _Anatomy(laterality, float(extent), float(half_height), float(centre_y),
                       float(exponent), float(fat_level), float(density), float(density_threshold),
                       texture, float(mlo_angle), float(mlo_shift), float(pectoral_width),
                       float(pectoral_height), float(pectoral_curve), lesion)
    return anatomy, chosen


def _canonical_coords(anatomy: _Anatomy, view: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of the (unmirrored) view, its position in the canonical frame."""
    xs, ys = _grid(size)
    if view == "CC":
        return xs, ys
    cos, sin = np.cos(anatomy.mlo_angle), np.sin(anatomy.mlo_angle)
    dy = ys - anatomy.centre_y - anatomy.mlo_shift
    return (cos * xs + sin * dy).astype(np.float32), (cos * dy - sin * xs + anatomy.centre_y).astype(np.float32)


def _to_view(anatomy: _Anatomy, view: str, x: float, y: float) -> tuple[float, float]:
    """Map a canonical point into the (unmirrored) view."""
    if view == "CC":
        return x, y
    cos, sin = np.cos(anatomy.mlo_angle), np.sin(anatomy.mlo_angle)
    dy = y - anatomy.centre_y
    return cos * x - sin * dy, sin * x + cos * dy + anatomy.centre_y + anatomy.mlo_shift


def _mass(lesion: _Lesion, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensity and mask of a mass, given offsets from its centre (canonical frame)."""
    s = lesion.shape
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    along = np.cos(s["orientation"]) * dx + np.sin(s["orientation"]) * dy
    across = (np.cos(s["orientation"]) * dy - np.sin(s["orientation"]) * dx) / s["axis_ratio"]
    margin = 1.0 + np.tensordot(s["amplitudes"], np.cos(np.multiply.outer(s["harmonics"], theta)
                                                      + s["phases"][:, None, None]), axes=1)
    distance = np.hypot(along, across) / (lesion.radius * margin)
    core = 1.0 / (1.0 + np.exp(np.clip((distance - 1.0) / s["edge"], -30, 30)))
    value = core * (0.8 + 0.2 * np.sqrt(np.clip(1.0 - distance ** 2, 0.0, 1.0)))
    mask = distance <= 1.0
    if "spike_angles" in s:
        gap = np.angle(np.exp(1j * (theta[None] - s["spike_angles"][:, None, None])))
        offset = rho[None] * np.abs(np.sin(gap))
        forward = np.cos(gap) > 0
        taper = np.clip(1.0 - rho[None] / s["spike_lengths"][:, None, None], 0.0, 1.0)
        spikes = (np.exp(-(offset / s["spike_width"]) ** 2) * taper * forward).max(axis=0)
        value = np.maximum(value, s["spike_contrast"] * spikes)
        mask |= spikes > 0.3
    return lesion.contrast * value, mask


def _calcifications(lesion: _Lesion, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensity and mask of a calcification group, given offsets from its centre."""
    s = lesion.shape
    value = np.zeros(dx.shape, np.float32)
    for (ox, oy), size, aspect, orient, bright in zip(s["offsets"], s["sizes"], s["aspects"],
                                                      s["orientations"], s["brightness"]):
        u, v = dx - ox, dy - oy
        along = (np.cos(orient) * u + np.sin(orient) * v) / (size * aspect)
        across = (np.cos(orient) * v - np.sin(orient) * u) / size
        value = np.maximum(value, bright * np.exp(-(along ** 2 + across ** 2) ** 2))
    return lesion.contrast * value, value > 0.35


def _render_lesion(anatomy: _Anatomy, view: str, cx: np.ndarray, cy: np.ndarray,
                   size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Lesion intensity and mask over the whole view, and its ROI in the unmirrored view."""
    lesion = anatomy.lesion
    assert lesion is not None
    vx, vy = _to_view(anatomy, view, lesion.cx, lesion.cy)
    reach = int(np.ceil(lesion.extent)) + 3
    x0, x1 = max(0, int(vx) - reach), min(size, int(vx) + reach + 1)
    y0, y1 = max(0, int(vy) - reach), min(size, int(vy) + reach + 1)
    dx = cx[y0:y1, x0:x1] - lesion.cx
    dy = cy[y0:y1, x0:x1] - lesion.cy
    draw = _mass if lesion.kind == "mass" else _calcifications
    patch_value, patch_mask = draw(lesion, dx, dy)
    value = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), bool)
    value[y0:y1, x0:x1] = patch_value
    mask[y0:y1, x0:x1] = patch_mask
    roi = (int(round(vx)), int(round(vy)), int(np.ceil(lesion.extent)))
    return value, mask, roi


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """Fill the convex hull of a boolean mask."""
    points = cv2.findNonZero(mask.astype(np.uint8))
    hull = np.zeros(mask.shape, np.uint8)
    if points is not None:
        cv2.fillPoly(hull, [cv2.convexHull(points)], 1)
    return hull.astype(bool)


def _draw_marker(image: np.ndarray, text: str, chest_wall_left: bool) -> tuple[int, int, int, int]:
    """Burn a bright boxed label into the upper corner away from the chest wall."""
    size = image.shape[0]
    scale = 0.45 * size / 256
    thickness = max(1, int(round(size / 256)))
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad, margin = max(2, size // 64), max(2, size // 64)
    w, h = text_w + 2 * pad, text_h + baseline + 2 * pad
    x = size - margin - w if chest_wall_left else margin
    y = margin
    canvas = np.zeros(image.shape, np.uint8)
    cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), 255, thickness)
    cv2.putText(canvas, text, (x + pad, y + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                thickness, cv2.LINE_8)
    image[canvas > 0] = MARKER_VALUE
    return int(x), int(y), int(w), int(h)


def _render_view(anatomy: _Anatomy, view: str, label: str, size: int, difficulty: float,
                 noise_rng: np.random.Generator) -> Phantom:
    """Render one view of a patient."""
    cx, cy = _canonical_coords(anatomy, view, size)
    xs, ys = _grid(size)
    shape_value = ((np.abs(cx) / anatomy.extent) ** anatomy.exponent
                   + (np.abs(cy - anatomy.centre_y) / anatomy.half_height) ** anatomy.exponent)
    breast = shape_value <= 1.0
    texture = anatomy.texture
    pectoral = np.zeros_like(breast)
    if view == "MLO":
        texture = cv2.remap(anatomy.texture, cx, cy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        pw, ph, q = anatomy.pectoral_width, anatomy.pectoral_height, anatomy.pectoral_curve
        pectoral = (xs / pw) ** q + (ys / ph) ** q <= 1.0
        breast = _convex_hull(breast | pectoral)  # the axillary tail joins muscle and breast
    mask_u8 = breast.astype(np.uint8)
    pad = max(2, size // 16)
    padded = cv2.copyMakeBorder(mask_u8, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[pad:-pad, pad:-pad]
    thickness = np.sqrt(np.clip(depth / (0.06 * size), 0.0, 1.0))
    skin_width = max(1, int(round(size / 160)))
    kernel = np.ones((2 * skin_width + 1, 2 * skin_width + 1), np.uint8)
    skin = breast & (cv2.erode(mask_u8, kernel) == 0)

    glandular = np.clip((texture - anatomy.density_threshold) / (1.0 - anatomy.density_threshold), 0, 1)
    near_chest_wall = np.exp(-np.clip(cx, 0, None) / (0.6 * anatomy.extent))
    tissue = (anatomy.fat_level * (0.6 + 0.4 * thickness)
              + anatomy.density * glandular ** 0.8 * near_chest_wall * thickness)
    tissue += 250.0 * (texture - 0.5)  # faint fatty texture everywhere
    if view == "MLO":
        muscle = 2650.0 + 250.0 * texture
        tissue = np.where(pectoral, muscle, tissue)
    background = 140.0 + 60.0 * texture[::-1, ::-1]
    image = np.where(breast, tissue, background).astype(np.float32)
    image[skin] += 650.0

    lesion_mask = np.zeros((size, size), bool)
    roi = None
    if anatomy.lesion is not None:
        lesion_value, lesion_mask, roi = _render_lesion(anatomy, view, cx, cy, size)
        lesion_mask &= breast
        image += lesion_value * breast
    image += noise_rng.standard_normal((size, size), dtype=np.float32) * (18.0 + 10.0 * difficulty)

    if anatomy.laterality == "R":  # mirror: the chest wall goes to the right edge
        image, breast, lesion_mask = image[:, ::-1], breast[:, ::-1], lesion_mask[:, ::-1]
        if roi is not None:
            roi = (size - 1 - roi[0], roi[1], roi[2])
    image = np.ascontiguousarray(image)
    marker_box = _draw_marker(image, f"{anatomy.laterality} {view}", anatomy.laterality == "L")
    pixels = np.clip(image, 0, MAX_VALUE).astype(np.uint16)
    return Phantom(pixels, np.ascontiguousarray(breast), np.ascontiguousarray(lesion_mask), label,
                   view, anatomy.laterality, roi, marker_box,
                   anatomy.lesion.kind if anatomy.lesion is not None else "")


def make_patient(patient_index: int, *, seed: int, image_size: int = 256, difficulty: float = 0.5,
                 label: str | None = None, views: tuple[str, ...] = ("CC", "MLO")) -> list[Phantom]:
    """Render the views of one synthetic patient; same arguments give identical pixels.

    ``label=None`` draws the class from the patient's own random stream. The anatomy (shape,
    texture, laterality) depends only on ``seed`` and ``patient_index``, not on the label.
    """
    _check_seed("seed", seed)
    _check_seed("patient_index", patient_index)
    _check_options(image_size, difficulty, views)
    if label is not None and label not in LABELS:
        raise ValueError(f"label must be one of {LABELS} or None, got {label!r}")
    anatomy, chosen = _make_anatomy(int(patient_index), int(seed), int(image_size),
                                    float(difficulty), label)
    phantoms = []
    for view in views:
        noise_rng = np.random.default_rng([seed, patient_index, _VIEW_CODES[view]])
        phantoms.append(_render_view(anatomy, view, chosen, int(image_size), float(difficulty),
                                     noise_rng))
    return phantoms


def balanced_labels(n_patients: int, class_balance: tuple[float, float, float],
                    seed: int) -> list[str]:
    """Patient labels in exact proportions (largest remainder), shuffled with ``seed``."""
    weights = np.asarray(class_balance, dtype=float)
    if weights.shape != (3,) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("class_balance must be three non-negative weights for "
                         f"{LABELS} with a positive sum, got {class_balance!r}")
    shares = weights / weights.sum() * n_patients
    counts = np.floor(shares).astype(int)
    remainder_order = np.argsort(-(shares - counts), kind="stable")
    counts[remainder_order[: n_patients - counts.sum()]] += 1
    labels = np.repeat(np.array(LABELS), counts)
    return [str(x) for x in np.random.default_rng([seed]).permutation(labels)]


def generate(n_patients: int, *, seed: int = 0, image_size: int = 256, difficulty: float = 0.5,
             class_balance: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
             views: tuple[str, ...] = ("CC", "MLO")) -> Iterator[tuple[str, Phantom]]:
    """Yield ``(patient_id, phantom)`` for patients ``SYN-0001`` .. ``SYN-<n_patients>``.

    Labels follow ``class_balance`` (normal, benign, malignant) exactly, in a seeded order.
    Patient ``i`` is ``make_patient(i, seed=seed, label=<its label>, ...)``.
    """
    if not isinstance(n_patients, (int, np.integer)) or n_patients < 1:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    _check_seed("seed", seed)
    _check_options(image_size, difficulty, views)
    labels = balanced_labels(int(n_patients), class_balance, int(seed))
    for index, label in enumerate(labels, start=1):
        patient_id = f"SYN-{index:04d}"
        for phantom in make_patient(index, seed=seed, image_size=image_size,
                                    difficulty=difficulty, label=label, views=tuple(views)):
            yield patient_id, phantom
