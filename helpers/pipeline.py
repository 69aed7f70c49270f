"""The steps a lesson notebook calls, in order: data -> split -> arrays -> model -> metrics.

Each function is a thin composition of the stage modules (datasets, splits, preprocessing,
models, training, evaluation), so that notebook cells stay one line each.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from helpers import datasets, evaluation, paths, preprocessing, splits
from helpers.plan import FUSION, RunSettings


@dataclass
class PreparedData:
    """Arrays and labels of one experiment, split by patient."""

    settings: RunSettings
    manifest: pd.DataFrame          # one row per kept image, with `target` and `split`
    class_names: list[str]
    x: dict[str, np.ndarray]        # split -> (N, H, W, 3) clean images in [0, 1], float16
    y: dict[str, np.ndarray]        # split -> (N,) int class indices
    patients: dict[str, np.ndarray]  # split -> (N,) patient ids
    skipped: list[tuple[str, str]]    # (image file, reason): unreadable images left out
    excluded: list[tuple[str, str]]   # (item, reason): left out by the adapter or the task
    split_file: Path
    arrays_from_cache: bool


def dataset_options(settings: RunSettings) -> dict[str, Any]:
    """The adapter's options: the profile's, plus ``skip_bad`` for the papers' datasets."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.dataset_options.items()}
    if settings.skip_bad and settings.dataset not in datasets.EMBEDDED_DATASETS:
        options["skip_bad"] = True
    return options


TEST_PREFIX = "test:"
"""Prefix of an external test set's patient ids (``test:mias-P001``). No patient id of the training
data may start with it, so that the patients of the two can never share an id (the same dataset
in two folders included)."""
TRAINING, TEST = "training", "test"
"""Values of the ``source`` column an external test set adds: which dataset a row comes from."""


def test_dataset_options(settings: RunSettings) -> dict[str, Any]:
    """The external test dataset's adapter options: the run's when it is the same dataset (another
    folder of it), else only ``skip_bad`` (for the papers' datasets)."""
    if settings.test_dataset == settings.dataset:
        return dataset_options(settings)
    names = datasets.pooled_names(settings.test_dataset)
    if settings.skip_bad and not set(names) <= set(datasets.EMBEDDED_DATASETS):
        return {"skip_bad": True}
    return {}


def _task_rows(manifest: pd.DataFrame, task: str) -> pd.DataFrame:
    """The rows of ``task``'s labels with their ``target`` class (none need be left)."""
    mapping = datasets.TASKS[task]
    rows = manifest[manifest["label"].isin(list(mapping))].copy()
    rows["target"] = rows["label"].map(mapping)
    return rows.reset_index(drop=True)


def load_task_data(settings: RunSettings) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The task's rows of the dataset (every dataset of a ``+``-joined pool), with their ``target``,
    and what the adapters left out. A dataset of a pool that gives the task no image is an error
    naming it (a class missing from one of them is fine).

    With an external test set (``settings.test_dataset``) its task rows follow, their patient ids
    prefixed :data:`TEST_PREFIX` and a ``source`` column telling the two apart; an image found in
    both (same content) is an error, or with ``skip_bad`` left out and listed. That both have each
    of the task's classes is checked once ROI rules have been applied (:func:`check_test_classes`).
    """
    loaded = datasets.load_with_exclusions(settings.dataset, settings.data_dir, **dataset_options(settings))
    manifest = datasets.select_task(loaded.manifest, settings.task)
    excluded = list(loaded.excluded)
    members = datasets.pooled_names(settings.dataset)
    idle = [name for name in members if len(members) > 1 and not manifest["dataset"].eq(name).any()]
    if idle:
        found = {name: sorted(set(loaded.manifest.loc[loaded.manifest["dataset"] == name, "label"])) for name in idle}
        raise ValueError(f"pooled dataset {settings.dataset!r}: {', '.join(idle)} give(s) no image to task "
                         f"{settings.task!r} (labels found: "
                         + "; ".join(f"{name}: {', '.join(labels) or 'none'}" for name, labels in found.items())
                         + f"); the task uses {sorted(datasets.TASKS[settings.task])}")
    if settings.test_dataset is None:
        return manifest, excluded
    clash = sorted(p for p in set(manifest["patient_id"]) if str(p).startswith(TEST_PREFIX))
    if clash:
        raise ValueError(f"dataset {settings.dataset!r}: patient id {clash[0]!r} starts with {TEST_PREFIX!r}, "
                         f"which marks the test dataset's patients")
    test = datasets.load_with_exclusions(settings.test_dataset, settings.test_data_dir, **test_dataset_options(settings))
    test_rows = _task_rows(test.manifest, settings.task)
    test_rows["patient_id"] = [f"{TEST_PREFIX}{patient}" for patient in test_rows["patient_id"]]
    combined = pd.concat([manifest.assign(source=TRAINING), test_rows.assign(source=TEST)], ignore_index=True)
    excluded += test.excluded
    combined = datasets.check_image_files(combined, excluded, skip_bad=settings.skip_bad,
                                          source=f"dataset {settings.dataset!r} and test dataset "
                                                 f"{settings.test_dataset!r} ({settings.test_data_dir})")
    return combined, excluded


def check_test_classes(settings: RunSettings, manifest: pd.DataFrame) -> None:
    """With an external test set, each of the task's classes must be in the training data and in
    the test set (after what was left out): otherwise a ValueError naming the dataset and the
    classes it lacks. Nothing changes the task silently."""
    if settings.test_dataset is None:
        return
    classes = sorted(set(datasets.TASKS[settings.task].values()))
    for role, name, folder in ((TRAINING, settings.dataset, settings.data_dir),
                               (TEST, settings.test_dataset, settings.test_data_dir)):
        found = set(manifest.loc[manifest["source"] == role, "target"])
        missing = [c for c in classes if c not in found]
        if missing:
            what = "test dataset" if role == TEST else "dataset"
            raise ValueError(f"{what} {name!r} ({folder or 'embedded'}) has no image of class(es) {missing} of task "
                             f"{settings.task!r} (it has {sorted(found) or 'none'}, after what was left out: "
                             f"{len(manifest.attrs.get('excluded', []))} item(s) listed); test on a dataset with "
                             f"each of {classes}, or choose a task both have")


def load_manifest(settings: RunSettings) -> pd.DataFrame:
    """The dataset's manifest restricted to the task's classes, with a `target` column: every
    dataset of a pool, and an external test set's rows after the others (:func:`load_task_data`).

    What was left out on the way (by the adapter, or for want of a lesion position when ROI
    patches are asked for) is in ``manifest.attrs["excluded"]`` as (item, reason) pairs. With ROI
    patches, each lesion-free row gets a patch radius drawn from its dataset's lesion radii and a
    position seed from the run seed (:func:`helpers.preprocessing.assign_normal_radii`), so normal
    patches are drawn like lesion patches.
    """
    manifest, excluded = load_task_data(settings)
    if uses_roi_patches(settings, manifest):
        # a lesion patch needs the lesion's position; a normal image's patch is drawn like one
        unplaced = manifest["roi"].eq("") & manifest["label"].ne("normal")
        excluded += [(path, f"{label} image without lesion coordinates: no ROI patch can be cut")
                     for path, label in zip(manifest.loc[unplaced, "image_path"], manifest.loc[unplaced, "label"])]
        manifest = manifest[~unplaced].reset_index(drop=True)
        manifest = preprocessing.assign_normal_radii(manifest, settings.seed)
    manifest.attrs["excluded"] = excluded
    return manifest


def uses_roi_patches(settings: RunSettings, manifest: pd.DataFrame) -> bool:
    """ROI patches only where asked for and where the dataset gives lesion positions at all.

    Datasets whose images are already patches or slides (BreakHis, CBIS-DDSM cropped ROIs,
    the CBIS sample) carry no positions; their whole images are used.
    """
    return bool(settings.use_roi and manifest["roi"].ne("").any())


def class_names_for(manifest: pd.DataFrame) -> list[str]:
    """Class names in index order, from least to most severe (the positive class is last)."""
    order = ["normal", "abnormal", "benign", "malignant"]
    present = set(manifest["target"])
    return [name for name in order if name in present]


def split_file_for(settings: RunSettings, manifest: pd.DataFrame) -> Path:
    """Where the run's split is kept: the user's ``split_file``, else a file in the cache named by
    the dataset, task, seed and data (an external test set's: the training data's train/val split)."""
    if settings.split_file is not None:
        return Path(settings.split_file)
    part = ""
    if settings.split == "external":
        manifest, part = manifest[manifest["source"] == TRAINING], "trainval-"
    key = splits.manifest_fingerprint(manifest)
    name = f"{settings.dataset}-{settings.task}-seed{settings.seed}-{part}{key[:10]}.json"
    return paths.cache_dir() / "splits" / name


def external_split(settings: RunSettings, manifest: pd.DataFrame, split_file: Path) -> pd.DataFrame:
    """Split "external": the training data's patients in train and val (the user's split file, or
    a seeded, stratified draw by patient saved to ``split_file``), every test-set image in test."""
    training = manifest[manifest["source"] == TRAINING]
    if settings.split_file is not None:
        training = splits.user_split(split_file, training, test_dataset=settings.test_dataset)
    else:
        training = splits.make_or_load_split(training, split_file, test_size=0.0, val_size=settings.val_size,
                                             seed=settings.seed)
    result = pd.concat([training, manifest[manifest["source"] == TEST].assign(split="test")], ignore_index=True)
    splits.check_no_leakage(result)
    return result


def split_manifest(settings: RunSettings, manifest: pd.DataFrame, split_file: Path) -> pd.DataFrame:
    """Add the ``split`` column by ``settings.split`` (see ``plan.SPLIT_METHODS``), leak-checked.

    "patient": a seeded, stratified patient-level split saved to ``split_file`` and reloaded on
    later runs. "by-magnification": the same, then test keeps only 40X images and train/val the
    others (paper 004). "official": CBIS-DDSM's own train/test split, val carved from train.
    "external": train/val from the dataset, test the external test set (:func:`external_split`).
    "file": the user's split file (``split_file``), checked against the manifest.
    "cv": fold 1 of the run's patient-grouped k-fold cross-validation (:func:`cv_folds`); the
    lesson's single-split steps read it as one held-out split, :func:`cross_validate` uses every fold.
    """
    if settings.split == "cv":
        return cv_folds(settings, manifest)[0].apply(manifest)
    if settings.split == "external":
        return external_split(settings, manifest, split_file)
    if settings.split == "file":
        return splits.user_split(split_file, manifest)
    if settings.split == "official":
        from helpers.adapters import cbis_ddsm

        return cbis_ddsm.official_split(manifest, val_size=settings.val_size, seed=settings.seed)
    result = splits.make_or_load_split(
        manifest, split_file, test_size=settings.test_size, val_size=settings.val_size, seed=settings.seed
    )
    if settings.split == "by-magnification":
        result = splits.restrict_by_magnification(result, "40X")
    return result


def order_by_split(manifest: pd.DataFrame) -> pd.DataFrame:
    """``manifest``'s rows grouped by split (train, val, test; each split's rows in their order), so
    that each split of the prepared arrays is one contiguous slice: a view of the (memory-mapped)
    cache, not a copy."""
    rank = manifest["split"].map({split: i for i, split in enumerate(splits.SPLITS)}).to_numpy()
    ordered = manifest.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True)
    ordered.attrs = dict(manifest.attrs)
    return ordered


def split_rows(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows of ``array`` where ``mask`` is true: a slice (a view, nothing read) where they are
    contiguous, as :func:`order_by_split` arranges, else a copy of those rows."""
    where = np.flatnonzero(mask)
    if len(where) and where[-1] - where[0] + 1 == len(where):
        return array[where[0]:where[-1] + 1]
    return array[where]


def prepare_data(settings: RunSettings, *, progress: bool = True, on_error: str = "raise") -> PreparedData:
    """Load the manifest, split it by patient (saved JSON, leak-checked), prepare cached arrays.

    The manifest is ordered by split first (:func:`order_by_split`), so ``x[split]`` is a slice of
    the cached array: a memory-mapped cache is read batch by batch later, never copied whole.
    """
    manifest = load_manifest(settings)
    check_test_classes(settings, manifest)
    excluded = list(manifest.attrs.get("excluded", []))
    split_file = split_file_for(settings, manifest)
    manifest = order_by_split(split_manifest(settings, manifest, split_file))
    prepared = preprocessing.prepare_arrays(
        manifest,
        settings.preset,
        image_size=settings.image_size,
        use_roi=uses_roi_patches(settings, manifest),
        on_error="skip" if settings.skip_bad else on_error,
        progress=progress,
    )
    kept = prepared.manifest.reset_index(drop=True)
    if settings.split == "cv" and len(kept) < len(manifest):  # images were skipped: fold the kept ones
        kept = split_manifest(settings, kept, split_file)
    splits.check_no_leakage(kept)
    class_names = class_names_for(kept)
    index = {name: i for i, name in enumerate(class_names)}
    x, y, patients = {}, {}, {}
    for split in splits.SPLITS:
        mask = (kept["split"] == split).to_numpy()
        x[split] = split_rows(prepared.x, mask)
        y[split] = kept.loc[mask, "target"].map(index).to_numpy(dtype=np.int64)
        patients[split] = kept.loc[mask, "patient_id"].to_numpy()
        if len(y[split]) == 0:
            if split == "test" and settings.test_dataset is not None:
                raise ValueError(f"the test dataset {settings.test_dataset!r} ({settings.test_data_dir}) "
                                 f"has no usable image for task {settings.task!r}")
            raise ValueError(f"the {split} split of {settings.dataset} is empty: use more patients")
    return PreparedData(
        settings=settings,
        manifest=kept,
        class_names=class_names,
        x=x,
        y=y,
        patients=patients,
        skipped=list(prepared.skipped),
        excluded=excluded,
        split_file=split_file,
        arrays_from_cache=prepared.from_cache,
    )


def data_summary(data: PreparedData) -> pd.DataFrame:
    """Images per split and class, and patients per split."""
    return splits.split_summary(data.manifest)


def left_out(data: PreparedData) -> pd.DataFrame:
    """Every image or label row left out of the experiment, and why (empty when none)."""
    rows = [{"item": Path(p).name, "stage": "dataset", "reason": r} for p, r in data.excluded]
    rows += [{"item": Path(p).name, "stage": "preprocessing", "reason": r} for p, r in data.skipped]
    return pd.DataFrame(rows, columns=["item", "stage", "reason"])


def data_sources(manifest: pd.DataFrame) -> list[dict[str, Any]]:
    """Images and patients per dataset and role ("training": train and val, or every split;
    "test": an external test set), in the order the data was loaded."""
    roles = manifest["source"] if "source" in manifest.columns else pd.Series(TRAINING, index=manifest.index)
    rows = []
    for (role, name), part in manifest.groupby([roles, manifest["dataset"]], sort=False):
        rows.append({"role": role, "dataset": name, "images": int(len(part)),
                     "patients": int(part["patient_id"].nunique())})
    return rows


def run_record(
    settings: RunSettings,
    data: PreparedData,
    *,
    run_name: str,
    notebook: str,
    weights_description: str,
    classifier: str = "network",
) -> dict[str, Any]:
    """The `run` section of metrics.json: which data, weights and profile produced the numbers."""
    from helpers import models

    return {
        "name": run_name,
        "notebook": notebook,
        "profile": settings.profile,
        "study": settings.study,
        "dataset": settings.dataset,
        "data_dir": settings.data_dir,
        "dataset_options": settings.dataset_options,
        "test_dataset": settings.test_dataset,
        "test_data_dir": settings.test_data_dir,
        "split_file": settings.split_file,
        "data_sources": data_sources(data.manifest),
        "data_fingerprint": splits.manifest_fingerprint(data.manifest),
        "task": settings.task,
        "classes": data.class_names,
        "backbone": settings.backbone,
        "classifier": classifier,
        "head": settings.head,
        "weights": weights_description,
        "normalisation": settings.normalisation,
        "normalisation_applied": models.describe_normalisation(settings.backbone, settings.normalisation),
        "cache_features": settings.cache_features,
        "freeze": settings.freeze,
        "optimiser": settings.optimiser,
        "loss": settings.loss,
        "learning_rate": settings.learning_rate,
        "augmentation": settings.augmentation,
        "offline_expansion": settings.offline_expansion,
        "fine_tune_epochs": settings.fine_tune_epochs,
        "split": settings.split,
        "cv_folds": settings.cv_folds,
        "cv_repeats": settings.cv_repeats,
        "image_size": list(settings.image_size),
        "use_roi": settings.use_roi,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "preset": settings.preset,
        "n_train": int(len(data.y["train"])),
        "n_val": int(len(data.y["val"])),
        "n_test": int(len(data.y["test"])),
        "patients_train": int(len(set(data.patients["train"]))),
        "patients_val": int(len(set(data.patients["val"]))),
        "patients_test": int(len(set(data.patients["test"]))),
        "skipped": [{"image_path": Path(p).name, "reason": r} for p, r in data.skipped],
        "excluded": [{"item": Path(p).name, "reason": r} for p, r in data.excluded],
        "roi_patches": uses_roi_patches(settings, data.manifest),
        "scaled_down": list(settings.scaled_down),
        **accelerator_record(settings),
    }


def accelerator_record(settings: RunSettings) -> dict[str, Any]:
    """How the run computes, as resolved on this machine: the dtype policy (``precision``), XLA
    (``jit_compile``), the batch-preparing threads and the distribution with its devices."""
    from helpers import training

    return {"precision": training.resolve_precision(settings.precision),
            "jit_compile": training.resolve_jit_compile(settings.jit_compile),
            "data_workers": training.resolve_workers(settings.data_workers),
            "distribution": settings.distribution,
            "devices": len(training.distribution_devices(settings.distribution))}


def build_model(settings: RunSettings, data: PreparedData) -> "keras.Model":
    """The classifier of the run: its backbone, head, weights and freezing, seeded, under the run's
    dtype policy (``precision``) and in its distribution scope (``distribution``)."""
    from helpers import models, training

    training.set_determinism(settings.seed)
    training.apply_precision(settings.precision)
    with training.distribution_scope(settings.distribution):
        return models.build_classifier(settings.backbone, head=settings.head, weights=settings.weights,
                                       freeze=settings.freeze, input_shape=(*settings.image_size, 3),
                                       num_classes=len(data.class_names), seed=settings.seed,
                                       normalisation=settings.normalisation)


def make_augmenter(settings: RunSettings):
    """The run's augmentation scheme as a seeded callable for training batches (None for "none")."""
    from helpers import augmentation

    if settings.augmentation == "none":
        return None
    return augmentation.build_augmenter(settings.augmentation, image_size=settings.image_size,
                                        seed=settings.seed)


def training_arrays(settings: RunSettings, data: PreparedData, augmenter) -> tuple[np.ndarray, np.ndarray]:
    """The training split, expanded offline ``settings.offline_expansion`` times (paper 000),
    after the split and on the training split only."""
    from helpers import augmentation

    x, y = data.x["train"], data.y["train"]
    if settings.offline_expansion <= 1:
        return x, y
    if augmenter is None:
        raise ValueError(f"offline_expansion={settings.offline_expansion} needs an augmentation scheme, "
                         f"but the run's augmentation is 'none'")
    split = data.manifest.loc[data.manifest["split"] == "train", "split"]  # the rows of x["train"]
    x, y, _ = augmentation.expand_offline(x, y, data.patients["train"], factor=settings.offline_expansion,
                                          augmenter=augmenter, split=split)
    return x, y


def train_model(settings: RunSettings, model: "keras.Model", data: PreparedData,
                run_dir: Path | str, *, verbose: int | str = 2) -> pd.DataFrame:
    """Compile with the recipe's optimiser and loss, then fit with augmentation on the training
    split only, class weights, the best-``val_loss`` checkpoint and optional fine-tuning phase.

    With ``settings.cache_features`` (a frozen base) the base's features are computed once per
    image and only the head is trained on them (:func:`helpers.training.split_at_backbone`); the
    whole model, with the trained head, is what is kept. A frozen *random* base first gets its
    batch-norm statistics from the training images (:func:`helpers.training.calibrate_batch_norm`).
    """
    from helpers import training

    trained = model
    x_train, y_train = data.x["train"], data.y["train"]
    x_val = data.x["val"]
    augmenter = None
    if settings.cache_features:
        with training.distribution_scope(settings.distribution):
            features, trained = training.split_at_backbone(model)
        if settings.weights is None:  # random features: batch norm set from the training images
            training.calibrate_batch_norm(features, x_train, batch_size=settings.batch_size)
        x_train = training.predict_batches(features, x_train, batch_size=settings.batch_size)
        x_val = training.predict_batches(features, x_val, batch_size=settings.batch_size)
    else:
        augmenter = make_augmenter(settings)
        x_train, y_train = training_arrays(settings, data, augmenter)
    history = fit_classifier(settings, trained, x_train, y_train, x_val, data.y["val"], run_dir,
                             augmenter=augmenter, verbose=verbose)
    save_network(settings, model, run_dir)
    return history


def fit_classifier(settings: RunSettings, trained: "keras.Model", x_train: np.ndarray, y_train: np.ndarray,
                   x_val: np.ndarray, y_val: np.ndarray, run_dir: Path | str, *, augmenter=None,
                   verbose: int | str = 2) -> pd.DataFrame:
    """Compile ``trained`` (a whole model, or the head on cached features) with the recipe's
    optimiser and loss and fit it with class weights, the best-``val_loss`` weights kept and the
    optional fine-tuning phase; the history (also ``history.csv`` in ``run_dir``)."""
    from helpers import training

    training.compile_classifier(trained, optimiser=settings.optimiser, learning_rate=settings.learning_rate,
                                loss=settings.loss, weight_decay=settings.weight_decay,
                                momentum=0.9 if settings.momentum is None else settings.momentum,
                                jit_compile=settings.jit_compile,
                                run_eagerly=settings.run_eagerly, distribution=settings.distribution)
    return training.train(trained, x_train, y_train, x_val, y_val,
                          epochs=settings.epochs, batch_size=settings.batch_size, run_dir=Path(run_dir),
                          seed=settings.seed, class_weight=training.class_weights(y_train),
                          augment=augmenter, fine_tune_epochs=settings.fine_tune_epochs,
                          fine_tune_learning_rate=settings.fine_tune_learning_rate, verbose=verbose,
                          save_model=False, workers=settings.data_workers,
                          distribution=settings.distribution)


HEAD_WEIGHTS_FILE = "head.weights.h5"


def network_file(settings: RunSettings) -> str:
    """The file a run keeps its trained network in (when ``settings.save_model``).

    A frozen pretrained base is exactly its weights file, which the settings name: only the
    head's weights are kept (``head.weights.h5``, a few MB instead of VGG19's 80), and the network
    is rebuilt from the settings when reused. Anything else is saved whole, without optimiser
    state (``best.keras``).
    """
    from helpers import training

    frozen_pretrained = (settings.freeze == "base" and settings.weights is not None
                         and settings.backbone != FUSION)
    return HEAD_WEIGHTS_FILE if frozen_pretrained else training.BEST_MODEL_FILE


def save_network(settings: RunSettings, model: "keras.Model", run_dir: Path | str) -> Path | None:
    """Keep the trained ``model`` in ``run_dir`` as :func:`network_file` says, atomically; only
    where ``settings.save_model`` (a run a later run reuses, or ``SAVE_MODEL = True``)."""
    import shutil
    import tempfile

    from helpers import training

    if not settings.save_model:
        return None
    target = Path(run_dir) / network_file(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".save-", dir=target.parent))
    try:
        written = work / target.name  # Keras wants the file name's own suffix (.keras, .weights.h5)
        if target.name == HEAD_WEIGHTS_FILE:
            training.split_at_backbone(model)[1].save_weights(str(written))
        else:
            training.save_without_optimizer(model, written)
        os.replace(written, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load_network(settings: RunSettings, data: PreparedData, path: Path | str) -> "keras.Model":
    """A network :func:`save_network` kept: ``best.keras`` as saved, or the settings' network
    rebuilt (its frozen base from its weights file) with the head's weights from ``path``."""
    from helpers import backend  # noqa: F401  (imports Keras quietly)
    import keras

    from helpers import models, training  # noqa: F401 - models registers ImageNormalisation

    path = Path(path)
    training.apply_precision(settings.precision)  # a saved model keeps its layers' own policies
    if path.name != HEAD_WEIGHTS_FILE:
        return keras.saving.load_model(path, compile=False)
    model = build_model(settings, data)
    training.split_at_backbone(model)[1].load_weights(str(path))
    return model


def write_metrics(run_dir: Path | str, record: dict[str, Any], results: dict[str, Any]) -> Path:
    """Write ``metrics.json`` (schema-versioned, atomic) into ``run_dir``."""
    payload = {"run": record, **results}
    return evaluation.write_metrics_json(Path(run_dir) / "metrics.json", payload)


def write_predictions(run_dir: Path | str, data: PreparedData, y_prob: np.ndarray) -> Path:
    """``predictions.csv``: each test image's class probabilities (image file name, patient,
    true class), so that two runs on the same test split can be compared pair by pair."""
    test = data.manifest[data.manifest["split"] == "test"]
    return evaluation.write_predictions(Path(run_dir) / evaluation.PREDICTIONS_FILE, data.y["test"], y_prob,
                                        data.class_names, images=[Path(p).name for p in test["image_path"]],
                                        patient_ids=data.patients["test"])


def metrics_table(results: dict[str, Any]) -> pd.DataFrame:
    """Image- and patient-level metrics with confidence intervals, rounded for display."""
    rows = []
    for level in ("image_level", "patient_level"):
        block = results.get(level)
        if not block:
            continue
        for metric in evaluation.METRIC_NAMES:
            entry = block[metric]
            rows.append({"level": level.replace("_", " "), "metric": metric, "value": entry["value"],
                         "ci_low": entry["ci_low"], "ci_high": entry["ci_high"]})
    return pd.DataFrame(rows).set_index(["level", "metric"]).round(3)


def per_class_table(results: dict[str, Any]) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support, then the macro and support-weighted averages
    (as scikit-learn's classification_report), per image and per patient, rounded for display."""
    rows = []
    for level in ("image_level", "patient_level"):
        block = (results.get(level) or {}).get("per_class")
        if not block:
            continue
        for name in [*results[level]["class_names"], *evaluation.AVERAGES]:
            rows.append({"level": level.replace("_", " "), "class": name,
                         **{key: block[name][key] for key in evaluation.PER_CLASS_KEYS}})
    if not rows:
        raise ValueError("results have no per_class block (evaluate() adds it; metrics.json before schema 3 lacks it)")
    table = pd.DataFrame(rows).set_index(["level", "class"])
    return table.astype({"precision": "float64", "recall": "float64", "f1": "float64"}).round(3)


def figure_title(settings: RunSettings, what: str) -> str:
    """A figure title that says what is shown and which data, weights, profile and Keras backend produced it."""
    import keras

    from helpers.models import describe_weights

    from helpers.reporting import data_named

    data = data_named({"dataset": settings.dataset, "test_dataset": settings.test_dataset,
                       "split_file": settings.split_file, "split": settings.split,
                       "cv_folds": settings.cv_folds, "cv_repeats": settings.cv_repeats})
    return (f"{settings.backbone}: {what}\n{data} data, {settings.profile} profile\n"
            f"weights: {describe_weights(settings.weights)}, normalisation: {settings.normalisation}, "
            f"Keras backend: {keras.backend.backend()}")


def evaluate_probabilities(settings: RunSettings, data: PreparedData, y_prob: np.ndarray) -> dict[str, Any]:
    """Metrics of one model's test-split probabilities, per image and per patient, with CIs."""
    return evaluation.evaluate(data.y["test"], y_prob, data.class_names, patient_ids=data.patients["test"],
                               n_boot=settings.n_boot, seed=settings.seed)


def compare_models(results: dict[str, dict[str, Any]], level: str = "image_level") -> pd.DataFrame:
    """Several models' metrics on the same test split: one row per metric, for each model its
    value and 95 % bootstrap interval side by side."""
    table = pd.DataFrame(index=pd.Index(evaluation.METRIC_NAMES, name="metric"))
    for model, result in results.items():
        entries = [result[level][metric] for metric in evaluation.METRIC_NAMES]
        table[model] = [entry["value"] for entry in entries]
        table[f"{model} 95% CI"] = [_interval(entry) for entry in entries]
    return table.round(3)


def _interval(entry: dict[str, Any]) -> str:
    """``"[low, high]"``, or "" where the interval is undefined (None or NaN)."""
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is None or high is None or np.isnan(low) or np.isnan(high):
        return ""
    return f"[{low:.3f}, {high:.3f}]"


def compared_entry(results: dict[str, Any], **about: Any) -> dict[str, Any]:
    """One entry of metrics.json's optional ``compared`` block: another model measured on the same
    test split in the same run (``about`` says what it is: backbone, classifier, ...)."""
    return {**about, "image_level": results["image_level"], "patient_level": results.get("patient_level")}


# ---------------------------------------------------------------------------------------------
# Split "cv": patient-grouped k-fold cross-validation
# ---------------------------------------------------------------------------------------------

CV_FIGURE = "cv_folds.png"
FOLDS_FILE = "folds.json"


def cv_folds(settings: RunSettings, manifest: pd.DataFrame) -> list[splits.Fold]:
    """The run's folds: ``settings.cv_folds`` patient-grouped, stratified folds, ``settings.cv_repeats``
    times (seeds ``seed``, ``seed + 1``, ...), validation carved by patient (``settings.val_size``)."""
    return splits.cross_validation_folds(manifest, n_folds=settings.cv_folds, repeats=settings.cv_repeats,
                                         seed=settings.seed, val_size=settings.val_size, dataset=settings.dataset)


@dataclass
class CrossValidation:
    """A run's cross-validation (:func:`cross_validate`): per-fold metrics, their mean and SD, and
    the metrics of the pooled out-of-fold predictions."""

    folds: list[dict[str, Any]]  # per (repeat, fold): patients and images per split, metrics per level
    mean: dict[str, dict[str, float]]  # level -> metric -> mean over the folds (where defined)
    sd: dict[str, dict[str, float]]    # level -> metric -> sample SD over the folds (where defined)
    pooled: dict[str, Any]       # evaluate() of the out-of-fold predictions, CIs over whole patients
    y_true: np.ndarray           # every image of the run, in manifest order
    y_prob: np.ndarray           # its out-of-fold probabilities (the mean over repeats)
    patients: np.ndarray
    images: list[str]
    n_folds: int
    repeats: int
    seeds: list[int]

    def block(self) -> dict[str, Any]:
        """metrics.json's ``cross_validation`` block."""
        return {"method": "StratifiedGroupKFold by patient, stratified by the patient's class",
                "k": self.n_folds, "repeats": self.repeats, "seeds": self.seeds,
                "n_images": int(len(self.y_true)), "n_patients": int(len(set(self.patients))),
                "folds": self.folds, "mean": self.mean, "sd": self.sd,
                "pooled": "out-of-fold: each image predicted by the fold that held it out (mean over repeats)"}

    def results(self) -> dict[str, Any]:
        """What metrics.json records: the pooled out-of-fold metrics as the run's headline
        ``image_level``/``patient_level``, and the ``cross_validation`` block."""
        return {**self.pooled, "cross_validation": self.block()}


def _in_manifest_order(data: PreparedData, parts: dict[str, np.ndarray]) -> np.ndarray:
    """Per-split arrays (``data.x``, or features of them) as one array in ``data.manifest``'s row order."""
    first = parts[splits.SPLITS[0]]
    whole = np.empty((len(data.manifest), *first.shape[1:]), dtype=first.dtype)
    for split in splits.SPLITS:
        whole[(data.manifest["split"] == split).to_numpy()] = parts[split]
    return whole


def _fold_data(data: PreparedData, fold: splits.Fold, images: np.ndarray, y: np.ndarray) -> PreparedData:
    """``data`` with one fold's split: its manifest, arrays, classes and patients per split."""
    from dataclasses import replace

    manifest = fold.apply(data.manifest)
    masks = {split: fold.split == split for split in splits.SPLITS}
    patients = manifest["patient_id"].to_numpy()
    return replace(data, manifest=manifest, x={s: images[m] for s, m in masks.items()},
                   y={s: y[m] for s, m in masks.items()}, patients={s: patients[m] for s, m in masks.items()})


def _fold_row(fold: splits.Fold, patients: np.ndarray, results: dict[str, Any]) -> dict[str, Any]:
    """One fold's row of the ``cross_validation`` block: its patients and images, its metrics."""
    row: dict[str, Any] = {"repeat": fold.repeat, "fold": fold.fold, "seed": fold.seed}
    for split in splits.SPLITS:
        mask = fold.split == split
        row[f"n_{split}"] = int(mask.sum())
        row[f"patients_{split}"] = int(len(set(patients[mask])))
    for level in ("image_level", "patient_level"):
        row[level] = {name: results[level][name]["value"] for name in evaluation.METRIC_NAMES}
    return row


def cross_validate(settings: RunSettings, data: PreparedData, run_dir: Path | str, *,
                   verbose: int | str = 0, progress: bool = True) -> CrossValidation:
    """Train and test one model per fold and repeat (:func:`cv_folds`) over every image of ``data``.

    Each fold's model is trained as lesson 3 does (:func:`fold_trainer`; its history in
    ``run_dir/fold_<k>``) and tested on the fold's own patients. Writes ``predictions.csv`` (the
    pooled out-of-fold predictions) and ``folds.json`` (each fold's test patients) into ``run_dir``;
    one line per fold with ``progress``.
    """
    if settings.split != "cv":
        raise ValueError(f"cross_validate needs split 'cv'; this run's split is {settings.split!r}")
    run_dir = Path(run_dir)
    folds = cv_folds(settings, data.manifest)
    names = data.class_names
    y = data.manifest["target"].map({name: i for i, name in enumerate(names)}).to_numpy(dtype=np.int64)
    patients = data.manifest["patient_id"].to_numpy()
    train_and_predict = fold_trainer(settings, data, y, verbose=verbose)
    rows, summed = [], np.zeros((len(y), len(names)))
    for fold in folds:
        test = fold.split == "test"
        y_prob = train_and_predict(fold, run_dir / fold.name)
        summed[test] += y_prob
        results = evaluation.evaluate(y[test], y_prob, names, patient_ids=patients[test], n_boot=0,
                                      seed=settings.seed)
        rows.append(_fold_row(fold, patients, results))
        if progress:
            print(f"{fold.name} (repeat {fold.repeat}/{settings.cv_repeats}, fold {fold.fold}/{settings.cv_folds}): "
                  f"{int(test.sum())} test images of {rows[-1]['patients_test']} patients, "
                  f"AUC {rows[-1]['image_level']['roc_auc']:.3f}")
    y_prob = summed / settings.cv_repeats  # every image is tested once per repeat
    pooled = evaluation.evaluate(y, y_prob, names, patient_ids=patients, n_boot=settings.n_boot,
                                 seed=settings.seed, groups=patients)
    mean, sd = _fold_mean_sd(rows)
    cv = CrossValidation(folds=rows, mean=mean, sd=sd, pooled=pooled, y_true=y, y_prob=y_prob,
                         patients=patients, images=[Path(p).name for p in data.manifest["image_path"]],
                         n_folds=settings.cv_folds, repeats=settings.cv_repeats,
                         seeds=sorted({fold.seed for fold in folds}))
    evaluation.write_predictions(run_dir / evaluation.PREDICTIONS_FILE, y, y_prob, names, images=cv.images,
                                 patient_ids=patients)
    tested = [{"repeat": f.repeat, "fold": f.fold, "seed": f.seed,
               "test_patients": sorted(set(patients[f.split == "test"]))} for f in folds]
    paths.write_text_atomic(run_dir / FOLDS_FILE, json.dumps({"k": cv.n_folds, "repeats": cv.repeats,
                                                              "folds": tested}, indent=2) + "\n")
    return cv


def fold_trainer(settings: RunSettings, data: PreparedData, y: np.ndarray, *,
                 verbose: int | str = 0) -> Callable[[splits.Fold, Path], np.ndarray]:
    """``train_and_predict(fold, folder)``: one fold's model trained on its train split (best
    ``val_loss`` on its val split) and its test split's class probabilities. ``y``: every image's
    class index, in manifest order.

    Without ``cache_features``: :func:`build_model` and :func:`train_model` on the fold, exactly as
    lesson 3. With it (a frozen base): the base's features are computed once for all images and
    each fold trains the head from the same initial weights; a frozen *random* base with batch norm
    gets its statistics from each fold's training images, so its features are computed per fold
    (a base without batch norm, VGG, needs them once).
    """
    from helpers import training

    batch = settings.batch_size
    if not settings.cache_features:
        images = _in_manifest_order(data, data.x)

        def train_whole(fold: splits.Fold, folder: Path) -> np.ndarray:
            fold_data = _fold_data(data, fold, images, y)
            model = build_model(settings, fold_data)
            train_model(settings, model, fold_data, folder, verbose=verbose)
            return training.predict_proba(model, fold_data.x["test"], batch_size=batch)

        return train_whole
    model = build_model(settings, data)
    with training.distribution_scope(settings.distribution):
        base, head = training.split_at_backbone(model)
    start = head.get_weights()
    per_fold = settings.weights is None and _has_batch_norm(base)
    images = _in_manifest_order(data, data.x) if per_fold else None
    features = None if per_fold else _in_manifest_order(
        data, {split: training.predict_batches(base, data.x[split], batch_size=batch) for split in splits.SPLITS})

    def train_head(fold: splits.Fold, folder: Path) -> np.ndarray:
        train, val, test = (fold.split == split for split in splits.SPLITS)
        x = features
        if per_fold:  # random features: batch norm from this fold's training images
            training.calibrate_batch_norm(base, images[train], batch_size=batch)
            x = training.predict_batches(base, images, batch_size=batch)
        head.set_weights(start)
        fit_classifier(settings, head, x[train], y[train], x[val], y[val], folder, verbose=verbose)
        save_network(settings, model, folder)
        return training.predict_proba(head, x[test], batch_size=batch)

    return train_head


def _has_batch_norm(model: "keras.Model") -> bool:
    """Does ``model`` (or a model nested in it) have a batch-normalisation layer?"""
    from helpers import backend  # noqa: F401  (imports Keras quietly)
    import keras

    from helpers.models import all_layers

    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in all_layers(model))


def _fold_mean_sd(rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Mean and sample SD (ddof 1) of each metric over the folds where it is defined (NaN: none, or one for the SD)."""
    mean: dict[str, dict[str, float]] = {}
    sd: dict[str, dict[str, float]] = {}
    for level in ("image_level", "patient_level"):
        mean[level], sd[level] = {}, {}
        for name in evaluation.METRIC_NAMES:
            values = np.array([row[level][name] for row in rows], dtype=np.float64)
            values = values[~np.isnan(values)]
            mean[level][name] = float(values.mean()) if values.size else float("nan")
            sd[level][name] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return mean, sd


def cv_fold_table(cv: CrossValidation) -> pd.DataFrame:
    """One row per fold: its patients per split, test images, and test accuracy, F1 and AUC per image
    and per patient."""
    rows = []
    for row in cv.folds:
        entry = {"repeat": row["repeat"], "fold": row["fold"],
                 "patients (train/val/test)": f"{row['patients_train']}/{row['patients_val']}/{row['patients_test']}",
                 "test images": row["n_test"]}
        for level, short in (("image_level", "image"), ("patient_level", "patient")):
            entry.update({f"{short} {name}": row[level][name] for name in ("accuracy", "f1", "roc_auc")})
        rows.append(entry)
    return pd.DataFrame(rows).set_index(["repeat", "fold"]).round(3)


def cv_summary_table(cv: CrossValidation) -> pd.DataFrame:
    """Per level and metric: mean and SD over the folds, and the pooled out-of-fold value with its
    95 % patient-clustered bootstrap interval."""
    rows = []
    for level in ("image_level", "patient_level"):
        for name in evaluation.METRIC_NAMES:
            entry = cv.pooled[level][name]
            rows.append({"level": level.replace("_", " "), "metric": name, "fold mean": cv.mean[level][name],
                         "fold SD": cv.sd[level][name], "pooled": entry["value"],
                         "pooled ci_low": entry["ci_low"], "pooled ci_high": entry["ci_high"]})
    return pd.DataFrame(rows).set_index(["level", "metric"]).round(3)


def plot_cross_validation(cv: CrossValidation, *, title: str = ""):
    """Test ROC AUC of each fold (points, a colour per repeat) with the folds' mean +- SD, and the
    pooled out-of-fold AUC with its 95 % CI, per image and per patient."""
    from helpers.figures import new_figure

    fig = new_figure(figsize=(8.0, 2.8))
    ax = fig.subplots()
    levels = [("image_level", "per image"), ("patient_level", "per patient")]
    for y_pos, (level, label) in zip((1.0, 0.0), levels):
        for repeat in range(1, cv.repeats + 1):
            values = [row[level]["roc_auc"] for row in cv.folds if row["repeat"] == repeat]
            ax.plot(values, np.full(len(values), y_pos + 0.12), "o", alpha=0.7, color=f"C{repeat - 1}",
                    label=f"folds (repeat {repeat})" if y_pos == 1.0 else None)
        mean, sd = cv.mean[level]["roc_auc"], cv.sd[level]["roc_auc"]
        if mean == mean:
            ax.errorbar([mean], [y_pos], xerr=[[sd if sd == sd else 0.0]] * 2, fmt="s", color="black",
                        capsize=4, label="mean +- SD over folds" if y_pos == 1.0 else None)
        pooled = cv.pooled[level]["roc_auc"]
        if pooled["value"] is not None and pooled["value"] == pooled["value"]:
            low, high = pooled["ci_low"], pooled["ci_high"]
            error = [[pooled["value"] - low], [high - pooled["value"]]] if low == low and high == high else None
            ax.errorbar([pooled["value"]], [y_pos - 0.12], xerr=error, fmt="D", color="tab:red", capsize=4,
                        label="pooled out-of-fold (95 % CI)" if y_pos == 1.0 else None)
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks([1.0, 0.0], [label for _, label in levels])
    ax.set_ylim(-0.5, 1.5)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"test ROC AUC ({cv.n_folds} folds x {cv.repeats} repeat(s), patient-grouped)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title or "Cross-validation", fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# Lesson 4: a trained network's deep features and an SVM (paper 000)
# ---------------------------------------------------------------------------------------------

_NOT_SETTINGS = ("name", "notebook", "classifier", "data_workers")  # run-record keys that may differ in a reused run


def reusable_network(settings: RunSettings, data: PreparedData,
                     network_dir: Path | str | None) -> tuple[Path | None, str]:
    """The ``best.keras`` of an earlier run of lesson 3 with exactly these settings and data, and
    why (or why not) it can be reused."""
    from helpers import models, training

    if not network_dir:
        return None, "no earlier run was named (NETWORK_DIR)"
    folder = Path(network_dir)
    model_file, metrics_file = folder / network_file(settings), folder / "metrics.json"
    if not model_file.is_file() or not metrics_file.is_file():
        return None, (f"{folder} holds no finished run with a kept network (no {model_file.name} and "
                      f"metrics.json; a run keeps it with SAVE_MODEL = True)")
    theirs = evaluation.read_metrics_json(metrics_file)["run"]
    ours = run_record(settings, data, run_name="", notebook="",
                      weights_description=models.describe_weights(settings.weights))
    ours = json_plain(ours)
    differ = sorted(key for key in ours if key not in _NOT_SETTINGS and theirs.get(key) != ours[key])
    if differ:
        return None, f"{folder.name} was trained with other settings or data ({', '.join(differ)})"
    return model_file, f"reused from run {folder.name} ({model_file.name}, same settings and data)"


def json_plain(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as it reads back from JSON (tuples become lists), for comparisons."""
    import json

    return json.loads(json.dumps(record, default=str))


def trained_network(settings: RunSettings, data: PreparedData, run_dir: Path | str, *,
                    network_dir: Path | str | None = None, verbose: int | str = 2
                    ) -> tuple["keras.Model", str, pd.DataFrame | None]:
    """The run's trained network and where it comes from: reused from ``network_dir`` when that
    run of lesson 3 had the same settings and data (see :func:`reusable_network`), otherwise built
    and trained here exactly as lesson 3 does. Returns (model, source, history or None)."""
    model_file, reason = reusable_network(settings, data, network_dir)
    if model_file is not None:
        return load_network(settings, data, model_file), reason, None
    model = build_model(settings, data)
    history = train_model(settings, model, data, run_dir, verbose=verbose)
    return model, f"trained in this run: {reason}", history


def svm_training_data(data: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images, classes and patients the SVM learns from: the training split only (no offline
    expansion, no augmentation); the grid search folds it by patient."""
    return data.x["train"], data.y["train"], data.patients["train"]


# ---------------------------------------------------------------------------------------------
# Lesson 5: the ResNet50 + AlexNet fusion and its single-pathway baselines (paper 003)
# ---------------------------------------------------------------------------------------------

FUSION_MODELS: dict[str, tuple[str, ...]] = {
    "fusion": ("resnet50", "alexnet"),
    "resnet50 pathway": ("resnet50",),
    "alexnet pathway": ("alexnet",),
}
"""The models lesson 5 compares: the fusion, and each pathway alone with the same refinement and head."""


@dataclass
class TrainedModel:
    """One model trained and tested in a run: its history and its test-split probabilities."""

    name: str
    model: "keras.Model"
    history: pd.DataFrame
    y_prob: np.ndarray
    results: dict[str, Any]
    folder: Path


def build_fusion_model(settings: RunSettings, data: PreparedData, pathways: tuple[str, ...], *,
                       resnet_stage: int, alexnet_blocks: int) -> "keras.Model":
    """Paper 003's fusion (two pathways) or one pathway's baseline, with the run's weights, freezing
    and input size, seeded."""
    from helpers import models, training

    training.set_determinism(settings.seed)
    training.apply_precision(settings.precision)
    with training.distribution_scope(settings.distribution):
        return models.build_fusion(pathways=pathways, resnet_stage=resnet_stage, alexnet_blocks=alexnet_blocks,
                                   weights=settings.weights, freeze=settings.freeze,
                                   input_shape=(*settings.image_size, 3), num_classes=len(data.class_names),
                                   seed=settings.seed, normalisation=settings.normalisation)


def train_and_test(settings: RunSettings, data: PreparedData, name: str, model: "keras.Model",
                   folder: Path | str, *, verbose: int | str = 2) -> TrainedModel:
    """Train ``model`` with the run's recipe (its checkpoint and history in ``folder``), then
    measure it on the test split."""
    from helpers import training

    history = train_model(settings, model, data, folder, verbose=verbose)
    y_prob = training.predict_proba(model, data.x["test"], batch_size=settings.batch_size)
    return TrainedModel(name, model, history, y_prob, evaluate_probabilities(settings, data, y_prob), Path(folder))


def model_folder(run_dir: Path | str, name: str) -> Path:
    """The sub-folder of a run for one of its models ("resnet50 pathway" -> resnet50_pathway)."""
    return Path(run_dir) / name.replace(" ", "_").replace("+", "_")


def show_architecture(model: "keras.Model", path: Path | str):
    """The model's architecture: a ``plot_model`` figure saved to ``path`` where pydot and graphviz
    are installed (returned for display), otherwise its printed summary (returns None)."""
    from helpers import models

    figure = models.architecture_figure(model, Path(path))
    if figure is not None:
        from IPython.display import Image

        return Image(filename=str(figure))
    model.summary(line_length=110)
    return None


def reload_check(model: "keras.Model", folder: Path | str, data: PreparedData) -> str:
    """Reload ``folder/best.keras`` with ``keras.saving`` and compare its test-split predictions
    with the model in memory; a mismatch is an error. Where the run kept no model file
    (``SAVE_MODEL`` off), the check saves a temporary copy and deletes it afterwards."""
    import shutil
    import tempfile

    from helpers import backend  # noqa: F401  (imports Keras quietly)
    import keras

    from helpers import models, training  # noqa: F401 - models registers ImageNormalisation

    path = Path(folder) / training.BEST_MODEL_FILE
    kept = path.is_file()
    work = None if kept else Path(tempfile.mkdtemp(prefix=".reload-", dir=folder))
    try:
        if work is not None:
            path = training.save_without_optimizer(model, work / training.BEST_MODEL_FILE)
        reloaded = keras.saving.load_model(path, compile=False)
        ours = training.predict_proba(model, data.x["test"])
        theirs = training.predict_proba(reloaded, data.x["test"])
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    difference = float(np.abs(ours - theirs).max())
    if difference > 1e-5:
        raise ValueError(f"{path}: the reloaded model's predictions differ by up to {difference:.2e}")
    where = (f"{Path(folder).name}/{path.name}" if kept
             else f"a temporary {path.name} (deleted: the run keeps no model file unless SAVE_MODEL = True)")
    return (f"{where} reloads with keras.saving: {reloaded.count_params():,} parameters, "
            f"the same test predictions (largest difference {difference:.1e})")
