"""Reading image files (PGM/PNG/JPEG/TIFF/BMP through OpenCV, DICOM through pydicom):
:func:`read_image`, :func:`file_kind`, :data:`READERS`, :class:`ImageReadError`.

What a file is comes from its content (its first bytes), not its name: a JPEG saved as ``.png``
is an error that says what it really is. A file that decodes only in part (a JPEG whose data
ends early, a truncated PNG, PGM or DICOM) is an error, never an image with a grey or black part.
libjpeg reports a premature end of JPEG data only as a message on stderr (and decodes the rest
grey), so the JPEG reader captures the process's stderr (file descriptor 2) while it decodes.

The stored bit depth, read from the file, decides the scale: DICOM ``BitsStored``; PGM the
header's maxval; PNG its bit depth, or fewer bits when an ``sBIT`` chunk says so (its samples
are then scaled to 16 bits as PNG requires, and shifted back here). A pixel above the stored
depth's largest value is an error. PNG without ``sBIT``, TIFF, JPEG and BMP carry no such field:
their 8- or 16-bit values are taken at the full range of their type (so a 12-bit image saved in
a 16-bit PNG without ``sBIT`` reads as 0..4095 of 65535).

RLE Lossless DICOM (the CBIS-DDSM sample) is decoded by the ``pylibjpeg-rle`` plugin when it is
installed (:data:`RLE_PLUGIN`; identical pixels, about 6x faster than pydicom's own decoder, which is
the fallback). A grey DICOM without a window or rescale to apply keeps its integers as they are
(no float round trip: the same values, a third of the time).
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from helpers.preprocessing.steps import unit_float


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or of an unsupported kind."""


def _fail(path: Path, problem: str) -> ImageReadError:
    return ImageReadError(f"{path}: {problem}")


# ----------------------------------------------------------------------------- what a file is

EXTENSION_KINDS: dict[str, str] = {
    ".pgm": "PGM", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
    ".bmp": "BMP", ".dcm": "DICOM", ".dicom": "DICOM",
}
"""File extension -> the kind of file (by content) it must hold."""

_KIND_SUFFIX = {"PGM": ".pgm", "PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "DICOM": ".dcm"}
_NOT_IMAGES = {"HTML page": "probably an error page saved by a failed download: download the file again",
               "XML document": "not an image: download or export the file again",
               "ZIP archive": "unpack it first", "gzip archive": "unpack it first",
               "7-Zip archive": "unpack it first", "RAR archive": "unpack it first"}


def _signatures(head: bytes) -> dict[str, bool]:
    text = head[:256].lstrip().lower()
    return {  # DICOM first: its 128-byte preamble may itself hold a TIFF header (dual-format files)
        "DICOM": head[128:132] == b"DICM",
        "PNG": head.startswith(b"\x89PNG\r\n\x1a\n"),
        "JPEG": head.startswith(b"\xff\xd8\xff"),
        "TIFF": head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
        "PGM": re.match(rb"P[1-6]\s", head[:3]) is not None,
        "BMP": head.startswith(b"BM") and len(head) >= 26,
        "GIF": head[:6] in (b"GIF87a", b"GIF89a"),
        "JPEG 2000": head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")),
        "WebP": head[:4] == b"RIFF" and head[8:12] == b"WEBP",
        "HTML page": text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")),
        "XML document": text.startswith(b"<?xml"),
        "ZIP archive": head.startswith(b"PK\x03\x04"),
        "gzip archive": head.startswith(b"\x1f\x8b"),
        "7-Zip archive": head.startswith(b"7z\xbc\xaf\x27\x1c"),
        "RAR archive": head.startswith(b"Rar!\x1a\x07"),
    }


def file_kind(head: bytes) -> str | None:
    """What a file is by its first bytes (at least 132 of them for DICOM), or None if unknown.

    Image kinds read here: "PNG", "JPEG", "TIFF", "BMP", "PGM" (any netpbm P1-P6), "DICOM"
    ("DICM" at offset 128). Others named so that errors can say what a file is: "GIF",
    "JPEG 2000", "WebP", "HTML page", "XML document" and archives (ZIP, gzip, 7-Zip, RAR).
    """
    return next((kind for kind, matches in _signatures(head).items() if matches), None)


def _check_kind(path: Path, head: bytes) -> None:
    """Raise ImageReadError when the content is not what the extension promises."""
    expected = EXTENSION_KINDS[path.suffix.lower()]
    kind = file_kind(head)
    if _signatures(head)[expected] or (kind is None and expected == "DICOM"):  # pydicom says what is wrong
        return
    if kind is None:
        raise _fail(path, f"{path.name} is not a {expected} file: its first bytes {head[:8]!r} are no "
                          "image format known here (corrupt, or not an image)")
    article = "an" if kind[0] in "AEHIOX" else "a"
    if kind in _NOT_IMAGES:
        raise _fail(path, f"{path.name} is {article} {kind} (by its content), not a {expected} image: "
                          f"{_NOT_IMAGES[kind]}")
    if kind in _KIND_SUFFIX:
        raise _fail(path, f"{path.name} is {article} {kind} file (by its content), not a {expected}: "
                          f"rename it to {path.stem}{_KIND_SUFFIX[kind]} (or convert it to {expected})")
    raise _fail(path, f"{path.name} is {article} {kind} file (by its content), not a {expected}, and "
                      f"{kind} is not read here: convert it to {expected}")


# ----------------------------------------------------------------------------- bit depth

def _unit(values: np.ndarray, max_value: int) -> np.ndarray:
    """Integer values of a stored depth below their type's as float32 in [0, 1]; full depth as is."""
    if max_value == np.iinfo(values.dtype).max:
        return values
    return unit_float(values, max_value)


def netpbm_header(head: bytes) -> tuple[list[bytes], int]:
    """The first four tokens of a netpbm header (magic number, width, height, maxval; ``#``
    comments skipped) and the offset just after the last one; fewer tokens where it ends early."""
    tokens: list[bytes] = []
    position = 0
    while len(tokens) < 4 and position < len(head):
        char = head[position:position + 1]
        if char == b"#":  # a comment runs to the end of the line
            end = head.find(b"\n", position)
            position = len(head) if end < 0 else end + 1
        elif char.isspace():
            position += 1
        else:
            start = position
            while position < len(head) and not head[position:position + 1].isspace() \
                    and head[position:position + 1] != b"#":
                position += 1
            tokens.append(head[start:position])
    return tokens, position


def _netpbm_maxval(data: bytes) -> int | None:
    """The maxval of a PGM/PPM header (P2, P3, P5, P6), None for bitmaps or a header not parsed."""
    tokens, end = netpbm_header(data[:1024])
    if len(tokens) < 4 or tokens[0] not in (b"P2", b"P3", b"P5", b"P6") or not data[end:end + 1].isspace():
        return None
    try:
        int(tokens[1]), int(tokens[2])
        return int(tokens[3])
    except ValueError:
        return None


def _png_significant_bits(data: bytes) -> tuple[int, int] | None:
    """(significant bits, bit depth) from a PNG's sBIT chunk when it has one and its channels
    agree, else None (palette images and images with alpha are left at their full depth)."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    depth, colour_type = data[24], data[25]
    channels = {0: 1, 2: 3}.get(colour_type)
    position = 8
    while channels and position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunk = data[position + 4:position + 8]
        if chunk in (b"IDAT", b"IEND"):
            break
        if chunk == b"sBIT":
            bits = set(data[position + 8:position + 8 + min(length, channels)])
            return (bits.pop(), depth) if len(bits) == 1 else None
        position += 12 + length
    return None


def _expanded(top: np.ndarray, bits: int, depth: int) -> list[np.ndarray]:
    """``bits``-bit values scaled to ``depth`` bits the ways PNG writers do it: shift, bit
    replication, linear."""
    wide = top.astype(np.uint32)
    replicated = np.zeros_like(wide)
    filled = 0
    while filled < depth:
        shift = depth - filled - bits
        replicated |= (wide << shift) if shift >= 0 else (wide >> -shift)
        filled += bits
    linear = np.rint(wide * ((2**depth - 1) / (2**bits - 1))).astype(np.uint32)
    return [wide << (depth - bits), replicated, linear]


def _png_unit(path: Path, img: np.ndarray, significant: tuple[int, int] | None) -> np.ndarray:
    """Undo the sBIT scaling: values of ``bits`` significant bits as float32 in [0, 1]."""
    if significant is None:
        return img
    bits, depth = significant
    if not 0 < bits < depth or img.dtype.itemsize * 8 != depth:
        return img
    top = img >> (depth - bits)
    if not any(np.array_equal(img, candidate) for candidate in _expanded(top, bits, depth)):
        raise _fail(path, f"its sBIT chunk says {bits} significant bits of {depth}, but the values are "
                          f"not scaled to {depth} bits as PNG requires (maximum {int(img.max())}): "
                          "the writer stored them unscaled; rewrite the file without sBIT or scaled")
    return _unit(top, 2**bits - 1)


# ----------------------------------------------------------------------------- OpenCV formats

_STDERR_LOCK = threading.Lock()
_LIBJPEG_CORRUPT = re.compile(r"^(Corrupt JPEG data|Premature end of JPEG file|Inconsistent progression)")


def _decode_capturing_libjpeg(data: bytes) -> tuple[np.ndarray | None, list[str]]:
    """``cv2.imdecode`` with the process's stderr captured, since libjpeg reports a premature end
    of data (and decodes the rest as grey) only as a message on stderr. Returns the image and
    libjpeg's corruption messages; anything else written meanwhile (by any thread) is passed on."""
    buffer = np.frombuffer(data, np.uint8)
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to capture (e.g. pythonw): decode unchecked
            return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED), []
        if sys.stderr is not None:
            sys.stderr.flush()
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                img = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
    problems = [line for line in text.splitlines() if _LIBJPEG_CORRUPT.match(line.strip())]
    others = "".join(line + "\n" for line in text.splitlines() if line not in problems)
    if others:
        os.write(2, others.encode())
    return img, problems


def _read_with_opencv(path: Path, color: bool) -> np.ndarray:
    """PGM/PNG/JPEG/TIFF/BMP through ``cv2.imdecode`` (which returns None on failure: checked)."""
    data = path.read_bytes()
    if not data:
        raise _fail(path, "file is empty")
    kind = EXTENSION_KINDS[path.suffix.lower()]
    if kind == "PNG" and b"IEND" not in data[-1024:]:
        raise _fail(path, "truncated PNG (no IEND chunk at the end)")
    if kind == "JPEG":
        img, problems = _decode_capturing_libjpeg(data)
        if problems:
            premature = any("premature end" in p.lower() for p in problems)
            raise _fail(path, ("truncated JPEG: its data ends early (libjpeg: premature end of data), so part "
                               "of the image is missing" if premature else "corrupt JPEG data")
                        + f" [{'; '.join(dict.fromkeys(problems))}]: the file is incomplete or damaged; "
                        "download or copy it again")
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise _fail(path, "OpenCV could not decode the file (corrupt or truncated?)")
    if img.dtype not in (np.uint8, np.uint16):
        raise _fail(path, f"unsupported pixel type {img.dtype} (expected 8- or 16-bit)")
    if kind == "PNG":
        img = _png_unit(path, img, _png_significant_bits(data))
    elif kind == "PGM" and (maxval := _netpbm_maxval(data)) is not None:
        if img.size and int(img.max()) > maxval:
            raise _fail(path, f"pixel value {int(img.max())} is above the header's maxval {maxval}")
        img = _unit(img, maxval) if maxval > 0 else img
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.stack([img] * 3, axis=-1) if color else img
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise _fail(path, f"unsupported image shape {img.shape}")
    code = {(3, True): cv2.COLOR_BGR2RGB, (4, True): cv2.COLOR_BGRA2RGB,
            (3, False): cv2.COLOR_BGR2GRAY, (4, False): cv2.COLOR_BGRA2GRAY}[(img.shape[2], color)]
    return cv2.cvtColor(img, code)


# ----------------------------------------------------------------------------- DICOM

def _first_number(value: Any) -> float:
    """First value of a DICOM single- or multi-valued numeric element, as float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _dicom_values(ds: Any, raw: np.ndarray, path: Path, bits: int) -> np.ndarray:
    """Apply rescale and VOI window (when present and sane) and map to [0, 2**BitsStored - 1].

    Order as in DICOM: modality rescale, then the first VOI window (LINEAR, LINEAR_EXACT or
    SIGMOID). VOI LUT Sequence tables are not applied. A rescale whose output leaves the stored
    range (without a window to bring it back) is skipped with a warning.
    """
    max_value = 2**bits - 1
    out_dtype = np.uint8 if bits <= 8 else np.uint16
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if has_window:
        try:
            center, width = _first_number(ds.WindowCenter), _first_number(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            center, width = math.nan, math.nan
        has_window = math.isfinite(center) and math.isfinite(width) and width >= 1
    rescale_ok = math.isfinite(slope) and math.isfinite(intercept) and slope != 0
    monochrome1 = str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if (not has_window and raw.dtype.kind == "u" and int(getattr(ds, "PixelRepresentation", 0)) == 0
            and (not rescale_ok or (slope, intercept) == (1.0, 0.0))):
        # nothing to apply: unsigned integers already in 0..max_value (_stored_values checked)
        if monochrome1:
            return np.subtract(max_value, raw, dtype=out_dtype)
        return raw.astype(out_dtype, copy=False)
    values = raw.astype(np.float64)
    rescaled = values * slope + intercept
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
    if monochrome1:
        values = max_value - values  # so that dense tissue is bright
    return values.astype(out_dtype)


def _dicom_bits(ds: Any, path: Path) -> int:
    """BitsStored (default BitsAllocated), checked: 1 to 16 and at most BitsAllocated."""
    allocated = int(getattr(ds, "BitsAllocated", 16) or 0)
    stored = getattr(ds, "BitsStored", None)
    bits = allocated if stored is None or stored == "" else int(stored)
    if not 1 <= bits <= min(16, allocated or 16):
        raise _fail(path, f"BitsStored {bits} (BitsAllocated {allocated}) is not supported: expected "
                          "1 to 16 stored bits, at most BitsAllocated")
    return bits


def _stored_values(raw: np.ndarray, bits: int, signed: bool, path: Path) -> np.ndarray:
    """The pixels as stored in ``bits`` bits: unsigned ones above 2**bits - 1 are an error (the
    header and the pixels disagree); signed ones are masked to ``bits`` and sign-extended."""
    if raw.dtype.kind not in "ui" or bits >= 8 * raw.dtype.itemsize:
        return raw
    if not signed:
        top = int(raw.max(initial=0))
        if top > 2**bits - 1:
            raise _fail(path, f"pixel value {top} is above {2**bits - 1}, the largest of BitsStored {bits}: "
                              "the header and the pixel data disagree")
        return raw
    unsigned = raw.view(raw.dtype.str.replace("i", "u")).astype(np.int64) & (2**bits - 1)
    return np.where(unsigned >= 2 ** (bits - 1), unsigned - 2**bits, unsigned).astype(raw.dtype)


RLE_PLUGIN = "pylibjpeg"
"""The pydicom decoding plugin used for RLE Lossless when it is installed (``pylibjpeg-rle``);
without it, pydicom's own (pure numpy) decoder."""


@functools.lru_cache(maxsize=None)
def rle_plugin() -> str:
    """The decoding plugin for RLE Lossless: :data:`RLE_PLUGIN` when available, else "pydicom"."""
    try:
        from pydicom.pixels.decoders import RLELosslessDecoder
    except ImportError:  # pydicom 2: its own handlers
        return ""
    return RLE_PLUGIN if RLE_PLUGIN in RLELosslessDecoder.available_plugins else "pydicom"


def _decode_pixels(ds: Any, path: Path) -> np.ndarray:
    """``ds.pixel_array`` with the unused high bits kept (checked later); RLE through
    :func:`rle_plugin`, retried with pydicom's own decoder if the plugin fails."""
    options: dict[str, Any] = {}
    if hasattr(ds, "pixel_array_options"):  # pydicom 3 clears the unused high bits: keep them, to check
        from pydicom.uid import RLELossless

        options["correct_unused_bits"] = False
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax == RLELossless and rle_plugin():
            options["decoding_plugin"] = rle_plugin()
        ds.pixel_array_options(**options)
    try:
        return ds.pixel_array
    except Exception as error:
        if options.get("decoding_plugin") not in (None, "pydicom"):
            ds.pixel_array_options(**{**options, "decoding_plugin": "pydicom"})
            try:
                return ds.pixel_array
            except Exception as second:
                error = second
        raise _fail(path, f"cannot decode DICOM pixel data ({error})") from error


def _read_dicom(path: Path, color: bool) -> np.ndarray:
    """DICOM through pydicom (RLE Lossless through pylibjpeg-rle where installed, see
    :func:`rle_plugin`; uncompressed needs numpy only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many kinds for corrupt files
        raise _fail(path, f"not a readable DICOM file ({error})") from error
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _fail(path, "DICOM file has no pixel data")
    bits = _dicom_bits(ds, path)
    raw = _decode_pixels(ds, path)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise _fail(path, "multi-frame DICOM is not supported")
    raw = _stored_values(raw, bits, int(getattr(ds, "PixelRepresentation", 0)) == 1, path)
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        rgb = raw if raw.dtype in (np.uint8, np.uint16) else np.clip(raw, 0, None).astype(np.uint16)
        rgb = _unit(rgb, 2**bits - 1)
        return rgb if color else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if raw.ndim != 2:
        raise _fail(path, f"unexpected DICOM pixel array shape {raw.shape}")
    grey = _unit(_dicom_values(ds, raw, path, bits), 2**bits - 1)
    return np.stack([grey] * 3, axis=-1) if color else grey


READERS: dict[str, Callable[[Path, bool], np.ndarray]] = {
    ".pgm": _read_with_opencv, ".png": _read_with_opencv, ".jpg": _read_with_opencv,
    ".jpeg": _read_with_opencv, ".tif": _read_with_opencv, ".tiff": _read_with_opencv,
    ".bmp": _read_with_opencv, ".dcm": _read_dicom, ".dicom": _read_dicom,
}
"""File extension -> reader ``(path, color) -> array``."""


def read_image(path: str | Path, *, color: bool = False) -> np.ndarray:
    """Read an image file: uint8/uint16 when its values fill that type, else float32 in [0, 1].

    Values of a stored bit depth below their type's (a 10-, 12- or 14-bit DICOM, a PGM with
    maxval 4095, a PNG whose sBIT chunk says 12 bits) come back as float32 divided by that
    depth's largest value (``2**BitsStored - 1``, maxval), so :func:`~helpers.preprocessing.to_float`
    needs no guess. 8- and 16-bit files come back as stored; a 16-bit PNG or TIFF without such
    metadata is taken at the full 16-bit range (see the module docstring).

    ``color=False`` gives a 2-D grey array (colour files are converted to grey);
    ``color=True`` gives ``HxWx3`` RGB. DICOM MONOCHROME1 is inverted so dense tissue is bright.
    Raises :class:`ImageReadError` naming the file for every problem: a missing or empty file,
    content of another kind than the extension says, a file that decodes only in part, a pixel
    above the stored bit depth.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise _fail(path, f"unsupported extension {path.suffix!r} (known: {', '.join(READERS)})")
    if not path.is_file():
        raise _fail(path, "file not found")
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if not head:
        raise _fail(path, "file is empty")
    _check_kind(path, head)
    return reader(path, color)
