import json

import pandas as pd
import pytest

from helpers import splits


def make_manifest(n_patients: int = 30, views: int = 2) -> pd.DataFrame:
    rows = []
    for p in range(n_patients):
        label = ["normal", "benign", "malignant"][p % 3]
        for v in range(views):
            rows.append({"image_path": f"/img/p{p:03d}_{v}.png", "patient_id": f"P{p:03d}", "label": label})
    return pd.DataFrame(rows)


def test_no_patient_in_two_splits_and_all_splits_used():
    result = splits.patient_split(make_manifest(), test_size=0.2, val_size=0.2, seed=1)
    assert result.groupby("patient_id")["split"].nunique().max() == 1
    assert set(result["split"]) == {"train", "val", "test"}
    splits.check_no_leakage(result)


def test_stratified_every_split_has_every_class():
    result = splits.patient_split(make_manifest(30), test_size=0.2, val_size=0.2, seed=3)
    for split in splits.SPLITS:
        assert set(result.loc[result["split"] == split, "label"]) == {"normal", "benign", "malignant"}


def test_same_seed_same_split_other_seed_other_split():
    manifest = make_manifest()
    a = splits.patient_split(manifest, test_size=0.25, val_size=0.15, seed=7)
    b = splits.patient_split(manifest, test_size=0.25, val_size=0.15, seed=7)
    c = splits.patient_split(manifest, test_size=0.25, val_size=0.15, seed=8)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_patient_stratified_by_most_severe_image():
    manifest = make_manifest(12)
    manifest.loc[0, "label"] = "malignant"  # patient P000 now has a malignant and a normal image
    classes = splits._patient_classes(manifest)
    assert classes["P000"] == "malignant"


def test_leakage_is_detected():
    manifest = make_manifest(6).assign(split="train")
    manifest.loc[1, "split"] = "test"  # second view of patient 0 in test
    with pytest.raises(splits.LeakageError, match="P000"):
        splits.check_no_leakage(manifest)
    assert splits.leaked_patients(manifest) == ["P000"]


def test_naive_image_split_leaks_patient_split_does_not():
    manifest = make_manifest(40)
    assert splits.leaked_patients(splits.naive_image_split(manifest, test_size=0.3, seed=0))
    assert not splits.leaked_patients(splits.patient_split(manifest, test_size=0.3, val_size=0.1, seed=0))


def test_save_and_load_round_trip(tmp_path):
    manifest = make_manifest()
    result = splits.patient_split(manifest, test_size=0.2, val_size=0.2, seed=1)
    path = splits.save_split(result, tmp_path / "split.json", seed=1, test_size=0.2, val_size=0.2)
    loaded = splits.load_split(path, manifest)
    assert loaded["split"].tolist() == result["split"].tolist()


def test_load_rejects_a_leaking_file(tmp_path):
    manifest = make_manifest(6)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"patients": {"train": ["P000", "P001", "P002"], "val": ["P003"],
                                             "test": ["P004", "P005", "P000"]}}))
    with pytest.raises(splits.LeakageError, match="P000"):
        splits.load_split(path, manifest)


def test_load_rejects_missing_patients_and_bad_files(tmp_path):
    manifest = make_manifest(6)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"patients": {"train": ["P000"], "val": [], "test": ["P001"]}}))
    with pytest.raises(ValueError, match="in no split"):
        splits.load_split(path, manifest)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="split.json"):
        splits.load_split(path, manifest)


def test_make_or_load_reuses_then_remakes_when_data_change(tmp_path):
    manifest = make_manifest()
    path = tmp_path / "s.json"
    first = splits.make_or_load_split(manifest, path, test_size=0.2, val_size=0.2, seed=1)
    stamp = path.stat().st_mtime_ns
    second = splits.make_or_load_split(manifest, path, test_size=0.2, val_size=0.2, seed=1)
    assert path.stat().st_mtime_ns == stamp
    assert first["split"].tolist() == second["split"].tolist()
    bigger = make_manifest(33)
    third = splits.make_or_load_split(bigger, path, test_size=0.2, val_size=0.2, seed=1)
    assert len(third) == len(bigger)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="empty"):
        splits.patient_split(make_manifest(0), test_size=0.2, val_size=0.2, seed=0)
    one_class = make_manifest(9).assign(label="benign")
    with pytest.raises(ValueError, match="every patient has class 'benign'"):
        splits.patient_split(one_class, test_size=0.2, val_size=0.2, seed=0)
    with pytest.raises(ValueError, match="fractions"):
        splits.patient_split(make_manifest(), test_size=0.7, val_size=0.4, seed=0)


def test_split_summary_counts():
    result = splits.patient_split(make_manifest(30), test_size=0.2, val_size=0.2, seed=1)
    table = splits.split_summary(result)
    assert table["patients"].sum() == 30
    assert table[["benign", "malignant", "normal"]].to_numpy().sum() == 60


def test_fingerprint_does_not_depend_on_where_the_dataset_lies():
    here = make_manifest(6)
    there = here.assign(image_path=here["image_path"].str.replace("/img/", "/elsewhere/data/", regex=False))
    assert splits.manifest_fingerprint(here) == splits.manifest_fingerprint(there)
    relabelled = here.assign(label=here["label"].replace({"benign": "malignant"}))
    assert splits.manifest_fingerprint(here) != splits.manifest_fingerprint(relabelled)
