"""Interrupts: Ctrl-C and SIGTERM stop every notebook of a study (papermill and its kernel), the
notebooks die with a killed runner, a second runner refuses while the first lives, and partial
files of killed writes are swept. Each runner here is ``python -m helpers run`` on a tiny plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

from conftest import REPO_ROOT
from helpers import reporting, runner

SLEEPER = """import os, time
from pathlib import Path
Path(RUN_DIR, 'metrics.json').write_text('{}')  # written early: the run has still not finished
Path(RUN_DIR, 'kernel.tmp').write_text(str(os.getpid()))
os.replace(Path(RUN_DIR, 'kernel.tmp'), Path(RUN_DIR, 'kernel.pid'))
time.sleep(300)
"""


def _plan(tmp_path: Path, names: list[str], jobs: int) -> Path:
    params = nbformat.v4.new_code_cell("RUN_DIR = None")
    params.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(SLEEPER)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "sleeper.ipynb")
    plan = {"profiles": {"quick": {"timeout_s": 300, "jobs": jobs}},
            "runs": [{"name": name, "notebook": "sleeper.ipynb"} for name in names]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


class Spawned:
    """Runners started by a test, and the notebook processes seen; all killed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.runners: list[subprocess.Popen] = []
        self.seen: list[psutil.Process] = []

    def runner(self, plan: Path, log_name: str = "runner.log") -> subprocess.Popen:
        with open(self.tmp_path / log_name, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "helpers", "run", "--plan", str(plan), "--profile", "quick"],
                cwd=REPO_ROOT, env=runner.isolated_env(self.tmp_path), stdout=log, stderr=subprocess.STDOUT)
        self.runners.append(process)
        return process

    def notebooks(self, run_dirs: list[Path], within: float = 90) -> list[psutil.Process]:
        """Papermill and kernel of each run, once its kernel runs the sleeping cell."""
        deadline = time.monotonic() + within
        while not all((d / "kernel.pid").exists() for d in run_dirs):
            assert time.monotonic() < deadline, f"the notebooks did not start within {within} s"
            time.sleep(0.2)
        found = []
        for run_dir in run_dirs:
            kernel = psutil.Process(int((run_dir / "kernel.pid").read_text()))
            papermill = kernel.parent()
            assert "papermill" in " ".join(papermill.cmdline())
            found += [papermill, kernel]
        self.seen += found
        return found

    def close(self) -> None:
        for process in self.runners:
            if process.poll() is None:
                try:
                    self.seen += psutil.Process(process.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    pass
                process.kill()
            process.wait()
        for process in self.seen:
            try:
                process.kill()  # psutil checks the pid was not reused
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def spawned(tmp_path):
    started = Spawned(tmp_path)
    yield started
    started.close()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone_within(processes: list[psutil.Process], seconds: float) -> float:
    """Seconds until none of ``processes`` lives; fails after ``seconds``."""
    started = time.monotonic()
    while any(_alive(p) for p in processes):
        alive = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in processes if _alive(p)]
        assert time.monotonic() - started < seconds, f"still running after {seconds} s: {alive}"
        time.sleep(0.1)
    return time.monotonic() - started


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / runner.RUN_FILE).read_text())


def test_ctrl_c_stops_every_running_notebook_and_marks_it_interrupted(tmp_path, spawned):
    folder = tmp_path / "reports" / "quick"
    earlier = {"status": "ok", "fingerprint": "an earlier run"}
    for name in ("b", "c"):  # an earlier run of the same folders
        (folder / name).mkdir(parents=True)
        (folder / name / runner.RUN_FILE).write_text(json.dumps(earlier))
    (folder / "b" / "metrics.json").write_text('{"earlier": true}')
    study = spawned.runner(_plan(tmp_path, ["a", "b", "c"], jobs=2))
    notebooks = spawned.notebooks([folder / "a", folder / "b"])

    study.send_signal(signal.SIGINT)
    seconds = _gone_within(notebooks, 10)
    print(f"\nSIGINT to papermill and kernels of 2 runs gone: {seconds:.2f} s")
    assert study.wait(timeout=60) == 130
    output = (tmp_path / "runner.log").read_text()
    for name in ("a", "b"):
        status = _status(folder / name)
        assert status["status"] == "interrupted" and "SIGINT" in status["message"]
        assert not (folder / name / "metrics.json").exists(), f"{name} did not finish: no metrics"
    assert _status(folder / "c") == earlier, "a run not started is left as it was"
    assert "0 of 3 runs ok, 2 interrupted, 1 not started" in output
    assert "interrupted by SIGINT: a, b stopped; c not started" in output
    assert "| interrupted |" in (folder / "index.md").read_text()
    assert not (folder / ".runner.lock").read_text(), "the lock is released"


def test_sigterm_stops_the_running_notebook(tmp_path, spawned):
    folder = tmp_path / "reports" / "quick"
    folder.mkdir(parents=True)
    part = folder / ".index.md.k2j4_x9q.part"  # left by a write killed in an earlier run
    part.write_text("half")
    study = spawned.runner(_plan(tmp_path, ["a"], jobs=1))
    notebooks = spawned.notebooks([folder / "a"])
    assert not part.exists(), "swept at the start"

    study.send_signal(signal.SIGTERM)
    _gone_within(notebooks, 10)
    assert study.wait(timeout=60) == 128 + signal.SIGTERM
    assert _status(folder / "a")["status"] == "interrupted"
    assert not (folder / "a" / "metrics.json").exists()
    assert "interrupted by SIGTERM: a stopped" in (tmp_path / "runner.log").read_text()


def test_notebooks_die_with_a_killed_runner_and_a_second_runner_refuses_meanwhile(tmp_path, spawned):
    folder = tmp_path / "reports" / "quick"
    plan = _plan(tmp_path, ["a"], jobs=1)
    first = spawned.runner(plan)
    notebooks = spawned.notebooks([folder / "a"])

    second = spawned.runner(plan, "second.log")
    assert second.wait(timeout=30) == 2
    refusal = (tmp_path / "second.log").read_text()
    assert f"pid {first.pid}" in refusal and "started" in refusal and str(folder) in refusal
    assert (folder / "a" / "kernel.pid").exists(), "the live run's folder is not deleted"

    first.kill()
    first.wait()
    seconds = _gone_within(notebooks, 5)
    print(f"\nkill -9 of the runner to papermill and kernel gone: {seconds:.2f} s")

    assert _status(folder / "a")["status"] == "running" and (folder / "a" / "metrics.json").exists()
    said: list[str] = []
    with runner.study_lock(folder, echo=said.append):  # as the next runner takes the lock
        assert json.loads((folder / ".runner.lock").read_text())["pid"] == os.getpid()
    assert any("stale" in line and f"pid {first.pid}" in line for line in said), said
    assert _status(folder / "a")["status"] == "interrupted", "its runner was killed while it ran"
    assert not (folder / "a" / "metrics.json").exists(), "a run that did not finish has no metrics"


def test_stale_partial_files_are_swept_when_a_study_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "reports" / "quick"
    cache = tmp_path / "cache" / "synthetic"
    swept = [folder / "a" / ".metrics.json.k2j4_x9q.part", folder / ".index.html.abcdefgh.part",
             cache / ".images.npz.0a1b2c3d.part"]
    kept = [folder / "a" / "notes.part", folder / "a" / ".notes.part", folder / "a" / "metrics.json",
            cache / ".fresh.npz.0a1b2c3d.part",  # may be written right now (a notebook run by hand)
            tmp_path / "reports" / "other" / ".index.md.abcdefgh.part"]  # another study's folder
    for path in swept + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    old = time.time() - 2 * 3600
    os.utime(cache / ".images.npz.0a1b2c3d.part", (old, old))

    said: list[str] = []
    with runner.study_lock(folder, echo=said.append):
        pass
    assert [p for p in swept if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert any("3 partial files" in line for line in said), said


def test_a_signal_during_a_weights_download_cuts_it_short(tmp_path, monkeypatch):
    """The runner downloads missing ImageNet weights itself, before a run starts (minutes)."""
    monkeypatch.setenv("HELPERS_REPORTS_DIR", str(tmp_path / "reports"))
    started: list[str] = []

    def downloading(run, plan=None):
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # Ctrl-C arrives meanwhile

    monkeypatch.setattr(runner, "missing_weights", downloading)
    monkeypatch.setattr(runner, "execute", lambda run, **kwargs: started.append(run.name))
    monkeypatch.setattr(reporting, "build_report", lambda folder, profile: folder / "index.html")
    try:
        with pytest.raises(runner.Interrupted) as stopped:
            runner.run_plan("quick", plan_file=_plan(tmp_path, ["a", "b"], jobs=1), echo=lambda line: None)
    except KeyboardInterrupt:
        pytest.fail("the signal escaped the runner")
    assert stopped.value.signum == signal.SIGINT and started == []
    assert [o.status for o in stopped.value.outcomes] == ["not started", "not started"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"
