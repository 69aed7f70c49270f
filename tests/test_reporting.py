"""Tests of helpers.reporting's per-class tables and its like-for-like comparison with the papers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import evaluation, reporting

THREE = ["normal", "benign", "malignant"]
BINARY = ["benign", "malignant"]
ENVIRONMENT = {"backend": "jax", "device": "CPU: test"}  # so that writing metrics.json imports no Keras


def _results(names: list[str], seed: int) -> dict:
    """Imbalanced test labels (60 % the first class) and a noisy classifier: macro != weighted."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(names), 50, p=[0.6] + [0.4 / (len(names) - 1)] * (len(names) - 1))
    prob = rng.random((50, len(names))) + np.eye(len(names))[y] * rng.random((50, 1))
    patients = [f"p{i // 2}" for i in range(50)]
    return evaluation.evaluate(y, prob / prob.sum(axis=1, keepdims=True), names, patient_ids=patients, n_boot=0)


def _entry(name: str, study: str, backbone: str, names: list[str], seed: int = 0) -> dict:
    run = {"name": name, "study": study, "backbone": backbone, "dataset": "synthetic", "task": "t",
           "classes": names, "weights": "random initialisation", "optimiser": "adam", "classifier": "network",
           "profile": "smoke", "image_size": [32, 32], "epochs": 1}
    return {"name": name, "dir": None, "status": {"status": "ok"}, "metrics": {"run": run, **_results(names, seed)}}


def _missing(value) -> bool:
    """None, or NaN (what pandas makes of None in a column of numbers)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row(table, paper: str, backbone: str):
    return table[(table["paper"] == paper) & (table["backbone"] == backbone)].iloc[0]


def test_comparison_uses_each_papers_own_averaging():
    entries = [_entry("tl_003_resnet50", "003", "resnet50", THREE), _entry("tl_000_vgg16", "000", "vgg16", BINARY)]
    table = reporting.comparison_table(entries)
    weighted = _row(table, "paper 003", "resnet50")
    level = entries[0]["metrics"]["image_level"]
    assert (weighted["paper_averaging"], weighted["our_averaging"]) == ("weighted", "weighted")
    for name in ("precision", "recall", "f1"):
        assert weighted[f"our_{name}"] == level["per_class"]["weighted avg"][name]
    assert weighted["our_precision"] != pytest.approx(level["precision"]["value"])  # not the macro average
    assert weighted["our_recall"] == pytest.approx(weighted["our_accuracy"])
    assert (weighted["paper_precision"], weighted["paper_recall"], weighted["paper_f1"]) == (0.9556, 0.9623, 0.9561)
    unknown = _row(table, "paper 000", "vgg16")
    assert unknown["paper_averaging"] == "unknown"
    assert unknown["our_averaging"] == "malignant (positive class): our convention"
    assert unknown["our_f1"] == entries[1]["metrics"]["image_level"]["f1"]["value"]
    unmatched = _row(table, "paper 001", "alexnet")
    assert unmatched["our_run"] == "" and unmatched["our_averaging"] == "" and _missing(unmatched["our_f1"])


def test_comparison_sets_the_majority_class_baseline_beside_the_papers_number():
    entries = [_entry("tl_003_resnet50", "003", "resnet50", THREE)]
    table = reporting.comparison_table(entries)
    row = _row(table, "paper 003", "resnet50")
    share = 66197 / 69381
    assert row["paper_majority_accuracy"] == pytest.approx(share)
    assert row["paper_majority_f1"] == pytest.approx(share * 2 * share / (1 + share))  # weighted, as the paper
    support = [entries[0]["metrics"]["image_level"]["per_class"][name]["support"] for name in THREE]
    assert row["our_majority_accuracy"] == pytest.approx(max(support) / sum(support))
    accuracy_only = _row(table, "paper 004", "resnet50")
    assert accuracy_only["paper_averaging"] == "none"
    assert accuracy_only["paper_majority_accuracy"] == pytest.approx(1370 / 2022)
    assert _missing(accuracy_only["paper_majority_f1"])
    no_support = _row(table, "paper 001", "alexnet")
    assert _missing(no_support["paper_majority_accuracy"])


def test_majority_baseline_table_on_the_papers_support_and_our_split():
    entries = [_entry("tl_003_resnet50", "003", "resnet50", THREE), _entry("tl_003_alexnet", "003", "alexnet", THREE),
               _entry("fusion_003", "003", "resnet50+alexnet", THREE, seed=5),
               _entry("tl_000_vgg16", "000", "vgg16", BINARY)]
    table = reporting.majority_baseline_table(entries)
    assert list(table.columns) == reporting.BASELINE_COLUMNS
    assert set(table["paper"]) == {"paper 003", "paper 004"}  # the papers that print their test support
    paper = table[table["paper"] == "paper 003"]
    assert list(paper["model"])[:3] == ["resnet50 softmax", "alexnet softmax", "resnet50+alexnet fusion"]
    assert list(paper["macro_f1"])[:3] == [0.7152, 0.6861, 0.7152]
    baseline = paper[paper["who"] == "paper's printed test support"].iloc[0]
    share = 66197 / 69381
    assert baseline["model"] == "always Class 0" and baseline["accuracy"] == pytest.approx(share)
    assert baseline["weighted_precision"] == pytest.approx(share ** 2)  # never-predicted class counted as 0
    assert baseline["macro_f1"] == pytest.approx(share / (1 + share))
    assert baseline["support"] == "Class 0 66197 (95.4%), Class 1 3184 (4.6%)"
    ours = paper[paper["who"].str.startswith("our test split")]
    assert len(ours) == 2  # a row per distinct test split: two runs share one, the third has its own
    assert ours["who"].iloc[0] == "our test split (synthetic, t; runs tl_003_resnet50, tl_003_alexnet)"
    assert ours["who"].iloc[1].endswith("runs fusion_003)")
    theirs_004 = table[(table["paper"] == "paper 004") & table["who"].str.startswith("paper (their data)")].iloc[0]
    assert theirs_004["accuracy"] == 0.991 and _missing(theirs_004["weighted_f1"])  # it reports accuracy only


def test_per_class_tables_and_old_metrics_without_them():
    entries = [_entry("tl_003_resnet50", "003", "resnet50", THREE), _entry("tl_000_vgg16", "000", "vgg16", BINARY)]
    table = reporting.per_class_table(entries)
    assert len(table) == 2 * (3 + 2) + 2 * (2 + 2)  # both levels, classes then the two averages
    first = table[(table["run"] == "tl_003_resnet50") & (table["level"] == "patient level")]
    assert list(first["class"]) == [*THREE, "macro avg", "weighted avg"]
    block = entries[0]["metrics"]["patient_level"]["per_class"]
    assert list(first["f1"]) == [block[name]["f1"] for name in first["class"]]
    summary = reporting.per_class_summary(entries, "recall")
    assert list(summary.columns) == ["run", "normal", "benign", "malignant", "macro avg", "weighted avg"]
    assert math.isnan(summary.loc[1, "normal"])  # the binary run has no normal class
    with pytest.raises(ValueError, match="metric"):
        reporting.per_class_summary(entries, "accuracy")

    for entry in entries:  # as read from a metrics.json of schema 2
        for level in ("image_level", "patient_level"):
            del entry["metrics"][level]["per_class"]
    assert reporting.per_class_table(entries).empty and reporting.per_class_summary(entries).empty
    compare = reporting.comparison_table(entries)
    weighted = _row(compare, "paper 003", "resnet50")
    assert _missing(weighted["our_precision"]) and "not recorded" in weighted["our_averaging"]
    assert _missing(weighted["our_majority_accuracy"])
    binary = _row(compare, "paper 000", "vgg16")  # our convention is the top level itself
    assert binary["our_f1"] == entries[1]["metrics"]["image_level"]["f1"]["value"]


def test_report_shows_per_class_rows_figure_and_the_baseline(tmp_path):
    for entry in (_entry("tl_003_resnet50", "003", "resnet50", THREE), _entry("tl_000_vgg16", "000", "vgg16", BINARY)):
        record = {**entry["metrics"], "run": {**entry["metrics"]["run"], "head": "h", "notebook": "x",
                                              "batch_size": 8, "seed": 1, "preset": "p", "n_train": 1, "n_val": 1,
                                              "n_test": 50},
                  "environment": ENVIRONMENT}
        evaluation.write_metrics_json(tmp_path / entry["name"] / "metrics.json", record)
        (tmp_path / entry["name"] / "run.json").write_text(json.dumps({"status": "ok"}))
    markdown = (reporting.build_report(tmp_path, profile="smoke").parent / "index.md").read_text()
    assert "## Per class (test split, or pooled out-of-fold)" in markdown and "| tl_003_resnet50 | patient level | weighted avg |" in markdown
    assert f"## {reporting.BASELINE_HEADING}" in markdown and "| always Class 0 | 0.954 |" in markdown
    assert "paper_averaging" in markdown and "![per_class.png](per_class.png)" in markdown
    assert (tmp_path / "per_class.png").read_bytes().startswith(b"\x89PNG")


def test_report_on_other_data_than_the_profiles_says_which_and_drops_its_data_caveat(tmp_path):
    entry = _entry("real_nva_vgg16_scratch", "000", "vgg16", BINARY)
    run = {**entry["metrics"]["run"], "dataset": "mias", "data_dir": "/data/mias", "split": "cv", "cv_folds": 5,
           "cv_repeats": 1, "profile": "cpu", "head": "h", "notebook": "x", "batch_size": 8, "seed": 1,
           "preset": "p", "n_train": 1, "n_val": 1, "n_test": 50}
    evaluation.write_metrics_json(tmp_path / entry["name"] / "metrics.json",
                                  {**entry["metrics"], "run": run, "environment": ENVIRONMENT})
    (tmp_path / entry["name"] / "run.json").write_text(json.dumps({"status": "ok"}))
    markdown = (reporting.build_report(tmp_path, profile="cpu").parent / "index.md").read_text()
    intro = markdown.split("\n## ")[0]
    assert "Data of these runs: mias, 5-fold cv by patient (from /data/mias)." in intro
    assert "other data than its own (synthetic)" in intro and "synthetic phantoms" not in intro
    assert "input size 96 px instead of 224/227 px" in intro  # the profile's other caveats stay
    own = tmp_path / "own"
    entry = _entry("tl_000_vgg16", "000", "vgg16", BINARY)
    evaluation.write_metrics_json(own / entry["name"] / "metrics.json",
                                  {**entry["metrics"], "run": {**run, "dataset": "synthetic", "data_dir": None,
                                                               "split": "patient"}, "environment": ENVIRONMENT})
    (own / entry["name"] / "run.json").write_text(json.dumps({"status": "ok"}))
    markdown = (reporting.build_report(own, profile="cpu").parent / "index.md").read_text()
    assert "synthetic phantoms (240 patients)" in markdown and "Data of these runs: synthetic." in markdown
