"""Collect every run's ``metrics.json``, set our numbers beside the papers', render the summary.

``build_report(profile_dir)`` writes ``index.html`` and its Markdown twin ``index.md`` into the
profile's report folder. Our numbers are labelled as ours (with the data, weights and profile that
produced them); the papers' numbers are quoted as theirs, with the table they come from.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers import evaluation, paths
from helpers.plan import get_profile

FIGURES = ("history.png", "confusion_matrix.png", "roc.png", "per_class.png", "cv_folds.png")
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
    """Title for the comparison figure: which data, weights and profile our bars come from."""
    ours = results_table(entries)
    datasets = ", ".join(sorted(set(ours["dataset"]))) if not ours.empty else "no runs"
    weights = ", ".join(sorted(set(ours["weights"]))) if not ours.empty else ""
    return (f"Accuracy: ours ({datasets} data, {profile} profile, {weights})\n"
            f"vs. the papers' (their data, as they report it)")


def plot_comparison(table: pd.DataFrame, *, title: str = ""):
    """Bar chart of accuracy per reported (paper, backbone, optimiser): ours beside the paper's."""
    import seaborn as sns

    from helpers.figures import new_figure

    label = (table["paper"].str.removeprefix("paper ") + " " + table["backbone"] + " " + table["classifier"]
             + table["optimiser"].map(lambda o: f" {o}" if o else ""))
    long = pd.concat([
        pd.DataFrame({"row": label, "accuracy": table["paper_accuracy"], "who": "paper (their data)"}),
        pd.DataFrame({"row": label, "accuracy": table["our_accuracy"], "who": "ours"}),
    ]).dropna(subset=["accuracy"])
    fig = new_figure(figsize=(9, 3.8))
    ax = fig.subplots()
    if not long.empty:
        sns.barplot(data=long, x="row", y="accuracy", hue="who", ax=ax, errorbar=None)
        ax.legend(fontsize=8, loc="lower right")
    ax.tick_params(axis="x", labelrotation=75, labelsize=7)
    ax.set_xlabel("")
    ax.set_ylim(0, 1)
    ax.set_title(title or "Accuracy: ours vs. the papers' (theirs on their data)", fontsize=9)
    return fig


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

    fig = new_figure(figsize=(9, 0.5 * max(len(table), 2) + 1.6))
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
                left.text(0.02, where, getattr(row, f"{arm}_95ci"), fontsize=7, va="center", color=colour)
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
    left.set_yticks(positions, labels, fontsize=8)
    left.set_xlabel("test ROC AUC (95 % bootstrap CI)", fontsize=8)
    right.set_xlabel("ImageNet minus random init (paired 95 % CI)", fontsize=8)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7, loc="best")
    fig.suptitle(title or TRANSFER_HEADING, fontsize=9)
    return fig


def _parse_ci(text: Any) -> tuple[float, float] | None:
    """``"[0.512, 0.733]"`` -> (0.512, 0.733); anything else None."""
    if not isinstance(text, str) or not text.startswith("["):
        return None
    low, high = text.strip("[]").split(",")
    return float(low), float(high)


def transfer_title(entries: list[dict[str, Any]], profile: str) -> str:
    """Which data, profile and backend the transfer figure comes from (the backend the runs
    recorded; for runs that predate the record, this process' backend)."""
    ours = results_table(entries)
    datasets = ", ".join(sorted(set(ours["dataset"]))) if not ours.empty else "no runs"
    backends = sorted({(entry["metrics"].get("environment") or {}).get("backend") for entry in entries
                       if entry["metrics"]} - {None})
    if not backends:
        from helpers import backend  # noqa: F401  (imports Keras quietly)
        import keras

        backends = [keras.config.backend()]
    return (f"{TRANSFER_HEADING} Test AUC from ImageNet weights vs. from random weights\n"
            f"{datasets} data, {profile} profile, Keras backend {', '.join(backends)}")


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


NOT_RECORDED = "not recorded"
"""The environment of a run whose metrics.json predates it (schema 1)."""

_ENVIRONMENT_LIBRARIES = (("python", "Python"), ("numpy", "NumPy"), ("scikit-learn", "scikit-learn"),
                          ("opencv", "OpenCV"))


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


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"run": e["name"], "status": e["status"].get("status", "?"),
             "seconds": e["status"].get("seconds"), "message": e["status"].get("message", "")}
            for e in entries]
    return pd.DataFrame(rows, columns=["run", "status", "seconds", "message"])


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


def build_report(folder: Path | str, *, profile: str) -> Path:
    """Write ``index.md`` and ``index.html`` for the runs in ``folder``; return the HTML path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = collect_runs(folder)
    try:
        settings = get_profile(profile)
    except KeyError:
        settings = {}
    ours = results_table(entries)
    ours_shown = ours[[c for c in ours.columns if not c.endswith("_ci")]] if not ours.empty else ours
    with_ci = ours[["run"] + [f"{m}_ci" for m in _METRICS]] if not ours.empty else ours
    patients = results_table(entries, level="patient_level")
    patients = patients[[c for c in patients.columns if not c.endswith("_ci")]] if not patients.empty else patients
    transfer = transfer_table(entries)
    if not transfer.empty:
        evaluation.save_figure(plot_transfer(transfer, title=transfer_title(entries, profile)),
                               folder / "transfer.png")
    compare = comparison_table(entries)
    if not compare.empty:
        evaluation.save_figure(plot_comparison(compare, title=comparison_title(entries, profile)),
                               folder / "comparison.png")
    blocks = per_class_blocks(entries)
    if blocks:
        evaluation.save_figure(evaluation.plot_per_class(blocks, title=f"Per class, image level, test split: "
                                                         f"every run of the {profile} profile"),
                               folder / "per_class.png")
    scaled = list(settings.get("scaled_down") or [])
    description = ' '.join(str(settings.get('description', '')).split())
    used = data_used(entries)
    own = settings.get("dataset")
    if used and own and any(own not in datasets for datasets in used):
        # the profile's description and its scaled-down note on the data are about its own data
        description = (f"its settings (input size, epochs, freezing, weights, ...) on other data than its "
                       f"own ({own}): the data line below")
        scaled = [item for item in scaled if own not in item]
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
    transfer_note = (
        "Each backbone with the same paper's recipe, data and test split, once from ImageNet weights "
        "and once from random weights (the random-weights run is the plan's baseline_of the other). "
        "AUC is image level with its 95 % bootstrap CI; the difference is paired (both models on the "
        "same resamples of whole test patients). A CI of the difference that contains 0 is no evidence "
        "either way. A cross-validated pair is compared on the pooled out-of-fold predictions of the same images (the same folds for both arms). Where ImageNet weights could not be had (offline, not in Keras' cache) the row "
        "says so, and nothing was substituted.")
    shown = ["backbone", "recipe", "imagenet_auc", "imagenet_95ci", "scratch_auc", "scratch_95ci", "difference",
             "difference_95ci", "n_test"]
    sections = [
        (TRANSFER_HEADING, transfer[shown]),
        ("What each arm of the comparison was", transfer[["backbone", "imagenet_arm", "scratch_arm"]]),
        (CV_HEADING, cv_table(entries)),
        ("Runs", _status_table(entries)),
        ("Our results (image level: the test split; a cross-validated run: its pooled out-of-fold predictions)", ours_shown),
        ("95 % bootstrap confidence intervals (image level)", with_ci),
        ("Our results (patient level)", patients),
        ("Per class (test split, or pooled out-of-fold): precision, recall, F1 and support, with macro and weighted averages",
         per_class_table(entries)),
        (COMPARISON_HEADING, compare),
        (BASELINE_HEADING, majority_baseline_table(entries)),
        ("The hybrids against what they replace (same test split): SVM vs the network's own output "
         "(paper 000), fusion vs each pathway alone (paper 003)", hybrid_table(entries)),
        ("Left out: images and label rows not used, and why", left_out_table(entries)),
    ]
    figures = [(name, [f"{name}.png"]) for name in ("transfer", "comparison", "per_class")
               if (folder / f"{name}.png").exists()]
    figures += [(e["name"], [f"{e['name']}/{f}" for f in FIGURES if (e["dir"] / f).exists()]) for e in entries]
    figures = [(name, files) for name, files in figures if files]
    md = [f"# Study report: profile `{profile}`\n\n", *(line + "\n\n" for line in intro)]
    if len(environments) > 1:
        md.append(_markdown_table(environments) + "\n")
    notes = {TRANSFER_HEADING: transfer_note, COMPARISON_HEADING: COMPARISON_NOTE, BASELINE_HEADING: BASELINE_NOTE}
    notes[CV_HEADING] = CV_NOTE
    md += [f"## {heading}\n\n" + (f"{notes[heading]}\n\n" if heading in notes else "")
           + f"{_markdown_table(table)}\n" for heading, table in sections]
    md += ["## Figures\n"] + [f"\n### {name}\n\n" + " ".join(f"![{f}]({f})" for f in files) + "\n"
                              for name, files in figures]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px}th{background:#eee}img{max-width:32%}")
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>Study report: {html.escape(profile)}</title>"
            f"<style>{style}</style></head><body>",
            f"<h1>Study report: profile <code>{html.escape(profile)}</code></h1>",
            *(f"<p>{html.escape(line).replace('**', '')}</p>" for line in intro)]
    if len(environments) > 1:
        page.append(_html_table(environments))
    page += [f"<h2>{html.escape(heading)}</h2>" + (f"<p>{html.escape(notes[heading])}</p>" if heading in notes else "")
             + ("<img src='transfer.png' alt='transfer.png' style='max-width:100%'>"
                if heading == TRANSFER_HEADING and (folder / "transfer.png").exists() else "")
             + _html_table(table) for heading, table in sections]
    page += ["<h2>Figures</h2>"] + [f"<h3>{html.escape(name)}</h3>" + "".join(
        f"<img src='{html.escape(f)}' alt='{html.escape(f)}'>" for f in files) for name, files in figures]
    page.append("</body></html>\n")
    paths.write_text_atomic(folder / "index.md", "".join(md))
    return paths.write_text_atomic(folder / "index.html", "\n".join(page))
