"""Adapters for the papers' public datasets, one module each (``mias``, ``cbis_ddsm``,
``mini_ddsm``, ``inbreast``, ``breakhis``).

Every adapter is ``load_<name>(root, *, skip_bad=False, **options) -> AdapterResult``: a manifest
with the columns of :data:`helpers.datasets.MANIFEST_COLUMNS` (extra columns may follow) and the
list of what it deliberately left out, each with its reason. :func:`helpers.datasets.load` calls
them through the registry and validates the manifest.

Bad input (a missing folder, an unreadable label row, an unknown class name, a duplicated image,
a broken file header) raises an error that names the file and the problem. With
``skip_bad=True`` the offending item is left out and listed in ``excluded`` instead; nothing is
dropped silently either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class AdapterResult:
    """What an adapter found: the manifest, and each item it left out with the reason."""

    manifest: pd.DataFrame
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (file or row, reason)


class BadInputError(ValueError):
    """A dataset file or label row that cannot be used; the message names it and says why."""


def require_folder(root: str | Path | None, dataset: str, expected: str) -> Path:
    """``root`` as an absolute existing folder, or FileNotFoundError saying what was expected."""
    if root is None:
        raise FileNotFoundError(f"dataset {dataset!r} needs a folder (DATA_DIR / --data-dir): "
                                f"{expected}; see data/README.md for how to obtain it")
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset {dataset!r}: folder {folder} does not exist; "
                                f"expected {expected} (see data/README.md)")
    return folder


def bad_item(excluded: list[tuple[str, str]], item: str | Path, reason: str, *, skip_bad: bool) -> None:
    """Raise BadInputError for ``item``, or, with ``skip_bad``, add it to ``excluded``."""
    if not skip_bad:
        raise BadInputError(f"{item}: {reason} (pass skip_bad=True to leave such items out and list them)")
    excluded.append((str(item), reason))
