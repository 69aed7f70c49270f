"""A subset of the smoke study on the JAX and the PyTorch backends (``KERAS_BACKEND``), headless, as
tests/test_study.py runs the whole of it on TensorFlow.

The subsets (:data:`SUBSETS`) cover the code paths that differ between backends and cost as little as
they can: a lesson-3 run (training, prediction, Grad-CAM, whose gradient is the one backend-specific
function, :mod:`helpers.explain`) and, on torch, the lesson-4 run that reuses its saved network
(``svm_000_mobilenetv2``: a ``.keras`` file loaded on the same backend, deep features, the SVM). The
runner builds the report after them. Every run must be ok, every ``metrics.json`` must name the backend
(``environment``, :func:`helpers.backend.environment`) and the report must state it. The PyTorch case
skips where torch is not installed (``pip install torch==2.13.0``, the CPU build).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from helpers import evaluation, runner

SUBSETS = {"torch": ("tl_000_mobilenetv2", "svm_000_mobilenetv2"), "jax": ("tl_001_squeezenet_adam",)}
"""The runs of the smoke plan each backend executes: lesson 3 with Grad-CAM, and on torch lesson 4
reusing its network. On JAX, whose CPU compiles cost minutes for MobileNetV2 (171 s for lesson 3
against 45 s on torch), lesson 3 runs with SqueezeNet and paper 001's head; svm_000_mobilenetv2 on JAX
passed by hand (15 s with the compile cache)."""

BACKENDS = [
    "jax",
    pytest.param("torch", marks=pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="torch is not installed: pip install torch==2.13.0 (the CPU build; "
               "--index-url https://download.pytorch.org/whl/cpu on other machines)")),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend_study(request, tmp_path_factory) -> tuple[str, Path, subprocess.CompletedProcess, float]:
    """The subset run once per backend in its own folder: (backend, reports folder, result, seconds)."""
    name = request.param
    folder = tmp_path_factory.mktemp(f"smoke-{name}")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "helpers", "run", "--profile", "smoke", "--only", *SUBSETS[name]],
        env={**runner.isolated_env(folder), "KERAS_BACKEND": name},
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"smoke subset on {name}: " + result.stdout[-4000:] + result.stderr[-4000:]
    return name, folder / "reports" / "smoke", result, seconds


def test_the_smoke_subset_runs_on_the_backend_and_records_it(backend_study):
    name, profile_dir, result, seconds = backend_study
    subset = SUBSETS[name]
    print(f"smoke subset {', '.join(subset)} on {name}: {seconds:.0f} s")
    for run in subset:
        status = json.loads((profile_dir / run / "run.json").read_text())
        assert status["status"] == "ok", (name, status)
        metrics = evaluation.read_metrics_json(profile_dir / run / "metrics.json")
        environment = metrics["environment"]
        assert environment["backend"] == name, (run, environment)
        assert environment[name] not in ("", "unknown"), (run, environment)  # the library's version
        assert metrics["run"]["profile"] == "smoke"
        assert 0.0 <= metrics["image_level"]["accuracy"]["value"] <= 1.0, run
    lesson3 = evaluation.read_metrics_json(profile_dir / subset[0] / "metrics.json")
    assert lesson3["localisation"]["method"] == "grad-cam", lesson3["localisation"]  # the backend's gradient
    assert lesson3["localisation"]["status"] in ("ok", "unavailable"), lesson3["localisation"]
    assert (profile_dir / subset[0] / "cam_overlays.png").stat().st_size > 1000
    for run in subset[1:]:
        hybrid = evaluation.read_metrics_json(profile_dir / run / "metrics.json")["run"]
        assert hybrid["classifier"] == "svm"
        assert hybrid["network"].startswith(f"reused from run {subset[0]} "), hybrid["network"]
    index = profile_dir / "index.html"
    assert f"report: {index}" in result.stdout
    page = index.read_text(encoding="utf-8")
    assert f"Keras backend {name}" in page, f"{index} does not state the backend {name}"
    others = {"tensorflow", "jax", "torch"} - {name}
    assert not any(f"Keras backend {other}" in page for other in others), f"{index} names another backend"
