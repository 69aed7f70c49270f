"""The steps a lesson notebook calls, in order: data -> split -> arrays -> model -> metrics.

Each function is a thin composition of the stage modules (datasets, splits, preprocessing,
models, training, evaluation), so that notebook cells stay one line each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers import datasets, evaluation, paths, preprocessing, splits
from helpers.plan import RunSettings


@dataclass
class PreparedData:
    """Arrays and labels of one experiment, split by patient."""

    settings: RunSettings
    manifest: pd.DataFrame          # one row per kept image, with `target` and `split`
    class_names: list[str]
    x: dict[str, np.ndarray]        # split -> (N, H, W, 3) float32
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


def load_manifest(settings: RunSettings) -> pd.DataFrame:
    """The dataset's manifest restricted to the task's classes, with a `target` column.

    What was left out on the way (by the adapter, or for want of a lesson position when ROI
    patches are asked for) is in ``manifest.attrs["excluded"]`` as (item, reason) pairs.
    """
    loaded = datasets.load_with_exclusions(settings.dataset, settings.data_dir, **dataset_options(settings))
    manifest = datasets.select_task(loaded.manifest, settings.task)
    excluded = list(loaded.excluded)
    if uses_roi_patches(settings, manifest):
        # a lesion patch needs the lesion's position; a normal image gets a breast-centred patch
        unplaced = manifest["roi"].eq("") & manifest["label"].ne("normal")
        excluded += [(path, f"{label} image without lesion coordinates: no ROI patch can be cut")
                     for path, label in zip(manifest.loc[unplaced, "image_path"], manifest.loc[unplaced, "label"])]
        manifest = manifest[~unplaced].reset_index(drop=True)
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
    key = splits.manifest_fingerprint(manifest)
    name = f"{settings.dataset}-{settings.task}-seed{settings.seed}-{key[:10]}.json"
    return paths.cache_dir() / "splits" / name


def split_manifest(settings: RunSettings, manifest: pd.DataFrame, split_file: Path) -> pd.DataFrame:
    """Add the ``split`` column by ``settings.split`` (see ``plan.SPLIT_METHODS``), leak-checked.

    "patient": a seeded, stratified patient-level split saved to ``split_file`` and reloaded on
    later runs. "by-magnification": the same, then test keeps only 40X images and train/val the
    others (paper 004). "official": CBIS-DDSM's own train/test split, val carved from train.
    """
    if settings.split == "official":
        from helpers.adapters import cbis_ddsm

        return cbis_ddsm.official_split(manifest, val_size=settings.val_size, seed=settings.seed)
    result = splits.make_or_load_split(
        manifest, split_file, test_size=settings.test_size, val_size=settings.val_size, seed=settings.seed
    )
    if settings.split == "by-magnification":
        result = splits.restrict_by_magnification(result, "40X")
    return result


def prepare_data(settings: RunSettings, *, progress: bool = True, on_error: str = "raise") -> PreparedData:
    """Load the manifest, split it by patient (saved JSON, leak-checked), prepare cached arrays."""
    manifest = load_manifest(settings)
    excluded = list(manifest.attrs.get("excluded", []))
    split_file = split_file_for(settings, manifest)
    manifest = split_manifest(settings, manifest, split_file)
    prepared = preprocessing.prepare_arrays(
        manifest,
        settings.preset,
        image_size=settings.image_size,
        use_roi=uses_roi_patches(settings, manifest),
        on_error="skip" if settings.skip_bad else on_error,
        progress=progress,
    )
    kept = prepared.manifest.reset_index(drop=True)
    splits.check_no_leakage(kept)
    class_names = class_names_for(kept)
    index = {name: i for i, name in enumerate(class_names)}
    x, y, patients = {}, {}, {}
    for split in splits.SPLITS:
        mask = (kept["split"] == split).to_numpy()
        x[split] = prepared.x[mask]
        y[split] = kept.loc[mask, "target"].map(index).to_numpy(dtype=np.int64)
        patients[split] = kept.loc[mask, "patient_id"].to_numpy()
        if len(y[split]) == 0:
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
    return {
        "name": run_name,
        "notebook": notebook,
        "profile": settings.profile,
        "study": settings.study,
        "dataset": settings.dataset,
        "dataset_options": settings.dataset_options,
        "data_fingerprint": splits.manifest_fingerprint(data.manifest),
        "task": settings.task,
        "classes": data.class_names,
        "backbone": settings.backbone,
        "classifier": classifier,
        "head": settings.head,
        "weights": weights_description,
        "freeze": settings.freeze,
        "optimiser": settings.optimiser,
        "loss": settings.loss,
        "learning_rate": settings.learning_rate,
        "augmentation": settings.augmentation,
        "offline_expansion": settings.offline_expansion,
        "fine_tune_epochs": settings.fine_tune_epochs,
        "split": settings.split,
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
    }


def build_model(settings: RunSettings, data: PreparedData) -> "keras.Model":
    """The classifier of the run: its backbone, head, weights and freezing, seeded."""
    from helpers import models, training

    training.set_determinism(settings.seed)
    return models.build_classifier(settings.backbone, head=settings.head, weights=settings.weights,
                                   freeze=settings.freeze, input_shape=(*settings.image_size, 3),
                                   num_classes=len(data.class_names), seed=settings.seed)


def make_augmenter(settings: RunSettings):
    """The run's augmentation scheme as a seeded callable for training batches (None for "none")."""
    from helpers import augmentation

    if settings.augmentation == "none":
        return None
    return augmentation.build_augmenter(settings.augmentation, image_size=settings.image_size,
                                        seed=settings.seed,
                                        value_range=preprocessing.preset_value_range(settings.preset))


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
    split only, class weights, the best-``val_loss`` checkpoint and optional fine-tuning phase."""
    from helpers import training

    training.compile_classifier(model, optimiser=settings.optimiser, learning_rate=settings.learning_rate,
                                loss=settings.loss, weight_decay=settings.weight_decay,
                                momentum=0.9 if settings.momentum is None else settings.momentum,
                                jit_compile=settings.jit_compile,
                                run_eagerly=settings.run_eagerly)
    augmenter = make_augmenter(settings)
    x_train, y_train = training_arrays(settings, data, augmenter)
    return training.train(model, x_train, y_train, data.x["val"], data.y["val"],
                          epochs=settings.epochs, batch_size=settings.batch_size, run_dir=Path(run_dir),
                          seed=settings.seed, class_weight=training.class_weights(y_train),
                          augment=augmenter, fine_tune_epochs=settings.fine_tune_epochs,
                          fine_tune_learning_rate=settings.fine_tune_learning_rate, verbose=verbose)


def write_metrics(run_dir: Path | str, record: dict[str, Any], results: dict[str, Any]) -> Path:
    """Write ``metrics.json`` (schema-versioned, atomic) into ``run_dir``."""
    payload = {"run": record, **results}
    return evaluation.write_metrics_json(Path(run_dir) / "metrics.json", payload)


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


def figure_title(settings: RunSettings, what: str) -> str:
    """A figure title that says what is shown and which data, weights and profile produced it."""
    from helpers.models import describe_weights

    return (f"{settings.backbone}: {what}\n{settings.dataset} data, {settings.profile} profile\n"
            f"weights: {describe_weights(settings.weights)}")
