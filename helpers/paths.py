"""Where the project reads and writes: repository root, data, cache and reports folders.

Every location can be moved with an environment variable, so that tests and CI can work in
temporary folders without touching the checkout:

- ``HELPERS_DATA_DIR``: raw datasets (default ``<repo>/data/raw``)
- ``HELPERS_CACHE_DIR``: generated images and prepared arrays (default ``<repo>/data/cache``)
- ``HELPERS_REPORTS_DIR``: executed notebooks, metrics and summaries (default ``<repo>/reports``)
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
PART_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.part$")
"""How :func:`atomic_path` names its temporary file: ``.<name>.<8 random characters>.part``."""


def _from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def data_dir() -> Path:
    """Folder that holds raw datasets (``HELPERS_DATA_DIR``)."""
    return _from_env("HELPERS_DATA_DIR", REPO_ROOT / "data" / "raw")


def cache_dir() -> Path:
    """Folder for generated images and prepared arrays (``HELPERS_CACHE_DIR``)."""
    return _from_env("HELPERS_CACHE_DIR", REPO_ROOT / "data" / "cache")


def reports_dir() -> Path:
    """Folder that receives ``<profile>/`` report folders (``HELPERS_REPORTS_DIR``)."""
    return _from_env("HELPERS_REPORTS_DIR", REPO_ROOT / "reports")


def notebooks_dir() -> Path:
    """Folder of the numbered lesson notebooks and ``study.yaml``."""
    return REPO_ROOT / "notebooks"


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only on success.

    A crash or exception inside the block leaves no half-written ``target`` behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sweep_partial_files(folder: Path | str, older_than_s: float = 0.0) -> list[Path]:
    """Remove the temporary files of killed :func:`atomic_path` writes under ``folder`` (only files
    named as it names them, not modified for ``older_than_s`` seconds); return those removed."""
    cutoff = time.time() - older_than_s
    removed = []
    for root, _, names in os.walk(folder):  # links to folders are not followed
        for name in filter(PART_FILE.match, names):
            path = Path(root) / name
            try:
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime <= cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # its writer finished meanwhile
                continue
    return removed


def write_text_atomic(target: Path | str, text: str) -> Path:
    """Write ``text`` to ``target`` atomically (all or nothing)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def run_dir_for(profile: str, run_name: str, run_dir: str | Path | None = None) -> Path:
    """Where a notebook writes its outputs.

    The runner passes ``run_dir`` (``reports/<profile>/<run>``). A notebook opened by hand writes
    to ``reports/interactive/<profile>/<run>`` instead, so it never mixes with a study's results.
    """
    folder = Path(run_dir) if run_dir else reports_dir() / "interactive" / profile / run_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
