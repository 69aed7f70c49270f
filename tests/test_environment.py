"""The environment: environment.yml (conda users) and pyproject.toml (pip users) name the same
dependencies, the installed versions are the pinned ones, TensorFlow runs without oneDNN unless asked."""

import os
import re
import tomllib

import yaml

from conftest import REPO_ROOT


def _normalise(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_matches_pyproject():
    project = _project()
    environment = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d)
    from_pip = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    from_project = {_normalise(r) for r in project["dependencies"]}
    assert from_pip == from_project, {"only in environment.yml": from_pip - from_project,
                                      "only in pyproject.toml": from_project - from_pip}
    python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.split("=")[-1].startswith("3.11")
    assert "-e ." in pip_section, "environment.yml must install the helpers package itself"


def test_the_installed_libraries_are_the_pinned_ones():
    """The notebooks' stored outputs hold only for the pinned versions: name the drift plainly
    rather than let nbval report changed numbers (reinstall with `make .venv/.installed`)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = dict(_normalise(r) for r in _project()["dependencies"])
    pinned = {name: spec[2:] for name, spec in pins.items() if spec.startswith("==")}
    assert {"numpy", "scikit-learn", "opencv-python-headless", "tensorflow", "keras"} <= set(pinned)
    drift = {}
    for name, wanted in pinned.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            found = "not installed"
        if found != wanted:
            drift[name] = f"{found} installed, {wanted} pinned"
    assert not drift, drift


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make reports" in readme
    assert re.search(r"^make test$", ci, re.MULTILINE)


def test_tensorflow_runs_without_onednn_unless_asked_and_the_run_records_which():
    """helpers.backend turns oneDNN off (its CPU code depends on the CPU model) unless the user set it."""
    import subprocess
    import sys

    from helpers.reporting import describe_environment

    script = ("import os, helpers.backend as b; "
              "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], b.ONEDNN, b.environment()['onednn'])")
    seen = {}
    for setting in (None, "1"):
        env = {key: value for key, value in os.environ.items() if key not in ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")}
        if setting is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = setting
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                timeout=120, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        seen[setting] = result.stdout.split()
    assert seen == {None: ["0", "off", "off"], "1": ["1", "on", "on"]}
    line = describe_environment({"backend": "tensorflow", "keras": "3", "tensorflow": "2", "onednn": "off",
                                 "device": "CPU: x"})
    assert "oneDNN off" in line and line.endswith("; device CPU: x")
