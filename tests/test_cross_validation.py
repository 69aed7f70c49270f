"""Split "cv": patient-grouped k-fold cross-validation (folds, pooled out-of-fold metrics, clustered
bootstrap, one tiny end-to-end run, the report's table)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import evaluation, plan, splits


def make_manifest(n_patients: int = 30, views: int = 2) -> pd.DataFrame:
    """Patients of three classes in turn, each with ``views`` images."""
    rows = []
    for p in range(n_patients):
        label = ["normal", "benign", "malignant"][p % 3]
        rows += [{"image_path": f"/img/p{p:03d}_{v}.png", "patient_id": f"P{p:03d}", "label": label}
                 for v in range(views)]
    return pd.DataFrame(rows)


def test_folds_are_patient_disjoint_and_test_every_patient_once_per_repeat():
    manifest = make_manifest(30).iloc[:-1]  # patient P029 with one image: groups of unequal size
    folds = splits.cross_validation_folds(manifest, n_folds=5, repeats=2, seed=4, val_size=0.2)
    assert [(f.repeat, f.fold) for f in folds] == [(r, k) for r in (1, 2) for k in range(1, 6)]
    for fold in folds:
        split = fold.apply(manifest)
        splits.check_no_leakage(split)  # no patient in two of train / val / test
        assert set(split["split"]) == {"train", "val", "test"}
    for repeat in (1, 2):
        tested = [p for f in folds if f.repeat == repeat
                  for p in set(manifest.loc[f.split == "test", "patient_id"])]
        assert sorted(tested) == sorted(manifest["patient_id"].unique())  # each patient once


def test_folds_are_stratified_by_the_patients_class():
    manifest = make_manifest(30)
    for fold in splits.cross_validation_folds(manifest, n_folds=5, repeats=1, seed=0, val_size=0.2):
        test = manifest[fold.split == "test"].drop_duplicates("patient_id")
        assert test["label"].value_counts().to_dict() == {"normal": 2, "benign": 2, "malignant": 2}
        train = manifest[fold.split == "train"]
        assert set(train["label"]) == {"normal", "benign", "malignant"}


def test_folds_are_seeded_and_repeat_r_uses_seed_plus_r():
    manifest = make_manifest(30)
    first = splits.cross_validation_folds(manifest, n_folds=3, repeats=2, seed=10, val_size=0.2)
    again = splits.cross_validation_folds(manifest, n_folds=3, repeats=2, seed=10, val_size=0.2)
    later = splits.cross_validation_folds(manifest, n_folds=3, repeats=1, seed=11, val_size=0.2)
    assert all((a.split == b.split).all() for a, b in zip(first, again))
    assert [f.seed for f in first] == [10, 10, 10, 11, 11, 11]
    assert all((a.split == b.split).all() for a, b in zip(first[3:], later))
    assert any((a.split != b.split).any() for a, b in zip(first[:3], first[3:]))


def test_too_few_patients_of_a_class_is_a_clear_error():
    manifest = make_manifest(30)
    manifest = manifest[~manifest["patient_id"].isin(["P002", "P005", "P008", "P011", "P014", "P017", "P020"])]
    with pytest.raises(ValueError, match=r"mias: too few patients for 5-fold.*'malignant' has 3 patient\(s\)"
                                         r".*lower cv_folds to 3"):
        splits.cross_validation_folds(manifest, n_folds=5, repeats=1, seed=0, val_size=0.2, dataset="mias")


def test_cv_settings_are_declared_once_and_checked():
    settings = plan.resolve_settings("smoke", split="cv")
    assert (settings.split, settings.cv_folds, settings.cv_repeats) == ("cv", 5, 1)
    assert settings.sources["cv_folds"] == "defaults"
    from_lesson = plan.settings_from_parameters({"PROFILE": "smoke", "SPLIT": "cv", "CV_FOLDS": 3, "CV_REPEATS": 2})
    assert (from_lesson.cv_folds, from_lesson.cv_repeats, from_lesson.sources["cv_folds"]) == (3, 2, "run")
    with pytest.raises(ValueError, match="cv_folds >= 2"):
        plan.resolve_settings("smoke", split="cv", cv_folds=1)


def test_clustered_bootstrap_resamples_whole_patients():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 15)
    prob = np.clip(y * 0.3 + rng.uniform(0, 0.7, 30), 0, 1)
    patients = [f"P{i:02d}" for i in range(30)]
    # each patient's image four times: resampling patients is resampling the 30 distinct cases
    copies = evaluation.bootstrap_ci(np.repeat(y, 4), np.repeat(prob, 4), ["a", "b"], n_boot=300, seed=5,
                                     groups=np.repeat(patients, 4))
    distinct = evaluation.bootstrap_ci(y, prob, ["a", "b"], n_boot=300, seed=5)
    assert {name: pytest.approx(interval) for name, interval in copies.items()} == distinct
    naive = evaluation.bootstrap_ci(np.repeat(y, 4), np.repeat(prob, 4), ["a", "b"], n_boot=300, seed=5)
    width = {name: high - low for name, (low, high) in naive.items()}
    assert width["roc_auc"] < 0.75 * (distinct["roc_auc"][1] - distinct["roc_auc"][0])  # copies look like data
    with pytest.raises(ValueError, match="groups"):
        evaluation.bootstrap_ci(y, prob, ["a", "b"], n_boot=10, groups=patients[:-1])


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """One tiny cross-validated run: 12 synthetic patients, 32 px, MobileNetV2 from random weights with a
    frozen base and cached features (its batch norm set per fold), 2 folds, 1 epoch of the head."""
    from helpers import pipeline

    settings = plan.resolve_settings(
        "smoke", study="000", backbone="mobilenetv2", split="cv", cv_folds=2, cache_features=True, freeze="base",
        epochs=1, task="normal-vs-abnormal", n_boot=50,
        dataset_options={"n_patients": 12, "image_size": 64, "seed": 3, "class_balance": [0.5, 0.25, 0.25]})
    data = pipeline.prepare_data(settings, progress=False)
    run_dir = tmp_path_factory.mktemp("cv-run")
    cv = pipeline.cross_validate(settings, data, run_dir, progress=False)
    return settings, data, cv, run_dir


def test_cv_run_folds_cover_the_data_and_fold_1_is_the_lessons_split(cv_run):
    settings, data, cv, run_dir = cv_run
    from helpers import pipeline

    folds = pipeline.cv_folds(settings, data.manifest)
    assert (folds[0].split == data.manifest["split"].to_numpy()).all()  # the lesson's single split: fold 1
    saved = json.loads((run_dir / pipeline.FOLDS_FILE).read_text())
    tested = [p for fold in saved["folds"] for p in fold["test_patients"]]
    assert sorted(tested) == sorted(data.manifest["patient_id"].unique())
    assert [row["patients_test"] for row in cv.folds] == [len(f["test_patients"]) for f in saved["folds"]]
    assert all((run_dir / f"fold_{k}" / "history.csv").exists() for k in (1, 2))


def test_pooled_metrics_are_those_of_the_out_of_fold_predictions(cv_run):
    settings, data, cv, run_dir = cv_run
    predictions = evaluation.read_predictions(run_dir / evaluation.PREDICTIONS_FILE)
    assert len(predictions) == len(data.manifest)
    assert set(predictions["image"]) == {p.split("/")[-1] for p in data.manifest["image_path"]}
    columns = [f"p_{name}" for name in data.class_names]
    again = evaluation.evaluate(predictions["y_true"].to_numpy(), predictions[columns].to_numpy(), data.class_names,
                                patient_ids=predictions["patient_id"], n_boot=0)
    for level in ("image_level", "patient_level"):
        for name in evaluation.METRIC_NAMES:
            assert cv.pooled[level][name]["value"] == pytest.approx(again[level][name]["value"], abs=1e-6, nan_ok=True)
    # each image's prediction is its own fold's: the folds' metrics are those of their rows
    from helpers import pipeline

    for fold, row in zip(pipeline.cv_folds(settings, data.manifest), cv.folds):
        test = fold.split == "test"
        mine = evaluation.compute_metrics(cv.y_true[test], cv.y_prob[test], data.class_names)
        assert mine["accuracy"] == pytest.approx(row["image_level"]["accuracy"])
    aucs = [row["image_level"]["roc_auc"] for row in cv.folds]
    assert cv.mean["image_level"]["roc_auc"] == pytest.approx(np.mean(aucs))
    assert cv.sd["image_level"]["roc_auc"] == pytest.approx(np.std(aucs, ddof=1))
    assert cv.pooled["bootstrap"]["clustered"] is True


def test_cv_metrics_json_and_report_table(cv_run, tmp_path):
    settings, data, cv, run_dir = cv_run
    from helpers import pipeline, reporting

    run = tmp_path / "real_nva_mobilenetv2_scratch"
    record = pipeline.run_record(settings, data, run_name=run.name, notebook="03_transfer_learning",
                                 weights_description="random init")
    pipeline.write_metrics(run, record, cv.results())
    stored = evaluation.read_metrics_json(run / "metrics.json")
    block = stored["cross_validation"]
    assert (block["k"], block["repeats"], block["seeds"], len(block["folds"])) == (2, 1, [settings.seed], 2)
    assert stored["image_level"]["roc_auc"]["value"] == pytest.approx(cv.pooled["image_level"]["roc_auc"]["value"])
    missing = tmp_path / "real_nva_vgg16_imagenet"
    missing.mkdir()
    (missing / "run.json").write_text(json.dumps({"status": "unavailable", "parameters": {
        "BACKBONE": "vgg16", "WEIGHTS": "imagenet", "TASK": "normal-vs-abnormal", "SPLIT": "cv"}}))
    table = reporting.cv_table(reporting.collect_runs(tmp_path)).set_index("run")
    assert table.loc["real_nva_vgg16_imagenet", "auc_over_folds"] == "weights unavailable"
    ours = table.loc[run.name]
    mean, sd = block["mean"]["image_level"]["roc_auc"], block["sd"]["image_level"]["roc_auc"]
    assert ours["auc_over_folds"] == f"{mean:.3f} +- {sd:.3f}"
    assert (ours["folds"], ours["backbone"]) == ("2 x 1", "mobilenetv2")
