"""Bad input never gives a silent wrong result (issue 14): each hostile file or folder ends as a
clear error naming the file, or, with ``skip_bad``, as a listed exclusion.

Everything here is tiny (images of a few dozen pixels, the adapters' small fixtures) and needs no
Keras. Sections: bit depth, truncated JPEG, file signatures, identical files, label-table
encodings, folder checks, split files, and what download tools, spreadsheets and other
operating systems do to files.
"""

from __future__ import annotations

import csv
import io
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from fixtures.breakhis import breakhis_path, make_breakhis_fixture, write_png
from fixtures.cbis_ddsm import make_cbis_ddsm_fixture
from fixtures.inbreast import make_inbreast_fixture
from fixtures.mias import EXPECTED_LABELS, make_mias_fixture
from fixtures.mini_ddsm import make_mini_ddsm_fixture
from test_preprocessing import write_dicom

from helpers import datasets, phantoms, splits
from helpers import preprocessing as pp
from helpers.adapters import BadInputError
from helpers.adapters.breakhis import load_breakhis
from helpers.adapters.cbis_ddsm import load_cbis_ddsm
from helpers.adapters.inbreast import load_inbreast
from helpers.adapters.mias import load_mias
from helpers.adapters.mini_ddsm import load_mini_ddsm
from helpers.preprocessing import ImageReadError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_CACHE_DIR", str(tmp_path / "cache"))


def _png_bytes(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _with_sbit(png: bytes, bits: int) -> bytes:
    """``png`` with an sBIT chunk (grey, ``bits`` significant bits) right after IHDR."""
    chunk = b"sBIT" + bytes([bits])
    sbit = struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk))
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + sbit + png[end_of_ihdr:]


def _jpeg_bytes(seed: int = 0, size: int = 64, flags: tuple[int, ...] = ()) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), (0, 0), 1.5)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90, *flags])[1].tobytes()


# ----------------------------------------------------------------------------- 1. bit depth

@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_dicom_bits_stored_decides_the_scale(tmp_path: Path, bits: int):
    top = 2**bits - 1
    pixels = np.array([[0, top // 4, top // 2, top]], np.uint16)
    path = write_dicom(tmp_path / f"b{bits}.dcm", pixels, bits_stored=bits)
    unit = pp.to_float(pp.read_image(path))
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit[0], pixels[0] / top, rtol=0, atol=1e-6)
    prepared = pp.apply_preset(pp.read_image(path), "paper003", image_size=4)
    assert prepared.max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sign_extended", [True, False])
def test_signed_dicom_with_unused_high_bits(tmp_path: Path, sign_extended: bool):
    values = np.array([[-2048, 0, 2047]], np.int16)
    stored = values if sign_extended else (values.view(np.uint16) & 0x0FFF)  # high bits left 0
    path = write_dicom(tmp_path / "signed.dcm", stored.view(np.uint16), bits_stored=12, PixelRepresentation=1)
    np.testing.assert_allclose(pp.read_image(path)[0], [0, 2048 / 4095, 1], atol=1e-6)


def test_dicom_value_above_bits_stored_is_an_error(tmp_path: Path):
    path = write_dicom(tmp_path / "over.dcm", np.array([[0, 5000]], np.uint16), bits_stored=12)
    with pytest.raises(ImageReadError, match=r"over\.dcm.*5000.*BitsStored 12"):
        pp.read_image(path)


@pytest.mark.parametrize("elements, message", [
    ({"BitsStored": 17}, "BitsStored 17"),
    ({"BitsStored": 0}, "BitsStored 0"),
])
def test_dicom_impossible_bit_depth_is_an_error(tmp_path: Path, elements: dict, message: str):
    pixels = np.array([[0, 100]], np.uint16)
    path = write_dicom(tmp_path / "odd.dcm", pixels)
    import pydicom

    ds = pydicom.dcmread(path)
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=message) as info:
        pp.read_image(path)
    assert "odd.dcm" in str(info.value)


def test_16bit_png_without_metadata_is_taken_at_full_range(tmp_path: Path):
    path = tmp_path / "dim.png"
    path.write_bytes(_png_bytes(np.array([[0, 1000, 4000]], np.uint16)))
    unit = pp.to_float(pp.read_image(path))
    np.testing.assert_allclose(unit[0], np.array([0, 1000, 4000]) / 65535, atol=1e-7)


def test_png_sbit_chunk_gives_the_stored_bit_depth(tmp_path: Path):
    values = np.array([[0, 1, 2048, 4095]], np.uint16)
    path = tmp_path / "sbit.png"
    path.write_bytes(_with_sbit(_png_bytes(values << 4), 12))  # PNG keeps samples scaled to 16 bits
    image = pp.read_image(path)
    assert image.dtype == np.float32
    assert np.array_equal(image, values.astype(np.float32) / 4095.0)
    unscaled = tmp_path / "unscaled.png"   # a writer that ignored the PNG rule: values 0..4095 as they are
    unscaled.write_bytes(_with_sbit(_png_bytes(values), 12))
    with pytest.raises(ImageReadError, match=r"unscaled\.png.*sBIT"):
        pp.read_image(unscaled)


@pytest.mark.parametrize("maxval", [255, 1023, 4095, 65535])
def test_pgm_maxval_decides_the_scale(tmp_path: Path, maxval: int):
    values = np.array([[0, maxval // 2, maxval]], np.uint16 if maxval > 255 else np.uint8)
    path = tmp_path / f"m{maxval}.pgm"
    path.write_bytes(f"P5\n3 1\n{maxval}\n".encode() + values.astype(">u2" if maxval > 255 else "u1").tobytes())
    unit = pp.to_float(pp.read_image(path))
    np.testing.assert_allclose(unit[0], values[0] / maxval, atol=1e-6)


def test_pgm_value_above_maxval_is_an_error(tmp_path: Path):
    path = tmp_path / "over.pgm"
    path.write_bytes(b"P5\n2 1\n1023\n" + np.array([5, 2000], ">u2").tobytes())
    with pytest.raises(ImageReadError, match=r"over\.pgm.*2000.*1023"):
        pp.read_image(path)


def test_synthetic_pngs_read_exactly_as_their_12_bit_phantoms(tmp_path: Path):
    manifest = datasets.synthetic(tmp_path / "syn", n_patients=3, image_size=32, seed=3)
    phantom_images = [p.image for _, p in phantoms.generate(3, seed=3, image_size=32)]
    for path, phantom in zip(manifest["image_path"], phantom_images):
        image = pp.read_image(path)
        assert np.array_equal(image, phantom.astype(np.float32) / 4095.0), path


def test_to_float_takes_uint16_at_full_range_or_at_the_bits_given():
    assert pp.to_float(np.array([0, 4095], np.uint16)).tolist() == pytest.approx([0.0, 4095 / 65535])
    assert pp.to_float(np.array([0, 1023], np.uint16), bits=10).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="above"):
        pp.to_float(np.array([0, 5000], np.uint16), bits=12)


# ----------------------------------------------------------------------------- 2. truncated JPEG

def test_jpeg_cut_in_the_middle_with_its_end_marker_is_unreadable(tmp_path: Path):
    data = _jpeg_bytes()
    good, cut = tmp_path / "good.jpg", tmp_path / "cut.jpg"
    good.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2] + data[-(len(data) // 5):])   # ends in FFD9
    assert cut.read_bytes()[-2:] == b"\xff\xd9"
    assert pp.read_image(good).shape == (64, 64)
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*premature end") as info:
        pp.read_image(cut)
    assert "truncated" in str(info.value) or "incomplete" in str(info.value)


@pytest.mark.parametrize("flags", [(cv2.IMWRITE_JPEG_PROGRESSIVE, 1), (cv2.IMWRITE_JPEG_RST_INTERVAL, 4)],
                         ids=["progressive", "restart-markers"])
def test_other_jpegs_cut_in_the_middle_are_unreadable(tmp_path: Path, flags: tuple[int, ...]):
    data = _jpeg_bytes(3, 96, flags)
    good, cut = tmp_path / "good.jpg", tmp_path / "cut.jpg"
    good.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2] + data[-(len(data) // 5):])
    assert pp.read_image(good, color=True).shape == (96, 96, 3)   # no false alarm on a whole file
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*(truncated|corrupt) JPEG"):
        pp.read_image(cut)


def test_jpeg_cut_at_the_end_is_unreadable(tmp_path: Path):
    data = _jpeg_bytes(1)
    path = tmp_path / "short.jpeg"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match=r"short\.jpeg"):
        pp.read_image(path)


# ----------------------------------------------------------------------------- 3. signatures

def _signature_files() -> dict[str, bytes]:
    grey = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    return {"PNG": _png_bytes(grey), "JPEG": _jpeg_bytes(2, 16),
            "TIFF": cv2.imencode(".tif", grey)[1].tobytes(), "BMP": cv2.imencode(".bmp", grey)[1].tobytes()}


@pytest.mark.parametrize("kind, name", [("JPEG", "x.png"), ("PNG", "x.jpg"), ("TIFF", "x.png"),
                                        ("BMP", "x.tif"), ("PNG", "x.dcm"), ("JPEG", "x.pgm"),
                                        ("DICOM", "x.png"), ("DICOM", "x.jpg")])
def test_the_content_not_the_name_says_what_a_file_is(tmp_path: Path, kind: str, name: str):
    if kind == "DICOM":
        write_dicom(tmp_path / "source.dcm", np.zeros((4, 4), np.uint16))
        data = (tmp_path / "source.dcm").read_bytes()
    else:
        data = _signature_files()[kind]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match=rf"{name}: .*is a {kind} file \(by its content\)") as info:
        pp.read_image(path)
    assert "rename" in str(info.value)


def test_an_html_page_saved_as_an_image_is_named_as_such(tmp_path: Path):
    path = tmp_path / "mdb001.png"
    path.write_bytes(b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    with pytest.raises(ImageReadError, match=r"mdb001\.png.*HTML"):
        pp.read_image(path)


# ----------------------------------------------------------------------------- 4. identical files

def _copy_over(root: Path, source: str, target: str) -> None:
    shutil.copyfile(root / source, root / target)


def test_identical_files_of_two_patients_are_an_error_or_all_left_out(tmp_path: Path):
    root = make_mias_fixture(tmp_path / "mias", n_extra_pairs=3)
    _copy_over(root, "mdb001.pgm", "mdb003.pgm")       # patients mias-P001 and mias-P002
    with pytest.raises(BadInputError, match="identical") as info:
        datasets.load_with_exclusions("mias", root)
    assert "mdb001.pgm" in str(info.value) and "mdb003.pgm" in str(info.value)
    assert "mias-P001" in str(info.value) and "mias-P002" in str(info.value)
    result = datasets.load_with_exclusions("mias", root, skip_bad=True)
    kept = {Path(p).name for p in result.manifest["image_path"]}
    assert not {"mdb001.pgm", "mdb003.pgm"} & kept
    reasons = dict(result.excluded)
    assert "identical" in reasons[str(root / "mdb001.pgm")] and "identical" in reasons[str(root / "mdb003.pgm")]


def test_identical_files_of_one_patient_keep_one_copy_and_list_the_other(tmp_path: Path):
    root = make_mias_fixture(tmp_path / "mias", n_extra_pairs=1)  # mdb011, mdb012: one woman, both normal
    _copy_over(root, "mdb011.pgm", "mdb012.pgm")
    result = datasets.load_with_exclusions("mias", root)
    kept = {Path(p).name for p in result.manifest["image_path"]}
    assert "mdb011.pgm" in kept and "mdb012.pgm" not in kept
    reason = dict(result.excluded)[str(root / "mdb012.pgm")]
    assert "identical to" in reason and "mdb011.pgm" in reason


def test_identical_files_with_different_labels_are_an_error(tmp_path: Path):
    root = make_mias_fixture(tmp_path / "mias")
    _copy_over(root, "mdb001.pgm", "mdb002.pgm")  # one woman, benign and normal
    with pytest.raises(BadInputError, match="identical"):
        datasets.load_with_exclusions("mias", root)


def test_identical_files_across_breakhis_patients(tmp_path: Path):
    root = make_breakhis_fixture(tmp_path, images_per_magnification=1,
                                 slides=(("A", "14", "22549AB"), ("F", "14", "14134"), ("DC", "14", "2523")))
    breast = root / "BreaKHis_v1" / "histology_slides" / "breast"
    first = breakhis_path(breast, "A", "14", "22549AB", "40X", 1)
    other = breakhis_path(breast, "F", "14", "14134", "40X", 1)
    shutil.copyfile(first, other)
    with pytest.raises(BadInputError, match="identical"):
        datasets.load_with_exclusions("breakhis", root)


def test_embedded_datasets_have_no_identical_files():
    for name in datasets.EMBEDDED_DATASETS:
        options = {"n_patients": 6, "image_size": 32} if name == "synthetic" else {}
        result = datasets.load_with_exclusions(name, **options)
        assert not [item for item, reason in result.excluded if "identical" in reason], name


def test_identical_file_groups_by_content(tmp_path: Path):
    files = {"a": b"same bytes", "b": b"same bytes", "c": b"other byte", "d": b"short", "e": b"same bytes"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    groups = datasets.identical_files([tmp_path / name for name in files])
    assert groups == [[str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "e")]]
    assert datasets.identical_files([]) == []


# ----------------------------------------------------------------------------- 5. label tables

def _mias_rows_only(root: Path) -> str:
    text = (root / "Info.txt").read_text(encoding="latin-1")
    return "\n".join(line for line in text.splitlines() if line.startswith("mdb"))


@pytest.mark.parametrize("encoding, newline", [("utf-8-sig", "\r\n"), ("utf-16", "\r\n"),
                                               ("utf-8", "\r"), ("utf-16-be-bom", "\n")])
def test_mias_table_with_a_bom_and_other_line_ends(tmp_path: Path, encoding: str, newline: str):
    root = make_mias_fixture(tmp_path / "mias")
    text = newline.join(_mias_rows_only(root).splitlines()) + newline   # the first line is a row
    data = (b"\xfe\xff" + text.encode("utf-16-be")) if encoding == "utf-16-be-bom" else text.encode(encoding)
    (root / "Info.txt").write_bytes(data)
    manifest = load_mias(root).manifest
    assert dict(zip(manifest["refnum"], manifest["label"])) == EXPECTED_LABELS


@pytest.mark.parametrize("line", ['"mdb011 G NORM"', "12) mdb011 G NORM", "MDB011\tG\tNORM", "mdb011,G,NORM"])
def test_mias_line_naming_an_image_that_does_not_parse_is_reported(tmp_path: Path, line: str):
    root = make_mias_fixture(tmp_path / "mias", extra_rows=(line,))
    with pytest.raises(BadInputError, match=r"Info\.txt line \d+") as info:
        load_mias(root)
    assert "mdb011" in str(info.value).lower()
    result = load_mias(root, skip_bad=True)
    assert any("Info.txt line" in item for item, _ in result.excluded)
    assert len(result.manifest) == len(EXPECTED_LABELS)


def _rewrite_csv(path: Path, *, encoding: str = "utf-8", sep: str = ",", trailing: int = 0) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for index in range(trailing):
        table[f"Unnamed: {index}"] = ""
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, sep=sep, lineterminator="\r\n")
    text = buffer.getvalue()
    if trailing:  # Excel writes empty trailing columns with empty names
        text = text.replace(sep.join(f"Unnamed: {i}" for i in range(trailing)), sep * (trailing - 1))
    path.write_bytes(text.encode(encoding))


@pytest.mark.parametrize("variant", [dict(encoding="utf-16"), dict(encoding="utf-16", sep="\t"),
                                     dict(encoding="utf-8-sig", sep=";"), dict(encoding="cp1252", sep=";", trailing=3)])
def test_cbis_ddsm_csvs_as_spreadsheets_save_them(tmp_path: Path, variant: dict):
    root = make_cbis_ddsm_fixture(tmp_path / "cbis")
    expected = load_cbis_ddsm(root).manifest
    for path in root.glob("*_case_description_*.csv"):
        _rewrite_csv(path, **variant)
    pd.testing.assert_frame_equal(load_cbis_ddsm(root).manifest, expected)


@pytest.mark.parametrize("variant", [dict(encoding="utf-16"), dict(encoding="utf-8-sig", sep=";", trailing=2)])
def test_mini_ddsm_sheet_as_spreadsheets_save_it(tmp_path: Path, variant: dict):
    root = make_mini_ddsm_fixture(tmp_path / "mini")
    expected = load_mini_ddsm(root).manifest
    _rewrite_csv(root / "MINI-DDSM-Complete-PNG-16" / "DataWMask.csv", **variant)
    pd.testing.assert_frame_equal(load_mini_ddsm(root).manifest, expected)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "cp1252"])
def test_inbreast_table_in_other_encodings(tmp_path: Path, encoding: str):
    root = make_inbreast_fixture(tmp_path / "inbreast")
    expected = load_inbreast(root).manifest
    text = (root / "INbreast.csv").read_text(encoding="utf-8")
    (root / "INbreast.csv").write_bytes(text.replace("\n", "\r\n").encode(encoding))
    pd.testing.assert_frame_equal(load_inbreast(root).manifest, expected)


# ----------------------------------------------------------------------------- 6. folder checks

def test_breakhis_name_disagreeing_with_its_subtype_folder(tmp_path: Path):
    root = make_breakhis_fixture(tmp_path, images_per_magnification=1,
                                 slides=(("A", "14", "22549AB"), ("F", "14", "14134"), ("DC", "14", "2523")))
    breast = root / "BreaKHis_v1" / "histology_slides" / "breast"
    wrong = breakhis_path(breast, "F", "14", "14134", "40X", 1).parent / "SOB_B_A-14-22549AB-40-002.png"
    write_png(wrong, seed=77)
    with pytest.raises(BadInputError, match="adenosis.*fibroadenoma") as info:
        load_breakhis(root)
    assert wrong.name in str(info.value)
    result = load_breakhis(root, skip_bad=True)
    assert str(wrong) in dict(result.excluded) and str(wrong) not in set(result.manifest["image_path"])


def test_breakhis_name_disagreeing_with_its_slide_folder(tmp_path: Path):
    root = make_breakhis_fixture(tmp_path, images_per_magnification=1,
                                 slides=(("A", "14", "22549AB"), ("DC", "14", "2523")))
    breast = root / "BreaKHis_v1" / "histology_slides" / "breast"
    wrong = breast / "benign" / "SOB" / "adenosis" / "SOB_B_A_14-99999" / "40X" / "SOB_B_A-14-22549AB-40-002.png"
    write_png(wrong, seed=78)
    with pytest.raises(BadInputError, match="SOB_B_A_14-99999") as info:
        load_breakhis(root)
    assert "slide" in str(info.value)
    result = load_breakhis(root, skip_bad=True)
    assert str(wrong) in dict(result.excluded)


def _tar_gz(path: Path, member: str) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(member)
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    return path


@pytest.mark.parametrize("name, dataset", [("all-mias.tar.gz", "mias"), ("BreaKHis_v1.tar.gz", "breakhis"),
                                           ("CBIS-DDSM.zip", "cbis-ddsm"), ("mini.zip", "mini-ddsm"),
                                           ("sample.zip", "cbis-sample")])
def test_an_archive_given_as_the_data_folder(tmp_path: Path, name: str, dataset: str):
    path = tmp_path / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.txt", "abc")
    else:
        _tar_gz(path, "a.txt")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder") as info:
        datasets.load_with_exclusions(dataset, path)
    message = str(info.value)
    assert str(path) in message and "archive" in message and "does not exist" not in message
    assert ("tar -xzf" in message) if name.endswith(".tar.gz") else ("unzip" in message)
    if dataset in ("mias", "breakhis"):
        assert f"python -m helpers data download {dataset} --to" in message


# ----------------------------------------------------------------------------- 7. split files

@pytest.fixture()
def manifest() -> pd.DataFrame:
    rows = [{"image_path": f"/img/p{p}_{v}.png", "patient_id": f"P{p:03d}",
             "label": ["normal", "benign", "malignant"][p % 3]} for p in range(9) for v in range(2)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("text, message", [
    ('{"patients": {"train": ["P000"],\n "test": ["P001"] "val": []}}', r"line 2 column \d+"),
    ('', r"empty|line 1 column 1"),
    ('["P000"]', "a JSON object"),
    ('{"version": 1}', "'patients'"),
    ('{"patients": ["P000", "P001"]}', "'patients' must be an object"),
    ('{"patients": {"train": "P000", "val": [], "test": []}}', "'patients.train' must be a list"),
    ('{"patients": {"train": [1, 2], "val": [], "test": []}}', "'patients.train' must be a list of strings"),
    ('{"patients": {"training": [], "val": [], "test": []}}', "unknown split 'training'"),
])
def test_malformed_split_file_is_a_value_error_naming_it(tmp_path: Path, manifest, text: str, message: str):
    path = tmp_path / "hand-edited.json"
    path.write_text(text, encoding="utf-8")
    for call in (lambda: splits.load_split(path, manifest),
                 lambda: splits.make_or_load_split(manifest, path, test_size=0.3, val_size=0.2, seed=0)):
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert str(path) in str(info.value)


def test_split_file_saved_with_a_bom_still_loads(tmp_path: Path, manifest):
    made = splits.patient_split(manifest, test_size=0.3, val_size=0.2, seed=0)
    path = splits.save_split(made, tmp_path / "s.json", seed=0, test_size=0.3, val_size=0.2)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    again = splits.make_or_load_split(manifest, path, test_size=0.3, val_size=0.2, seed=0)
    assert again["split"].tolist() == made["split"].tolist()


# ----------------------------------------------------------------------------- 8. more hostile input

@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.tif", "a.bmp", "a.pgm", "a.dcm"])
def test_zero_byte_image_of_every_format(tmp_path: Path, name: str):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ImageReadError, match=rf"{name}: file is empty"):
        pp.read_image(tmp_path / name)


def test_zero_byte_image_in_a_dataset_is_caught_at_manifest_time(tmp_path: Path):
    root = make_breakhis_fixture(tmp_path, images_per_magnification=1,
                                 slides=(("A", "14", "22549AB"), ("DC", "14", "2523")))
    breast = root / "BreaKHis_v1" / "histology_slides" / "breast"
    empty = breakhis_path(breast, "A", "14", "22549AB", "100X", 1)
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty") as info:
        datasets.load_with_exclusions("breakhis", root)
    assert empty.name in str(info.value)
    result = datasets.load_with_exclusions("breakhis", root, skip_bad=True)
    assert "empty" in dict(result.excluded)[str(empty)]
    assert len(result.manifest) == 7


def test_dicom_without_pixel_data_in_a_dataset_stops_or_is_skipped(tmp_path: Path):
    import pydicom

    root = make_inbreast_fixture(tmp_path / "inbreast")
    manifest = datasets.load("inbreast", root)        # the adapter reads headers only
    first = manifest["image_path"][0]
    ds = pydicom.dcmread(first)
    del ds.PixelData
    ds.save_as(first, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data") as info:
        pp.prepare_arrays(manifest, "paper003", image_size=8, cache_dir=tmp_path / "arrays")
    assert Path(first).name in str(info.value)
    prepared = pp.prepare_arrays(manifest, "paper003", image_size=8, cache_dir=tmp_path / "arrays", on_error="skip")
    assert [item for item, _ in prepared.skipped] == [first] and len(prepared.manifest) == len(manifest) - 1


def test_truncated_dicom_pixel_data(tmp_path: Path):
    path = write_dicom(tmp_path / "cut.dcm", np.zeros((16, 16), np.uint16), bits_stored=12)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ImageReadError, match=r"cut\.dcm"):
        pp.read_image(path)


def test_mias_upper_case_file_names(tmp_path: Path):
    root = make_mias_fixture(tmp_path / "mias")
    (root / "mdb001.pgm").rename(root / "MDB001.PGM")
    manifest = load_mias(root).manifest
    assert dict(zip(manifest["refnum"], manifest["label"])) == EXPECTED_LABELS
    (root / "mdb001.pgm").write_bytes((root / "MDB001.PGM").read_bytes())  # both spellings: one image twice
    with pytest.raises(BadInputError, match="duplicated image"):
        load_mias(root)


def test_mias_os_clutter_is_ignored(tmp_path: Path):
    root = make_mias_fixture(tmp_path / "mias")
    (root / "._mdb001.pgm").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "._Info.txt").write_bytes(b"\x00\x05\x16\x07AppleDouble mdb001 G CIRC")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "Thumbs.db").write_bytes(b"thumbnail cache")
    result = load_mias(root)
    assert len(result.manifest) == len(EXPECTED_LABELS)
    assert not [item for item, _ in result.excluded if "._" in item or "DS_Store" in item]


@pytest.mark.parametrize("suffix", [".part", ".crdownload"])
def test_mias_unfinished_download_is_reported(tmp_path: Path, suffix: str):
    root = make_mias_fixture(tmp_path / "mias")
    (root / "mdb001.pgm").rename(root / f"mdb001.pgm{suffix}")
    with pytest.raises(BadInputError, match="unfinished download") as info:
        load_mias(root)
    assert f"mdb001.pgm{suffix}" in str(info.value)
    result = load_mias(root, skip_bad=True)
    assert "unfinished download" in dict(result.excluded)[str(root / f"mdb001.pgm{suffix}")]


def test_breakhis_unfinished_download_and_upper_case_suffix(tmp_path: Path):
    root = make_breakhis_fixture(tmp_path, images_per_magnification=1,
                                 slides=(("A", "14", "22549AB"), ("DC", "14", "2523")))
    breast = root / "BreaKHis_v1" / "histology_slides" / "breast"
    image = breakhis_path(breast, "A", "14", "22549AB", "40X", 1)
    image.rename(image.with_suffix(".PNG"))
    assert len(load_breakhis(root).manifest) == 8
    partial = image.parent / "SOB_B_A-14-22549AB-40-002.png.crdownload"
    partial.write_bytes(b"half")
    with pytest.raises(BadInputError, match="unfinished download"):
        load_breakhis(root)
    assert "unfinished download" in dict(load_breakhis(root, skip_bad=True).excluded)[str(partial)]


def test_appledouble_files_in_the_other_adapters_are_ignored(tmp_path: Path):
    mini = make_mini_ddsm_fixture(tmp_path / "mini")
    expected = load_mini_ddsm(mini).manifest
    case = next((mini / "MINI-DDSM-Complete-PNG-16" / "Benign").iterdir())
    image = next(p for p in case.glob("*.png") if "Mask" not in p.name)
    (case / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07")
    pd.testing.assert_frame_equal(load_mini_ddsm(mini).manifest, expected)

    inbreast = make_inbreast_fixture(tmp_path / "inbreast")
    expected = load_inbreast(inbreast).manifest
    first = next((inbreast / "AllDICOMs").glob("*.dcm"))
    (inbreast / "AllDICOMs" / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07")
    pd.testing.assert_frame_equal(load_inbreast(inbreast).manifest, expected)

    cbis = make_cbis_ddsm_fixture(tmp_path / "cbis")
    expected = load_cbis_ddsm(cbis).manifest
    dicom = next((cbis / "CBIS-DDSM").rglob("*.dcm"))
    (dicom.parent / f"._{dicom.name}").write_bytes(b"\x00\x05\x16\x07")
    pd.testing.assert_frame_equal(load_cbis_ddsm(cbis).manifest, expected)

    sample = tmp_path / "sample" / "sfm-benign-1"
    datasets.write_dicom(sample / "a.dcm", np.full((8, 8), 100, np.uint16),
                         patient_id="Mass-Training_P_00001_LEFT_CC", laterality="L", view="CC")
    (sample / "._a.dcm").write_bytes(b"\x00\x05\x16\x07")
    assert len(datasets.load("cbis-sample", tmp_path / "sample")) == 1


def test_excel_csv_with_trailing_empty_rows(tmp_path: Path):
    root = make_cbis_ddsm_fixture(tmp_path / "cbis")
    expected = load_cbis_ddsm(root).manifest
    for path in root.glob("*_case_description_*.csv"):
        with open(path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([[""] * 5, [""] * 5])
    pd.testing.assert_frame_equal(load_cbis_ddsm(root).manifest, expected)
