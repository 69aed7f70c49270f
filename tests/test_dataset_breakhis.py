"""The BreakHis adapter (file-name parsing, folder checks, clutter) and the by-magnification split."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fixtures.breakhis import SLIDES, breakhis_path, make_breakhis_fixture, write_png
from helpers import splits
from helpers.adapters import BadInputError
from helpers.adapters.breakhis import load_breakhis
from helpers.datasets import MANIFEST_COLUMNS, validate_manifest


@pytest.fixture(scope="module")
def breakhis_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_breakhis_fixture(tmp_path_factory.mktemp("breakhis"))


def breast_of(root: Path) -> Path:
    return root / "BreaKHis_v1" / "histology_slides" / "breast"


@pytest.fixture()
def fresh_root(tmp_path: Path) -> Path:
    """A small fixture to damage: two slides, one image per magnification."""
    return make_breakhis_fixture(tmp_path, images_per_magnification=1,
                                 slides=(("A", "14", "22549AB"), ("DC", "14", "2523")))


def test_manifest_validates_with_columns_and_values(breakhis_root: Path):
    result = load_breakhis(breakhis_root)
    manifest = validate_manifest(result.manifest, "breakhis fixture")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS) + ["subtype", "subtype_code", "slide"]
    assert len(manifest) == len(SLIDES) * 4 * 2
    assert manifest["image_path"].tolist() == sorted(manifest["image_path"])
    assert set(manifest["dataset"]) == {"breakhis"}
    assert set(manifest["view"]) == set(manifest["laterality"]) == set(manifest["roi"]) == {""}
    assert set(manifest["magnification"]) == {"40X", "100X", "200X", "400X"}
    assert result.excluded == []  # Thumbs.db and .DS_Store are clutter, ignored


def test_fields_from_the_file_name(breakhis_root: Path):
    manifest = load_breakhis(breakhis_root).manifest
    row = manifest[manifest["image_path"].str.endswith("SOB_B_A-14-22549AB-40-001.png")].iloc[0]
    assert row[["label", "patient_id", "magnification", "subtype", "subtype_code", "slide"]].tolist() == [
        "benign", "14-22549AB", "40X", "adenosis", "A", "SOB_B_A_14-22549AB"]
    by_code = manifest.groupby("subtype_code")[["label", "subtype"]].first()
    assert by_code.loc["PT"].tolist() == ["benign", "phyllodes_tumor"]
    assert by_code.loc["TA"].tolist() == ["benign", "tubular_adenoma"]
    assert by_code.loc["MC"].tolist() == ["malignant", "mucinous_carcinoma"]
    assert by_code.loc["PC"].tolist() == ["malignant", "papillary_carcinoma"]


def test_patient_under_two_subtypes_is_one_patient(breakhis_root: Path):
    manifest = load_breakhis(breakhis_root).manifest
    patient = manifest[manifest["patient_id"] == "14-13412"]
    assert set(patient["subtype_code"]) == {"DC", "LC"}
    assert manifest["patient_id"].nunique() == len({(year, slide) for _, year, slide in SLIDES})


@pytest.mark.parametrize("relative", ["", "BreaKHis_v1", "BreaKHis_v1/histology_slides",
                                      "BreaKHis_v1/histology_slides/breast"])
def test_any_of_the_accepted_roots(breakhis_root: Path, relative: str):
    manifest = load_breakhis(breakhis_root / relative).manifest
    assert manifest.equals(load_breakhis(breakhis_root).manifest)


def test_root_without_the_layout(tmp_path: Path):
    (tmp_path / "benign").mkdir()
    with pytest.raises(FileNotFoundError, match="no breast/benign and breast/malignant folders found"):
        load_breakhis(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_breakhis(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="breakhis"):
        load_breakhis(None)


def test_magnifications_keep_only_those_and_list_the_rest(breakhis_root: Path):
    result = load_breakhis(breakhis_root, magnifications=("40X",))
    assert set(result.manifest["magnification"]) == {"40X"}
    assert len(result.manifest) == len(SLIDES) * 2
    reasons = [reason for _, reason in result.excluded]
    assert reasons == [f"{len(SLIDES) * 2} image(s) at {mag} left out: magnifications=('40X',)"
                       for mag in ("100X", "200X", "400X")]
    assert load_breakhis(breakhis_root, magnifications="40X").manifest.equals(result.manifest)
    both = load_breakhis(breakhis_root, magnifications=["100X", "400X"]).manifest
    assert set(both["magnification"]) == {"100X", "400X"}


@pytest.mark.parametrize("magnifications", [("40x",), ("50X",), ()])
def test_unknown_magnification_option(breakhis_root: Path, magnifications):
    with pytest.raises(ValueError, match="magnifications must be a non-empty subset"):
        load_breakhis(breakhis_root, magnifications=magnifications)


def test_non_png_files_listed_clutter_ignored(fresh_root: Path):
    breast = breast_of(fresh_root)
    (breast / "benign" / "README.txt").write_text("notes")
    (breast / "malignant" / "._SOB_M_DC-14-2523-40-001.png").write_bytes(b"resource fork")
    (breast / "malignant" / "Thumbs.db").write_bytes(b"cache")
    result = load_breakhis(fresh_root)
    assert result.excluded == [(str(breast / "benign" / "README.txt"), "not a PNG image; left out")]
    assert len(result.manifest) == 8


def _bad_cases(breast: Path) -> dict[str, tuple[Path, str]]:
    benign_40 = breakhis_path(breast, "A", "14", "22549AB", "40X", 1).parent
    malignant_40 = breakhis_path(breast, "DC", "14", "2523", "40X", 1).parent
    return {
        "malignant name in benign folder": (benign_40 / "SOB_M_DC-14-22549AB-40-009.png",
                                            "file name says malignant but it is in the 'benign' folder"),
        "magnification folder disagrees": (benign_40 / "SOB_B_A-14-22549AB-100-009.png",
                                           "file name says 100X but it is in the folder '40X'"),
        "malformed name": (benign_40 / "image_009.png", "file name is not like"),
        "unknown subtype": (benign_40 / "SOB_B_XY-14-22549AB-40-009.png", "unknown subtype code 'XY'"),
        "unknown class": (benign_40 / "SOB_Q_A-14-22549AB-40-009.png", "unknown class code 'Q'"),
        "subtype of the other class": (benign_40 / "SOB_B_DC-14-22549AB-40-009.png",
                                       "subtype DC (ductal_carcinoma) is malignant"),
        "unknown magnification": (benign_40 / "SOB_B_A-14-22549AB-50-009.png", "unknown magnification 50X"),
        "duplicated file name": (malignant_40.parent.parent / "copy" / "40X" / "SOB_M_DC-14-2523-40-001.png",
                                 "duplicated image"),
    }


@pytest.mark.parametrize("case", list(_bad_cases(Path("."))))
def test_bad_file_names_error_or_listed(fresh_root: Path, case: str):
    bad_path, message = _bad_cases(breast_of(fresh_root))[case]
    write_png(bad_path, seed=99)
    with pytest.raises(BadInputError, match=re.escape(message)) as error:
        load_breakhis(fresh_root)
    assert bad_path.name in str(error.value)
    result = load_breakhis(fresh_root, skip_bad=True)
    assert len(result.manifest) == 8
    assert str(bad_path) not in set(result.manifest["image_path"])
    listed = dict(result.excluded)
    assert message in listed[str(bad_path)]


def test_no_images_is_an_error(tmp_path: Path):
    root = make_breakhis_fixture(tmp_path, images_per_magnification=1, magnifications=("40X",),
                                 slides=(("A", "14", "22549AB"), ("DC", "14", "2523")))
    with pytest.raises(FileNotFoundError, match="no usable images"):
        load_breakhis(root, magnifications=("400X",))
    for class_folder in ("benign", "malignant"):
        shutil.rmtree(breast_of(root) / class_folder / "SOB")
    with pytest.raises(FileNotFoundError, match="no usable images"):
        load_breakhis(root)


# ------------------------------------------------------------------------ magnification_split

def test_magnification_split_is_patient_level(breakhis_root: Path):
    manifest = load_breakhis(breakhis_root).manifest
    result = splits.magnification_split(manifest, test_size=0.25, val_size=0.25, seed=0)
    splits.check_no_leakage(result)
    assert set(result["split"]) == {"train", "val", "test"}
    assert set(result.loc[result["split"] == "test", "magnification"]) == {"40X"}
    assert "40X" not in set(result.loc[result["split"] != "test", "magnification"])
    assert not splits.leaked_patients(result)
    # the patients of each split are exactly those of the plain patient split
    plain = splits.patient_split(manifest, test_size=0.25, val_size=0.25, seed=0)
    assert (result.groupby("patient_id")["split"].first().to_dict()
            == plain.groupby("patient_id")["split"].first().to_dict())
    # test keeps all 40X images of its patients; train/val keep all their other images
    test_patients = set(plain.loc[plain["split"] == "test", "patient_id"])
    expected = plain[(plain["split"] == "test") == (plain["magnification"] == "40X")]
    assert len(result) == len(expected)
    assert test_patients == set(result.loc[result["split"] == "test", "patient_id"])
    assert list(result.columns) == list(manifest.columns) + ["split"]


def test_the_papers_split_would_leak(breakhis_root: Path):
    manifest = load_breakhis(breakhis_root).manifest
    paper = manifest.assign(split=manifest["magnification"].map(lambda m: "test" if m == "40X" else "train"))
    assert splits.leaked_patients(paper) == sorted(manifest["patient_id"].unique())


def test_magnification_split_seeded_and_other_magnification(breakhis_root: Path):
    manifest = load_breakhis(breakhis_root).manifest
    a = splits.magnification_split(manifest, test_size=0.25, val_size=0.25, seed=3)
    b = splits.magnification_split(manifest, test_size=0.25, val_size=0.25, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = splits.magnification_split(manifest, test_magnification="400X", test_size=0.25, val_size=0.0, seed=3)
    assert set(c["split"]) == {"train", "test"}
    assert set(c.loc[c["split"] == "test", "magnification"]) == {"400X"}


def test_magnification_split_bad_input(breakhis_root: Path):
    manifest = load_breakhis(breakhis_root).manifest
    with pytest.raises(ValueError, match="needs a 'magnification' column"):
        splits.magnification_split(manifest.drop(columns="magnification"),
                                   test_size=0.25, val_size=0.25, seed=0)
    with pytest.raises(ValueError, match="no image at test_magnification '50X'"):
        splits.magnification_split(manifest, test_magnification="50X", test_size=0.25, val_size=0.25, seed=0)
    only_40 = manifest[manifest["magnification"] == "40X"]
    with pytest.raises(ValueError, match="nothing is left to train on"):
        splits.magnification_split(only_40, test_size=0.25, val_size=0.25, seed=0)
