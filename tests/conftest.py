"""Shared fixtures: every test works in temporary folders, never in the checkout's data/ or reports/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def isolated_folders(tmp_path_factory: pytest.TempPathFactory):
    """Point the cache and reports folders at a temporary folder for the whole session."""
    root = tmp_path_factory.mktemp("helpers-session")
    saved = {key: os.environ.get(key) for key in ("HELPERS_CACHE_DIR", "HELPERS_REPORTS_DIR")}
    os.environ["HELPERS_CACHE_DIR"] = str(root / "cache")
    os.environ["HELPERS_REPORTS_DIR"] = str(root / "reports")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
