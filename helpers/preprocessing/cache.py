"""The cache of prepared arrays: :func:`prepare_arrays` runs a preset over a manifest (on every
core) and stores the stacked result on disk under :func:`cache_key` (which hashes every input).

The cache file is an uncompressed ``.npz`` (``np.savez``: members stored, not deflated) holding
``x`` (float16, one channel for grey presets), ``kept`` (manifest positions) and ``skipped``
(JSON). One file, replaced atomically, so the array and its row list can never disagree, and
``np.load(file)["x"]`` still reads it. It is *loaded* without reading it whole: ``x`` is
memory-mapped straight out of the zip (:func:`load_cache_file`; a stored member is a plain ``.npy``
at a known offset), so a cache larger than memory streams from disk. It is *built* into a
memory-mapped scratch file beside it, so building never holds the whole array in memory either.

Workers: :func:`prepare_arrays` runs ordered chunks of rows in joblib's ``loky`` process pool
(workers are fresh interpreters, never forks, so it is safe after TensorFlow was imported; they
are started per call and ended when it ends), and this process takes chunks too instead of
waiting (so the second or so the workers need to start is not lost). Each image is prepared by
the same function in a worker as in the sequential path, so the bytes are the same. An interrupt
(Ctrl-C, or SIGTERM while no other handler is installed) kills the workers before it propagates.

Version 4 caches of earlier releases (the same layout, compressed or not) are still read: the
bytes did not change, so ``PREPROCESSING_VERSION`` did not either; a compressed member would be
read whole rather than mapped.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import signal
import struct
import tempfile
import threading
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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

PARALLEL_MIN_IMAGES = 24
"""With ``workers=None``, manifests of fewer rows run sequentially: a loky worker needs 1.5 to 3 s
to deliver its first result (measured on 2 cores: quiet, and busy), while a full-size 16-bit
mammogram takes about 0.13 s with paper000's preset (quiet 2-core machine), so below about
``2 * 1.5 / 0.13`` images a worker only burns a core. An explicit ``workers`` is always obeyed."""

CHUNKS_PER_WORKER = 32
"""Rows go to the workers in ordered chunks of about ``rows / (workers * CHUNKS_PER_WORKER)``
(at most :data:`MAX_CHUNK_ROWS`): small, so that the processes finish together (at the end one
may wait for, or repeat, the other's last chunk; 64 full-size mammograms on 2 cores go one row per
chunk: 192 took 8.75 s instead of 9.12 s with 8 chunks per worker), and still far dearer than
their overhead (a chunk's result is a few hundred kB; sending it costs about a millisecond)."""

MAX_CHUNK_ROWS = 32
"""The largest chunk of rows one task prepares (bounds a worker's result in memory)."""


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


def _mapped_member(cache_file: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """Member ``name`` (a ``.npy`` stored uncompressed) of an open ``.npz`` as a read-only memmap
    (a compressed member, which this module never writes, is read whole)."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:  # not written here (np.savez stores): read it whole
        with archive.open(name) as handle:
            whole = np.lib.format.read_array(handle, allow_pickle=False)
        whole.flags.writeable = False
        return whole
    with open(cache_file, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)  # the local header: its own name and extra lengths (zip64 differs)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"member {name} has no local zip header")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        handle.seek(start)
        version = np.lib.format.read_magic(handle)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
        size = os.fstat(handle.fileno()).st_size
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + nbytes != info.file_size or offset + nbytes > size:
        raise ValueError(f"member {name} is truncated: {info.file_size} bytes stored for {dtype} {shape}")
    if nbytes == 0:
        empty = np.zeros(shape, dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(cache_file, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def load_cache_file(cache_file: Path | str) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """``(x, kept, skipped)`` of a cache file, ``x`` memory-mapped (read-only, not read whole).

    Raises (zipfile.BadZipFile, ValueError, KeyError, OSError) for a file that is truncated,
    not a cache file, or holds an array of the wrong type or shape.
    """
    cache_file = Path(cache_file)
    with zipfile.ZipFile(cache_file) as archive:
        x = _mapped_member(cache_file, archive, "x.npy")
        with archive.open("kept.npy") as handle:
            kept = np.lib.format.read_array(handle, allow_pickle=False)
        with archive.open("skipped.npy") as handle:
            skipped = [tuple(item) for item in json.loads(str(np.lib.format.read_array(handle, allow_pickle=False)))]
    if x.dtype != CACHE_DTYPE or x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) != len(kept):
        raise ValueError(f"holds {x.dtype} {x.shape}, expected {np.dtype(CACHE_DTYPE)} (N, H, W, 1 or 3)")
    if kept.dtype.kind not in "iu" or kept.ndim != 1:
        raise ValueError(f"its row list is {kept.dtype} {kept.shape}, expected 1-D integers")
    return x, kept, skipped


def _load_cached(cache_file: Path, manifest: pd.DataFrame, *, from_cache: bool = True) -> PreparedArrays | None:
    try:
        x, kept, skipped = load_cache_file(cache_file)
        if len(kept) and (kept.min() < 0 or kept.max() >= len(manifest)):
            raise ValueError(f"its rows {int(kept.min())}..{int(kept.max())} are not all in a manifest "
                             f"of {len(manifest)} rows")
    except Exception as error:  # unreadable cache: rebuild it
        warnings.warn(f"{cache_file}: unreadable cache file, rebuilding ({type(error).__name__}: {error})")
        return None
    rows = manifest.iloc[kept].reset_index(drop=True)
    return PreparedArrays(as_rgb(x), rows, skipped, cache_file, from_cache=from_cache)


def _require_normal_patches(manifest: pd.DataFrame, rois: Any, normal_patches: list) -> None:
    """ValueError naming the first lesion-free row (empty roi) without a patch radius and seed."""
    for path, roi_text, patch in zip(manifest["image_path"], rois, normal_patches):
        if patch is None and parse_roi(roi_text, str(path)) is None:
            raise ValueError(f"{path}: a lesion-free row (empty roi) needs a patch radius and seed "
                             f"(columns {PATCH_RADIUS!r}, {PATCH_SEED!r}) for use_roi=True: give them with "
                             f"helpers.preprocessing.assign_normal_radii(manifest, seed)")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else the count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None, rows: int) -> int:
    """How many processes prepare ``rows`` images: ``None`` = every core, or 1 below
    :data:`PARALLEL_MIN_IMAGES` rows; an explicit number is obeyed (at most one per row)."""
    if workers is None:
        return 1 if rows < PARALLEL_MIN_IMAGES else max(1, min(available_cores(), rows))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be None (every core) or an integer >= 1, got {workers!r}")
    return max(1, min(workers, rows))


Row = tuple[int, str, Any, "tuple[float, int] | None"]
"""One manifest row to prepare: (position, image path, roi text, lesion-free patch or None)."""


@dataclass
class _Chunk:
    """What one chunk of rows gave: kept positions and their images, skipped rows, or the error."""

    kept: list[int]
    x: np.ndarray
    skipped: list[tuple[str, str]]
    error: ImageReadError | None = None
    pid: int = field(default_factory=os.getpid)  # the process that prepared it


def _prepare_chunk(rows: list[Row], preset: Preset, size: tuple[int, int], use_roi: bool,
                   roi_scale: float, on_error: str, cv2_threads: int | None = None) -> _Chunk:
    """Prepare ``rows`` in order, in this process or a worker: the one code path for both.

    With ``on_error="raise"`` an ImageReadError is returned in :attr:`_Chunk.error` (rows after it
    are not read), so the caller raises the first bad row's in manifest order.
    """
    if cv2_threads is not None:  # in a worker: share the cores with the other workers
        import cv2
        cv2.setNumThreads(cv2_threads)
    channels = 3 if preset.color else 1  # grey presets repeat one channel: store it once
    images: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    error = None
    for position, path, roi_text, normal_patch in rows:
        try:
            img = read_image(path, color=preset.color)
            roi = None
            if use_roi:
                roi = parse_roi(roi_text, str(path))
                if roi is None:
                    radius, seed = normal_patch
                    roi = normal_patch_roi(img, radius, seed, roi_scale, source=str(path))
            image = apply_preset(img, preset, image_size=size, roi=roi, roi_scale=roi_scale)
            images.append(image[..., :channels].astype(CACHE_DTYPE))
            kept.append(position)
        except ImageReadError as problem:
            if on_error == "raise":
                error = problem
                break
            skipped.append((str(path), str(problem)))
    x = np.stack(images) if images else np.zeros((0, *size, channels), CACHE_DTYPE)
    return _Chunk(kept, x, skipped, error)


def _chunks(rows: list[Row], workers: int) -> list[list[Row]]:
    """``rows`` cut into ordered chunks (:data:`CHUNKS_PER_WORKER`, :data:`MAX_CHUNK_ROWS`)."""
    size = max(1, min(MAX_CHUNK_ROWS, math.ceil(len(rows) / (workers * CHUNKS_PER_WORKER))))
    return [rows[i:i + size] for i in range(0, len(rows), size)]


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM while workers prepare images (exit status 143)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (so the workers are killed on the way out)
    instead of ending the process at once; only in the main thread and where no handler is set."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_chunks(rows: list[Row], workers: int, task: dict[str, Any], *,
                in_parent: bool = True) -> Iterator[_Chunk]:
    """Each chunk's result in manifest order, prepared by ``workers`` processes.

    ``workers == 1``: all in this process. Otherwise ``workers - 1`` loky worker processes (joblib's
    process pool: fresh interpreters, never forks; started for this call and ended when it ends,
    so no idle worker stays behind) take chunks from the end of the manifest
    while this process takes them from the front; when none is left, this process also prepares
    the chunk whose turn it is if a worker has not delivered it yet (the first result is used: the
    bytes are the same), so the time the workers need to start is never waited for.
    ``in_parent=False`` leaves all the work to ``workers`` worker processes (for tests).
    Any failure of a chunk is raised when its turn in manifest order comes; an interrupt (or any
    early exit) kills the workers.
    """
    chunks = _chunks(rows, workers)
    if workers == 1 or len(chunks) == 1:
        for chunk in chunks:
            yield _prepare_chunk(chunk, **task)
        return
    import cv2
    from joblib.externals.loky import ProcessPoolExecutor

    threads = max(1, available_cores() // workers)
    helpers_count = workers - 1 if in_parent else workers
    executor = ProcessPoolExecutor(max_workers=helpers_count)
    pending = collections.deque(range(len(chunks)))  # chunk indices not started
    futures: dict[int, Any] = {}
    done: dict[int, _Chunk | Exception] = {}
    saved_threads = cv2.getNumThreads()

    def submit() -> None:  # workers take chunks from the end (from the front if they do all)
        while pending and sum(not f.done() for f in futures.values()) < helpers_count + 1:
            index = pending.pop() if in_parent else pending.popleft()
            futures[index] = executor.submit(_prepare_chunk, chunks[index], **task, cv2_threads=threads)

    def work(index: int) -> None:  # this process takes one chunk
        cv2.setNumThreads(threads)
        try:
            done[index] = _prepare_chunk(chunks[index], **task)
        except Exception as error:  # raised in its turn, as the sequential path would
            done[index] = error
        finally:
            cv2.setNumThreads(saved_threads)

    try:
        with _sigterm_raises():
            submit()
            for turn in range(len(chunks)):
                while in_parent and turn not in done and not (turn in futures and futures[turn].done()):
                    work(pending.popleft() if pending else turn)  # from the front, else the late one
                    submit()
                result = done.pop(turn) if turn in done else futures[turn].result()
                futures.pop(turn, None)
                submit()
                if isinstance(result, Exception):
                    raise result
                yield result
    finally:  # done, or an error, an interrupt or a consumer that stopped early: end the workers
        executor.shutdown(wait=True, kill_workers=True)  # (one may still run a chunk prepared here)


def prepare_arrays(manifest: pd.DataFrame, preset: str | Preset, *, image_size: Size,
                   use_roi: bool = False, roi_scale: float = 2.0, cache_dir: Path | None = None,
                   on_error: str = "raise", progress: bool = False,
                   workers: int | None = None) -> PreparedArrays:
    """Preprocess every manifest row into one ``(N, h, w, 3)`` array of clean images, cached on disk.

    The array is float16 in [0, 1] (:data:`CACHE_DTYPE`); for a grey preset it is stored with
    one channel and returned as a read-only three-channel view of it (:func:`as_rgb`), so it
    takes a sixth of the memory of three float32 channels. It is memory-mapped from the cache
    file (see the module docstring): rows are read from disk when used, so a dataset larger than
    memory streams from the cache instead of being loaded whole.

    ``use_roi=True`` cuts a lesion patch per row from its ``roi`` ("cx,cy,r"); a lesion-free row
    (empty roi) is cut like one, with the radius and seed :func:`assign_normal_radii` gave it, at
    a seeded random position inside the breast (:func:`normal_patch_roi`); a lesion-free row
    without them is a ValueError naming its file.
    The cache file ``<dir>/<preset>-<h>x<w>-<key16>.npz`` (dir defaults to
    ``helpers.paths.cache_dir()/"arrays"``) is reused when :func:`cache_key` matches, without
    reading any image; one that cannot be read is rebuilt with a warning naming it.
    ``on_error``: "raise" (ImageReadError naming the first bad file in manifest order) or "skip"
    (the row is left out and listed in ``skipped``).
    Files are read grey, or RGB when ``preset.color`` is True (histopathology).

    ``workers``: processes that prepare the images, this one and ``workers - 1`` loky workers
    (ordered chunks; the bytes are those of the sequential path). ``None`` uses every core (:func:`available_cores`), except
    that a manifest of fewer than :data:`PARALLEL_MIN_IMAGES` rows runs sequentially, where
    starting workers would cost more than it saves; ``1`` runs in this process. ``progress=True``
    shows a tqdm bar that advances as chunks finish.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if "image_path" not in manifest.columns:
        raise ValueError("manifest has no 'image_path' column")
    if use_roi and "roi" not in manifest.columns:
        raise ValueError("use_roi=True needs a 'roi' column in the manifest")
    workers = resolve_workers(workers, len(manifest))
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

    rois = manifest["roi"] if "roi" in manifest.columns else [""] * len(manifest)
    normal_patches = _normal_patches(manifest) if use_roi else [None] * len(manifest)
    if use_roi:
        _require_normal_patches(manifest, rois, normal_patches)
    rows: list[Row] = [(position, str(path), roi, patch) for position, (path, roi, patch)
                       in enumerate(zip(manifest["image_path"], rois, normal_patches))]
    task = {"preset": preset, "size": (h, w), "use_roi": use_roi, "roi_scale": roi_scale, "on_error": on_error}
    channels = 3 if preset.color else 1
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    folder.mkdir(parents=True, exist_ok=True)
    fd, scratch_name = tempfile.mkstemp(prefix=f".{cache_file.name}.", suffix=".part", dir=folder)
    os.close(fd)  # named as helpers.paths.atomic_path names them, so sweep_partial_files finds it
    scratch = Path(scratch_name)
    buffer = None
    chunks = _run_chunks(rows, workers, task)
    try:
        buffer = np.lib.format.open_memmap(scratch, mode="w+", dtype=CACHE_DTYPE,
                                           shape=(max(1, len(rows)), h, w, channels))
        with tqdm(total=len(rows), disable=not progress, desc=f"preprocessing ({preset.name})",
                  unit="image") as bar:
            for chunk in chunks:
                if chunk.error is not None:
                    raise chunk.error
                buffer[len(kept):len(kept) + len(chunk.kept)] = chunk.x
                kept.extend(chunk.kept)
                skipped.extend(chunk.skipped)
                bar.update(len(chunk.kept) + len(chunk.skipped))
        with atomic_path(cache_file) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, x=buffer[:len(kept)], kept=np.asarray(kept, np.int64),
                         skipped=np.array(json.dumps(skipped)))
    finally:
        with warnings.catch_warnings():  # joblib warns that the chunks after an error were cancelled
            warnings.simplefilter("ignore")
            chunks.close()  # stops (and on an error kills) the workers before this returns
        buffer = None  # unmaps the scratch file
        scratch.unlink(missing_ok=True)
    prepared = _load_cached(cache_file, manifest, from_cache=False)
    if prepared is None:
        raise OSError(f"{cache_file}: the cache file just written cannot be read back")
    return prepared
