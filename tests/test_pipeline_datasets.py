"""The papers' datasets through the same pipeline as the embedded data: one parameter pair
(dataset, data_dir) switches the study to them; what is left out is listed, never dropped silently."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fixtures.breakhis import make_breakhis_fixture
from fixtures.mias import make_mias_fixture
from helpers import pipeline, plan, reporting, splits


@pytest.fixture(scope="module")
def mias_root(tmp_path_factory):
    return make_mias_fixture(tmp_path_factory.mktemp("mias"), width=96, height=128, n_extra_pairs=24)


def mias_settings(root, **overrides):
    return plan.resolve_settings("smoke", study="000", backbone="mobilenetv2", dataset="mias",
                                 data_dir=str(root), **overrides)


def test_mias_roi_patches_list_what_was_left_out(mias_root):
    settings = mias_settings(mias_root, task="benign-vs-malignant", use_roi=True)
    data = pipeline.prepare_data(settings, progress=False)
    assert pipeline.uses_roi_patches(settings, data.manifest)
    assert data.x["train"].shape[1:] == (32, 32, 3)
    splits.check_no_leakage(data.manifest)
    left = pipeline.left_out(data)
    reasons = " | ".join(left["reason"])
    assert "without lesion coordinates" in reasons  # mdb006, mdb007: malignant/benign, no x, y
    assert "missing" in reasons                      # label rows of a partial download
    assert {"mdb006.pgm", "mdb007.pgm"} <= set(left["item"])
    assert not {"mdb006.pgm", "mdb007.pgm"} & {p.split("/")[-1] for p in data.manifest["image_path"]}
    record = pipeline.run_record(settings, data, run_name="t", notebook="03", weights_description="none")
    assert record["roi_patches"] and record["excluded"] and record["split"] == "patient"
    table = reporting.left_out_table([{"name": "t", "metrics": {"run": record}}])
    assert len(table) == len(left) and set(table["stage"]) == {"dataset"}


def test_mias_normal_vs_abnormal_uses_normals(mias_root):
    data = pipeline.prepare_data(mias_settings(mias_root, task="normal-vs-abnormal", use_roi=True), progress=False)
    assert data.class_names == ["normal", "abnormal"]
    assert set(data.manifest["label"]) == {"normal", "benign", "malignant"}


def test_unreadable_image_stops_or_is_skipped_and_listed(tmp_path):
    root = make_mias_fixture(tmp_path / "mias", width=96, height=128, n_extra_pairs=24)
    (root / "mdb011.pgm").write_bytes(b"P5\n96 128\n255\n" + b"\x00" * 10)  # truncated pixels
    with pytest.raises(ValueError, match="mdb011"):
        pipeline.prepare_data(mias_settings(root, task="normal-vs-abnormal"), progress=False)
    data = pipeline.prepare_data(mias_settings(root, task="normal-vs-abnormal", skip_bad=True), progress=False)
    left = pipeline.left_out(data)
    assert any(item.startswith("mdb011") for item in left["item"]), left
    assert not any(path.endswith("mdb011.pgm") for path in data.manifest["image_path"])


def test_missing_dataset_folder_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="data/README.md"):
        pipeline.prepare_data(mias_settings(tmp_path / "nowhere"), progress=False)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        pipeline.prepare_data(plan.resolve_settings("smoke", study="000", dataset="mias"), progress=False)


def test_breakhis_paper004_split_by_magnification_stays_patient_level(tmp_path):
    root = make_breakhis_fixture(tmp_path / "breakhis", images_per_magnification=2)
    settings = plan.resolve_settings("smoke", study="004", backbone="resnet50", dataset="breakhis",
                                     data_dir=str(root), test_size=0.34, val_size=0.25)
    assert settings.split == "by-magnification" and settings.preset == "paper004"
    data = pipeline.prepare_data(settings, progress=False)
    test = data.manifest[data.manifest["split"] == "test"]
    assert set(test["magnification"]) == {"40X"}
    assert "40X" not in set(data.manifest.loc[data.manifest["split"] != "test", "magnification"])
    splits.check_no_leakage(data.manifest)
    assert not pipeline.uses_roi_patches(settings, data.manifest)  # slides: whole images, in colour
    image = cv2.imread(test["image_path"].iloc[0], cv2.IMREAD_COLOR)
    assert image.ndim == 3 and data.x["test"].shape[1:] == (32, 48, 3)
    assert not np.allclose(data.x["test"][..., 0], data.x["test"][..., 2])


def test_real_data_suite_is_one_command(tmp_path):
    runs = plan.planned_runs("cpu", suite="real-data", dataset="mias", data_dir=str(tmp_path),
                             reports_root=tmp_path / "reports")
    names = [run.name for run in runs]
    assert names[0] == "data_preparation" and names[-1] == "results"
    assert all(run.run_dir.parent == tmp_path / "reports" / "cpu-mias-real-data" for run in runs)
    trained = [plan.settings_for_run(run) for run in runs if "BACKBONE" in run.parameters]
    paper000 = {"vgg16", "vgg19", "googlenet", "mobilenetv2", "resnet50", "densenet121"}
    assert sorted((s.backbone, s.task, s.weights is None) for s in trained) == sorted(
        (backbone, task, scratch) for backbone in paper000 for task in ("normal-vs-abnormal", "benign-vs-malignant")
        for scratch in (False, True))
    assert all(s.dataset == "mias" and s.use_roi and s.split == "cv" and s.cv_folds == 5 for s in trained)
    assert {s.weights for s in trained} == {None, "imagenet"}
    with pytest.raises(KeyError, match="suite"):
        plan.planned_runs("cpu", suite="nope")
