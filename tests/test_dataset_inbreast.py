"""INbreast adapter: BI-RADS mappings, patients from file names, table and DICOM checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from fixtures.inbreast import IMAGES, dicom_name, make_inbreast_fixture

from helpers.adapters import BadInputError
from helpers.adapters.inbreast import BIRADS_TO_LABEL, EXTRA_COLUMNS, load_inbreast
from helpers.datasets import MANIFEST_COLUMNS, validate_manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_inbreast_fixture(tmp_path_factory.mktemp("inbreast") / "INbreast Release 1.0")


@pytest.fixture()
def fresh(tmp_path) -> Path:
    return make_inbreast_fixture(tmp_path / "inbreast")


def _edit_csv(root: Path, line: int, field: int, value: str) -> None:
    path = root / "INbreast.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    fields = lines[line].split(";")
    fields[field] = value
    lines[line] = ";".join(fields)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_literature_mapping_manifest(dataset):
    result = load_inbreast(dataset)
    df = validate_manifest(result.manifest, str(dataset))
    assert result.excluded == []
    assert list(df.columns) == list(MANIFEST_COLUMNS) + list(EXTRA_COLUMNS)
    assert len(df) == len(IMAGES) and set(df["dataset"]) == {"inbreast"}
    by_id = df.set_index("file_id")
    assert by_id["label"].to_dict() == {
        "20586908": "normal", "20586934": "normal", "20586960": "benign", "20586986": "benign",
        "22580192": "malignant", "22580218": "malignant", "24055274": "malignant", "24055355": "malignant"}
    row = by_id.loc["22580192"]
    assert (row["patient_id"], row["laterality"], row["view"], row["birads"], row["acr"]) == \
        ("5530d5782fc89dd7", "R", "CC", "4a", "3")
    assert Path(row["image_path"]).name == dicom_name("22580192", "5530d5782fc89dd7", "R", "CC")
    assert df["patient_id"].nunique() == 3
    assert list(df["patient_id"]) == sorted(df["patient_id"])


def test_strict_mapping_leaves_birads_3_out_and_lists_it(dataset):
    result = load_inbreast(dataset, birads_mapping="strict")
    df = result.manifest
    assert "20586986" not in set(df["file_id"]) and len(df) == len(IMAGES) - 1
    assert len(result.excluded) == 1 and "BI-RADS 3" in result.excluded[0][1]
    assert result.excluded[0][0].endswith(dicom_name("20586986", "6c613a14b80a8591", "L", "MLO"))
    assert df.set_index("file_id").loc["20586960", "label"] == "benign"


def test_mappings_are_the_documented_ones():
    literature, strict = BIRADS_TO_LABEL["literature"], BIRADS_TO_LABEL["strict"]
    assert set(BIRADS_TO_LABEL) == {"literature", "strict"}
    assert literature["1"] == strict["1"] == "normal" and literature["2"] == strict["2"] == "benign"
    assert literature["3"] == "benign" and strict["3"] is None
    for category in ("4a", "4b", "4c", "5", "6"):
        assert literature[category] == strict[category] == "malignant"
    with pytest.raises(ValueError, match="birads_mapping"):
        load_inbreast(".", birads_mapping="pathology")


def test_root_may_be_the_parent_folder(dataset):
    pd.testing.assert_frame_equal(load_inbreast(dataset.parent).manifest, load_inbreast(dataset).manifest)


def test_missing_folder_or_table(tmp_path, fresh):
    with pytest.raises(FileNotFoundError, match="AllDICOMs"):
        load_inbreast(tmp_path / "inbreast" / "AllDICOMs")
    (fresh / "INbreast.csv").unlink()
    with pytest.raises(FileNotFoundError, match="INbreast.csv"):
        load_inbreast(fresh)
    with pytest.raises(FileNotFoundError, match="inbreast"):
        load_inbreast(None)


@pytest.mark.skipif(importlib.util.find_spec("xlrd") is not None, reason="xlrd is installed")
def test_xls_only_asks_for_xlrd_or_csv(tmp_path):
    root = make_inbreast_fixture(tmp_path / "x", table="xls")
    with pytest.raises(ImportError, match=r"needs the package xlrd.*INbreast.csv"):
        load_inbreast(root)


def test_unknown_birads(fresh):
    _edit_csv(fresh, 3, 7, "7")
    with pytest.raises(BadInputError, match=r"INbreast.csv row 4: unknown Bi-Rads '7'"):
        load_inbreast(fresh)
    result = load_inbreast(fresh, skip_bad=True)
    assert len(result.manifest) == len(IMAGES) - 1 and "unknown Bi-Rads" in result.excluded[0][1]


def test_dicom_without_row_and_row_without_dicom(fresh):
    lines = (fresh / "INbreast.csv").read_text(encoding="utf-8").splitlines()
    (fresh / "INbreast.csv").write_text("\n".join(lines[:1] + lines[2:]) + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"20586908_.*_ANON.dcm: file id 20586908 has no row"):
        load_inbreast(fresh)
    assert len(load_inbreast(fresh, skip_bad=True).manifest) == len(IMAGES) - 1
    (fresh / "INbreast.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (fresh / "AllDICOMs" / dicom_name(*IMAGES[-1][:4])).unlink()
    with pytest.raises(BadInputError, match=r"row 9: File Name 24055355 has no DICOM"):
        load_inbreast(fresh)


def test_unreadable_dicom_names_the_file(fresh):
    target = fresh / "AllDICOMs" / dicom_name(*IMAGES[2][:4])
    target.write_bytes(b"garbage")
    with pytest.raises(BadInputError, match=rf"{target.name}: not a readable DICOM header"):
        load_inbreast(fresh)
    assert len(load_inbreast(fresh, skip_bad=True).manifest) == len(IMAGES) - 1


def test_laterality_or_view_disagreeing_with_file_name(fresh):
    _edit_csv(fresh, 1, 2, "L")
    with pytest.raises(BadInputError, match=r"row 2: Laterality 'L' disagrees with the file name \(R\)"):
        load_inbreast(fresh)
    _edit_csv(fresh, 1, 2, "R")
    _edit_csv(fresh, 1, 3, "MLO")
    with pytest.raises(BadInputError, match="View 'MLO' disagrees"):
        load_inbreast(fresh)


def test_bad_file_name_and_duplicated_row(fresh):
    stray = fresh / "AllDICOMs" / "scan_0001.dcm"
    stray.write_bytes((fresh / "AllDICOMs" / dicom_name(*IMAGES[0][:4])).read_bytes())
    with pytest.raises(BadInputError, match="scan_0001.dcm: file name is not like"):
        load_inbreast(fresh)
    stray.unlink()
    _edit_csv(fresh, 2, 5, "20586908")
    with pytest.raises(BadInputError, match="row 3: file id 20586908 is listed more than once"):
        load_inbreast(fresh)


def test_comma_separated_table_and_spreadsheet_ids(fresh):
    path = fresh / "INbreast.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    converted = [lines[0].replace(";", ",")] + [
        line.replace(";", ",").replace(f",{i[0]},", f",{i[0]}.0,") for line, i in zip(lines[1:], IMAGES)]
    path.write_text("\n".join(converted) + "\n", encoding="utf-8")
    df = load_inbreast(fresh).manifest
    assert len(df) == len(IMAGES) and set(df["file_id"]) == {i[0] for i in IMAGES}
