"""CBIS-DDSM (Curated Breast Imaging Subset of DDSM, TCIA): mammograms or cropped lesions.

Two layouts are read; the choice is automatic:

- **Kaggle JPEG re-export** ("CBIS-DDSM: Breast Cancer Image Dataset"), chosen when a file
  ``dicom_info.csv`` is found in ``root/csv``, ``root`` or ``root/CBIS-DDSM/csv``. Images are
  ``jpeg/<series uid>/<n>-<m>.jpg``; ``dicom_info.csv`` maps each to its case (``PatientID``,
  e.g. ``Mass-Training_P_00001_LEFT_CC_1``) and ``SeriesDescription``.
- **TCIA DICOM layout** otherwise: case folders (``Mass-Training_P_00001_LEFT_CC``, ROI folders
  with an ``_<abnormality id>`` suffix) in ``root/CBIS-DDSM`` if that exists, else in ``root``.

The four case-description CSVs (``mass_case_description_train_set.csv`` ...) are looked up in
``root``, ``root/csv``, ``root/CBIS-DDSM`` and ``root/CBIS-DDSM/csv``.

**How a CSV path is resolved.** The file names and series folders in the CSVs are not those of
the download (NBIA renames them), so only the first path component, the case folder, is used;
the file is then chosen among the images of that case (every ``*.dcm`` under the case folder,
or the ``dicom_info.csv`` rows of that ``PatientID``). Each candidate gets a role (full
mammogram, cropped image, ROI mask) from, in this order: the name of its series folder, when
that folder holds no other candidate ("full mammogram images", "cropped images", "ROI mask
images"); otherwise its SeriesDescription (DICOM header, or ``dicom_info.csv``). The candidate
with the role the CSV column asks for is taken; a case with a single image is taken for a full
mammogram whose role is unknown; if the roles still do not decide, a file at exactly the CSV's
path is taken; else the row is bad input. File size and image size are never used.

**Labels.** pathology ``BENIGN`` and ``BENIGN_WITHOUT_CALLBACK`` -> benign, ``MALIGNANT`` ->
malignant (see ``PATHOLOGY_TO_LABEL``); CBIS-DDSM holds no normal images. With
``image_type="full"`` a mammogram with several abnormalities is malignant if any is.

Extra manifest columns: ``split_official`` (train/test: which CSV), ``abnormality``
(mass/calc), ``abnormality_id``, ``pathology``, ``breast_density``, ``assessment``,
``subtlety`` (several abnormalities of one mammogram: values joined by ";" in abnormality-id
order) and ``case`` (the full mammogram's case folder, e.g. ``Mass-Training_P_00001_LEFT_CC``).
``roi`` is left "" (the ROI masks are not read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import pandas as pd
import pydicom

from helpers.adapters import AdapterResult, BadInputError, bad_item, is_clutter, read_table, require_folder
from helpers.datasets import MANIFEST_COLUMNS
from helpers.splits import LeakageError, check_no_leakage, patient_split

DATASET = "cbis-ddsm"
IMAGE_TYPES: tuple[str, ...] = ("full", "roi")
ABNORMALITIES: tuple[str, ...] = ("mass", "calc")
EXTRA_COLUMNS: tuple[str, ...] = ("split_official", "abnormality", "abnormality_id", "pathology",
                                  "breast_density", "assessment", "subtlety", "case")

# (abnormality, official split) -> case-description CSV of the distribution
CASE_CSVS: dict[tuple[str, str], str] = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}

PATHOLOGY_TO_LABEL: dict[str, str] = {
    "BENIGN": "benign",
    "BENIGN_WITHOUT_CALLBACK": "benign",
    "MALIGNANT": "malignant",
}

# word in a series folder name or SeriesDescription -> role of the image (checked in this order)
SERIES_ROLES: dict[str, str] = {"cropped": "cropped", "mask": "mask", "full mammogram": "full"}

# CSV column the row's image comes from, per image type
IMAGE_COLUMN: dict[str, tuple[str, str]] = {
    "full": ("image file path", "full"),
    "roi": ("cropped image file path", "cropped"),
}

_REQUIRED_COLUMNS = ("patient id", "left or right breast", "image view", "abnormality id",
                     "pathology", "image file path", "cropped image file path")
_CASE = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)(?:_(\d+))?$", re.I)
_SPLIT_WORD = {"train": "training", "test": "test"}


class _RowProblem(Exception):
    """A reason why one CSV row cannot be used."""


# ----------------------------------------------------------------------------- layouts

@dataclass
class _Candidate:
    path: Path
    folder: str                        # name of the folder that holds the file
    description: Callable[[], str]     # SeriesDescription (read lazily)


def _role(text: str) -> str | None:
    text = text.lower()
    return next((role for word, role in SERIES_ROLES.items() if word in text), None)


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises several types for a broken file
        raise _RowProblem(f"{path}: not a readable DICOM header ({type(error).__name__}: {error})") from error


@dataclass
class _Layout:
    kind: str                          # "tcia" or "kaggle"
    root: Path                         # the folder the CSV search starts from
    images_root: Path                  # TCIA: parent of the case folders; Kaggle: parent of jpeg/
    headers: dict[Path, pydicom.Dataset] = field(default_factory=dict)
    by_case: dict[str, list[dict[str, str]]] = field(default_factory=dict)   # Kaggle dicom_info
    case_by_file: dict[Path, str] = field(default_factory=dict)              # Kaggle dicom_info

    def header(self, path: Path) -> pydicom.Dataset:
        if path not in self.headers:
            self.headers[path] = _read_header(path)
        return self.headers[path]

    def candidates(self, case: str) -> list[_Candidate]:
        """Every image of one case folder, sorted by path."""
        if self.kind == "tcia":
            folder = self.images_root / case
            if not folder.is_dir():
                raise _RowProblem(f"case folder {folder} does not exist")
            files = sorted(p for p in folder.rglob("*")
                           if p.is_file() and p.suffix.lower() == ".dcm" and not is_clutter(p))
            return [_Candidate(p, p.parent.name, lambda p=p: str(self.header(p).get("SeriesDescription", "")))
                    for p in files]
        rows = self.by_case.get(case.lower(), [])
        if not rows:
            raise _RowProblem(f"case {case} has no row in dicom_info.csv")
        return [_Candidate(self.kaggle_file(r["image_path"]), "", lambda r=r: r["SeriesDescription"])
                for r in sorted(rows, key=lambda r: r["image_path"])]

    def kaggle_file(self, relative: str) -> Path:
        parts = PurePosixPath(relative.replace("\\", "/")).parts
        if parts and parts[0] != "jpeg" and len(parts) > 1:
            parts = parts[1:]          # "CBIS-DDSM/jpeg/..." -> "jpeg/..."
        return self.images_root.joinpath(*parts)

    def case_of(self, csv_path: str) -> str:
        """The case folder a CSV path names: its first component, or (Kaggle CSVs rewritten to
        ``CBIS-DDSM/jpeg/<series uid>/<file>.jpg``) the PatientID dicom_info.csv gives that file."""
        first = csv_path.replace("\\", "/").split("/")[0]
        if self.kind == "kaggle" and not _CASE.match(first):
            return self.case_by_file.get(self.kaggle_file(csv_path), first)
        return first

    def exact_file(self, csv_path: str) -> Path:
        """The file at exactly the CSV's path (used only when the roles do not decide)."""
        relative = csv_path.replace("\\", "/")
        return self.kaggle_file(relative) if self.kind == "kaggle" else self.images_root / relative

    def resolve(self, csv_path: str, case: str, role: str) -> Path:
        """The file of ``role`` among the images of ``case`` (see the module docstring)."""
        candidates = self.candidates(case)
        if not candidates:
            raise _RowProblem(f"no image file found for case {case} (CSV path {csv_path})")
        folder_counts: dict[Path, int] = {}
        for c in candidates:
            folder_counts[c.path.parent] = folder_counts.get(c.path.parent, 0) + 1
        roles = []
        for c in candidates:
            from_folder = _role(c.folder) if folder_counts[c.path.parent] == 1 else None
            roles.append(from_folder or _role(c.description()))
        matches = [c.path for c, r in zip(candidates, roles) if r == role]
        if len(matches) != 1 and role == "full" and len(candidates) == 1 and roles[0] is None:
            matches = [candidates[0].path]
        if len(matches) != 1:
            exact = self.exact_file(csv_path)
            if any(c.path == exact for c in candidates):
                matches = [exact]
        if len(matches) != 1:
            names = ", ".join(str(c.path) for c in candidates)
            raise _RowProblem(f"cannot tell which image of case {case} is the {role} image "
                              f"({names}): neither the series folder names nor the "
                              f"SeriesDescription say 'full mammogram images' / 'cropped images' / "
                              f"'ROI mask images', and no file sits at the CSV path {csv_path}")
        path = matches[0]
        if not path.is_file():
            raise _RowProblem(f"image file {path} (CSV path {csv_path}) does not exist")
        if self.kind == "tcia":
            self.header(path)  # a broken header is bad input here, not later
        return path


def _first_existing(paths: Iterable[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _detect_layout(root: Path) -> _Layout:
    """Kaggle JPEG layout if ``dicom_info.csv`` exists, else the TCIA DICOM layout."""
    info = _first_existing([root / "csv" / "dicom_info.csv", root / "dicom_info.csv",
                            root / "CBIS-DDSM" / "csv" / "dicom_info.csv"])
    if info is None:
        images_root = root / "CBIS-DDSM" if (root / "CBIS-DDSM").is_dir() else root
        return _Layout("tcia", root, images_root)
    table = _read_csv(info)
    missing = [c for c in ("image_path", "PatientID", "SeriesDescription") if c not in table.columns]
    if missing:
        raise BadInputError(f"{info}: lacks column(s) {missing} (expected the Kaggle dicom_info.csv)")
    images_root = info.parent.parent if info.parent.name == "csv" else info.parent
    layout = _Layout("kaggle", root, images_root)
    for record in table.to_dict("records"):
        layout.by_case.setdefault(record["PatientID"].lower(), []).append(record)
        layout.case_by_file[layout.kaggle_file(record["image_path"])] = record["PatientID"]
    return layout


# ----------------------------------------------------------------------------- CSV rows

def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV as spreadsheets save it (BOM, UTF-16, ``;`` or tab, empty trailing columns)."""
    try:
        return read_table(path)
    except OSError as error:
        raise BadInputError(f"{path}: not a readable CSV file ({error})") from error


def _normalise_column(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def _find_csv(root: Path, name: str) -> Path:
    places = [root, root / "csv", root / "CBIS-DDSM", root / "CBIS-DDSM" / "csv"]
    found = _first_existing(place / name for place in places)
    if found is None:
        raise FileNotFoundError(f"dataset {DATASET!r}: {name} not found in {root} (nor in its csv/ "
                                "or CBIS-DDSM/ folders); it comes with the TCIA download "
                                "(or pass abnormality=... to load only mass or only calc cases)")
    return found


def _parse_row(row: dict[str, str], abnormality: str, split: str, image_column: str,
               case_of: Callable[[str], str]) -> dict[str, str]:
    """Check one CSV row against its case folder name and return its fields."""
    patient, side, view = row["patient id"].upper(), row["left or right breast"].upper(), row["image view"].upper()
    if not re.fullmatch(r"P_\d+", patient):
        raise _RowProblem(f"patient_id {row['patient id']!r} is not like 'P_00001'")
    if side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
        raise _RowProblem(f"breast side {side!r} / view {view!r} not LEFT/RIGHT and CC/MLO")
    pathology = row["pathology"].upper()
    if pathology not in PATHOLOGY_TO_LABEL:
        raise _RowProblem(f"unknown pathology {row['pathology']!r}; expected one of {sorted(PATHOLOGY_TO_LABEL)}")
    cases = {}
    for column in ("image file path", image_column):
        first = case_of(row[column])
        match = _CASE.match(first)
        if match is None:
            raise _RowProblem(f"{column} {row[column]!r} does not start with a case folder like "
                              "'Mass-Training_P_00001_LEFT_CC'")
        kind, split_word, case_patient, case_side, case_view, suffix = match.groups()
        expected = (abnormality, _SPLIT_WORD[split], patient, side, view)
        if (kind.lower(), split_word.lower(), case_patient.upper(), case_side.upper(), case_view.upper()) != expected:
            raise _RowProblem(f"{column} case folder {first!r} disagrees with the row "
                              f"({abnormality}, {split}, {patient}, {side}, {view})")
        if (suffix is None) != (column == "image file path"):
            raise _RowProblem(f"{column} case folder {first!r} should "
                              f"{'not ' if column == 'image file path' else ''}end in _<abnormality id>")
        cases[column] = first
    return {"patient_id": patient, "laterality": side[0], "view": view, "pathology": pathology,
            "abnormality_id": row["abnormality id"], "breast_density": row.get("breast density", ""),
            "assessment": row.get("assessment", ""), "subtlety": row.get("subtlety", ""),
            "case": cases["image file path"], "image_case": cases[image_column],
            "csv_path": row[image_column]}


def _read_case_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row with normalised column names) for every row of a case-description CSV."""
    table = _read_csv(path)
    table.columns = [_normalise_column(c) for c in table.columns]
    missing = [c for c in _REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise BadInputError(f"{path}: lacks column(s) {missing}; is it a CBIS-DDSM case-description CSV?")
    return [(index + 2, row) for index, row in enumerate(table.to_dict("records"))
            if any(value for value in row.values())]


# ----------------------------------------------------------------------------- adapter

def _join(values: list[str]) -> str:
    unique = list(dict.fromkeys(values))
    return ";".join(unique)


def _id_order(value: str) -> tuple[int, str]:
    return (int(value), value) if value.isdigit() else (10**9, value)


def _full_image_rows(records: list[dict], bad_cases: dict[str, str],
                     excluded: list[tuple[str, str]]) -> list[dict]:
    """One row per full mammogram; malignant if any of its abnormalities is."""
    by_image: dict[str, list[dict]] = {}
    for record in records:
        by_image.setdefault(record["image_path"], []).append(record)
    rows = []
    for image_path, group in by_image.items():
        group = sorted(group, key=lambda r: _id_order(r["abnormality_id"]))
        first = group[0]
        if first["case"] in bad_cases:
            excluded.append((image_path, f"left out because another row of case {first['case']} is "
                                         f"bad ({bad_cases[first['case']]}), so its label is uncertain"))
            continue
        labels = {PATHOLOGY_TO_LABEL[r["pathology"]] for r in group}
        row = {key: first[key] for key in ("image_path", "patient_id", "view", "laterality",
                                           "split_official", "abnormality", "case")}
        row["label"] = "malignant" if "malignant" in labels else "benign"
        for key in ("abnormality_id", "pathology", "breast_density", "assessment", "subtlety"):
            row[key] = ";".join(r[key] for r in group) if key in ("abnormality_id", "pathology") \
                else _join([r[key] for r in group])
        rows.append(row)
    return rows


def load_cbis_ddsm(root: str | Path | None, *, skip_bad: bool = False, image_type: str = "full",
                   abnormality: str | tuple[str, ...] = ("mass", "calc")) -> AdapterResult:
    """The CBIS-DDSM manifest (see the module docstring for layouts, rules and columns).

    ``image_type``: "full" (one row per full mammogram) or "roi" (one row per cropped lesion
    image). ``abnormality``: "mass", "calc" or both; only the CSVs of these are needed.
    A row with an unknown pathology, a missing or unreadable image, or a case folder that
    disagrees with the row raises BadInputError naming the CSV row (``skip_bad=True``: listed in
    ``excluded``; in "full" mode the whole mammogram of such a row is then left out as well).
    """
    if image_type not in IMAGE_TYPES:
        raise ValueError(f"image_type must be one of {IMAGE_TYPES}, got {image_type!r}")
    wanted = (abnormality,) if isinstance(abnormality, str) else tuple(abnormality)
    unknown = [a for a in wanted if a not in ABNORMALITIES]
    if unknown or not wanted:
        raise ValueError(f"abnormality must be a non-empty subset of {ABNORMALITIES}, got {abnormality!r}")
    folder = require_folder(root, DATASET, "the CBIS-DDSM case folders (e.g. Mass-Training_P_00001_LEFT_CC/) "
                                           "or the Kaggle csv/ and jpeg/ folders, with the case-description CSVs")
    layout = _detect_layout(folder)
    image_column, role = IMAGE_COLUMN[image_type]
    excluded: list[tuple[str, str]] = []
    records: list[dict] = []
    bad_cases: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for (kind, split), name in CASE_CSVS.items():
        if kind not in wanted:
            continue
        csv_path = _find_csv(layout.root, name)
        for line, row in _read_case_csv(csv_path):
            where = f"{csv_path} row {line}"
            try:
                record = _parse_row(row, kind, split, image_column, layout.case_of)
                key = (record["case"], record["abnormality_id"])
                if key in seen:
                    raise _RowProblem(f"abnormality {key[1]} of case {key[0]} is listed more than once")
                seen.add(key)
                image = layout.resolve(record["csv_path"], record["image_case"], role)
            except _RowProblem as problem:
                bad_cases[layout.case_of(row.get("image file path", ""))] = f"{where}: {problem}"
                bad_item(excluded, where, str(problem), skip_bad=skip_bad)
                continue
            record.update(image_path=str(image.resolve()), split_official=split, abnormality=kind)
            records.append(record)
    rows = _full_image_rows(records, bad_cases, excluded) if image_type == "full" else [
        dict(r, label=PATHOLOGY_TO_LABEL[r["pathology"]]) for r in records]
    seen_paths: set[str] = set()
    kept = []
    for row in rows:
        if row["image_path"] in seen_paths:
            bad_item(excluded, row["image_path"], f"image listed more than once (case {row['case']})",
                     skip_bad=skip_bad)
            continue
        seen_paths.add(row["image_path"])
        kept.append(dict(row, dataset=DATASET, roi="", magnification=""))
    columns = list(MANIFEST_COLUMNS) + list(EXTRA_COLUMNS)
    manifest = pd.DataFrame([{c: str(r[c]) for c in columns} for r in kept], columns=columns)
    manifest = manifest.sort_values(["patient_id", "laterality", "view", "abnormality", "split_official",
                                     "case", "abnormality_id", "image_path"], kind="stable")
    return AdapterResult(manifest.reset_index(drop=True), excluded)


# ----------------------------------------------------------------------------- split

def official_split(manifest: pd.DataFrame, *, val_size: float, seed: int) -> pd.DataFrame:
    """A copy of ``manifest`` with ``split``: test = the official test set; val = a seeded,
    patient-level, stratified ``val_size`` share of the official training patients; train = the rest.

    CBIS-DDSM's mass and calc sets can put one patient in the official training set of one and
    the test set of the other. Such a patient would leak, so this raises
    :class:`helpers.splits.LeakageError` naming them: drop them from the manifest (or load one
    abnormality type) before splitting.
    """
    if "split_official" not in manifest.columns:
        raise ValueError("manifest has no 'split_official' column: load it with load_cbis_ddsm")
    if not 0 <= val_size < 1:
        raise ValueError(f"val_size must be a fraction in [0, 1), got {val_size}")
    unknown = sorted(set(manifest["split_official"]) - {"train", "test"})
    if unknown:
        raise ValueError(f"split_official holds values other than train/test: {unknown}")
    train = manifest[manifest["split_official"] == "train"]
    test = manifest[manifest["split_official"] == "test"]
    both = sorted(set(train["patient_id"]) & set(test["patient_id"]))
    if both:
        raise LeakageError(f"{len(both)} patient(s) are in both the official train and test sets of "
                           f"CBIS-DDSM: {', '.join(both)}; drop them (or load one abnormality type) "
                           "before splitting")
    result = manifest.copy()
    result["split"] = result["split_official"]
    if val_size > 0 and len(train):
        drawn = patient_split(train, test_size=val_size, val_size=0.0, seed=seed)
        result.loc[drawn.index[drawn["split"] == "test"], "split"] = "val"
    check_no_leakage(result)
    return result
