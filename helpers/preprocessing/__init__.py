"""Image preprocessing: reading, pure image steps, per-paper presets and a cache of prepared arrays.

Every step is a pure function ``image in -> image out`` registered in :data:`STEPS`. A
:class:`Preset` is a named list of steps with parameters (one per paper, in :data:`PRESETS`);
:func:`apply_preset` runs one on an image and :func:`prepare_arrays` runs one over a manifest,
caching the stacked result on disk under a key that hashes every input.

Conventions: steps take and return ``float32`` images (integer images are converted with
:func:`to_float` first; :func:`read_image` already gives float32 in [0, 1] for files of a stored
bit depth below their type's, e.g. a 12-bit DICOM), grey ``HxW`` or colour ``HxWx3``; masks are
``bool``.

A preset ends at a *clean image*: RGB, values in ``[0, 1]``, nothing specific to a backbone or to
its weights. The last stage, normalisation (the paper's per-image standardisation, or the
backbone's ImageNet convention when it starts from ImageNet weights), runs inside the model as a
layer (:class:`helpers.models.ImageNormalisation`), after augmentation; each preset names the
paper's normalisation in :attr:`Preset.normalisation`. Cached arrays are stored as float16, grey
presets with one channel, and memory-mapped when loaded, so a cache larger than memory streams
from disk (:func:`prepare_arrays`, which prepares them on every core).

The package's modules, lower ones first (each imports only those above it):

- ``readers``: :func:`read_image` (OpenCV formats and DICOM; the stored bit depth sets the scale;
  RLE DICOM through the pylibjpeg-rle plugin where installed), :func:`file_kind` (what a file is by
  its content), :class:`ImageReadError`;
- ``steps``: the step functions and :data:`STEPS`;
- ``presets``: :class:`Step`, :class:`Preset`, :data:`PRESETS`, lesion patches and
  :func:`apply_preset`;
- ``patches``: lesion-free patches drawn like lesion patches: :func:`assign_normal_radii` (a
  radius from the dataset's lesion radii, per manifest row) and :func:`normal_patch_roi` (a seeded
  position inside the breast, :func:`breast_mask`), :func:`in_breast_fraction`;
- ``cache``: :func:`prepare_arrays` (``workers``: processes, :func:`available_cores` by default),
  :func:`cache_key`, ``PREPROCESSING_VERSION``, :func:`as_rgb`, :func:`load_cache_file` (a cache
  file's arrays, memory-mapped).

Every public name is re-exported here: use ``helpers.preprocessing.X``.
"""

from __future__ import annotations

from helpers.preprocessing.cache import (
    CACHE_DTYPE,
    PARALLEL_MIN_IMAGES,
    PREPROCESSING_VERSION,
    PreparedArrays,
    as_rgb,
    available_cores,
    cache_key,
    load_cache_file,
    parse_roi,
    prepare_arrays,
)
from helpers.preprocessing.patches import (
    PATCH_RADIUS,
    PATCH_SEED,
    assign_normal_radii,
    breast_mask,
    in_breast_fraction,
    normal_patch_roi,
)
from helpers.preprocessing.presets import (
    CLEAN_TOLERANCE,
    MIN_PATCH_SIDE,
    PAPER003_NORMALISATION,
    PAPER003_NORMALISATIONS,
    PRESETS,
    RESCALING_STEPS,
    Preset,
    Step,
    apply_preset,
    breast_centred_roi,
    cut_patch,
    get_preset,
    patch_side,
    patch_window,
)
from helpers.preprocessing.readers import READERS, ImageReadError, file_kind, read_image
from helpers.preprocessing.steps import (
    CROP_STEPS,
    RESIZE_METHODS,
    STEPS,
    Size,
    bilateral_filter,
    clahe,
    contrast_stretch,
    downscale,
    gaussian_filter,
    grey_to_rgb,
    is_colour,
    median_filter,
    otsu_crop,
    otsu_crop_box,
    otsu_mask,
    remove_artefacts,
    resize,
    scale_01,
    to_float,
)

__all__ = [
    "CACHE_DTYPE", "CLEAN_TOLERANCE", "CROP_STEPS", "ImageReadError", "MIN_PATCH_SIDE",
    "PAPER003_NORMALISATION", "PAPER003_NORMALISATIONS", "PARALLEL_MIN_IMAGES", "PATCH_RADIUS", "PATCH_SEED",
    "PREPROCESSING_VERSION", "PRESETS", "PreparedArrays", "RESCALING_STEPS", "Preset", "READERS", "RESIZE_METHODS",
    "STEPS", "Size", "Step", "apply_preset", "as_rgb", "assign_normal_radii", "available_cores", "bilateral_filter",
    "breast_centred_roi", "breast_mask", "cache_key", "clahe", "contrast_stretch", "cut_patch", "downscale",
    "file_kind", "gaussian_filter", "get_preset", "grey_to_rgb", "in_breast_fraction", "is_colour", "load_cache_file",
    "median_filter", "normal_patch_roi", "otsu_crop", "otsu_crop_box", "otsu_mask", "parse_roi", "patch_side",
    "patch_window", "prepare_arrays", "read_image", "remove_artefacts", "resize", "scale_01",
    "to_float",
]
