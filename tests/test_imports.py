"""Importing the helpers inside a Jupyter kernel prints nothing.

A lesson's first code cell imports helpers modules; anything they print on import (a library's
warning, a C++ start-up notice) lands in that cell's output, differs between machines and breaks
nbval's comparison with the stored output. ``tqdm.auto`` did this once: in a kernel without
ipywidgets it warns "IProgress not found" when imported.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import nbformat
from nbclient import NotebookClient

import helpers
from conftest import REPO_ROOT


def helpers_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(helpers.__path__, "helpers.")
                  if not info.name.endswith("__main__"))


def test_importing_every_helpers_module_in_a_kernel_prints_nothing():
    modules = helpers_modules()
    assert "helpers.models" in modules and "helpers.downloads" in modules
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import helpers")]
    notebook.cells += [nbformat.v4.new_code_cell(f"import {name}") for name in modules]
    NotebookClient(notebook, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}).execute()
    printed = {cell.source: [output.get("text", output.get("ename")) for output in cell.outputs]
               for cell in notebook.cells if cell.outputs}
    assert printed == {}


def test_helpers_without_a_model_do_not_import_keras():
    """``import helpers`` and the data/plan/runner modules leave Keras (and TensorFlow) unimported,
    so that ``python -m helpers data list`` starts at once; ``helpers.backend`` imports Keras."""
    check = ("import helpers, helpers.datasets, helpers.plan, helpers.runner, helpers.downloads, helpers.splits; "
             "import sys; print('keras' in sys.modules or 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    listed = subprocess.run([sys.executable, "-m", "helpers", "data", "list"], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "mias" in listed.stdout and not listed.stderr


def test_backend_imports_keras_quietly():
    """The first Keras import, through ``helpers.backend``, prints nothing (TensorFlow's C++
    start-up notices go to the silenced stderr)."""
    done = subprocess.run([sys.executable, "-c", "from helpers import backend; import sys; print('keras' in sys.modules)"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n" and done.stderr == ""
