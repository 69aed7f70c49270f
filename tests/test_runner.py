"""The runner on tiny notebooks: failures and time-outs are reported and do not stop the others."""

import json
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import reporting, runner
from helpers.plan import PlannedRun


def _notebook(path: Path, source: str) -> Path:
    params = nbformat.v4.new_code_cell("RUN_DIR = None")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _run(tmp_path: Path, name: str, source: str, timeout: int = 120) -> PlannedRun:
    notebook = _notebook(tmp_path / f"{name}.ipynb", source)
    run_dir = tmp_path / "reports" / "smoke" / name
    return PlannedRun(name=name, notebook=notebook, run_dir=run_dir,
                      parameters={"RUN_DIR": str(run_dir)}, timeout_s=timeout, after_all=False)


def test_a_failing_notebook_is_reported_with_its_error(tmp_path):
    source = ("from pathlib import Path\n(Path(RUN_DIR) / 'metrics.json').write_text('{}')\n"
              "raise ValueError('the data folder is empty')")
    outcome = runner.execute(_run(tmp_path, "broken", source), fingerprint="x", echo=lambda line: None)
    assert outcome.status == "failed"
    assert "the data folder is empty" in outcome.message
    status = json.loads((outcome.run_dir / "run.json").read_text())
    assert status["status"] == "failed" and "the data folder is empty" in status["message"]
    assert not (outcome.run_dir / "metrics.json").exists(), "a failed run must not leave metrics behind"
    assert (outcome.run_dir / "broken.ipynb").exists(), "the executed notebook shows where it failed"
    assert "ValueError" in (outcome.run_dir / "log.txt").read_text()


def test_a_notebook_past_its_time_limit_is_stopped(tmp_path):
    outcome = runner.execute(_run(tmp_path, "slow", "import time\ntime.sleep(120)", timeout=8),
                             fingerprint="x", echo=lambda line: None)
    assert outcome.status == "timeout"
    assert outcome.seconds < 60
    assert "time limit" in outcome.message


def test_report_lists_failed_runs(tmp_path):
    runner.execute(_run(tmp_path, "broken", "raise RuntimeError('boom')"), fingerprint="x", echo=lambda line: None)
    index = reporting.build_report(tmp_path / "reports" / "smoke", profile="smoke")
    text = (index.parent / "index.md").read_text()
    assert "broken" in text and "failed" in text and "boom" in text
    assert not list(index.parent.glob("*.part")), "no partial files left behind"


def test_a_run_reusing_another_reruns_when_that_run_changes(tmp_path):
    source_dir = tmp_path / "reports" / "smoke" / "tl_a"
    source_dir.mkdir(parents=True)
    svm = _run(tmp_path, "svm_a", "pass")
    svm = PlannedRun(name=svm.name, notebook=svm.notebook, run_dir=svm.run_dir, timeout_s=60, after_all=False,
                     parameters={**svm.parameters, "NETWORK_DIR": str(source_dir)}, reuses="tl_a")
    (source_dir / runner.RUN_FILE).write_text(json.dumps({"fingerprint": "one", "status": "ok"}))
    first = runner.run_fingerprint(svm, {})
    assert runner.run_fingerprint(svm, {}) == first
    (source_dir / runner.RUN_FILE).write_text(json.dumps({"fingerprint": "two", "status": "ok"}))
    assert runner.run_fingerprint(svm, {}) != first


def test_runs_wait_for_the_run_they_reuse_and_the_results_for_every_run(tmp_path):
    def planned(name, *, reuses=None, after_all=False):
        return PlannedRun(name=name, notebook=tmp_path / "x.ipynb", run_dir=tmp_path / name, parameters={},
                          timeout_s=60, after_all=after_all, reuses=reuses)

    tl, svm, other, results = planned("tl"), planned("svm", reuses="tl"), planned("other"), planned("r", after_all=True)
    assert runner._must_wait(svm, [svm, other, results], [tl])
    assert not runner._must_wait(other, [svm, other, results], [tl])
    assert not runner._must_wait(svm, [svm, results], [other])  # tl has finished
    assert runner._must_wait(results, [results], [svm])
    assert runner._must_wait(results, [other, results], [])
    assert not runner._must_wait(results, [results], [])
    assert not runner._must_wait(planned("svm2", reuses="not-in-this-plan"), [], [])  # --only without tl


def test_a_run_without_its_imagenet_weights_is_not_started_and_is_reported(tmp_path, monkeypatch, capsys):
    from helpers import plan

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HELPERS_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setattr("helpers.models.registry._download_imagenet_file",
                        lambda *args: (_ for _ in ()).throw(OSError("network is unreachable")))
    started = []
    monkeypatch.setattr(runner, "execute", lambda run, **kwargs: started.append(run.name))
    monkeypatch.setattr(reporting, "build_report", lambda folder, profile: folder / "index.html")
    outcomes, _ = runner.run_plan("cpu", only=["tl_000_vgg16"], echo=print)
    assert started == [] and [o.status for o in outcomes] == ["unavailable"]
    status = json.loads((tmp_path / "reports" / "cpu" / "tl_000_vgg16" / runner.RUN_FILE).read_text())
    assert status["status"] == "unavailable" and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in status["message"]
    assert "not run, its ImageNet weights are unavailable" in capsys.readouterr().out
    scratch = next(run for run in plan.planned_runs("cpu") if run.name == "scratch_000_vgg16")
    assert runner.missing_weights(scratch) is None  # random weights need no file


def test_code_fingerprint_covers_subpackages_and_the_plan(tmp_path):
    """Editing a module of a subpackage (helpers/adapters/mias.py) or the plan reruns the runs."""
    import shutil

    from conftest import REPO_ROOT

    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "helpers", root / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "notebooks").mkdir()
    shutil.copy2(REPO_ROOT / "notebooks" / "study.yaml", root / "notebooks" / "study.yaml")
    first = runner.code_fingerprint(root)
    assert runner.code_fingerprint(root) == first
    cache = root / "helpers" / "adapters" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "mias.cpython-311.pyc").write_bytes(b"compiled")
    assert runner.code_fingerprint(root) == first, "compiled files are not source"

    mias = root / "helpers" / "adapters" / "mias.py"
    original = mias.read_bytes()
    mias.write_bytes(original + b"\n# edited\n")
    edited = runner.code_fingerprint(root)
    assert edited != first
    mias.write_bytes(original)
    assert runner.code_fingerprint(root) == first

    plan = root / "notebooks" / "study.yaml"
    plan.write_text(plan.read_text() + "\n# edited\n")
    assert runner.code_fingerprint(root) not in (first, edited)

    (root / "helpers" / "adapters" / "extra.py").write_text("")  # a new, empty module counts too
    with_plan = runner.code_fingerprint(root)
    (root / "helpers" / "adapters" / "extra.py").unlink()
    assert runner.code_fingerprint(root) != with_plan


def test_code_fingerprint_of_this_checkout_by_default():
    from helpers import paths

    assert runner.code_fingerprint() == runner.code_fingerprint(paths.REPO_ROOT)


def _fake_papermill(tmp_path: Path, first_output: str) -> list[str]:
    """A stand-in for papermill that prints ``first_output`` and fails on its first start, then
    succeeds; it counts its starts in a file."""
    script = tmp_path / "fake_papermill.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        f"count = Path({str(tmp_path / 'starts')!r})\n"
        "n = int(count.read_text()) + 1 if count.exists() else 1\n"
        "count.write_text(str(n))\n"
        f"if n == 1:\n    print({first_output!r}, flush=True)\n    sys.exit(1)\n"
        "print('Executing notebook with kernel: python3', flush=True)\n"
    )
    return [sys.executable, str(script)]


def test_a_kernel_that_dies_before_it_starts_is_started_again(tmp_path, monkeypatch):
    """Two kernels started at the same moment can pick the same free port ("Address already in
    use"): papermill then fails before any cell ran, and the runner starts it again."""
    command = _fake_papermill(tmp_path, "zmq.error.ZMQError: Address already in use\n"
                              "RuntimeError: Kernel died before replying to kernel_info")
    monkeypatch.setattr(runner, "papermill_command", lambda run, output: command)
    lines: list[str] = []
    outcome = runner.execute(_run(tmp_path, "flaky", "pass"), fingerprint="x", echo=lines.append)
    assert outcome.status == "ok", outcome.message
    assert (tmp_path / "starts").read_text() == "2"
    assert any("its kernel died before it started" in line for line in lines)
    log = (outcome.run_dir / "log.txt").read_text()
    assert "Address already in use" in log and "starting it again (2 of 3)" in log


def test_a_notebook_that_fails_otherwise_is_not_started_again(tmp_path, monkeypatch):
    command = _fake_papermill(tmp_path, "ValueError: the data folder is empty")
    monkeypatch.setattr(runner, "papermill_command", lambda run, output: command)
    outcome = runner.execute(_run(tmp_path, "broken", "pass"), fingerprint="x", echo=lambda line: None)
    assert outcome.status == "failed" and "the data folder is empty" in outcome.message
    assert (tmp_path / "starts").read_text() == "1"
