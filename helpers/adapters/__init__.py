"""Adapters for the papers' public datasets, one module each (``mias``, ``cbis_ddsm``,
``mini_ddsm``, ``inbreast``, ``breakhis``).

Every adapter is ``load_<name>(root, *, skip_bad=False, **options) -> AdapterResult``: a manifest
with the columns of :data:`helpers.datasets.MANIFEST_COLUMNS` (extra columns may follow) and the
list of what it deliberately left out, each with its reason. :func:`helpers.datasets.load` calls
them through the registry and validates the manifest.

Bad input (a missing folder, an unreadable label row, an unknown class name, a duplicated image,
a broken file header, an unfinished download) raises an error that names the file and the
problem. With ``skip_bad=True`` the offending item is left out and listed in ``excluded``
instead; nothing is dropped silently either way. The one exception is operating-system clutter
(:func:`is_clutter`: ``.DS_Store``, ``._*`` AppleDouble files, ``Thumbs.db``, ``desktop.ini``),
which holds no image and is ignored.

Label tables are read by :func:`read_text` / :func:`read_table`, which accept what spreadsheet
programs and other systems write: a UTF-8 or UTF-16 byte-order mark, Windows-1252 text,
CRLF or CR line ends, ``;`` or tab separators and empty trailing columns.
"""

from __future__ import annotations

import codecs
import io
import re
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


_ARCHIVES: dict[str, str] = {  # name ending -> how to unpack FILE into DIR
    ".tar.gz": "tar -xzf FILE -C DIR", ".tgz": "tar -xzf FILE -C DIR", ".tar.bz2": "tar -xjf FILE -C DIR",
    ".tar.xz": "tar -xJf FILE -C DIR", ".tar": "tar -xf FILE -C DIR", ".zip": "unzip FILE -d DIR",
    ".7z": "7z x FILE -oDIR", ".rar": "unrar x FILE DIR/", ".gz": "gunzip -k FILE",
}
_ARCHIVE_MAGIC: dict[bytes, str] = {b"PK\x03\x04": ".zip", b"\x1f\x8b": ".tar.gz", b"7z\xbc\xaf": ".7z",
                                    b"Rar!": ".rar", b"BZh": ".tar.bz2", b"\xfd7zXZ": ".tar.xz"}


def _not_a_folder(path: Path, dataset: str, expected: str) -> str:
    """Why ``path`` cannot be the dataset's folder (missing, or a file: an archive?) and what to do."""
    if not path.exists():
        return f"dataset {dataset!r}: folder {path} does not exist; expected {expected} (see data/README.md)"
    if not path.is_file():
        return f"dataset {dataset!r}: {path} is not a folder; expected {expected} (see data/README.md)"
    name = path.name.lower()
    ending = next((e for e in _ARCHIVES if name.endswith(e)), None)
    if ending is None:
        with open(path, "rb") as handle:
            head = handle.read(8)
        ending = next((e for magic, e in _ARCHIVE_MAGIC.items() if head.startswith(magic)), None)
    if ending is None:
        return f"dataset {dataset!r}: {path} is a file, not a folder; expected {expected} (see data/README.md)"
    stem = path.name[: -len(ending)] if name.endswith(ending) else path.stem
    target = path.parent / (stem or "data")
    unpack = _ARCHIVES[ending].replace("FILE", f"'{path}'").replace("DIR", f"'{target}'")
    message = (f"dataset {dataset!r}: {path} is a file, not a folder: probably an archive ({ending}) that "
               f"is not unpacked yet. Unpack it (mkdir -p '{target}' && {unpack}) and give that folder")
    from helpers.downloads import SOURCES  # a dataset with a direct download can do it all

    source = SOURCES.get(dataset)
    if source is not None and source.url is not None:
        message += (f", or run `python -m helpers data download {dataset} --to '{target}'`, which "
                    f"downloads, checks and unpacks it (an archive already in '{target}/.download/"
                    f"{source.archive}' is used instead of a new download)")
    return message + f"; expected {expected} (see data/README.md)"


def require_folder(root: str | Path | None, dataset: str, expected: str) -> Path:
    """``root`` as an absolute existing folder, or FileNotFoundError saying what was expected
    (and, for a file given instead, that it is one: an archive to unpack first?)."""
    if root is None:
        raise FileNotFoundError(f"dataset {dataset!r} needs a folder (DATA_DIR / --data-dir): "
                                f"{expected}; see data/README.md for how to obtain it")
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(_not_a_folder(folder, dataset, expected))
    return folder


CLUTTER: frozenset[str] = frozenset({"thumbs.db", "ehthumbs.db", ".ds_store", "desktop.ini"})
UNFINISHED_DOWNLOADS: frozenset[str] = frozenset({".part", ".partial", ".crdownload", ".download",
                                                  ".opdownload", ".aria2", ".!qb", ".!ut"})


def is_clutter(path: Path) -> bool:
    """Files that operating systems leave behind and that hold no image: ``Thumbs.db``,
    ``.DS_Store``, ``desktop.ini``, macOS AppleDouble ``._*`` files (also under ``__MACOSX/``)."""
    return path.name.lower() in CLUTTER or path.name.startswith("._")


def unfinished_download(path: Path) -> str | None:
    """Why ``path`` looks like an unfinished download (``x.png.part``, ``x.crdownload``), or None."""
    suffix = path.suffix.lower()
    if suffix not in UNFINISHED_DOWNLOADS:
        return None
    return (f"an unfinished download ({suffix} file of a browser or download tool): let the download "
            "finish, or delete it and download the file again")


def read_text(path: Path) -> str:
    """A text file's content, whatever wrote it: UTF-8 or UTF-16 by their byte-order mark (also
    UTF-16 without one, recognised by its zero bytes), else UTF-8, else Windows-1252 (Latin-1
    for the few bytes that lacks). Line ends are kept; ``str.splitlines`` takes CRLF, LF and CR."""
    data = path.read_bytes()
    try:
        if data.startswith(codecs.BOM_UTF8):
            return data.decode("utf-8-sig")
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16")
        head = data[:200]
        if len(head) >= 4 and head.count(b"\x00") * 3 > len(head):  # UTF-16 without a BOM
            return data.decode("utf-16-le" if data[1] == 0 else "utf-16-be")
    except UnicodeDecodeError as error:
        raise BadInputError(f"{path}: not readable as text ({error})") from error
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV as spreadsheet programs save it (see :func:`read_text`), all cells stripped strings.

    The separator is the one of ``,``, ``;`` and tab that the header line holds most; columns
    without a name and without a value (Excel's trailing ``,,,``) are dropped; rows are kept as
    they are (row ``i`` is line ``i + 2``). BadInputError naming the file when it cannot be parsed.
    """
    text = read_text(path)
    header = next((line for line in text.splitlines() if line.strip()), "")
    separator = max((",", ";", "\t"), key=header.count)
    try:
        table = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise BadInputError(f"{path}: not a readable CSV file ({error})") from error
    table = table.fillna("").astype(str).apply(lambda column: column.str.strip())
    unnamed = [c for c in table.columns if re.fullmatch(r"Unnamed: \d+", str(c)) or not str(c).strip()]
    return table.drop(columns=[c for c in unnamed if not table[c].ne("").any()])


def bad_item(excluded: list[tuple[str, str]], item: str | Path, reason: str, *, skip_bad: bool) -> None:
    """Raise BadInputError for ``item``, or, with ``skip_bad``, add it to ``excluded``."""
    if not skip_bad:
        raise BadInputError(f"{item}: {reason} (pass skip_bad=True to leave such items out and list them)")
    excluded.append((str(item), reason))
