"""Execute the study plan with papermill into ``reports/<profile>/``, ``jobs`` notebooks at a time.

For each planned run the runner checks whether its inputs changed since the last successful run
(notebook, parameters, helpers code, plan); if not, it skips it. Otherwise it executes the
notebook in a separate process with a time limit, streams progress (cells and epochs) to the
console, keeps the full log, and records the outcome in ``run.json``. A failed run does not stop
the others. At the end it writes the summary report (``index.html`` and ``index.md``).

While it runs, it holds a lock on the study's folder (:func:`study_lock`); SIGINT (Ctrl-C) or
SIGTERM kills every running notebook (papermill and its kernel), records it "interrupted", starts
no other run, and ends with :class:`Interrupted`. A notebook dies with a killed runner (Linux).

Runs execute in threads of this process by default (:class:`LocalPool`, one papermill process per
run), or as tasks on a Dask distributed cluster (``scheduler=``/``cluster=``, :mod:`helpers.cluster`,
imported only then); everything else (order, fingerprints, weights, report) is the same loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
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
from typing import Callable, Iterator, Mapping, Protocol, TextIO

import yaml

from helpers import paths
from helpers.plan import (DEFAULT_SUITE, PLAN_FILE, Plan, PlannedRun, get_profile, load_plan, output_name,
                          planned_runs)

RUN_FILE = "run.json"
LOG_FILE = "log.txt"
LOCK_FILE = ".runner.lock"  # in the study's folder, reports/<profile>/ (see study_lock)
CACHE_PART_AGE_S = 3600  # a partial file in the shared cache untouched this long has no live writer
PR_SET_PDEATHSIG = 1  # Linux prctl(2)
_PROGRESS = re.compile(r"(Epoch \d+/\d+|Executing Cell \d+|^\S*\d+/\d+ - .*loss)")
_CELL = re.compile(r"Executing Cell (\d+)")


@dataclass
class RunOutcome:
    name: str
    status: str  # "ok", "skipped", "failed", "timeout", "unavailable" (no ImageNet weights),
    #              "interrupted" (SIGINT/SIGTERM while it ran), "not started" (interrupted before)
    seconds: float
    message: str = ""
    run_dir: Path | None = None


class Interrupted(Exception):
    """The study was stopped by SIGINT or SIGTERM; what :func:`run_plan` would have returned."""

    def __init__(self, signum: int, outcomes: list[RunOutcome], index: Path) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.outcomes, self.index = signum, outcomes, index


class StudyLocked(Exception):
    """Another runner, alive, holds the lock of the study's folder."""


class ClusterError(Exception):
    """The Dask cluster cannot run the study: unreachable, no worker, no worker with the profile's
    resources, or workers that do not share the study's files (:mod:`helpers.cluster`)."""


class Stop:
    """Set by SIGINT or SIGTERM while a study runs: running notebooks are killed, none starts."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self.cut_short = False  # the main thread is in a long call (a weights download) to cut short

    def handle(self, signum: int, frame: object) -> None:
        """The signal handler (main thread); a second signal changes nothing."""
        if self.signum is None:
            self.signum = signum
            self._event.set()
            if self.cut_short:
                raise KeyboardInterrupt

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop"


@contextlib.contextmanager
def _signals_set(stop: Stop) -> Iterator[None]:
    """While the study runs, SIGINT and SIGTERM set ``stop`` (main thread only: elsewhere, as before)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, stop.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _describe_holder(text: str) -> tuple[str, str]:
    """What a lock file says of its holder, and the holder's pid ("PID" when it says nothing yet)."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']}, started {holder['started']}, `{holder['command']}`", str(holder["pid"])
    except (ValueError, KeyError, TypeError):
        return "a runner that is starting (no details yet)", "PID"


@contextlib.contextmanager
def study_lock(folder: Path, echo: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``folder/.runner.lock`` while a study writes in ``folder``; sweep stale partial files.

    The lock is an ``flock`` on the file, so it ends with its holder however that ends (``kill -9``
    too); the file names the holder (pid, start, command). A second runner raises
    :class:`StudyLocked` naming the live one; a file naming a runner that no longer holds it is
    stale and is taken over. Then what killed processes left is cleared: runs still "running" are
    recorded "interrupted" and lose their ``metrics.json``; partial files of atomic writes are
    removed, every one under ``folder`` (only this runner and its notebooks write there) and, under
    the cache folder (shared with other studies and notebooks run by hand), those untouched for an hour.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as handle:  # closing it releases the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder, pid = _describe_holder(handle.read())
            raise StudyLocked(f"another runner is running the study in {folder}: {holder}; wait for it to "
                              f"end or stop it (Ctrl-C in its terminal, or kill {pid}); lock: {path}") from None
        handle.seek(0)
        previous = handle.read()
        if previous.strip():
            echo(f"taking over the stale lock {path}: {_describe_holder(previous)[0]} is no longer running")
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(["python -m helpers", *sys.argv[1:]])}) + "\n")
        handle.flush()
        abandoned = _close_abandoned_runs(folder)
        if abandoned:
            echo(f"runs left running by a runner that was killed, now recorded as interrupted: {', '.join(abandoned)}")
        swept = paths.sweep_partial_files(folder) + paths.sweep_partial_files(paths.cache_dir(), CACHE_PART_AGE_S)
        if swept:
            echo(f"removed {len(swept)} partial file{'s' * (len(swept) > 1)} of killed writes (.*.part): "
                 + ", ".join(str(path) for path in swept[:3]) + (", ..." if len(swept) > 3 else ""))
        try:
            yield
        finally:
            handle.truncate(0)  # an empty file: free (it is kept, so that every runner locks one file)
            handle.flush()


def _close_abandoned_runs(folder: Path) -> list[str]:
    """Record the runs of ``folder`` that a killed runner left "running" as interrupted, without
    their metrics (they did not finish); return their names."""
    names = []
    for status_file in sorted(folder.glob(f"*/{RUN_FILE}")):
        record = _previous(status_file.parent)
        if record.get("status") == "running":
            (status_file.parent / "metrics.json").unlink(missing_ok=True)
            record.pop("pid", None)
            record.update(status="interrupted", message="its runner was killed while it ran")
            paths.write_text_atomic(status_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
            names.append(status_file.parent.name)
    return names


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with(runner_pid: int, prctl: Callable[..., int]) -> None:
    """In papermill's process before it starts: SIGKILL it when the runner's thread that started
    it ends (the runner killed); its kernel, started by ipykernel with papermill as its parent,
    exits within a second of papermill (ipykernel polls its parent)."""
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != runner_pid:  # the runner died before prctl
        os._exit(1)


def _kill_notebook(pid: int) -> None:
    """SIGKILL papermill's process group and that of each of its descendants: jupyter_client
    starts the kernel in a session of its own, which killing papermill's group would miss."""
    import psutil  # a dependency of ipykernel

    try:
        os.killpg(pid, signal.SIGSTOP)  # stopped, papermill starts no kernel while we look
    except ProcessLookupError:
        return
    groups = {pid}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(child.pid))
    groups.discard(os.getpgrp())
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def _wait(process: subprocess.Popen, timeout_s: float, stop: Stop) -> str | None:
    """Wait for ``process`` to exit (None); "timeout" past ``timeout_s``; "interrupted" on ``stop``."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        if stop.wait(min(remaining, 0.25)) and process.poll() is None:
            return "interrupted"
    return None


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
    for key in ("DATA_DIR", "TEST_DATA_DIR", "SPLIT_FILE"):  # a folder, a pool's {dataset: folder}, a file
        given = run.parameters.get(key)
        for place in (given.values() if isinstance(given, dict) else [given] if given else []):
            if Path(place).exists():
                digest.update(f"{key}:{place}:{Path(place).stat().st_mtime_ns}".encode())
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


def execute(run: PlannedRun, *, fingerprint: str, echo: Callable[[str], None] = print,
            stop: Stop | None = None, env: Mapping[str, str] | None = None) -> RunOutcome:
    """Execute one planned notebook run with papermill in a child process, within its time limit.

    Past the limit, or when ``stop`` is set, papermill and its kernel are killed. Only a run whose
    papermill ended well keeps its ``metrics.json`` (a notebook writes it at its end). ``env``: variables
    the notebook's process gets on top of this one's (on a Dask worker: the client's folders).
    """
    stop = stop or Stop()
    if stop.is_set():
        return RunOutcome(run.name, "not started", 0.0, f"interrupted by {stop.name} before it started",
                          run.run_dir)
    run_dir = run.run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    output = run_dir / run.notebook.name
    log_path = run_dir / LOG_FILE
    command = papermill_command(run, output)
    env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    status, message = "ok", ""
    prctl = _prctl()
    with open(log_path, "w", encoding="utf-8") as log:
        for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
            log.flush()
            offset = os.fstat(log.fileno()).st_size  # this attempt's part of the log starts here
            # PR_SET_PDEATHSIG fires when the thread that started papermill ends: this one, which
            # waits for it here
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=env, start_new_session=True,
                preexec_fn=functools.partial(_die_with, os.getpid(), prctl) if prctl else None,
            )
            _record(run, "running", "", 0.0, fingerprint, pid=process.pid)
            pump = threading.Thread(target=_pump, args=(process.stdout, log, echo), daemon=True)
            pump.start()
            ended = _wait(process, max(run.timeout_s - (time.monotonic() - started), 1.0), stop)
            if ended:
                _kill_notebook(process.pid)
            code = process.wait()
            pump.join(timeout=10)
            if ended or code == 0 or attempt == KERNEL_START_ATTEMPTS or not _kernel_never_started(log_path, offset):
                break
            note = (f"{run.name}: its kernel died before it started (a port taken by another kernel "
                    f"starting at the same moment); starting it again ({attempt + 1} of {KERNEL_START_ATTEMPTS})")
            echo(note)
            print(note, file=log, flush=True)
            time.sleep(attempt)
    seconds = time.monotonic() - started
    if ended == "timeout":
        status, message = "timeout", f"stopped after its time limit of {run.timeout_s} s"
    elif ended == "interrupted":
        status, message = "interrupted", f"stopped by {stop.name}"
    elif code != 0:
        status, message = "failed", _failure_reason(log_path)
    if status != "ok":
        # a failed run must not leave metrics that the report would take for real results
        (run_dir / "metrics.json").unlink(missing_ok=True)
    if output.exists() and not stop.is_set():
        _render_notebook_page(output, echo)
    return _record(run, status, message, seconds, fingerprint)


def _render_notebook_page(notebook: Path, echo: Callable[[str], None]) -> None:
    """The executed notebook (a failed one too: its error) as HTML beside it, for the report to link
    to; done here, as each run ends, while the other runs go on (not all at the end). A failure
    is only said: the report tries again and lists what it could not render."""
    from helpers import notebook_html

    try:
        notebook_html.render_if_stale(notebook)
    except Exception as error:  # noqa: BLE001  (the report lists it)
        echo(f"could not render {notebook.name} as HTML: {error}")


IRI_GRAMMARS = "rfc3987_syntax"
"""jsonschema, which nbformat (so papermill, nbval and nbconvert) imports, builds this package's 38 IRI
grammars when it is installed (jupyter-events pulls it in): over 2 s of CPU in every process that
imports nbformat (python-jsonschema/jsonschema#1428). No notebook schema checks an IRI format."""


def skip_iri_grammars() -> None:
    """Keep :data:`IRI_GRAMMARS` out of this process (jsonschema then only leaves out its "iri" format
    checks); before nbformat is imported. For the runner's own process (``python -m helpers``) and
    the tools it starts (:func:`python_module`), never for a kernel: a user's code there may need them."""
    sys.modules.setdefault(IRI_GRAMMARS, None)


def python_module(module: str) -> list[str]:
    """The command line of ``python -m module`` (papermill, pytest) that skips :data:`IRI_GRAMMARS`."""
    return [sys.executable, "-c", f"import runpy, sys; sys.modules.setdefault({IRI_GRAMMARS!r}, None); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"]


def papermill_command(run: PlannedRun, output: Path) -> list[str]:
    """The papermill command line that executes ``run``'s notebook into ``output``."""
    return [
        *python_module("papermill"), str(run.notebook), str(output),
        "-y", yaml.safe_dump(run.parameters), "--cwd", str(run.notebook.parent),
        "--log-output", "--no-progress-bar", "--kernel", "python3",
    ]


KERNEL_START_ATTEMPTS = 3
KERNEL_NEVER_STARTED = "Kernel died before replying to kernel_info"
"""What papermill logs when its kernel exits before it can run a cell: e.g. two kernels started at
the same moment picked the same free port (jupyter_client's TCP ports; ``Address already in use``)."""


def _kernel_never_started(log_path: Path, offset: int = 0) -> bool:
    """Did papermill fail because its kernel never came up (so nothing of the notebook ran)? Reads
    the log from byte ``offset`` (where this attempt began)."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        return KERNEL_NEVER_STARTED.encode() in log.read()


def missing_weights(run: PlannedRun, plan: Plan | None = None) -> str | None:
    """Why the ImageNet weights ``run`` needs cannot be had (None when it needs none, or has them).

    Checked in the runner, before the notebook starts: a missing file is downloaded here, once,
    with progress shown, rather than by two notebooks at once. Offline and not cached, the run
    is not started and is reported as "unavailable" with this message: nothing falls back to
    random weights silently (the plan's ``baseline_of`` runs are the random-weights arm).
    """
    from helpers.plan import settings_for_run

    settings = settings_for_run(run, plan)
    if settings is None or settings.backbone is None or settings.weights != "imagenet":
        return None  # a lesson that builds no network (data, augmentation) needs no weights
    from helpers import models

    for name in settings.backbone.split("+"):
        try:
            models.imagenet_weights_path(name)
        except models.WeightsUnavailableError as error:
            return str(error)
    return None


def _record(run: PlannedRun, status: str, message: str, seconds: float, fingerprint: str,
            **extra: object) -> RunOutcome:
    record = {"name": run.name, "status": status, "message": message, "seconds": round(seconds, 1),
              "fingerprint": fingerprint, "notebook": run.notebook.name, "parameters": run.parameters,
              "baseline_of": run.baseline_of, **extra}
    paths.write_text_atomic(run.run_dir / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return RunOutcome(run.name, status, seconds, message, run.run_dir)


def record_failure(run: PlannedRun, message: str, seconds: float, fingerprint: str) -> RunOutcome:
    """Record ``run`` as failed outside its notebook (its Dask worker died): no metrics are kept."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "metrics.json").unlink(missing_ok=True)
    return _record(run, "failed", message, seconds, fingerprint)


def record_unavailable(run: PlannedRun, message: str, fingerprint: str) -> RunOutcome:
    """Mark ``run`` as not run for want of its ImageNet weights (its folder holds only run.json)."""
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    run.run_dir.mkdir(parents=True)
    return _record(run, "unavailable", message, 0.0, fingerprint)


class Pool(Protocol):
    """What runs the notebooks for :func:`_run_all`: :class:`LocalPool` or :class:`helpers.cluster.DaskPool`."""

    def submit(self, run: PlannedRun, fingerprint: str, echo: Callable[[str], None]) -> object: ...

    def wait(self, futures: list, timeout: float) -> set: ...

    def outcome(self, future: object, run: PlannedRun, fingerprint: str) -> RunOutcome: ...

    def close(self) -> None: ...


class LocalPool:
    """:func:`run_plan`'s default pool: each run in a thread of this process, which starts its
    notebook's process and waits for it (:func:`execute`); ``jobs`` at once. A Dask cluster's pool
    (:class:`helpers.cluster.DaskPool`) has the same four methods."""

    def __init__(self, jobs: int, stop: Stop) -> None:
        self.stop = stop
        self._threads = ThreadPoolExecutor(max_workers=jobs)

    def submit(self, run: PlannedRun, fingerprint: str, echo: Callable[[str], None]) -> Future:
        return self._threads.submit(execute, run, fingerprint=fingerprint, stop=self.stop, echo=echo)

    def wait(self, futures: list[Future], timeout: float) -> set[Future]:
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return done

    def outcome(self, future: Future, run: PlannedRun, fingerprint: str) -> RunOutcome:
        return future.result()

    def close(self) -> None:
        self._threads.shutdown(wait=True)


@contextlib.contextmanager
def _pool(*, scheduler: str | None, cluster: str | None, jobs: int | None, profile_settings: dict, stop: Stop,
          say: Callable[[str], None], folder: Path, needed: list[Path]) -> Iterator[tuple[Pool, int]]:
    """The pool that runs the notebooks and how many may run at once: a :class:`LocalPool` of
    ``jobs`` (default the profile's ``jobs``), or a Dask cluster's (:func:`helpers.cluster.dask_pool`)."""
    if scheduler and cluster:
        raise ValueError("give either a Dask scheduler's address (--scheduler) or --cluster local, not both")
    if scheduler or cluster:
        from helpers import cluster as dask_cluster  # dask only when asked for

        with dask_cluster.dask_pool(scheduler=scheduler, cluster=cluster, jobs=jobs, profile_settings=profile_settings,
                                    stop=stop, say=say, folder=folder, needed=needed) as (pool, in_flight):
            yield pool, in_flight
        return
    jobs = max(1, int(jobs or profile_settings.get("jobs") or 1))
    pool = LocalPool(jobs, stop)
    try:
        yield pool, jobs
    finally:
        pool.close()


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
    data_dir: str | dict[str, str] | None = None,
    suite: str = DEFAULT_SUITE,
    skip_bad: bool = False,
    force: bool = False,
    jobs: int | None = None,
    echo: Callable[[str], None] = print,
    plan_file: Path | str | None = None,
    test_dataset: str | None = None,
    test_data_dir: str | dict[str, str] | None = None,
    split_file: Path | str | None = None,
    scheduler: str | None = None,
    cluster: str | None = None,
) -> tuple[list[RunOutcome], Path]:
    """Run ``suite`` of the plan (``plan_file``, default ``notebooks/study.yaml``) for ``profile``;
    return the outcomes and the summary page's path.

    ``jobs`` notebooks run at once (default: the profile's ``jobs``, else 1). A run starts only
    after the run it reuses has finished; ``after_all`` runs (the results) start after all others.
    Each run's numbers do not depend on ``jobs``: every notebook is its own seeded process.

    With ``scheduler`` (a Dask scheduler's address, ``tcp://HOST:8786``) or ``cluster="local"`` (a
    ``LocalCluster`` of ``jobs`` workers) each run is a task on a Dask worker that shares this
    machine's files (:mod:`helpers.cluster`); ``jobs`` then caps the runs in flight (default: the
    workers' threads), and the profile's ``resources`` (``{GPU: 1}``) go with every task.

    The study's folder is locked meanwhile (:func:`study_lock`). SIGINT or SIGTERM kills the running
    notebooks ("interrupted"); the runs not started yet are left as they were ("not started": an
    earlier result keeps its ``run.json``, whose fingerprint has them rerun next time); the report
    is written, then :class:`Interrupted` is raised.
    """
    from helpers import reporting

    plan = load_plan(Path(plan_file).expanduser().resolve() if plan_file else None)  # absolute: a worker's cwd differs
    profile_settings = get_profile(profile, plan)
    runs = planned_runs(profile, only=only, dataset=dataset, data_dir=data_dir, suite=suite,
                         skip_bad=skip_bad, plan=plan, test_dataset=test_dataset, test_data_dir=test_data_dir,
                         split_file=split_file)
    ordered = [r for r in runs if not r.after_all] + [r for r in runs if r.after_all]
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            echo(line)

    folder = paths.reports_dir() / output_name(profile, dataset=dataset, suite=suite, plan=plan,
                                               test_dataset=test_dataset, split_file=split_file)
    stop = Stop()
    with study_lock(folder, echo=say):
        needed = sorted({plan.source, *(run.notebook for run in ordered)})
        with _signals_set(stop), _pool(scheduler=scheduler, cluster=cluster, jobs=jobs, stop=stop, say=say,
                                       profile_settings=profile_settings, folder=folder, needed=needed) as (pool, in_flight):
            outcomes = _run_all(ordered, in_flight, pool, stop, say, plan=plan, profile_settings=profile_settings,
                                force=force)
        index = reporting.build_report(folder, profile=profile)
    result = [outcomes[run.name] for run in ordered]
    if stop.signum is not None:
        raise Interrupted(stop.signum, result, index)
    return result, index


def _run_all(ordered: list[PlannedRun], jobs: int, pool: Pool, stop: Stop, say: Callable[[str], None], *,
             plan: Plan, profile_settings: dict, force: bool) -> dict[str, RunOutcome]:
    """The outcome of each run, ``jobs`` at a time in ``pool``, in order where one waits for another."""
    outcomes: dict[str, RunOutcome] = {}
    waiting = list(enumerate(ordered, start=1))
    running: dict[object, tuple[str, PlannedRun, str]] = {}
    announced = False

    def halt() -> None:
        """After a signal: say what stops (once); the waiting runs are not started."""
        nonlocal announced
        if not announced:
            announced = True
            say(f"{stop.name}: stopping " + (", ".join(r.name for _, r, _ in running.values()) or "nothing")
                + (f"; not starting {', '.join(r.name for _, r in waiting)}" if waiting else ""))
        for _, run in waiting:
            outcomes[run.name] = RunOutcome(run.name, "not started", 0.0,
                                            f"interrupted by {stop.name} before it started", run.run_dir)
        waiting.clear()

    while waiting or running:
        if stop.is_set():
            halt()
        for item in list(waiting):
            number, run = item
            if len(running) >= jobs or stop.is_set():
                break
            if _must_wait(run, [r for _, r in waiting], [r for _, r, _ in running.values()]):
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
            try:
                stop.cut_short = True  # a weights download may take minutes: a signal ends it
                missing = missing_weights(run, plan)
                stop.cut_short = False
            except KeyboardInterrupt:
                stop.cut_short = False
                if not stop.is_set():
                    raise
                waiting.insert(0, item)  # not started
                break
            if missing:
                outcomes[run.name] = record_unavailable(run, missing, fingerprint)
                say(f"{label}: not run, its ImageNet weights are unavailable: {missing}")
                continue
            say(f"{label}: running (time limit {run.timeout_s} s)")
            future = pool.submit(run, fingerprint, lambda line, n=run.name: say(f"    {n}: {line}"))
            running[future] = (label, run, fingerprint)
        if not running:
            if waiting and not stop.is_set():  # cannot happen with a valid plan (reuses names earlier runs only)
                raise RuntimeError(f"runs {[r.name for _, r in waiting]} wait for each other")
            continue
        done = pool.wait(list(running), timeout=1.0)  # a signal is seen within 1 s
        if stop.is_set():
            halt()
        for future in done:
            label, run, fingerprint = running.pop(future)
            outcome = pool.outcome(future, run, fingerprint)
            tail = f": {outcome.message}" if outcome.message else ""
            say(f"{label}: {outcome.status} in {outcome.seconds:.0f} s{tail}")
            if outcome.status != "ok":
                say(f"    full log: {outcome.run_dir / LOG_FILE}")
            outcomes[run.name] = outcome
    return outcomes


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
                [*python_module("papermill"), str(notebook), str(notebook), "--cwd",
                 str(notebook.parent), "--kernel", "python3", "--no-progress-bar"],
                env=env, check=True,
            )
            clean_notebook_metadata(notebook)
