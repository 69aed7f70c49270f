"""The mini-MIAS adapter: table parsing, ROI origin, laterality, exclusions and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.mias import EXPECTED_LABELS, EXPECTED_ROIS, make_mias_fixture
from helpers.adapters import BadInputError
from helpers.adapters.mias import load_mias, read_pgm_size
from helpers.datasets import MANIFEST_COLUMNS, validate_manifest

REAL_MIAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mini-mias"


def line_of(table: Path, text: str) -> int:
    """1-based line number of the first table line that starts with ``text``."""
    for number, line in enumerate(table.read_text(encoding="latin-1").splitlines(), start=1):
        if line.startswith(text):
            return number
    raise AssertionError(f"{text!r} not in {table}")


@pytest.fixture(scope="module")
def mias_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mias_fixture(tmp_path_factory.mktemp("mias"))


def test_manifest_validates_with_columns_and_values(mias_root: Path):
    result = load_mias(mias_root)
    manifest = validate_manifest(result.manifest, "mias fixture")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS) + ["abnormality", "tissue", "refnum", "lesions"]
    assert manifest["refnum"].tolist() == sorted(EXPECTED_LABELS)
    assert dict(zip(manifest["refnum"], manifest["label"])) == EXPECTED_LABELS
    assert set(manifest["dataset"]) == {"mias"}
    assert set(manifest["view"]) == {"MLO"}
    assert set(manifest["magnification"]) == {""}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in manifest["image_path"])
    assert all(isinstance(v, str) for v in manifest.to_numpy().ravel())


def test_roi_converted_to_top_left_origin_with_the_pgm_height(mias_root: Path):
    manifest = load_mias(mias_root).manifest
    assert dict(zip(manifest["refnum"], manifest["roi"])) == EXPECTED_ROIS


def test_roi_uses_each_file_height_not_1024(tmp_path: Path):
    root = make_mias_fixture(tmp_path, width=20, height=40)
    roi = load_mias(root).manifest.set_index("refnum")["roi"]
    assert roi["mdb001"] == "10,32,4"  # table row "mdb001 G CIRC B 10 8 4": cy = 40 - 8


def test_patients_are_film_pairs_and_laterality_follows_note_1(mias_root: Path):
    manifest = load_mias(mias_root).manifest.set_index("refnum")
    assert manifest.loc["mdb001", "patient_id"] == manifest.loc["mdb002", "patient_id"] == "mias-P001"
    assert manifest.loc["mdb007", "patient_id"] == manifest.loc["mdb008", "patient_id"] == "mias-P004"
    assert manifest.loc["mdb001", "laterality"] == "R"  # odd: right
    assert manifest.loc["mdb002", "laterality"] == "L"  # even: left
    assert set(manifest["laterality"]) == {"L", "R"}


def test_extra_columns(mias_root: Path):
    manifest = load_mias(mias_root).manifest.set_index("refnum")
    assert manifest.loc["mdb002", ["abnormality", "tissue", "lesions"]].tolist() == ["NORM", "G", "0"]
    assert manifest.loc["mdb003", ["abnormality", "tissue", "lesions"]].tolist() == ["CIRC", "F", "2"]
    assert manifest.loc["mdb006", "abnormality"] == "CALC"
    assert manifest.loc["mdb008", ["abnormality", "lesions"]].tolist() == ["SPIC", "1"]


def test_everything_left_out_or_changed_is_listed(mias_root: Path):
    excluded = load_mias(mias_root).excluded
    table = mias_root / "Info.txt"
    reasons = dict(excluded)
    for refnum in ("mdb009", "mdb010"):  # label rows without an image: a partial download
        item = f"{table} line {line_of(table, refnum)} ({refnum})"
        assert "missing (partial download)" in reasons[item]
    second_lesion = f"{table} line {line_of(table, 'mdb003 F CIRC B 20')}"
    assert reasons[second_lesion].startswith("lesion 2 of 2 of mdb003")
    assert reasons[str(mias_root / "mdb005.pgm")].startswith("kept as malignant:")
    benign_row_of_mdb005 = f"{table} line {line_of(table, 'mdb005 F MISC B')}"
    assert "not used as its own ROI" in reasons[benign_row_of_mdb005]
    for refnum in ("mdb006", "mdb007"):
        item = f"{table} line {line_of(table, refnum)}"
        assert "no lesion coordinates; a ROI patch cannot be cut" in reasons[item]
    assert len(excluded) == 7


def test_mixed_image_roi_is_the_malignant_lesion(mias_root: Path):
    manifest = load_mias(mias_root).manifest.set_index("refnum")
    # mdb005 rows: B at (5, 30) first, M at (16, 16): the malignant image's roi is the M lesion
    assert manifest.loc["mdb005", "roi"] == "16,16,5"


def test_table_under_another_name(tmp_path: Path):
    root = make_mias_fixture(tmp_path, table_name="mias_info.txt")
    assert len(load_mias(root).manifest) == len(EXPECTED_LABELS)


def test_no_table_or_two_different_tables(tmp_path: Path):
    root = make_mias_fixture(tmp_path)
    text = (root / "Info.txt").read_text(encoding="latin-1")
    (root / "copy.txt").write_text(text, encoding="latin-1")  # an identical copy is fine
    assert len(load_mias(root).manifest) == len(EXPECTED_LABELS)
    (root / "other.txt").write_text(text.replace("mdb001 G CIRC B", "mdb001 G CIRC M"), encoding="latin-1")
    with pytest.raises(BadInputError, match="two different label tables"):
        load_mias(root)
    for name in ("Info.txt", "copy.txt", "other.txt"):
        (root / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"no label table in {root}"):
        load_mias(root)


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="mias"):
        load_mias(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mias("/nonexistent/mini-mias")


BAD_ROWS = [
    ("mdb011 X CIRC B 5 5 2", "unknown tissue code 'X'"),
    ("mdb011 G CIRX B 5 5 2", "unknown abnormality class 'CIRX'"),
    ("mdb011 G CIRC Q 5 5 2", "unknown severity 'Q'"),
    ("mdb011 G CIRC", "unknown severity 'nothing'"),
    ("mdb011 G CIRC B 5 5", "malformed coordinates '5 5'"),
    ("mdb011 G CIRC B 5 five 2", "malformed coordinates"),
    ("mdb011 G NORM B", "a NORM row has no severity"),
    ("mdb011 G", "malformed row"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS)
def test_bad_row_names_file_and_line_or_is_listed(tmp_path: Path, row: str, message: str):
    root = make_mias_fixture(tmp_path, extra_rows=(row,))
    table = root / "Info.txt"
    where = f"{table} line {line_of(table, row)}"
    with pytest.raises(BadInputError, match=message) as error:
        load_mias(root)
    assert where in str(error.value)
    result = load_mias(root, skip_bad=True)
    assert "mdb011" not in set(result.manifest["refnum"])
    reasons = dict(result.excluded)
    assert message.split("'")[0] in reasons[where]
    assert "label row is unusable" in reasons[str(root / "mdb011.pgm")]
    assert len(result.manifest) == len(EXPECTED_LABELS)


def test_malformed_reference_number(tmp_path: Path):
    root = make_mias_fixture(tmp_path, extra_rows=("mdb11 G NORM",))
    with pytest.raises(BadInputError, match="malformed reference number 'mdb11'"):
        load_mias(root)


@pytest.mark.parametrize("rows, message", [
    (("mdb011 G CIRC B 30 5 2",), r"lesion centre \(30, 5\) lies outside the 24x32 image"),
    (("mdb011 G CIRC B 5 5 2", "mdb011 D CIRC B 6 6 2"), "different tissue codes"),
    (("mdb011 G CIRC B 5 5 2", "mdb011 G NORM"), "says NORM but mdb011 has other label rows"),
])
def test_inconsistent_rows_of_one_image(tmp_path: Path, rows: tuple[str, ...], message: str):
    root = make_mias_fixture(tmp_path, extra_rows=rows)
    with pytest.raises(BadInputError, match=message) as error:
        load_mias(root)
    assert str(root / "mdb011.pgm") in str(error.value)
    result = load_mias(root, skip_bad=True)
    assert "mdb011" not in set(result.manifest["refnum"])
    assert message.split("\\")[0].split(" (")[0] in dict(result.excluded)[str(root / "mdb011.pgm")]


def test_image_without_label_row(tmp_path: Path):
    root = make_mias_fixture(tmp_path, extra_images=("mdb050",))
    with pytest.raises(BadInputError, match="no label row for mdb050") as error:
        load_mias(root)
    assert str(root / "mdb050.pgm") in str(error.value)
    result = load_mias(root, skip_bad=True)
    assert "no label row for mdb050" in dict(result.excluded)[str(root / "mdb050.pgm")]
    assert len(result.manifest) == len(EXPECTED_LABELS)


@pytest.mark.parametrize("content, message", [
    (b"P6\n24 32\n255\n" + bytes(24 * 32 * 3), "not a PGM file"),
    (b"P5\n24 x32\n255\n" + bytes(24 * 32), "broken PGM header"),
    (b"P5\n24 0\n255\n", "broken PGM header"),
    (b"P5\n24 32\n255\n" + bytes(100), "truncated PGM"),
    (b"", "not a PGM file"),
])
def test_broken_pgm_header(tmp_path: Path, content: bytes, message: str):
    root = make_mias_fixture(tmp_path)
    (root / "mdb001.pgm").write_bytes(content)
    with pytest.raises(BadInputError, match=message) as error:
        load_mias(root)
    assert str(root / "mdb001.pgm") in str(error.value)
    result = load_mias(root, skip_bad=True)
    assert "mdb001" not in set(result.manifest["refnum"])
    assert message in dict(result.excluded)[str(root / "mdb001.pgm")]


def test_pgm_header_with_comment(tmp_path: Path):
    path = tmp_path / "mdb001.pgm"
    path.write_bytes(b"P5\n# written by a scanner\n24 # width\n32\n255\n" + bytes(24 * 32))
    assert read_pgm_size(path) == (24, 32)


def test_split_ready_with_more_patients(tmp_path: Path):
    from helpers.splits import patient_split

    manifest = load_mias(make_mias_fixture(tmp_path, n_extra_pairs=9)).manifest
    split = patient_split(manifest, test_size=0.25, val_size=0.25, seed=0)
    assert set(split["split"]) == {"train", "val", "test"}


@pytest.mark.skipif(not (REAL_MIAS / "Info.txt").is_file(),
                    reason=f"real mini-MIAS partial download not present at {REAL_MIAS}")
def test_real_partial_download_counts():
    result = load_mias(REAL_MIAS)
    manifest = validate_manifest(result.manifest, str(REAL_MIAS))
    assert len(manifest) == 226
    assert manifest["label"].value_counts().to_dict() == {"normal": 136, "benign": 53, "malignant": 37}
    assert manifest["patient_id"].nunique() == 113
    reasons = [reason for _, reason in result.excluded]
    assert sum("missing (partial download)" in r for r in reasons) == 96  # mdb227..mdb322
    assert sum("not used as its own ROI" in r for r in reasons) == 6  # mdb005, 132, 144, 223, 226 x2
    assert sum("no lesion coordinates" in r for r in reasons) == 2  # mdb059, mdb216
    assert sum(r.startswith("kept as malignant:") for r in reasons) == 1  # mdb144
    rows = manifest.set_index("refnum")
    assert rows.loc["mdb001", "roi"] == "535,599,197"  # 1024 - 425
    assert rows.loc["mdb144", ["label", "roi"]].tolist() == ["malignant", "313,484,27"]
    assert rows.loc["mdb226", "lesions"] == "3"
