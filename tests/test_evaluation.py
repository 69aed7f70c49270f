"""Tests of helpers.evaluation: metrics, bootstrap intervals, patient level, figures, metrics.json."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import (accuracy_score, classification_report, f1_score, precision_score, recall_score,
                             roc_auc_score)

from helpers import evaluation as ev

BINARY = ["benign", "malignant"]
THREE = ["normal", "benign", "malignant"]

# Binary example worked by hand: TP 3, FN 1, FP 1, TN 5; 22 of 24 positive/negative pairs ranked right.
BINARY_TRUE = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
BINARY_P1 = np.array([0.9, 0.8, 0.4, 0.7, 0.1, 0.2, 0.6, 0.3, 0.45, 0.05])
BINARY_PROB = np.column_stack([1 - BINARY_P1, BINARY_P1])

# Three-class example worked by hand: predictions [0, 1, 1, 1, 2, 0].
THREE_TRUE = np.array([0, 0, 1, 1, 2, 2])
THREE_PROB = np.array([
    [0.7, 0.2, 0.1],
    [0.3, 0.6, 0.1],
    [0.2, 0.7, 0.1],
    [0.1, 0.8, 0.1],
    [0.1, 0.2, 0.7],
    [0.5, 0.1, 0.4],
])


def noisy_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a classifier that is right about 80 % of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.5 + 0.35 * (2 * y - 1) + rng.normal(0, 0.45, n), 0, 1)
    return y, np.column_stack([1 - p1, p1])


def make_record(seed: int = 0) -> dict:
    y, prob = noisy_binary(40, seed=3)
    patients = [f"P{i // 2:03d}" for i in range(40)]
    result = ev.evaluate(y, prob, BINARY, patient_ids=patients, n_boot=50, seed=seed)
    run = {
        "name": "vgg16_cbis", "notebook": "03_transfer_learning.ipynb", "profile": "smoke",
        "study": "mahmood2021", "dataset": "synthetic", "task": "benign_vs_malignant",
        "classes": BINARY, "backbone": "vgg16", "head": "mahmood2021", "weights": None,
        "image_size": (32, 32), "epochs": np.int64(1), "batch_size": 8, "seed": seed,
        "preset": "mahmood2021", "n_train": 100, "n_val": 20, "n_test": np.int32(40),
    }
    return {"run": run, **result}


# ---------------------------------------------------------------------------- compute_metrics

def test_binary_metrics_match_hand_computation():
    metrics = ev.compute_metrics(BINARY_TRUE, BINARY_PROB, BINARY)
    assert list(metrics) == list(ev.METRIC_NAMES)
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["precision"] == pytest.approx(0.75)
    assert metrics["recall"] == pytest.approx(0.75)
    assert metrics["specificity"] == pytest.approx(5 / 6)
    assert metrics["f1"] == pytest.approx(0.75)
    assert metrics["roc_auc"] == pytest.approx(22 / 24)


def test_three_class_metrics_match_hand_computation_and_sklearn():
    metrics = ev.compute_metrics(THREE_TRUE, THREE_PROB, THREE)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics["specificity"] == pytest.approx((3 / 4 + 3 / 4 + 1) / 3)
    assert metrics["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert metrics["roc_auc"] == pytest.approx((7 / 8 + 1 + 1) / 3)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(THREE_TRUE, THREE_PROB, multi_class="ovr"))


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_metrics_agree_with_sklearn_including_tied_scores(n_classes):
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 120)
    prob = np.round(rng.random((120, n_classes)), 1) + 0.01  # many ties
    prob /= prob.sum(axis=1, keepdims=True)
    names = [f"class{c}" for c in range(n_classes)]
    metrics = ev.compute_metrics(y, prob, names)
    pred = prob.argmax(axis=1)
    average = "binary" if n_classes == 2 else "macro"
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert metrics["precision"] == pytest.approx(precision_score(y, pred, average=average))
    assert metrics["recall"] == pytest.approx(recall_score(y, pred, average=average))
    assert metrics["f1"] == pytest.approx(f1_score(y, pred, average=average))
    expected_auc = (
        roc_auc_score(y, prob[:, 1]) if n_classes == 2
        else np.mean([roc_auc_score(y == c, prob[:, c]) for c in range(n_classes)])
    )
    assert metrics["roc_auc"] == pytest.approx(expected_auc)


def test_one_dimensional_probability_is_the_positive_class():
    assert ev.compute_metrics(BINARY_TRUE, BINARY_P1, BINARY) == ev.compute_metrics(BINARY_TRUE, BINARY_PROB, BINARY)


def test_undefined_metrics_are_nan_not_a_crash():
    only_malignant = ev.compute_metrics(np.ones(4, dtype=int), BINARY_PROB[:4], BINARY)
    assert math.isnan(only_malignant["roc_auc"])
    assert math.isnan(only_malignant["specificity"])
    assert only_malignant["recall"] == pytest.approx(0.75)
    never_positive = ev.compute_metrics(np.array([0, 1, 0, 1]), np.full((4, 2), [0.9, 0.1]), BINARY)
    assert math.isnan(never_positive["precision"])
    assert never_positive["f1"] == 0.0 and never_positive["recall"] == 0.0
    absent_class = ev.compute_metrics(np.array([0, 1, 0, 1]), THREE_PROB[:4], THREE)
    assert math.isnan(absent_class["roc_auc"])


@pytest.mark.parametrize(
    "y_true, y_prob, names, message",
    [
        (np.array([0, 1]), np.ones((3, 2)) / 2, BINARY, "2 cases"),
        (np.array([0, 2]), np.ones((2, 2)) / 2, BINARY, "outside"),
        (np.array([0, 1]), np.ones((2, 3)) / 3, BINARY, "3 columns"),
        (np.array([0.5, 1.0]), np.ones((2, 2)) / 2, BINARY, "integer"),
        (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), BINARY, "NaN"),
        (np.array([0, 1]), np.ones((2, 2)) / 2, ["only"], "two classes"),
        (np.eye(2, dtype=int), np.ones((2, 2)) / 2, BINARY, "argmax"),
        (np.array([], dtype=int), np.ones((0, 2)), BINARY, "empty"),
    ],
)
def test_bad_input_is_a_clear_error(y_true, y_prob, names, message):
    with pytest.raises(ValueError, match=message):
        ev.compute_metrics(y_true, y_prob, names)


# ---------------------------------------------------------------------------- bootstrap_ci

def test_bootstrap_interval_contains_estimate_and_is_reproducible():
    y, prob = noisy_binary(200, seed=0)
    point = ev.compute_metrics(y, prob, BINARY)
    started = time.perf_counter()
    ci = ev.bootstrap_ci(y, prob, BINARY, n_boot=1000, seed=7)
    assert time.perf_counter() - started < 2.0
    for name in ev.METRIC_NAMES:
        low, high = ci[name]
        assert low < point[name] < high, name
    assert ev.bootstrap_ci(y, prob, BINARY, n_boot=1000, seed=7) == ci
    assert ev.bootstrap_ci(y, prob, BINARY, n_boot=1000, seed=8) != ci


def test_bootstrap_interval_narrows_with_more_cases():
    small = ev.bootstrap_ci(*noisy_binary(50, seed=1), BINARY, n_boot=400, seed=0)
    large = ev.bootstrap_ci(*noisy_binary(800, seed=1), BINARY, n_boot=400, seed=0)
    for name in ev.METRIC_NAMES:
        assert large[name][1] - large[name][0] < 0.6 * (small[name][1] - small[name][0]), name
    wide = ev.bootstrap_ci(*noisy_binary(200, seed=1), BINARY, n_boot=400, seed=0, level=0.95)
    narrow = ev.bootstrap_ci(*noisy_binary(200, seed=1), BINARY, n_boot=400, seed=0, level=0.5)
    assert narrow["accuracy"][1] - narrow["accuracy"][0] < wide["accuracy"][1] - wide["accuracy"][0]


def test_bootstrap_equals_resampling_by_hand():
    y, prob = noisy_binary(30, seed=2)
    prob = np.round(prob, 1)  # ties in the scores
    n_boot, seed = 60, 5
    draws = np.random.default_rng(seed).integers(0, y.size, size=(n_boot, y.size))
    by_hand = {name: [] for name in ev.METRIC_NAMES}
    for rows in draws:
        yy, pp = y[rows], prob[rows]
        pred = pp.argmax(axis=1)
        by_hand["accuracy"].append(accuracy_score(yy, pred))
        by_hand["f1"].append(f1_score(yy, pred))
        by_hand["roc_auc"].append(roc_auc_score(yy, pp[:, 1]) if 0 < yy.sum() < yy.size else np.nan)
    ci = ev.bootstrap_ci(y, prob, BINARY, n_boot=n_boot, seed=seed)
    for name in ("accuracy", "f1", "roc_auc"):
        values = np.array(by_hand[name])
        expected = np.percentile(values[~np.isnan(values)], [2.5, 97.5])
        assert ci[name] == pytest.approx(tuple(expected)), name


def test_bootstrap_of_undefined_metric_is_nan_and_zero_resamples_allowed():
    ci = ev.bootstrap_ci(np.ones(5, dtype=int), np.full((5, 2), 0.5), BINARY, n_boot=20)
    assert all(math.isnan(v) for v in ci["roc_auc"])
    assert not math.isnan(ci["accuracy"][0])
    assert all(math.isnan(v) for v in ev.bootstrap_ci(BINARY_TRUE, BINARY_PROB, BINARY, n_boot=0)["f1"])
    with pytest.raises(ValueError, match="level"):
        ev.bootstrap_ci(BINARY_TRUE, BINARY_PROB, BINARY, level=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        ev.bootstrap_ci(BINARY_TRUE, BINARY_PROB, BINARY, n_boot=-1)


# ---------------------------------------------------------------------------- patients and evaluate

def test_aggregate_by_patient_means_probabilities_and_takes_highest_class():
    y = np.array([0, 1, 0, 0, 1, 1])
    prob = np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    ids = ["p2", "p2", "p1", "p1", "p3", "p3"]
    patient_true, patient_prob, patients = ev.aggregate_by_patient(y, prob, ids)
    assert patients == ["p1", "p2", "p3"]
    assert patient_true.tolist() == [0, 1, 1]
    np.testing.assert_allclose(patient_prob, [[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(ValueError, match="length"):
        ev.aggregate_by_patient(y, prob, ids[:-1])
    with pytest.raises(ValueError, match="missing"):
        ev.aggregate_by_patient(y, prob, ["p1", None, "p1", "p2", "p3", "p3"])


def test_evaluate_has_image_and_patient_levels():
    y, prob = noisy_binary(40, seed=4)
    patients = [f"P{i % 20}" for i in range(40)]
    result = ev.evaluate(y, prob, BINARY, patient_ids=patients, n_boot=100, seed=1)
    image = result["image_level"]
    assert image["n"] == 40 and image["class_names"] == BINARY
    assert np.sum(image["confusion_matrix"]) == 40
    point = ev.compute_metrics(y, prob, BINARY)
    for name in ev.METRIC_NAMES:
        assert set(image[name]) == {"value", "ci_low", "ci_high"}
        assert image[name]["value"] == point[name]
        assert image[name]["ci_low"] <= image[name]["ci_high"]
    patient = result["patient_level"]
    patient_true, patient_prob, _ = ev.aggregate_by_patient(y, prob, patients)
    assert patient["n"] == 20
    assert patient["accuracy"]["value"] == ev.compute_metrics(patient_true, patient_prob, BINARY)["accuracy"]
    assert result["bootstrap"] == {"n_boot": 100, "seed": 1, "level": 0.95}
    assert ev.evaluate(y, prob, BINARY, n_boot=10)["patient_level"] is None
    again = ev.evaluate(y, prob, BINARY, patient_ids=patients, n_boot=100, seed=1)
    assert json.dumps(again) == json.dumps(result)  # NaN-safe comparison


def test_confusion_matrix_rows_are_true_classes():
    cm = ev.evaluate(THREE_TRUE, THREE_PROB, THREE, n_boot=0)["image_level"]["confusion_matrix"]
    assert cm == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


# ---------------------------------------------------------------------------- per class

def _report_dict(y_true, y_pred, names, zero_division):
    """scikit-learn's classification_report, in per_class_metrics' keys (no accuracy entry)."""
    report = classification_report(y_true, y_pred, labels=list(range(len(names))), target_names=names,
                                   output_dict=True, zero_division=zero_division)
    return {key: {"precision": row["precision"], "recall": row["recall"], "f1": row["f1-score"],
                  "support": int(row["support"])} for key, row in report.items() if key != "accuracy"}


def _assert_blocks_equal(ours, theirs):
    assert list(ours) == list(theirs)
    for key, row in theirs.items():
        for name, value in row.items():
            assert ours[key][name] == pytest.approx(value, nan_ok=True), (key, name)


def test_per_class_matches_classification_report_on_the_hand_worked_case():
    block = ev.per_class_metrics(THREE_TRUE, THREE_PROB.argmax(axis=1), THREE)
    assert block["normal"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert block["benign"]["precision"] == pytest.approx(2 / 3) and block["benign"]["f1"] == pytest.approx(0.8)
    assert block["macro avg"]["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    _assert_blocks_equal(block, _report_dict(THREE_TRUE, THREE_PROB.argmax(axis=1), THREE, 0))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_per_class_matches_classification_report_on_imbalanced_data(n_classes):
    rng = np.random.default_rng(n_classes)
    y = rng.choice(n_classes, 150, p=[0.7] + [0.3 / (n_classes - 1)] * (n_classes - 1))
    pred = np.where(rng.random(150) < 0.6, y, rng.integers(0, n_classes, 150))
    names = [f"class{c}" for c in range(n_classes)]
    block = ev.per_class_metrics(y, pred, names)
    _assert_blocks_equal(block, _report_dict(y, pred, names, 0))
    assert block["weighted avg"]["recall"] == pytest.approx(accuracy_score(y, pred))  # always, by definition
    assert block["weighted avg"]["f1"] != pytest.approx(block["macro avg"]["f1"])


def test_per_class_zero_division_cases():
    y_true = np.array([0, 0, 0, 1, 1, 0])
    never_predicted = np.zeros(6, dtype=int)  # class 1 is never predicted: its precision is undefined
    block = ev.per_class_metrics(y_true, never_predicted, BINARY)
    assert math.isnan(block["malignant"]["precision"]) and block["malignant"]["recall"] == 0.0
    assert block["malignant"]["f1"] == 0.0
    assert math.isnan(block["macro avg"]["precision"]) and math.isnan(block["weighted avg"]["precision"])
    assert block["weighted avg"]["recall"] == pytest.approx(4 / 6)
    for key in ("benign", "malignant"):  # per class the same as scikit-learn's NaN convention
        assert block[key] == pytest.approx(_report_dict(y_true, never_predicted, BINARY, np.nan)[key], nan_ok=True)
    as_zero = ev.per_class_metrics(y_true, never_predicted, BINARY, zero_division=0.0)
    _assert_blocks_equal(as_zero, _report_dict(y_true, never_predicted, BINARY, 0))
    assert as_zero["weighted avg"]["precision"] == pytest.approx((4 / 6) ** 2)

    absent = ev.per_class_metrics(np.array([0, 0, 2, 2]), np.array([0, 1, 2, 2]), THREE)  # no benign case
    assert absent["benign"]["support"] == 0 and math.isnan(absent["benign"]["recall"])
    assert absent["benign"]["precision"] == 0.0 and absent["benign"]["f1"] == 0.0
    assert math.isnan(absent["macro avg"]["recall"])
    assert absent["weighted avg"]["recall"] == pytest.approx(0.75)  # support 0 carries no weight
    _assert_blocks_equal(ev.per_class_metrics(np.array([0, 0, 2, 2]), np.array([0, 1, 2, 2]), THREE, zero_division=0),
                         _report_dict(np.array([0, 0, 2, 2]), np.array([0, 1, 2, 2]), THREE, 0))
    with pytest.raises(ValueError, match="zero_division"):
        ev.per_class_metrics(y_true, never_predicted, BINARY, zero_division=0.5)
    with pytest.raises(ValueError, match="collide"):
        ev.per_class_metrics(y_true, never_predicted, ["benign", "macro avg"])
    with pytest.raises(ValueError, match="6 cases but y_pred has 5"):
        ev.per_class_metrics(y_true, never_predicted[:5], BINARY)


def test_evaluate_has_per_class_at_image_and_patient_level():
    y = np.array([0, 1, 0, 0, 1, 1, 0, 1, 1, 0])
    prob = np.column_stack([1 - BINARY_P1, BINARY_P1])
    patients = ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4", "p5", "p5"]
    result = ev.evaluate(y, prob, BINARY, patient_ids=patients, n_boot=0)
    _assert_blocks_equal(result["image_level"]["per_class"], _report_dict(y, prob.argmax(axis=1), BINARY, np.nan))
    patient_true, patient_prob, _ = ev.aggregate_by_patient(y, prob, patients)
    patient_block = result["patient_level"]["per_class"]
    assert patient_block["weighted avg"]["support"] == 5 and patient_true.tolist() == [1, 0, 1, 1, 1]
    for key in BINARY:
        assert patient_block[key] == pytest.approx(
            _report_dict(patient_true, patient_prob.argmax(axis=1), BINARY, np.nan)[key], nan_ok=True)
    malignant = result["image_level"]["per_class"]["malignant"]  # the top level is the positive class's
    assert (malignant["precision"], malignant["recall"], malignant["f1"]) == pytest.approx(
        tuple(result["image_level"][name]["value"] for name in ("precision", "recall", "f1")))


def test_majority_baseline_on_paper_003s_support():
    baseline = ev.majority_baseline({"Class 0": 66197, "Class 1": 3184})
    share = 66197 / 69381
    assert baseline["majority_class"] == "Class 0" and baseline["accuracy"] == pytest.approx(share)
    weighted, macro = baseline["per_class"]["weighted avg"], baseline["per_class"]["macro avg"]
    assert weighted["recall"] == pytest.approx(share)
    assert weighted["f1"] == pytest.approx(share * 2 * share / (1 + share))
    assert macro["f1"] == pytest.approx(share / (1 + share))
    assert math.isnan(weighted["precision"])  # the minority class is never predicted
    as_printed = ev.majority_baseline({"Class 0": 66197, "Class 1": 3184}, zero_division=0.0)
    assert as_printed["per_class"]["weighted avg"]["precision"] == pytest.approx(share ** 2)
    assert ev.majority_baseline({"benign": 3, "malignant": 3})["majority_class"] == "benign"  # ties: the first
    for bad in ({"a": 5}, {"a": 1, "b": -1}, {"a": 0, "b": 0}, {"a": 1.5, "b": 2}, [3, 4]):
        with pytest.raises(ValueError, match="support"):
            ev.majority_baseline(bad)


def test_plot_per_class_draws_a_panel_per_class_and_average():
    open_before = plt.get_fignums()
    block = ev.per_class_metrics(np.array([0, 0, 1, 1, 0]), np.zeros(5, dtype=int), BINARY)
    fig = ev.plot_per_class(block, title="one model")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["benign (n=3)", "malignant (n=2)", "macro avg (n=5)", "weighted avg (n=5)"]
    assert [len(ax.patches) for ax in fig.axes] == [3, 2, 2, 2]  # undefined precisions have no bar...
    assert [t.get_text() for t in fig.axes[1].texts] == ["n/a", "0.00", "0.00"]  # ...but a mark; values shown
    assert fig.axes[0].patches[1].get_height() == pytest.approx(1.0)  # benign recall
    three = ev.evaluate(THREE_TRUE, THREE_PROB, THREE, n_boot=0)["image_level"]["per_class"]
    several = ev.plot_per_class({"a": block, "b": three, "c": three, "d": block})
    assert [ax.get_title() for ax in several.axes][:3] == ["benign", "malignant (n=2)", "normal (n=2)"]
    assert len(several.axes[2].patches) == 6  # two models have a normal class
    assert [t.get_text() for t in several.axes[-1].get_xticklabels()] == ["a", "b", "c", "d"]
    assert not several.axes[0].texts  # many bars: no value labels
    with pytest.raises(ValueError, match="schema 3"):
        ev.plot_per_class({"old run": {"benign": {}}})
    assert plt.get_fignums() == open_before


def test_metrics_json_keeps_per_class_and_reads_older_files_without_it(tmp_path):
    record = {**make_record(), "environment": {"backend": "jax", "device": "CPU: x"}}  # no Keras import
    record["image_level"]["per_class"]["malignant"]["precision"] = math.nan
    loaded = ev.read_metrics_json(ev.write_metrics_json(tmp_path / "metrics.json", record))
    block = loaded["image_level"]["per_class"]
    assert set(block) == {"benign", "malignant", "macro avg", "weighted avg"}
    assert block["malignant"]["precision"] is None and type(block["benign"]["support"]) is int
    assert loaded["patient_level"]["per_class"]["weighted avg"]["support"] == 20
    current = json.loads((tmp_path / "metrics.json").read_text())
    for level in ("image_level", "patient_level"):
        del current[level]["per_class"]
    (tmp_path / "v2.json").write_text(json.dumps({**current, "schema_version": 2}))
    assert "per_class" not in ev.read_metrics_json(tmp_path / "v2.json")["image_level"]
    (tmp_path / "v3.json").write_text(json.dumps(current))
    with pytest.raises(ValueError, match=r"v3\.json.*image_level\.per_class"):
        ev.read_metrics_json(tmp_path / "v3.json")
    broken = {**make_record(), "environment": record["environment"]}
    del broken["patient_level"]["per_class"]["weighted avg"]["support"]
    with pytest.raises(ValueError, match=r"patient_level\.per_class\.weighted avg\.support"):
        ev.write_metrics_json(tmp_path / "broken.json", broken)
    assert not (tmp_path / "broken.json").exists()


# ---------------------------------------------------------------------------- figures

def history_frame() -> pd.DataFrame:
    """A small history for figure plumbing (epochs numbered from 1, as helpers.training does)."""
    return pd.DataFrame({
        "epoch": [1, 2, 3], "loss": [0.9, 0.6, 0.4], "accuracy": [0.5, 0.7, 0.8],
        "val_loss": [1.0, 0.8, 0.7], "val_accuracy": [0.5, 0.6, 0.65],
    })


def _bright_dark(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 bright, class 0 dark, plus noise: learnable in an epoch or two."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = np.where(y == 1, 0.6, -0.6)[:, None, None, None] + rng.normal(0, 0.3, (n, 16, 16, 3))
    return x.astype("float32"), y


@pytest.fixture(scope="module")
def trained_histories(tmp_path_factory) -> dict[str, tuple[pd.DataFrame, Path]]:
    """Real history files: a tiny network trained as lesson 3 trains (``pipeline.fit_classifier``,
    which ``pipeline.train_model`` calls; smoke settings of paper 000), for 3 epochs, and for 2
    epochs plus 1 of fine-tuning. ``{"plain" | "fine_tuned": (returned history, history.csv)}``."""
    import keras

    from helpers import pipeline, plan

    def tiny(name: str) -> keras.Model:
        keras.utils.set_random_seed(0)
        image = keras.Input((16, 16, 3))
        # a one-layer stand-in for a backbone: training.train finds the base by its registry name
        base = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu")],
                                name="squeezenet")
        x = keras.layers.GlobalAveragePooling2D()(base(image))
        return keras.Model(image, keras.layers.Dense(2, activation="softmax")(x), name=name)

    (x_train, y_train), (x_val, y_val) = _bright_dark(16, 1), _bright_dark(8, 2)
    runs = {}
    for name, options in (("plain", {"epochs": 3}), ("fine_tuned", {"epochs": 2, "fine_tune_epochs": 1})):
        settings = plan.resolve_settings("smoke", study="000", **options)
        folder = tmp_path_factory.mktemp(name)
        history = pipeline.fit_classifier(settings, tiny(name), x_train, y_train, x_val, y_val, folder, verbose=0)
        runs[name] = (history, folder / ev.HISTORY_FILE)
    return runs


def _line_data(ax) -> list[tuple[list[float], list[float]]]:
    return [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines]


def test_plot_history_draws_a_real_history_file_at_its_own_epochs(trained_histories):
    returned, path = trained_histories["plain"]  # lesson 3 plots the returned frame, lesson 6 reads the file
    from_file = ev.read_history(path)
    pd.testing.assert_frame_equal(from_file, returned, check_dtype=False)
    assert from_file["epoch"].tolist() == [1, 2, 3]
    for history in (returned, from_file):
        loss_ax, accuracy_ax = ev.plot_history(history).axes
        assert _line_data(loss_ax) == [([1, 2, 3], from_file["loss"].tolist()),
                                       ([1, 2, 3], from_file["val_loss"].tolist())]
        assert _line_data(accuracy_ax) == [([1, 2, 3], from_file["accuracy"].tolist()),
                                           ([1, 2, 3], from_file["val_accuracy"].tolist())]
        assert not loss_ax.patches  # one phase: nothing shaded
    keras_like = {column: from_file[column].tolist() for column in ("loss", "val_loss")}  # no epoch column
    assert _line_data(ev.plot_history(keras_like).axes[0])[0][0] == [1, 2, 3]
    one_epoch = ev.plot_history(from_file.head(1)).axes[0]  # the smoke profile: whole epochs on the axis
    low, high = one_epoch.get_xlim()
    assert [tick for tick in one_epoch.get_xticks() if low <= tick <= high] == [1.0]


def test_plot_history_of_a_fine_tuning_run_goes_on_numbering_and_shades_phase_two(trained_histories):
    returned, path = trained_histories["fine_tuned"]
    history = ev.read_history(path)
    assert history["epoch"].tolist() == [1, 2, 3] and history["phase"].tolist() == [1, 1, 2]
    pd.testing.assert_frame_equal(history, returned, check_dtype=False)
    for ax, column in zip(ev.plot_history(history).axes, ("loss", "accuracy")):
        assert _line_data(ax) == [([1, 2, 3], history[column].tolist()), ([1, 2, 3], history[f"val_{column}"].tolist())]
        (shade,) = ax.patches
        assert shade.get_label() == "fine-tuning"
        assert shade.get_x() == 2.5 and shade.get_width() == 1.0  # epoch 3, phase two


def test_read_history_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        ev.read_history(tmp_path / "nowhere.csv")
    cases = {
        "empty.csv": ("", "cannot read"),
        "columns.csv": ("epoch,accuracy\n1,0.5\n", "epoch and loss"),
        "no_rows.csv": ("epoch,loss\n", "epoch and loss"),
        "text.csv": ("epoch,loss\n1,0.5\n2,high\n", "not numbers"),
        "from_zero.csv": ("epoch,loss\n0,0.5\n1,0.4\n", "from 1 upwards"),
        "unordered.csv": ("epoch,loss\n2,0.5\n1,0.4\n", "increasing"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"{name}.*{message}"):
            ev.read_history(tmp_path / name)


def test_plot_validation_curves_draws_one_line_per_run_in_each_panel(trained_histories):
    histories = {f"run_{name} (tiny, random)": ev.read_history(path) for name, (_, path) in trained_histories.items()}
    histories["one_epoch (tiny, random)"] = histories["run_plain (tiny, random)"].head(1)
    fig = ev.plot_validation_curves(histories, title="validation")
    accuracy_ax, loss_ax = fig.axes
    assert [accuracy_ax.get_title(), loss_ax.get_title()] == ["Validation accuracy", "Validation loss"]
    expected = list(histories.values())
    assert _line_data(accuracy_ax) == [(h["epoch"].tolist(), h["val_accuracy"].tolist()) for h in expected]
    assert _line_data(loss_ax) == [(h["epoch"].tolist(), h["val_loss"].tolist()) for h in expected]
    markers = [line.get_marker() for line in accuracy_ax.lines]  # a one-epoch run is a visible point
    assert len(set(markers)) == 3 and all(marker not in ("", "None", None) for marker in markers)
    assert accuracy_ax.get_xlim() == (0.5, 3.5)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(histories)
    with pytest.raises(ValueError, match="empty"):
        ev.plot_validation_curves({})
    with pytest.raises(ValueError, match="'no_val'.*validation"):
        ev.plot_validation_curves({"no_val": history_frame().drop(columns="val_loss")})


def _run_folder(root: Path, name: str, study: str, classifier: str, history: Path | None, *, sub: str = "") -> dict:
    folder = root / name
    (folder / sub).mkdir(parents=True, exist_ok=True)
    if history is not None:
        (folder / sub / ev.HISTORY_FILE).write_bytes(history.read_bytes())
    run = {"name": name, "study": study, "backbone": "vgg16", "weights": "random init (weights=None)",
           "classifier": classifier, "dataset": "synthetic", "split": "patient"}
    return {"name": name, "dir": folder, "metrics": {"run": run, "environment": {"backend": "jax"}}}


def test_histories_by_study_finds_each_runs_history_and_lists_those_without(tmp_path, trained_histories):
    from helpers import training

    assert ev.HISTORY_FILE == training.HISTORY_FILE
    path = trained_histories["plain"][1]
    entries = [
        _run_folder(tmp_path, "tl_000_vgg16", "000", "network", path),
        _run_folder(tmp_path, "svm_000_vgg16", "000", "svm", None),  # reused lesson 3's network
        _run_folder(tmp_path, "fusion_003", "003", "fusion", path, sub="fusion"),
        {"name": "failed_run", "dir": tmp_path / "failed_run", "metrics": None},
    ]
    histories, without = ev.histories_by_study(entries)
    assert list(histories) == ["000", "003"] and without == ["svm_000_vgg16"]
    assert list(histories["000"]) == ["tl_000_vgg16 (vgg16, random)"]
    pd.testing.assert_frame_equal(histories["003"]["fusion_003 (vgg16, random)"], ev.read_history(path))
    title = ev.validation_curves_title(entries, "000", "smoke")
    assert title.startswith("Paper 000 (") and "synthetic data, smoke profile, Keras backend jax" in title


def test_predictions_grid_is_a_seeded_sample_coloured_by_correctness():
    rng = np.random.default_rng(0)
    images = rng.random((40, 8, 8, 3)).astype("float32")
    y_true, y_prob = noisy_binary(40, seed=5)
    predicted = y_prob.argmax(axis=1)

    def shown(fig) -> list[np.ndarray]:
        return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]

    first = ev.plot_predictions_grid(images, y_true, y_prob, BINARY, n=6, seed=3, title="grid")
    again = ev.plot_predictions_grid(images, y_true, y_prob, BINARY, n=6, seed=3, title="grid")
    other = ev.plot_predictions_grid(images, y_true, y_prob, BINARY, n=6, seed=4, title="grid")
    picked = ev.sample_cases(40, 6, seed=3)
    assert len(set(picked.tolist())) == 6 and picked.tolist() == sorted(picked.tolist())
    assert all(np.array_equal(a, b) for a, b in zip(shown(first), shown(again)))
    assert not all(np.array_equal(a, b) for a, b in zip(shown(first), shown(other)))
    panels = [ax for ax in first.axes if ax.images]
    assert len(panels) == 6
    assert sorted(set((predicted[picked] == y_true[picked]).tolist())) == [False, True]  # both kinds shown
    for ax, i in zip(panels, picked):
        right = predicted[i] == y_true[i]
        colour = mcolors.to_rgba(ev.CORRECT_COLOUR if right else ev.WRONG_COLOUR)
        text = ax.get_title()
        assert text.startswith(ev.CORRECT_MARK if right else ev.WRONG_MARK)
        assert f"pred: {BINARY[predicted[i]]} ({y_prob[i].max():.2f})" in text and f"true: {BINARY[y_true[i]]}" in text
        assert mcolors.to_rgba(ax.title.get_color()) == colour
        assert all(mcolors.to_rgba(spine.get_edgecolor()) == colour for spine in ax.spines.values())
    correct = int((predicted[picked] == y_true[picked]).sum())
    assert f"{correct} correct (green" in first.get_suptitle() and first.get_suptitle().startswith("grid\n")


def test_predictions_grid_with_fewer_images_than_asked_and_bad_input():
    images, y_true = np.zeros((3, 8, 8)), np.array([0, 1, 2])
    fig = ev.plot_predictions_grid(images, y_true, np.array([0, 2, 2]), THREE, n=16, seed=0)  # classes, no probabilities
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 and "(" not in panels[0].get_title() and "3 of 3 test images" in fig.get_suptitle()
    assert [ax.get_title()[0] for ax in panels] == [ev.CORRECT_MARK, ev.WRONG_MARK, ev.CORRECT_MARK]
    with pytest.raises(ValueError, match="images has 3 cases, y_true 2"):
        ev.plot_predictions_grid(images, y_true[:2], THREE_PROB[:2], THREE)
    with pytest.raises(ValueError, match="y_prob 6"):
        ev.plot_predictions_grid(images, y_true, THREE_PROB, THREE)
    with pytest.raises(ValueError, match="n must be"):
        ev.plot_predictions_grid(images, y_true, y_true, THREE, n=0)
    with pytest.raises(ValueError, match="shape"):
        ev.plot_predictions_grid(np.zeros((3, 8)), y_true, y_true, THREE)


def test_figures_have_expected_axes_and_stay_out_of_pyplot():
    open_before = plt.get_fignums()
    cm_fig = ev.plot_confusion_matrix(THREE_TRUE, THREE_PROB.argmax(axis=1), THREE, normalise=True)
    roc_binary = ev.plot_roc(BINARY_TRUE, BINARY_PROB, BINARY, title="ROC")
    roc_three = ev.plot_roc(THREE_TRUE, THREE_PROB, THREE)
    history = ev.plot_history(history_frame(), title="VGG16")
    assert all(isinstance(f, Figure) for f in (cm_fig, roc_binary, roc_three, history))
    assert len(cm_fig.axes) == 2  # heatmap and colour bar
    assert len(roc_binary.axes) == 1 and len(history.axes) == 2
    assert len(roc_binary.axes[0].lines) == 2  # the curve and the chance line
    assert len(roc_three.axes[0].lines) == 4
    legend = [t.get_text() for t in roc_binary.axes[0].get_legend().get_texts()]
    assert legend[0] == "malignant (AUC = 0.917)"
    assert [ax.get_title() for ax in history.axes] == ["Loss", "Accuracy"]
    assert all(len(ax.lines) == 2 for ax in history.axes)
    assert plt.get_fignums() == open_before


def test_plot_history_needs_loss():
    with pytest.raises(ValueError, match="loss"):
        ev.plot_history(pd.DataFrame({"accuracy": [0.5]}))


def test_save_figure_writes_identical_png_bytes(tmp_path):
    first = ev.save_figure(ev.plot_roc(BINARY_TRUE, BINARY_PROB, BINARY), tmp_path / "a" / "roc.png")
    second = ev.save_figure(ev.plot_roc(BINARY_TRUE, BINARY_PROB, BINARY), tmp_path / "b" / "roc.png")
    assert first == tmp_path / "a" / "roc.png"
    data = first.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data == second.read_bytes()
    other = ev.save_figure(ev.plot_roc(BINARY_TRUE, BINARY_PROB, BINARY, title="x"), tmp_path / "c.png")
    assert other.read_bytes() != data


def test_save_figure_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "fig.png"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    with pytest.raises(ValueError, match="dpi"):
        ev.save_figure(ev.plot_history(history_frame()), target, dpi=0)
    with pytest.raises(ValueError, match="PNG"):
        ev.save_figure(ev.plot_history(history_frame()), target.with_suffix(".jpg"))

    fig = ev.plot_history(history_frame())

    def failing_savefig(path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", failing_savefig)
    with pytest.raises(OSError, match="disk full"):
        ev.save_figure(fig, target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in target.parent.iterdir()) == ["fig.png"]

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("file")
    with pytest.raises(OSError):
        ev.save_figure(ev.plot_history(history_frame()), blocker / "fig.png")
    assert blocker.read_text() == "file"


# ---------------------------------------------------------------------------- metrics.json

def test_metrics_json_round_trip_and_plain_types(tmp_path):
    record = make_record()
    path = ev.write_metrics_json(tmp_path / "run" / "metrics.json", record)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and f'"schema_version": {ev.METRICS_SCHEMA_VERSION}' in text
    assert json.loads(text) == json.loads(json.dumps(json.loads(text), sort_keys=True))
    assert list(json.loads(text)) == sorted(json.loads(text))
    loaded = ev.read_metrics_json(path)
    assert loaded["schema_version"] == ev.METRICS_SCHEMA_VERSION
    assert loaded["run"]["epochs"] == 1 and type(loaded["run"]["n_test"]) is int
    assert loaded["run"]["image_size"] == [32, 32] and loaded["run"]["weights"] is None
    for level in ("image_level", "patient_level"):
        for name in ev.METRIC_NAMES:
            for key in ("value", "ci_low", "ci_high"):
                expected = record[level][name][key]
                stored = loaded[level][name][key]
                assert stored == (None if math.isnan(expected) else round(expected, 6)), (level, name, key)
    assert loaded["patient_level"]["n"] == 20
    assert loaded["bootstrap"]["n_boot"] == 50


def test_metrics_json_is_byte_identical_for_identical_runs(tmp_path):
    first = ev.write_metrics_json(tmp_path / "a.json", make_record(seed=0)).read_bytes()
    second = ev.write_metrics_json(tmp_path / "b.json", make_record(seed=0)).read_bytes()
    assert first == second
    assert ev.write_metrics_json(tmp_path / "c.json", make_record(seed=1)).read_bytes() != first


def test_metrics_json_numpy_values_nan_and_rounding(tmp_path):
    record = make_record()
    record["image_level"]["roc_auc"] = {"value": np.float32("nan"), "ci_low": math.nan, "ci_high": np.nan}
    record["image_level"]["accuracy"]["value"] = np.float64(0.1234567891)
    record["image_level"]["confusion_matrix"] = np.array([[3, 1], [2, 4]], dtype=np.int64)
    record["run"]["flags"] = {"augment": np.bool_(True), "sizes": np.array([0.5, 0.25])}
    path = ev.write_metrics_json(tmp_path / "metrics.json", record)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text
    loaded = ev.read_metrics_json(path)
    assert loaded["image_level"]["roc_auc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert loaded["image_level"]["accuracy"]["value"] == 0.123457
    assert loaded["image_level"]["confusion_matrix"] == [[3, 1], [2, 4]]
    assert loaded["run"]["flags"] == {"augment": True, "sizes": [0.5, 0.25]}


def test_invalid_record_writes_nothing(tmp_path):
    path = tmp_path / "metrics.json"
    record = make_record()
    del record["run"]["seed"]
    del record["image_level"]["f1"]
    with pytest.raises(ValueError, match=r"run\.seed.*image_level\.f1"):
        ev.write_metrics_json(path, record)
    with pytest.raises(ValueError, match="image_level"):
        ev.write_metrics_json(path, {"run": make_record()["run"]})
    timed = make_record()
    timed["run"]["fit_seconds"] = 12.5
    with pytest.raises(ValueError, match="timings"):
        ev.write_metrics_json(path, timed)
    strange = make_record()
    strange["run"]["model"] = object()
    with pytest.raises(ValueError, match="object"):
        ev.write_metrics_json(path, strange)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_read_of_bad_file_names_the_file(tmp_path):
    good = json.loads(ev.write_metrics_json(tmp_path / "good.json", make_record()).read_text())
    cases = {
        "broken.json": "{not json",
        "list.json": "[1, 2]",
        "unversioned.json": json.dumps({k: v for k, v in good.items() if k != "schema_version"}),
        "newer.json": json.dumps({**good, "schema_version": ev.METRICS_SCHEMA_VERSION + 1}),
        "incomplete.json": json.dumps({k: v for k, v in good.items() if k != "image_level"}),
        "no_environment.json": json.dumps({k: v for k, v in good.items() if k != "environment"}),
        "bad_environment.json": json.dumps({**good, "environment": {"numpy": 2}}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            ev.read_metrics_json(path)
    with pytest.raises(ValueError, match="newer"):
        ev.read_metrics_json(tmp_path / "newer.json")


def test_metrics_json_records_the_environment(tmp_path):
    import platform

    import keras

    loaded = ev.read_metrics_json(ev.write_metrics_json(tmp_path / "metrics.json", make_record()))
    assert ev.METRICS_SCHEMA_VERSION == 3 and loaded["schema_version"] == 3
    environment = loaded["environment"]
    backend = keras.config.backend()
    expected = {"backend", "python", "keras", backend, "numpy", "scikit-learn", "opencv", "device"}
    assert set(environment) == expected | ({"onednn"} if backend == "tensorflow" else set())
    assert all(isinstance(value, str) and value for value in environment.values())
    assert environment["backend"] == backend and environment["keras"] == keras.__version__
    assert environment["python"] == platform.python_version() and environment["numpy"] == np.__version__
    assert environment["device"].startswith(("GPU: ", "CPU: "))
    own = {**make_record(), "environment": {"backend": "jax", "device": "CPU: x"}}
    assert ev.read_metrics_json(ev.write_metrics_json(tmp_path / "own.json", own))["environment"] == own["environment"]
    with pytest.raises(ValueError, match="environment"):
        ev.write_metrics_json(tmp_path / "bad.json", {**make_record(), "environment": {"numpy": 2}})
    assert not (tmp_path / "bad.json").exists()


def _report_run(folder: Path, name: str, metrics: dict) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "metrics.json").write_text(json.dumps(metrics))
    (folder / name / "run.json").write_text(json.dumps({"name": name, "status": "ok", "seconds": 1.0}))


def test_schema_1_metrics_still_load_and_the_report_shows_their_environment_as_not_recorded(tmp_path):
    from helpers import reporting

    record = make_record()
    record["run"]["weights"] = "imagenet"
    current = json.loads(ev.write_metrics_json(tmp_path / "current.json", record).read_text())
    old = {key: value for key, value in current.items() if key != "environment"} | {"schema_version": 1}
    folder = tmp_path / "reports" / "smoke"
    _report_run(folder, "old_run", old)
    loaded = ev.read_metrics_json(folder / "old_run" / "metrics.json")
    assert loaded["schema_version"] == 1 and "environment" not in loaded
    index = reporting.build_report(folder, profile="smoke")
    assert "Environment (every run): not recorded." in index.read_text()
    assert "Environment (every run): not recorded." in (folder / "index.md").read_text()

    _report_run(folder, "new_run", current)
    index = reporting.build_report(folder, profile="smoke")
    page, markdown = index.read_text(), (folder / "index.md").read_text()
    described = reporting.describe_environment(current["environment"])
    assert described.startswith(f"Keras {current['environment']['keras']} on ") and "; device " in described
    assert "the runs differ (2 environments" in page and "the runs differ (2 environments" in markdown
    assert f"| {described} | new_run |" in markdown and "| not recorded | old_run |" in markdown
    assert page.count(described.split(";")[0].replace("<", "&lt;")) == 1

    (folder / "old_run" / "metrics.json").write_text(json.dumps(current))
    markdown = (reporting.build_report(folder, profile="smoke").parent / "index.md").read_text()
    assert f"Environment (every run): {described}." in markdown


def test_paired_bootstrap_of_two_models_on_the_same_test_cases():
    from helpers.evaluation import paired_bootstrap

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    patients = np.repeat([f"p{i}" for i in range(30)], 2)
    good = np.column_stack([1 - (y * 0.6 + rng.random(60) * 0.4), y * 0.6 + rng.random(60) * 0.4])
    noise = rng.random(60)
    bad = np.column_stack([1 - noise, noise])
    same = paired_bootstrap(y, good, good, ["benign", "malignant"], groups=patients, n_boot=200, seed=1)
    assert same["difference"] == 0 and same["ci_low"] == same["ci_high"] == 0  # paired: no spread
    better = paired_bootstrap(y, good, bad, ["benign", "malignant"], groups=patients, n_boot=500, seed=1)
    assert better["a"] > 0.9 and better["difference"] == pytest.approx(better["a"] - better["b"])
    assert 0 < better["ci_low"] <= better["difference"] <= better["ci_high"]
    assert better["n"] == 60 and better["n_groups"] == 30
    again = paired_bootstrap(y, good, bad, ["benign", "malignant"], groups=patients, n_boot=500, seed=1)
    assert again == better  # seeded
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(y, good, bad, ["benign", "malignant"], metric="auc")


def test_predictions_file_round_trip(tmp_path):
    from helpers.evaluation import read_predictions, write_predictions

    prob = np.array([[0.2, 0.8], [0.9, 0.1]])
    path = write_predictions(tmp_path / "predictions.csv", np.array([1, 0]), prob, ["benign", "malignant"],
                             images=["a.png", "b.png"], patient_ids=["007", "8"])
    table = read_predictions(path)
    assert list(table["image"]) == ["a.png", "b.png"] and list(table["patient_id"]) == ["007", "8"]
    assert np.allclose(table[["p_benign", "p_malignant"]].to_numpy(), prob)
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv: not a predictions file"):
        read_predictions(tmp_path / "bad.csv")


def test_transfer_table_pairs_imagenet_and_random_runs_and_names_missing_weights(tmp_path):
    from helpers import evaluation, reporting

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 20)
    patients = [f"p{i // 2}" for i in range(40)]
    entries = []

    def entry(name, prob, *, weights, status="ok", baseline_of=None):
        folder = tmp_path / name
        folder.mkdir()
        metrics = None
        if prob is not None:
            evaluation.write_predictions(folder / evaluation.PREDICTIONS_FILE, y, prob, ["benign", "malignant"],
                                         images=[f"{i}.png" for i in range(40)], patient_ids=patients)
            metrics = {"run": {"backbone": "vgg16", "study": "000", "classes": ["benign", "malignant"],
                               "weights": weights, "freeze": "base", "normalisation": "x", "epochs": 3},
                       **evaluation.evaluate(y, prob, ["benign", "malignant"], n_boot=100, seed=0)}
        return {"name": name, "dir": folder, "metrics": metrics,
                "status": {"status": status, "baseline_of": baseline_of, "message": "no file offline"}}

    good = np.clip(np.column_stack([1 - y, y]) * 0.7 + rng.random((40, 2)) * 0.3, 0, 1)
    noise = rng.random(40)
    entries = [entry("tl_a", good, weights="imagenet"), entry("scratch_a", np.column_stack([1 - noise, noise]),
                                                              weights="random init", baseline_of="tl_a"),
               entry("tl_b", None, weights="imagenet", status="unavailable"),
               entry("scratch_b", np.column_stack([1 - noise, noise]), weights="random init", baseline_of="tl_b")]
    table = reporting.transfer_table(entries)
    assert list(table["imagenet_run"]) == ["tl_a", "tl_b"]
    first, second = table.iloc[0], table.iloc[1]
    assert first["difference"] > 0 and first["difference_95ci"].startswith("[")
    assert first["n_test"] == "40 images, 20 patients"
    assert np.isnan(second["imagenet_auc"]) or second["imagenet_auc"] is None
    assert second["imagenet_95ci"] == "weights unavailable" and second["difference_95ci"] == ""
    fig = reporting.plot_transfer(table, title="t")
    assert isinstance(fig, Figure)
