"""The built wheel holds the whole helpers package, subpackages included.

``[tool.setuptools] packages = ["helpers"]`` once left ``helpers.adapters`` out of the wheel
(``pip install -e .`` hides this: the editable install reads the checkout). The wheel is built
from a copy of the project with this venv's setuptools, offline (no build isolation, no index).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO_ROOT


def _project_copy(target: Path) -> Path:
    """What the wheel is built from, copied so that the build leaves nothing in the checkout."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, target / name)
    shutil.copytree(REPO_ROOT / "helpers", target / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def test_wheel_holds_every_helpers_module(tmp_path):
    source = _project_copy(tmp_path / "project")
    dist = tmp_path / "dist"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", str(dist), str(source)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = list(dist.glob("breast_tl_course-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        metadata = next(wheel.read(name).decode() for name in names if name.endswith(".dist-info/METADATA"))

    modules = {path.relative_to(source).as_posix() for path in (source / "helpers").rglob("*.py")}
    assert "helpers/adapters/__init__.py" in modules and "helpers/__main__.py" in modules
    assert modules - names == set(), "modules missing from the wheel"
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"helpers"}, "the wheel should hold the helpers package only"
    assert "License-Expression: MIT" in metadata
