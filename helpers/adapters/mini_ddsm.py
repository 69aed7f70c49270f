"""Mini-DDSM (Lekamlage et al., DMIP 2020; Kaggle "miniddsm2"): normal, benign and cancer mammograms.

Layout: ``MINI-DDSM-Complete-PNG-16/{Benign,Cancer,Normal}/<case>/<V>_<case>_<n>.<LEFT|RIGHT>_<CC|MLO>.png``
(or ``MINI-DDSM-Complete-JPEG-8`` with ``.jpg``). ``root`` is that folder, or a folder holding
one or more of them: then ``variant`` ("PNG-16" or "JPEG-8") picks one, and without it PNG-16
is preferred and the other variant is listed in ``excluded``.

Labels come from the class folder: Normal -> normal, Benign -> benign, Cancer -> malignant
(``STATUS_TO_LABEL``; paper 001's three classes). ``patient_id`` is the DDSM case, volume
letter and case number (``C_0029``); laterality and view come from the file name.

Metadata: the first of ``SPREADSHEETS`` found in the image folder or in ``root`` (columns
``fullPath``, ``fileName``, ``View``, ``Side``, ``Status``, ``Age``, ``Density``). Rows are
matched to images by file name without extension (so a sheet listing ``.jpg`` files also
serves the PNG variant). Its Status, Side and View must agree with the folder and file name.
A ``.xlsx`` sheet needs the package openpyxl; without it a warning says so and the adapter
falls back to file names, taking age and density from each case's ``.ics`` file
(``PATIENT_AGE``, ``DENSITY``) where there is one. Extra columns: ``age``, ``density``.

Deliberately left out and listed in ``excluded``: lesion masks / overlays (file names containing
"Mask"). Non-image files (``.ics``, spreadsheets) and operating-system clutter (``._*``,
``.DS_Store``, ``Thumbs.db``) are not images and are skipped. A CSV sheet may be saved with a
byte-order mark, as UTF-16, with ``;`` or tab separators and empty trailing columns.
Bad input (BadInputError, or listed with ``skip_bad``): a file name not in the pattern above, an
image without a spreadsheet row or a row without an image, an unknown Status, a Status / Side /
View that disagrees with the folder or file name, the same image twice, an unfinished download.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path, PureWindowsPath

import pandas as pd

from helpers.adapters import (
    AdapterResult,
    BadInputError,
    bad_item,
    is_clutter,
    read_table,
    require_folder,
    unfinished_download,
)
from helpers.datasets import MANIFEST_COLUMNS

DATASET = "mini-ddsm"
STATUS_TO_LABEL: dict[str, str] = {"Normal": "normal", "Benign": "benign", "Cancer": "malignant"}
VARIANTS: tuple[str, ...] = ("PNG-16", "JPEG-8")          # preference order
SPREADSHEETS: tuple[str, ...] = ("DataWMask.csv", "Data.csv", "DataWMask.xlsx", "Data.xlsx")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
EXTRA_COLUMNS: tuple[str, ...] = ("age", "density")

_FILE_NAME = re.compile(r"^([A-D])_(\d+)_(\d+)\.(LEFT|RIGHT)_(CC|MLO)$", re.I)
_SHEET_COLUMNS = {"fullpath": "fullPath", "filename": "fileName", "view": "View", "side": "Side",
                  "status": "Status", "age": "Age", "density": "Density"}


def _image_folder(root: Path, variant: str | None, excluded: list[tuple[str, str]]) -> Path:
    """The folder that holds Benign/Cancer/Normal (see the module docstring)."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
    if any((root / status).is_dir() for status in STATUS_TO_LABEL):
        folder = root
    else:
        found = {v: root / f"MINI-DDSM-Complete-{v}" for v in VARIANTS if (root / f"MINI-DDSM-Complete-{v}").is_dir()}
        choice = variant or next((v for v in VARIANTS if v in found), None)
        if choice not in found:
            names = [f"MINI-DDSM-Complete-{v}" for v in ([variant] if variant else VARIANTS)]
            wanted = " or ".join(names)
            raise FileNotFoundError(f"dataset {DATASET!r}: {root} holds neither Benign/Cancer/Normal "
                                    f"nor {wanted} (see data/README.md)")
        folder = found[choice]
        for other, path in found.items():
            if other != choice:
                excluded.append((str(path), f"the {other} variant of the same images; "
                                            f"pass variant={other!r} to use it instead"))
    missing = [s for s in STATUS_TO_LABEL if not (folder / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"dataset {DATASET!r}: {folder} lacks the class folder(s) {missing}")
    return folder


def _clean_number(value: object) -> str:
    text = "" if value is None else str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return "" if text in ("-", "nan", "NaN") else text
    if number != number:  # NaN
        return ""
    return str(int(number)) if number.is_integer() else text


def _read_sheet(folder: Path, root: Path) -> tuple[pd.DataFrame | None, Path | None]:
    """The metadata sheet with canonical column names, or (None, None) if none can be read."""
    places = [folder] + ([root] if root != folder else [])
    found = next((place / name for name in SPREADSHEETS for place in places if (place / name).is_file()), None)
    if found is None:
        return None, None
    if found.suffix == ".xlsx":
        if importlib.util.find_spec("openpyxl") is None:   # pandas' reader for .xlsx
            warnings.warn(f"{found}: reading .xlsx needs the package openpyxl, which is not installed; "
                          f"export the sheet as {found.with_suffix('.csv').name} beside it (or pip install "
                          "openpyxl). Using file names instead (age and density from the .ics files).",
                          stacklevel=3)
            return None, None
        sheet = pd.read_excel(found, sheet_name=0, dtype=str, keep_default_na=False)
    else:
        try:
            sheet = read_table(found)  # BOM, UTF-16, ";" or tab, empty trailing columns
        except OSError as error:
            raise BadInputError(f"{found}: not a readable CSV file ({error})") from error
    sheet = sheet.rename(columns={c: _SHEET_COLUMNS.get(re.sub(r"\W", "", str(c)).lower(), c) for c in sheet.columns})
    if "Status" not in sheet.columns or not ({"fullPath", "fileName"} & set(sheet.columns)):
        raise BadInputError(f"{found}: needs the columns Status and fullPath or fileName; "
                            f"found {list(sheet.columns)}")
    return sheet.fillna("").astype(str).apply(lambda c: c.str.strip()), found


def _ics_fields(case_folder: Path) -> dict[str, str]:
    """PATIENT_AGE and DENSITY from the case's .ics file (DDSM's case description), if any."""
    files = sorted(case_folder.glob("*.ics"))
    fields = {"age": "", "density": ""}
    if len(files) != 1:
        return fields
    for line in files[0].read_text(encoding="latin-1").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].upper() == "PATIENT_AGE":
            fields["age"] = _clean_number(parts[1])
        elif len(parts) >= 2 and parts[0].upper() == "DENSITY":
            fields["density"] = _clean_number(parts[1])
    return fields


def _sheet_rows(sheet: pd.DataFrame, source: Path, excluded: list[tuple[str, str]],
                skip_bad: bool) -> dict[str, tuple[str, dict[str, str]]]:
    """Sheet rows keyed by image file name without extension: (where, row)."""
    rows: dict[str, tuple[str, dict[str, str]]] = {}
    for index, row in enumerate(sheet.to_dict("records")):
        where = f"{source} row {index + 2}"
        name = PureWindowsPath(row.get("fullPath") or row.get("fileName", "")).name
        if not name:
            if any(row.values()):
                bad_item(excluded, where, "no fullPath / fileName", skip_bad=skip_bad)
            continue
        key = name.rsplit(".", 1)[0] if name.lower().endswith(IMAGE_SUFFIXES) else name
        if key in rows:
            bad_item(excluded, where, f"image {name} is listed more than once", skip_bad=skip_bad)
            continue
        rows[key] = (where, row)
    return rows


def load_mini_ddsm(root: str | Path | None, *, skip_bad: bool = False,
                   variant: str | None = None) -> AdapterResult:
    """The Mini-DDSM manifest (see the module docstring for the layout, rules and columns)."""
    base = require_folder(root, DATASET, "MINI-DDSM-Complete-PNG-16/ (or -JPEG-8/) with Benign/, "
                                         "Cancer/ and Normal/ case folders")
    excluded: list[tuple[str, str]] = []
    folder = _image_folder(base, variant, excluded)
    sheet, source = _read_sheet(folder, base)
    sheet_rows = _sheet_rows(sheet, source, excluded, skip_bad) if sheet is not None else {}
    used: set[str] = set()
    on_disk: set[str] = set()
    seen: dict[str, Path] = {}
    rows = []
    for status, label in STATUS_TO_LABEL.items():
        for path in sorted((folder / status).rglob("*")):
            if not path.is_file() or is_clutter(path):
                continue
            if unfinished := unfinished_download(path):
                bad_item(excluded, path, unfinished, skip_bad=skip_bad)
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if "mask" in path.name.lower():
                excluded.append((str(path), "lesion mask / overlay, not a mammogram"))
                continue
            key = path.name.rsplit(".", 1)[0]
            on_disk.add(key)
            match = _FILE_NAME.match(key)
            if match is None:
                bad_item(excluded, path, "file name is not like C_0029_1.RIGHT_CC.png", skip_bad=skip_bad)
                continue
            if key in seen:
                bad_item(excluded, path, f"the same image as {seen[key]}", skip_bad=skip_bad)
                continue
            seen[key] = path
            volume, case, _, side, view = match.groups()
            extra = _ics_fields(path.parent)
            if sheet is not None:
                if key not in sheet_rows:
                    bad_item(excluded, path, f"has no row in {source}", skip_bad=skip_bad)
                    continue
                where, sheet_row = sheet_rows[key]
                used.add(key)
                problem = _sheet_problem(sheet_row, status, side, view)
                if problem:
                    bad_item(excluded, where, f"{problem} (image {path})", skip_bad=skip_bad)
                    continue
                extra = {"age": _clean_number(sheet_row.get("Age")), "density": _clean_number(sheet_row.get("Density"))}
            rows.append({"image_path": str(path.resolve()), "label": label,
                         "patient_id": f"{volume.upper()}_{case}", "dataset": DATASET, "view": view.upper(),
                         "laterality": side[0].upper(), "roi": "", "magnification": "", **extra})
    for key, (where, sheet_row) in sheet_rows.items():
        if key not in used and key not in on_disk:
            bad_item(excluded, where, f"lists {sheet_row.get('fullPath') or sheet_row.get('fileName')} "
                                      f"but there is no such image under {folder}", skip_bad=skip_bad)
    columns = list(MANIFEST_COLUMNS) + list(EXTRA_COLUMNS)
    manifest = pd.DataFrame(rows, columns=columns)
    manifest = manifest.sort_values(["patient_id", "laterality", "view", "image_path"], kind="stable")
    return AdapterResult(manifest.reset_index(drop=True), excluded)


def _sheet_problem(row: dict[str, str], status: str, side: str, view: str) -> str:
    """Why a sheet row disagrees with its image's folder and file name ("" if it does not)."""
    row_status = row.get("Status", "")
    known = {s.lower(): s for s in STATUS_TO_LABEL}
    if row_status.lower() not in known:
        return f"unknown Status {row_status!r}; expected one of {list(STATUS_TO_LABEL)}"
    if known[row_status.lower()] != status:
        return f"Status {row_status!r} disagrees with the image's folder {status!r}"
    for column, value in (("Side", side), ("View", view)):
        if row.get(column) and row[column].upper() != value.upper():
            return f"{column} {row[column]!r} disagrees with the file name ({value})"
    return ""
