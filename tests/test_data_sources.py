"""Where a run's data comes from: an external test set, a user's split file, pooled datasets,
and the errors that bad combinations of them give (issue 12, items 2 and 5)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fixtures.mias import make_mias_fixture
from helpers import datasets, pipeline, plan, reporting, splits
from helpers.__main__ import build_parser, data_sources, main
from helpers.adapters import BadInputError


def other_hospital(root: Path) -> Path:
    """The same films re-exposed (every pixel value changed), as another site's copy would differ."""
    for film in sorted(root.glob("*.pgm")):
        image = cv2.imread(str(film), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(film), (image // 2 + 7).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def mias_a(tmp_path_factory) -> Path:
    return make_mias_fixture(tmp_path_factory.mktemp("mias-a"), width=96, height=128, n_extra_pairs=8)


@pytest.fixture(scope="module")
def mias_b(tmp_path_factory) -> Path:
    root = make_mias_fixture(tmp_path_factory.mktemp("mias-b"), width=96, height=128, n_extra_pairs=2)
    return other_hospital(root)


def settings_for(**overrides) -> plan.RunSettings:
    return plan.resolve_settings("smoke", study="000", backbone="mobilenetv2", **overrides)


# ----------------------------------------------------------------------------- external test set

def test_external_test_set_trains_on_one_folder_and_tests_on_the_other(mias_a, mias_b):
    settings = settings_for(dataset="mias", data_dir=str(mias_a), test_dataset="mias",
                            test_data_dir=str(mias_b), task="normal-vs-abnormal", use_roi=True)
    assert settings.split == "external" and settings.sources["split"] == "derived"
    data = pipeline.prepare_data(settings, progress=False)
    rows = data.manifest
    test = rows[rows["split"] == "test"]
    assert set(test["source"]) == {"test"} and set(rows.loc[rows["split"] != "test", "source"]) == {"training"}
    assert all(Path(p).parent == mias_b for p in test["image_path"])
    unplaced = {"mdb006.pgm", "mdb007.pgm"}  # abnormal films without lesion coordinates: no ROI patch
    assert unplaced <= set(pipeline.left_out(data)["item"])
    assert {Path(p).name for p in test["image_path"]} == {p.name for p in mias_b.glob("*.pgm")} - unplaced
    # both folders have a patient "mias-P001": namespaced, they stay two patients
    assert "mias-P001" in set(rows["patient_id"]) and "test:mias-P001" in set(test["patient_id"])
    splits.check_no_leakage(rows)
    assert {"train", "val"} == set(rows.loc[rows["source"] == "training", "split"])
    assert data.class_names == ["normal", "abnormal"] and set(data.y["test"]) == {0, 1}
    assert "trainval" in data.split_file.name and data.split_file.is_file()

    record = pipeline.run_record(settings, data, run_name="t", notebook="03", weights_description="none")
    assert (record["dataset"], record["data_dir"]) == ("mias", str(mias_a))
    assert (record["test_dataset"], record["test_data_dir"], record["split"]) == ("mias", str(mias_b), "external")
    assert [(s["role"], s["dataset"]) for s in record["data_sources"]] == [("training", "mias"), ("test", "mias")]
    assert record["patients_test"] == record["data_sources"][1]["patients"]
    assert reporting.data_named(record) == "mias, tested on mias"
    assert plan.output_name("cpu", dataset="mias", test_dataset="mias") == "cpu-mias-test-mias"

    # the saved train/val assignment given back as the user's split file reproduces the split
    again = pipeline.prepare_data(settings_for(dataset="mias", data_dir=str(mias_a), test_dataset="mias",
                                               test_data_dir=str(mias_b), task="normal-vs-abnormal",
                                               use_roi=True, split_file=str(data.split_file)), progress=False)
    assert again.manifest[["image_path", "split"]].equals(rows[["image_path", "split"]])
    assert again.arrays_from_cache


def test_a_test_set_without_the_tasks_classes_is_an_error_naming_it(mias_a):
    settings = settings_for(dataset="mias", data_dir=str(mias_a), test_dataset="cbis-sample",
                            task="normal-vs-abnormal")
    with pytest.raises(ValueError, match=r"test dataset 'cbis-sample' .*class\(es\) \['normal'\]"):
        pipeline.prepare_data(settings, progress=False)


def test_the_same_image_in_training_and_test_data_is_an_error(mias_a, tmp_path):
    copy = make_mias_fixture(tmp_path / "copy", width=96, height=128, n_extra_pairs=8)  # the same films
    settings = settings_for(dataset="mias", data_dir=str(mias_a), test_dataset="mias", test_data_dir=str(copy),
                            task="benign-vs-malignant")
    with pytest.raises(BadInputError, match="identical files of different patients.*test:mias-P001"):
        pipeline.load_manifest(settings)


def test_contradicting_settings_are_errors_naming_them(mias_a):
    with pytest.raises(ValueError, match="test_data_dir .* without a test_dataset"):
        settings_for(test_data_dir="/somewhere")
    with pytest.raises(ValueError, match="split 'official' .* test_dataset 'inbreast'"):
        settings_for(dataset="cbis-ddsm", test_dataset="inbreast", split="official")
    with pytest.raises(ValueError, match="split 'external' .* needs a test_dataset"):
        settings_for(split="external")
    assert settings_for(dataset="cbis-ddsm", test_dataset="inbreast").split == "external"  # not "official"


# ----------------------------------------------------------------------------- split files

@pytest.fixture(scope="module")
def small_manifest() -> pd.DataFrame:
    return pd.DataFrame({"image_path": [f"/x/{p}_{v}.png" for p in "ABCDEF" for v in "12"],
                         "patient_id": [p for p in "ABCDEF" for _ in "12"],
                         "target": ["normal", "normal", "abnormal", "abnormal"] * 3})


def write(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


def test_a_users_split_file_is_applied_as_given(small_manifest, tmp_path):
    given = {"train": ["A", "B", "C"], "val": ["D"], "test": ["E", "F"]}
    result = splits.user_split(write(tmp_path / "published.json", given), small_manifest)
    assert {split: sorted(set(result.loc[result["split"] == split, "patient_id"])) for split in splits.SPLITS} == given
    saved = splits.save_split(result, tmp_path / "saved.json", seed=1, test_size=0.3, val_size=0.2)
    assert splits.user_split(saved, small_manifest)["split"].tolist() == result["split"].tolist()


@pytest.mark.parametrize("payload, error", [
    ({"train": ["A", "B", "X", "Y"], "val": ["C", "D"], "test": ["E", "F"]},
     r"2 patient\(s\) of the split file are not in the data \(6 patients\): X, Y"),
    ({"train": ["A", "B"], "val": ["C"], "test": ["E"]}, r"2 patient\(s\) of the data are in no split .*: D, F"),
    ({"train": ["A", "B", "C"], "val": ["D", "A"], "test": ["E", "F"]}, "patient A listed in both train and val"),
    ({"train": ["A", "B", "C", "D"], "val": [], "test": ["E", "F"]}, r"no patient in split\(s\) \['val'\]"),
    ('{"train": ["A", "B"]\n "val": ["C"]}', "JSON syntax error at line 2 column 2"),
    ({"training": ["A"]}, "not a patient assignment"),
])
def test_a_bad_split_file_is_an_error_naming_the_file(small_manifest, tmp_path, payload, error):
    path = write(tmp_path / "mine.json", payload)
    with pytest.raises(ValueError, match=error) as caught:
        splits.user_split(path, small_manifest)
    assert str(path) in str(caught.value)


def test_with_a_test_dataset_the_split_file_assigns_train_and_val_only(small_manifest, tmp_path):
    path = write(tmp_path / "mine.json", {"train": ["A", "B", "C", "D"], "val": ["E"], "test": ["F"]})
    with pytest.raises(ValueError, match="names test patients \\(F\\).*test dataset inbreast"):
        splits.user_split(path, small_manifest, test_dataset="inbreast")


def test_split_file_through_the_pipeline_and_the_report_folder(mias_a, tmp_path):
    patients = sorted(set(datasets.load("mias", mias_a)["patient_id"]))
    given = {"train": patients[:-5], "val": patients[-5:-3], "test": patients[-3:]}
    path = write(tmp_path / "published split.json", given)
    settings = settings_for(dataset="mias", data_dir=str(mias_a), task="normal-vs-abnormal", split_file=str(path))
    assert settings.split == "file"
    data = pipeline.prepare_data(settings, progress=False)
    assert data.split_file == path
    assert sorted(set(data.patients["test"])) == given["test"]
    record = pipeline.run_record(settings, data, run_name="t", notebook="03", weights_description="none")
    assert record["split"] == "file" and record["split_file"] == str(path)
    assert plan.output_name("smoke", dataset="mias", split_file=path) == "smoke-mias-split-published_split"


# ----------------------------------------------------------------------------- pooled datasets

def test_pooled_datasets_keep_patients_distinct_and_are_recorded(mias_a):
    options = {"synthetic": {"n_patients": 6, "image_size": 64, "seed": 3}}
    settings = settings_for(dataset="synthetic+mias", data_dir={"mias": str(mias_a)}, dataset_options=options,
                            task="benign-vs-malignant")
    assert settings.data_dir == {"mias": str(mias_a)}
    assert plan.settings_table(settings).loc["data_dir", "value"] == f"mias={mias_a}"
    data = pipeline.prepare_data(settings, progress=False)
    rows = data.manifest
    assert set(rows["dataset"]) == {"synthetic", "mias"}
    prefixes = {patient.split(":")[0] for patient in rows["patient_id"]}
    assert prefixes == {"synthetic", "mias"}
    record = pipeline.run_record(settings, data, run_name="t", notebook="03", weights_description="none")
    assert [s["dataset"] for s in record["data_sources"]] == ["synthetic", "mias"]
    assert sum(s["patients"] for s in record["data_sources"]) == rows["patient_id"].nunique()
    assert reporting.data_named(record) == "synthetic+mias"
    assert plan.output_name("cpu", dataset="synthetic+mias") == "cpu-synthetic+mias"


def test_a_pooled_dataset_giving_the_task_no_image_is_named(mias_a):
    options = {"synthetic": {"n_patients": 3, "image_size": 64, "class_balance": [1, 0, 0]}}  # normals only
    settings = settings_for(dataset="mias+synthetic", data_dir={"mias": str(mias_a)}, dataset_options=options,
                            task="benign-vs-malignant")
    with pytest.raises(ValueError, match=r"synthetic give\(s\) no image to task 'benign-vs-malignant'.*synthetic: normal"):
        pipeline.load_manifest(settings)


@pytest.mark.parametrize("dataset, data_dir, error", [
    ("mias+nope", None, "unknown dataset 'nope' in the pooled dataset 'mias\\+nope'"),
    ("mias", {"inbreast": "/x"}, "dataset 'inbreast' .* not in the dataset list 'mias'"),
    ("mias+inbreast", "/x", "needs a folder per dataset .*--data-dir mias=DIR --data-dir inbreast=DIR"),
    ("mias+mias", None, "names 'mias' twice"),
])
def test_bad_pools_are_errors_naming_the_dataset(dataset, data_dir, error):
    with pytest.raises((KeyError, ValueError), match=error):
        settings_for(dataset=dataset, data_dir=data_dir)


def test_a_pool_member_without_its_folder_says_how_to_give_it():
    with pytest.raises(FileNotFoundError, match="--data-dir inbreast=DIR"):
        datasets.load("synthetic+inbreast", None, synthetic={"n_patients": 3, "image_size": 64})


# ----------------------------------------------------------------------------- command line

def test_the_command_line_gives_every_run_its_data_sources(mias_a, mias_b, tmp_path, capsys):
    args = build_parser().parse_args(["run", "--dataset", "synthetic+mias", "--data-dir", f"mias={mias_a}",
                                      "--test-dataset", "mias", "--test-data-dir", str(mias_b),
                                      "--split-file", str(write(tmp_path / "s.json", {"train": [], "val": []}))])
    sources = data_sources(args)
    assert sources["data_dir"] == {"mias": str(mias_a)} and sources["test_data_dir"] == str(mias_b)
    runs = plan.planned_runs("smoke", reports_root=tmp_path, **sources)
    lesson = next(run for run in runs if run.name == "tl_000_mobilenetv2")
    assert lesson.run_dir.parent.name == "smoke-synthetic+mias-test-mias-split-s"
    assert lesson.parameters["DATA_DIR"] == {"mias": str(mias_a)}
    assert (lesson.parameters["TEST_DATASET"], lesson.parameters["TEST_DATA_DIR"]) == ("mias", str(mias_b))
    assert lesson.parameters["SPLIT_FILE"] == str(tmp_path / "s.json")
    assert "TEST_DATASET" not in next(run for run in runs if run.after_all).parameters
    resolved = plan.settings_for_run(lesson)
    assert (resolved.dataset, resolved.test_dataset, resolved.split) == ("synthetic+mias", "mias", "external")


@pytest.mark.parametrize("values, expected", [
    (None, None), (["/data/mias"], "/data/mias"), (["./a=b"], "./a=b"),
    (["mias=/d1", "inbreast=/d2"], {"mias": "/d1", "inbreast": "/d2"}),
])
def test_data_dir_values(values, expected):
    assert datasets.parse_data_dirs(values) == expected


@pytest.mark.parametrize("argv, error", [
    (["--dataset", "mias", "--data-dir", "inbreast=/x"], "dataset 'inbreast' (/x), which is not in the dataset list 'mias'"),
    (["--dataset", "mias", "--data-dir", "mais=/x"], "unknown dataset 'mais'"),
    (["--dataset", "mias", "--data-dir", "mias=/x", "--data-dir", "/y"], "one plain folder is for one dataset"),
    (["--dataset", "mias+nope"], "unknown dataset 'nope'"),
    (["--test-data-dir", "/x"], "--test-data-dir /x is given without --test-dataset"),
])
def test_bad_command_lines_are_errors_naming_the_dataset(argv, error, capsys):
    assert main(["run", "--profile", "smoke", "--dry-run", *argv]) == 2
    assert error in capsys.readouterr().err
