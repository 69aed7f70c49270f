"""Dataset downloads against a local HTTP server (no internet): resume, checksums, safe extraction, verify."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import downloads
from helpers.__main__ import main
from helpers.downloads import DownloadError, fetch, safe_extract, verify

INFO_HEADER = "              MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY\n                  MiniMammographic Database\n\n"


# ----------------------------------------------------------------------------- fixtures

def make_mias_tree(root: Path, images: range | list[int] = range(1, 323), listed: range = range(1, 323)) -> Path:
    """A mini-MIAS-like folder: tiny mdbNNN.pgm images and an Info.txt listing ``listed``."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [f"mdb{n:03d} G CIRC B 5 6 3" if n % 7 == 0 else f"mdb{n:03d} F NORM " for n in listed]
    (root / "Info.txt").write_text(INFO_HEADER + "\n".join(rows) + "\n")
    for n in images:
        pixels = np.full((8, 8), n % 256, dtype=np.uint8)
        assert cv2.imwrite(str(root / f"mdb{n:03d}.pgm"), pixels)
    return root


def tar_gz_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mias_archive(tmp_path_factory) -> bytes:
    return tar_gz_of(make_mias_tree(tmp_path_factory.mktemp("mias-src") / "all"))


class Server:
    """A tiny HTTP server on 127.0.0.1 serving ``files``; optional Range support and cut-off."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many bytes of the next response, then hang up
        self.log: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                data = owner.files.get(self.path)
                entry = {"path": self.path, "range": self.headers.get("Range"), "status": 404, "sent": 0}
                owner.log.append(entry)
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and owner.honour_range:
                    start, status = int(match.group(1)), 206
                    if start >= len(data):
                        entry["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                body = data[start:]
                length = len(body)  # announced in full even when the connection is cut short
                if owner.cut_after is not None:
                    body, owner.cut_after = body[:owner.cut_after], None
                entry.update(status=status, sent=len(body))  # before the client can see the bytes
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.stop()


def all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


# ----------------------------------------------------------------------------- download + verify

def test_download_checks_extracts_records_and_verifies(server, mias_archive, tmp_path, capsys):
    server.files["/mias/all-mias.tar.gz"] = mias_archive
    target = tmp_path / "mias"
    code = main(["data", "download", "mias", "--to", str(target), "--no-progress",
                 "--url", server.url("/mias/all-mias.tar.gz")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "no published SHA-256 is pinned" in err
    digest = hashlib.sha256(mias_archive).hexdigest()
    assert digest in err
    assert (target / "mdb001.pgm").is_file() and (target / "mdb322.pgm").is_file() and (target / "Info.txt").is_file()
    assert (target / ".download" / "all-mias.tar.gz").read_bytes() == mias_archive
    leftovers = [p.name for p in target.rglob("*") if p.name.endswith((".part", ".bad")) or p.name.startswith(".extract-")]
    assert leftovers == []
    record = json.loads((target / ".download" / "mias.json").read_text())
    assert record["url"] == server.url("/mias/all-mias.tar.gz")
    assert record["sha256"] == digest and record["sha256_pinned"] is False
    assert record["size"] == len(mias_archive) and re.match(r"\d{4}-\d\d-\d\dT", record["date"])
    assert len(record["files"]) == 323 and "Info.txt" in record["files"] and "mdb007.pgm" in record["files"]

    assert main(["data", "verify", "mias", "--to", str(target)]) == 0
    out = capsys.readouterr().out
    assert "322 of 322 .pgm present" in out and "matches the recorded value" in out and "complete" in out

    with open(target / ".download" / "all-mias.tar.gz", "ab") as f:  # the archive changed on disk
        f.write(b"x")
    assert main(["data", "verify", "mias", "--to", str(target)]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().out


def test_pinned_checksum_and_a_second_run_reuses_archive_and_extraction(server, mias_archive, tmp_path, capsys):
    server.files["/all-mias.tar.gz"] = mias_archive
    digest = hashlib.sha256(mias_archive).hexdigest()
    folder = downloads.download("mias", tmp_path / "m", url=server.url("/all-mias.tar.gz"), sha256=digest.upper(),
                                progress=False)
    assert folder == (tmp_path / "m").resolve()
    assert "WARNING" not in capsys.readouterr().err
    assert json.loads((folder / ".download" / "mias.json").read_text())["sha256_pinned"] is True
    requests = len(server.log)
    downloads.download("mias", folder, url=server.url("/all-mias.tar.gz"), sha256=digest, progress=False)
    assert len(server.log) == requests, "a matching archive already on disk is not downloaded again"
    assert "already extracted" in capsys.readouterr().out
    assert verify("mias", folder).ok


def test_resume_sends_a_range_request_and_only_the_rest(server, tmp_path):
    payload = bytes(range(256)) * 40
    server.files["/a.tar.gz"] = payload
    target = tmp_path / "dl" / "a.tar.gz"
    target.parent.mkdir()
    (target.parent / "a.tar.gz.part").write_bytes(payload[:1000])
    digest = fetch(server.url("/a.tar.gz"), target, progress=False, chunk_size=512)
    assert server.log == [{"path": "/a.tar.gz", "range": "bytes=1000-", "status": 206, "sent": len(payload) - 1000}]
    assert target.read_bytes() == payload and digest == hashlib.sha256(payload).hexdigest()
    assert not (target.parent / "a.tar.gz.part").exists()


def test_an_interrupted_download_keeps_the_part_and_resumes(server, tmp_path):
    payload = b"0123456789" * 300
    server.files["/b.zip"] = payload
    server.cut_after = 700
    target = tmp_path / "b.zip"
    with pytest.raises(DownloadError, match="rerun to resume"):
        fetch(server.url("/b.zip"), target, progress=False, chunk_size=256)
    part = tmp_path / "b.zip.part"
    assert part.stat().st_size == 700 and not target.exists()
    fetch(server.url("/b.zip"), target, progress=False)
    assert server.log[-1]["range"] == "bytes=700-" and server.log[-1]["sent"] == len(payload) - 700
    assert target.read_bytes() == payload


def test_a_complete_part_is_finished_after_416(server, tmp_path):
    payload = b"abc" * 100
    server.files["/c.tar"] = payload
    (tmp_path / "c.tar.part").write_bytes(payload)
    assert fetch(server.url("/c.tar"), tmp_path / "c.tar", progress=False) == hashlib.sha256(payload).hexdigest()
    assert server.log[-1]["status"] == 416 and (tmp_path / "c.tar").read_bytes() == payload


def test_a_server_that_ignores_range_is_downloaded_again_cleanly(server, tmp_path, capsys):
    payload = b"real archive bytes " * 200
    server.files["/d.tar.gz"] = payload
    server.honour_range = False
    (tmp_path / "d.tar.gz.part").write_bytes(b"stale bytes from another file" * 10)
    digest = fetch(server.url("/d.tar.gz"), tmp_path / "d.tar.gz", progress=False)
    assert server.log[-1]["range"] is not None and server.log[-1]["status"] == 200
    assert (tmp_path / "d.tar.gz").read_bytes() == payload, "no stale bytes before the new download"
    assert digest == hashlib.sha256(payload).hexdigest()
    assert "starting again" in capsys.readouterr().err


def test_checksum_mismatch_is_an_error_and_nothing_is_extracted(server, mias_archive, tmp_path, capsys):
    server.files["/all-mias.tar.gz"] = mias_archive
    target = tmp_path / "mias"
    wrong = "0" * 64
    code = main(["data", "download", "mias", "--to", str(target), "--no-progress", "--sha256", wrong,
                 "--url", server.url("/all-mias.tar.gz")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and f"expected {wrong}" in err
    assert f"got {hashlib.sha256(mias_archive).hexdigest()}" in err
    assert all_files(target) == [".download/all-mias.tar.gz.bad"]


def test_an_unreachable_server_and_a_bad_checksum_argument_are_clear_errors(server, tmp_path, capsys):
    assert main(["data", "download", "mias", "--to", str(tmp_path), "--url", server.url("/missing.tar.gz")]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["data", "download", "mias", "--to", str(tmp_path), "--sha256", "xyz"]) == 2
    assert "not a SHA-256" in capsys.readouterr().err


# ----------------------------------------------------------------------------- safe extraction

def _tar(path: Path, members: list[tuple[str, str, str]]) -> Path:
    """Write a .tar.gz of (name, kind, content or link target); kind is file, symlink or hardlink."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value.encode())
                tar.addfile(info, io.BytesIO(value.encode()))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = value
                tar.addfile(info)
    return path


def _zip(path: Path, members: list[tuple[str, str, str]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, kind, value in members:
            info = zipfile.ZipInfo(name)
            if kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, value)
    return path


UNSAFE = {
    "dotdot": [("ok.txt", "file", "fine"), ("../evil", "file", "pwned")],
    "nested-dotdot": [("a/b/../../../evil", "file", "pwned")],
    "absolute": [("ok.txt", "file", "fine"), ("/tmp/evil-absolute-member", "file", "pwned")],
    "symlink-out": [("link", "symlink", "../../outside"), ("ok.txt", "file", "fine")],
    "symlink-absolute": [("link", "symlink", "/etc/passwd")],
    "symlink-chain": [("a", "symlink", "."), ("b", "symlink", "a/..")],
    "through-symlink": [("sub/x", "file", "inner"), ("link", "symlink", "sub"), ("link/evil", "file", "pwned")],
    "hardlink-out": [("ok.txt", "file", "fine"), ("hard", "hardlink", "../outside")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_tar_members_refuse_the_whole_archive(tmp_path, case):
    archive = _tar(tmp_path / "bad.tar.gz", UNSAFE[case])
    work = tmp_path / "work"
    target = work / "inside"
    target.mkdir(parents=True)
    offending = next(name for name, *_ in reversed(UNSAFE[case]) if "evil" in name or name in ("link", "hard", "b"))
    with pytest.raises(DownloadError, match=re.escape(repr(offending))):
        safe_extract(archive, target)
    assert all_files(work) == [] and list(target.iterdir()) == [], "nothing written inside"
    assert not Path("/tmp/evil-absolute-member").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "work"], "nothing written outside"


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-out", "symlink-chain"])
def test_unsafe_zip_members_refuse_the_whole_archive(tmp_path, case):
    archive = _zip(tmp_path / "bad.zip", UNSAFE[case])
    target = tmp_path / "inside"
    target.mkdir()
    with pytest.raises(DownloadError, match="unsafe member"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "inside"]


def test_an_unsafe_archive_from_the_server_is_refused_by_download(server, tmp_path, capsys):
    bad = _tar(tmp_path / "evil.tar.gz", UNSAFE["dotdot"]).read_bytes()
    server.files["/all-mias.tar.gz"] = bad
    target = tmp_path / "data" / "mias"
    assert main(["data", "download", "mias", "--to", str(target), "--no-progress",
                 "--url", server.url("/all-mias.tar.gz")]) == 2
    assert "unsafe member '../evil'" in capsys.readouterr().err
    assert all_files(tmp_path / "data") == ["mias/.download/all-mias.tar.gz"]


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_safe_archives_extract_the_same_tree_with_inner_links(tmp_path, kind):
    members = [("top/", "dir", ""), ("top/sub/a.txt", "file", "A"), ("top/b.txt", "file", "B"),
               ("top/latest", "symlink", "sub/a.txt")]
    archive = tmp_path / f"good.{kind}"
    if kind == "zip":
        _zip(archive, members)
    else:
        _tar(archive, [m for m in members if m[1] != "dir"])
    target = tmp_path / "out"
    written = safe_extract(archive, target)
    assert sorted(p.relative_to(target).as_posix() for p in written) == ["top/b.txt", "top/latest", "top/sub/a.txt"]
    assert (target / "top" / "sub" / "a.txt").read_text() == "A"
    assert (target / "top" / "latest").is_symlink() and (target / "top" / "latest").read_text() == "A"
    assert [p.name for p in target.iterdir()] == ["top"], "the staging folder is gone"


def test_extraction_refuses_to_overwrite_existing_files(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [("Info.txt", "file", "new"), ("mdb001.pgm", "file", "P5")])
    target = tmp_path / "t"
    target.mkdir()
    (target / "Info.txt").write_text("mine")
    with pytest.raises(DownloadError, match="refusing to overwrite"):
        safe_extract(archive, target)
    assert all_files(target) == ["Info.txt"] and (target / "Info.txt").read_text() == "mine"


def test_a_corrupt_archive_is_a_clear_error(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DownloadError, match="cannot read the archive"):
        safe_extract(tmp_path / "x.tar.gz", tmp_path / "t")


# ----------------------------------------------------------------------------- verify and manual datasets

def test_verify_of_a_partial_mias_folder_names_the_missing_images(tmp_path, capsys):
    folder = make_mias_tree(tmp_path / "mias", images=[1, 2, 4, 5])
    assert main(["data", "verify", "mias", "--to", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "4 of 322 .pgm present" in out
    assert "partial: 318 missing: mdb003, mdb006-mdb322" in out and "INCOMPLETE" in out


def test_verify_mias_without_label_table_or_with_unlisted_images(tmp_path):
    folder = make_mias_tree(tmp_path / "mias", images=range(1, 323))
    (folder / "Info.txt").unlink()
    report = verify("mias", folder)
    assert not report.ok and "label table not found" in str(report)
    folder = make_mias_tree(tmp_path / "mias2", images=range(1, 324))
    report = verify("mias", folder)
    assert not report.ok and "not in the label table: mdb323" in str(report)


def _breakhis_tree(root: Path) -> Path:
    breast = root / "BreaKHis_v1" / "histology_slides" / "breast"
    for label, per_mag in downloads.BREAKHIS_COUNTS.items():
        code, subtype = ("B", "A") if label == "benign" else ("M", "DC")
        for mag, count in per_mag.items():
            slide = breast / label / "SOB" / ("adenosis" if code == "B" else "ductal_carcinoma") / f"SOB_{code}_{subtype}_14-22549AB" / mag
            slide.mkdir(parents=True)
            for i in range(1, count + 1):
                (slide / f"SOB_{code}_{subtype}-14-22549AB-{mag[:-1]}-{i:03d}.png").touch()
    return root


def test_verify_breakhis_counts_per_class_and_magnification(tmp_path, capsys):
    root = _breakhis_tree(tmp_path / "bh")
    assert main(["data", "verify", "breakhis", "--to", str(root)]) == 0
    out = capsys.readouterr().out
    assert "7909 of 7909" in out and re.search(r"benign\s+625\s+644\s+623\s+588\s+2480", out)
    one = next((root / "BreaKHis_v1/histology_slides/breast/benign").rglob("*-40-001.png"))
    one.rename(one.parent.parent / "100X" / one.name)  # a 40X image in the 100X folder
    report = verify("breakhis", root)
    assert not report.ok
    assert "benign 40X: 624 of 625" in str(report) and "outside the expected layout" in str(report)
    assert not verify("breakhis", tmp_path / "empty").ok


def _cbis_tree(root: Path) -> Path:
    case = "Mass-Training_P_00001_LEFT_CC"
    for name in downloads.CBIS_CSVS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("patient_id,image file path\n"
                                 f"P_00001,{case}/1.3.6.1.4.1.9590/1.3.6.1.4.1.9590/000000.dcm\n")
    dicom = root / "CBIS-DDSM" / case / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515" / "1-1.dcm"
    dicom.parent.mkdir(parents=True)
    dicom.write_bytes(b"\0" * 132 + b"DICM")
    return root


def test_verify_of_the_manual_datasets_checks_their_layout_markers(tmp_path):
    cbis = _cbis_tree(tmp_path / "cbis")
    assert verify("cbis-ddsm", cbis).ok
    (cbis / "calc_case_description_test_set.csv").unlink()
    report = verify("cbis-ddsm", cbis)
    assert not report.ok and "missing calc_case_description_test_set.csv" in str(report)
    cbis = _cbis_tree(tmp_path / "cbis2")
    (cbis / "mass_case_description_test_set.csv").write_text(
        "patient_id,image file path\nP_00002,Mass-Test_P_00002_RIGHT_MLO/1.2/1.2/000000.dcm\n")
    report = verify("cbis-ddsm", cbis)
    assert not report.ok and "Mass-Test_P_00002_RIGHT_MLO" in str(report)

    inbreast = tmp_path / "inbreast"
    (inbreast / "AllDICOMs").mkdir(parents=True)
    (inbreast / "AllDICOMs" / "20586908_6c613a14b80a8591_MG_R_CC_ANON.dcm").write_bytes(b"x")
    assert not verify("inbreast", inbreast).ok
    (inbreast / "INbreast.csv").write_text("Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\n")
    report = verify("inbreast", inbreast)
    assert report.ok and "AllDICOMs: 1 .dcm" in str(report)

    mini = tmp_path / "mini" / "MINI-DDSM-Complete-PNG-16"
    for label in ("Benign", "Cancer"):
        (mini / label / "0029").mkdir(parents=True)
        (mini / label / "0029" / "C_0029_1.RIGHT_CC.png").touch()
    assert not verify("mini-ddsm", mini.parent).ok
    (mini / "Normal" / "0001").mkdir(parents=True)
    assert not verify("mini-ddsm", mini.parent).ok, "a class folder without images"
    (mini / "Normal" / "0001" / "A_0001_1.LEFT_MLO.png").touch()
    report = verify("mini-ddsm", mini.parent)
    assert report.ok and "Normal: 1 images" in str(report)


@pytest.mark.parametrize("name, phrase", [("cbis-ddsm", "NBIA Data Retriever"),
                                          ("inbreast", "AllDICOMs/"),
                                          ("mini-ddsm", "kaggle.com/datasets/cheddad/miniddsm2")])
def test_download_of_a_manual_dataset_prints_the_steps_and_downloads_nothing(tmp_path, capsys, name, phrase):
    target = tmp_path / name
    assert main(["data", "download", name, "--to", str(target)]) == 0
    out = capsys.readouterr().out
    assert phrase in out and f"python -m helpers data verify {name} --to {target}" in out
    assert not target.exists()
    with pytest.raises(DownloadError, match="no direct download"):
        downloads.download(name, target)


def test_data_list_and_usage_errors(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"mias\s+direct\s+http://peipa\.essex\.ac\.uk/\S+/all-mias\.tar\.gz", out)
    assert re.search(r"breakhis\s+direct\s+http://www\.inf\.ufpr\.br/vri/databases/BreaKHis_v1\.tar\.gz", out)
    assert all(re.search(rf"{n}\s+manual\s+https://", out) for n in ("cbis-ddsm", "inbreast", "mini-ddsm"))
    assert main(["data", "verify", "nosuch", "--to", "x"]) == 2
    assert "error: unknown dataset 'nosuch'" in capsys.readouterr().err
    assert main(["data", "verify", "mias"]) == 2
    assert "needs a dataset NAME and --to DIR" in capsys.readouterr().err
