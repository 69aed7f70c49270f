"""Metrics with bootstrap confidence intervals, patient-level results, figures and ``metrics.json``.

Conventions used throughout:

- ``y_true`` holds integer class indices, shape ``(N,)``; ``y_prob`` holds scores, shape ``(N, C)``,
  column ``c`` being the probability of ``class_names[c]``. For two classes a 1-D ``y_prob`` (or
  ``(N, 1)``, a sigmoid output) is read as the probability of class 1. The predicted class is the
  arg-max of a row.
- Binary (C == 2): the positive class is index 1 (e.g. "malignant"). Precision, recall
  (sensitivity), specificity and F1 are those of the positive class; ROC AUC is that of
  ``y_prob[:, 1]``.
- Multiclass: macro averages over the classes; specificity and ROC AUC one-vs-rest.
- A metric that the data leave undefined (precision with no positive prediction, specificity with
  no negative case, ROC AUC with one class only, ...) is NaN, and ``null`` in ``metrics.json``.
  A macro average is NaN when any class's value is.
- Confidence intervals are percentile bootstrap intervals over cases resampled with replacement
  (images at image level, patients at patient level); resamples where a metric is undefined are
  left out of that metric's interval.
- Patient level: a patient's probabilities are the mean over their images, and their true class is
  the highest class index among their images. With classes ordered from least to most severe
  (``["benign", "malignant"]``) a patient is malignant if any of their images is.
- Per class (``per_class`` at each level): precision, recall, F1 and support of every class, and
  their ``"macro avg"`` (unweighted mean over the classes) and ``"weighted avg"`` (weighted by
  support), as scikit-learn's ``classification_report``. A class's value that the data leave
  undefined (precision of a class never predicted, recall of a class absent from the test set) is
  NaN, as above, and so is an average over it; a class with support 0 carries no weight in the
  weighted average. ``zero_division=0`` counts undefined values as 0 instead, as
  ``classification_report(zero_division=0)`` does (and as its default prints, with a warning).

Figures are ``matplotlib`` figures that are not left open in pyplot: they show in a notebook when
returned or displayed, never twice, and never pile up in scripts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import precision_recall_fscore_support, roc_curve

from helpers.figures import IMAGE_DPI, _show, new_figure

from helpers.paths import atomic_path, write_text_atomic

METRICS_SCHEMA_VERSION: int = 3
"""Version 2 adds ``environment`` (Keras backend, library versions, device: ``helpers.backend``);
version 3 adds ``per_class`` at each level (per-class precision, recall, F1, support, and their
macro and weighted averages). Files of earlier versions, which lack them, are still read."""
METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
PER_CLASS_KEYS = ("precision", "recall", "f1", "support")
AVERAGES = ("macro avg", "weighted avg")

RUN_KEYS = (
    "name", "notebook", "profile", "study", "dataset", "task", "classes", "backbone", "head",
    "weights", "image_size", "epochs", "batch_size", "seed", "preset", "n_train", "n_val", "n_test",
)
LEVEL_KEYS = (*METRIC_NAMES, "n", "confusion_matrix", "class_names")
METRIC_ENTRY_KEYS = ("value", "ci_low", "ci_high")
ACCURACY_COLUMNS = (
    "accuracy", "acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
)
# Keys that would carry wall-clock values and so break byte-identical reruns of metrics.json.
TIMING_KEY = re.compile(r"timestamp|duration|elapsed|datetime|^time$|_time$|^date$|_seconds$|_s$")

_BOOTSTRAP_CELLS = 2_000_000  # resamples x cases held in memory at once


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a sequence of names, got the string {class_names!r}")
    names = [str(name) for name in class_names]
    if len(names) < 2:
        raise ValueError(f"class_names needs at least two classes, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    return names


def _check_labels(values: Any, n_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1:
        raise ValueError(
            f"{what} must be 1-D class indices, got shape {labels.shape} "
            "(for one-hot labels pass labels.argmax(axis=1))"
        )
    if labels.size == 0:
        raise ValueError(f"{what} is empty")
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{what} must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise ValueError(f"{what} has class indices outside 0..{n_classes - 1}: {sorted(set(bad.tolist()))[:5]}")
    return labels


def _as_prob_matrix(y_prob: Any, n_classes: int | None) -> np.ndarray:
    prob = np.asarray(y_prob, dtype=np.float64)
    if prob.ndim == 2 and prob.shape[1] == 1:
        prob = prob[:, 0]
    if prob.ndim == 1:
        if n_classes not in (None, 2):
            raise ValueError(f"y_prob is 1-D but there are {n_classes} classes; pass shape (N, {n_classes})")
        prob = np.column_stack([1.0 - prob, prob])
    if prob.ndim != 2:
        raise ValueError(f"y_prob must have shape (N, C), got {prob.shape}")
    if n_classes is not None and prob.shape[1] != n_classes:
        raise ValueError(f"y_prob has {prob.shape[1]} columns but there are {n_classes} class names")
    if not np.all(np.isfinite(prob)):
        raise ValueError("y_prob contains NaN or infinite values")
    return prob


def _check_inputs(y_true: Any, y_prob: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = _check_class_names(class_names)
    labels = _check_labels(y_true, len(names), "y_true")
    prob = _as_prob_matrix(y_prob, len(names))
    if prob.shape[0] != labels.shape[0]:
        raise ValueError(f"y_true has {labels.shape[0]} cases but y_prob has {prob.shape[0]}")
    return labels, prob, names


# --------------------------------------------------------------------------------------------
# Metrics (weighted form: one row of weights per bootstrap resample; weights of ones = the data)
# --------------------------------------------------------------------------------------------

def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _weighted_auc(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count one half) for each row of case weights ``(B, N)``; NaN if one class only."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, pos = scores[order], positive[order]
    w = weights[:, order]
    starts_group = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], sorted_scores.size]
    cum_neg = np.zeros((w.shape[0], w.shape[1] + 1))
    np.cumsum(w * ~pos, axis=1, out=cum_neg[:, 1:])
    neg_below = cum_neg[:, starts[group]]
    neg_tied = cum_neg[:, ends[group]] - neg_below
    w_pos = w[:, pos]
    wins = (w_pos * (neg_below[:, pos] + 0.5 * neg_tied[:, pos])).sum(axis=1)
    return _safe_divide(wins, w_pos.sum(axis=1) * cum_neg[:, -1])


def _weighted_metrics(weights: np.ndarray, y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, np.ndarray]:
    """All of METRIC_NAMES for each row of case weights ``(B, N)``."""
    n_classes = y_prob.shape[1]
    y_pred = y_prob.argmax(axis=1)
    cells = np.zeros((y_true.size, n_classes * n_classes))
    cells[np.arange(y_true.size), y_true * n_classes + y_pred] = 1.0
    cm = (weights @ cells).reshape(-1, n_classes, n_classes)  # rows: true class, columns: predicted
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    fp = cm.sum(axis=1) - tp
    fn = cm.sum(axis=2) - tp
    tn = total[:, None] - tp - fp - fn
    per_class = {
        "precision": _safe_divide(tp, tp + fp),
        "recall": _safe_divide(tp, tp + fn),
        "specificity": _safe_divide(tn, tn + fp),
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
        "roc_auc": np.column_stack(
            [_weighted_auc(weights, y_prob[:, c], y_true == c) for c in range(n_classes)]
        ),
    }
    result = {"accuracy": _safe_divide(tp.sum(axis=1), total)}
    for name, values in per_class.items():
        result[name] = values[:, 1] if n_classes == 2 else values.mean(axis=1)
    return {name: result[name] for name in METRIC_NAMES}


def compute_metrics(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, specificity, F1 and ROC AUC (see the module notes); NaN if undefined."""
    labels, prob, _ = _check_inputs(y_true, y_prob, class_names)
    values = _weighted_metrics(np.ones((1, labels.size)), labels, prob)
    return {name: float(values[name][0]) for name in METRIC_NAMES}


def bootstrap_ci(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric, resampling cases with replacement.

    With ``groups`` (e.g. each image's patient) whole groups are resampled, a case counting as
    often as its group is drawn (a clustered bootstrap, as :func:`paired_bootstrap`): images of
    one patient are not independent. Resamples where a metric is undefined are left out of its
    interval; ``(nan, nan)`` if all are (or if ``n_boot`` is 0). The same seed gives the same intervals.
    """
    labels, prob, _ = _check_inputs(y_true, y_prob, class_names)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    n_cases = labels.size
    index = np.arange(n_cases)  # the group of each case: itself, or its patient with ``groups``
    if groups is not None:
        ids = np.asarray(groups).astype(str)
        if ids.size != n_cases:
            raise ValueError(f"groups ({ids.size}) and y_true ({n_cases}) differ in length")
        index = np.unique(ids, return_inverse=True)[1].ravel()
    n_groups = int(index.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // max(n_cases, n_groups))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    for start in range(0, int(n_boot), chunk):
        size = min(chunk, int(n_boot) - start)
        draws = rng.integers(0, n_groups, size=(size, n_groups))
        flat = (draws + n_groups * np.arange(size)[:, None]).ravel()
        counts = np.bincount(flat, minlength=size * n_groups).reshape(size, n_groups).astype(np.float64)
        weights = counts[:, index]
        for name, values in _weighted_metrics(weights, labels, prob).items():
            parts[name].append(values)
    tail = 100.0 * (1.0 - level) / 2.0
    intervals = {}
    for name in METRIC_NAMES:
        values = np.concatenate(parts[name]) if parts[name] else np.empty(0)
        values = values[~np.isnan(values)]
        if values.size == 0:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.percentile(values, [tail, 100.0 - tail])
            intervals[name] = (float(low), float(high))
    return intervals


def aggregate_by_patient(
    y_true: np.ndarray, y_prob: np.ndarray, patient_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One row per patient (sorted by id): mean probabilities and the highest true class index.

    Returns ``(y_true_per_patient, y_prob_per_patient, patient_ids_sorted)``.
    """
    prob = _as_prob_matrix(y_prob, None)
    labels = _check_labels(y_true, prob.shape[1], "y_true")
    ids = [None if pid is None or (isinstance(pid, float) and math.isnan(pid)) else str(pid) for pid in patient_ids]
    if len(ids) != labels.size or prob.shape[0] != labels.size:
        raise ValueError(
            f"y_true ({labels.size}), y_prob ({prob.shape[0]}) and patient_ids ({len(ids)}) differ in length"
        )
    missing = [i for i, pid in enumerate(ids) if pid is None or pid == ""]
    if missing:
        raise ValueError(f"patient_ids has empty or missing ids at positions {missing[:5]}")
    patients, index = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    counts = np.bincount(index, minlength=patients.size)
    sums = np.zeros((patients.size, prob.shape[1]))
    np.add.at(sums, index, prob)
    patient_true = np.zeros(patients.size, dtype=np.int64)
    np.maximum.at(patient_true, index, labels)
    return patient_true, sums / counts[:, None], [str(p) for p in patients]


def _average(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean over the classes with weight > 0; NaN if any of those values is NaN."""
    used = weights > 0
    if not used.any() or np.isnan(values[used]).any():
        return math.nan
    return float(np.sum(values[used] * weights[used]) / np.sum(weights[used]))


def per_class_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], *, zero_division: float = math.nan
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class, then ``"macro avg"`` and ``"weighted avg"``.

    ``{class: {"precision", "recall", "f1", "support"}, ..., "macro avg": {...}, "weighted avg":
    {...}}`` (scikit-learn's ``classification_report(output_dict=True)`` without its "accuracy"
    entry). ``zero_division`` is what an undefined value becomes: NaN (the default, see the module
    notes; an average over a NaN is NaN) or 0 (scikit-learn's printed convention).
    """
    names = _check_class_names(class_names)
    clash = sorted(set(names) & set(AVERAGES))
    if clash:
        raise ValueError(f"class_names {names}: {clash} would collide with the per-class averages' keys")
    if not (math.isnan(zero_division) or zero_division in (0.0, 1.0)):
        raise ValueError(f"zero_division must be NaN, 0 or 1, got {zero_division!r}")
    labels = _check_labels(y_true, len(names), "y_true")
    predicted = _check_labels(y_pred, len(names), "y_pred")
    if predicted.size != labels.size:
        raise ValueError(f"y_true has {labels.size} cases but y_pred has {predicted.size}")
    columns = precision_recall_fscore_support(labels, predicted, labels=list(range(len(names))), average=None,
                                              zero_division=np.nan if math.isnan(zero_division) else zero_division)
    precision, recall, f1, support = (np.asarray(column, dtype=np.float64) for column in columns)
    block: dict[str, dict[str, float]] = {
        name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
               "support": int(support[c])}
        for c, name in enumerate(names)
    }
    for average, weights in (("macro avg", np.ones(len(names))), ("weighted avg", support)):
        block[average] = {"precision": _average(precision, weights), "recall": _average(recall, weights),
                          "f1": _average(f1, weights), "support": int(support.sum())}
    return block


def majority_baseline(support: Mapping[str, int], *, zero_division: float = math.nan) -> dict[str, Any]:
    """What always predicting the most frequent class scores on test cases with this class support.

    ``support`` maps class names to case counts, in the class order (for two classes the second is
    the positive class); ties go to the first. Returns ``{"majority_class", "majority_share",
    "accuracy", "per_class"}``, ``per_class`` as :func:`per_class_metrics` with ``zero_division``.
    The never-predicted classes' precision is undefined (NaN), so with the default NaN the
    precisions' averages are NaN too; ``zero_division=0`` gives scikit-learn's printed figures.
    """
    if not isinstance(support, Mapping) or len(support) < 2:
        raise ValueError(f"support must map at least two class names to case counts, got {support!r}")
    counts = []
    for name, count in support.items():
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"support[{name!r}] must be a count of cases (an integer >= 0), got {count!r}")
        counts.append(int(count))
    total = sum(counts)
    if total == 0:
        raise ValueError(f"support {dict(support)} has no cases")
    names = [str(name) for name in support]
    majority = int(np.argmax(counts))
    y_true = np.repeat(np.arange(len(counts)), counts)
    return {"majority_class": names[majority], "majority_share": counts[majority] / total,
            "accuracy": counts[majority] / total,
            "per_class": per_class_metrics(y_true, np.full(total, majority), names, zero_division=zero_division)}


def _level_summary(
    y_true: np.ndarray, y_prob: np.ndarray, names: list[str], n_boot: int, seed: int, level: float,
    groups: Sequence[str] | None = None,
) -> dict:
    values = compute_metrics(y_true, y_prob, names)
    intervals = bootstrap_ci(y_true, y_prob, names, n_boot=n_boot, seed=seed, level=level, groups=groups)
    summary: dict[str, Any] = {
        name: {"value": values[name], "ci_low": intervals[name][0], "ci_high": intervals[name][1]}
        for name in METRIC_NAMES
    }
    n_classes = len(names)
    cells = np.bincount(y_true * n_classes + y_prob.argmax(axis=1), minlength=n_classes * n_classes)
    summary["n"] = int(y_true.size)
    summary["confusion_matrix"] = cells.reshape(n_classes, n_classes).tolist()
    summary["class_names"] = list(names)
    summary["per_class"] = per_class_metrics(y_true, y_prob.argmax(axis=1), names)
    return summary


def paired_bootstrap(
    y_true: np.ndarray,
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    class_names: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    metric: str = "roc_auc",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """``metric`` of two models on the same test cases and the paired difference ``a - b``.

    Both models are scored on the *same* bootstrap resamples, so the interval of the difference
    accounts for their correlation (a paired bootstrap). With ``groups`` (patient ids) whole
    patients are resampled (a clustered bootstrap: images of one patient are not independent).
    Returns ``{"a", "b", "difference", "ci_low", "ci_high", "n", "n_groups"}``; resamples where the
    metric is undefined are left out.
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRIC_NAMES)}")
    labels, first, names = _check_inputs(y_true, prob_a, class_names)
    _, second, _ = _check_inputs(y_true, prob_b, class_names)
    ids = np.asarray(groups if groups is not None else np.arange(labels.size)).astype(str)
    if ids.size != labels.size:
        raise ValueError(f"groups ({ids.size}) and y_true ({labels.size}) differ in length")
    clusters, index = np.unique(ids, return_inverse=True)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // max(labels.size, clusters.size))
    differences = []
    for start in range(0, int(n_boot), chunk):
        size = min(chunk, int(n_boot) - start)
        draws = rng.integers(0, clusters.size, size=(size, clusters.size))
        counts = np.zeros((size, clusters.size))
        np.add.at(counts, (np.repeat(np.arange(size), clusters.size), draws.ravel()), 1.0)
        weights = counts[:, index]  # an image counts as often as its patient was drawn
        a = _weighted_metrics(weights, labels, first)[metric]
        b = _weighted_metrics(weights, labels, second)[metric]
        differences.append(a - b)
    values = np.concatenate(differences) if differences else np.empty(0)
    values = values[~np.isnan(values)]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail]) if values.size else (math.nan, math.nan)
    point_a = compute_metrics(labels, first, names)[metric]
    point_b = compute_metrics(labels, second, names)[metric]
    return {"a": point_a, "b": point_b, "difference": point_a - point_b, "ci_low": float(low),
            "ci_high": float(high), "n": int(labels.size), "n_groups": int(clusters.size)}


PREDICTIONS_FILE = "predictions.csv"


def write_predictions(path: Path, y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], *,
                      images: Sequence[str], patient_ids: Sequence[str]) -> Path:
    """The test split's per-image predictions as CSV (``image, patient_id, y_true, p_<class>...``),
    for paired comparisons between runs on the same test images."""
    labels, prob, names = _check_inputs(y_true, y_prob, class_names)
    table = pd.DataFrame({"image": [str(i) for i in images], "patient_id": [str(p) for p in patient_ids],
                          "y_true": labels})
    for column, name in enumerate(names):
        table[f"p_{name}"] = np.round(prob[:, column], 8)
    with atomic_path(Path(path)) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


def read_predictions(path: Path) -> pd.DataFrame:
    """A ``predictions.csv`` written by :func:`write_predictions`; ValueError naming the file."""
    try:
        table = pd.read_csv(path, dtype={"image": str, "patient_id": str})
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the predictions ({error})") from error
    if not {"image", "patient_id", "y_true"} <= set(table.columns):
        raise ValueError(f"{path}: not a predictions file (columns {list(table.columns)})")
    return table


def evaluate(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    *,
    patient_ids: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[str] | None = None,
) -> dict:
    """Metrics with confidence intervals at image level and, given ``patient_ids``, patient level.

    With ``groups`` (usually ``patient_ids``) the image-level intervals resample whole groups
    (:func:`bootstrap_ci`), and ``bootstrap.clustered`` is true.

    Returns ``{"image_level": {metric: {"value", "ci_low", "ci_high"}, ..., "n", "confusion_matrix",
    "class_names", "per_class"}, "patient_level": same shape or None, "bootstrap": {"n_boot", "seed",
    "level"}}``. The confusion matrix has true classes as rows and predicted classes as columns;
    ``per_class`` is :func:`per_class_metrics` of the arg-max predictions (no intervals).
    """
    labels, prob, names = _check_inputs(y_true, y_prob, class_names)
    result = {
        "image_level": _level_summary(labels, prob, names, n_boot, seed, level, groups),
        "patient_level": None,
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "level": float(level),
                      **({"clustered": True} if groups is not None else {})},
    }
    if patient_ids is not None:
        patient_true, patient_prob, _ = aggregate_by_patient(labels, prob, patient_ids)
        result["patient_level"] = _level_summary(patient_true, patient_prob, names, n_boot, seed, level)
    return result


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def plot_confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], *, title: str = "", normalise: bool = False
) -> Figure:
    """Heatmap of counts (or of row fractions with ``normalise``); rows true, columns predicted."""
    names = _check_class_names(class_names)
    n_classes = len(names)
    labels = _check_labels(y_true, n_classes, "y_true")
    predicted = _check_labels(y_pred, n_classes, "y_pred")
    if predicted.size != labels.size:
        raise ValueError(f"y_true has {labels.size} cases but y_pred has {predicted.size}")
    fig = new_figure(figsize=(2.5 + 1.1 * n_classes, 2.0 + 1.0 * n_classes))
    _draw_confusion(fig.add_subplot(), labels, predicted, names, normalise=normalise, colour_bar=True,
                    title=title or ("Confusion matrix (row fractions)" if normalise else "Confusion matrix"))
    return fig


def _draw_confusion(ax, labels: np.ndarray, predicted: np.ndarray, names: list[str], *,
                    normalise: bool, title: str, colour_bar: bool) -> None:
    n_classes = len(names)
    counts = np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes)
    counts = counts.reshape(n_classes, n_classes)
    if normalise:
        data = _safe_divide(counts.astype(np.float64), counts.sum(axis=1, keepdims=True).astype(np.float64))
        style = {"fmt": ".2f", "vmin": 0.0, "vmax": 1.0}
    else:
        data, style = counts, {"fmt": "d"}
    sns.heatmap(data, annot=True, cmap="Blues", square=True, xticklabels=names, yticklabels=names, ax=ax,
                cbar=colour_bar, **style)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title, fontsize=10)


def plot_confusion_matrices(y_true: np.ndarray, predictions: Mapping[str, np.ndarray],
                            class_names: Sequence[str], *, title: str = "") -> Figure:
    """Confusion matrices of several models on the same cases, side by side (one panel each)."""
    names = _check_class_names(class_names)
    labels = _check_labels(y_true, len(names), "y_true")
    if not predictions:
        raise ValueError("predictions is empty: give at least one model's predicted classes")
    fig = new_figure(figsize=(0.5 + (2.2 + 0.9 * len(names)) * len(predictions), 2.6 + 0.9 * len(names)))
    axes = fig.subplots(1, len(predictions), squeeze=False)[0]
    for ax, (model, y_pred) in zip(axes, predictions.items()):
        predicted = _check_labels(y_pred, len(names), f"predictions[{model!r}]")
        if predicted.size != labels.size:
            raise ValueError(f"y_true has {labels.size} cases but predictions[{model!r}] has {predicted.size}")
        _draw_confusion(ax, labels, predicted, names, normalise=False, title=model, colour_bar=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


_BAR_COLOURS = {"precision": "tab:blue", "recall": "tab:orange", "f1": "tab:green"}


def _per_class_blocks(per_class: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{model: block}`` from one ``per_class`` block or a mapping of models to blocks."""
    if not isinstance(per_class, Mapping) or not per_class:
        raise ValueError("per_class must be a per_class block (from evaluate) or a mapping of models to blocks")
    blocks = {"": per_class} if all(average in per_class for average in AVERAGES) else dict(per_class)
    for model, block in blocks.items():
        if not isinstance(block, Mapping) or not all(average in block for average in AVERAGES):
            where = f"per_class[{model!r}]" if model else "per_class"
            raise ValueError(f"{where} is not a per_class block: it needs {' and '.join(AVERAGES)} "
                             "(metrics.json before schema 3 has none)")
    return blocks


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def plot_per_class(per_class: Mapping[str, Any], *, title: str = "") -> Figure:
    """Precision, recall and F1 as bars, one panel per class and one per average (paper 000's
    Figure 8: benign, malignant, both together); each panel's title gives its support.

    ``per_class`` is one ``per_class`` block (``evaluate(...)["image_level"]["per_class"]`` or from
    metrics.json), or a mapping of model names to such blocks, drawn as one group of bars each.
    An undefined value (NaN, or ``null`` in metrics.json) has no bar and is marked ``n/a``.
    """
    blocks = _per_class_blocks(per_class)
    panels = list(dict.fromkeys(name for block in blocks.values() for name in block if name not in AVERAGES))
    panels += list(AVERAGES)
    if len(blocks) <= 3:  # panels side by side
        fig = new_figure(figsize=(1.2 + (1.2 + 0.5 * len(blocks)) * len(panels), 3.4))
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    else:  # many models: panels one above the other, models along a shared x axis
        fig = new_figure(figsize=(2.0 + 0.4 * len(blocks), 1.0 + 2.0 * len(panels)))
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    width = 0.8 / len(_BAR_COLOURS)
    for ax, panel in zip(axes, panels):
        supports = {int(block[panel]["support"]) for block in blocks.values() if panel in block}
        ax.set_title(panel + (f" (n={supports.pop()})" if len(supports) == 1 else ""), fontsize=8)
        for x, block in enumerate(blocks.values()):
            if panel not in block:  # that model's task has no such class
                continue
            for k, (metric, colour) in enumerate(_BAR_COLOURS.items()):
                value, where = _number(block[panel][metric]), x + (k - 1) * width
                if math.isnan(value):
                    ax.text(where, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color=colour)
                    continue
                ax.bar(where, value, width, color=colour)
                if len(blocks) <= 3:  # few bars: their values, so that a 0 shows too
                    ax.text(where, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=6)
        if len(blocks) > 1:
            ax.set_xticks(range(len(blocks)), list(blocks), rotation=60, ha="right", fontsize=7)
        else:
            ax.set_xticks([])
        ax.set_xlim(-0.5, len(blocks) - 0.5)
        ax.set_ylim(0, 1.08)
        ax.tick_params(axis="y", labelsize=7)
    axes[0].set_ylabel("score on the test split", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in _BAR_COLOURS.values()]
    fig.legend(handles, ["precision", "recall", "F1"], fontsize=7, loc="outside right upper")
    fig.suptitle(title or "Per class: precision, recall and F1", fontsize=10)
    return fig


def _draw_roc_curve(ax, positive: np.ndarray, scores: np.ndarray, label: str) -> None:
    """One ROC curve with its AUC in the legend; an empty entry where one class is missing."""
    if positive.all() or not positive.any():
        ax.plot([], [], label=f"{label}: undefined (one class only)")
        return
    fpr, tpr, _ = roc_curve(positive, scores)
    auc = _weighted_auc(np.ones((1, positive.size)), scores, positive)[0]
    ax.plot(fpr, tpr, label=f"{label} (AUC = {auc:.3f})")


def plot_roc_comparison(y_true: np.ndarray, probabilities: Mapping[str, np.ndarray],
                        class_names: Sequence[str], *, title: str = "") -> Figure:
    """ROC curves of several models on the same cases: one panel (binary: the positive class) or
    one panel per class (one-vs-rest), a curve per model with its AUC in the legend."""
    names = _check_class_names(class_names)
    if not probabilities:
        raise ValueError("probabilities is empty: give at least one model's class probabilities")
    checked = {model: _check_inputs(y_true, prob, names)[:2] for model, prob in probabilities.items()}
    classes = [1] if len(names) == 2 else list(range(len(names)))
    fig = new_figure(figsize=(0.5 + 4.0 * len(classes), 4.2))
    axes = fig.subplots(1, len(classes), squeeze=False)[0]
    for ax, c in zip(axes, classes):
        for model, (labels, prob) in checked.items():
            _draw_roc_curve(ax, labels == c, prob[:, c], model)
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_title(names[c] if len(names) == 2 else f"{names[c]} vs rest", fontsize=9)
        ax.legend(loc="lower right", fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_roc(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], *, title: str = "") -> Figure:
    """ROC curve of the positive class (binary) or one-vs-rest curve per class, AUC in the legend."""
    labels, prob, names = _check_inputs(y_true, y_prob, class_names)
    fig = new_figure(figsize=(5.0, 4.5))
    ax = fig.add_subplot()
    classes = [1] if len(names) == 2 else list(range(len(names)))
    for c in classes:
        _draw_roc_curve(ax, labels == c, prob[:, c], names[c] if len(names) == 2 else f"{names[c]} vs rest")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title or "ROC curve", fontsize=10)
    ax.legend(loc="lower right", fontsize="small")
    return fig


CORRECT_COLOUR, WRONG_COLOUR = "tab:green", "tab:red"  # of a predictions grid's frames and titles
CORRECT_MARK, WRONG_MARK = "\u2713", "\u2717"  # check and cross: the colours' meaning without colour vision


def sample_cases(n_cases: int, n: int, *, seed: int) -> np.ndarray:
    """``min(n, n_cases)`` distinct case indices drawn with ``seed``, in increasing order (the same
    seed draws the same cases)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a whole number of images >= 1, got {n!r}")
    if n_cases < 1:
        raise ValueError("there are no cases to draw from")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(int(n_cases), size=min(int(n), int(n_cases)), replace=False))


def plot_predictions_grid(images: np.ndarray, y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str],
                          *, n: int = 16, seed: int = 0, title: str = "", ncols: int = 4) -> Figure:
    """Test images with their predicted and true class (paper 002's Figure 7): a fixed sample of
    ``n`` of them (:func:`sample_cases` with ``seed``; all of them if there are fewer).

    ``y_prob`` is the class probabilities (``(N, C)``, or 1-D floats: class 1's, as everywhere here),
    each title then giving the probability of the predicted class; or 1-D integer predicted classes.
    A correct prediction has a green frame and title and a check mark, a wrong one red and a cross.
    """
    names = _check_class_names(class_names)
    labels = _check_labels(y_true, len(names), "y_true")
    scores = np.asarray(y_prob)
    if scores.ndim == 1 and scores.dtype.kind in "iub":
        predicted, confidence = _check_labels(scores, len(names), "y_pred"), None
    else:
        prob = _as_prob_matrix(scores, len(names))
        predicted, confidence = prob.argmax(axis=1), prob.max(axis=1)
    pictures = np.asarray(images)
    if pictures.ndim not in (3, 4) or (pictures.ndim == 4 and pictures.shape[-1] not in (1, 3)):
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, 1 or 3), got {pictures.shape}")
    if not len(pictures) == len(labels) == len(predicted):
        raise ValueError(f"images has {len(pictures)} cases, y_true {len(labels)} and y_prob {len(predicted)}: "
                         "give the same cases to all three")
    picked = sample_cases(len(labels), n, seed=seed)
    ncols = max(1, min(int(ncols), len(picked)))
    nrows = math.ceil(len(picked) / ncols)
    fig = new_figure(figsize=(2.2 * ncols, 2.4 * nrows + 1.0), dpi=IMAGE_DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, i in zip(axes, picked):
        right = bool(predicted[i] == labels[i])
        colour, mark = (CORRECT_COLOUR, CORRECT_MARK) if right else (WRONG_COLOUR, WRONG_MARK)
        share = "" if confidence is None else f" ({confidence[i]:.2f})"
        _show(ax, pictures[i])
        ax.set_axis_on()  # for the coloured frame
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        ax.set_title(f"{mark} pred: {names[predicted[i]]}{share}\ntrue: {names[labels[i]]}", color=colour,
                     fontsize=8)
    for ax in axes[len(picked):]:
        ax.axis("off")
    correct = int((predicted[picked] == labels[picked]).sum())
    key = (f"{len(picked)} of {len(labels)} test images (drawn with seed {seed}): {correct} correct (green "
           f"{CORRECT_MARK}), {len(picked) - correct} wrong (red {WRONG_MARK})"
           + ("; pred (probability) / true" if confidence is not None else "; pred / true"))
    fig.suptitle(f"{title}\n{key}" if title else key, fontsize=9)
    return fig


def plot_history(history: pd.DataFrame, *, title: str = "") -> Figure:
    """Loss and accuracy per epoch, training against validation, in two panels.

    ``history`` is the CSV history of a run as a DataFrame (columns ``epoch``, ``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy``; a mapping or a Keras ``History`` also works).
    Epochs are plotted as the history numbers them (:func:`history_epochs`); a second training
    phase (``phase`` 2: fine-tuning) is shaded.
    """
    if hasattr(history, "history") and isinstance(history.history, Mapping):
        history = history.history
    frame = history if isinstance(history, pd.DataFrame) else pd.DataFrame(history)
    if frame.empty or "loss" not in frame.columns:
        raise ValueError(f"history needs a 'loss' column and at least one epoch, got columns {list(frame.columns)}")
    epochs = history_epochs(frame)
    accuracy = next((column for column in ACCURACY_COLUMNS if column in frame.columns), None)
    fine_tuned = epochs[frame["phase"].to_numpy() == 2] if "phase" in frame.columns else epochs[:0]
    fig = new_figure(figsize=(9.0, 3.5))
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    for ax, column, panel in ((loss_ax, "loss", "Loss"), (accuracy_ax, accuracy, "Accuracy")):
        ax.set_title(panel)
        ax.set_xlabel("Epoch")
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)  # whole epochs, even a single one
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if column is None:
            ax.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center", transform=ax.transAxes)
            continue
        if fine_tuned.size:  # the second phase of training.train: the base unfrozen
            ax.axvspan(fine_tuned[0] - 0.5, fine_tuned[-1] + 0.5, color="0.9", zorder=0, label="fine-tuning")
        ax.plot(epochs, frame[column].to_numpy(), marker="o", label="train")
        if f"val_{column}" in frame.columns:
            ax.plot(epochs, frame[f"val_{column}"].to_numpy(), marker="o", label="validation")
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def history_epochs(history: pd.DataFrame) -> np.ndarray:
    """The epochs of a history as it numbers them (``helpers.training`` writes ``epoch`` from 1, and
    a fine-tuning phase goes on from the first phase's last epoch); 1, 2, ... without ``epoch``."""
    if "epoch" not in history.columns:
        return np.arange(1, len(history) + 1)
    return history["epoch"].to_numpy()


HISTORY_FILE = "history.csv"  # the name helpers.training.train writes (training.HISTORY_FILE)


def read_history(path: Path | str) -> pd.DataFrame:
    """A run's ``history.csv`` as :func:`helpers.training.train` wrote it: one row per epoch,
    ``epoch`` numbered from 1, ``loss`` and the other logs as numbers.

    FileNotFoundError when the file is missing; ValueError naming the file when it cannot be read,
    lacks ``epoch`` or ``loss``, has no epoch, non-numeric values, or epochs that are not whole
    numbers from 1 upwards in increasing order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training history here (a run writes {HISTORY_FILE} when it trains)")
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the training history ({error})") from error
    missing = [column for column in ("epoch", "loss") if column not in frame.columns]
    if missing or frame.empty:
        raise ValueError(f"{path}: not a training history: it needs columns epoch and loss and one row per "
                         f"epoch; got columns {list(frame.columns)} and {len(frame)} rows")
    text = [column for column in frame.columns if not pd.api.types.is_numeric_dtype(frame[column])]
    if text:
        raise ValueError(f"{path}: column(s) {text} of the training history hold values that are not numbers")
    epochs = frame["epoch"].to_numpy(dtype=np.float64)
    if not (np.all(epochs == np.round(epochs)) and epochs[0] >= 1 and np.all(np.diff(epochs) > 0)):
        raise ValueError(f"{path}: the epochs must be whole numbers from 1 upwards in increasing order, "
                         f"got {epochs[:5].tolist()}{' ...' if len(epochs) > 5 else ''}")
    return frame.astype({"epoch": np.int64})


def _validation_columns(frame: pd.DataFrame, where: str) -> tuple[str, str]:
    """The validation accuracy and loss columns of a history; ValueError naming ``where`` without them."""
    accuracy = next((f"val_{column}" for column in ACCURACY_COLUMNS if f"val_{column}" in frame.columns), None)
    if accuracy is None or "val_loss" not in frame.columns:
        raise ValueError(f"{where} has no validation accuracy and loss (columns {list(frame.columns)}); "
                         "training.train logs val_accuracy and val_loss")
    return accuracy, "val_loss"


_RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")  # hollow, so that equal points all show


def plot_validation_curves(histories: Mapping[str, pd.DataFrame], *, title: str = "") -> Figure:
    """Validation accuracy (left) and validation loss (right) per epoch of several runs, one line
    per run labelled with its key (paper 002's Figure 6); epochs as each history numbers them.

    Every point is marked (a hollow marker of its own per run), so a one-epoch run (the smoke
    profile) still shows, and so do runs whose points coincide. ``histories`` maps a
    label (run name, backbone, weights) to a history as :func:`read_history` returns it.
    """
    if not histories:
        raise ValueError("histories is empty: give at least one run's history")
    frames = {label: (history if isinstance(history, pd.DataFrame) else pd.DataFrame(history))
              for label, history in histories.items()}
    columns = {}
    for label, frame in frames.items():
        if frame.empty:
            raise ValueError(f"histories[{label!r}] has no epoch")
        columns[label] = _validation_columns(frame, f"histories[{label!r}]")
    legend_rows = math.ceil(len(frames) / 3)
    fig = new_figure(figsize=(10.0, 4.0 + 0.22 * legend_rows))
    accuracy_ax, loss_ax = fig.subplots(1, 2)
    palette = plt.get_cmap("tab10" if len(frames) <= 10 else "tab20")
    first, last = math.inf, -math.inf
    for k, (label, frame) in enumerate(frames.items()):
        epochs = history_epochs(frame)
        first, last = min(first, float(epochs.min())), max(last, float(epochs.max()))
        style = {"color": palette(k % palette.N), "marker": _RUN_MARKERS[k % len(_RUN_MARKERS)],
                 "markersize": 6 if len(frame) <= 30 else 3, "markerfacecolor": "none",
                 "linewidth": 1.2, "linestyle": "-" if k < palette.N else "--"}
        accuracy, loss = columns[label]
        accuracy_ax.plot(epochs, frame[accuracy].to_numpy(dtype=np.float64), label=label, **style)
        loss_ax.plot(epochs, frame[loss].to_numpy(dtype=np.float64), **style)
    for ax, panel in ((accuracy_ax, "Validation accuracy"), (loss_ax, "Validation loss")):
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(panel.lower())
        ax.set_xlim(first - 0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    accuracy_ax.set_ylim(-0.02, 1.02)
    fig.legend(loc="outside lower center", ncols=min(3, len(frames)), fontsize="x-small")
    fig.suptitle(title or "Validation accuracy and loss per epoch", fontsize=10)
    return fig


def _short_weights(weights: Any) -> str:
    """A run record's weights in a word or two: "imagenet", "random" or the file."""
    text = str(weights)
    return "random" if weights is None or text.startswith("random") else text.split(" (")[0]


def run_history_file(run_folder: Path | str, run: Mapping[str, Any]) -> Path | None:
    """Where a finished run keeps the history of the network it trained, or None where it trained
    none: ``history.csv`` in its folder (lesson 3; lesson 4 where it trained its network rather than
    reusing lesson 3's), or in the folder of its own model (lesson 5: ``fusion/history.csv``)."""
    folder = Path(run_folder)
    for candidate in (folder / HISTORY_FILE, folder / str(run.get("classifier", "")) / HISTORY_FILE):
        if candidate.is_file():
            return candidate
    return None


def histories_by_study(entries: Sequence[Mapping[str, Any]]) -> tuple[dict[str, dict[str, pd.DataFrame]], list[str]]:
    """The training histories of finished runs, by paper: ``({study: {label: history}}, names of the
    finished runs that have none)``. ``entries`` as ``helpers.reporting.collect_runs`` gives them
    (``name``, ``dir``, ``metrics``); a label is ``"<run name> (<backbone>, <weights>)"``."""
    histories: dict[str, dict[str, pd.DataFrame]] = {}
    without = []
    for entry in entries:
        run = (entry.get("metrics") or {}).get("run")
        if not run:
            continue  # not finished: nothing to compare
        path = run_history_file(entry["dir"], run)
        if path is None:
            without.append(str(entry["name"]))
            continue
        label = f"{entry['name']} ({run.get('backbone')}, {_short_weights(run.get('weights'))})"
        histories.setdefault(str(run.get("study")), {})[label] = read_history(path)
    return dict(sorted(histories.items())), without


def validation_curves_title(entries: Sequence[Mapping[str, Any]], study: str, profile: str) -> str:
    """Title of :func:`plot_validation_curves` for one paper's runs: the paper, and which data,
    profile and Keras backend the runs used (their weights are in the legend)."""
    from helpers.reporting import data_named  # reporting imports this module
    from helpers.studies import get_study

    runs = [entry["metrics"] for entry in entries
            if entry.get("metrics") and str(entry["metrics"]["run"].get("study")) == study]
    data = ", ".join(sorted({data_named(metrics["run"]) for metrics in runs})) or "no"
    backends = sorted({(metrics.get("environment") or {}).get("backend") for metrics in runs} - {None})
    return (f"Paper {study} ({get_study(study).slug}): validation accuracy and loss of its runs per epoch\n"
            f"{data} data, {profile} profile, Keras backend {', '.join(backends) or 'not recorded'}; "
            "weights per run in the legend")


def save_figure(fig: Figure, path: Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically (same figure, same bytes) and close it; return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: save_figure writes PNG files; use a .png name")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float, np.integer, np.floating)) or not 0 < dpi < 10_000:
        raise ValueError(f"{path}: dpi must be a positive number below 10000, got {dpi!r}")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# metrics.json
# --------------------------------------------------------------------------------------------

def _missing_level_keys(level: Any, prefix: str, version: int = METRICS_SCHEMA_VERSION) -> list[str]:
    if not isinstance(level, Mapping):
        return [f"{prefix} (must be an object)"]
    missing = [f"{prefix}.{key}" for key in LEVEL_KEYS if key not in level]
    for name in METRIC_NAMES:
        entry = level.get(name)
        if name in level and not isinstance(entry, Mapping):
            missing.append(f"{prefix}.{name} (must be an object)")
        elif isinstance(entry, Mapping):
            missing += [f"{prefix}.{name}.{key}" for key in METRIC_ENTRY_KEYS if key not in entry]
    if version >= 3:
        missing += _missing_per_class_keys(level, f"{prefix}.per_class")
    return missing


def _missing_per_class_keys(level: Mapping, prefix: str) -> list[str]:
    """``per_class`` needs an entry for each of the level's classes and for each average."""
    block = level.get("per_class")
    if not isinstance(block, Mapping):
        return [prefix if block is None else f"{prefix} (must be an object)"]
    names = level.get("class_names")
    missing = []
    for name in [*(names if isinstance(names, list) else []), *AVERAGES]:
        entry = block.get(name)
        if not isinstance(entry, Mapping):
            missing.append(f"{prefix}.{name}" + ("" if entry is None else " (must be an object)"))
        else:
            missing += [f"{prefix}.{name}.{key}" for key in PER_CLASS_KEYS if key not in entry]
    return missing


def _missing_keys(record: Any, version: int = METRICS_SCHEMA_VERSION) -> list[str]:
    """Required keys absent from a metrics record (of schema ``version``), as dotted paths."""
    if not isinstance(record, Mapping):
        return ["(the record must be an object)"]
    missing = []
    run = record.get("run")
    if not isinstance(run, Mapping):
        missing.append("run" if "run" not in record else "run (must be an object)")
    else:
        missing += [f"run.{key}" for key in RUN_KEYS if key not in run]
    if "image_level" not in record:
        missing.append("image_level")
    else:
        missing += _missing_level_keys(record["image_level"], "image_level", version)
    if record.get("patient_level") is not None:
        missing += _missing_level_keys(record["patient_level"], "patient_level", version)
    if "localisation" in record:  # optional (helpers.explain); runs before it lack it
        missing += _missing_localisation_keys(record["localisation"])
    return missing


LOCALISATION_KEYS = ("status", "method", "target_layer", "class_explained", "lesions", "input", "n_images",
                     "n_patients", "n_boot")
LOCALISATION_SCORES = ("pointing_game", "mass_inside")
LOCALISATION_BASELINES = ("uniform", "centred")


def _missing_localisation_keys(block: Any) -> list[str]:
    """The optional ``localisation`` block (:func:`helpers.explain.explain_run`): its descriptive keys;
    with status "ok" each score's ``value`` and ``ci`` and both baselines' scores, else a ``reason``."""
    if not isinstance(block, Mapping):
        return ["localisation (must be an object)"]
    missing = [f"localisation.{key}" for key in LOCALISATION_KEYS if key not in block]
    if block.get("status") != "ok":
        return missing + ([] if "reason" in block else ["localisation.reason"])
    for score in LOCALISATION_SCORES:
        entry = block.get(score)
        missing += [f"localisation.{score}.{key}" for key in ("value", "ci")
                    if not isinstance(entry, Mapping) or key not in entry]
    baselines = block.get("baselines")
    for name in LOCALISATION_BASELINES:
        entry = baselines.get(name) if isinstance(baselines, Mapping) else None
        missing += [f"localisation.baselines.{name}.{score}" for score in LOCALISATION_SCORES
                    if not isinstance(entry, Mapping) or score not in entry]
    return missing


def _to_plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON types: floats rounded to 6 decimals, NaN as None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return None
        if math.isinf(number):
            raise ValueError(f"{where}: infinite value {number} cannot be stored in metrics.json")
        return round(number, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            if TIMING_KEY.search(key):
                raise ValueError(
                    f"{where}.{key}: timings and timestamps do not belong in metrics.json "
                    "(they break byte-identical reruns); store them elsewhere"
                )
            plain[key] = _to_plain(item, f"{where}.{key}")
        return plain
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"{where}: cannot store a {type(value).__name__} in metrics.json")


def write_metrics_json(path: Path, record: dict) -> Path:
    """Validate ``record`` and write it as versioned, byte-stable JSON, atomically; return the path.

    ``record`` needs ``run`` (with all of RUN_KEYS) and ``image_level`` (as from ``evaluate``);
    ``patient_level`` is optional. ``environment`` (what the run computed with) is this process'
    :func:`helpers.backend.environment` unless the record brings its own. Nothing is written if
    the record is invalid.
    """
    path = Path(path)
    missing = _missing_keys(record)
    if missing:
        raise ValueError(f"{path}: metrics record is missing keys: {', '.join(missing)}")
    version = record.get("schema_version", METRICS_SCHEMA_VERSION)
    if version != METRICS_SCHEMA_VERSION:
        raise ValueError(f"{path}: record has schema_version {version!r}, this code writes {METRICS_SCHEMA_VERSION}")
    if "environment" not in record:
        from helpers import backend  # imports Keras (quietly): only when a record is written

        record = {**record, "environment": backend.environment()}
    _check_environment(record["environment"], path)
    plain = _to_plain(record, "record")
    plain["schema_version"] = METRICS_SCHEMA_VERSION
    text = json.dumps(plain, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return write_text_atomic(path, text)


def read_metrics_json(path: Path) -> dict:
    """Read a ``metrics.json``; ValueError naming the file if it is not valid or not supported.

    Undefined metrics come back as ``None`` (JSON ``null``). Files of schema 1 and 2 have no
    ``environment`` (1) and no ``per_class`` (1, 2); readers must allow for that.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid metrics.json ({error})") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a valid metrics.json (top level is not an object)")
    version = record.get("schema_version")
    if version is None:
        raise ValueError(f"{path}: no schema_version; not a metrics.json written by helpers.evaluation")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: invalid schema_version {version!r}")
    if version > METRICS_SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {version} is newer than this code reads ({METRICS_SCHEMA_VERSION}); "
            "update the helpers package"
        )
    missing = _missing_keys(record, version)
    if version >= 2 and "environment" not in record:
        missing.append("environment")
    if missing:
        raise ValueError(f"{path}: metrics.json is missing keys: {', '.join(missing)}")
    if "environment" in record:
        _check_environment(record["environment"], path)
    return record


def _check_environment(environment: Any, path: Path) -> None:
    """``environment`` must map names to strings (``helpers.backend.environment``)."""
    if not isinstance(environment, Mapping) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in environment.items()):
        raise ValueError(f"{path}: environment must map names to strings, got {environment!r}")
