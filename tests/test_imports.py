"""Importing the helpers inside a Jupyter kernel prints nothing.

A lesson's first code cell imports helpers modules; anything they print on import (a library's
warning, a C++ start-up notice) lands in that cell's output, differs between machines and breaks
nbval's comparison with the stored output. ``tqdm.auto`` did this once: in a kernel without
ipywidgets it warns "IProgress not found" when imported.
"""

from __future__ import annotations

import pkgutil

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
