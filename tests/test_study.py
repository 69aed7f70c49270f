"""The whole study, headless, as a researcher runs it: ``python -m helpers run --profile smoke``.

One smoke run (on a two-worker Dask ``LocalCluster``, ``--cluster local``: every notebook a task, its
``reuses:`` chains and the ``after_all`` results notebook in order) feeds several checks: it completes,
its report says which data, weights and profile produced every number, a second run (on the default
process pool) gives byte-identical metrics, an unchanged run is skipped, and
nbval re-executes the committed notebooks against it and compares their stored outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from helpers import evaluation, plan, runner

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
ALL_RUNS = tuple(run.name for run in plan.planned_runs("smoke"))  # no random-weights baselines: smoke is random
TRAINING_RUNS = tuple(name for name in ALL_RUNS if name.startswith("tl_"))
SVM_RUNS = tuple(name for name in ALL_RUNS if name.startswith("svm_"))
FUSION_RUNS = tuple(name for name in ALL_RUNS if name.startswith("fusion_"))
# the kinds of head that nbval does not re-execute (paper 001's, paper 004's sigmoid); nbval re-executes
# lessons 3, 4 and 5 with their default parameters, the settings of tl_000_mobilenetv2 (paper 000's head),
# svm_000_mobilenetv2 (its SVM, on a network trained as lesson 3 trains it) and the fusion, and compares
# their printed metrics and per-epoch losses with the stored ones
RERUN = ("tl_001_squeezenet_sgdm", "tl_004_resnet50")


def run_smoke(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "helpers", "run", "--profile", "smoke", *extra],
        env=runner.isolated_env(folder), capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("smoke-a")
    result = run_smoke(folder, "--cluster", "local")  # on a two-worker Dask LocalCluster; the reruns below use the default pool
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return folder, result


def test_smoke_study_runs_every_notebook_and_writes_the_report(smoke_study):
    folder, result = smoke_study
    profile_dir = folder / "reports" / "smoke"
    index = profile_dir / "index.html"
    assert f"report: {index}" in result.stdout
    assert "started a local Dask cluster" in result.stdout
    assert len(TRAINING_RUNS) == 16, TRAINING_RUNS
    for run in ALL_RUNS:
        status = json.loads((profile_dir / run / "run.json").read_text())
        assert status["status"] == "ok", status
        assert list((profile_dir / run).glob("*.ipynb")), f"{run}: no executed notebook"
    for run in TRAINING_RUNS:
        metrics = evaluation.read_metrics_json(profile_dir / run / "metrics.json")
        assert metrics["schema_version"] == evaluation.METRICS_SCHEMA_VERSION
        assert metrics["run"]["profile"] == "smoke" and metrics["run"]["dataset"] == "synthetic"
        assert metrics["run"]["weights"] and run.startswith(f"tl_{metrics['run']['study']}_{metrics['run']['backbone']}")
        assert 0.0 <= metrics["image_level"]["accuracy"]["value"] <= 1.0
        for figure in ("history.png", "confusion_matrix.png", "roc.png"):
            assert (profile_dir / run / figure).stat().st_size > 1000
    assert len(SVM_RUNS) == 6 and len(FUSION_RUNS) == 1, (SVM_RUNS, FUSION_RUNS)
    for run in SVM_RUNS + FUSION_RUNS:
        metrics = evaluation.read_metrics_json(profile_dir / run / "metrics.json")
        hybrid = metrics["run"]["classifier"]
        assert hybrid == ("svm" if run.startswith("svm_") else "fusion")
        assert metrics["run"]["profile"] == "smoke" and metrics["run"]["weights"]
        compared = metrics["compared"]
        assert set(compared) == ({"softmax"} if hybrid == "svm" else {"resnet50 pathway", "alexnet pathway"})
        for block in compared.values():  # measured on the same test images as the hybrid
            assert block["image_level"]["n"] == metrics["image_level"]["n"] > 0
        for figure in ("confusion_matrix.png", "roc.png"):
            assert (profile_dir / run / figure).stat().st_size > 1000
    for run in SVM_RUNS:  # each reuses the network lesson 3 trained with the same settings
        network = evaluation.read_metrics_json(profile_dir / run / "metrics.json")["run"]["network"]
        assert network.startswith(f"reused from run tl_000_{run.removeprefix('svm_000_')} "), network
        assert not (profile_dir / run / "best.keras").exists()
    kept = sorted(path.parent.name for path in profile_dir.rglob("*.keras"))
    assert kept == sorted(f"tl_000_{run.removeprefix('svm_000_')}" for run in SVM_RUNS), \
        "only a network a later run reuses is kept (SAVE_MODEL)"
    fusion = evaluation.read_metrics_json(profile_dir / FUSION_RUNS[0] / "metrics.json")["run"]
    assert fusion["backbone"] == "resnet50+alexnet" and len(fusion["classes"]) == 3
    markdown = (profile_dir / "index.md").read_text()
    assert "The hybrids against what they replace" in markdown and "single pathway" in markdown
    for needle in ("smoke", "synthetic", "random init", "paper 000", "Scaled down"):
        assert needle in markdown, needle
    assert "val_loss" in result.stdout, "per-epoch progress is shown"


def test_smoke_report_renders_in_chromium_and_links_every_run_to_its_notebook_page(smoke_study):
    from browser_check import check_page_in_browser

    folder, _ = smoke_study
    index = folder / "reports" / "smoke" / "index.html"
    check_page_in_browser(index)  # skips without Chromium
    page = index.read_text()
    for run in ALL_RUNS:  # each run's executed notebook, rendered as HTML as the run ended
        notebook = next((folder / "reports" / "smoke" / run).glob("*.ipynb"))
        assert f'href="{run}/{notebook.stem}.html"' in page, run
    assert page.index("<h2 id='findings'>") < page.index("<h2 id='forest'>") < page.index("<h2 id='runs'>")


def test_smoke_study_twice_gives_byte_identical_metrics(smoke_study, tmp_path):
    first, _ = smoke_study
    result = run_smoke(tmp_path, "--only", *RERUN)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for run in RERUN:
        a = (first / "reports" / "smoke" / run / "metrics.json").read_bytes()
        b = (tmp_path / "reports" / "smoke" / run / "metrics.json").read_bytes()
        assert a == b, f"{run}: metrics.json differs between two smoke runs"


def test_unchanged_runs_are_skipped(smoke_study):
    folder, _ = smoke_study
    result = run_smoke(folder, "--only", "tl_000_mobilenetv2")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "unchanged since the last run, skipped" in result.stdout


@pytest.fixture(scope="module")
def nbval_results(smoke_study) -> dict[Path, subprocess.CompletedProcess]:
    """nbval over every notebook against the smoke study, two notebooks at a time (as the runner
    runs them: each in its own kernel, writing its own run folder)."""
    from concurrent.futures import ThreadPoolExecutor

    folder, _ = smoke_study

    def check(notebook: Path) -> subprocess.CompletedProcess:
        for attempt in range(1, runner.KERNEL_START_ATTEMPTS + 1):
            result = subprocess.run(
                [*runner.python_module("pytest"), "--nbval", str(notebook), "--nbval-current-env",
                 "--nbval-sanitize-with", str(REPO_ROOT / "tests" / "nbval_sanitize.cfg"),
                 "-p", "no:cacheprovider", "-q"],
                env=runner.isolated_env(folder), capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
            )
            # two kernels started at once may pick the same port: start again, as the runner does
            if result.returncode == 0 or runner.KERNEL_NEVER_STARTED not in result.stdout + result.stderr:
                break
        return result

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(NOTEBOOKS, pool.map(check, NOTEBOOKS)))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_outputs_match_nbval(nbval_results, notebook):
    result = nbval_results[notebook]
    assert result.returncode == 0, result.stdout[-6000:]


def test_every_notebook_has_one_parameters_cell_and_stored_outputs():
    import nbformat

    assert [n.name for n in NOTEBOOKS] == ["01_data_preparation.ipynb", "02_augmentation.ipynb",
                                           "03_transfer_learning.ipynb", "04_svm_hybrid.ipynb",
                                           "05_fusion_resnet50_alexnet.ipynb", "06_results.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert any(c.get("outputs") for c in code), f"{path.name} has no stored outputs"
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name} stores an error"
