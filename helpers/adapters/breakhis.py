"""BreakHis v1: 7,909 H&E histology PNGs of 82 patients at 40X, 100X, 200X and 400X.

Everything comes from the file name ``SOB_<B|M>_<subtype>-<year>-<slide id>-<magnification>-<seq>.png``
(e.g. ``SOB_B_A-14-22549AB-40-001.png``), checked against the class and magnification folders
it sits in. Pixels are not read.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd

from helpers.adapters import (
    AdapterResult,
    BadInputError,
    bad_item,
    is_clutter,
    require_folder,
    unfinished_download,
)

DATASET = "breakhis"
EXPECTED = ("BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<slide>/"
            "<40X|100X|200X|400X>/SOB_B_A-14-22549AB-40-001.png (pass the folder holding "
            "BreaKHis_v1, BreaKHis_v1 itself, or its breast/ folder)")

CLASSES: dict[str, str] = {"B": "benign", "M": "malignant"}
SUBTYPES: dict[str, tuple[str, str]] = {  # code -> (subtype, class code)
    "A": ("adenosis", "B"),
    "F": ("fibroadenoma", "B"),
    "PT": ("phyllodes_tumor", "B"),
    "TA": ("tubular_adenoma", "B"),
    "DC": ("ductal_carcinoma", "M"),
    "LC": ("lobular_carcinoma", "M"),
    "MC": ("mucinous_carcinoma", "M"),
    "PC": ("papillary_carcinoma", "M"),
}
MAGNIFICATIONS: tuple[str, ...] = ("40X", "100X", "200X", "400X")
_FILE_NAME = re.compile(r"^SOB_(?P<cls>[A-Z]+)_(?P<code>[A-Z]+)-(?P<year>\d+)-(?P<slide_id>[A-Za-z0-9]+)"
                        r"-(?P<mag>\d+)-(?P<seq>\d+)\.(?i:png)$")


def find_breast_folder(root: Path) -> Path:
    """The ``breast`` folder (holding ``benign/`` and ``malignant/``) at or below ``root``."""
    candidates = [root / "BreaKHis_v1" / "histology_slides" / "breast",
                  root / "histology_slides" / "breast", root / "breast", root]
    for folder in candidates:
        if (folder / "benign").is_dir() and (folder / "malignant").is_dir():
            return folder
    raise FileNotFoundError(f"breakhis: no breast/benign and breast/malignant folders found in {root}; "
                            f"expected {EXPECTED}")


def parse_file_name(path: Path, class_folder: str) -> dict[str, str]:
    """The manifest fields of one image; BadInputError if the name or its folders disagree."""
    match = _FILE_NAME.match(path.name)
    if match is None:
        raise BadInputError(f"{path}: file name is not like 'SOB_B_A-14-22549AB-40-001.png'")
    cls, code, mag = match["cls"], match["code"], f"{match['mag']}X"
    if cls not in CLASSES:
        raise BadInputError(f"{path}: unknown class code {cls!r}; expected B or M")
    if code not in SUBTYPES:
        raise BadInputError(f"{path}: unknown subtype code {code!r}; expected one of {list(SUBTYPES)}")
    subtype, subtype_class = SUBTYPES[code]
    if subtype_class != cls:
        raise BadInputError(f"{path}: subtype {code} ({subtype}) is {CLASSES[subtype_class]}, "
                            f"but the file name says class {cls}")
    if CLASSES[cls] != class_folder:
        raise BadInputError(f"{path}: file name says {CLASSES[cls]} but it is in the "
                            f"{class_folder!r} folder")
    if mag not in MAGNIFICATIONS:
        raise BadInputError(f"{path}: unknown magnification {mag}; expected one of {list(MAGNIFICATIONS)}")
    if path.parent.name != mag:
        raise BadInputError(f"{path}: file name says {mag} but it is in the folder "
                            f"{path.parent.name!r}")
    if path.parents[2].name.lower() != subtype:
        raise BadInputError(f"{path}: file name says subtype {code} ({subtype}) but it is in the subtype "
                            f"folder {path.parents[2].name!r}")
    slide = f"SOB_{cls}_{code}_{match['year']}-{match['slide_id']}"
    if path.parent.parent.name.lower() != slide.lower():
        raise BadInputError(f"{path}: file name says slide {slide} but it is in the slide folder "
                            f"{path.parent.parent.name!r}")
    return {"image_path": str(path), "label": CLASSES[cls],
            "patient_id": f"{match['year']}-{match['slide_id']}", "dataset": DATASET,
            "view": "", "laterality": "", "roi": "", "magnification": mag,
            "subtype": subtype, "subtype_code": code, "slide": path.parent.parent.name}


def load_breakhis(root: str | Path | None, *, skip_bad: bool = False,
                  magnifications: str | tuple[str, ...] | list[str] | None = None) -> AdapterResult:
    """The BreakHis manifest: one row per PNG under ``breast/{benign,malignant}``.

    Columns: label benign/malignant (from the file name, checked against the class folder);
    patient_id ``<year>-<slide id>`` ("14-22549AB"), without the subtype, so that the patient
    filed under two subtypes (14-13412, ductal and lobular carcinoma) stays one patient;
    magnification "40X"/"100X"/"200X"/"400X" (checked against its folder); view, laterality and
    roi "". Extra columns: ``subtype`` (adenosis ... papillary_carcinoma), ``subtype_code``
    (A, F, PT, TA, DC, LC, MC, PC) and ``slide`` (the slide folder, e.g. "SOB_B_A_14-22549AB").

    ``magnifications=("40X",)`` keeps only those; the others are listed in ``excluded`` as one
    entry per magnification with its count. Files other than PNG are listed in ``excluded``
    unless they are operating-system clutter (Thumbs.db, .DS_Store, ._*: ignored). A malformed
    file name, an unknown class or subtype code, a name that disagrees with its folders (class,
    subtype, slide, magnification), a duplicated file name or an unfinished download (``.part``,
    ``.crdownload``) raise ``BadInputError`` (or are listed with ``skip_bad=True``).
    """
    if isinstance(magnifications, str):
        magnifications = (magnifications,)
    if magnifications is not None:
        unknown = sorted(set(magnifications) - set(MAGNIFICATIONS))
        if unknown or not magnifications:
            raise ValueError(f"breakhis: magnifications must be a non-empty subset of "
                             f"{list(MAGNIFICATIONS)}, got {list(magnifications)}")
    folder = find_breast_folder(require_folder(root, DATASET, EXPECTED))
    excluded: list[tuple[str, str]] = []
    records: list[dict[str, str]] = []
    seen: dict[str, Path] = {}
    left_out: Counter[str] = Counter()
    for class_folder in ("benign", "malignant"):
        for path in sorted(p for p in (folder / class_folder).rglob("*") if p.is_file()):
            if is_clutter(path):
                continue
            if unfinished := unfinished_download(path):
                bad_item(excluded, path, unfinished, skip_bad=skip_bad)
                continue
            if path.suffix.lower() != ".png":
                excluded.append((str(path), "not a PNG image; left out"))
                continue
            if path.name.lower() in seen:
                bad_item(excluded, path, f"duplicated image: {seen[path.name.lower()]} has the same file name",
                         skip_bad=skip_bad)
                continue
            try:
                record = parse_file_name(path, class_folder)
            except BadInputError as error:
                bad_item(excluded, path, str(error).removeprefix(f"{path}: "), skip_bad=skip_bad)
                continue
            seen[path.name.lower()] = path
            if magnifications is not None and record["magnification"] not in magnifications:
                left_out[record["magnification"]] += 1
                continue
            records.append(record)
    for mag in MAGNIFICATIONS:
        if left_out[mag]:
            excluded.append((str(folder), f"{left_out[mag]} image(s) at {mag} left out: "
                                          f"magnifications={tuple(magnifications)}"))
    if not records:
        raise FileNotFoundError(f"breakhis: no usable images found under {folder}"
                                + (f" at {list(magnifications)}" if magnifications else "")
                                + f"; expected {EXPECTED}")
    manifest = pd.DataFrame(records).sort_values("image_path", kind="stable").reset_index(drop=True)
    return AdapterResult(manifest, excluded)
