"""INbreast (Moreira et al., Acad. Radiol. 2012): full-field digital mammograms labelled by BI-RADS.

Layout: ``AllDICOMs/<file id>_<patient hash>_MG_<L|R>_<view>_ANON.dcm`` and the table
``INbreast.csv`` (semicolon-separated as distributed: ``Patient ID;Patient age;Laterality;View;
Acquisition date;File Name;ACR;Bi-Rads``; ``File Name`` is the numeric id that starts the DICOM
file name). ``root`` is the folder that holds both (``INbreast Release 1.0``), or its parent.
Only ``INbreast.xls`` present: it needs the package xlrd; without it the error asks for a CSV.

**Labels.** INbreast has no pathology for every image, only the radiologist's BI-RADS
assessment, which is *not* a diagnosis. The labels therefore follow a convention, kept in one
place, :data:`BIRADS_TO_LABEL`:

- ``"literature"`` (default): BI-RADS 1 -> normal; 2, 3 -> benign; 4 (4a, 4b, 4c), 5, 6 ->
  malignant. This is the convention commonly used in INbreast classification studies. Papers
  differ, chiefly on BI-RADS 3, and paper 000 (Mahmood et al. 2021) gives INbreast only as
  benign/malignant counts (its Table 3) without stating a mapping.
- ``"strict"``: 1 -> normal; 2 -> benign; 3 ("probably benign") left out and listed in
  ``excluded``; 4 and above -> malignant.

``patient_id`` is the patient hash from the file name (the table's Patient ID column is empty or
"removed" in many copies); laterality and view come from the file name (views other than CC
and MLO give view ""). Extra columns: ``birads`` (e.g. "4a"), ``acr`` (breast density), ``file_id``.
Each DICOM header is read (``stop_before_pixels``) to check it is a DICOM.

Bad input (BadInputError, or listed with ``skip_bad``): a DICOM without a table row, a row
without a DICOM, an unknown BI-RADS value, a laterality or view that disagrees with the file
name, a file name not in the pattern above, an unreadable header, a file id twice. The table
may be saved with a byte-order mark, as UTF-16 or Windows-1252; macOS ``._*`` files are ignored.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pandas as pd
import pydicom

from helpers.adapters import AdapterResult, BadInputError, bad_item, is_clutter, read_table, require_folder
from helpers.datasets import MANIFEST_COLUMNS

DATASET = "inbreast"
EXTRA_COLUMNS: tuple[str, ...] = ("birads", "acr", "file_id")

_MALIGNANT = {value: "malignant" for value in ("4", "4a", "4b", "4c", "5", "6")}
# mapping name -> {BI-RADS category: label, or None to leave the image out}
BIRADS_TO_LABEL: dict[str, dict[str, str | None]] = {
    "literature": {"1": "normal", "2": "benign", "3": "benign", **_MALIGNANT},
    "strict": {"1": "normal", "2": "benign", "3": None, **_MALIGNANT},
}

_FILE_NAME = re.compile(r"^(\d+)_([0-9A-Za-z]+)_MG_([LR])_([A-Z]+)_ANON$", re.I)
_TABLE_COLUMNS = {"filename": "file_name", "birads": "birads", "laterality": "laterality",
                  "view": "view", "acr": "acr"}


def _dataset_folder(root: Path) -> Path:
    """``root`` if it holds AllDICOMs/, else its one subfolder that does."""
    if (root / "AllDICOMs").is_dir():
        return root
    inside = sorted(p for p in root.iterdir() if (p / "AllDICOMs").is_dir())
    if len(inside) != 1:
        raise FileNotFoundError(f"dataset {DATASET!r}: {root} has no AllDICOMs/ folder "
                                f"(nor exactly one subfolder with one); see data/README.md")
    return inside[0]


def _read_table(folder: Path) -> tuple[pd.DataFrame, Path]:
    """INbreast.csv (``;`` or ``,`` separated, any encoding spreadsheets write), or INbreast.xls if
    xlrd is installed."""
    csv_path, xls_path = folder / "INbreast.csv", folder / "INbreast.xls"
    if csv_path.is_file():
        table = read_table(csv_path)  # ";" or "," (or tab); BOM, UTF-16 or Windows-1252 text
        source = csv_path
    elif xls_path.is_file():
        if importlib.util.find_spec("xlrd") is None:
            raise ImportError(f"{xls_path}: reading .xls needs the package xlrd, which is not installed; "
                              f"save the sheet as {csv_path.name} (File > Save as > CSV) or pip install xlrd")
        table = pd.read_excel(xls_path, dtype=str, keep_default_na=False)
        source = xls_path
    else:
        raise FileNotFoundError(f"dataset {DATASET!r}: neither {csv_path.name} nor {xls_path.name} in {folder}")
    table = table.rename(columns={c: _TABLE_COLUMNS.get(re.sub(r"[^a-z]", "", str(c).lower()), c)
                                  for c in table.columns})
    missing = [c for c in ("file_name", "birads", "laterality", "view") if c not in table.columns]
    if missing:
        raise BadInputError(f"{source}: lacks column(s) {missing}; expected File Name, Bi-Rads, "
                            f"Laterality and View; found {list(table.columns)}")
    return table.fillna("").astype(str).apply(lambda c: c.str.strip()), source


def _file_id(value: str) -> str:
    """``22678622`` (also from ``22678622.0`` as spreadsheets write it), or "" if not an id."""
    match = re.fullmatch(r"(\d+)(?:\.0+)?", value)
    return match.group(1) if match else ""


def load_inbreast(root: str | Path | None, *, skip_bad: bool = False,
                  birads_mapping: str = "literature") -> AdapterResult:
    """The INbreast manifest (see the module docstring for the layout, label rules and columns)."""
    if birads_mapping not in BIRADS_TO_LABEL:
        raise ValueError(f"birads_mapping must be one of {sorted(BIRADS_TO_LABEL)}, got {birads_mapping!r}")
    mapping = BIRADS_TO_LABEL[birads_mapping]
    folder = _dataset_folder(require_folder(root, DATASET, "AllDICOMs/ and INbreast.csv"))
    table, source = _read_table(folder)
    excluded: list[tuple[str, str]] = []
    rows_by_id: dict[str, tuple[str, dict[str, str]]] = {}
    for index, row in enumerate(table.to_dict("records")):
        if not any(row.values()):
            continue   # blank line, not a row
        where = f"{source} row {index + 2}"
        file_id = _file_id(row["file_name"])
        if not file_id:
            bad_item(excluded, where, f"File Name {row['file_name']!r} is not a numeric file id", skip_bad=skip_bad)
        elif file_id in rows_by_id:
            bad_item(excluded, where, f"file id {file_id} is listed more than once", skip_bad=skip_bad)
        else:
            rows_by_id[file_id] = (where, row)
    used: set[str] = set()
    records = []
    dicoms = (p for p in (folder / "AllDICOMs").iterdir()
              if p.suffix.lower() == ".dcm" and not is_clutter(p))
    for path in sorted(dicoms):
        match = _FILE_NAME.match(path.stem)
        if match is None:
            bad_item(excluded, path, "file name is not like 20586908_6c613a14b80a8591_MG_R_CC_ANON.dcm",
                     skip_bad=skip_bad)
            continue
        file_id, patient, side, view = match.groups()
        if file_id in used:
            bad_item(excluded, path, f"a second DICOM with file id {file_id}", skip_bad=skip_bad)
            continue
        used.add(file_id)
        if file_id not in rows_by_id:
            bad_item(excluded, path, f"file id {file_id} has no row in {source}", skip_bad=skip_bad)
            continue
        where, row = rows_by_id[file_id]
        birads = re.sub(r"\s", "", row["birads"]).lower()
        problem = ""
        if birads not in mapping:
            problem = f"unknown Bi-Rads {row['birads']!r}; expected one of {sorted(mapping)}"
        elif row["laterality"] and row["laterality"].upper() != side.upper():
            problem = f"Laterality {row['laterality']!r} disagrees with the file name ({side.upper()})"
        elif row["view"] and row["view"].upper() != view.upper():
            problem = f"View {row['view']!r} disagrees with the file name ({view.upper()})"
        if problem:
            bad_item(excluded, where, f"{problem} (image {path.name})", skip_bad=skip_bad)
            continue
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # pydicom raises several types for a broken file
            bad_item(excluded, path, f"not a readable DICOM header ({type(error).__name__}: {error})",
                     skip_bad=skip_bad)
            continue
        label = mapping[birads]
        if label is None:
            excluded.append((str(path), f"BI-RADS {birads} is left out by birads_mapping={birads_mapping!r}"))
            continue
        records.append({"image_path": str(path.resolve()), "label": label, "patient_id": patient.lower(),
                        "dataset": DATASET, "view": view.upper() if view.upper() in ("CC", "MLO") else "",
                        "laterality": side.upper(), "roi": "", "magnification": "",
                        "birads": birads, "acr": _file_id(row.get("acr", "")) or row.get("acr", ""),
                        "file_id": file_id})
    for file_id, (where, row) in rows_by_id.items():
        if file_id not in used:
            bad_item(excluded, where, f"File Name {file_id} has no DICOM in {folder / 'AllDICOMs'}",
                     skip_bad=skip_bad)
    manifest = pd.DataFrame(records, columns=list(MANIFEST_COLUMNS) + list(EXTRA_COLUMNS))
    manifest = manifest.sort_values(["patient_id", "laterality", "view", "file_id"], kind="stable")
    return AdapterResult(manifest.reset_index(drop=True), excluded)
