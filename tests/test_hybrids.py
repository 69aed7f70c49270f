"""Lessons 4 and 5 outside the notebooks: reusing lesson 3's network, comparing models on one test
split (tables and figures), and the report's hybrid section."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib.figure import Figure

from helpers import evaluation, models, pipeline, plan, reporting, training


@pytest.fixture(scope="module")
def smoke_data():
    settings = plan.resolve_settings("smoke", study="000", backbone="squeezenet", epochs=1)
    assert not settings.save_model  # study.yaml's default: a run keeps no model file
    return settings, pipeline.prepare_data(settings, progress=False)


@pytest.fixture(scope="module")
def lesson3_run(smoke_data, tmp_path_factory):
    """A finished run of lesson 3 as the notebook leaves it when a later run reuses it (the plan
    sets SAVE_MODEL there): best.keras and metrics.json."""
    settings, data = smoke_data
    settings = dataclasses.replace(settings, save_model=True)
    folder = tmp_path_factory.mktemp("tl_000_squeezenet")
    model = pipeline.build_model(settings, data)
    pipeline.train_model(settings, model, data, folder, verbose=0)
    y_prob = training.predict_proba(model, data.x["test"])
    record = pipeline.run_record(settings, data, run_name="tl_000_squeezenet", notebook="03_transfer_learning",
                                 weights_description=models.describe_weights(settings.weights))
    pipeline.write_metrics(folder, record, pipeline.evaluate_probabilities(settings, data, y_prob))
    return folder, y_prob


def test_a_network_of_lesson_3_with_the_same_settings_and_data_is_reused(smoke_data, lesson3_run, tmp_path):
    settings, data = smoke_data
    folder, y_prob = lesson3_run
    path, reason = pipeline.reusable_network(settings, data, folder)
    assert path == folder / "best.keras" and reason.startswith(f"reused from run {folder.name} ")
    network, source, history = pipeline.trained_network(settings, data, tmp_path, network_dir=folder)
    assert source == reason and history is None
    np.testing.assert_allclose(training.predict_proba(network, data.x["test"]), y_prob, atol=1e-6)
    assert not (tmp_path / "best.keras").exists(), "nothing is trained when the network is reused"


def test_a_network_trained_otherwise_is_not_reused_and_the_reason_names_what_differs(smoke_data, lesson3_run):
    settings, data = smoke_data
    folder, _ = lesson3_run
    other = dataclasses.replace(settings, epochs=2, learning_rate=0.01)
    path, reason = pipeline.reusable_network(other, data, folder)
    assert path is None and "epochs" in reason and "learning_rate" in reason
    assert pipeline.reusable_network(settings, data, folder.parent / "missing")[0] is None
    assert pipeline.reusable_network(settings, data, None) == (None, "no earlier run was named (NETWORK_DIR)")


def test_without_a_reusable_network_it_is_trained_here(smoke_data, tmp_path):
    settings, data = smoke_data
    network, source, history = pipeline.trained_network(settings, data, tmp_path, network_dir=None, verbose=0)
    assert source.startswith("trained in this run") and len(history) == settings.epochs
    assert network.name == "squeezenet_paper000"
    assert not (tmp_path / "best.keras").exists() and (tmp_path / "history.csv").exists()  # SAVE_MODEL off


def test_a_frozen_pretrained_base_keeps_only_its_heads_weights(smoke_data, tmp_path):
    settings, data = smoke_data
    base_file = tmp_path / "base.weights.h5"  # stands in for an ImageNet file: what the settings name
    models.find_backbone(pipeline.build_model(settings, data)).save_weights(str(base_file))
    frozen = dataclasses.replace(settings, weights=str(base_file), freeze="base", save_model=True)
    assert pipeline.network_file(frozen) == pipeline.HEAD_WEIGHTS_FILE
    assert pipeline.network_file(dataclasses.replace(frozen, freeze="none")) == "best.keras"
    folder = tmp_path / "run"
    model = pipeline.build_model(frozen, data)
    pipeline.train_model(frozen, model, data, folder, verbose=0)
    assert sorted(p.name for p in folder.iterdir()) == ["head.weights.h5", "history.csv"]
    whole = training.save_without_optimizer(model, tmp_path / "whole.keras").stat().st_size
    base = base_file.stat().st_size
    assert (folder / "head.weights.h5").stat().st_size < whole - 0.9 * base  # the base is not in it
    reloaded = pipeline.load_network(frozen, data, folder / "head.weights.h5")
    np.testing.assert_allclose(training.predict_proba(reloaded, data.x["test"]),
                               training.predict_proba(model, data.x["test"]), atol=1e-6)
    assert pipeline.reload_check(model, folder, data).startswith("a temporary best.keras (deleted")
    assert sorted(p.name for p in folder.iterdir()) == ["head.weights.h5", "history.csv"]


def _results(n_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(n_classes), 10)
    good = np.eye(n_classes)[y] * 0.6 + rng.random((y.size, n_classes)) * 0.4
    poor = rng.random((y.size, n_classes))
    return y, {name: prob / prob.sum(axis=1, keepdims=True) for name, prob in (("good", good), ("poor", poor))}


@pytest.mark.parametrize("n_classes", [2, 3])
def test_comparison_figures_show_every_model_on_the_same_cases(n_classes):
    y, probabilities = _results(n_classes, seed=n_classes)
    names = ["normal", "benign", "malignant"][-n_classes:]
    roc = evaluation.plot_roc_comparison(y, probabilities, names, title="t")
    assert isinstance(roc, Figure) and len(roc.axes) == (1 if n_classes == 2 else 3)
    assert all(len(ax.get_lines()) == 3 for ax in roc.axes)  # two models and the chance line
    legend = [text.get_text() for text in roc.axes[0].get_legend().get_texts()]
    assert legend[0].startswith("good (AUC = ") and legend[1].startswith("poor (AUC = ")
    matrices = evaluation.plot_confusion_matrices(y, {k: v.argmax(axis=1) for k, v in probabilities.items()}, names)
    assert [ax.get_title() for ax in matrices.axes] == ["good", "poor"]
    with pytest.raises(ValueError, match=r"predictions\[.short.\] has 3"):
        evaluation.plot_confusion_matrices(y, {"short": np.zeros(3, dtype=int)}, names)
    with pytest.raises(ValueError, match="empty"):
        evaluation.plot_roc_comparison(y, {}, names)


def test_compare_models_is_one_row_per_model_with_intervals():
    y, probabilities = _results(2, seed=0)
    results = {name: evaluation.evaluate(y, prob, ["benign", "malignant"], n_boot=50, seed=0)
               for name, prob in probabilities.items()}
    table = pipeline.compare_models(results)
    assert list(table.index) == list(evaluation.METRIC_NAMES)
    assert list(table.columns) == ["good", "good 95% CI", "poor", "poor 95% CI"]
    assert table.loc["accuracy", "good"] > table.loc["accuracy", "poor"]
    assert table.loc["accuracy", "good 95% CI"].startswith("[")
    entry = pipeline.compared_entry(results["poor"], backbone="vgg16", classifier="network")
    assert entry["backbone"] == "vgg16" and entry["image_level"] == results["poor"]["image_level"]


def _metrics_run(folder, name, run, results, compared=None):
    payload = {**results, **({"compared": compared} if compared else {})}
    evaluation.write_metrics_json(folder / name / "metrics.json", {"run": {"name": name, **run}, **payload})


def test_the_report_sets_each_hybrid_beside_what_it_replaces_and_the_papers_rows(tmp_path):
    y, probabilities = _results(3, seed=1)
    results = {name: evaluation.evaluate(y, prob, ["normal", "benign", "malignant"], n_boot=20, seed=0)
               for name, prob in probabilities.items()}
    base = {"profile": "smoke", "dataset": "synthetic", "task": "normal-benign-malignant", "image_size": [63, 63],
            "weights": "random initialisation", "optimiser": "adam", "epochs": 1, "notebook": "x",
            "classes": ["normal", "benign", "malignant"], "head": "fusion", "batch_size": 8, "seed": 42,
            "preset": "paper003", "n_train": 30, "n_val": 10, "n_test": 30}
    _metrics_run(tmp_path, "fusion_003_resnet50_alexnet",
                 {**base, "study": "003", "backbone": "resnet50+alexnet", "classifier": "fusion"}, results["good"],
                 {"alexnet pathway": pipeline.compared_entry(results["poor"], backbone="alexnet",
                                                             classifier="single pathway")})
    _metrics_run(tmp_path, "tl_000_vgg16", {**base, "study": "000", "backbone": "vgg16", "classifier": "network"},
                 results["poor"])
    entries = reporting.collect_runs(tmp_path)
    table = reporting.hybrid_table(entries)
    ours = table[table["who"] == "ours"]
    assert list(zip(ours["backbone"], ours["classifier"])) == [("resnet50+alexnet", "fusion"),
                                                              ("alexnet", "single pathway")]
    assert ours["accuracy"].iloc[0] == pytest.approx(results["good"]["image_level"]["accuracy"]["value"])
    theirs = table[table["who"] == "paper (their data)"]
    assert set(theirs["paper"]) == {"paper 003"} and "resnet50+alexnet" in set(theirs["backbone"])
    assert theirs.loc[theirs["backbone"] == "resnet50+alexnet", "accuracy"].iloc[0] == pytest.approx(0.9723)
    compare = reporting.comparison_table(entries)
    fused = compare[(compare["paper"] == "paper 003") & (compare["backbone"] == "resnet50+alexnet")].iloc[0]
    assert fused["our_run"] == "fusion_003_resnet50_alexnet"
    index = reporting.build_report(tmp_path, profile="smoke")
    assert "The hybrids against what they replace" in (index.parent / "index.md").read_text()
