"""CBIS-DDSM adapter: both layouts, full and ROI images, label rules, official split, bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import pandas as pd
import pydicom
import pytest
from fixtures.cbis_ddsm import CASES, make_cbis_ddsm_fixture

from helpers.adapters import BadInputError
from helpers.adapters.cbis_ddsm import EXTRA_COLUMNS, PATHOLOGY_TO_LABEL, load_cbis_ddsm, official_split
from helpers.datasets import MANIFEST_COLUMNS, validate_manifest
from helpers.splits import LeakageError


@pytest.fixture(scope="module")
def tcia(tmp_path_factory) -> Path:
    return make_cbis_ddsm_fixture(tmp_path_factory.mktemp("cbis") / "download")


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    return make_cbis_ddsm_fixture(tmp_path_factory.mktemp("cbis-kaggle"), layout="kaggle")


@pytest.fixture()
def fresh(tmp_path) -> Path:
    """A dataset a test may damage."""
    return make_cbis_ddsm_fixture(tmp_path / "cbis")


def _csv(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, dtype=str, keep_default_na=False)


def _description(path: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription)


# ----------------------------------------------------------------------------- TCIA layout

def test_full_mammograms_one_row_each_and_validates(tcia):
    result = load_cbis_ddsm(tcia)
    df = validate_manifest(result.manifest, str(tcia))
    assert result.excluded == []
    assert list(df.columns) == list(MANIFEST_COLUMNS) + list(EXTRA_COLUMNS)
    assert len(df) == len(CASES) and df["image_path"].is_unique
    assert set(df["dataset"]) == {"cbis-ddsm"} and set(df["roi"]) == {""}
    assert all(_description(p) == "full mammogram images" for p in df["image_path"])
    first = df.set_index("patient_id").loc["P_00001"]
    # two abnormalities, one benign and one malignant -> malignant, both listed
    assert first["label"] == "malignant" and first["abnormality_id"] == "1;2"
    assert first["pathology"] == "BENIGN;MALIGNANT" and first["subtlety"] == "3;4"
    assert (first["view"], first["laterality"], first["case"]) == ("CC", "L", "Mass-Training_P_00001_LEFT_CC")
    assert first["split_official"] == "train" and first["abnormality"] == "mass"
    # breast_density comes from "breast_density" (mass CSVs) and "breast density" (calc CSVs)
    assert df.groupby("abnormality")["breast_density"].first().to_dict() == {"calc": "3", "mass": "2"}
    expected = {p: ("malignant" if any(x == "MALIGNANT" for _, x in abn) else "benign")
                for p, _, _, _, _, abn in CASES}
    assert df.set_index("patient_id")["label"].to_dict() == expected
    assert df.set_index("patient_id")["split_official"].to_dict() == {p: s for p, _, s, *_ in CASES}


def test_roi_mode_picks_the_cropped_image_never_the_mask(tcia):
    df = validate_manifest(load_cbis_ddsm(tcia, image_type="roi").manifest, str(tcia))
    assert len(df) == sum(len(abn) for *_, abn in CASES)
    assert all(_description(p) == "cropped images" for p in df["image_path"])
    names = {Path(p).name for p in df["image_path"]}
    assert names == {"1-1.dcm", "1-2.dcm"}   # both orders of the one-folder style occur
    row = df[(df["patient_id"] == "P_00001") & (df["abnormality_id"] == "1")].iloc[0]
    assert row["label"] == "benign" and row["pathology"] == "BENIGN"
    assert Path(row["image_path"]).parents[2].name == "Mass-Training_P_00001_LEFT_CC_1"
    assert row["case"] == "Mass-Training_P_00001_LEFT_CC"


def test_pathology_mapping():
    assert PATHOLOGY_TO_LABEL == {"BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign", "MALIGNANT": "malignant"}


def test_abnormality_option_needs_only_its_csvs(fresh):
    for name in ("calc_case_description_train_set.csv", "calc_case_description_test_set.csv"):
        (fresh / name).unlink()
    df = load_cbis_ddsm(fresh, abnormality="mass").manifest
    assert set(df["abnormality"]) == {"mass"} and len(df) == 4
    with pytest.raises(FileNotFoundError, match="calc_case_description_train_set.csv"):
        load_cbis_ddsm(fresh)


def test_manifest_is_sorted_deterministically(tcia):
    a, b = load_cbis_ddsm(tcia).manifest, load_cbis_ddsm(tcia).manifest
    pd.testing.assert_frame_equal(a, b)
    assert list(a["patient_id"]) == sorted(a["patient_id"])


def test_bad_options_and_missing_root(tmp_path, tcia):
    with pytest.raises(ValueError, match="image_type"):
        load_cbis_ddsm(tcia, image_type="mask")
    with pytest.raises(ValueError, match="abnormality"):
        load_cbis_ddsm(tcia, abnormality=("mass", "arch"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cbis_ddsm(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cbis-ddsm"):
        load_cbis_ddsm(None)


# ----------------------------------------------------------------------------- bad input

def test_unknown_pathology_names_csv_and_row(fresh):
    name = "mass_case_description_test_set.csv"
    table = _csv(fresh, name)
    table.loc[0, "pathology"] = "UNPROVEN"
    table.to_csv(fresh / name, index=False)
    with pytest.raises(BadInputError, match=rf"{name} row 2: unknown pathology 'UNPROVEN'"):
        load_cbis_ddsm(fresh)
    result = load_cbis_ddsm(fresh, skip_bad=True)
    assert "P_00005" not in set(result.manifest["patient_id"])
    assert any(name in item and "UNPROVEN" in reason for item, reason in result.excluded)


def test_one_bad_abnormality_leaves_its_whole_mammogram_out(fresh):
    name = "mass_case_description_train_set.csv"
    table = _csv(fresh, name)
    row = table.index[(table["patient_id"] == "P_00001") & (table["abnormality id"] == "2")][0]
    table.loc[row, "pathology"] = "?"
    table.to_csv(fresh / name, index=False)
    result = load_cbis_ddsm(fresh, skip_bad=True)
    # the remaining abnormality is benign, but the mammogram's label is unknown: not kept as benign
    assert "P_00001" not in set(result.manifest["patient_id"])
    assert len(result.excluded) == 2
    assert any("label is uncertain" in reason for _, reason in result.excluded)
    roi = load_cbis_ddsm(fresh, skip_bad=True, image_type="roi").manifest
    assert list(roi.loc[roi["patient_id"] == "P_00001", "abnormality_id"]) == ["1"]


def test_missing_case_folder_names_row_and_path(fresh):
    shutil.rmtree(fresh / "CBIS-DDSM" / "Calc-Test_P_00006_RIGHT_CC")
    expected = r"calc_case_description_test_set.csv row 2: case folder .*Calc-Test_P_00006_RIGHT_CC does not exist"
    with pytest.raises(BadInputError, match=expected):
        load_cbis_ddsm(fresh)
    result = load_cbis_ddsm(fresh, skip_bad=True)
    assert len(result.manifest) == len(CASES) - 1 and len(result.excluded) == 1
    # the ROI images of that case are still there
    assert "P_00006" in set(load_cbis_ddsm(fresh, image_type="roi").manifest["patient_id"])


def test_unreadable_dicom_header_names_the_file(fresh):
    target = next((fresh / "CBIS-DDSM" / "Mass-Test_P_00005_LEFT_MLO").rglob("1-1.dcm"))
    target.write_bytes(b"not a dicom file at all")
    with pytest.raises(BadInputError, match=rf"{re.escape(str(target))}: not a readable DICOM header"):
        load_cbis_ddsm(fresh)
    assert len(load_cbis_ddsm(fresh, skip_bad=True).manifest) == len(CASES) - 1


def test_roi_images_without_description_are_ambiguous(fresh):
    folder = fresh / "CBIS-DDSM" / "Mass-Test_P_00005_LEFT_MLO_1"
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        del ds.SeriesDescription
        ds.save_as(path, enforce_file_format=True)
    expected = "cannot tell which image of case Mass-Test_P_00005_LEFT_MLO_1 is the cropped image"
    with pytest.raises(BadInputError, match=expected):
        load_cbis_ddsm(fresh, image_type="roi")
    # the full mammograms are unaffected
    assert len(load_cbis_ddsm(fresh).manifest) == len(CASES)


def test_exact_csv_path_decides_when_roles_do_not(fresh):
    folder = fresh / "CBIS-DDSM" / "Mass-Test_P_00005_LEFT_MLO_1"
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "unknown"
        ds.save_as(path, enforce_file_format=True)
    table = _csv(fresh, "mass_case_description_test_set.csv")
    cropped = next(p for p in folder.rglob("*.dcm") if p.name == "1-1.dcm")
    table.loc[0, "cropped image file path"] = cropped.relative_to(fresh / "CBIS-DDSM").as_posix()
    table.to_csv(fresh / "mass_case_description_test_set.csv", index=False)
    df = load_cbis_ddsm(fresh, image_type="roi").manifest
    assert df.loc[df["patient_id"] == "P_00005", "image_path"].tolist() == [str(cropped)]


def test_case_folder_that_disagrees_with_the_row(fresh):
    name = "calc_case_description_train_set.csv"
    table = _csv(fresh, name)
    table.loc[0, "left or right breast"] = "LEFT"   # its folder says RIGHT
    table.to_csv(fresh / name, index=False)
    with pytest.raises(BadInputError, match=rf"{name} row 2: .*disagrees with the row"):
        load_cbis_ddsm(fresh)


def test_duplicated_abnormality_row(fresh):
    name = "mass_case_description_test_set.csv"
    table = _csv(fresh, name)
    pd.concat([table, table.iloc[[0]]]).to_csv(fresh / name, index=False)
    with pytest.raises(BadInputError, match="listed more than once"):
        load_cbis_ddsm(fresh)


def test_csv_without_required_columns(fresh):
    name = "mass_case_description_test_set.csv"
    _csv(fresh, name).drop(columns=["pathology"]).to_csv(fresh / name, index=False)
    with pytest.raises(BadInputError, match=rf"{name}: lacks column"):
        load_cbis_ddsm(fresh)


# ----------------------------------------------------------------------------- Kaggle JPEG layout

def test_kaggle_layout_is_detected_and_uses_dicom_info(kaggle):
    full = validate_manifest(load_cbis_ddsm(kaggle).manifest, str(kaggle))
    assert len(full) == len(CASES) and all(p.endswith(".jpg") for p in full["image_path"])
    info = pd.read_csv(kaggle / "csv" / "dicom_info.csv", dtype=str, keep_default_na=False)
    described = {str((kaggle / p.removeprefix("CBIS-DDSM/")).resolve()): d
                 for p, d in zip(info["image_path"], info["SeriesDescription"])}
    # the first full image has no SeriesDescription (as some rows of the real file): its case has one image
    assert {described[p] for p in full["image_path"]} == {"full mammogram images", ""}
    roi = validate_manifest(load_cbis_ddsm(kaggle, image_type="roi").manifest, str(kaggle))
    assert {described[p] for p in roi["image_path"]} == {"cropped images"}
    assert {Path(p).name for p in roi["image_path"]} == {"1-1.jpg", "2-1.jpg"}
    assert cv2.imread(roi["image_path"][0], cv2.IMREAD_UNCHANGED) is not None


def _relative(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    return df.assign(image_path=[Path(p).relative_to(root.resolve()).as_posix() for p in df["image_path"]])


def test_kaggle_csv_paths_rewritten_to_jpeg(tmp_path, kaggle):
    rewritten = make_cbis_ddsm_fixture(tmp_path / "rw", layout="kaggle", rewritten_paths=True)
    paths = _csv(rewritten / "csv", "mass_case_description_train_set.csv")["image file path"]
    assert paths[0].startswith("CBIS-DDSM/jpeg/")
    for image_type in ("full", "roi"):
        a = load_cbis_ddsm(rewritten, image_type=image_type).manifest
        b = load_cbis_ddsm(kaggle, image_type=image_type).manifest
        pd.testing.assert_frame_equal(_relative(a, rewritten), _relative(b, kaggle))


def test_kaggle_missing_jpeg_is_bad_input(tmp_path):
    root = make_cbis_ddsm_fixture(tmp_path / "k", layout="kaggle")
    missing = next((root / "jpeg").glob("*000005/1-1.jpg"))
    missing.unlink()
    expected = rf"mass_case_description_test_set.csv row 2: image file {re.escape(str(missing))} .*does not exist"
    with pytest.raises(BadInputError, match=expected):
        load_cbis_ddsm(root)


# ----------------------------------------------------------------------------- official split

def test_official_split_keeps_test_and_draws_val_from_train(tcia):
    df = load_cbis_ddsm(tcia).manifest
    split = official_split(df, val_size=0.25, seed=1)
    assert (split.loc[split["split_official"] == "test", "split"] == "test").all()
    assert set(split.loc[split["split_official"] == "train", "split"]) == {"train", "val"}
    val = split[split["split"] == "val"]
    assert set(val["label"]) == {"benign", "malignant"}   # stratified by patient class
    pd.testing.assert_frame_equal(split, official_split(df, val_size=0.25, seed=1))
    assert (official_split(df, val_size=0.0, seed=1)["split"] == df["split_official"]).all()
    assert not split.equals(df)   # a copy; the input is unchanged
    assert "split" not in df.columns


def test_official_split_rejects_patient_in_both_train_and_test(tcia):
    df = load_cbis_ddsm(tcia).manifest
    df.loc[df["patient_id"] == "P_00006", "patient_id"] = "P_00002"
    with pytest.raises(LeakageError, match="P_00002"):
        official_split(df, val_size=0.2, seed=0)
    with pytest.raises(ValueError, match="split_official"):
        official_split(df.drop(columns=["split_official"]), val_size=0.2, seed=0)
