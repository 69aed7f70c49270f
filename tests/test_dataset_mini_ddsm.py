"""Mini-DDSM adapter: classes, patients, sheet or file names, masks, variants, bad input."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fixtures.mini_ddsm import CASES, make_mini_ddsm_fixture

from helpers.adapters import BadInputError
from helpers.adapters.mini_ddsm import EXTRA_COLUMNS, STATUS_TO_LABEL, load_mini_ddsm
from helpers.datasets import MANIFEST_COLUMNS, validate_manifest

N_IMAGES = sum(len(images) for *_, images, _ in CASES)
N_MASKS = sum(len(masked) for *_, masked in CASES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_mini_ddsm_fixture(tmp_path_factory.mktemp("mini"))


@pytest.fixture()
def fresh(tmp_path) -> Path:
    return make_mini_ddsm_fixture(tmp_path / "mini")


def _sheet_path(root: Path) -> Path:
    return root / "MINI-DDSM-Complete-PNG-16" / "DataWMask.csv"


def _edit_sheet(root: Path, row: int, column: str, value: str) -> None:
    sheet = pd.read_csv(_sheet_path(root), dtype=str, keep_default_na=False)
    sheet.loc[row, column] = value
    sheet.to_csv(_sheet_path(root), index=False)


def test_manifest_with_sheet(dataset):
    result = load_mini_ddsm(dataset)
    df = validate_manifest(result.manifest, str(dataset))
    assert list(df.columns) == list(MANIFEST_COLUMNS) + list(EXTRA_COLUMNS)
    assert len(df) == N_IMAGES and set(df["dataset"]) == {"mini-ddsm"}
    assert df["label"].value_counts().to_dict() == {"normal": 6, "malignant": 3, "benign": 2}
    assert set(df["patient_id"]) == {"A_0001", "A_0002", "B_3001", "C_0029", "D_4012"}
    row = df[df["image_path"].str.endswith("C_0029_1.RIGHT_MLO.png")].iloc[0]
    assert (row["label"], row["patient_id"], row["laterality"], row["view"]) == ("malignant", "C_0029", "R", "MLO")
    assert (row["age"], row["density"]) == ("66", "4")    # "66.0" in the sheet
    assert set(df["roi"]) == {""} and set(df["magnification"]) == {""}
    # masks are left out on purpose, each listed
    assert len(result.excluded) == N_MASKS
    assert all("Mask" in Path(item).name and "mask" in reason for item, reason in result.excluded)
    assert list(df["patient_id"]) == sorted(df["patient_id"])


def test_status_mapping():
    assert STATUS_TO_LABEL == {"Normal": "normal", "Benign": "benign", "Cancer": "malignant"}


def test_file_names_and_ics_without_sheet(tmp_path, dataset):
    root = make_mini_ddsm_fixture(tmp_path / "m", spreadsheet=None)
    df = validate_manifest(load_mini_ddsm(root).manifest, str(root))
    with_sheet = load_mini_ddsm(dataset).manifest
    keep = ["label", "patient_id", "view", "laterality", "age", "density"]
    pd.testing.assert_frame_equal(df[keep], with_sheet[keep])
    bare = make_mini_ddsm_fixture(tmp_path / "bare", spreadsheet=None, with_ics=False)
    df = load_mini_ddsm(bare).manifest
    assert set(df["age"]) == {""} and set(df["density"]) == {""}


def test_sheet_is_used_when_ics_files_are_absent(tmp_path):
    root = make_mini_ddsm_fixture(tmp_path / "m", with_ics=False)
    df = load_mini_ddsm(root).manifest
    assert df.loc[df["patient_id"] == "B_3001", "age"].tolist() == ["61", "61"]


@pytest.mark.skipif(importlib.util.find_spec("openpyxl") is not None, reason="openpyxl is installed")
def test_xlsx_without_openpyxl_warns_and_falls_back(tmp_path):
    root = make_mini_ddsm_fixture(tmp_path / "m", spreadsheet="xlsx")
    with pytest.warns(UserWarning, match="needs the package openpyxl"):
        df = load_mini_ddsm(root).manifest
    assert len(df) == N_IMAGES and df.loc[df["patient_id"] == "A_0002", "age"].tolist() == ["47", "47"]


def test_root_can_be_the_image_folder(dataset):
    a = load_mini_ddsm(dataset).manifest
    b = load_mini_ddsm(dataset / "MINI-DDSM-Complete-PNG-16").manifest
    pd.testing.assert_frame_equal(a, b)


def test_two_variants_prefer_png_and_list_the_other(tmp_path):
    root = make_mini_ddsm_fixture(tmp_path / "m", variants=("PNG-16", "JPEG-8"))
    result = load_mini_ddsm(root)
    assert all(p.endswith(".png") for p in result.manifest["image_path"])
    assert any(item.endswith("MINI-DDSM-Complete-JPEG-8") for item, _ in result.excluded)
    jpeg = load_mini_ddsm(root, variant="JPEG-8")
    assert all(p.endswith(".jpg") for p in jpeg.manifest["image_path"]) and len(jpeg.manifest) == N_IMAGES
    # the JPEG sheet names .jpg files; the PNG folder shares the stems
    assert set(jpeg.manifest["age"]) == set(result.manifest["age"])
    with pytest.raises(ValueError, match="variant"):
        load_mini_ddsm(root, variant="TIFF")


def test_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="MINI-DDSM-Complete"):
        load_mini_ddsm(tmp_path)
    root = make_mini_ddsm_fixture(tmp_path / "m", spreadsheet=None)
    shutil.rmtree(root / "MINI-DDSM-Complete-PNG-16" / "Normal")
    with pytest.raises(FileNotFoundError, match="Normal"):
        load_mini_ddsm(root)
    with pytest.raises(FileNotFoundError, match="mini-ddsm"):
        load_mini_ddsm(None)


def test_bad_file_name(fresh):
    bad = fresh / "MINI-DDSM-Complete-PNG-16" / "Normal" / "0001" / "scan 7.png"
    bad.write_bytes((fresh / "MINI-DDSM-Complete-PNG-16" / "Normal" / "0001" / "A_0001_1.LEFT_CC.png").read_bytes())
    with pytest.raises(BadInputError, match=r"scan 7.png: file name is not like"):
        load_mini_ddsm(fresh)
    result = load_mini_ddsm(fresh, skip_bad=True)
    assert len(result.manifest) == N_IMAGES
    assert (str(bad), "file name is not like C_0029_1.RIGHT_CC.png") in result.excluded


def test_image_without_sheet_row_and_row_without_image(fresh):
    sheet = pd.read_csv(_sheet_path(fresh), dtype=str, keep_default_na=False)
    sheet.iloc[1:].to_csv(_sheet_path(fresh), index=False)
    with pytest.raises(BadInputError, match=r"A_0001_1.LEFT_CC.png: has no row in .*DataWMask.csv"):
        load_mini_ddsm(fresh)
    assert len(load_mini_ddsm(fresh, skip_bad=True).manifest) == N_IMAGES - 1
    sheet.to_csv(_sheet_path(fresh), index=False)
    (fresh / "MINI-DDSM-Complete-PNG-16" / "Cancer" / "4012" / "D_4012_1.LEFT_MLO.png").unlink()
    expected = r"DataWMask.csv row \d+: lists Cancer\\4012\\D_4012_1.LEFT_MLO.png but there is no such image"
    with pytest.raises(BadInputError, match=expected):
        load_mini_ddsm(fresh)


def test_unknown_or_disagreeing_status(fresh):
    _edit_sheet(fresh, 0, "Status", "Suspicious")
    with pytest.raises(BadInputError, match=r"DataWMask.csv row 2: unknown Status 'Suspicious'"):
        load_mini_ddsm(fresh)
    _edit_sheet(fresh, 0, "Status", "Cancer")
    with pytest.raises(BadInputError, match=r"row 2: Status 'Cancer' disagrees with the image's folder 'Normal'"):
        load_mini_ddsm(fresh)
    result = load_mini_ddsm(fresh, skip_bad=True)
    assert len(result.manifest) == N_IMAGES - 1


def test_disagreeing_side(fresh):
    _edit_sheet(fresh, 0, "Side", "RIGHT")
    with pytest.raises(BadInputError, match="Side 'RIGHT' disagrees with the file name"):
        load_mini_ddsm(fresh)


def test_same_image_in_two_class_folders(fresh):
    images = fresh / "MINI-DDSM-Complete-PNG-16"
    copy = images / "Benign" / "0001" / "A_0001_1.LEFT_CC.png"
    copy.parent.mkdir()
    copy.write_bytes((images / "Normal" / "0001" / "A_0001_1.LEFT_CC.png").read_bytes())
    with pytest.raises(BadInputError, match="the same image as"):
        load_mini_ddsm(fresh)


def test_duplicated_sheet_row(fresh):
    sheet = pd.read_csv(_sheet_path(fresh), dtype=str, keep_default_na=False)
    pd.concat([sheet, sheet.iloc[[3]]]).to_csv(_sheet_path(fresh), index=False)
    with pytest.raises(BadInputError, match="listed more than once"):
        load_mini_ddsm(fresh)
