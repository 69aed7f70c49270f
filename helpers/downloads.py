"""Download, check and unpack the papers' public datasets, and verify a dataset folder.

Command line::

    python -m helpers data list
    python -m helpers data download NAME --to DIR [--sha256 HEX] [--url URL]
    python -m helpers data verify NAME --to DIR

``mias`` and ``breakhis`` have a direct public URL: :func:`download` fetches the archive to
``DIR/.download/<file>`` (resumable through a ``.part`` file and an HTTP Range request), checks
its SHA-256, unpacks it into ``DIR`` with :func:`safe_extract` (which refuses, before writing
anything, any member that would land outside ``DIR``) and records what it did in
``DIR/.download/<NAME>.json``. ``cbis-ddsm``, ``inbreast`` and ``mini-ddsm`` have no direct URL:
their :class:`Source` carries the manual steps instead. :func:`verify` checks the recorded
checksum and that the folder holds what the dataset's adapter expects.

No published checksum exists for these archives, so ``Source.sha256`` is None until someone pins
one: the first download then computes it, says so loudly, records it, and ``verify`` checks the
archive against the recorded value from then on.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

from tqdm import tqdm  # not tqdm.auto: in a Jupyter kernel without ipywidgets it warns on import

from helpers.paths import write_text_atomic

DOWNLOAD_FOLDER = ".download"  # inside the dataset folder: archives, .part files, records


class DownloadError(ValueError):
    """A download, checksum or extraction that failed; the message says what and how to go on."""


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: ``ok`` when the folder is complete, and a short readable report."""

    ok: bool
    lines: list[str]

    def __str__(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and how to check a folder that holds it."""

    name: str
    url: str | None  # direct public download, or None (manual steps only)
    archive: str | None  # file name of the archive under DIR/.download/
    sha256: str | None  # published/pinned SHA-256 of the archive, or None (computed and recorded)
    licence: str
    manual_steps: str  # how to obtain it by hand and the folder layout to produce
    check_layout: Callable[[Path], VerifyReport]
    page: str = ""  # the dataset's home page (or the mirror to use)


# ----------------------------------------------------------------------------- downloading

def fetch(url: str, target: str | Path, *, sha256: str | None = None, progress: bool = True,
          timeout: float = 30, chunk_size: int = 1 << 20) -> str:
    """Download ``url`` to ``target`` through ``target.part``; return the SHA-256 hex digest.

    An existing ``.part`` is continued with an HTTP Range request; a server that answers 200
    instead of 206 (Range ignored) is downloaded again from the start. An interrupted transfer
    keeps the ``.part`` for the next call. With ``sha256``, a mismatch raises DownloadError and
    keeps the file as ``target.bad``; ``target`` only ever appears complete and checked.
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    expected = _checked_hex(sha256) if sha256 else None
    done = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "helpers-downloads/1"}
    if done:
        headers["Range"] = f"bytes={done}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and done:  # nothing left to send: the .part may already be whole
            error.close()
            if _content_range_total(error.headers.get("Content-Range")) == done:
                return _finish(part, target, sha256_file(part), expected, url)
            part.unlink()
            return fetch(url, target, sha256=sha256, progress=progress, timeout=timeout, chunk_size=chunk_size)
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{url}: cannot download ({reason}); check the address and your connection, "
                            f"then rerun to resume") from error
    with response:
        hasher = hashlib.sha256()
        if done and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != done:
                response.close()
                part.unlink()
                return fetch(url, target, sha256=sha256, progress=progress, timeout=timeout, chunk_size=chunk_size)
            _hash_into(hasher, part)
            mode = "ab"
            total = _content_range_total(response.headers.get("Content-Range"))
        else:
            if done:
                print(f"{url}: the server does not resume downloads; starting again from the beginning",
                      file=sys.stderr)
            done, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        received = done
        try:
            with open(part, mode) as out, tqdm(total=total, initial=done, unit="B", unit_scale=True,
                                               unit_divisor=1024, desc=target.name, disable=not progress) as bar:
                while chunk := response.read(chunk_size):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise DownloadError(f"{url}: download interrupted after {received} bytes ({error}); "
                                f"the partial file {part} is kept: rerun to resume") from error
    if total is not None and received != total:
        raise DownloadError(f"{url}: incomplete download, {received} of {total} bytes; "
                            f"the partial file {part} is kept: rerun to resume")
    return _finish(part, target, hasher.hexdigest(), expected, url)


def _finish(part: Path, target: Path, digest: str, expected: str | None, url: str) -> str:
    """Move a complete ``.part`` onto ``target``, or to ``.bad`` when its checksum is wrong."""
    if expected and digest != expected:
        bad = target.with_name(target.name + ".bad")
        os.replace(part, bad)
        raise DownloadError(f"{url}: SHA-256 mismatch: expected {expected}, got {digest}; "
                            f"the downloaded file is kept as {bad}")
    os.replace(part, target)
    return digest


def download(name: str, to: str | Path, *, url: str | None = None, sha256: str | None = None,
             progress: bool = True, chunk_size: int = 1 << 20, timeout: float = 30) -> Path:
    """Download dataset ``name`` into folder ``to``, check and unpack it; return the folder.

    ``url`` replaces the registry's address (a mirror, a test server); ``sha256`` pins the
    archive's checksum. An archive already in ``to/.download`` that matches is reused, and an
    extraction already recorded and still present is not repeated.
    """
    source = get_source(name)
    url = url or source.url
    if url is None:
        raise DownloadError(f"dataset {name!r} has no direct download; obtain it by hand:\n{source.manual_steps}")
    folder = Path(to).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / DOWNLOAD_FOLDER / (source.archive or PurePosixPath(url.split("?")[0]).name)
    record_path = folder / DOWNLOAD_FOLDER / f"{name}.json"
    record = _read_record(record_path)
    expected = _checked_hex(sha256 or source.sha256) if (sha256 or source.sha256) else None

    digest = None
    if archive.exists():
        known = expected or (record or {}).get("sha256")
        digest = sha256_file(archive)
        if known and digest != known:
            print(f"{archive} does not match SHA-256 {known}; downloading it again", file=sys.stderr)
            os.replace(archive, archive.with_name(archive.name + ".bad"))
            digest = None
        else:
            print(f"using the archive already downloaded: {archive}")
    if digest is None:
        print(f"downloading {url} -> {archive}")
        digest = fetch(url, archive, sha256=expected, progress=progress, timeout=timeout, chunk_size=chunk_size)
    if expected is None:
        print(f"\n*** WARNING: no published SHA-256 is pinned for {name!r}. ***\n"
              f"*** Computed {digest}; recorded in {record_path}. ***\n"
              f"*** `verify` checks the archive against it from now on; pin it with --sha256. ***\n",
              file=sys.stderr)

    already = (record is not None and record.get("sha256") == digest and record.get("files")
               and all((folder / f).exists() or (folder / f).is_symlink() for f in record["files"]))
    if already:
        print(f"already extracted into {folder} ({len(record['files'])} files)")
        files = list(record["files"])
    else:
        files = sorted(p.relative_to(folder).as_posix() for p in safe_extract(archive, folder))
        print(f"extracted {len(files)} files into {folder}")
    write_text_atomic(record_path, json.dumps({
        "name": name, "url": url, "archive": archive.name, "sha256": digest,
        "sha256_pinned": expected is not None, "size": archive.stat().st_size,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": files,
    }, indent=1) + "\n")
    print(f"next: python -m helpers data verify {name} --to {folder}")
    return folder


# ----------------------------------------------------------------------------- safe extraction

def safe_extract(archive: str | Path, to: str | Path) -> list[Path]:
    """Unpack a .tar.gz/.tgz/.tar(.bz2/.xz) or .zip into ``to``; return the files written.

    Every member is checked first: an absolute path, a path that leaves ``to`` (``..``), a path
    through a symbolic link of the archive, a symbolic or hard link that resolves outside ``to``,
    a device or FIFO refuses the whole archive (DownloadError naming the member) before anything
    is written. So does a top-level name that already exists in ``to``. The archive is unpacked
    into a temporary folder inside ``to`` and moved into place only when complete.
    """
    archive, folder = Path(archive), Path(to).expanduser().resolve()
    members = _archive_members(archive)  # (name, kind, link target)
    links = {}
    for member, kind, target in members:
        if kind == "symlink":
            links[_member_parts(archive, member)] = target
    tops = set()
    for member, kind, target in members:
        parts = _member_parts(archive, member)
        for depth in range(1, len(parts)):
            if parts[:depth] in links:
                _refuse(archive, member, f"its path goes through the symbolic link {'/'.join(parts[:depth])}")
        if kind == "symlink":
            if _is_absolute(target) or _resolve(list(parts[:-1]) + _split(target), links) is None:
                _refuse(archive, member, f"symbolic link to {target!r} points outside the target folder")
        elif kind == "hardlink":
            if _is_absolute(target) or _resolve(_split(target), links) is None:
                _refuse(archive, member, f"hard link to {target!r} points outside the target folder")
        elif kind not in ("file", "dir"):
            _refuse(archive, member, f"unsupported member type ({kind})")
        if parts:
            tops.add(parts[0])
    clashes = sorted(t for t in tops if (folder / t).exists() or (folder / t).is_symlink())
    if clashes:
        raise DownloadError(f"{archive}: refusing to overwrite {folder / clashes[0]}"
                            + (f" and {len(clashes) - 1} other(s)" if len(clashes) > 1 else "")
                            + "; move it away or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        if _is_zip(archive):
            _extract_zip(archive, staging)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
        written = sorted(p for p in staging.rglob("*") if p.is_symlink() or not p.is_dir())
        for top in sorted(os.listdir(staging)):
            os.replace(staging / top, folder / top)
        return [folder / p.relative_to(staging) for p in written]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _archive_members(archive: Path) -> list[tuple[str, str, str]]:
    """(name, kind, link target) of every member; kind is file, dir, symlink, hardlink or other."""
    if not archive.is_file():
        raise DownloadError(f"{archive}: archive not found")
    try:
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as zf:
                out = []
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        out.append((info.filename, "symlink", zf.read(info).decode("utf-8")))
                    else:
                        out.append((info.filename, "dir" if info.is_dir() else "file", ""))
                return out
        if not any(archive.name.endswith(s) for s in (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            raise DownloadError(f"{archive}: unknown archive type (expected .tar.gz, .tgz, .tar or .zip)")
        with tarfile.open(archive) as tar:
            return [(m.name, "file" if m.isfile() else "dir" if m.isdir() else "symlink" if m.issym()
                     else "hardlink" if m.islnk() else "other", m.linkname) for m in tar.getmembers()]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise DownloadError(f"{archive}: cannot read the archive ({error}); delete it and download again") from error


def _extract_zip(archive: Path, staging: Path) -> None:
    """Unpack a checked zip into ``staging``, recreating its symbolic links as links."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if stat.S_ISLNK(info.external_attr >> 16):
                link = staging.joinpath(*_split(info.filename))
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(zf.read(info).decode("utf-8"), link)
            else:
                zf.extract(info, staging)


def _is_zip(archive: Path) -> bool:
    return archive.name.lower().endswith(".zip")


def _refuse(archive: Path, member: str, why: str) -> None:
    raise DownloadError(f"{archive}: unsafe member {member!r}: {why}; nothing was extracted")


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name))


def _split(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _member_parts(archive: Path, member: str) -> tuple[str, ...]:
    """The member's path inside the archive, normalised; refuses absolute or escaping names."""
    if _is_absolute(member):
        _refuse(archive, member, "absolute path")
    parts = _resolve(_split(member), {})
    if parts is None:
        _refuse(archive, member, "its path leaves the target folder ('..')")
    return tuple(parts)


def _resolve(parts: list[str], links: dict[tuple[str, ...], str], depth: int = 0) -> list[str] | None:
    """Resolve a path relative to the archive root through the archive's own symbolic links.

    Returns the resolved components, or None when the path leaves the root (or loops).
    """
    out: list[str] = []
    for part in parts:
        if part == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(part)
        target = links.get(tuple(out))
        if target is not None:
            if depth > 40 or _is_absolute(target):
                return None
            resolved = _resolve(out[:-1] + _split(target), links, depth + 1)
            if resolved is None:
                return None
            out = resolved
    return out


# ----------------------------------------------------------------------------- verifying

def verify(name: str, to: str | Path) -> VerifyReport:
    """Check the recorded archive checksum (if the archive is still there) and the folder's layout."""
    source = get_source(name)
    folder = Path(to).expanduser().resolve()
    lines = [f"{name}: {folder}"]
    if not folder.is_dir():
        return VerifyReport(False, lines + ["  folder does not exist"])
    ok = True
    record = _read_record(folder / DOWNLOAD_FOLDER / f"{name}.json")
    if record is None:
        lines.append("  no download record (.download/%s.json): checking the files only" % name)
    else:
        archive = folder / DOWNLOAD_FOLDER / str(record.get("archive", ""))
        recorded = str(record.get("sha256", ""))
        how = "pinned" if record.get("sha256_pinned") else "computed at download, not a published value"
        if source.sha256 and recorded != source.sha256:
            ok = False
            lines.append(f"  recorded SHA-256 {recorded} differs from the pinned {source.sha256}")
        if archive.is_file():
            got = sha256_file(archive)
            if got == recorded:
                lines.append(f"  archive {archive.name}: SHA-256 matches the recorded value ({how})")
            else:
                ok = False
                lines.append(f"  archive {archive.name}: SHA-256 mismatch: recorded {recorded}, got {got}")
        else:
            lines.append(f"  archive {archive.name} is no longer there; checksum not checked")
    layout = source.check_layout(folder)
    ok = ok and layout.ok
    lines += [f"  {line}" for line in layout.lines]
    lines.append("  complete" if ok else "  INCOMPLETE")
    return VerifyReport(ok, lines)


MIAS_IMAGES = 322
_MIAS_ROW = re.compile(r"^\s*(mdb\d{3})\s+[FGD]\s+(CALC|CIRC|SPIC|MISC|ARCH|ASYM|NORM)\b")


def _files(root: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` below ``root``, outside the .download and .extract-* folders."""
    return sorted(p for p in root.rglob(pattern)
                  if p.is_file() and not any(part == DOWNLOAD_FOLDER or part.startswith(".extract-")
                                             for part in p.relative_to(root).parts))


def _check_mias(root: Path) -> VerifyReport:
    """mini-MIAS: the label table (Info.txt) and one mdbNNN.pgm per image it lists (322)."""
    lines, ok = [], True
    tables: dict[Path, set[str]] = {}
    for txt in _files(root, "*.txt"):
        names = {m.group(1) for line in txt.read_text(errors="replace").splitlines() if (m := _MIAS_ROW.match(line))}
        if names:
            tables[txt] = names
    images = {p.stem: p for p in _files(root, "mdb*.pgm")}
    if not tables:
        ok = False
        lines.append("label table not found: no .txt file with rows like 'mdb001 G CIRC B 535 425 197' (Info.txt)")
        listed = {f"mdb{i:03d}" for i in range(1, MIAS_IMAGES + 1)}
    else:
        listed = set().union(*tables.values())
        for txt, names in tables.items():
            lines.append(f"label table: {txt.relative_to(root)} ({len(names)} images listed)")
        if len(listed) != MIAS_IMAGES:
            ok = False
            lines.append(f"the label table lists {len(listed)} images; the full set has {MIAS_IMAGES}")
    missing, extra = sorted(listed - images.keys()), sorted(images.keys() - listed)
    lines.append(f"images: {len(listed & images.keys())} of {len(listed)} .pgm present")
    if missing:
        ok = False
        lines.append(f"partial: {len(missing)} missing: {_ranges(missing)}")
    if extra:
        ok = False
        lines.append(f"not in the label table: {_ranges(extra)}")
    return VerifyReport(ok, lines)


def _ranges(names: list[str]) -> str:
    """'mdb001, mdb003-mdb005' for mdbNNN names (consecutive numbers joined)."""
    numbers = sorted(int(n[3:]) for n in names)
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"mdb{a:03d}" if a == b else f"mdb{a:03d}-mdb{b:03d}" for a, b in spans)


BREAKHIS_MAGNIFICATIONS = ("40X", "100X", "200X", "400X")
BREAKHIS_COUNTS = {  # images per class and magnification in BreaKHis v1 (7909 in all)
    "benign": {"40X": 625, "100X": 644, "200X": 623, "400X": 588},
    "malignant": {"40X": 1370, "100X": 1437, "200X": 1390, "400X": 1232},
}
_BREAKHIS_NAME = re.compile(r"^SOB_([BM])_[A-Z]+-\d+-[0-9A-Za-z]+-(\d+)-\d+\.png$")


def _breakhis_breast(root: Path) -> Path | None:
    for candidate in (root, root / "breast", root / "histology_slides" / "breast",
                      root / "BreaKHis_v1" / "histology_slides" / "breast"):
        if (candidate / "benign").is_dir() and (candidate / "malignant").is_dir():
            return candidate
    return None


def _check_breakhis(root: Path) -> VerifyReport:
    """BreaKHis: <class>/SOB/<subtype>/<slide>/<magnification>/SOB_*.png, 7909 PNGs in all."""
    breast = _breakhis_breast(root)
    if breast is None:
        return VerifyReport(False, ["BreaKHis_v1/histology_slides/breast/{benign,malignant} not found"])
    counts = {c: dict.fromkeys(BREAKHIS_MAGNIFICATIONS, 0) for c in BREAKHIS_COUNTS}
    odd: list[str] = []
    for label in BREAKHIS_COUNTS:
        for png in _files(breast / label, "*.png"):
            parts = png.relative_to(breast / label).parts
            match = _BREAKHIS_NAME.match(png.name)
            if (len(parts) == 5 and parts[0] == "SOB" and parts[3] in BREAKHIS_MAGNIFICATIONS and match
                    and match.group(1) == label[0].upper() and f"{match.group(2)}X" == parts[3]):
                counts[label][parts[3]] += 1
            else:
                odd.append(png.relative_to(breast).as_posix())
    lines = [f"breast folder: {breast.relative_to(root).as_posix() or '.'}",
             f"{'':10}" + "".join(f"{m:>7}" for m in BREAKHIS_MAGNIFICATIONS) + f"{'total':>7}"]
    for label, row in counts.items():
        lines.append(f"{label:10}" + "".join(f"{row[m]:>7}" for m in BREAKHIS_MAGNIFICATIONS) + f"{sum(row.values()):>7}")
    total = sum(sum(row.values()) for row in counts.values())
    expected_total = sum(sum(row.values()) for row in BREAKHIS_COUNTS.values())
    lines.append(f"images in the expected layout: {total} of {expected_total}")
    short = [f"{label} {m}: {counts[label][m]} of {n}" for label, row in BREAKHIS_COUNTS.items()
             for m, n in row.items() if counts[label][m] != n]
    if short:
        lines.append("differs from the full set: " + "; ".join(short))
    if odd:
        lines.append(f"{len(odd)} PNG(s) outside the expected layout, e.g. " + ", ".join(odd[:3]))
    return VerifyReport(not short and not odd, lines)


CBIS_CSVS = ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv",
             "calc_case_description_train_set.csv", "calc_case_description_test_set.csv")
_CBIS_CASE = re.compile(r"^(Mass|Calc)-(Training|Test)_P_\d+_(LEFT|RIGHT)_(CC|MLO)(_\d+)?$")


def _check_cbis(root: Path) -> VerifyReport:
    """CBIS-DDSM: the four case-description CSVs and the DICOM case folders (or the Kaggle jpeg/)."""
    lines, ok = [], True
    found = {p.name: p for p in _files(root, "*.csv")}
    missing = [c for c in CBIS_CSVS if c not in found]
    lines.append(f"case-description CSVs: {len(CBIS_CSVS) - len(missing)} of {len(CBIS_CSVS)}"
                 + (f"; missing {', '.join(missing)}" if missing else ""))
    ok = not missing
    dicoms = _files(root, "*.dcm")
    cases = {part for p in dicoms for part in p.relative_to(root).parts[:-1] if _CBIS_CASE.match(part)}
    jpegs = _files(root, "*.jpg")
    if dicoms:
        lines.append(f"DICOM: {len(dicoms)} files in {len(cases)} case folders")
        referenced = set()
        for name in CBIS_CSVS:
            if name in found:
                text = found[name].read_text(errors="replace")
                referenced |= set(re.findall(r"((?:Mass|Calc)-(?:Training|Test)_P_\d+_(?:LEFT|RIGHT)_(?:CC|MLO)(?:_\d+)?)/", text))
        absent = sorted(referenced - cases)
        if absent:
            ok = False
            lines.append(f"{len(absent)} case folder(s) named in the CSVs have no DICOM, e.g. {', '.join(absent[:3])}")
    elif jpegs and "dicom_info.csv" in found:
        lines.append(f"Kaggle JPEG re-export: {len(jpegs)} .jpg files and csv/dicom_info.csv")
    else:
        ok = False
        lines.append("no DICOM case folders (e.g. CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/.../1-1.dcm) found")
    return VerifyReport(ok, lines)


INBREAST_IMAGES = 410


def _check_inbreast(root: Path) -> VerifyReport:
    """INbreast: AllDICOMs/*.dcm and the label table INbreast.csv (or INbreast.xls)."""
    lines, ok = [], True
    folders = [p for p in [root / "AllDICOMs", *root.glob("*/AllDICOMs")] if p.is_dir()]
    dicoms = _files(folders[0], "*.dcm") if folders else []
    if not dicoms:
        ok = False
        lines.append("AllDICOMs/ with .dcm files not found")
    else:
        lines.append(f"AllDICOMs: {len(dicoms)} .dcm (the full release has {INBREAST_IMAGES})")
    tables = [p for p in _files(root, "INbreast.*") if p.suffix.lower() in (".csv", ".xls", ".xlsx")]
    if tables:
        lines.append(f"label table: {tables[0].relative_to(root).as_posix()}")
    else:
        ok = False
        lines.append("label table INbreast.csv (or INbreast.xls) not found")
    return VerifyReport(ok, lines)


def _check_mini_ddsm(root: Path) -> VerifyReport:
    """Mini-DDSM: Benign/, Cancer/ and Normal/ folders of case folders with images."""
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    base = next((c for c in candidates if all((c / k).is_dir() for k in ("Benign", "Cancer", "Normal"))), None)
    if base is None:
        return VerifyReport(False, ["Benign/, Cancer/ and Normal/ folders not found "
                                    "(e.g. MINI-DDSM-Complete-PNG-16/{Benign,Cancer,Normal})"])
    lines, ok = [f"class folders in: {base.relative_to(root).as_posix() or '.'}"], True
    for label in ("Benign", "Cancer", "Normal"):
        images = [p for ext in ("*.png", "*.jpg") for p in _files(base / label, ext) if "mask" not in p.name.lower()]
        lines.append(f"{label}: {len(images)} images")
        ok = ok and bool(images)
    return VerifyReport(ok, lines)


# ----------------------------------------------------------------------------- the registry

_VERIFY = "then run: python -m helpers data verify {name} --to DIR"

SOURCES: dict[str, Source] = {
    "mias": Source(
        name="mias",
        # the brief named .../pub/mias/; the archive is served (and widely cited) under /pix/mias/
        url="http://peipa.essex.ac.uk/pix/mias/all-mias.tar.gz",
        archive="all-mias.tar.gz",
        sha256=None,
        licence="mini-MIAS (Suckling et al. 1994): research use only, may not be sold; cite the database "
                "(see Licence.txt in the archive).",
        manual_steps="Download http://peipa.essex.ac.uk/pix/mias/all-mias.tar.gz (about 100 MB) and unpack it "
                     "into DIR so that DIR/mdb001.pgm ... DIR/mdb322.pgm and DIR/Info.txt exist; "
                     + _VERIFY.format(name="mias"),
        check_layout=_check_mias,
        page="http://peipa.essex.ac.uk/info/mias.html",
    ),
    "breakhis": Source(
        name="breakhis",
        url="http://www.inf.ufpr.br/vri/databases/BreaKHis_v1.tar.gz",
        archive="BreaKHis_v1.tar.gz",
        sha256=None,
        licence="BreaKHis (Spanhol et al. 2016, P&D Laboratory / UFPR): free for research and academic use; "
                "cite the paper.",
        manual_steps="Download http://www.inf.ufpr.br/vri/databases/BreaKHis_v1.tar.gz (about 4 GB) and unpack it "
                     "into DIR so that DIR/BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/... exists; "
                     + _VERIFY.format(name="breakhis"),
        check_layout=_check_breakhis,
        page="https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/",
    ),
    "cbis-ddsm": Source(
        name="cbis-ddsm",
        url=None,
        archive=None,
        sha256=None,
        licence="CBIS-DDSM (Lee et al. 2017) on The Cancer Imaging Archive: CC BY 3.0; cite the paper and TCIA.",
        manual_steps="""\
CBIS-DDSM is distributed by The Cancer Imaging Archive (TCIA); the images need the NBIA Data Retriever.
 1. Open https://www.cancerimagingarchive.net/collection/cbis-ddsm/
 2. Download the images' .tcia manifest (DICOM, about 163 GB) and the four case-description CSVs:
      mass_case_description_train_set.csv   mass_case_description_test_set.csv
      calc_case_description_train_set.csv   calc_case_description_test_set.csv
 3. Install the NBIA Data Retriever (linked from that page), open the manifest with it, and choose DIR
    as the destination; keep its folder layout (one folder per case).
 4. Put the four CSVs in DIR. The result:
      DIR/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<study>/<series>/1-1.dcm       (full mammogram)
      DIR/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/<study>/<series>/1-1.dcm     (ROI crop and mask)
      DIR/mass_case_description_train_set.csv  (and the other three)
    Alternative: the Kaggle JPEG re-export
    https://www.kaggle.com/datasets/awsaf49/cbis-ddsm-breast-cancer-image-dataset unpacked into DIR
    (DIR/csv/*.csv with dicom_info.csv, DIR/jpeg/<series uid>/*.jpg).
 5. """ + _VERIFY.format(name="cbis-ddsm"),
        check_layout=_check_cbis,
        page="https://www.cancerimagingarchive.net/collection/cbis-ddsm/",
    ),
    "inbreast": Source(
        name="inbreast",
        url=None,
        archive=None,
        sha256=None,
        licence="INbreast (Moreira et al. 2012, Acad Radiol 19:236-248): research use on request from the "
                "authors (INESC TEC / University of Porto); Kaggle mirrors carry the same terms.",
        manual_steps="""\
INbreast has no public download: the authors grant access on request for research use.
 1. Request it from the authors (Moreira et al., "INbreast: toward a full-field digital mammographic
    database", Academic Radiology 2012), or use the Kaggle mirror
    https://www.kaggle.com/datasets/ramanathansp20/inbreast-dataset (same terms of use).
 2. Unpack it so that:
      DIR/AllDICOMs/20586908_6c613a14b80a8591_MG_R_CC_ANON.dcm   (410 DICOMs)
      DIR/INbreast.csv   (semicolon-separated; INbreast.xls also accepted, reading it needs xlrd)
 3. """ + _VERIFY.format(name="inbreast"),
        check_layout=_check_inbreast,
        page="https://www.kaggle.com/datasets/ramanathansp20/inbreast-dataset",
    ),
    "mini-ddsm": Source(
        name="mini-ddsm",
        url=None,
        archive=None,
        sha256=None,
        licence="Mini-DDSM (Lekamlage et al. 2020, derived from DDSM): research use; cite the paper.",
        manual_steps="""\
Mini-DDSM is distributed through Kaggle (a Kaggle account is needed).
 1. Open https://www.kaggle.com/datasets/cheddad/miniddsm2 (project page https://ardisdataset.github.io/MiniDDSM/)
 2. Download the archive and unpack it into DIR so that:
      DIR/MINI-DDSM-Complete-PNG-16/Benign/<case>/*.png
      DIR/MINI-DDSM-Complete-PNG-16/Cancer/<case>/*.png
      DIR/MINI-DDSM-Complete-PNG-16/Normal/<case>/*.png
    (the JPEG variant MINI-DDSM-Complete-JPEG-8/ works too), with the metadata spreadsheet
    (Data.csv / DataWMask.xlsx) beside the class folders.
 3. """ + _VERIFY.format(name="mini-ddsm"),
        check_layout=_check_mini_ddsm,
        page="https://www.kaggle.com/datasets/cheddad/miniddsm2",
    ),
}


def get_source(name: str) -> Source:
    """The registry entry for ``name``; KeyError listing the known names otherwise."""
    if name not in SOURCES:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def manual_instructions(name: str, to: str | Path | None = None) -> str:
    """The steps to obtain ``name`` by hand, with the folder ``to`` in place of DIR when given."""
    source = get_source(name)
    text = f"{source.name}: {'no direct download' if source.url is None else source.url}\n" \
           f"licence: {source.licence}\n\n{source.manual_steps}\n"
    return re.sub(r"\bDIR\b", lambda _: str(to), text) if to is not None else text


def list_sources() -> list[str]:
    """One line per dataset: name, direct download or manual, and the URL (or the page to go to)."""
    return [f"{s.name:10} {'direct' if s.url else 'manual':7} {s.url or s.page}"
            + ("" if s.url else f"  (steps: python -m helpers data download {s.name} --to DIR)")
            for s in SOURCES.values()]


# ----------------------------------------------------------------------------- small helpers

def _checked_hex(value: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"not a SHA-256 hex digest (64 hex characters): {value!r}")
    return value


def _hash_into(hasher: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    hasher = hashlib.sha256()
    _hash_into(hasher, path)
    return hasher.hexdigest()


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _content_range_total(value: str | None) -> int | None:
    match = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", value or "")
    return int(match.group(1)) if match else None


def _read_record(path: Path) -> dict | None:
    """The download record written by :func:`download`, or None if there is none."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: unreadable download record ({error}); delete it and download again") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path}: a download record must be a JSON object")
    return record
