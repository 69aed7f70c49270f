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

import pandas as pd

from helpers import evaluation, paths
from helpers.plan import get_profile

FIGURES = ("history.png", "confusion_matrix.png", "roc.png")
_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


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


def results_table(entries: list[dict[str, Any]], level: str = "image_level") -> pd.DataFrame:
    """Our results: one row per run with metrics (value and 95 % CI) and their provenance."""
    rows = []
    for entry in entries:
        metrics = entry["metrics"]
        if not metrics or not metrics.get(level):
            continue
        run = metrics["run"]
        row = {
            "run": entry["name"], "study": run.get("study"), "dataset": run.get("dataset"),
            "task": run.get("task"), "backbone": run.get("backbone"), "weights": run.get("weights"),
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


def comparison_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Ours beside theirs: one row per (paper, backbone, classifier, optimiser) a paper reports,
    with the paper's numbers (their data) and ours (the run of the same recipe; n/a where the
    plan has no such run, e.g. the papers' own small ConvNet)."""
    from helpers import studies

    reported = studies.reported_table()
    ours = results_table(entries)
    rows = []
    for _, paper in reported.iterrows():
        match = ours[[_matches(run, paper) for _, run in ours.iterrows()]] if not ours.empty else ours
        run = match.iloc[0] if len(match) else None
        rows.append({
            "paper": f"paper {paper['study']}", "backbone": paper["backbone"], "classifier": paper["classifier"],
            "optimiser": _text(paper["optimiser"]),
            "paper_dataset": paper["dataset"], "paper_accuracy": paper["accuracy"],
            "paper_f1": paper["f1"], "paper_auc": paper["auc"],
            "paper_source": f"{paper['slug']}, {paper['source']}",
            "our_run": run["run"] if run is not None else "",
            "our_data": f"{run['dataset']} ({run['task']}, {run['input']} px)" if run is not None else "",
            "our_weights": run["weights"] if run is not None else "",
            "our_accuracy": run["accuracy"] if run is not None else None,
            "our_accuracy_ci": run["accuracy_ci"] if run is not None else "",
            "our_f1": run["f1"] if run is not None else None,
            "our_auc": run["roc_auc"] if run is not None else None,
        })
    return pd.DataFrame(rows)


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
        data = f"{run.get('dataset')} ({run.get('task')}, {'x'.join(map(str, run.get('image_size', [])))} px)"
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
    compare = comparison_table(entries)
    if not compare.empty:
        evaluation.save_figure(plot_comparison(compare, title=comparison_title(entries, profile)),
                               folder / "comparison.png")
    scaled = settings.get("scaled_down") or []
    intro = [
        f"Profile **{profile}**: {' '.join(str(settings.get('description', '')).split())}",
        "Scaled down from the papers: " + ("; ".join(scaled) if scaled else "nothing") + ".",
        "Numbers under *ours* were produced by this project on the data, weights and profile named in "
        "each row; numbers under *paper* are quoted from the publications, measured on their data.",
    ]
    sections = [
        ("Runs", _status_table(entries)),
        ("Our results (image level, test split)", ours_shown),
        ("95 % bootstrap confidence intervals (image level)", with_ci),
        ("Our results (patient level)", patients),
        ("Ours beside the papers': every (paper, backbone, classifier, optimiser) they report", compare),
        ("The hybrids against what they replace (same test split): SVM vs the network's own output "
         "(paper 000), fusion vs each pathway alone (paper 003)", hybrid_table(entries)),
        ("Left out: images and label rows not used, and why", left_out_table(entries)),
    ]
    figures = [("comparison", ["comparison.png"])] if (folder / "comparison.png").exists() else []
    figures += [(e["name"], [f"{e['name']}/{f}" for f in FIGURES if (e["dir"] / f).exists()]) for e in entries]
    figures = [(name, files) for name, files in figures if files]
    md = [f"# Study report: profile `{profile}`\n\n", *(line + "\n\n" for line in intro)]
    md += [f"## {heading}\n\n{_markdown_table(table)}\n" for heading, table in sections]
    md += ["## Figures\n"] + [f"\n### {name}\n\n" + " ".join(f"![{f}]({f})" for f in files) + "\n"
                              for name, files in figures]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px}th{background:#eee}img{max-width:32%}")
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>Study report: {html.escape(profile)}</title>"
            f"<style>{style}</style></head><body>",
            f"<h1>Study report: profile <code>{html.escape(profile)}</code></h1>",
            *(f"<p>{html.escape(line).replace('**', '')}</p>" for line in intro)]
    page += [f"<h2>{html.escape(heading)}</h2>{_html_table(table)}" for heading, table in sections]
    page += ["<h2>Figures</h2>"] + [f"<h3>{html.escape(name)}</h3>" + "".join(
        f"<img src='{html.escape(f)}' alt='{html.escape(f)}'>" for f in files) for name, files in figures]
    page.append("</body></html>\n")
    paths.write_text_atomic(folder / "index.md", "".join(md))
    return paths.write_text_atomic(folder / "index.html", "\n".join(page))
