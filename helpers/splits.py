"""Patient-level, stratified, seeded train/validation/test splits, saved as JSON and leak-checked.

Images of one patient (both breasts, both views) are strongly correlated; putting some of them in
training and others in test inflates every metric. So splits are drawn over *patients*, stratified
by the patient's most severe class, and checked for leakage when made and when loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.paths import write_text_atomic

SPLITS = ("train", "val", "test")
SPLIT_FILE_VERSION = 1
_SEVERITY = {"normal": 0, "abnormal": 1, "benign": 1, "malignant": 2}


class LeakageError(ValueError):
    """A patient (or an image) appears in more than one split."""


def _class_column(manifest: pd.DataFrame) -> str:
    return "target" if "target" in manifest.columns else "label"


def _patient_classes(manifest: pd.DataFrame) -> pd.Series:
    """The stratification class of each patient: the most severe class among its images."""
    column = _class_column(manifest)
    severity = manifest[column].map(lambda c: _SEVERITY.get(c, 0))
    order = manifest.assign(_severity=severity).sort_values("_severity", kind="stable")
    return order.groupby("patient_id", sort=True)[column].last()


def patient_split(
    manifest: pd.DataFrame, *, test_size: float, val_size: float, seed: int
) -> pd.DataFrame:
    """Return a copy of ``manifest`` with a ``split`` column (train/val/test), drawn by patient.

    Patients are stratified by their most severe class (``target`` if present, else ``label``);
    within each class they are shuffled with ``seed`` and the first ``test_size`` share goes to
    test, the next ``val_size`` share to validation, the rest to training (each split gets at
    least one patient of a class that has three or more). The result is leak-checked.
    """
    if not 0 < test_size < 1 or not 0 <= val_size < 1 or test_size + val_size >= 1:
        raise ValueError(f"test_size={test_size} and val_size={val_size} must be fractions summing below 1")
    if manifest.empty:
        raise ValueError("cannot split an empty manifest")
    classes = _patient_classes(manifest)
    if classes.nunique() < 2:
        raise ValueError(
            f"cannot make a stratified split: every patient has class {classes.iloc[0]!r}"
        )
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for cls in sorted(classes.unique()):
        patients = np.array(sorted(classes.index[classes == cls]))
        rng.shuffle(patients)
        n = len(patients)
        n_test = int(round(n * test_size))
        n_val = int(round(n * val_size))
        if n >= 3:
            n_test = max(n_test, 1)
            n_val = max(n_val, 1) if val_size > 0 else 0
        n_test = min(n_test, n - 1) if n > 1 else n_test
        n_val = min(n_val, n - n_test - 1) if n - n_test > 1 else 0
        for i, patient in enumerate(patients):
            assignment[patient] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return _with_split(manifest, assignment)


def _with_split(manifest: pd.DataFrame, assignment: dict[str, str]) -> pd.DataFrame:
    """A copy of ``manifest`` with each row's ``split`` its patient's (``assignment``), leak-checked."""
    result = manifest.copy()
    result["split"] = result["patient_id"].map(assignment)
    check_no_leakage(result)
    return result


def check_no_leakage(manifest: pd.DataFrame) -> None:
    """Raise :class:`LeakageError` if a patient or an image sits in more than one split."""
    if "split" not in manifest.columns:
        raise ValueError("manifest has no 'split' column: make one with patient_split first")
    unknown = set(manifest["split"].dropna()) - set(SPLITS)
    if unknown or manifest["split"].isna().any():
        raise ValueError(f"split column holds values other than {SPLITS}: {sorted(map(str, unknown))}")
    per_patient = manifest.groupby("patient_id")["split"].nunique()
    leaked = sorted(per_patient.index[per_patient > 1])
    if leaked:
        shown = ", ".join(leaked[:10]) + (" ..." if len(leaked) > 10 else "")
        raise LeakageError(f"{len(leaked)} patient(s) appear in more than one split: {shown}")
    per_image = manifest.groupby("image_path")["split"].nunique()
    leaked_images = sorted(per_image.index[per_image > 1])
    if leaked_images:
        raise LeakageError(
            f"{len(leaked_images)} image(s) appear in more than one split, e.g. {leaked_images[0]}"
        )


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per split and class, for lessons and reports."""
    column = _class_column(manifest)
    images = manifest.pivot_table(index="split", columns=column, values="image_path", aggfunc="count", fill_value=0)
    patients = manifest.groupby("split")["patient_id"].nunique().rename("patients")
    table = images.join(patients).reindex([s for s in SPLITS if s in images.index])
    table.columns.name = None
    return table


def save_split(manifest: pd.DataFrame, path: Path | str, *, seed: int, test_size: float, val_size: float) -> Path:
    """Write the patient assignment of a split manifest to JSON (atomically)."""
    check_no_leakage(manifest)
    patients = {
        split: sorted(manifest.loc[manifest["split"] == split, "patient_id"].unique().tolist())
        for split in SPLITS
    }
    payload = {
        "version": SPLIT_FILE_VERSION,
        "seed": seed,
        "test_size": test_size,
        "val_size": val_size,
        "manifest_fingerprint": manifest_fingerprint(manifest),
        "patients": patients,
    }
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _json_type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def read_split_file(path: Path | str) -> dict:
    """The content of a split file, checked: a ValueError names the file and what is wrong
    (line and column of a JSON syntax error, an entry of the wrong type, an unknown split).

    Two forms: what :func:`save_split` writes (``{"patients": {"train": [...], ...}, "seed": ...}``),
    and a user's own assignment ``{"train": [...], "val": [...], "test": [...]}``, returned as
    ``{"patients": {...}}``.

    A byte-order mark and any line ends (a file edited in another program) are accepted.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable split file ({error})") from error
    if not text.strip():
        raise ValueError(f"{path}: the split file is empty; delete it to make a new split")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a valid split file: JSON syntax error at line {error.lineno} "
                         f"column {error.colno}: {error.msg}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: a split file holds a JSON object {{\"patients\": {{...}}, ...}}, "
                         f"not {_json_type(payload)}")
    if "patients" not in payload and payload and set(payload) <= set(SPLITS):
        payload = {"patients": payload}  # a user's own assignment: {"train": [...], "val": [...], "test": [...]}
    if "patients" not in payload:
        raise ValueError(f"{path}: the split file has no 'patients' entry and is not a patient assignment "
                         f"{{\"train\": [...], \"val\": [...], \"test\": [...]}} (its keys: "
                         f"{', '.join(map(repr, payload)) or 'none'})")
    patients = payload["patients"]
    if not isinstance(patients, dict):
        raise ValueError(f"{path}: 'patients' must be an object {{\"train\": [...], \"val\": [...], "
                         f"\"test\": [...]}}, not {_json_type(patients)}")
    unknown = [split for split in patients if split not in SPLITS]
    if unknown:
        raise ValueError(f"{path}: unknown split {unknown[0]!r} in 'patients'; expected {list(SPLITS)}")
    for split, ids in patients.items():
        if not isinstance(ids, list):
            raise ValueError(f"{path}: 'patients.{split}' must be a list of patient ids, not {_json_type(ids)}")
        wrong = next((value for value in ids if not isinstance(value, str)), None)
        if wrong is not None:
            raise ValueError(f"{path}: 'patients.{split}' must be a list of strings (patient ids); "
                             f"found {_json_type(wrong)} {wrong!r}")
    for key, kinds in (("version", int), ("seed", int), ("test_size", (int, float)),
                       ("val_size", (int, float)), ("manifest_fingerprint", str)):
        if key in payload and (not isinstance(payload[key], kinds) or isinstance(payload[key], bool)):
            raise ValueError(f"{path}: {key!r} has the wrong type ({_json_type(payload[key])} {payload[key]!r})")
    if payload.get("version", SPLIT_FILE_VERSION) > SPLIT_FILE_VERSION:
        raise ValueError(f"{path}: split file version {payload['version']} is newer than this code's "
                         f"({SPLIT_FILE_VERSION})")
    return payload


def _assignment(path: Path, patients: dict[str, list[str]]) -> dict[str, str]:
    """Patient -> split from a split file's ``patients``; a patient listed twice is a LeakageError."""
    assignment: dict[str, str] = {}
    for split in SPLITS:
        for patient in patients.get(split, []):
            if patient in assignment:
                where = "twice in" if assignment[patient] == split else f"in both {assignment[patient]} and"
                raise LeakageError(f"{path}: patient {patient} listed {where} {split}")
            assignment[patient] = split
    return assignment


def _named(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def user_split(path: Path | str, manifest: pd.DataFrame, *, test_dataset: str | None = None) -> pd.DataFrame:
    """``manifest`` with the ``split`` column of a user's split file (e.g. a published split),
    checked against it: a ValueError names the file and every patient it names that the manifest
    lacks, every patient of the manifest it leaves out (an error rather than a silent exclusion:
    the split would no longer be the one published), a split it leaves empty; a patient in two
    splits is a LeakageError. Either form of :func:`read_split_file` is accepted.

    With ``test_dataset`` (an external test set) the file assigns train and val only: test
    patients in it are an error, since the test split is that dataset.
    """
    path = Path(path)
    assignment = _assignment(path, read_split_file(path)["patients"])
    given = set(manifest["patient_id"])
    unknown = sorted(set(assignment) - given)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} patient(s) of the split file are not in the data "
                         f"({len(given)} patients): {_named(unknown)}")
    missing = sorted(given - set(assignment))
    if missing:
        raise ValueError(f"{path}: {len(missing)} patient(s) of the data are in no split of the file: "
                         f"{_named(missing)}; assign each to train, val or test")
    expected = ("train", "val") if test_dataset else SPLITS
    if test_dataset and "test" in assignment.values():
        tested = sorted(p for p, split in assignment.items() if split == "test")
        raise ValueError(f"{path}: names test patients ({_named(tested)}), but the test split is the test "
                         f"dataset {test_dataset}: with a test dataset the file assigns train and val only")
    empty = [split for split in expected if split not in assignment.values()]
    if empty:
        raise ValueError(f"{path}: no patient in split(s) {empty}")
    return _with_split(manifest, assignment)


def load_split(path: Path | str, manifest: pd.DataFrame) -> pd.DataFrame:
    """Apply a saved split to ``manifest`` and leak-check it; errors name the file."""
    path = Path(path)
    assignment = _assignment(path, read_split_file(path)["patients"])
    missing = sorted(set(manifest["patient_id"]) - set(assignment))
    if missing:
        raise ValueError(f"{path}: {len(missing)} patient(s) of the manifest are in no split, e.g. {missing[0]}")
    return _with_split(manifest, assignment)


def manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash of the (image, patient, class) rows, to tell whether a saved split still fits.

    Image paths enter relative to the folder they share, so the same dataset in another place
    (a fresh cache, another machine) has the same fingerprint.
    """
    image_paths = [str(p) for p in manifest["image_path"]]
    root = os.path.commonpath(image_paths) if len(image_paths) > 1 else os.path.dirname(image_paths[0]) if image_paths else ""
    relative = [os.path.relpath(p, root) if root else p for p in image_paths]
    rows = sorted(zip(relative, manifest["patient_id"], manifest[_class_column(manifest)]))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def make_or_load_split(
    manifest: pd.DataFrame, path: Path | str, *, test_size: float, val_size: float, seed: int
) -> pd.DataFrame:
    """Load the split saved at ``path`` if it was made for this manifest and these settings, else make and save it.

    ``test_size=0``: train and val only (:func:`validation_split`), for an external test set.

    A malformed file at ``path`` is a ValueError naming it (see :func:`read_split_file`), not
    silently replaced.
    """
    path = Path(path)
    if path.exists():
        payload = read_split_file(path)
        same = (
            payload.get("seed") == seed
            and payload.get("test_size") == test_size
            and payload.get("val_size") == val_size
            and payload.get("manifest_fingerprint") == manifest_fingerprint(manifest)
        )
        if same:
            return load_split(path, manifest)
    result = (patient_split(manifest, test_size=test_size, val_size=val_size, seed=seed) if test_size
              else validation_split(manifest, val_size=val_size, seed=seed))
    save_split(result, path, seed=seed, test_size=test_size, val_size=val_size)
    return result


def validation_split(manifest: pd.DataFrame, *, val_size: float, seed: int) -> pd.DataFrame:
    """Train and val only, by patient, stratified and seeded as :func:`patient_split` draws its
    test split (``val_size`` of each class's patients): for data whose test set is another dataset."""
    result = patient_split(manifest, test_size=val_size, val_size=0.0, seed=seed)
    result["split"] = result["split"].replace({"test": "val"})
    return result


def naive_image_split(manifest: pd.DataFrame, *, test_size: float, seed: int) -> pd.DataFrame:
    """An image-level train/test split: what *not* to do, kept for the lesson on leakage."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(manifest))
    n_test = int(round(len(manifest) * test_size))
    split = np.where(np.isin(np.arange(len(manifest)), order[:n_test]), "test", "train")
    return manifest.assign(split=split)


def leaked_patients(manifest: pd.DataFrame) -> list[str]:
    """Patients whose images sit in more than one split (empty for a sound split)."""
    per_patient = manifest.groupby("patient_id")["split"].nunique()
    return sorted(per_patient.index[per_patient > 1])


def magnification_split(
    manifest: pd.DataFrame, *, test_magnification: str = "40X", test_size: float, val_size: float, seed: int
) -> pd.DataFrame:
    """A patient-level split that trains on the other magnifications and tests on one (BreakHis).

    Paper 004 (Abu Al-Haija 2020) trains on the 100X/200X/400X images and tests on the 40X
    images of the *same* patients, so every test patient's tissue was seen in training. Here
    patients are first split with :func:`patient_split` (same arguments); then train and val keep
    only their images *not* at ``test_magnification`` and test keeps only its images *at* it.
    The other rows are dropped (test patients' other magnifications, train/val patients'
    ``test_magnification`` images), so no patient appears in two splits and fewer images are used
    than in the paper. Returns the kept rows with a ``split`` column, leak-checked.
    """
    if "magnification" not in manifest.columns:
        raise ValueError("magnification_split needs a 'magnification' column (e.g. the BreakHis manifest)")
    found = sorted(set(manifest["magnification"].astype(str)))
    if test_magnification not in found:
        raise ValueError(f"no image at test_magnification {test_magnification!r}; the manifest has {found}")
    if len(found) < 2:
        raise ValueError(f"every image is at {test_magnification}: nothing is left to train on")
    result = patient_split(manifest, test_size=test_size, val_size=val_size, seed=seed)
    result = restrict_by_magnification(result, test_magnification)
    expected = [split for split in SPLITS if split != "val" or val_size > 0]
    empty = [split for split in expected if not (result["split"] == split).any()]
    if empty:
        raise ValueError(f"magnification_split left split(s) {empty} empty: too few patients or images "
                         f"at {test_magnification} / at the other magnifications")
    check_no_leakage(result)
    return result


def restrict_by_magnification(split_manifest: pd.DataFrame, test_magnification: str = "40X") -> pd.DataFrame:
    """Of a patient-level split, keep test images at ``test_magnification`` and train/val images
    at any other magnification (see :func:`magnification_split`)."""
    at_test_magnification = split_manifest["magnification"].astype(str) == test_magnification
    keep = (split_manifest["split"] == "test") == at_test_magnification
    return split_manifest[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Patient-grouped k-fold cross-validation (split "cv")
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fold:
    """One fold of a cross-validation: its patients are the test split; the other folds' patients
    train, with a validation split carved from them by patient."""

    repeat: int        # 1, 2, ... (repeat r draws its folds with seed + r - 1)
    fold: int          # 1 .. k
    seed: int          # the seed of this repeat's folds
    split: np.ndarray  # per manifest row: "train", "val" or "test"

    @property
    def name(self) -> str:
        """``fold_<k>``, or ``repeat_<r>_fold_<k>`` in runs of several repeats (a run's sub-folder)."""
        return f"fold_{self.fold}" if self.repeat == 1 else f"repeat_{self.repeat}_fold_{self.fold}"

    def apply(self, manifest: pd.DataFrame) -> pd.DataFrame:
        """``manifest`` (the one the fold was drawn from) with this fold's ``split`` column."""
        if len(manifest) != len(self.split):
            raise ValueError(f"fold {self.fold} was drawn for {len(self.split)} images, not {len(manifest)}")
        return manifest.assign(split=self.split)


def patient_folds(manifest: pd.DataFrame, *, n_folds: int, seed: int, dataset: str = "the data") -> pd.Series:
    """The fold (1 .. ``n_folds``) of each patient, indexed by patient id.

    scikit-learn's ``StratifiedGroupKFold`` over the images, grouped by patient and stratified by
    the patient's most severe class (as :func:`patient_split`), shuffled with ``seed``. Every fold
    must test at least one patient of every class: a class with fewer patients than folds is a
    ValueError naming ``dataset``, the class and its patient count.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"{dataset}: cv_folds must be an integer >= 2, got {n_folds!r}")
    if manifest.empty:
        raise ValueError(f"{dataset}: cannot cross-validate an empty manifest")
    classes = _patient_classes(manifest)
    if classes.nunique() < 2:
        raise ValueError(f"{dataset}: cannot cross-validate: every patient has class {classes.iloc[0]!r}")
    counts = classes.value_counts()
    few = counts[counts < n_folds]
    if len(few):
        names = ", ".join(f"{cls!r} has {count} patient(s)" for cls, count in few.items())
        raise ValueError(f"{dataset}: too few patients for {n_folds}-fold cross-validation: class {names}, "
                         f"and every fold must test at least one patient of each class; lower cv_folds "
                         f"to {int(few.min())} or fewer")
    y = manifest["patient_id"].map(classes).to_numpy()
    groups = manifest["patient_id"].to_numpy()
    folder = StratifiedGroupKFold(n_splits=int(n_folds), shuffle=True, random_state=int(seed))
    folds: dict[str, int] = {}
    for number, (_, test) in enumerate(folder.split(np.zeros(len(manifest)), y, groups), start=1):
        folds.update({patient: number for patient in groups[test]})
    result = pd.Series(folds, name="fold").sort_index()
    for number in range(1, int(n_folds) + 1):
        missing = sorted(set(counts.index) - set(classes[result.index[result == number]]))
        if missing:
            raise ValueError(f"{dataset}: fold {number} of {n_folds} has no patient of class {missing[0]!r} "
                             f"({int(counts[missing[0]])} patient(s) in all); lower cv_folds")
    return result


def cross_validation_folds(manifest: pd.DataFrame, *, n_folds: int, repeats: int, seed: int, val_size: float,
                           dataset: str = "the data") -> list[Fold]:
    """Every fold of ``repeats`` patient-grouped ``n_folds``-fold cross-validations, leak-checked.

    Repeat r draws its folds (:func:`patient_folds`) with seed ``seed + r - 1``. In each fold the
    fold's patients are the test split; of the others a ``val_size`` share of each class's
    patients is the validation split (stratified, seeded as :func:`patient_split`), the rest train.
    Each patient is tested exactly once per repeat.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"{dataset}: cv_repeats must be an integer >= 1, got {repeats!r}")
    if not 0 <= val_size < 1:
        raise ValueError(f"{dataset}: val_size={val_size} must be a fraction below 1")
    patients = manifest["patient_id"].to_numpy()
    result = []
    for repeat in range(1, int(repeats) + 1):
        repeat_seed = int(seed) + repeat - 1
        fold_of = manifest["patient_id"].map(patient_folds(manifest, n_folds=n_folds, seed=repeat_seed,
                                                           dataset=dataset)).to_numpy()
        for number in range(1, int(n_folds) + 1):
            split = np.where(fold_of == number, "test", "train").astype(object)
            rest = manifest[fold_of != number]
            if val_size > 0:
                carved = patient_split(rest, test_size=val_size, val_size=0.0, seed=repeat_seed)
                val_patients = set(carved.loc[carved["split"] == "test", "patient_id"])
                split[np.isin(patients, list(val_patients))] = "val"
            fold = Fold(repeat=repeat, fold=number, seed=repeat_seed, split=split)
            checked = fold.apply(manifest)
            check_no_leakage(checked)
            if val_size > 0 and not (split == "val").any():
                raise ValueError(f"{dataset}: fold {number} leaves no validation patient; use more patients "
                                 f"or lower cv_folds")
            untrained = sorted(set(checked[_class_column(checked)]) - set(checked.loc[split == "train", _class_column(checked)]))
            if untrained:
                raise ValueError(f"{dataset}: fold {number} leaves no training patient of class {untrained[0]!r}; "
                                 f"use more patients, a smaller val_size or fewer cv_folds")
            result.append(fold)
    return result
