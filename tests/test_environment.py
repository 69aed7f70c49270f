"""environment.yml (conda users) and pyproject.toml (pip users) must name the same dependencies."""

import re
import tomllib

import yaml

from conftest import REPO_ROOT


def _normalise(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d)
    from_pip = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    from_project = {_normalise(r) for r in project["dependencies"]}
    assert from_pip == from_project, {"only in environment.yml": from_pip - from_project,
                                      "only in pyproject.toml": from_project - from_pip}
    python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.split("=")[-1].startswith("3.11")
    assert "-e ." in pip_section, "environment.yml must install the helpers package itself"


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make reports" in readme
    assert re.search(r"^make test$", ci, re.MULTILINE)
