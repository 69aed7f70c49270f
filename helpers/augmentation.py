"""Data augmentation: each paper's scheme as Keras 3 preprocessing layers, seeded per batch.

A :class:`Scheme` (registry :data:`SCHEMES`, one per paper) is a list of :class:`Transform`
entries, each a ``keras.layers.Random*`` layer with arguments computed from the paper's recipe in
:mod:`helpers.studies` (the only place the papers' numbers live). :func:`build_augmenter` turns a
scheme into an :class:`Augmenter`, a callable ``(x, step) -> x`` for training batches: the same
seed and step always give the same output, and different steps give different draws.

Value range: the arrays reaching the augmenter are clean images in ``[0, 1]`` (a preset ends
there; normalisation is the model's first layer, after augmentation). Every layer runs on that
range (brightness and contrast with ``value_range=(0, 1)``, constant fills with 0, the darkest
value), outputs are clipped to it, and an input outside it is an error. So a brightness ``0.2``
shifts by 20 % of the range, whatever the backbone's or the paper's normalisation.

Augmentation belongs to the training split only, after the split: :func:`expand_offline` (paper
000's offline expansion) refuses any row whose split is not ``"train"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from helpers import backend  # noqa: F401  (imports Keras quietly)
import keras
import numpy as np
import pandas as pd

from helpers import studies

UNSTATED_AMOUNTS: Mapping[str, float] = MappingProxyType({
    "translate": 0.1,   # fraction of height / width
    "shear": 0.1,       # shear factor (tangent of the shear angle, about 5.7 degrees)
    "brightness": 0.1,  # fraction of the value range
    "contrast": 0.1,    # contrast factor drawn from [0.9, 1.1]
})
"""Amounts chosen here for transforms a paper names without a setting (paper 003)."""

OFFLINE_CHUNK = 64
"""Images augmented per call in :func:`expand_offline` (bounds memory; fixed, so output is stable)."""
VALUE_TOLERANCE = 1e-3
"""How far outside [0, 1] an input may be (rounding) before the augmenter calls it an error."""


@dataclass(frozen=True)
class Transform:
    """One random transform: what the paper states and the Keras layer that does it."""

    name: str
    paper: str
    layer: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        if not self.layer.startswith("Random") or not hasattr(keras.layers, self.layer):
            raise ValueError(f"Transform {self.name!r}: keras.layers has no {self.layer!r}")
        object.__setattr__(self, "arguments", MappingProxyType(dict(self.arguments)))

    def build(self, seed: int = 0) -> keras.layers.Layer:
        """A new layer of this transform, its random state started from ``seed``."""
        layer = getattr(keras.layers, self.layer)(**self.arguments, seed=seed)
        if not isinstance(getattr(layer, "generator", None), keras.random.SeedGenerator):
            raise TypeError(f"Transform {self.name!r}: keras.layers.{self.layer} keeps no "
                            "SeedGenerator in `.generator`, so it cannot be reseeded per step")
        return layer


@dataclass(frozen=True)
class Scheme:
    """A paper's augmentation: its transforms, applied in order, and what was chosen here."""

    name: str
    study: str | None
    description: str
    transforms: tuple[Transform, ...]


def _aug(study: str) -> Mapping[str, Any]:
    return studies.get_study(study).recipe.augmentation


def _degrees(value: Any) -> tuple[float, float]:
    """A rotation in degrees (symmetric scalar or ``(low, high)``) as Keras' fraction of a turn."""
    low, high = (-value, value) if np.isscalar(value) else value
    return low / 360.0, high / 360.0


def _paper000() -> Scheme:
    aug = _aug("000")
    nearest = {"fill_mode": "nearest", "fill_value": 0.0}
    shear = math.tan(math.radians(aug["shear_deg"]))
    stated = ", ".join(key for key, value in aug.items() if value is None)
    return Scheme(
        name="paper000",
        study="000",
        description=(
            "Mahmood et al. 2021, Table 1, with Keras' ImageDataGenerator (so its default fill, "
            "'nearest', is used). Approximations: ImageDataGenerator draws one affine transform "
            "about the image centre; here the layers run one after another and Keras shears about "
            "the top-left corner (which adds a shift); 'crop and pad' is not an ImageDataGenerator "
            "setting (it is imgaug's CropAndPad, cropping or padding each side): it is done as an "
            "independent zoom in or out of each axis with zero (darkest) padding. Not applied: "
            f"{stated} (named in the text without settings, absent from Table 1)."
        ),
        transforms=(
            Transform("rotation", f"{aug['rotation_deg']} (degrees, +/-)", "RandomRotation",
                      {"factor": _degrees(aug["rotation_deg"]), **nearest}),
            Transform("width/height shift",
                      f"{aug['width_shift']} / {aug['height_shift']} (fraction of width / height)",
                      "RandomTranslation",
                      {"height_factor": aug["height_shift"], "width_factor": aug["width_shift"], **nearest}),
            Transform("shear", f"{aug['shear_deg']} (degrees; units not printed)", "RandomShear",
                      {"x_factor": shear, "y_factor": 0.0, **nearest},
                      note=f"factor tan({aug['shear_deg']} deg) = {shear:.3f}, sign random"),
            Transform("zoom", f"{aug['zoom']} (zoom range)", "RandomZoom",
                      {"height_factor": aug["zoom"], "width_factor": aug["zoom"], **nearest},
                      note="each axis drawn from [1 - z, 1 + z], as ImageDataGenerator does"),
            Transform("crop and pad", f"{aug['crop_and_pad']}", "RandomZoom",
                      {"height_factor": aug["crop_and_pad"], "width_factor": aug["crop_and_pad"],
                       "fill_mode": "constant", "fill_value": 0.0},
                      note="approximation: independent zoom in (crop) or out (pad with zeros) per axis"),
        ),
    )


def _paper001() -> Scheme:
    recipe = studies.get_study("001").recipe
    aug = recipe.augmentation
    height, width = recipe.input_size
    low, high = aug["translate_px"]
    constant = {"fill_mode": "constant", "fill_value": 0.0}
    transforms = [
        Transform("rotation", f"{aug['rotation_deg']} (degrees)", "RandomRotation",
                  {"factor": _degrees(aug["rotation_deg"]), **constant}),
    ]
    if aug["x_reflection"]:
        transforms.append(Transform("X reflection", "yes", "RandomFlip", {"mode": "horizontal"},
                                    note="MATLAB's RandXReflection flips left-right"))
    transforms.append(Transform(
        "translation", f"{aug['translate_px']} (pixels, X and Y)", "RandomTranslation",
        {"height_factor": (low / height, high / height), "width_factor": (low / width, high / width),
         **constant},
        note=(f"pixels of the paper's {height}x{width} input, as a fraction of the image: "
              f"+/-{high / height:.3f}, the same share of the image at any size")))
    return Scheme(
        name="paper001",
        study="001",
        description=(
            "Bokade et al. 2024, section 3.1 (MATLAB imageDataAugmenter, whose fill is 0: here a "
            "constant fill with the darkest value). The translation in pixels is converted when "
            "the scheme is built into a fraction of the paper's input size, so a smaller profile "
            "image is shifted by the same share of its side (at the paper's size, the same pixels)."
        ),
        transforms=tuple(transforms),
    )


def _paper002() -> Scheme:
    aug = _aug("002")
    return Scheme(
        name="paper002",
        study="002",
        description=(
            "Kumar et al. 2022, from the paper's code: RandomBrightness, RandomFlip, "
            "RandomRotation in that order with Keras' defaults (fill 'reflect'). The code's "
            "brightness runs on 0-255 images with value_range (0, 255); here on the unit range, "
            "the same share. The method text also names zoom, which the code lacks (not applied)."
        ),
        transforms=(
            Transform("brightness", f"{aug['brightness_factor']} (RandomBrightness factor)",
                      "RandomBrightness", {"factor": aug["brightness_factor"], "value_range": (0.0, 1.0)}),
            Transform("flip", f"{aug['flip']}", "RandomFlip", {"mode": aug["flip"]}),
            Transform("rotation", f"{aug['rotation_factor']} (fraction of a full turn)", "RandomRotation",
                      {"factor": aug["rotation_factor"]},
                      note=f"+/-{aug['rotation_factor'] * 360:g} degrees"),
        ),
    )


def _paper003() -> Scheme:
    aug = _aug("003")
    small, large = aug["scale"]
    zoom = (1.0 / large - 1.0, 1.0 / small - 1.0)  # Keras zoom = 1 / scale - 1
    chosen = UNSTATED_AMOUNTS
    not_stated = "not stated (chosen here)"
    return Scheme(
        name="paper003",
        study="003",
        description=(
            "Akhi et al., section III D, applied on the fly. The paper gives amounts only for "
            "rotation and scale; translation, shear, brightness and contrast amounts are chosen "
            f"here (helpers.augmentation.UNSTATED_AMOUNTS: {dict(chosen)}). Fill mode not stated: "
            "Keras' default 'reflect'. Scale s is a zoom of 1/s - 1 (uniform in the zoom, not in s)."
        ),
        transforms=(
            Transform("rotation", f"{aug['rotation_deg']} (degrees)", "RandomRotation",
                      {"factor": _degrees(aug["rotation_deg"])}),
            Transform("translation", not_stated, "RandomTranslation",
                      {"height_factor": chosen["translate"], "width_factor": chosen["translate"]}),
            Transform("scale", f"{aug['scale']} (times the size)", "RandomZoom",
                      {"height_factor": zoom, "width_factor": None},
                      note="same factor on both axes (keeps the aspect ratio)"),
            Transform("flip", f"{aug['flip']}", "RandomFlip", {"mode": aug["flip"]}),
            Transform("shear", not_stated, "RandomShear",
                      {"x_factor": chosen["shear"], "y_factor": chosen["shear"]}),
            Transform("brightness", not_stated, "RandomBrightness",
                      {"factor": chosen["brightness"], "value_range": (0.0, 1.0)}),
            Transform("contrast", not_stated, "RandomContrast",
                      {"factor": chosen["contrast"], "value_range": (0.0, 1.0)}),
        ),
    )


SCHEMES: dict[str, Scheme] = {
    "none": Scheme("none", None, "No augmentation: the batch passes through unchanged.", ()),
    "paper000": _paper000(),
    "paper001": _paper001(),
    "paper002": _paper002(),
    "paper003": _paper003(),
}
"""Scheme name -> :class:`Scheme`. Paper 004 states no augmentation settings: use ``none``."""


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name`` (KeyError listing the known names)."""
    if name not in SCHEMES:
        raise KeyError(f"unknown augmentation scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def scheme_for_study(study: str) -> str:
    """The scheme study ``"000"``..``"004"``'s recipe names (``none`` where it gives no augmentation)."""
    return studies.get_study(study).recipe.augmentation_scheme  # KeyError for an unknown study


def scheme_table(names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per transform: scheme, transform, what the paper states, Keras layer, arguments, note."""
    rows = []
    for name in names if names is not None else list(SCHEMES):
        scheme = get_scheme(name)
        for transform in scheme.transforms:
            arguments = ", ".join(f"{key}={_short(value)}" for key, value in transform.arguments.items())
            rows.append({"scheme": name, "transform": transform.name, "paper": transform.paper,
                         "layer": transform.layer, "arguments": arguments, "note": transform.note})
    return pd.DataFrame(rows, columns=["scheme", "transform", "paper", "layer", "arguments", "note"])


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return repr(value)


@dataclass(frozen=True)
class Augmenter:
    """A seeded scheme for batches ``(N, H, W, C)``: ``augmenter(x, step)`` -> same shape and dtype.

    Each transform's layer is built once; before every call its random state is reset to a seed
    drawn from ``(seed, step, transform index)``, so the output depends only on the seed, the
    step and the batch (not on earlier calls). Resetting, rather than building new layers per
    call, keeps memory flat over long training runs. Not for concurrent calls from several
    threads (the layers are shared). Inputs must be clean images in [0, 1] (see the module
    docstring); anything else is an error.
    """

    scheme: Scheme
    image_size: tuple[int, int]
    seed: int
    layers: tuple[keras.layers.Layer, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(t.build() for t in self.scheme.transforms))

    def layer_seed(self, step: int, index: int) -> int:
        """The seed of transform ``index`` at ``step``."""
        state = np.random.SeedSequence([self.seed, step, index]).generate_state(1)[0]
        return int(state) % (2**31 - 1)

    def _check(self, x: np.ndarray, step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"augmenter {self.scheme.name}: step must be an int >= 0, got {step!r}")
        if x.ndim != 4 or tuple(x.shape[1:3]) != tuple(self.image_size):
            raise ValueError(f"augmenter {self.scheme.name}: expected a batch (N, {self.image_size[0]}, "
                             f"{self.image_size[1]}, C), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"augmenter {self.scheme.name}: expected float images, got {x.dtype}")
        if x.size and not np.isfinite(x).all():
            raise ValueError(f"augmenter {self.scheme.name}: the batch holds NaN or infinite values")
        if x.size and (x.min() < -VALUE_TOLERANCE or x.max() > 1 + VALUE_TOLERANCE):
            raise ValueError(
                f"augmenter {self.scheme.name}: values [{x.min():.4g}, {x.max():.4g}] leave [0, 1]; "
                "augment the clean images a preset prepares (normalisation comes after "
                "augmentation, inside the model)")

    def __call__(self, x: np.ndarray, step: int) -> np.ndarray:
        x = np.asarray(x)
        self._check(x, step)
        if not self.scheme.transforms or len(x) == 0:
            return x.copy()
        unit = np.clip(x.astype(np.float32), 0.0, 1.0)
        for index, layer in enumerate(self.layers):
            state = layer.generator.state
            state.assign(np.array([self.layer_seed(step, index), 0]).astype(state.dtype))
            unit = layer(unit, training=True)
        return np.clip(keras.ops.convert_to_numpy(unit), 0.0, 1.0).astype(x.dtype)


def build_augmenter(scheme: str, *, image_size: int | tuple[int, int], seed: int) -> Augmenter:
    """An :class:`Augmenter` for the registered ``scheme`` and clean images of ``image_size`` (h, w)."""
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or any(int(v) < 1 for v in size):
        raise ValueError(f"build_augmenter: image_size must be positive (h, w), got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"build_augmenter: seed must be an int >= 0, got {seed!r}")
    return Augmenter(get_scheme(scheme), (int(size[0]), int(size[1])), int(seed))


def variants(image: np.ndarray, augmenter: Augmenter, *, count: int = 7, step: int = 0) -> np.ndarray:
    """``(count + 1, H, W, C)``: the image itself, then ``count`` augmented versions of it."""
    image = np.asarray(image)
    copies = augmenter(np.repeat(image[None], count, axis=0), step)
    return np.concatenate([image[None], copies])


def expand_offline(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, factor: int,
                   augmenter: Augmenter, split: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paper 000's offline expansion: each image kept plus ``factor - 1`` augmented copies.

    For the training split only, after the split: ``split`` is the manifest's split column for
    these rows, and any row not ``"train"`` is refused. Returns ``(x, y, groups)`` with
    ``factor * N`` rows: the originals first, then copy 1 of every row, copy 2, ...; row
    ``i + k * N`` is copy ``k`` of row ``i`` with its label and group (patient).
    """
    x, y, groups = np.asarray(x), np.asarray(y), np.asarray(groups)
    split = np.asarray(split, dtype=object)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"expand_offline: factor must be an int >= 1, got {factor!r}")
    lengths = {"x": len(x), "y": len(y), "groups": len(groups), "split": len(split)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"expand_offline: x, y, groups and split differ in length: {lengths}")
    not_train = np.flatnonzero(split != "train")
    if len(not_train):
        found = sorted({str(value) for value in split[not_train]})
        raise ValueError(
            f"expand_offline: {len(not_train)} of {len(split)} rows are not in the training split "
            f"(splits {found}; first rows {not_train[:5].tolist()}): augment after the split, "
            "on train only, or augmented copies of test images leak into training")
    chunks = max(1, math.ceil(len(x) / OFFLINE_CHUNK))
    copies = [x]
    for copy in range(1, factor):
        parts = [augmenter(x[start:start + OFFLINE_CHUNK], (copy - 1) * chunks + chunk)
                 for chunk, start in enumerate(range(0, len(x), OFFLINE_CHUNK))]
        copies.append(np.concatenate(parts) if parts else x[:0].copy())
    return np.concatenate(copies), np.tile(y, factor), np.tile(groups, factor)


def augmented_patches(scheme: str, sources: dict[str, tuple[np.ndarray, tuple[float, float, float]]], *,
                      size: int, seed: int, count: int = 7) -> dict[str, np.ndarray]:
    """For each named ``(image, roi)``: the lesion patch prepared with the scheme's paper preset,
    then ``count`` augmented versions (for :func:`helpers.figures.augmentation_grid`)."""
    from helpers import preprocessing

    preset = studies.get_study(get_scheme(scheme).study).recipe.preset
    augmenter = build_augmenter(scheme, image_size=size, seed=seed)
    return {name: variants(preprocessing.apply_preset(image, preset, image_size=size, roi=roi), augmenter,
                           count=count)
            for name, (image, roi) in sources.items()}


def expand_then_split(x: np.ndarray, patients: np.ndarray, labels: np.ndarray, *, factor: int,
                      augmenter: "Augmenter", test_size: float, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """What *not* to do, for the lesson: expand every image ``factor`` times, then split images at
    random. Returns the expanded images and one row per image (``original``, ``patient_id``,
    ``label``, ``split``, ``leaked``: a test image whose augmented sibling is in training)."""
    from helpers import splits

    expanded_x = np.concatenate([x] + [augmenter(x, step) for step in range(1, factor)])
    table = pd.DataFrame({"original": np.tile(np.arange(len(x)), factor),
                          "patient_id": np.tile(patients, factor), "label": np.tile(labels, factor)})
    table = splits.naive_image_split(table, test_size=test_size, seed=seed)
    in_train = set(table.loc[table["split"] == "train", "original"])
    table["leaked"] = (table["split"] == "test") & table["original"].isin(in_train)
    return expanded_x, table
