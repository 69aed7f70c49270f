"""The steps a lesson notebook calls, in order: data -> split -> arrays -> model -> metrics.

Each function is a thin composition of the stage modules (datasets, splits, preprocessing,
models, training, evaluation), so that notebook cells stay one line each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    from helpers import models

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
        features, trained = training.split_at_backbone(model)
        if settings.weights is None:  # random features: batch norm set from the training images
            training.calibrate_batch_norm(features, x_train, batch_size=settings.batch_size)
        x_train = training.predict_batches(features, x_train, batch_size=settings.batch_size)
        x_val = training.predict_batches(features, x_val, batch_size=settings.batch_size)
    else:
        augmenter = make_augmenter(settings)
        x_train, y_train = training_arrays(settings, data, augmenter)
    training.compile_classifier(trained, optimiser=settings.optimiser, learning_rate=settings.learning_rate,
                                loss=settings.loss, weight_decay=settings.weight_decay,
                                momentum=0.9 if settings.momentum is None else settings.momentum,
                                jit_compile=settings.jit_compile,
                                run_eagerly=settings.run_eagerly)
    history = training.train(trained, x_train, y_train, x_val, data.y["val"],
                          epochs=settings.epochs, batch_size=settings.batch_size, run_dir=Path(run_dir),
                          seed=settings.seed, class_weight=training.class_weights(y_train),
                          augment=augmenter, fine_tune_epochs=settings.fine_tune_epochs,
                          fine_tune_learning_rate=settings.fine_tune_learning_rate, verbose=verbose,
                          save_model=False)
    save_network(settings, model, run_dir)
    return history


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


def figure_title(settings: RunSettings, what: str) -> str:
    """A figure title that says what is shown and which data, weights and profile produced it."""
    from helpers.models import describe_weights

    return (f"{settings.backbone}: {what}\n{settings.dataset} data, {settings.profile} profile\n"
            f"weights: {describe_weights(settings.weights)}, normalisation: {settings.normalisation}")


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
# Lesson 4: a trained network's deep features and an SVM (paper 000)
# ---------------------------------------------------------------------------------------------

_NOT_SETTINGS = ("name", "notebook", "classifier")  # run-record keys that may differ in a reused run


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
