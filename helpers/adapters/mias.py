"""mini-MIAS: 322 mediolateral-oblique films (``mdbNNN.pgm``) and their label table (``Info.txt``).

The label table has one row per abnormality (``mdb005 F CIRC B 477 133 30``: reference number,
background tissue, class of abnormality, severity, x, y, radius) or one ``NORM`` row for a normal
film. Its x, y origin is the BOTTOM-LEFT corner of the image; the manifest's roi uses the top-left
origin, so ``cy = height - y`` with the height read from the PGM header.

Laterality comes from note 1 of the table's own header: "each pair represents the left (even
filename numbers) and right mammograms (odd filename numbers) of a single patient". The films
agree: on every odd film of the real download the breast lies on the right half of the image
(chest wall right, as a right MLO is displayed) and on the even films on the left half.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from helpers.adapters import (
    AdapterResult,
    BadInputError,
    bad_item,
    is_clutter,
    read_text,
    require_folder,
    unfinished_download,
)

DATASET = "mias"
EXPECTED = "the mini-MIAS folder: mdb001.pgm ... mdb322.pgm and the label table Info.txt"

SEVERITY_LABELS: dict[str, str] = {"B": "benign", "M": "malignant"}
ABNORMALITIES: tuple[str, ...] = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM")
TISSUES: tuple[str, ...] = ("F", "G", "D")
VIEW = "MLO"
_REFNUM = re.compile(r"^mdb(\d{3})$")
_MENTION = re.compile(r"mdb\d{3}", re.IGNORECASE)
_NO_COORDINATES = re.compile(r"^(\*NOTE\s*\d+\*)?$", re.IGNORECASE)
_NO_COORDINATES_REASON = "no lesion coordinates; a ROI patch cannot be cut"


@dataclass(frozen=True)
class LabelRow:
    """One parsed row of the label table."""

    where: str  # "<folder>/Info.txt line 123"
    line: int
    refnum: str
    tissue: str
    abnormality: str
    severity: str  # "B", "M" or "" for NORM
    x: int | None
    y: int | None
    radius: int | None


def laterality_of(refnum: str) -> str:
    """"L" for even film numbers, "R" for odd ones (note 1 of the MIAS table)."""
    return "L" if int(refnum[3:]) % 2 == 0 else "R"


def patient_of(refnum: str) -> str:
    """Consecutive films (mdb001, mdb002) are one woman: "mias-P001"."""
    return f"mias-P{(int(refnum[3:]) + 1) // 2:03d}"


def read_pgm_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PGM header (P5 binary or P2 text); BadInputError if it is broken."""
    from helpers.preprocessing.readers import netpbm_header

    with open(path, "rb") as handle:
        head = handle.read(1024)
    tokens, position = netpbm_header(head)
    if len(tokens) < 4 or tokens[0] not in (b"P5", b"P2"):
        raise BadInputError(f"{path}: not a PGM file (header should be 'P5 <width> <height> <maxval>')")
    try:
        width, height, maxval = (int(token) for token in tokens[1:4])
    except ValueError:
        raise BadInputError(f"{path}: broken PGM header {b' '.join(tokens[:4])!r}") from None
    if width <= 0 or height <= 0 or not 0 < maxval < 65536:
        raise BadInputError(f"{path}: broken PGM header (width {width}, height {height}, maxval {maxval})")
    if tokens[0] == b"P5":
        pixels = width * height * (1 if maxval < 256 else 2)
        if path.stat().st_size < position + 1 + pixels:
            raise BadInputError(f"{path}: truncated PGM ({path.stat().st_size} bytes for a "
                                f"{width}x{height} image)")
    return width, height


def parse_row(tokens: list[str], table: Path | str, line: int) -> LabelRow:
    """One table row from its whitespace-separated fields; BadInputError naming file and line."""
    where = f"{table} line {line}"
    if len(tokens) < 3:
        raise BadInputError(f"{where}: malformed row {' '.join(tokens)!r}: expected "
                            "'mdbNNN <tissue> <class> [<severity> [x y radius]]'")
    refnum, tissue, abnormality = tokens[0], tokens[1], tokens[2]
    if not refnum.lower().startswith("mdb"):
        named = _MENTION.search(" ".join(tokens))
        raise BadInputError(f"{where}: malformed row {' '.join(tokens)!r}: it names "
                            f"{named.group() if named else 'an image'} but does not start with it (quotes or "
                            "numbering added by another program?); expected "
                            "'mdbNNN <tissue> <class> [<severity> [x y radius]]'")
    if not _REFNUM.match(refnum):
        raise BadInputError(f"{where}: malformed reference number {refnum!r} (expected mdbNNN)")
    if tissue not in TISSUES:
        raise BadInputError(f"{where}: unknown tissue code {tissue!r}; expected one of {list(TISSUES)}")
    if abnormality not in ABNORMALITIES:
        raise BadInputError(f"{where}: unknown abnormality class {abnormality!r}; "
                            f"expected one of {list(ABNORMALITIES)}")
    if abnormality == "NORM":
        if len(tokens) != 3:
            raise BadInputError(f"{where}: malformed row: a NORM row has no severity or coordinates, "
                                f"got {' '.join(tokens[3:])!r}")
        return LabelRow(where, line, refnum, tissue, abnormality, "", None, None, None)
    if len(tokens) < 4 or tokens[3] not in SEVERITY_LABELS:
        found = tokens[3] if len(tokens) > 3 else "nothing"
        raise BadInputError(f"{where}: unknown severity {found!r} for {refnum}; expected B or M")
    rest = tokens[4:]
    if _NO_COORDINATES.match(" ".join(rest)):
        return LabelRow(where, line, refnum, tissue, abnormality, tokens[3], None, None, None)
    if len(rest) != 3 or not all(token.isdigit() for token in rest):
        raise BadInputError(f"{where}: malformed coordinates {' '.join(rest)!r} for {refnum}; "
                            "expected 'x y radius' in pixels")
    x, y, radius = (int(token) for token in rest)
    return LabelRow(where, line, refnum, tissue, abnormality, tokens[3], x, y, radius)


def _table_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every line of ``path`` that names an image (mdbNNN).

    The text may have a UTF-8 or UTF-16 byte-order mark and CRLF, LF or CR line ends (see
    :func:`helpers.adapters.read_text`). A line that names an image without starting with
    its reference number is kept too, so that :func:`parse_row` reports it.
    """
    lines = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if fields and (fields[0].lower().startswith("mdb") or _MENTION.search(line)):
            lines.append((number, fields))
    return lines


def find_label_table(folder: Path) -> tuple[Path, list[tuple[int, list[str]]]]:
    """The one ``*.txt`` file in ``folder`` holding the table (identical copies are fine)."""
    tables = {path: _table_lines(path) for path in sorted(folder.iterdir())
              if path.is_file() and path.suffix.lower() == ".txt" and not is_clutter(path)}
    tables = {path: lines for path, lines in tables.items()
              if any(_REFNUM.match(fields[0]) for _, fields in lines)}
    if not tables:
        raise FileNotFoundError(f"mias: no label table in {folder}: expected a .txt file (Info.txt) "
                                "with lines like 'mdb001 G CIRC B 535 425 197'")
    paths = list(tables)
    contents = {path: [fields for _, fields in tables[path]] for path in paths}
    different = [path for path in paths[1:] if contents[path] != contents[paths[0]]]
    if different:
        raise BadInputError(f"mias: {folder} holds two different label tables, {paths[0].name} and "
                            f"{different[0].name}; keep only one")
    return paths[0], tables[paths[0]]


def load_mias(root: str | Path | None, *, skip_bad: bool = False) -> AdapterResult:
    """The mini-MIAS manifest: one row per ``mdbNNN.pgm`` in ``root``.

    Columns: label normal (NORM) / benign (B) / malignant (M); patient_id "mias-P001" for the
    pair mdb001/mdb002; view "MLO"; laterality L (even number) / R (odd), from note 1 of the
    table; roi "cx,cy,r" with top-left origin (cy = height - y); magnification "". Extra columns:
    ``abnormality`` (CALC, CIRC, SPIC, MISC, ARCH, ASYM, NORM), ``tissue`` (F, G, D), ``refnum``
    (mdb001) and ``lesions`` (number of abnormality rows of the image; "0" for a normal film).

    Listed in ``excluded`` (not errors): label rows whose image is missing (a partial download);
    the 2nd, 3rd... lesion of an image (the roi is its first lesion of the image's severity);
    images with benign and malignant rows ("kept as malignant: ..."); abnormal images without
    coordinates (kept, roi ""). Errors (``BadInputError``, or listed with ``skip_bad=True``): an
    image with no label row, an unknown tissue/class/severity code, a malformed row (also a line
    that names an image but does not start with it), rows of one image that contradict each
    other, coordinates outside the image, a broken PGM header, an unfinished download
    (``mdb001.pgm.part``). File names are matched without regard to case (``MDB001.PGM``);
    operating-system clutter (``.DS_Store``, ``._*``, ``Thumbs.db``) is ignored. The table may
    be saved with a byte-order mark (UTF-8 or UTF-16) and any line ends.
    """
    folder = require_folder(root, DATASET, EXPECTED)
    table, lines = find_label_table(folder)
    excluded: list[tuple[str, str]] = []
    rows_by_image: dict[str, list[LabelRow]] = {}
    unusable: set[str] = set()  # images with a bad label row (skip_bad): left out whole
    for number, fields in lines:
        where = f"{table} line {number}"
        try:
            row = parse_row(fields, table, number)
        except BadInputError as error:
            bad_item(excluded, where, str(error).removeprefix(f"{where}: "), skip_bad=skip_bad)
            named = _MENTION.search(" ".join(fields))
            unusable.add(named.group().lower() if named else fields[0])
            continue
        rows_by_image.setdefault(row.refnum, []).append(row)

    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or is_clutter(path):
            continue
        if unfinished := unfinished_download(path):
            bad_item(excluded, path, unfinished, skip_bad=skip_bad)
        elif path.suffix.lower() == ".pgm":
            refnum = path.stem.lower()  # MDB001.PGM (a copy from another system) is mdb001
            if refnum in images:
                bad_item(excluded, path, f"duplicated image: {images[refnum].name} has the same "
                                         "reference number", skip_bad=skip_bad)
                continue
            images[refnum] = path
    for refnum, rows in rows_by_image.items():
        if refnum not in images and refnum not in unusable:
            numbers = ", ".join(str(row.line) for row in rows)
            excluded.append((f"{table} line {numbers} ({refnum})",
                             f"image {refnum}.pgm is missing (partial download); its label row(s) left out"))

    records = []
    for refnum, path in images.items():
        if refnum in unusable:
            excluded.append((str(path), "left out: its label row is unusable (listed above)"))
            continue
        if refnum not in rows_by_image:
            bad_item(excluded, path, f"no label row for {refnum} in {table}", skip_bad=skip_bad)
            continue
        try:
            record = _image_record(path, rows_by_image[refnum], excluded)
        except BadInputError as error:
            bad_item(excluded, path, str(error).removeprefix(f"{path}: "), skip_bad=skip_bad)
            continue
        records.append(record)
    if not records:
        raise FileNotFoundError(f"mias: no usable mdbNNN.pgm image with a label row in {folder}; "
                                f"expected {EXPECTED}")
    manifest = pd.DataFrame(records).sort_values("refnum", kind="stable").reset_index(drop=True)
    return AdapterResult(manifest, excluded)


def _image_record(path: Path, rows: list[LabelRow], excluded: list[tuple[str, str]]) -> dict:
    """The manifest row of one image from its label rows; notes what was left out or changed."""
    refnum = rows[0].refnum
    if len({row.tissue for row in rows}) > 1:
        raise BadInputError(f"{path}: its label rows ({', '.join(r.where for r in rows)}) "
                            "give different tissue codes")
    normal = [row for row in rows if row.abnormality == "NORM"]
    if normal and len(rows) > 1:
        raise BadInputError(f"{path}: {normal[0].where} says NORM but {refnum} has other label rows "
                            f"({', '.join(r.where for r in rows if r is not normal[0])})")
    width, height = read_pgm_size(path)
    lesions = [row for row in rows if row.abnormality != "NORM"]
    severities = {row.severity for row in lesions}
    label = ("malignant" if "M" in severities else "benign") if lesions else "normal"
    main = next((row for row in lesions if SEVERITY_LABELS[row.severity] == label), rows[0])
    roi = ""
    if main.x is not None:
        if not (0 <= main.x <= width and 0 <= main.y <= height):
            raise BadInputError(f"{path}: {main.where}: lesion centre ({main.x}, {main.y}) lies "
                                f"outside the {width}x{height} image")
        roi = f"{main.x},{height - main.y},{main.radius}"
    elif lesions:
        excluded.append((main.where, f"{refnum}: {_NO_COORDINATES_REASON} (kept with roi '')"))
    if severities == {"B", "M"}:
        excluded.append((str(path), f"kept as malignant: {refnum} has benign and malignant rows "
                                    f"({', '.join(r.where for r in lesions)})"))
    for index, row in enumerate(lesions, start=1):
        if row is not main:
            excluded.append((row.where, f"lesion {index} of {len(lesions)} of {refnum} "
                                        f"({row.abnormality} {row.severity}) not used as its own ROI; "
                                        f"the image's roi is from {main.where}"))
    return {"image_path": str(path), "label": label, "patient_id": patient_of(refnum),
            "dataset": DATASET, "view": VIEW, "laterality": laterality_of(refnum), "roi": roi,
            "magnification": "", "abnormality": main.abnormality, "tissue": main.tissue,
            "refnum": refnum, "lesions": str(len(lesions))}
