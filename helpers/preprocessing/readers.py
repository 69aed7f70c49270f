"""Reading image files (PGM/PNG/JPEG/TIFF/BMP through OpenCV, DICOM through pydicom) into
arrays of their native dtype: :func:`read_image`, :data:`READERS`, :class:`ImageReadError`."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or of an unsupported kind."""


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
