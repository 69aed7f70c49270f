"""Hand-made run folders for the report's tests: metrics.json, run.json, predictions, figures, a notebook.

Everything is small and written without Keras (the environment is given), so a report of a few
runs builds in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from helpers import evaluation

BINARY = ["benign", "malignant"]
THREE = ["normal", "benign", "malignant"]
ENVIRONMENT = {"backend": "jax", "device": "CPU: test"}  # so that writing metrics.json imports no Keras
N_TEST = 60


def predictions(names: list[str], *, skill: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Test labels (the same for every seed: one test split), probabilities as good as ``skill``
    (0: noise, larger: better) and patient ids (two images each)."""
    labels = np.random.default_rng(123).choice(len(names), N_TEST)
    noise = np.random.default_rng(seed).random((N_TEST, len(names)))
    prob = noise + skill * np.eye(len(names))[labels]
    return labels, prob / prob.sum(axis=1, keepdims=True), [f"p{i // 2}" for i in range(N_TEST)]


def localisation_block(pointing: float = 0.55, mass: float = 0.31, *, status: str = "ok") -> dict[str, Any]:
    """A ``localisation`` block as lesson 3 writes it (or an unavailable one with a reason)."""
    described = {"method": "grad-cam", "target_layer": "out_relu", "class_explained": "true class",
                 "lesions": "phantom lesion masks", "input": "lesion-centred patches"}
    if status != "ok":
        return {"status": status, **described, "n_images": 0, "n_patients": 0, "n_boot": 1000,
                "reason": "the data has no lesion masks"}
    return {"status": "ok", **described, "n_images": 40, "n_patients": 38,
            "pointing_game": {"value": pointing, "ci": [pointing - 0.15, pointing + 0.15]},
            "mass_inside": {"value": mass, "ci": [mass - 0.06, mass + 0.06]},
            "baselines": {"uniform": {"pointing_game": 0.2, "mass_inside": 0.2},
                          "centred": {"pointing_game": 1.0, "mass_inside": 0.5}}, "n_boot": 1000}


def write_png(path: Path, size: tuple[int, int] = (60, 40)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 120, 40)).save(path)
    return path


def write_notebook(path: Path, *, error: str | None = None) -> Path:
    """A small executed notebook: a heading, a code cell with printed output (and an error)."""
    import nbformat

    cell = nbformat.v4.new_code_cell("print('AUC', 0.9)", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="AUC 0.9\n")]
    if error:
        cell.outputs.append(nbformat.v4.new_output("error", ename="RuntimeError", evalue=error,
                                                   traceback=[f"RuntimeError: {error}"]))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A lesson\n\nSome *text*."), cell])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def write_run(folder: Path, name: str, *, study: str = "000", backbone: str = "mobilenetv2",
              names: list[str] | None = None, weights: str = "imagenet", classifier: str = "network",
              optimiser: str = "adam", skill: float = 1.0, seed: int = 0, n_boot: int = 100,
              status: dict[str, Any] | None = None, figures: tuple[str, ...] = (), notebook: bool = False,
              localisation: dict[str, Any] | None = None, compared: dict[str, Any] | None = None,
              with_predictions: bool = False) -> Path:
    """A finished run folder (``status=None``: ok, 12.3 s); ``status`` with a status other than ok
    writes only run.json (and the notebook), as the runner leaves an unavailable or failed run."""
    names = names or BINARY
    run_dir = folder / name
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "status": "ok", "seconds": 12.3, "notebook": "03_transfer_learning.ipynb",
              "parameters": {"STUDY": study, "BACKBONE": backbone}, **(status or {})}
    (run_dir / "run.json").write_text(json.dumps(record))
    if notebook:
        write_notebook(run_dir / record["notebook"], error=record.get("message") if record["status"] != "ok" else None)
    if record["status"] != "ok":
        return run_dir
    labels, prob, patients = predictions(names, skill=skill, seed=seed)
    results = evaluation.evaluate(labels, prob, names, patient_ids=patients, n_boot=n_boot, seed=1)
    run = {"name": name, "study": study, "backbone": backbone, "dataset": "synthetic", "task": "t", "classes": names,
           "weights": weights, "optimiser": optimiser, "classifier": classifier, "profile": "smoke",
           "image_size": [32, 32], "epochs": 1, "head": "h", "notebook": "x", "batch_size": 8, "seed": 1,
           "preset": "p", "n_train": 1, "n_val": 1, "n_test": N_TEST}
    payload: dict[str, Any] = {"run": run, **results, "environment": ENVIRONMENT,
                               "bootstrap": {"n_boot": n_boot, "seed": 1, "level": 0.95}}
    if localisation is not None:
        payload["localisation"] = localisation
    if compared is not None:
        payload["compared"] = compared
    evaluation.write_metrics_json(run_dir / "metrics.json", payload)
    if with_predictions:
        evaluation.write_predictions(run_dir / evaluation.PREDICTIONS_FILE, labels, prob, names,
                                     images=[f"img{i}.png" for i in range(N_TEST)], patient_ids=patients)
    for figure in figures:
        write_png(run_dir / figure)
    return run_dir


LONG_MESSAGE = ("ImageNet weights for VGG16 are not available: expected the file "
                "'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5' at /tmp/kh/models/" + "x" * 120
                + " and downloading it failed. Fix: run once with network access so that Keras downloads it.")


def write_small_study(folder: Path) -> Path:
    """A report folder like a real one, small: an ImageNet / random-weights pair (with predictions,
    figures, Grad-CAM and a localisation block), an SVM hybrid, a run of another paper with three
    classes, a run whose weights were unavailable (a long message) and a failed run whose notebook
    holds the error."""
    from helpers import pipeline

    figures = ("history.png", "confusion_matrix.png", "roc.png", "cam_overlays.png", "predictions_grid.png")
    write_run(folder, "tl_000_mobilenetv2", skill=1.5, notebook=True, figures=figures, with_predictions=True,
              localisation=localisation_block())
    write_run(folder, "scratch_000_mobilenetv2", skill=0.2, seed=1, weights="random init (weights=None)",
              notebook=True, figures=figures[:3], with_predictions=True, localisation=localisation_block(status="unavailable"),
              status={"baseline_of": "tl_000_mobilenetv2"})
    labels, prob, patients = predictions(BINARY, skill=1.0, seed=2)
    network = pipeline.compared_entry(evaluation.evaluate(labels, prob, BINARY, patient_ids=patients, n_boot=100, seed=1),
                                      backbone="mobilenetv2", classifier="network")
    write_run(folder, "svm_000_mobilenetv2", skill=1.2, seed=3, classifier="svm", notebook=True,
              figures=("confusion_matrix.png", "roc.png"), compared={"softmax": network})
    write_run(folder, "tl_001_squeezenet_adam", study="001", backbone="squeezenet", names=THREE, skill=0.8, seed=4,
              notebook=True, figures=("history.png", "roc.png"))
    write_run(folder, "tl_000_vgg16", backbone="vgg16",
              status={"status": "unavailable", "seconds": 0.0, "message": LONG_MESSAGE})
    write_run(folder, "tl_002_vgg16", study="002", backbone="vgg16", notebook=True,
              status={"status": "failed", "seconds": 1234.0, "message": "RuntimeError: boom in the third cell"})
    return folder
