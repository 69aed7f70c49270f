"""Collect every run's ``metrics.json``, set our numbers beside the papers', render the summary.

``build_report(profile_dir)`` writes ``index.html`` and its Markdown twin ``index.md`` into the
profile's report folder. Our numbers are labelled as ours (with the data, weights and profile that
produced them); the papers' numbers are quoted as theirs, with the table they come from.

The page puts the findings first (:func:`findings`: sentences built from the numbers), then a
forest plot of every run's test AUC (:func:`plot_forest`), then compact tables whose numbers are
rounded to what their CIs justify (:func:`round_to_ci`); each run links to its executed notebook,
rendered as HTML by :mod:`helpers.notebook_html`, and to its figures.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import numpy as np
import pandas as pd

from helpers import evaluation, paths
from helpers.plan import get_profile

FIGURES = ("history.png", "confusion_matrix.png", "roc.png", "per_class.png", "cv_folds.png", "cam_overlays.png",
           "predictions_grid.png")
"""The figures a run folder may hold, in the order the report shows them."""
FIGURE_LABELS = {"history.png": "curves", "confusion_matrix.png": "confusion", "roc.png": "ROC",
                 "per_class.png": "per class", "cv_folds.png": "folds", "cam_overlays.png": "Grad-CAM",
                 "predictions_grid.png": "predictions"}
_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
SCORES = ("precision", "recall", "f1")  # the figures a paper may average over its classes


def profile_dir(profile: str, run_dir: str | Path | None = None) -> Path:
    """The folder holding a profile's runs: the parent of the runner's run folder, else reports/<profile>."""
    return Path(run_dir).parent if run_dir else paths.reports_dir() / profile


def collect_runs(folder: Path | str) -> list[dict[str, Any]]:
    """One entry per run folder: its ``run.json`` status and, if present, its metrics."""
    folder = Path(folder)
    entries = []
    for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []:
        status_file, metrics_file = run_dir / "run.json", run_dir / "metrics.json"
        status = json.loads(status_file.read_text(encoding="utf-8")) if status_file.exists() else {}
        metrics = evaluation.read_metrics_json(metrics_file) if metrics_file.exists() else None
        if not status and metrics is None:
            continue
        entries.append({"name": run_dir.name, "dir": run_dir, "status": status, "metrics": metrics})
    return entries


def data_named(run: dict[str, Any]) -> str:
    """The data of a run record in a few words: its dataset (``mias+inbreast`` when pooled), an
    external test set (``cbis-ddsm, tested on inbreast``), a user's split file and a
    cross-validation (``mias, 5-fold cv by patient``)."""
    named = str(run.get("dataset"))
    if run.get("test_dataset"):
        named += f", tested on {run['test_dataset']}"
    if run.get("split_file"):
        named += f", split {Path(run['split_file']).name}"
    if run.get("split") == "cv":
        repeats = int(run.get("cv_repeats") or 1)
        named += f", {run.get('cv_folds', '?')}-fold cv by patient" + (f" x{repeats}" if repeats > 1 else "")
    return named


def data_used(entries: list[dict[str, Any]]) -> list[str]:
    """Each distinct data description (:func:`data_named`, with the folders) of the finished runs."""
    seen: dict[str, None] = {}
    for entry in entries:
        run = (entry["metrics"] or {}).get("run")
        if run:
            folders = [str(run[key]) for key in ("data_dir", "test_data_dir") if run.get(key)]
            seen[data_named(run) + (f" (from {', '.join(folders)})" if folders else "")] = None
    return list(seen)


def results_table(entries: list[dict[str, Any]], level: str = "image_level") -> pd.DataFrame:
    """Our results: one row per run with metrics (value and 95 % CI) and their provenance."""
    rows = []
    for entry in entries:
        metrics = entry["metrics"]
        if not metrics or not metrics.get(level):
            continue
        run = metrics["run"]
        row = {
            "run": entry["name"], "study": run.get("study"), "dataset": data_named(run),
            "task": run.get("task"), "backbone": run.get("backbone"), "weights": run.get("weights"),
            "normalisation": run.get("normalisation", "not recorded"),
            "optimiser": run.get("optimiser"), "classifier": run.get("classifier", "network"),
            "profile": run.get("profile"), "input": "x".join(map(str, run.get("image_size", []))),
            "epochs": run.get("epochs"), "n_test": metrics[level].get("n"),
        }
        for name in _METRICS:
            cell = metrics[level].get(name) or {}
            row[name] = cell.get("value")
            row[f"{name}_ci"] = _ci(cell)
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Per run, level and class: precision, recall, F1 and support, then the macro and weighted
    averages (as scikit-learn's classification_report). Runs whose metrics.json predates
    schema 3 have no per-class figures and no rows."""
    rows = []
    for entry in entries:
        metrics = entry["metrics"] or {}
        for level in ("image_level", "patient_level"):
            block = (metrics.get(level) or {}).get("per_class")
            if not block:
                continue
            for name in [*metrics[level]["class_names"], *evaluation.AVERAGES]:
                rows.append({"run": entry["name"], "level": level.replace("_", " "), "class": name,
                             **{key: block[name][key] for key in evaluation.PER_CLASS_KEYS}})
    columns = ["run", "level", "class", *evaluation.PER_CLASS_KEYS]
    return pd.DataFrame(rows, columns=columns).astype({"precision": "float64", "recall": "float64", "f1": "float64"})


def per_class_summary(entries: list[dict[str, Any]], metric: str = "f1", level: str = "image_level") -> pd.DataFrame:
    """One row per run: ``metric`` (precision, recall or f1) of each class, then its macro and
    weighted averages; a class the run's task does not have is empty."""
    if metric not in SCORES:
        raise ValueError(f"metric must be one of {SCORES}, got {metric!r}")
    rows = [{"run": name, **{key: block[key][metric] for key in block}}
            for name, block in per_class_blocks(entries, level).items()]
    classes = list(dict.fromkeys(key for row in rows for key in row if key not in ("run", *evaluation.AVERAGES)))
    return pd.DataFrame(rows, columns=["run", *classes, *evaluation.AVERAGES]).astype(
        {key: "float64" for key in (*classes, *evaluation.AVERAGES)})


def per_class_blocks(entries: list[dict[str, Any]], level: str = "image_level") -> dict[str, dict[str, Any]]:
    """``{run: per_class block}`` of the runs that have one, for :func:`evaluation.plot_per_class`."""
    blocks = {}
    for entry in entries:
        block = ((entry["metrics"] or {}).get(level) or {}).get("per_class")
        if block:
            blocks[entry["name"]] = block
    return blocks


def _ci(cell: dict[str, Any]) -> str:
    low, high = cell.get("ci_low"), cell.get("ci_high")
    return "" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"


def _text(value: Any) -> str:
    """A table cell as text; missing values (None, NaN) as an empty string."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


NETWORK_CLASSIFIERS = ("softmax", "sigmoid")  # the papers' own network outputs (ours: "network")


def _matches(run: pd.Series, paper: pd.Series) -> bool:
    """Does our run reproduce this reported row: same paper, backbone, optimiser and classifier?"""
    if run["study"] != paper["study"] or run["backbone"] != paper["backbone"]:
        return False
    if _text(paper["optimiser"]) and run["optimiser"] != paper["optimiser"]:
        return False
    theirs = "network" if paper["classifier"] in NETWORK_CLASSIFIERS else paper["classifier"]
    return (run.get("classifier") or "network") == theirs


NOT_RECORDED_PER_CLASS = "not recorded (metrics.json before schema 3)"


def averaged_scores(level: dict[str, Any] | None, averaging: str) -> tuple[dict[str, float | None], str]:
    """Our precision, recall and F1 at one level, combined over the classes the way a paper does
    (``studies.AVERAGING_METHODS``), and how they were combined. Where the paper's way is unknown
    or it reports none, ours follow this project's convention: the positive class (the second)
    for two classes, the macro average for more."""
    level = level or {}
    names, block = level.get("class_names") or [], level.get("per_class")
    if averaging in ("weighted", "macro"):
        key = f"{averaging} avg"
    elif len(names) == 2:
        key = names[1]
    else:
        key = "macro avg"
    how = f"{key} (positive class)" if key in names else key.replace(" avg", "")
    if averaging not in ("weighted", "macro", "binary"):
        how = f"{how}: our convention"
    if block:
        return {name: block[key][name] for name in SCORES}, how
    if key == ("macro avg" if len(names) > 2 else names[1] if names else None):  # old file: the top level is it
        return {name: (level.get(name) or {}).get("value") for name in SCORES}, how
    return {name: None for name in SCORES}, f"{how}: {NOT_RECORDED_PER_CLASS}"


def _support(level: dict[str, Any] | None) -> dict[str, int] | None:
    """The test split's class support from a level's per_class block (None before schema 3)."""
    level = level or {}
    block = level.get("per_class")
    return {name: int(block[name]["support"]) for name in level["class_names"]} if block else None


def _majority(support: dict[str, int] | None, averaging: str) -> dict[str, Any]:
    """Accuracy and F1 (combined as ``averaging``) of always predicting the majority class."""
    if not support or sum(support.values()) == 0:
        return {"accuracy": None, "f1": None}
    baseline = evaluation.majority_baseline(support)
    level = {"class_names": list(support), "per_class": baseline["per_class"]}
    f1 = averaged_scores(level, averaging)[0]["f1"] if averaging != "none" else None
    return {"accuracy": baseline["accuracy"], "f1": f1}


def comparison_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Ours beside theirs: one row per (paper, backbone, classifier, optimiser) a paper reports,
    with the paper's numbers (their data) and ours (the run of the same recipe; n/a where the
    plan has no such run, e.g. the papers' own small ConvNet).

    Precision, recall and F1 are like for like: ours combined over the classes as the paper
    combines its own (``paper_averaging``; e.g. paper 003's support-weighted averages), and
    ``our_averaging`` says how ours were. ``*_majority_*``: what always predicting the majority
    class scores (accuracy, and F1 combined the same way) on the paper's printed test support and
    on our test split."""
    from helpers import studies

    reported = studies.reported_table()
    ours = results_table(entries)
    levels = {entry["name"]: (entry["metrics"] or {}).get("image_level") for entry in entries}
    rows = []
    for _, paper in reported.iterrows():
        match = ours[[_matches(run, paper) for _, run in ours.iterrows()]] if not ours.empty else ours
        if len(match):  # the papers started from ImageNet: our ImageNet run where there is one
            match = match.assign(_random=match["weights"].str.startswith("random")).sort_values(
                "_random", kind="stable")
        run = match.iloc[0] if len(match) else None
        scoring = studies.get_study(paper["study"]).scoring
        level = levels.get(run["run"]) if run is not None else None
        scores, how = averaged_scores(level, paper["averaging"]) if run is not None else ({}, "")
        theirs = _majority(dict(scoring.test_support) if scoring.test_support else None, paper["averaging"])
        our_majority = _majority(_support(level), paper["averaging"]) if run is not None else {}
        rows.append({
            "paper": f"paper {paper['study']}", "backbone": paper["backbone"], "classifier": paper["classifier"],
            "optimiser": _text(paper["optimiser"]),
            "paper_dataset": paper["dataset"], "paper_averaging": paper["averaging"],
            "paper_accuracy": paper["accuracy"], "paper_precision": paper["precision"],
            "paper_recall": paper["recall"], "paper_f1": paper["f1"], "paper_auc": paper["auc"],
            "paper_majority_accuracy": theirs["accuracy"], "paper_majority_f1": theirs["f1"],
            "paper_source": f"{paper['slug']}, {paper['source']}",
            "our_run": run["run"] if run is not None else "",
            "our_data": f"{run['dataset']} ({run['task']}, {run['input']} px)" if run is not None else "",
            "our_weights": run["weights"] if run is not None else "",
            "our_accuracy": run["accuracy"] if run is not None else None,
            "our_accuracy_ci": run["accuracy_ci"] if run is not None else "",
            "our_averaging": how,
            **{f"our_{name}": scores.get(name) for name in SCORES},
            "our_auc": run["roc_auc"] if run is not None else None,
            "our_majority_accuracy": our_majority.get("accuracy"), "our_majority_f1": our_majority.get("f1"),
        })
    return pd.DataFrame(rows)


def _support_text(support: dict[str, int]) -> str:
    total = sum(support.values())
    return ", ".join(f"{name} {count} ({count / total:.1%})" for name, count in support.items())


def _baseline_row(paper: str, who: str, support: dict[str, int]) -> dict[str, Any]:
    """Always predicting the majority class on ``support``; an undefined precision (of a class
    never predicted) counted as 0, as scikit-learn's classification_report prints it."""
    baseline = evaluation.majority_baseline(support, zero_division=0.0)
    weighted, macro = baseline["per_class"]["weighted avg"], baseline["per_class"]["macro avg"]
    return {"paper": paper, "who": who, "support": _support_text(support),
            "model": f"always {baseline['majority_class']}", "accuracy": baseline["accuracy"],
            "weighted_precision": weighted["precision"], "weighted_recall": weighted["recall"],
            "weighted_f1": weighted["f1"], "macro_f1": macro["f1"]}


BASELINE_COLUMNS = ["paper", "who", "support", "model", "accuracy", "weighted_precision", "weighted_recall",
                    "weighted_f1", "macro_f1"]


def majority_baseline_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """For each paper that prints its test set's class support: its reported models, then what
    always predicting the majority class scores on that support, and on our test split of each
    of our runs of the same paper's recipe (a row per distinct split). Weighted figures are only
    given for the paper's models where the paper reports weighted averages."""
    from helpers import studies

    rows = []
    for key, study in studies.STUDIES.items():
        support = study.scoring.test_support
        if not support:
            continue
        paper = f"paper {key}"
        weighted = study.scoring.averaging == "weighted"
        for row in study.reported:
            rows.append({"paper": paper, "who": f"paper (their data), {row.source}",
                         "support": _support_text(dict(support)), "model": f"{row.backbone} {row.classifier}",
                         "accuracy": row.accuracy, "weighted_precision": row.precision if weighted else None,
                         "weighted_recall": row.recall if weighted else None,
                         "weighted_f1": row.f1 if weighted else None, "macro_f1": row.macro_f1})
        rows.append(_baseline_row(paper, "paper's printed test support", dict(support)))
        splits: dict[tuple, list[str]] = {}
        for entry in entries:
            run = (entry["metrics"] or {}).get("run") or {}
            ours = _support((entry["metrics"] or {}).get("image_level"))
            if run.get("study") == key and ours:
                splits.setdefault((data_named(run), str(run.get("task")), tuple(ours.items())),
                                  []).append(entry["name"])
        for (dataset, task, items), names in splits.items():
            rows.append(_baseline_row(paper, f"our test split ({dataset}, {task}; runs {', '.join(names)})",
                                      dict(items)))
    return pd.DataFrame(rows, columns=BASELINE_COLUMNS)


HYBRID_CLASSIFIERS = ("svm", "fusion")  # the papers' hybrids: paper 000's SVM, paper 003's fusion


def hybrid_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """The hybrids against what they replace, on the same test split: each SVM run beside its
    network's own output, each fusion run beside its single pathways (the ``compared`` block of
    metrics.json), then the papers' own rows for the same comparison (their data)."""
    from helpers import studies

    rows, studies_seen = [], set()
    for entry in entries:
        metrics = entry["metrics"]
        if not metrics or "compared" not in metrics:
            continue
        run = metrics["run"]
        studies_seen.add(run.get("study"))
        data = f"{data_named(run)} ({run.get('task')}, {'x'.join(map(str, run.get('image_size', [])))} px)"
        models = [({"backbone": run.get("backbone"), "classifier": run.get("classifier")}, metrics)]
        models += [(about, about) for about in metrics["compared"].values()]
        for about, block in models:
            level = block.get("image_level") or {}
            rows.append({"who": "ours", "paper": f"paper {run.get('study')}", "run": entry["name"],
                         "backbone": about.get("backbone"), "classifier": about.get("classifier"), "data": data,
                         "accuracy": (level.get("accuracy") or {}).get("value"),
                         "f1": (level.get("f1") or {}).get("value"),
                         "auc": (level.get("roc_auc") or {}).get("value")})
    reported = studies.reported_table()
    for study in sorted(studies_seen):
        paper_rows = reported[reported["study"] == study]
        if study == "000":  # the paper's SVM comparison is on its own ConvNet only
            paper_rows = paper_rows[paper_rows["backbone"] == "convnet"]
        for paper in paper_rows.itertuples():
            rows.append({"who": "paper (their data)", "paper": f"paper {study}", "run": f"{paper.slug}, {paper.source}",
                         "backbone": paper.backbone, "classifier": paper.classifier, "data": paper.dataset,
                         "accuracy": paper.accuracy, "f1": paper.f1, "auc": paper.auc})
    return pd.DataFrame(rows, columns=["who", "paper", "run", "backbone", "classifier", "data", "accuracy", "f1", "auc"])


def comparison_title(entries: list[dict[str, Any]], profile: str) -> str:
    """Title for the comparison figure: which data, weights, backend and profile our numbers come from."""
    return (f"Accuracy: ours (95 % bootstrap CI) beside each result the papers report (their data)\n"
            f"{_provenance(entries, profile)}")


def plot_comparison(table: pd.DataFrame, *, title: str = ""):
    """Accuracy per reported (paper, backbone, classifier, optimiser), a row each, grouped by paper:
    ours as a dot with its 95 % CI (coloured by weights), the paper's as a diamond (their data).

    Horizontal, so that every label is readable (it replaces a bar chart of 19 rotated labels).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in table.itertuples():
        model = " ".join(str(part) for part in (row.backbone, row.classifier, row.optimiser) if part)
        ours = row.our_accuracy if row.our_run else None
        groups.setdefault(_paper_heading(row.paper.removeprefix("paper ")), []).append({
            "label": model, "value": ours, "ci": row.our_accuracy_ci, "weights": row.our_weights,
            "reference": row.paper_accuracy,
            "text": round_to_ci(ours, row.our_accuracy_ci) if row.our_run else "no run of ours"})
    return _dot_plot(list(groups.items()), xlabel="test accuracy (ours: 95 % bootstrap CI)",
                     reference_label="paper's reported accuracy, their data", chance=None,
                     title=title or "Accuracy: ours vs. the papers' (theirs on their data)")


TRANSFER_HEADING = "Does ImageNet help?"


def _auc_cell(metrics: dict[str, Any] | None) -> tuple[float | None, str]:
    cell = ((metrics or {}).get("image_level") or {}).get("roc_auc") or {}
    return cell.get("value"), _ci(cell)


def _paired_auc(imagenet: dict[str, Any], scratch: dict[str, Any]) -> dict[str, Any] | None:
    """The paired, patient-clustered bootstrap of test AUC (ImageNet minus scratch), or None when
    either run lacks its predictions or the two were not tested on the same images."""
    files = [entry["dir"] / evaluation.PREDICTIONS_FILE for entry in (imagenet, scratch)]
    if not all(path.exists() for path in files):
        return None
    first, second = (evaluation.read_predictions(path) for path in files)
    if list(first["image"]) != list(second["image"]) or list(first["y_true"]) != list(second["y_true"]):
        raise ValueError(f"{files[0]} and {files[1]}: the two runs were not tested on the same images, "
                         f"so they cannot be compared pair by pair")
    classes = list(imagenet["metrics"]["run"]["classes"])
    columns = [f"p_{name}" for name in classes]
    boot = imagenet["metrics"].get("bootstrap") or {}
    return evaluation.paired_bootstrap(first["y_true"].to_numpy(), first[columns].to_numpy(),
                                       second[columns].to_numpy(), classes, groups=first["patient_id"],
                                       n_boot=int(boot.get("n_boot") or 1000), seed=int(boot.get("seed") or 0))


def _tested(metrics: dict[str, Any] | None) -> str:
    """"N images, M patients" a run was tested on ("" when it has no metrics)."""
    images = ((metrics or {}).get("image_level") or {}).get("n")
    patients = ((metrics or {}).get("patient_level") or {}).get("n")
    if images is None:
        return ""
    return f"{images} images" + (f", {patients} patients" if patients is not None else "")


def transfer_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Per backbone: test AUC from ImageNet weights and from random weights (the plan's
    ``baseline_of`` pairs: same recipe, data and test split), each with its 95 % CI, and the
    paired difference with a paired, patient-clustered bootstrap CI. An ImageNet run whose weights
    could not be had says so instead of a number."""
    by_name = {entry["name"]: entry for entry in entries}
    rows = []
    for scratch in entries:
        original = scratch["status"].get("baseline_of")
        if not original or original not in by_name:
            continue
        imagenet = by_name[original]
        run = (scratch["metrics"] or {}).get("run") or {}
        scratch_auc, scratch_ci = _auc_cell(scratch["metrics"])
        imagenet_auc, imagenet_ci = _auc_cell(imagenet["metrics"])
        status = imagenet["status"].get("status", "?")
        paired = _paired_auc(imagenet, scratch) if imagenet["metrics"] and scratch["metrics"] else None
        theirs = (imagenet["metrics"] or {}).get("run") or {}
        rows.append({
            "backbone": run.get("backbone") or theirs.get("backbone") or scratch["name"],
            "recipe": f"paper {run.get('study') or theirs.get('study', '?')}, {run.get('task') or theirs.get('task', '?')}",
            "imagenet_run": original,
            "imagenet_auc": imagenet_auc,
            "imagenet_95ci": imagenet_ci if imagenet["metrics"] else (
                "weights unavailable" if status == "unavailable" else f"run {status}"),
            "scratch_run": scratch["name"],
            "scratch_auc": scratch_auc,
            "scratch_95ci": scratch_ci if scratch["metrics"] else f"run {scratch['status'].get('status', '?')}",
            "difference": paired["difference"] if paired else None,
            "difference_95ci": (f"[{paired['ci_low']:.3f}, {paired['ci_high']:.3f}]" if paired else ""),
            "n_test": (f"{paired['n']} images, {paired['n_groups']} patients" if paired
                       else _tested(scratch["metrics"])),
            "imagenet_arm": (f"{theirs.get('weights')}, freeze {theirs.get('freeze')}, "
                             f"normalisation {theirs.get('normalisation')}, {theirs.get('epochs')} epochs"
                             + (", cached features" if theirs.get("cache_features") else "")) if theirs else
                            f"not run ({status}: see Runs)",
            "scratch_arm": (f"random init, freeze {run.get('freeze')}, normalisation {run.get('normalisation')}, "
                            f"{run.get('epochs')} epochs"
                            + (", cached features" if run.get("cache_features") else "")) if run else "",
        })
    return pd.DataFrame(rows, columns=[
        "backbone", "recipe", "imagenet_run", "imagenet_auc", "imagenet_95ci", "scratch_run", "scratch_auc",
        "scratch_95ci", "difference", "difference_95ci", "n_test", "imagenet_arm", "scratch_arm"])


def plot_transfer(table: pd.DataFrame, *, title: str = ""):
    """Test AUC with 95 % CIs per backbone: from ImageNet weights and from scratch, side by side
    (left), and the paired difference with its CI (right); a missing ImageNet arm is marked."""
    from helpers.figures import new_figure

    fig = new_figure(figsize=(11, 0.5 * max(len(table), 2) + 1.8))
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"{row.backbone} ({row.recipe})" for row in table.itertuples()]
    positions = np.arange(len(table))[::-1]
    for offset, (arm, colour, name) in enumerate([("imagenet", "tab:blue", "ImageNet weights"),
                                                  ("scratch", "tab:orange", "random init")]):
        labelled = False
        for y, row in zip(positions, table.itertuples()):
            value = getattr(row, f"{arm}_auc")
            where = y + (0.15 if offset == 0 else -0.15)
            if value is None or value != value:
                left.text(0.02, where, getattr(row, f"{arm}_95ci"), fontsize=9, va="center", color=colour)
                continue
            interval = _parse_ci(getattr(row, f"{arm}_95ci"))
            if interval:
                left.plot(interval, [where, where], color=colour, linewidth=2)
            left.plot([value], [where], "o", color=colour, label=None if labelled else name)
            labelled = True
    for y, row in zip(positions, table.itertuples()):
        interval = _parse_ci(row.difference_95ci)
        if row.difference is not None and row.difference == row.difference:
            if interval:
                right.plot(interval, [y, y], color="black", linewidth=2)
            right.plot([row.difference], [y], "o", color="black")
    left.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    right.axvline(0.0, color="grey", linestyle=":", linewidth=1)
    left.set_xlim(0, 1.03)
    left.set_yticks(positions, labels, fontsize=9.5)
    left.set_xlabel("test ROC AUC (95 % bootstrap CI)", fontsize=9.5)
    right.set_xlabel("ImageNet minus random init (paired 95 % CI)", fontsize=9.5)
    if left.get_legend_handles_labels()[0]:
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=9.5, frameon=False)
    fig.suptitle(title or TRANSFER_HEADING, fontsize=10.5)
    return fig


def _parse_ci(text: Any) -> tuple[float, float] | None:
    """``"[0.512, 0.733]"`` -> (0.512, 0.733); anything else None."""
    if not isinstance(text, str) or not text.startswith("["):
        return None
    low, high = text.strip("[]").split(",")
    return float(low), float(high)


def _backends(entries: list[dict[str, Any]]) -> list[str]:
    """The Keras backends the runs recorded; for runs that predate the record, this process' backend."""
    backends = sorted({(entry["metrics"].get("environment") or {}).get("backend") for entry in entries
                       if entry["metrics"]} - {None})
    if not backends:
        from helpers import backend  # noqa: F401  (imports Keras quietly)
        import keras

        backends = [keras.config.backend()]
    return backends


def _provenance(entries: list[dict[str, Any]], profile: str) -> str:
    """"<data> data, <profile> profile, weights: ..., Keras backend ...": what a figure's numbers come from."""
    ours = results_table(entries)
    datasets = ", ".join(sorted(set(ours["dataset"]))) if not ours.empty else "no runs"
    weights = ", ".join(sorted({_weights_short(w) for w in ours["weights"]})) if not ours.empty else "none"
    return f"{datasets} data, {profile} profile, weights: {weights}, Keras backend {', '.join(_backends(entries))}"


def transfer_title(entries: list[dict[str, Any]], profile: str) -> str:
    """Which data, profile and backend the transfer figure comes from (the backend the runs
    recorded; for runs that predate the record, this process' backend)."""
    ours = results_table(entries)
    datasets = ", ".join(sorted(set(ours["dataset"]))) if not ours.empty else "no runs"
    return (f"{TRANSFER_HEADING} Test AUC from ImageNet weights vs. from random weights\n"
            f"{datasets} data, {profile} profile, Keras backend {', '.join(_backends(entries))}")


CV_HEADING = "Cross-validation (patient-grouped k-fold)"
CV_NOTE = (
    "Runs with split cv: one model per fold and repeat, each tested on its own fold's patients (none of "
    "whom it trained or validated on). 'AUC over folds' is the mean +- SD of the folds' test AUCs "
    "(image level): how far one split's number moves with the draw of patients. 'pooled AUC' is that of "
    "the out-of-fold predictions of every image together, with a 95 % bootstrap CI over whole patients. "
    "Where ImageNet weights could not be had the row says so, and nothing was substituted.")


def cv_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cross-validated run (split cv): backbone, weights, task, the image-level test AUC
    as mean +- SD over the folds, the pooled out-of-fold AUC with its patient-clustered 95 % CI, and
    the folds; a planned cv run that did not run (e.g. its ImageNet weights unavailable) says why."""
    rows = []
    for entry in entries:
        metrics = entry["metrics"] or {}
        block = metrics.get("cross_validation")
        parameters = entry["status"].get("parameters") or {}
        if block is None and parameters.get("SPLIT") != "cv":
            continue
        run = metrics.get("run") or {}
        row = {"run": entry["name"], "backbone": run.get("backbone") or parameters.get("BACKBONE"),
               "weights": run.get("weights") or parameters.get("WEIGHTS"),
               "task": run.get("task") or parameters.get("TASK")}
        if block is None:
            status = entry["status"].get("status", "?")
            rows.append({**row, "auc_over_folds": "weights unavailable" if status == "unavailable" else f"run {status}"})
            continue
        mean, sd = block["mean"]["image_level"]["roc_auc"], block["sd"]["image_level"]["roc_auc"]
        pooled = metrics["image_level"]["roc_auc"]
        rows.append({**row, "auc_over_folds": f"{_fmt(mean)} +- {_fmt(sd)}", "pooled_auc": pooled.get("value"),
                     "pooled_95ci": _ci(pooled), "folds": f"{block['k']} x {block['repeats']}",
                     "n": f"{block['n_images']} images, {block['n_patients']} patients"})
    return pd.DataFrame(rows, columns=["run", "backbone", "weights", "task", "auc_over_folds", "pooled_auc",
                                       "pooled_95ci", "folds", "n"])


# ---------------------------------------------------------------------------------------------
# Numbers as a reader needs them: rounded to what their CIs justify, times in minutes
# ---------------------------------------------------------------------------------------------

MIN_DECIMALS, MAX_DECIMALS = 2, 3


def _interval(ci: Any) -> tuple[float, float] | None:
    """A CI given as ``(low, high)``, a metrics cell (``ci_low``/``ci_high``) or ``"[low, high]"``
    text; None where it is missing or not finite."""
    if isinstance(ci, str):
        ci = _parse_ci(ci)
    elif isinstance(ci, dict):
        ci = (ci.get("ci_low"), ci.get("ci_high"))
    if ci is None or len(ci) != 2 or any(bound is None for bound in ci):
        return None
    low, high = float(ci[0]), float(ci[1])
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def _missing_number(value: Any) -> bool:
    return value is None or isinstance(value, str) or not math.isfinite(float(value))


def ci_decimals(ci: Any) -> int:
    """How many decimals a value with this 95 % CI deserves.

    The rule: the decimal place of the CI half-width's first significant digit, one more when
    that digit is 1 or 2 (so the half-width keeps 1 or 2 significant digits: 0.05 -> 2 decimals,
    0.012 -> 3), never fewer than 2 nor more than 3. Without a CI (or a zero-width one): 3.
    """
    interval = _interval(ci)
    if interval is None:
        return MAX_DECIMALS
    half = abs(interval[1] - interval[0]) / 2
    if half == 0:
        return MAX_DECIMALS
    exponent = math.floor(math.log10(half))
    leading = int(round(half / 10.0 ** exponent, 6))
    decimals = -exponent + (1 if leading <= 2 else 0)
    return min(MAX_DECIMALS, max(MIN_DECIMALS, decimals))


def round_to_ci(value: Any, ci: Any = None, *, signed: bool = False) -> str:
    """``value [low, high]`` with the decimals :func:`ci_decimals` gives (``+`` before a positive
    value when ``signed``, for differences); ``n/a`` for a missing value, the value alone without a CI."""
    if _missing_number(value):
        return "n/a"
    decimals = ci_decimals(ci)
    text = f"{float(value):{'+' if signed else ''}.{decimals}f}"
    interval = _interval(ci)
    if interval is not None:
        text += f" [{interval[0]:.{decimals}f}, {interval[1]:.{decimals}f}]"
    return text


def format_seconds(seconds: Any) -> str:
    """A run time as a reader says it: 37.9 -> "38 s", 1234 -> "20 min 34 s", 7384 -> "2 h 3 min"."""
    if _missing_number(seconds):
        return ""
    total = int(round(float(seconds)))
    if total < 60:
        return f"{total} s"
    minutes, rest = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


HELPED, HURT, NO_EVIDENCE = "helped", "hurt", "no evidence either way"


def verdict(difference: Any, ci: Any, *, better: str = HELPED, worse: str = HURT) -> str | None:
    """What a difference with its 95 % CI says: ``better`` when the CI excludes 0 and the difference
    is positive, ``worse`` when it excludes 0 and is negative, :data:`NO_EVIDENCE` when it contains
    0; None without a difference or a CI (a point difference is no verdict)."""
    interval = _interval(ci)
    if _missing_number(difference) or interval is None:
        return None
    if interval[0] > 0 and float(difference) > 0:
        return better
    if interval[1] < 0 and float(difference) < 0:
        return worse
    return NO_EVIDENCE


def _weights_short(weights: Any) -> str:
    text = _text(weights)
    if text.startswith("random"):
        return "random init"
    if text.startswith("imagenet"):
        return "ImageNet"
    return text or "not recorded"


def _paper_heading(key: str) -> str:
    """"paper 000 (mahmood2021)": a paper's key and the short name it goes by."""
    from helpers import studies

    try:
        return f"paper {key} ({studies.get_study(key).slug})"
    except KeyError:
        return f"paper {key}"


def _study_of(entry: dict[str, Any]) -> str | None:
    """Which paper's recipe a run follows: its metrics' record, else the parameters it was run with."""
    run = (entry["metrics"] or {}).get("run") or {}
    return run.get("study") or (entry["status"].get("parameters") or {}).get("STUDY")


def _model_named(backbone: Any, classifier: Any = None, optimiser: Any = None) -> str:
    """"vgg16", "mobilenetv2 svm", "alexnet softmax adam": a model in a few words."""
    parts = [_text(backbone) or "?"]
    if _text(classifier) and classifier != "network":
        parts.append(str(classifier))
    if _text(optimiser):
        parts.append(str(optimiser))
    return " ".join(parts)


def _count(number: int, word: str) -> str:
    """"1 run", "3 runs"."""
    return f"{number} {word}" + ("" if number == 1 else "s")


def _paper_number(value: Any) -> str:
    """A paper's figure as it printed it (up to 4 significant digits)."""
    return "n/a" if _missing_number(value) else f"{float(value):.4g}"


# ---------------------------------------------------------------------------------------------
# Findings: what the numbers say, in sentences built from them
# ---------------------------------------------------------------------------------------------


class Finding(NamedTuple):
    """One line of the report's findings: what it is about, and what the numbers say."""

    topic: str
    text: str


def _paper_findings(entries: list[dict[str, Any]]) -> list[Finding]:
    """Per paper: our best run by test AUC (with its CI) beside the paper's number for the same
    model (AUC where it reports one, else accuracy), or its best result where it reports none for
    our model; a paper whose runs all lack metrics says why."""
    from helpers import studies

    ours = results_table(entries)
    reported = studies.reported_table()
    by_name = {entry["name"]: entry for entry in entries}
    items = []
    for key in studies.STUDIES:
        heading = _paper_heading(key)
        topic = heading[:1].upper() + heading[1:]
        runs = ours[(ours["study"] == key) & ours["roc_auc"].notna()] if not ours.empty else ours
        if runs.empty:
            planned = [entry for entry in entries if _study_of(entry) == key]
            if planned:
                counts = Counter(entry["status"].get("status", "?") for entry in planned)
                states = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
                items.append(Finding(topic, f"no run of ours has a test AUC ({len(planned)} planned: {states}; "
                                            f"see Runs)."))
            continue
        lows = [(_interval(ci) or (-1.0, -1.0))[0] for ci in runs["roc_auc_ci"]]
        best = runs.assign(_low=lows).sort_values(["roc_auc", "_low", "run"], ascending=[False, False, True]).iloc[0]
        record = (by_name[best["run"]]["metrics"] or {}).get("run") or {}
        tested = "pooled out-of-fold predictions" if record.get("split") == "cv" else f"{best['n_test']} test images"
        text = (f"our best run, {best['run']} ({_model_named(best['backbone'], best['classifier'])}, "
                f"{_weights_short(best['weights'])}), has AUC {round_to_ci(best['roc_auc'], best['roc_auc_ci'])} "
                f"({best['dataset']}, {tested}); ")
        theirs = reported[reported["study"] == key]
        matched = [row for _, row in theirs.iterrows() if _matches(best, row)]
        if matched:
            row, which = matched[0], "the same model"
        else:
            column = "auc" if theirs["auc"].notna().any() else "accuracy"
            row = theirs.sort_values(column, ascending=False, na_position="last").iloc[0]
            which = "its best result, another model than ours"
        model = _model_named(row["backbone"], row["classifier"], row["optimiser"])
        source = f"{row['source']}, their data: {row['dataset']}"
        if not _missing_number(row["auc"]):
            text += f"the paper reports AUC {_paper_number(row['auc'])} for {model} ({which}; {source})."
        else:
            text += (f"the paper reports no AUC; its accuracy for {model} is {_paper_number(row['accuracy'])} "
                     f"({which}; {source}), ours {round_to_ci(best['accuracy'], best['accuracy_ci'])}.")
        items.append(Finding(topic, text))
    return items


def _caveat_finding(entries: list[dict[str, Any]], profile: str | None) -> list[Finding]:
    if profile is None:
        return []
    scaled = _profile_context(entries, profile)[1]
    return [Finding("Caveat", f"the {profile} profile is scaled down from the papers: "
                              + ("; ".join(scaled) if scaled else "nothing") +
                              "; the papers' numbers are measured on their data, ours on ours.")]


def _transfer_findings(entries: list[dict[str, Any]]) -> list[Finding]:
    """Whether ImageNet weights helped, pair by pair (the paired difference's CI), as "k of n pairs"."""
    table = transfer_table(entries)
    if table.empty:
        return [Finding("ImageNet", "no ImageNet / random-weights pair under this profile, so nothing "
                                    "says what ImageNet weights buy.")]
    judged, not_paired = [], Counter()
    for row in table.itertuples():
        said = verdict(row.difference, row.difference_95ci)
        if said is None:
            if not _interval(row.imagenet_95ci) and _text(row.imagenet_95ci) and _missing_number(row.imagenet_auc):
                not_paired[f"the ImageNet arm {row.imagenet_95ci}"] += 1
            elif _missing_number(row.scratch_auc):
                not_paired[f"the random-init arm {row.scratch_95ci}"] += 1
            else:
                not_paired["no predictions.csv to pair them"] += 1
            continue
        judged.append((row, said))
    counts = Counter(said for _, said in judged)
    text = (f"ImageNet weights helped in {counts[HELPED]} of {_count(len(judged), 'pair')} with both arms run, hurt in "
            f"{counts[HURT]}, {NO_EVIDENCE} in {counts[NO_EVIDENCE]}")
    if judged:
        text += (" (test AUC, ImageNet minus random init, paired 95 % CI: "
                 + "; ".join(f"{row.backbone} ({row.recipe}): "
                             f"{round_to_ci(row.difference, row.difference_95ci, signed=True)}"
                             for row, _ in judged) + ")")
    text += "."
    if not_paired:
        text += (f" {_count(sum(not_paired.values()), 'more pair')} without a paired difference: "
                 + ", ".join(f"{why} in {count}" for why, count in not_paired.items()) + ".")
    return [Finding("ImageNet", text)]


_HYBRID_WHAT = {"svm": "The SVM on deep features against the network's own output (paper 000)",
                "fusion": "The fusion against each pathway alone (paper 003)"}


def _hybrid_findings(entries: list[dict[str, Any]]) -> list[Finding]:
    """Whether each hybrid beat what it replaces on the same test split (test AUC, else accuracy).

    ``metrics.json`` records each replaced model's metrics but not its predictions, so there is
    no paired CI of the difference: the sentence says so and gives the point differences."""
    by_kind: dict[str, list[str]] = {}
    sides: dict[str, Counter] = {}
    for entry in entries:
        metrics = entry["metrics"] or {}
        if "compared" not in metrics:
            continue
        kind = (metrics.get("run") or {}).get("classifier") or "hybrid"
        own = metrics.get("image_level") or {}
        for name, block in metrics["compared"].items():
            other = block.get("image_level") or {}
            metric = "roc_auc" if not any(_missing_number((level.get("roc_auc") or {}).get("value"))
                                          for level in (own, other)) else "accuracy"
            mine, theirs = own.get(metric) or {}, other.get(metric) or {}
            if _missing_number(mine.get("value")) or _missing_number(theirs.get("value")):
                continue
            difference = float(mine["value"]) - float(theirs["value"])
            side = "higher" if difference > 0 else "lower" if difference < 0 else "equal"
            sides.setdefault(kind, Counter())[side] += 1
            by_kind.setdefault(kind, []).append(
                f"{entry['name']}: {'AUC' if metric == 'roc_auc' else 'accuracy'} "
                f"{round_to_ci(mine['value'], mine)} vs {round_to_ci(theirs['value'], theirs)} for {name}, "
                f"{difference:+.3f}")
    items = []
    for kind, lines in by_kind.items():
        what = _HYBRID_WHAT.get(kind, f"The {kind} against what it replaces")
        counted = ", ".join(f"{side} in {sides[kind][side]}" for side in ("higher", "equal", "lower"))
        items.append(Finding("Hybrids", f"{what}: {counted} of {_count(len(lines), 'comparison')} ("
                                        + "; ".join(lines) + "). No CI of the difference is recorded (the "
                                        "replaced model's predictions are not saved): point differences only, "
                                        "no evidence either way."))
    return items


LOCALISATION_NOTE = (
    "Grad-CAM maps of the true class scored against the lesions: the pointing game is the share of images "
    "whose hottest pixel lies inside a lesion, mass inside the share of the map's mass that does; 95 % "
    "bootstrap CIs over whole patients. Beside them, what two maps that look at nothing score: a uniform map and one centred "
    "on the image. With lesion-centred patches the lesion sits in the middle, so the centred baseline is "
    "near perfect: only a score above it would show that the network looks at the lesion.")


def _localisation_findings(entries: list[dict[str, Any]]) -> list[Finding]:
    """The localisation scores (the ``localisation`` blocks), the best run's with its baselines."""
    blocks = [(entry["name"], (entry["metrics"] or {}).get("localisation")) for entry in entries]
    blocks = [(name, block) for name, block in blocks if block]
    measured = [(name, block) for name, block in blocks if block.get("status") == "ok"]
    unavailable = [(name, block) for name, block in blocks if block.get("status") != "ok"]
    if not blocks:
        return [Finding("Localisation", "no run recorded a localisation score.")]
    items = []
    if measured:
        def pointing(item: tuple[str, dict]) -> float:
            value = (item[1].get("pointing_game") or {}).get("value")
            return -1.0 if _missing_number(value) else float(value)

        name, block = max(measured, key=pointing)
        baselines = block.get("baselines") or {}

        def score(key: str) -> str:
            cell = block.get(key) or {}
            against = ", ".join(f"{which} {float((baselines.get(which) or {})[key]):.2f}"
                                for which in ("uniform", "centred") if (baselines.get(which) or {}).get(key) is not None)
            return f"{round_to_ci(cell.get('value'), cell.get('ci'))}" + (f" (baselines: {against})" if against else "")

        where = ", ".join(_text(block.get(key)) for key in ("input", "lesions") if _text(block.get(key)))
        method = {"grad-cam": "Grad-CAM", "cam": "CAM"}.get(_text(block.get("method")), _text(block.get("method")) or "a saliency map")
        text = (f"{method} measured in {_count(len(measured), 'run')}; the best pointing "
                f"game, {name}: {score('pointing_game')}; mass inside the lesion {score('mass_inside')}; "
                f"{where}, {block.get('n_images', '?')} images of {block.get('n_patients', '?')} patients.")
        if any("lesion-centred" in _text(item.get("input")) for _, item in measured):
            text += (" With lesion-centred patches the centred baseline is near perfect: a map that only looks "
                     "at the middle scores as well.")
        items.append(Finding("Localisation", text))
    if unavailable:
        reasons = Counter(_text(block.get("reason")) or "no reason given" for _, block in unavailable)
        items.append(Finding("Localisation", f"not measured in {_count(len(unavailable), 'run')}: "
                                             + "; ".join(f"{why} ({count})" for why, count in reasons.items()) + "."))
    return items


def findings(entries: list[dict[str, Any]], *, profile: str | None = None) -> list[Finding]:
    """The report's findings, built from the numbers: per paper our best run beside the paper's
    number, the profile's caveats (with ``profile``), whether ImageNet helped, whether each hybrid
    beat what it replaces, the localisation scores."""
    return (_paper_findings(entries) + _caveat_finding(entries, profile) + _transfer_findings(entries)
            + _hybrid_findings(entries) + _localisation_findings(entries))


def findings_markdown(items: list[Finding]) -> str:
    """The findings as a Markdown list (for a notebook's ``IPython.display.Markdown`` and ``index.md``)."""
    return "".join(f"- **{item.topic}**: {item.text}\n" for item in items) or "- nothing to report yet\n"


# ---------------------------------------------------------------------------------------------
# The forest plot: test AUC with its CI for every run, grouped by paper
# ---------------------------------------------------------------------------------------------

FOREST_COLUMNS = ["study", "run", "backbone", "classifier", "weights", "auc", "ci_low", "ci_high", "n_test",
                  "paper_auc", "paper_model"]


def forest_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run with a test AUC (image level): its CI, and the AUC the paper reports for
    the same model where it reports one (their data), ordered by paper, then backbone, the network
    before its hybrids, ImageNet before random init."""
    from helpers import studies

    ours = results_table(entries)
    reported = studies.reported_table()
    rows = []
    for _, run in ours.iterrows():
        if _missing_number(run["roc_auc"]):
            continue
        low, high = _interval(run["roc_auc_ci"]) or (math.nan, math.nan)
        theirs = [row for _, row in reported.iterrows() if _matches(run, row) and not _missing_number(row["auc"])]
        rows.append({"study": _text(run["study"]) or "?", "run": run["run"], "backbone": run["backbone"],
                     "classifier": run["classifier"], "weights": run["weights"], "auc": float(run["roc_auc"]),
                     "ci_low": low, "ci_high": high, "n_test": run["n_test"],
                     "paper_auc": float(theirs[0]["auc"]) if theirs else math.nan,
                     "paper_model": _model_named(theirs[0]["backbone"], theirs[0]["classifier"]) if theirs else ""})
    table = pd.DataFrame(rows, columns=FOREST_COLUMNS)
    if table.empty:
        return table
    order = table.assign(_hybrid=table["classifier"] != "network",
                         _random=table["weights"].astype(str).str.startswith("random"))
    order = order.sort_values(["study", "backbone", "_hybrid", "_random", "run"], kind="stable")
    return order[FOREST_COLUMNS].reset_index(drop=True)


def forest_title(entries: list[dict[str, Any]], profile: str) -> str:
    """Which data, weights, backend and profile the forest plot's numbers come from."""
    return f"Test ROC AUC (image level) of every run, by paper\n{_provenance(entries, profile)}"


_WEIGHT_COLOURS = {"ImageNet": "tab:blue", "random init": "tab:orange"}


def plot_forest(data: list[dict[str, Any]] | pd.DataFrame, *, title: str = ""):
    """Forest plot of test AUC with 95 % CIs, a row per run (``collect_runs`` entries or a
    :func:`forest_table`), a block per paper, the paper's reported AUC for the same model marked
    (a diamond: their data), chance (0.5) a dotted line; sized by the number of rows."""
    table = data if isinstance(data, pd.DataFrame) else forest_table(data)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in table.itertuples():
        groups.setdefault(_paper_heading(row.study), []).append({
            "label": row.run, "value": row.auc, "ci": (row.ci_low, row.ci_high), "weights": row.weights,
            "reference": row.paper_auc, "text": round_to_ci(row.auc, (row.ci_low, row.ci_high))})
    return _dot_plot(list(groups.items()), xlabel="test ROC AUC, image level (95 % bootstrap CI)",
                     reference_label="paper's reported AUC, their data", chance=0.5,
                     title=title or "Test ROC AUC of every run, by paper")


def _dot_plot(groups: list[tuple[str, list[dict[str, Any]]]], *, xlabel: str, reference_label: str,
              chance: float | None, title: str):
    """Dots with CI bars, a row per item, a shaded heading row per group; each item: ``label``,
    ``value``, ``ci``, ``weights`` (its colour), ``reference`` (a diamond) and ``text`` (at the right)."""
    from matplotlib.lines import Line2D

    from helpers.figures import new_figure

    lines: list[tuple[str, dict[str, Any] | None]] = []
    for heading, items in groups:
        lines += [(heading, None), *((item["label"], item) for item in items)]
    n_rows = max(len(lines), 1)
    fig = new_figure(figsize=(11, 0.3 * n_rows + 1.9))
    ax = fig.subplots()
    positions = np.arange(n_rows)[::-1]
    texts, shown, lowest = [], {}, 1.0
    for y, (_, item) in zip(positions, lines):
        if item is None:
            ax.axhspan(y - 0.5, y + 0.5, color="#ececec", zorder=0)
            texts.append("")
            continue
        name = _weights_short(item["weights"]) if _text(item["weights"]) else ""
        colour = _WEIGHT_COLOURS.get(name, "tab:green")
        interval = _interval(item["ci"])
        if interval is not None:
            ax.plot(interval, [y, y], color=colour, linewidth=2.2, solid_capstyle="butt")
            lowest = min(lowest, interval[0])
        if not _missing_number(item["value"]):
            ax.plot([item["value"]], [y], "o", color=colour, markersize=6)
            lowest = min(lowest, float(item["value"]))
            shown.setdefault(name, colour)
        if not _missing_number(item["reference"]):
            ax.plot([item["reference"]], [y], "D", markerfacecolor="white", markeredgecolor="black", markersize=7)
            lowest = min(lowest, float(item["reference"]))
            shown.setdefault(reference_label, None)
        texts.append(item["text"])
    ax.set_yticks(positions[:len(lines)], [label for label, _ in lines], fontsize=9.5)
    for tick, (_, item) in zip(ax.get_yticklabels(), lines):
        if item is None:
            tick.set_fontweight("bold")
    ax.set_ylim(-0.6, n_rows - 0.4)
    ax.set_xlim(max(0.0, min(0.45, lowest - 0.03)), 1.01)
    ax.grid(axis="x", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(axis="x", labelsize=9.5)
    ax.set_xlabel(xlabel, fontsize=10)
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(positions[:len(lines)], texts, fontsize=9)
    right.tick_params(axis="y", length=0)
    handles = [Line2D([], [], color=colour, marker="o", linewidth=2.2, label=f"ours, {name or 'weights not recorded'}")
               for name, colour in shown.items() if colour is not None]
    if reference_label in shown:
        handles.append(Line2D([], [], linestyle="none", marker="D", markerfacecolor="white",
                              markeredgecolor="black", markersize=7, label=reference_label))
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle=":", linewidth=1.2)
        handles.append(Line2D([], [], color="grey", linestyle=":", linewidth=1.2, label=f"chance ({chance:g})"))
    if not lines:
        ax.text(0.5, 0.5, "no run to show", transform=ax.transAxes, ha="center", fontsize=10)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9.5, frameon=False)
    fig.suptitle(title, fontsize=10.5)
    return fig


# ---------------------------------------------------------------------------------------------
# Localisation: Grad-CAM against the lesions (the optional ``localisation`` block of metrics.json)
# ---------------------------------------------------------------------------------------------

LOCALISATION_COLUMNS = ["run", "status", "method", "target_layer", "input", "lesions", "n", "pointing_game",
                        "pointing_game_uniform", "pointing_game_centred", "mass_inside", "mass_inside_uniform",
                        "mass_inside_centred", "reason"]


def localisation_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run with a ``localisation`` block: the pointing game and the mass inside the
    lesion, each as ``value [95 % CI]`` (:func:`round_to_ci`), beside what a uniform and a centred
    map score (2 decimals), and how they were measured; an unavailable one says why."""
    rows = []
    for entry in entries:
        block = (entry["metrics"] or {}).get("localisation")
        if not block:
            continue
        baselines = block.get("baselines") or {}
        images, patients = block.get("n_images"), block.get("n_patients")
        row = {"run": entry["name"], "status": block.get("status", "?"), "method": _text(block.get("method")),
               "target_layer": _text(block.get("target_layer")), "input": _text(block.get("input")),
               "lesions": _text(block.get("lesions")),
               "n": (f"{images} images" + (f", {patients} patients" if patients is not None else ""))
               if images is not None else "", "reason": _text(block.get("reason"))}
        for score in ("pointing_game", "mass_inside"):
            cell = block.get(score) or {}
            row[score] = round_to_ci(cell.get("value"), cell.get("ci")) if cell else ""
            for which in ("uniform", "centred"):
                value = (baselines.get(which) or {}).get(score)
                row[f"{score}_{which}"] = "" if _missing_number(value) else f"{float(value):.2f}"
        rows.append(row)
    return pd.DataFrame(rows, columns=LOCALISATION_COLUMNS)


NOT_RECORDED = "not recorded"
"""The environment of a run whose metrics.json predates it (schema 1)."""

_ENVIRONMENT_LIBRARIES = (("python", "Python"), ("numpy", "NumPy"), ("scikit-learn", "scikit-learn"),
                          ("opencv", "OpenCV"), ("onednn", "oneDNN"))


def describe_environment(environment: dict[str, str] | None) -> str:
    """One line for a run's ``environment`` (see ``helpers.backend.environment``): Keras, its
    backend and the library versions, then the device; ``not recorded`` when there is none."""
    if not environment:
        return NOT_RECORDED
    rest = dict(environment)
    backend, keras_version = rest.pop("backend", "?"), rest.pop("keras", "?")
    backend_version = rest.pop(backend, None)
    device = rest.pop("device", NOT_RECORDED)
    parts = [f"Keras {keras_version} on {backend}" + (f" {backend_version}" if backend_version else "")]
    parts += [f"{label} {rest.pop(key)}" for key, label in _ENVIRONMENT_LIBRARIES if key in rest]
    parts += [f"{key} {value}" for key, value in sorted(rest.items())]
    return ", ".join(parts) + f"; device {device}"


def environment_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """The distinct environments the runs with metrics were computed in, and which runs each."""
    runs: dict[str, list[str]] = {}
    for entry in entries:
        if entry["metrics"]:
            runs.setdefault(describe_environment(entry["metrics"].get("environment")), []).append(entry["name"])
    return pd.DataFrame([{"environment": text, "runs": ", ".join(names)} for text, names in runs.items()],
                        columns=["environment", "runs"])


def _markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


class _Raw(str):
    """A table cell that is already HTML (a link), not to be escaped."""


def _href(path: str) -> str:
    return html.escape(quote(path), quote=True)


def _link(path: str, text: str) -> _Raw:
    return _Raw(f'<a href="{_href(path)}">{html.escape(text)}</a>')


def _html_table(frame: pd.DataFrame, *, wrap: tuple[str, ...] = (), nowrap: tuple[str, ...] = ()) -> str:
    """``frame`` as an HTML table; ``wrap`` columns break long text anywhere (free text, paths),
    ``nowrap`` columns and numbers keep to one line."""
    if frame.empty:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c).replace('_', ' '))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row):
            number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            css = "wrap" if column in wrap else "nowrap" if column in nowrap else "num" if number else ""
            text = value if isinstance(value, _Raw) else html.escape(_fmt(value))
            cells.append(f"<td class='{css}'>{text}</td>" if css else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _status_table(entries: list[dict[str, Any]], pages: dict[str, Path] | None = None) -> pd.DataFrame:
    """Runs: status, time (:func:`format_seconds`), message, and the executed notebook's HTML page."""
    pages = pages or {}
    rows = [{"run": e["name"], "status": e["status"].get("status", "?"),
             "time": format_seconds(e["status"].get("seconds")), "message": e["status"].get("message", ""),
             "notebook": f"[{pages[e['name']].name}]({quote(e['name'])}/{quote(pages[e['name']].name)})"
             if e["name"] in pages else ""}
            for e in entries]
    return pd.DataFrame(rows, columns=["run", "status", "time", "message", "notebook"])


def left_out_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Every image or label row the runs left out (adapter exclusions and unreadable files), and
    why; an item left out by several runs is one row naming them all."""
    rows = []
    for entry in entries:
        run = (entry["metrics"] or {}).get("run", {})
        rows += [{"run": entry["name"], "item": item["item"], "stage": "dataset", "reason": item["reason"]}
                 for item in run.get("excluded", [])]
        rows += [{"run": entry["name"], "item": item["image_path"], "stage": "preprocessing",
                  "reason": item["reason"]} for item in run.get("skipped", [])]
    table = pd.DataFrame(rows, columns=["run", "item", "stage", "reason"])
    if table.empty:
        return table
    # the same item left out by several runs (one dataset, many models) is listed once
    merged = table.groupby(["item", "stage", "reason"], sort=False)["run"].agg(", ".join).reset_index()
    return merged[["run", "item", "stage", "reason"]]


COMPARISON_HEADING = "Ours beside the papers': every (paper, backbone, classifier, optimiser) they report"
COMPARISON_NOTE = (
    "Precision, recall and F1 are compared like for like: paper_averaging is how the paper combines its "
    "classes (binary: its positive class; macro; weighted: by class support, as paper 003's "
    "classification reports; unknown where it does not say; none where it reports no such figure), "
    "and our_averaging how ours in the same row were combined. paper_majority_* is what always "
    "predicting the majority class scores on the paper's printed test support, our_majority_* on "
    "our test split: a number near it says little.")
BASELINE_HEADING = "Always predicting the majority class (papers that print their test support)"
BASELINE_NOTE = (
    "On imbalanced data a high accuracy or weighted average can come from the majority class alone. "
    "Each paper's reported models, then what always predicting its majority class scores on the "
    "paper's own test support and on our test split. The constant predictor's precision for a class it "
    "never predicts is undefined and is counted as 0 here, as scikit-learn's classification_report "
    "prints it. The papers' numbers are quoted as theirs, on their data.")


TRANSFER_NOTE = (
    "Each backbone with the same paper's recipe, data and test split, once from ImageNet weights "
    "and once from random weights (the random-weights run is the plan's baseline_of the other). "
    "AUC is image level with its 95 % bootstrap CI; the difference is paired (both models on the "
    "same resamples of whole test patients). A CI of the difference that contains 0 is no evidence "
    "either way. A cross-validated pair is compared on the pooled out-of-fold predictions of the same "
    "images (the same folds for both arms). Where ImageNet weights could not be had (offline, not in "
    "Keras' cache) the row says so, and nothing was substituted.")
FOREST_HEADING = "Test AUC of every run, by paper"
HYBRID_HEADING = ("The hybrids against what they replace (same test split): SVM vs the network's own output "
                  "(paper 000), fusion vs each pathway alone (paper 003)")
LOCALISATION_HEADING = "Localisation: does the network look at the lesion?"
ROUNDING_NOTE = (
    "Numbers with a CI are rounded to what it justifies: to the decimal of the CI half-width's first "
    "significant digit (one more when that digit is 1 or 2), 2 to 3 decimals; the papers' numbers as "
    "they printed them.")

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:0.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:0.1em}
.lede{color:#555;margin-top:0} .note{color:#444;font-size:0.92em}
ul.findings li{margin:0.35em 0}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0;max-width:100%}
td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top;text-align:left;overflow-wrap:break-word}
th{background:#eee} td.num{white-space:nowrap;text-align:right} td.nowrap{white-space:nowrap}
td.wrap{overflow-wrap:anywhere;min-width:8em}
.wide{overflow-x:auto;max-width:100%}
img.figure{max-width:100%;display:block;margin:0.5em 0}
.thumbs img{max-width:32%;vertical-align:top;margin:2px}
details{margin:0.4em 0} summary{cursor:pointer}
code{font-size:0.95em}
"""

_INLINE_MARKDOWN = ((re.compile(r"\*\*(\S(?:.*?\S)?)\*\*"), "strong"), (re.compile(r"\*(\S(?:.*?\S)?)\*"), "em"),
                    (re.compile(r"`([^`]+)`"), "code"))


def _inline_html(text: str) -> str:
    """A line of Markdown with emphasis (``**strong**``, ``*em*``, ```code```) as escaped HTML."""
    escaped = html.escape(text)
    for pattern, tag in _INLINE_MARKDOWN:
        escaped = pattern.sub(lambda found, tag=tag: f"<{tag}>{found.group(1)}</{tag}>", escaped)
    return escaped


def _profile_context(entries: list[dict[str, Any]], profile: str) -> tuple[str, list[str]]:
    """The profile's description and its scaled-down caveats; on other data than the profile's
    own, the description says so and the caveats about its own data are dropped."""
    try:
        settings = get_profile(profile)
    except KeyError:
        settings = {}
    scaled = list(settings.get("scaled_down") or [])
    description = " ".join(str(settings.get("description", "")).split())
    own = settings.get("dataset")
    used = data_used(entries)
    if used and own and any(own not in datasets for datasets in used):
        description = (f"its settings (input size, epochs, freezing, weights, ...) on other data than its "
                       f"own ({own}): the data line below")
        scaled = [item for item in scaled if own not in item]
    return description, scaled


def _notebook_of(entry: dict[str, Any]) -> Path | None:
    """The executed notebook in a run's folder (None for a run that never started)."""
    if entry["dir"] is None:
        return None
    named = entry["status"].get("notebook")
    candidates = ([entry["dir"] / named] if named else []) + sorted(entry["dir"].glob("*.ipynb"))
    return next((path for path in candidates if path.is_file()), None)


def render_notebooks(entries: list[dict[str, Any]]) -> tuple[dict[str, Path], dict[str, str]]:
    """Each run's executed notebook as an HTML page beside it (:mod:`helpers.notebook_html`),
    rendered only where the page is missing or stale; a failed or timed-out run's notebook too, so
    that its error can be read. Returns ``{run: page}`` and ``{run: why it could not be rendered}``
    (one notebook that fails does not stop the others)."""
    from helpers import notebook_html

    pages, failed = {}, {}
    for entry in entries:
        notebook = _notebook_of(entry)
        if notebook is None:
            continue
        try:
            pages[entry["name"]] = notebook_html.render_if_stale(notebook)[0]
        except Exception as error:  # noqa: BLE001  (the report lists it and goes on)
            failed[entry["name"]] = str(error)
    return pages, failed


def _figure_files(entry: dict[str, Any]) -> list[str]:
    return [name for name in FIGURES if entry["dir"] is not None and (entry["dir"] / name).exists()]


def _run_links(entry: dict[str, Any], pages: dict[str, Path]) -> _Raw:
    """Links to a run's executed notebook (HTML) and to each of its figures."""
    links = [_link(f"{entry['name']}/{pages[entry['name']].name}", "notebook")] if entry["name"] in pages else []
    links += [_link(f"{entry['name']}/{name}", FIGURE_LABELS.get(name, name)) for name in _figure_files(entry)]
    return _Raw(" &middot; ".join(links))


def _runs_overview(entries: list[dict[str, Any]], pages: dict[str, Path]) -> tuple[pd.DataFrame, list[str]]:
    """The compact Runs table (HTML cells) and the distinct messages its status cells point to."""
    ours = results_table(entries)
    metrics = {row["run"]: row for _, row in ours.iterrows()} if not ours.empty else {}
    messages: dict[str, int] = {}
    rows = []
    for entry in entries:
        status, message = entry["status"].get("status", "?"), _text(entry["status"].get("message"))
        cell = html.escape(status)
        if message:
            number = messages.setdefault(message, len(messages) + 1)
            cell += f' <a href="#message-{number}">[{number}]</a>'
        row = metrics.get(entry["name"])
        started = status not in ("unavailable", "not started")
        rows.append({"run": _Raw(f'<span id="run-{html.escape(entry["name"])}">{html.escape(entry["name"])}</span>'),
                     "status": _Raw(cell), "time": format_seconds(entry["status"].get("seconds")) if started else "",
                     "test AUC": round_to_ci(row["roc_auc"], row["roc_auc_ci"]) if row is not None else "",
                     "accuracy": round_to_ci(row["accuracy"], row["accuracy_ci"]) if row is not None else "",
                     "weights": _weights_short(row["weights"]) if row is not None else "",
                     "notebook and figures": _run_links(entry, pages)})
    return pd.DataFrame(rows, columns=["run", "status", "time", "test AUC", "accuracy", "weights",
                                       "notebook and figures"]), list(messages)


def _transfer_compact(transfer: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in transfer.itertuples():
        rows.append({"backbone": row.backbone, "recipe": row.recipe,
                     "ImageNet": round_to_ci(row.imagenet_auc, row.imagenet_95ci)
                     if not _missing_number(row.imagenet_auc) else row.imagenet_95ci,
                     "random init": round_to_ci(row.scratch_auc, row.scratch_95ci)
                     if not _missing_number(row.scratch_auc) else row.scratch_95ci,
                     "difference (paired)": round_to_ci(row.difference, row.difference_95ci, signed=True)
                     if not _missing_number(row.difference) else "",
                     "verdict": verdict(row.difference, row.difference_95ci) or "", "test set": row.n_test})
    return pd.DataFrame(rows, columns=["backbone", "recipe", "ImageNet", "random init", "difference (paired)",
                                       "verdict", "test set"])


def _comparison_compact(compare: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    auc_ci = dict(zip(ours["run"], ours["roc_auc_ci"])) if not ours.empty else {}
    rows = []
    for row in compare.itertuples():
        rows.append({"paper": row.paper.removeprefix("paper "),
                     "model": _model_named(row.backbone, row.classifier, row.optimiser),
                     "their accuracy": _paper_number(row.paper_accuracy), "their AUC": _paper_number(row.paper_auc),
                     "our run": row.our_run or "none",
                     "our accuracy": round_to_ci(row.our_accuracy, row.our_accuracy_ci) if row.our_run else "",
                     "our AUC": round_to_ci(row.our_auc, auc_ci.get(row.our_run)) if row.our_run else "",
                     "our weights": _weights_short(row.our_weights) if row.our_run else ""})
    return pd.DataFrame(rows, columns=["paper", "model", "their accuracy", "their AUC", "our run", "our accuracy",
                                       "our AUC", "our weights"])


def _results_compact(entries: list[dict[str, Any]], level: str = "image_level") -> pd.DataFrame:
    """Every metric of every run as ``value [95 % CI]``, rounded to it."""
    table = results_table(entries, level)
    if table.empty:
        return table
    return pd.DataFrame({"run": table["run"], **{_METRIC_LABELS[name]: [round_to_ci(v, ci) for v, ci in
                                                                      zip(table[name], table[f"{name}_ci"])]
                                                 for name in _METRICS}})


_METRIC_LABELS = {"accuracy": "accuracy", "precision": "precision", "recall": "recall (sensitivity)",
                  "specificity": "specificity", "f1": "F1", "roc_auc": "ROC AUC"}


def _cv_compact(cv: pd.DataFrame) -> pd.DataFrame:
    if cv.empty:
        return cv
    pooled = [round_to_ci(value, ci) if not _missing_number(value) else "" for value, ci in
              zip(cv["pooled_auc"], cv["pooled_95ci"])]
    return cv.drop(columns=["pooled_auc", "pooled_95ci"]).assign(pooled_auc=pooled)[
        ["run", "backbone", "weights", "task", "auc_over_folds", "pooled_auc", "folds", "n"]]


def _details(summary: str, body: str, *, open_: bool = False) -> str:
    return (f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>"
            f"<div class='wide'>{body}</div></details>")


def build_report(folder: Path | str, *, profile: str) -> Path:
    """Write ``index.md`` and ``index.html`` for the runs in ``folder``; return the HTML path.

    The page opens with the findings (:func:`findings`), then the forest plot of every run's test
    AUC (``forest.png``), then tables that fit a laptop screen (numbers rounded to their CIs, wide
    ones folded away), then each run's figures; every run links to its executed notebook, rendered
    as HTML beside it where that page is missing or stale (:func:`render_notebooks`). ``index.md``
    keeps the fuller tables.
    """
    from helpers import studies

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = collect_runs(folder)
    pages, not_rendered = render_notebooks(entries)
    ours = results_table(entries)
    ours_shown = ours[[c for c in ours.columns if not c.endswith("_ci")]] if not ours.empty else ours
    with_ci = ours[["run"] + [f"{m}_ci" for m in _METRICS]] if not ours.empty else ours
    patients = results_table(entries, level="patient_level")
    patients = patients[[c for c in patients.columns if not c.endswith("_ci")]] if not patients.empty else patients
    drawn: set[str] = set()

    def draw(name: str, make) -> None:
        evaluation.save_figure(make(), folder / name)
        drawn.add(name)

    forest = forest_table(entries)
    if not forest.empty:
        draw("forest.png", lambda: plot_forest(forest, title=forest_title(entries, profile)))
    transfer = transfer_table(entries)
    if not transfer.empty:
        draw("transfer.png", lambda: plot_transfer(transfer, title=transfer_title(entries, profile)))
    compare = comparison_table(entries)
    if not compare.empty and not ours.empty:
        draw("comparison.png", lambda: plot_comparison(compare, title=comparison_title(entries, profile)))
    blocks = per_class_blocks(entries)
    if blocks:
        draw("per_class.png", lambda: evaluation.plot_per_class(
            blocks, title=f"Per class, image level, test split: every run of the {profile} profile"))
    description, scaled = _profile_context(entries, profile)
    used = data_used(entries)
    intro = [
        f"Profile **{profile}**: {description}",
        "Data of these runs: " + ("; ".join(used) if used else "no run has finished") + ".",
        "Scaled down from the papers: " + ("; ".join(scaled) if scaled else "nothing") + ".",
        "Numbers under *ours* were produced by this project on the data, weights and profile named in "
        "each row; numbers under *paper* are quoted from the publications, measured on their data.",
    ]
    environments = environment_table(entries)
    if len(environments) == 1:
        intro.append(f"Environment (every run): {environments['environment'].iloc[0]}.")
    elif len(environments) > 1:
        intro.append(f"Environment: the runs differ ({len(environments)} environments, listed below).")
    found = findings(entries, profile=profile)
    with_auc = sorted({row.study for row in studies.reported_table().itertuples() if not _missing_number(row.auc)})
    forest_note = (
        "Each run's test ROC AUC (image level; a cross-validated run: its pooled out-of-fold predictions) with "
        "its 95 % bootstrap CI over whole test patients, coloured by the weights it started from. A diamond: "
        "the AUC the paper reports for the same model, on their data (papers that report AUCs: "
        + (", ".join(with_auc) or "none") + "). Dotted: chance. " + ROUNDING_NOTE)
    localisation = localisation_table(entries)
    transfer_shown = ["backbone", "recipe", "imagenet_auc", "imagenet_95ci", "scratch_auc", "scratch_95ci",
                      "difference", "difference_95ci", "n_test"]
    sections = [
        (TRANSFER_HEADING, transfer[transfer_shown]),
        ("What each arm of the comparison was", transfer[["backbone", "imagenet_arm", "scratch_arm"]]),
        (CV_HEADING, cv_table(entries)),
        ("Runs", _status_table(entries, pages)),
        ("Our results (image level: the test split; a cross-validated run: its pooled out-of-fold predictions)", ours_shown),
        ("95 % bootstrap confidence intervals (image level)", with_ci),
        ("Our results (patient level)", patients),
        ("Per class (test split, or pooled out-of-fold): precision, recall, F1 and support, with macro and weighted averages",
         per_class_table(entries)),
        (COMPARISON_HEADING, compare),
        (BASELINE_HEADING, majority_baseline_table(entries)),
        (HYBRID_HEADING, hybrid_table(entries)),
        (LOCALISATION_HEADING, localisation),
        ("Left out: images and label rows not used, and why", left_out_table(entries)),
    ]
    notes = {TRANSFER_HEADING: TRANSFER_NOTE, COMPARISON_HEADING: COMPARISON_NOTE, BASELINE_HEADING: BASELINE_NOTE,
             CV_HEADING: CV_NOTE, LOCALISATION_HEADING: LOCALISATION_NOTE}
    figures = [(name.removesuffix(".png"), [name]) for name in ("forest.png", "transfer.png", "comparison.png",
                                                                 "per_class.png") if name in drawn]
    figures += [(e["name"], [f"{e['name']}/{f}" for f in _figure_files(e)]) for e in entries]
    figures = [(name, files) for name, files in figures if files]

    md = [f"# Study report: profile `{profile}`\n\n", "## Findings\n\n", findings_markdown(found), "\n"]
    if "forest.png" in drawn:
        md.append(f"## {FOREST_HEADING}\n\n{forest_note}\n\n![forest.png](forest.png)\n\n")
    md += ["## About these runs\n\n", *(line + "\n\n" for line in intro)]
    if len(environments) > 1:
        md.append(_markdown_table(environments) + "\n")
    md += [f"## {heading}\n\n" + (f"{notes[heading]}\n\n" if heading in notes else "")
           + f"{_markdown_table(table)}\n" for heading, table in sections]
    if not_rendered:
        md.append("Notebooks that could not be rendered as HTML:\n\n"
                  + "".join(f"- {name}: {why}\n" for name, why in not_rendered.items()) + "\n")
    md += ["## Figures\n"] + [f"\n### {name}\n\n" + " ".join(f"![{f}]({f})" for f in files) + "\n"
                              for name, files in figures]
    paths.write_text_atomic(folder / "index.md", "".join(md))
    page = _html_page(folder, profile, entries, pages=pages, not_rendered=not_rendered, found=found, intro=intro,
                      environments=environments, drawn=drawn, forest_note=forest_note, transfer=transfer,
                      compare=compare, ours=ours, localisation=localisation)
    return paths.write_text_atomic(folder / "index.html", page)


def _html_page(folder: Path, profile: str, entries: list[dict[str, Any]], *, pages: dict[str, Path],
               not_rendered: dict[str, str], found: list[Finding], intro: list[str], environments: pd.DataFrame,
               drawn: set[str], forest_note: str, transfer: pd.DataFrame, compare: pd.DataFrame,
               ours: pd.DataFrame, localisation: pd.DataFrame) -> str:
    """``index.html``: findings, forest plot, compact tables, folded wide tables, each run's figures."""

    def figure(name: str) -> str:
        return (f"<a href='{_href(name)}'><img class='figure' src='{_href(name)}' alt='{html.escape(name)}'></a>"
                if name in drawn else "")

    def note(text: str) -> str:
        return f"<p class='note'>{html.escape(text)}</p>"

    counts = Counter(entry["status"].get("status", "?") for entry in entries)
    backends = sorted({(e["metrics"].get("environment") or {}).get("backend") for e in entries if e["metrics"]} - {None})
    lede = (f"{len(entries)} runs: " + ", ".join(f"{count} {state}" for state, count in counts.most_common())
            if entries else "no runs yet")
    lede += " &middot; data: " + html.escape("; ".join(data_used(entries)) or "none finished")
    lede += " &middot; Keras backend " + html.escape(", ".join(backends) or "not recorded")
    body = [f"<h1>Study report: profile <code>{html.escape(profile)}</code></h1>", f"<p class='lede'>{lede}</p>",
            "<h2 id='findings'>Findings</h2><ul class='findings'>"
            + "".join(f"<li><strong>{html.escape(item.topic)}</strong>: {html.escape(item.text)}</li>" for item in found)
            + "</ul>"]
    if "forest.png" in drawn:
        body.append(f"<h2 id='forest'>{html.escape(FOREST_HEADING)}</h2>{note(forest_note)}{figure('forest.png')}")
    body.append("<h2 id='about'>About these runs</h2>" + "".join(f"<p>{_inline_html(line)}</p>" for line in intro))
    if len(environments) > 1:
        body.append(_html_table(environments, wrap=("environment", "runs")))
    if not transfer.empty:
        body.append(f"<h2 id='transfer'>{html.escape(TRANSFER_HEADING)}</h2>{note(TRANSFER_NOTE)}{figure('transfer.png')}"
                    + _html_table(_transfer_compact(transfer), nowrap=("ImageNet", "random init", "difference (paired)"))
                    + _details("What each arm of the comparison was",
                               _html_table(transfer[["backbone", "imagenet_arm", "scratch_arm"]])))
    cv = cv_table(entries)
    if not cv.empty:
        body.append(f"<h2 id='cv'>{html.escape(CV_HEADING)}</h2>{note(CV_NOTE)}" + _html_table(_cv_compact(cv)))
    overview, messages = _runs_overview(entries, pages)
    runs = ("<h2 id='runs'>Runs</h2>"
            + note("Each run links to its executed notebook (rendered as HTML) and its figures. " + ROUNDING_NOTE)
            + _html_table(overview, wrap=("notebook and figures",), nowrap=("time", "test AUC", "accuracy", "weights")))
    if messages:
        runs += _details(f"Messages of the runs that did not end well ({len(messages)})", "<ol>" + "".join(
            f"<li id='message-{number}'>{html.escape(text)}</li>" for number, text in enumerate(messages, 1)) + "</ol>")
    if not_rendered:
        runs += "<p>Notebooks that could not be rendered as HTML:</p><ul>" + "".join(
            f"<li>{html.escape(name)}: {html.escape(why)}</li>" for name, why in not_rendered.items()) + "</ul>"
    body.append(runs)
    if not ours.empty:
        body.append("<h2 id='results'>Our results (image level)</h2>"
                    + note("The test split; a cross-validated run: its pooled out-of-fold predictions. "
                           "Value [95 % bootstrap CI].")
                    + _html_table(_results_compact(entries))
                    + _details("How each run was made", _html_table(
                        ours[["run", "dataset", "task", "backbone", "weights", "normalisation", "optimiser", "classifier",
                              "input", "epochs", "n_test"]], wrap=("dataset", "weights")))
                    + _details("Patient level", _html_table(_results_compact(entries, "patient_level")))
                    + _details("Per class: precision, recall, F1 and support, with macro and weighted averages",
                               figure("per_class.png") + _html_table(per_class_table(entries))))
    body.append("<h2 id='papers'>Ours beside the papers'</h2>"
                + note("One row per result a paper reports (their data) and our run of the same recipe, where "
                       "there is one (an ImageNet run where there is one). The full table, with precision, recall "
                       "and F1 combined the paper's way, is folded below.")
                + figure("comparison.png") + _html_table(_comparison_compact(compare, ours),
                                                         nowrap=("our accuracy", "our AUC"))
                + _details("Every column of the comparison", note(COMPARISON_NOTE) + _html_table(compare)))
    body.append(f"<h2 id='baseline'>{html.escape(BASELINE_HEADING)}</h2>{note(BASELINE_NOTE)}"
                + _html_table(majority_baseline_table(entries), wrap=("who", "support")))
    hybrids = hybrid_table(entries)
    if not hybrids.empty:
        body.append(f"<h2 id='hybrids'>{html.escape(HYBRID_HEADING)}</h2>" + _html_table(hybrids, wrap=("data", "run")))
    body.append(f"<h2 id='localisation'>{html.escape(LOCALISATION_HEADING)}</h2>"
                + (note(LOCALISATION_NOTE) + _html_table(localisation[
                    ["run", "status", "input", "n", "pointing_game", "pointing_game_uniform", "pointing_game_centred",
                     "mass_inside", "mass_inside_uniform", "mass_inside_centred"]].rename(columns=lambda c: c.replace("_", " ")),
                    nowrap=("pointing game", "mass inside"))
                   + _details("How it was measured", _html_table(
                       localisation[["run", "method", "target_layer", "lesions", "reason"]], wrap=("reason",)))
                   if not localisation.empty else "<p>No run recorded a localisation score.</p>"))
    left_out = left_out_table(entries)
    body.append("<h2 id='left-out'>Left out</h2>"
                + (_details(f"Images and label rows not used, and why ({len(left_out)})",
                            _html_table(left_out, wrap=("run", "item", "reason")))
                   if not left_out.empty else "<p>No image or label row was left out.</p>"))
    details = []
    for entry in entries:
        files = _figure_files(entry)
        if not files and entry["name"] not in pages:
            continue
        images = "".join(f"<a href='{_href(entry['name'] + '/' + name)}'><img src='{_href(entry['name'] + '/' + name)}' "
                         f"alt='{html.escape(entry['name'] + ' ' + name)}'></a>" for name in files)
        details.append(f"<details id='figures-{html.escape(entry['name'])}'><summary>{html.escape(entry['name'])} "
                       f"({html.escape(entry['status'].get('status', '?'))})</summary><p>{_run_links(entry, pages)}</p>"
                       f"<div class='thumbs'>{images}</div></details>")
    if details:
        body.append("<h2 id='figures'>Each run's figures</h2>" + "".join(details))
    return ("<!doctype html>\n<html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width'><title>Study report: {html.escape(profile)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
