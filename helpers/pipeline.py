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
    skipped: list[tuple[str, str]]
    split_file: Path
    arrays_from_cache: bool


def load_manifest(settings: RunSettings) -> pd.DataFrame:
    """The dataset's manifest restricted to the task's classes, with a `target` column."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.dataset_options.items()}
    manifest = datasets.load(settings.dataset, settings.data_dir, **options)
    return datasets.select_task(manifest, settings.task)


def class_names_for(manifest: pd.DataFrame) -> list[str]:
    """Class names in index order, from least to most severe (the positive class is last)."""
    order = ["normal", "abnormal", "benign", "malignant"]
    present = set(manifest["target"])
    return [name for name in order if name in present]


def split_file_for(settings: RunSettings, manifest: pd.DataFrame) -> Path:
    key = splits.manifest_fingerprint(manifest)
    name = f"{settings.dataset}-{settings.task}-seed{settings.seed}-{key[:10]}.json"
    return paths.cache_dir() / "splits" / name


def prepare_data(settings: RunSettings, *, progress: bool = True, on_error: str = "raise") -> PreparedData:
    """Load the manifest, split it by patient (saved JSON, leak-checked), prepare cached arrays."""
    manifest = load_manifest(settings)
    split_file = split_file_for(settings, manifest)
    manifest = splits.make_or_load_split(
        manifest, split_file, test_size=settings.test_size, val_size=settings.val_size, seed=settings.seed
    )
    prepared = preprocessing.prepare_arrays(
        manifest,
        settings.preset,
        image_size=settings.image_size,
        use_roi=settings.use_roi,
        on_error=on_error,
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
        split_file=split_file,
        arrays_from_cache=prepared.from_cache,
    )


def data_summary(data: PreparedData) -> pd.DataFrame:
    """Images per split and class, and patients per split."""
    return splits.split_summary(data.manifest)


def run_record(
    settings: RunSettings,
    data: PreparedData,
    *,
    run_name: str,
    notebook: str,
    weights_description: str,
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
        "head": settings.head,
        "weights": weights_description,
        "freeze": settings.freeze,
        "optimiser": settings.optimiser,
        "learning_rate": settings.learning_rate,
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
        "scaled_down": list(settings.scaled_down),
    }


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


def provenance(settings: RunSettings) -> str:
    """One line naming the data, weights and profile behind a figure or table."""
    from helpers.models import describe_weights

    return f"{settings.dataset} data · {settings.profile} profile · weights: {describe_weights(settings.weights)}"


def figure_title(settings: RunSettings, what: str) -> str:
    """A figure title that says what is shown and which data, weights and profile produced it."""
    from helpers.models import describe_weights

    return (f"{settings.backbone}: {what}\n{settings.dataset} data, {settings.profile} profile\n"
            f"weights: {describe_weights(settings.weights)}")
