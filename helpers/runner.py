"""Execute the study plan with papermill into ``reports/<profile>/``, ``jobs`` notebooks at a time.

For each planned run the runner checks whether its inputs changed since the last successful run
(notebook, parameters, helpers code, plan); if not, it skips it. Otherwise it executes the
notebook in a separate process with a time limit, streams progress (cells and epochs) to the
console, keeps the full log, and records the outcome in ``run.json``. A failed run does not stop
the others. At the end it writes the summary report (``index.html`` and ``index.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import yaml

from helpers import paths
from helpers.plan import (DEFAULT_SUITE, PLAN_FILE, PlannedRun, get_profile, load_plan, output_name,
                          planned_runs)

RUN_FILE = "run.json"
LOG_FILE = "log.txt"
_PROGRESS = re.compile(r"(Epoch \d+/\d+|Executing Cell \d+|^\S*\d+/\d+ - .*loss)")
_CELL = re.compile(r"Executing Cell (\d+)")


@dataclass
class RunOutcome:
    name: str
    status: str          # "ok", "skipped", "failed", "timeout", "unavailable" (no ImageNet weights)
    seconds: float
    message: str = ""
    run_dir: Path | None = None


def code_fingerprint(root: Path | None = None) -> str:
    """Hash of the source every run uses: each ``*.py`` file of the helpers package, subpackages
    included (by its path relative to ``root``), and the plan ``notebooks/study.yaml``; a change
    in either invalidates earlier runs. (Each run's notebook is hashed in :func:`run_fingerprint`.)
    ``root`` is the repository (default: this checkout)."""
    root = Path(root) if root is not None else paths.REPO_ROOT
    sources = sorted(path for path in (root / "helpers").rglob("*.py")
                     if "__pycache__" not in path.relative_to(root).parts)
    digest = hashlib.sha256()
    for path in [*sources, root / "notebooks" / PLAN_FILE]:
        relative = path.relative_to(root).as_posix()
        data = path.read_bytes() if path.exists() else b""
        digest.update(f"{relative}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def run_fingerprint(run: PlannedRun, profile_settings: dict) -> str:
    digest = hashlib.sha256()
    digest.update(run.notebook.read_bytes())
    digest.update(json.dumps(run.parameters, sort_keys=True).encode())
    digest.update(json.dumps(profile_settings, sort_keys=True, default=str).encode())
    digest.update(code_fingerprint().encode())
    data_dir = run.parameters.get("DATA_DIR")
    if data_dir and Path(data_dir).exists():
        digest.update(str(Path(data_dir).stat().st_mtime_ns).encode())
    network_dir = run.parameters.get("NETWORK_DIR")
    if network_dir:  # a run reusing another run's network reruns when that network changes
        reused = _previous(Path(network_dir))
        digest.update(f"{reused.get('fingerprint')}:{reused.get('status')}".encode())
    return digest.hexdigest()


def _previous(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _pump(stream: TextIO, log: TextIO, echo: Callable[[str], None]) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        if _PROGRESS.search(line):
            cell = _CELL.search(line)
            echo(f"cell {cell.group(1)}" if cell else line.rstrip())


def _failure_reason(log_path: Path) -> str:
    """The exception papermill reports, taken from the end of the log."""
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Exit)\b.*:", line) or "Error:" in line:
            return line[-400:]
    return lines[-1][-400:] if lines else "no output"


def execute(run: PlannedRun, *, fingerprint: str, echo: Callable[[str], None] = print) -> RunOutcome:
    """Execute one planned notebook run with papermill in a child process, within its time limit."""
    run_dir = run.run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    output = run_dir / run.notebook.name
    log_path = run_dir / LOG_FILE
    command = [
        sys.executable, "-m", "papermill", str(run.notebook), str(output),
        "-y", yaml.safe_dump(run.parameters), "--cwd", str(run.notebook.parent),
        "--log-output", "--no-progress-bar", "--kernel", "python3",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    status, message = "ok", ""
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env, start_new_session=True,
        )
        pump = threading.Thread(target=_pump, args=(process.stdout, log, echo), daemon=True)
        pump.start()
        try:
            code = process.wait(timeout=run.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
        pump.join(timeout=10)
    seconds = time.monotonic() - started
    if code is None:
        status, message = "timeout", f"stopped after its time limit of {run.timeout_s} s"
    elif code != 0:
        status, message = "failed", _failure_reason(log_path)
    if status != "ok":
        # a failed run must not leave metrics that the report would take for real results
        (run_dir / "metrics.json").unlink(missing_ok=True)
    return _record(run, status, message, seconds, fingerprint)


def missing_weights(run: PlannedRun) -> str | None:
    """Why the ImageNet weights ``run`` needs cannot be had (None when it needs none, or has them).

    Checked in the runner, before the notebook starts: a missing file is downloaded here, once,
    with progress shown, rather than by two notebooks at once. Offline and not cached, the run
    is not started and is reported as "unavailable" with this message: nothing falls back to
    random weights silently (the plan's ``baseline_of`` runs are the random-weights arm).
    """
    from helpers.plan import settings_for_run

    settings = settings_for_run(run)
    if settings is None or settings.backbone is None or settings.weights != "imagenet":
        return None  # a lesson that builds no network (data, augmentation) needs no weights
    from helpers import models

    for name in settings.backbone.split("+"):
        try:
            models.imagenet_weights_path(name)
        except models.WeightsUnavailableError as error:
            return str(error)
    return None


def _record(run: PlannedRun, status: str, message: str, seconds: float, fingerprint: str) -> RunOutcome:
    record = {"name": run.name, "status": status, "message": message, "seconds": round(seconds, 1),
              "fingerprint": fingerprint, "notebook": run.notebook.name, "parameters": run.parameters,
              "baseline_of": run.baseline_of}
    paths.write_text_atomic(run.run_dir / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return RunOutcome(run.name, status, seconds, message, run.run_dir)


def record_unavailable(run: PlannedRun, message: str, fingerprint: str) -> RunOutcome:
    """Mark ``run`` as not run for want of its ImageNet weights (its folder holds only run.json)."""
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    run.run_dir.mkdir(parents=True)
    return _record(run, "unavailable", message, 0.0, fingerprint)


def _must_wait(run: PlannedRun, waiting: list[PlannedRun], running: list[PlannedRun]) -> bool:
    """A run waits for the run it reuses; an ``after_all`` run waits for every other run."""
    if run.after_all:
        return bool(running) or any(not other.after_all for other in waiting)
    return bool(run.reuses) and run.reuses in {other.name for other in waiting + running}


def run_plan(
    profile: str,
    *,
    only: list[str] | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    suite: str = DEFAULT_SUITE,
    skip_bad: bool = False,
    force: bool = False,
    jobs: int | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[list[RunOutcome], Path]:
    """Run ``suite`` of the plan for ``profile``; return the outcomes and the summary page's path.

    ``jobs`` notebooks run at once (default: the profile's ``jobs``, else 1). A run starts only
    after the run it reuses has finished; ``after_all`` runs (the results) start after all others.
    Each run's numbers do not depend on ``jobs``: every notebook is its own seeded process.
    """
    from helpers import reporting

    plan = load_plan()
    profile_settings = get_profile(profile, plan)
    jobs = max(1, int(jobs or profile_settings.get("jobs") or 1))
    runs = planned_runs(profile, only=only, dataset=dataset, data_dir=data_dir, suite=suite,
                         skip_bad=skip_bad, plan=plan)
    ordered = [r for r in runs if not r.after_all] + [r for r in runs if r.after_all]
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            echo(line)

    outcomes: dict[str, RunOutcome] = {}
    waiting = list(enumerate(ordered, start=1))
    running: dict[Future, tuple[str, PlannedRun]] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while waiting or running:
            for item in list(waiting):
                number, run = item
                if len(running) >= jobs:
                    break
                if _must_wait(run, [r for _, r in waiting], [r for _, r in running.values()]):
                    continue
                waiting.remove(item)
                fingerprint = run_fingerprint(run, profile_settings)  # after the run it reuses
                label = f"[{number}/{len(ordered)}] {run.name} ({run.notebook.name})"
                previous = _previous(run.run_dir)
                unchanged = previous.get("fingerprint") == fingerprint and previous.get("status") == "ok"
                if unchanged and not force and not run.after_all:
                    say(f"{label}: unchanged since the last run, skipped")
                    outcomes[run.name] = RunOutcome(run.name, "skipped", 0.0, "unchanged", run.run_dir)
                    continue
                missing = missing_weights(run)
                if missing:
                    outcomes[run.name] = record_unavailable(run, missing, fingerprint)
                    say(f"{label}: not run, its ImageNet weights are unavailable: {missing}")
                    continue
                say(f"{label}: running (time limit {run.timeout_s} s)")
                future = pool.submit(execute, run, fingerprint=fingerprint,
                                     echo=lambda line, n=run.name: say(f"    {n}: {line}"))
                running[future] = (label, run)
            if not running:
                if waiting:  # cannot happen with a valid plan (reuses names earlier runs only)
                    raise RuntimeError(f"runs {[r.name for _, r in waiting]} wait for each other")
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                label, run = running.pop(future)
                outcome = future.result()
                tail = f": {outcome.message}" if outcome.message else ""
                say(f"{label}: {outcome.status} in {outcome.seconds:.0f} s{tail}")
                if outcome.status != "ok":
                    say(f"    full log: {outcome.run_dir / LOG_FILE}")
                outcomes[run.name] = outcome
    folder = paths.reports_dir() / output_name(profile, dataset=dataset, suite=suite, plan=plan)
    index = reporting.build_report(folder, profile=profile)
    return [outcomes[run.name] for run in ordered], index


def clean_notebook_metadata(path: Path) -> None:
    """Drop papermill's timing metadata so a refreshed notebook differs only where outputs do.

    (TensorFlow's C++ start-up lines in stderr outputs stay: nbval compares them with their
    timestamps masked, see tests/nbval_sanitize.cfg.)
    """
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.pop("papermill", None)
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("papermill", None)
    nbformat.write(notebook, path)


def isolated_env(folder: Path) -> dict[str, str]:
    """Environment whose reports and cache live under ``folder`` (tests, notebook refresh)."""
    return dict(
        os.environ,
        HELPERS_REPORTS_DIR=str(folder / "reports"),
        HELPERS_CACHE_DIR=str(folder / "cache"),
        PYTHONUNBUFFERED="1",
    )


def refresh_notebooks(notebooks: list[str] | None = None) -> None:
    """Re-execute the committed notebooks with their default (smoke) parameters, in place.

    The smoke study runs first in a temporary folder, so that the results notebook has runs to
    show; the notebooks are then executed against that folder exactly as the nbval test does.
    """
    import tempfile

    targets = [Path(n) for n in notebooks] if notebooks else sorted(paths.notebooks_dir().glob("[0-9]*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="helpers-refresh-") as tmp:
        env = isolated_env(Path(tmp))
        subprocess.run([sys.executable, "-m", "helpers", "run", "--profile", "smoke"], env=env, check=True)
        for notebook in targets:
            print(f"refreshing {notebook}")
            subprocess.run(
                [sys.executable, "-m", "papermill", str(notebook), str(notebook), "--cwd",
                 str(notebook.parent), "--kernel", "python3", "--no-progress-bar"],
                env=env, check=True,
            )
            clean_notebook_metadata(notebook)
