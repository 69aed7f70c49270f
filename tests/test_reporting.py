"""Tests of helpers.reporting: per-class tables, the like-for-like comparison with the papers, and the
report's findings, forest plot, rounding and compact HTML."""

from __future__ import annotations

import json
import math
import re

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
    intro = markdown.split("## About these runs")[1].split("\n## ")[0]
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


# --- the report, findings first ------------------------------------------------------------------

def test_round_to_ci_gives_the_ci_half_width_one_or_two_significant_digits():
    assert reporting.round_to_ci(0.5012, (0.4512, 0.5512)) == "0.50 [0.45, 0.55]"  # half-width 0.05: 2 decimals
    assert reporting.round_to_ci(0.9875, (0.9756, 0.9996)) == "0.988 [0.976, 1.000]"  # 0.012: leading 1, one more
    assert reporting.round_to_ci(0.8, "[0.5, 1.1]") == "0.80 [0.50, 1.10]"  # 0.3: never fewer than 2
    assert reporting.round_to_ci(0.91234, (0.9121, 0.9127)) == "0.912 [0.912, 0.913]"  # never more than 3
    assert reporting.round_to_ci(1.0, {"ci_low": 1.0, "ci_high": 1.0}) == "1.000 [1.000, 1.000]"  # zero width
    assert reporting.round_to_ci(0.98765) == "0.988" and reporting.round_to_ci(0.9, "weights unavailable") == "0.900"
    assert reporting.round_to_ci(None, (0.1, 0.2)) == "n/a" and reporting.round_to_ci(float("nan")) == "n/a"
    assert reporting.round_to_ci(0.3866, (0.318, 0.455), signed=True) == "+0.39 [0.32, 0.46]"
    assert [reporting.ci_decimals((0, 2 * half)) for half in (0.03, 0.025, 0.0049, 0.15)] == [2, 3, 3, 2]


def test_run_times_read_as_seconds_minutes_and_hours():
    assert [reporting.format_seconds(s) for s in (37.9, 0.0, 59.6, 1234, 7384, None)] == [
        "38 s", "0 s", "1 min 0 s", "20 min 34 s", "2 h 3 min", ""]


def test_verdict_needs_a_ci_that_excludes_zero():
    assert reporting.verdict(0.2, (0.05, 0.35)) == "helped" and reporting.verdict(-0.2, "[-0.3, -0.1]") == "hurt"
    assert reporting.verdict(0.2, (0.0, 0.4)) == reporting.verdict(-0.1, (-0.3, 0.1)) == "no evidence either way"
    assert reporting.verdict(0.2, None) is None and reporting.verdict(None, (0.1, 0.2)) is None


def test_imagenet_finding_says_helped_hurt_or_no_evidence_pair_by_pair(tmp_path):
    from report_fixtures import write_run

    for backbone, imagenet, scratch in (("vgg16", 2.0, 0.0), ("vgg19", 0.0, 2.0), ("resnet50", 0.3, 0.3)):
        write_run(tmp_path, f"tl_000_{backbone}", backbone=backbone, skill=imagenet, seed=1, with_predictions=True)
        write_run(tmp_path, f"scratch_000_{backbone}", backbone=backbone, skill=scratch, seed=2, with_predictions=True,
                  weights="random init (weights=None)", status={"baseline_of": f"tl_000_{backbone}"})
    write_run(tmp_path, "scratch_000_googlenet", backbone="googlenet", weights="random init (weights=None)",
              status={"baseline_of": "tl_000_googlenet"})
    write_run(tmp_path, "tl_000_googlenet", backbone="googlenet", status={"status": "unavailable", "message": "offline"})
    entries = reporting.collect_runs(tmp_path)
    [finding] = [item for item in reporting.findings(entries) if item.topic == "ImageNet"]
    assert finding.text.startswith("ImageNet weights helped in 1 of 3 pairs with both arms run, hurt in 1, "
                                   "no evidence either way in 1 ")
    assert "vgg16 (paper 000, t): +0." in finding.text and "vgg19 (paper 000, t): -0." in finding.text
    assert finding.text.endswith("1 more pair without a paired difference: the ImageNet arm weights unavailable in 1.")
    assert "**" not in reporting.findings_markdown([finding]).replace("**ImageNet**", "")


def test_findings_per_paper_hybrid_and_localisation_from_the_numbers(tmp_path):
    from report_fixtures import write_small_study

    entries = reporting.collect_runs(write_small_study(tmp_path))
    found = {}
    for item in reporting.findings(entries, profile="cpu"):
        found.setdefault(item.topic, []).append(item.text)
    ours = reporting.results_table(entries).set_index("run")
    paper = found["Paper 000 (mahmood2021)"][0]
    best = ours[ours["study"] == "000"]["roc_auc"].idxmax()
    assert paper.startswith(f"our best run, {best} (") and f"{ours.loc[best, 'n_test']} test images" in paper
    assert reporting.round_to_ci(ours.loc[best, "roc_auc"], ours.loc[best, "roc_auc_ci"]) in paper
    assert "the paper reports AUC " in paper and "their data: mias+inbreast+private" in paper
    other = found["Paper 001 (bokade2024)"][0]
    assert "the paper reports no AUC; its accuracy for squeezenet softmax adam is 0.8 (the same model" in other
    assert found["Paper 002 (kumar2022)"] == ["no run of ours has a test AUC (1 planned: 1 failed; see Runs)."]
    assert "Paper 003 (akhi)" not in found  # nothing planned
    assert found["Caveat"][0].startswith("the cpu profile is scaled down from the papers: input size 96 px")
    [hybrid] = found["Hybrids"]
    assert hybrid.startswith("The SVM on deep features against the network's own output (paper 000): higher in ")
    assert re.search(r": higher in \d, equal in \d, lower in \d of 1 comparison \(", hybrid)
    assert "of 1 comparison (svm_000_mobilenetv2: AUC " in hybrid and "No CI of the difference is recorded" in hybrid
    measured, unavailable = found["Localisation"]
    assert "best pointing game, tl_000_mobilenetv2: 0.55 [0.40, 0.70] (baselines: uniform 0.20, centred 1.00)" in measured
    assert "mass inside the lesion 0.31 [0.25, 0.37] (baselines: uniform 0.20, centred 0.50)" in measured
    assert "centred baseline is near perfect" in measured and "40 images of 38 patients" in measured
    assert unavailable == "not measured in 1 run: the data has no lesion masks (1)."
    table = reporting.localisation_table(entries)
    assert list(table["run"]) == ["scratch_000_mobilenetv2", "tl_000_mobilenetv2"]
    row = table.iloc[1]
    assert (row["pointing_game"], row["pointing_game_centred"], row["mass_inside_uniform"]) == (
        "0.55 [0.40, 0.70]", "1.00", "0.20")
    assert table.iloc[0]["reason"] == "the data has no lesion masks" and table.iloc[0]["pointing_game"] == ""

    for entry in entries:  # runs from before the localisation block: handled, said
        if entry["metrics"]:
            entry["metrics"].pop("localisation", None)
    assert reporting.localisation_table(entries).empty
    assert reporting.findings(entries)[-1] == reporting.Finding("Localisation", "no run recorded a localisation score.")


def test_forest_plot_has_a_row_per_run_grouped_by_paper_and_the_papers_auc_marked(tmp_path):
    from report_fixtures import write_small_study

    entries = reporting.collect_runs(write_small_study(tmp_path))
    table = reporting.forest_table(entries)
    # by paper, then backbone: the network from ImageNet, from random init, then its hybrid
    assert list(table["run"]) == ["tl_000_mobilenetv2", "scratch_000_mobilenetv2", "svm_000_mobilenetv2",
                                  "tl_001_squeezenet_adam"]
    assert list(table["study"]) == ["000", "000", "000", "001"]
    marked = table.set_index("run")["paper_auc"]
    assert marked["tl_000_mobilenetv2"] == marked["scratch_000_mobilenetv2"] == 0.668  # paper 000, Table 4
    assert math.isnan(marked["svm_000_mobilenetv2"]) and math.isnan(marked["tl_001_squeezenet_adam"])
    fig = reporting.plot_forest(entries, title=reporting.forest_title(entries, "smoke"))
    ax = fig.axes[0]
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    assert labels == ["paper 000 (mahmood2021)", *table["run"][:3], "paper 001 (bokade2024)", "tl_001_squeezenet_adam"]
    assert [tick.get_fontweight() for tick in ax.get_yticklabels()][0] == "bold"
    diamonds = [line for line in ax.lines if line.get_marker() == "D"]
    assert len(diamonds) == 2 and all(line.get_xdata()[0] == 0.668 for line in diamonds)
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["ours, ImageNet", "ours, random init", "paper's reported AUC, their data", "chance (0.5)"]
    assert "synthetic data, smoke profile, weights: ImageNet, random init, Keras backend jax" in fig._suptitle.get_text()
    assert min(text.get_fontsize() for text in [*ax.get_yticklabels(), *ax.get_xticklabels()]) >= 9
    smaller = reporting.plot_forest(table.iloc[:1])
    assert smaller.get_size_inches()[1] < fig.get_size_inches()[1]  # sized by the number of rows


def test_report_html_opens_with_findings_has_no_literal_markdown_and_links_each_run(tmp_path):
    from report_fixtures import localisation_block, write_run

    write_run(tmp_path, "tl_000_mobilenetv2", figures=("roc.png", "cam_overlays.png"),
              localisation={**localisation_block(status="unavailable"), "reason": "no lesions"})
    write_run(tmp_path, "tl_000_vgg16", backbone="vgg16", status={"status": "failed", "seconds": 95.2,
                                                                  "message": "RuntimeError: **boom**"})
    page = reporting.build_report(tmp_path, profile="smoke").read_text()
    headings = re.findall(r"<h2 id='([a-z-]+)'>", page)
    assert headings[:3] == ["findings", "forest", "about"]
    text = re.sub(r"<[^>]+>", "", page.replace("**boom**", ""))  # a run's own message is quoted as it is
    assert "**" not in text and "*ours*" not in text and "`" not in text
    assert "Profile <strong>smoke</strong>" in page and "under <em>ours</em>" in page
    assert "1 min 35 s" in page and 'href="tl_000_mobilenetv2/roc.png"' in page
    assert 'href="tl_000_mobilenetv2/cam_overlays.png">Grad-CAM</a>' in page
    assert "<a href=\"#message-1\">[1]</a>" in page and "id='message-1'" in page
    assert "not measured in 1 run: no lesions (1)." in page
    assert (tmp_path / "forest.png").read_bytes().startswith(b"\x89PNG")
    markdown = (tmp_path / "index.md").read_text()
    assert markdown.index("## Findings") < markdown.index("## Test AUC of every run") < markdown.index("## About")
    assert "- **Paper 000 (mahmood2021)**: our best run, tl_000_mobilenetv2" in markdown
