"""Keras and its backend: importing this module imports Keras quietly.

TensorFlow logs C++ start-up notices (oneDNN, CUDA probing) with timestamps and process ids while
it is imported, before its log level applies. In a notebook they would land in a cell's output at
random and break nbval's comparison; so Keras is imported here once, with the process' stderr
briefly sent to /dev/null, and later C++ messages below errors are silenced
(``TF_CPP_MIN_LOG_LEVEL``). Every helpers module that uses Keras imports this module first
(``from helpers import backend``), so that the first Keras import anywhere is this quiet one;
``import helpers`` alone does not import Keras (commands such as ``python -m helpers data list``
need no model and start at once).

``environment()`` describes what a run computed with: the Keras backend, the versions of Python,
Keras, the backend library, NumPy, scikit-learn and OpenCV, and the device. It is recorded in
every ``metrics.json`` (schema 2) and shown in the report. It holds no time, host name or path,
so that a rerun on the same machine writes the same bytes.

On JAX, compiled programs are cached on disk and shared by the notebooks of a study
(:func:`_configure_jax`).

TensorFlow runs on the CPU with its Eigen kernels, not oneDNN's (``TF_ENABLE_ONEDNN_OPTS=0`` unless
the environment sets it). oneDNN picks its code by the processor's instruction set when it runs,
so the same smoke run gave other numbers on another x86 CPU (measured: lesson 4's SVM grid chose
another best setting with ``ONEDNN_MAX_CPU_ISA=AVX2`` than on the AVX-512/AMX machine it ran on, and
the notebooks' stored outputs stopped matching); Eigen's kernels are chosen when TensorFlow is built,
not by the instruction set of the CPU it runs on (not yet checked on a second CPU model: Eigen still
sizes its blocks by the caches it finds). ``TF_ENABLE_ONEDNN_OPTS=1`` turns oneDNN back on for
speed; ``environment()`` records which (key ``onednn``). GPUs are not affected.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_ONEDNN_SETTING = (os.environ.get("TF_ENABLE_ONEDNN_OPTS") if "tensorflow" in sys.modules  # read already
                   else os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0"))  # CPU numbers that do not depend on the CPU


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send the process' stderr (file descriptor 2, which C++ libraries write to) to /dev/null."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _configured_backend() -> str:
    """The backend Keras will load, read as Keras reads it: ``KERAS_BACKEND``, else ``backend`` in
    ``keras.json`` (in ``KERAS_HOME``, default ``~/.keras``), else ``tensorflow``."""
    name = os.environ.get("KERAS_BACKEND")
    if not name:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            with open(os.path.join(home, "keras.json"), encoding="utf-8") as config:
                name = json.load(config).get("backend")
        except (OSError, ValueError, AttributeError):
            name = None
    return name or "tensorflow"


@contextmanager
def _hidden(module: str) -> Iterator[None]:
    """``import module`` fails meanwhile (nothing changes for a module imported already)."""
    if module in sys.modules:
        yield
        return
    sys.modules[module] = None  # type: ignore[assignment]  (Python's marker: import fails)
    try:
        yield
    finally:
        if module in sys.modules and sys.modules[module] is None:
            del sys.modules[module]


def _import_keras_quietly() -> None:
    if "keras" in sys.modules:
        return
    with quiet_stderr():
        if _configured_backend() == "tensorflow":
            # TensorFlow imports JAX, where it is installed, for TFLite's JAX converter: 0.6 s of
            # every TensorFlow process for nothing here (JAX stays importable afterwards)
            with _hidden("jax"), contextlib.suppress(ImportError):
                import tensorflow  # noqa: F401
        import keras  # noqa: F401


JAX_CACHE_FOLDER = "jax"
"""The folder of JAX's persistent compilation cache in the project's cache (``HELPERS_CACHE_DIR``)."""


def _configure_jax() -> None:
    """On JAX, keep every compiled XLA program on disk (JAX's persistent compilation cache, in
    ``<HELPERS_CACHE_DIR>/jax`` unless ``JAX_COMPILATION_CACHE_DIR`` names a folder), however short
    its compilation (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``, default 0 here, JAX's own 1 s).

    A run of a few steps on JAX's CPU spends most of its time compiling (each operation of an eager
    step, each variable's initialiser, once per shape); the notebooks of a study share the shapes,
    so a later notebook reads them back (the smoke run of lesson 4 after lesson 3). Results do not
    change: a cached program is the one compiled. TensorFlow and PyTorch are left alone."""
    if _configured_backend() != "jax":
        return
    import jax

    from helpers import paths

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(paths.cache_dir() / JAX_CACHE_FOLDER))
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


_import_keras_quietly()
ONEDNN = "off" if (_ONEDNN_SETTING or "").strip().lower() in ("0", "false", "off") else "on"
"""Whether TensorFlow's CPU kernels are oneDNN's (TensorFlow's default, unset, is on), as the variable
stood when TensorFlow was imported."""
_configure_jax()

import keras  # noqa: E402  (already imported, quietly)

BACKEND_LIBRARIES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy",
                     "openvino": "openvino"}
"""Keras backend name -> the Python package that implements it (its version is recorded)."""


def _gpu_names(backend: str) -> list[str]:
    """Names of the GPUs the Keras backend sees (empty where it sees none or cannot tell)."""
    try:
        with quiet_stderr():  # device probing may log CUDA notices to stderr
            if backend == "tensorflow":
                import tensorflow as tf

                return [tf.config.experimental.get_device_details(device).get("device_name") or device.name
                        for device in tf.config.list_physical_devices("GPU")]
            if backend == "jax":
                import jax

                return [device.device_kind for device in jax.devices() if device.platform in ("gpu", "cuda", "rocm")]
            if backend == "torch":
                import torch

                if torch.cuda.is_available():
                    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
                mps = getattr(torch.backends, "mps", None)
                if mps is not None and mps.is_available():
                    return ["Apple MPS"]
    except Exception:  # noqa: BLE001 - a device that cannot be probed is described as the CPU
        return []
    return []


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else ``platform.processor()``, else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return " ".join(platform.processor().split()) or platform.machine() or "unknown"


def device(backend: str | None = None) -> str:
    """What the backend computes on: ``"GPU: <name>"`` (``"GPU: 2 x <name>"`` for several alike),
    else ``"CPU: <model>"``."""
    gpus = _gpu_names(backend or keras.backend.backend())
    if gpus:
        counts = Counter(gpus)
        return "GPU: " + ", ".join(name if count == 1 else f"{count} x {name}" for name, count in counts.items())
    return f"CPU: {cpu_model()}"


def _version(module_name: str) -> str:
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = __import__(module_name)
        except ImportError:
            return "unknown"
    return str(getattr(module, "__version__", "unknown"))


def environment() -> dict[str, str]:
    """The Keras backend, library versions and device of this process, for ``metrics.json``.

    Keys: ``backend``, ``python``, ``keras``, the backend library's own name (``tensorflow``,
    ``jax`` or ``torch``), ``numpy``, ``scikit-learn``, ``opencv`` and ``device``; on TensorFlow
    also ``onednn`` ("on" or "off", see the module docstring: as TensorFlow read it when imported).
    """
    import cv2
    import numpy
    import sklearn

    backend = keras.backend.backend()
    found = {
        "backend": backend,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "opencv": cv2.__version__,
    }
    library = BACKEND_LIBRARIES.get(backend, backend)
    found.setdefault(library, _version(library))
    if backend == "tensorflow":
        found["onednn"] = ONEDNN
    found["device"] = device(backend)
    return found
