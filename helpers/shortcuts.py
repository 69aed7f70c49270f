"""Shortcuts: can plain patch statistics, blind to any lesion, tell normal from abnormal patches?

If six statistics of a patch that know nothing of lesions (:data:`STATISTICS`) separate the
classes, a network can score well without looking at the lesion. :func:`sampling_comparison`
cuts each image's patch twice, normals the old way (:func:`~helpers.preprocessing.breast_centred_roi`:
breast centre, ``r = min(h, w) / 8``) and the new way (drawn like lesion patches,
:func:`~helpers.preprocessing.assign_normal_radii` and :func:`~helpers.preprocessing.normal_patch_roi`),
and measures a patient-grouped cross-validated logistic regression on the statistics of each.

    python -m helpers.shortcuts --dataset mias --data-dir DIR     # the measurement on a dataset
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from helpers import datasets, preprocessing
from helpers.preprocessing import Size

STATISTICS: tuple[str, ...] = ("mean", "std", "background_share", "first_difference",
                               "second_difference", "high_frequency_share")
"""The six lesion-blind statistics of a patch (see :func:`patch_statistics`)."""

BACKGROUND_LEVEL = 0.05
"""A pixel below this (of [0, 1]) counts as background (air, or the zero padding past the border)."""

SAMPLINGS: tuple[str, ...] = ("old", "new")
"""How lesion-free patches are drawn: "old" (breast-centred, fixed radius) or "new" (like lesion patches)."""

SHORTCUT_TASK = "normal-vs-abnormal"

LESSON_MAX_PATIENTS = 80
"""Lesson 1 compares the samplings on at most this many patients (seeded; the command line uses all),
so that the cpu profile's 240 synthetic patients do not cost it half a minute of CLAHE."""


def patch_statistics(x: np.ndarray) -> pd.DataFrame:
    """The six :data:`STATISTICS` of each patch of ``x`` ``(N, H, W[, C])`` in [0, 1] (first channel).

    mean and std of the values; background_share: the share below :data:`BACKGROUND_LEVEL`;
    first_difference and second_difference: the mean absolute first and second differences
    between neighbouring pixels (rows and columns), which fall when a small window is enlarged
    to the input size and rise when a large one is shrunk; high_frequency_share: the share of the
    patch's spectral energy (mean removed) above half the Nyquist frequency, a sharpness measure
    that, unlike the differences, does not grow with contrast, so it sees resampling alone.
    """
    x = np.asarray(x, np.float32)
    if x.ndim == 4:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1] < 3 or x.shape[2] < 3:
        raise ValueError(f"patch_statistics needs patches (N, H, W[, C]) of at least 3x3, got {x.shape}")
    first = (np.abs(np.diff(x, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))) / 2
    second = (np.abs(np.diff(x, 2, axis=1)).mean(axis=(1, 2))
              + np.abs(np.diff(x, 2, axis=2)).mean(axis=(1, 2))) / 2
    centred = x - x.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    fy = np.abs(np.fft.fftfreq(x.shape[1]))[:, None]
    fx = np.abs(np.fft.fftfreq(x.shape[2]))[None, :]
    high = np.maximum(fy, fx) > 0.25  # above half the Nyquist frequency (0.5 cycles per pixel)
    total = power.sum(axis=(1, 2))
    share = np.where(total > 0, (power * high).sum(axis=(1, 2)) / np.where(total > 0, total, 1), 0.0)
    return pd.DataFrame({
        "mean": x.mean(axis=(1, 2)),
        "std": x.std(axis=(1, 2)),
        "background_share": (x < BACKGROUND_LEVEL).mean(axis=(1, 2)),
        "first_difference": first,
        "second_difference": second,
        "high_frequency_share": share,
    }, columns=list(STATISTICS)).astype(np.float64)


def grouped_cv_auc(features: pd.DataFrame | np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                   n_splits: int = 5, seed: int = 0) -> float:
    """ROC AUC of a logistic regression (standardised features) on pooled out-of-fold predictions.

    The folds are :class:`~sklearn.model_selection.StratifiedGroupKFold` by ``groups`` (the
    patients), so no patient is in both a fold's training and test part; ``n_splits`` is lowered
    to the patients of the rarer class when there are fewer (ValueError below 2). ``y`` is 0/1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y, groups = np.asarray(y), np.asarray(groups)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError(f"grouped_cv_auc needs two classes 0 and 1, got {sorted(set(np.unique(y)))}")
    patients_per_class = min(len(set(groups[y == label])) for label in (0, 1))
    folds = min(n_splits, patients_per_class)
    if folds < 2:
        raise ValueError(f"grouped_cv_auc needs at least 2 patients of each class, got {patients_per_class}")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, np.asarray(features), y, groups=groups, cv=cv, method="predict_proba")
    return float(roc_auc_score(y, scores[:, 1]))


@dataclass
class ShortcutPatches:
    """Each image's patch cut with the old and the new sampling of lesion-free patches."""

    manifest: pd.DataFrame          # one row per image, with `target`, patch radius and seed
    x: dict[str, np.ndarray]        # sampling -> (N, h, w) grey patches in [0, 1]
    windows: dict[str, pd.DataFrame]  # sampling -> per image: side (px) and in_breast (fraction)
    y: np.ndarray                   # 1 for abnormal, 0 for normal
    groups: np.ndarray              # patient ids


def some_patients(manifest: pd.DataFrame, max_patients: int, seed: int) -> pd.DataFrame:
    """The rows of at most ``max_patients`` patients, drawn (seeded) in proportion from the
    patients with an abnormal image and those without, so both classes stay."""
    abnormal = manifest.groupby("patient_id")["target"].agg(lambda t: bool(t.eq("abnormal").any()))
    if len(abnormal) <= max_patients:
        return manifest
    rng = np.random.default_rng(seed)
    n_abnormal = min(max(1, round(max_patients * abnormal.mean())), max_patients - 1)
    chosen = []
    for flag, count in ((True, n_abnormal), (False, max_patients - n_abnormal)):
        patients = sorted(abnormal.index[abnormal == flag])
        chosen += list(rng.choice(patients, size=min(count, len(patients)), replace=False))
    return manifest[manifest["patient_id"].isin(chosen)].reset_index(drop=True)


def shortcut_patches(manifest: pd.DataFrame, *, preset: str = "paper000", image_size: Size = 96,
                     seed: int = 0, roi_scale: float = 2.0, source: str = "manifest",
                     max_patients: int | None = None) -> ShortcutPatches:
    """Cut every image's patch twice: lesion rows around their lesion (the same both times),
    lesion-free rows with the old rule and with the new one, each through ``preset``.

    ``manifest`` is a dataset's manifest (any labels): it is reduced to the normal-vs-abnormal
    task and to images that can have a patch (abnormal images without lesion coordinates are
    left out, as the pipeline does), and to ``max_patients`` patients (:func:`some_patients`)
    when given. ValueError naming ``source`` when it has no lesion positions or not both classes.
    """
    task = datasets.select_task(manifest, SHORTCUT_TASK)
    if "roi" not in task.columns or not task["roi"].fillna("").ne("").any():
        raise ValueError(f"{source}: no lesion positions (roi), so there are no lesion patches to compare")
    task = task[~(task["roi"].fillna("").eq("") & task["label"].ne("normal"))].reset_index(drop=True)
    task = preprocessing.assign_normal_radii(task, seed)  # radii from every lesion of the dataset
    if max_patients is not None:
        task = some_patients(task, max_patients, seed)
    if task["target"].nunique() < 2:
        found = sorted(task["target"].unique())
        raise ValueError(f"{source}: normal-vs-abnormal patches need both classes, got {found}")
    x: dict[str, list[np.ndarray]] = {sampling: [] for sampling in SAMPLINGS}
    windows: dict[str, list[tuple[int, float]]] = {sampling: [] for sampling in SAMPLINGS}
    for row in task.itertuples(index=False):
        img = preprocessing.read_image(row.image_path)
        lesion = preprocessing.parse_roi(row.roi, str(row.image_path))
        rois = {"old": lesion or preprocessing.breast_centred_roi(img),
                "new": lesion or preprocessing.normal_patch_roi(
                    img, getattr(row, preprocessing.PATCH_RADIUS), getattr(row, preprocessing.PATCH_SEED),
                    roi_scale, source=str(row.image_path))}
        done: dict[tuple[float, float, float], tuple[np.ndarray, tuple[int, float]]] = {}
        for sampling, roi in rois.items():  # a lesion patch is cut once for both
            if roi not in done:
                patch = preprocessing.apply_preset(img, preset, image_size=image_size, roi=roi,
                                                   roi_scale=roi_scale)
                done[roi] = (patch[..., 0], (preprocessing.patch_side(roi[2], roi_scale),
                                             preprocessing.in_breast_fraction(img, roi, roi_scale)))
            x[sampling].append(done[roi][0])
            windows[sampling].append(done[roi][1])
    return ShortcutPatches(
        manifest=task,
        x={sampling: np.stack(patches) for sampling, patches in x.items()},
        windows={sampling: pd.DataFrame(rows, columns=["side", "in_breast"])
                 for sampling, rows in windows.items()},
        y=task["target"].eq("abnormal").to_numpy(dtype=np.int64),
        groups=task["patient_id"].to_numpy(),
    )


def sampling_comparison(patches: ShortcutPatches, *, seed: int = 0) -> pd.DataFrame:
    """Per sampling of the normal patches ("old", "new"): the six-statistic AUC, and per class the
    median patch side (px of the stored image) and the mean in-breast fraction of the window."""
    rows = []
    for sampling in SAMPLINGS:
        window = patches.windows[sampling]
        normal, abnormal = patches.y == 0, patches.y == 1
        rows.append({
            "normal patches": sampling,
            "AUC": grouped_cv_auc(patch_statistics(patches.x[sampling]), patches.y,
                                                patches.groups, seed=seed),
            "side normal": float(window["side"][normal].median()),
            "side abnormal": float(window["side"][abnormal].median()),
            "in breast normal": float(window["in_breast"][normal].mean()),
            "in breast abnormal": float(window["in_breast"][abnormal].mean()),
        })
    return pd.DataFrame(rows).set_index("normal patches").round(3)


def example_patches(patches: ShortcutPatches, per_class: int = 3) -> tuple[list[np.ndarray], list[str]]:
    """A few patches for a figure: normal ones old-style, the same normals new-style, abnormal ones."""
    normal = np.flatnonzero(patches.y == 0)[:per_class]
    abnormal = np.flatnonzero(patches.y == 1)[:per_class]
    images = ([patches.x["old"][i] for i in normal] + [patches.x["new"][i] for i in normal]
              + [patches.x["new"][i] for i in abnormal])
    titles = ["normal, old"] * len(normal) + ["normal, new"] * len(normal) + ["abnormal"] * len(abnormal)
    return images, titles


def lesson_patches(manifest: pd.DataFrame, settings: Any) -> ShortcutPatches | None:
    """:func:`shortcut_patches` of a lesson's manifest with the run's preset, input size and seed, on
    at most :data:`LESSON_MAX_PATIENTS` patients (it says how many); None, saying why, when its
    dataset gives no lesion positions or lacks a class."""
    try:
        patches = shortcut_patches(manifest, preset=settings.preset, image_size=settings.image_size,
                                   seed=settings.seed, source=f"dataset {settings.dataset}",
                                   max_patients=LESSON_MAX_PATIENTS)
    except ValueError as error:
        print(f"no shortcut comparison: {error}")
        return None
    counts = patches.manifest["target"].value_counts()
    print(f"{len(patches.y)} patches ({counts.get('normal', 0)} normal, {counts.get('abnormal', 0)} abnormal) "
          f"of {len(set(patches.groups))} patients")
    return patches


def measure(dataset: str, data_dir: str | None, *, preset: str = "paper000", image_size: int = 96,
            seed: int = 42, options: dict[str, Any] | None = None) -> pd.DataFrame:
    """:func:`sampling_comparison` of a registered dataset (as on the command line)."""
    manifest = datasets.load(dataset, data_dir, **(options or {}))
    patches = shortcut_patches(manifest, preset=preset, image_size=image_size, seed=seed, source=dataset)
    return sampling_comparison(patches, seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.shortcuts", description=(
        "Six lesion-blind patch statistics, a patient-grouped 5-fold logistic regression: its ROC AUC for "
        "normal vs abnormal patches with the old and the new sampling of lesion-free patches."))
    parser.add_argument("--dataset", required=True,
                        help=f"a registered dataset ({', '.join(sorted(datasets.DATASETS))})")
    parser.add_argument("--data-dir", default=None, help="its folder (embedded datasets need none)")
    parser.add_argument("--preset", default="paper000")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    table = measure(args.dataset, args.data_dir, preset=args.preset, image_size=args.image_size, seed=args.seed)
    print(f"{args.dataset} ({args.data_dir or 'embedded'}), task {SHORTCUT_TASK}, preset {args.preset}, "
          f"{args.image_size} px, seed {args.seed}")
    print(table.to_string())


if __name__ == "__main__":
    main()
