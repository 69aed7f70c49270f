"""The study on Dask distributed: a two-worker ``LocalCluster`` on loopback runs tiny plans (tiny
notebooks that need no TensorFlow, as in test_runner.py) in the order the plan says, streams their
progress to the client, fails only the run whose worker dies (and reruns only it), refuses at once
a resource no worker offers, stops every notebook on SIGINT; and two real smoke notebooks run
through ``python -m helpers run --cluster local``."""

from __future__ import annotations

import json
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
from helpers import cluster, runner

TIMES = """import json, time
from pathlib import Path
start = time.time()
print('Epoch 1/1 progress-of-' + RUN_DIR.rsplit('/', 1)[-1], flush=True)
time.sleep(0.5)
Path(RUN_DIR, 'times.json').write_text(json.dumps({'start': start, 'end': time.time()}))
"""

KILLER = """import json, time
from pathlib import Path
import psutil
kernel = psutil.Process()
papermill = kernel.parent()
Path(RUN_DIR, 'pids.json').write_text(json.dumps({'kernel': kernel.pid, 'papermill': papermill.pid}))
if not Path(MARKER).exists():  # the first time only: a rerun succeeds
    Path(MARKER).write_text('killed')
    papermill.parent().kill()  # the Dask worker that runs this notebook
    time.sleep(60)
"""

SLEEPER = """import os, time
from pathlib import Path
Path(RUN_DIR, 'kernel.tmp').write_text(str(os.getpid()))
os.replace(Path(RUN_DIR, 'kernel.tmp'), Path(RUN_DIR, 'kernel.pid'))
time.sleep(300)
"""


@pytest.fixture(scope="module")
def scheduler():
    """The address of a two-worker local cluster (one thread each), closed at the end."""
    local = cluster.start_local_cluster(2, gpus=0)
    try:
        yield local.scheduler_address
    finally:
        local.close()


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Reports and cache of this test under ``tmp_path`` (the workers' notebooks get them too)."""
    for key, value in runner.isolated_env(tmp_path).items():
        if key.startswith("HELPERS_"):
            monkeypatch.setenv(key, value)
    return tmp_path


def _notebook(path: Path, source: str, parameters: str = "RUN_DIR = None") -> str:
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path.name


def _plan(folder: Path, runs: list[dict], **profile: object) -> Path:
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"quick": {"timeout_s": 120, "jobs": 2, **profile}}, "runs": runs}))
    return path


def _status(folder: Path, name: str) -> dict:
    return json.loads((folder / "reports" / "quick" / name / runner.RUN_FILE).read_text())


def _gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_plan_runs_on_two_workers_in_order_with_progress_and_report(scheduler, isolated):
    times = _notebook(isolated / "times.ipynb", TIMES)
    plan = _plan(isolated, [{"name": "tl_a", "notebook": times}, {"name": "svm_a", "notebook": times, "reuses": "tl_a"},
                            {"name": "other", "notebook": times}, {"name": "results", "notebook": times, "after_all": True}])
    lines: list[str] = []
    outcomes, index = runner.run_plan("quick", plan_file=plan, scheduler=scheduler, echo=lines.append)
    assert {o.name: o.status for o in outcomes} == dict.fromkeys(["tl_a", "svm_a", "other", "results"], "ok"), lines
    when = {o.name: json.loads((o.run_dir / "times.json").read_text()) for o in outcomes}
    assert when["svm_a"]["start"] >= when["tl_a"]["end"], "svm_a started before the run it reuses ended"
    assert when["results"]["start"] >= max(when[name]["end"] for name in ("tl_a", "svm_a", "other"))
    assert when["other"]["start"] < when["tl_a"]["end"], "two workers: other runs beside tl_a"
    for name in when:
        assert _status(isolated, name)["status"] == "ok"
        assert f"    {name}: Epoch 1/1 progress-of-{name}" in lines, f"{name}'s progress did not reach the client"
    assert index.exists() and "svm_a" in (index.parent / "index.md").read_text()
    assert any("Dask scheduler" in line and "2 workers" in line for line in lines)


def test_a_dead_worker_fails_only_its_run_and_a_rerun_runs_only_it(scheduler, isolated, monkeypatch):
    code = runner.code_fingerprint()  # the checkout as it is now: an edit meanwhile must not rerun "fine"
    monkeypatch.setattr(runner, "code_fingerprint", lambda root=None: code)
    killer = _notebook(isolated / "killer.ipynb", KILLER, "RUN_DIR = None\nMARKER = None")
    times = _notebook(isolated / "times.ipynb", TIMES)
    plan = _plan(isolated, [{"name": "killer", "notebook": killer, "parameters": {"MARKER": str(isolated / "marker")}},
                            {"name": "fine", "notebook": times}])
    lines: list[str] = []
    outcomes, index = runner.run_plan("quick", plan_file=plan, scheduler=scheduler, echo=lines.append)
    status = {o.name: o for o in outcomes}
    assert status["fine"].status == "ok", lines
    assert status["killer"].status == "failed" and cluster.WORKER_DIED in status["killer"].message, lines
    record = _status(isolated, "killer")
    assert record["status"] == "failed" and cluster.WORKER_DIED in record["message"]
    pids = json.loads((isolated / "reports" / "quick" / "killer" / "pids.json").read_text())
    assert _gone([pids["papermill"], pids["kernel"]], within=15), "the dead worker's notebook is still running"
    report = (index.parent / "index.md").read_text()
    assert "killer" in report and cluster.WORKER_DIED in report

    again, _ = runner.run_plan("quick", plan_file=plan, scheduler=scheduler, echo=lines.append)
    assert {o.name: o.status for o in again} == {"killer": "ok", "fine": "skipped"}


def test_a_resource_no_worker_offers_fails_at_once(scheduler, isolated):
    plan = _plan(isolated, [{"name": "a", "notebook": _notebook(isolated / "a.ipynb", "pass")}], resources={"GPU": 1})
    started = time.monotonic()
    with pytest.raises(runner.ClusterError, match=r'no worker of the Dask cluster .* offers them.*--resources "GPU=1"'):
        runner.run_plan("quick", plan_file=plan, scheduler=scheduler, echo=lambda line: None)
    assert time.monotonic() - started < 20
    assert not (isolated / "reports" / "quick" / "a" / runner.RUN_FILE).exists(), "nothing may start"


def test_a_worker_that_cannot_see_the_study_folder_is_named(tmp_path):
    probe = tmp_path / ".dask-probe"
    assert "cannot read the probe file" in cluster._probe(str(probe), "token", [])
    probe.write_text("another")
    assert "reads another file" in cluster._probe(str(probe), "token", [])
    probe.write_text("token")
    assert cluster._probe(str(probe), "token", [str(tmp_path)]) == ""
    assert str(tmp_path / "plan.yaml") in cluster._probe(str(probe), "token", [str(tmp_path / "plan.yaml")])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "client-killed"])
def test_a_stopped_or_killed_client_stops_the_notebooks_on_the_workers(scheduler, tmp_path, signum):
    """Ctrl-C: the notebooks are stopped and recorded, the report written; a client killed outright:
    the scheduler cancels its tasks, and each worker stops its notebook."""
    sleeper = _notebook(tmp_path / "sleeper.ipynb", SLEEPER)
    plan = _plan(tmp_path, [{"name": name, "notebook": sleeper} for name in ("one", "two", "three")])
    with open(tmp_path / "runner.log", "w") as log:
        client = subprocess.Popen([sys.executable, "-m", "helpers", "run", "--plan", str(plan), "--profile", "quick",
                                   "--scheduler", scheduler], cwd=REPO_ROOT, env=runner.isolated_env(tmp_path),
                                  stdout=log, stderr=subprocess.STDOUT)
    folder = tmp_path / "reports" / "quick"
    try:
        deadline = time.monotonic() + 60
        while not all((folder / name / "kernel.pid").exists() for name in ("one", "two")):
            assert time.monotonic() < deadline and client.poll() is None, (tmp_path / "runner.log").read_text()
            time.sleep(0.2)
        kernels = [psutil.Process(int((folder / name / "kernel.pid").read_text())) for name in ("one", "two")]
        notebooks = [pid for kernel in kernels for pid in (kernel.pid, kernel.parent().pid)]
        client.send_signal(signum)
        expected = 128 + signum if signum == signal.SIGINT else -signum
        assert client.wait(timeout=60) == expected, (tmp_path / "runner.log").read_text()
    finally:
        if client.poll() is None:
            client.kill()
    assert _gone(notebooks, within=15), "a notebook is still running on a worker"
    deadline = time.monotonic() + 10  # a killed client's workers record their runs themselves
    while any(_status(tmp_path, name)["status"] == "running" for name in ("one", "two")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {name: _status(tmp_path, name)["status"] for name in ("one", "two")} == dict.fromkeys(("one", "two"), "interrupted")
    reason = "SIGINT" if signum == signal.SIGINT else cluster.CLIENT_GONE
    assert all(f"stopped by {reason}" in _status(tmp_path, name)["message"] for name in ("one", "two"))
    assert not (folder / "three" / runner.RUN_FILE).exists(), "a run not started has no record"
    assert (folder / "index.html").exists() == (signum == signal.SIGINT), "the report is written after Ctrl-C"


# The real smoke notebooks on a two-worker LocalCluster: tests/test_study.py runs the whole smoke study
# with --cluster local (its reuses: chains and the after_all results notebook included), then reruns
# some of it on the default process pool and compares the metrics byte for byte.


def test_the_default_pool_never_imports_dask(tmp_path):
    code = ("import sys\nfrom pathlib import Path\nfrom helpers import runner\n"
            "with runner._pool(scheduler=None, cluster=None, jobs=None, profile_settings={'jobs': 3}, stop=runner.Stop(),"
            " say=print, folder=Path('.'), needed=[]) as (pool, jobs):\n"
            "    assert isinstance(pool, runner.LocalPool) and jobs == 3\n"
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    with pytest.raises(ValueError, match="not both"):
        with runner._pool(scheduler="tcp://127.0.0.1:8786", cluster="local", jobs=1, profile_settings={},
                          stop=runner.Stop(), say=print, folder=tmp_path, needed=[]):
            pass
