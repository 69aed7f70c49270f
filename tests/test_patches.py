"""Lesion-free patches drawn like lesion patches (helpers.preprocessing.patches) and the shortcut
they close (helpers.shortcuts): on images whose two classes share one texture, the old
breast-centred rule differs from lesion patches in size and position, the new sampling does not."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from fixtures.mias import make_mias_fixture
from helpers import pipeline, plan, shortcuts
from helpers import preprocessing as pp

SIZE = 128


def breast(seed: int, size: int = SIZE, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint16 textured half-ellipse breast on the left of a dark background, and its silhouette."""
    rng = np.random.default_rng(seed)
    width = width or size
    mask = np.zeros((size, width), np.uint8)
    cv2.ellipse(mask, (0, size // 2), (int(width * 0.55), int(size * 0.42)), 0, 0, 360, 1, -1)
    mask = mask.astype(bool)
    texture = cv2.GaussianBlur(rng.random((size, width)).astype(np.float32), (0, 0), 3)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    img = 0.04 + 0.02 * rng.standard_normal((size, width))
    img[mask] = 0.45 + 0.35 * texture[mask]
    return (np.clip(img, 0, 1) * 65535).astype(np.uint16), mask


def lesion_inside(mask: np.ndarray, rng: np.random.Generator) -> str:
    """A roi "cx,cy,r" whose patch window lies inside the silhouette (the lesion is only coordinates)."""
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    while True:
        r = int(rng.integers(5, 15))
        cx, cy = int(rng.integers(0, mask.shape[1])), int(rng.integers(0, mask.shape[0]))
        top, left, side = pp.patch_window((cx, cy, r))
        if top >= 0 and left >= 0 and inner[top:top + side, left:left + side].all() \
                and top + side <= mask.shape[0] and left + side <= mask.shape[1]:
            return f"{cx},{cy},{r}"


@pytest.fixture(scope="module")
def same_texture(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """40 lesion and 40 normal images from one texture generator, one patient each."""
    folder = tmp_path_factory.mktemp("same-texture")
    rng = np.random.default_rng(3)
    rows = []
    for index in range(80):
        img, mask = breast(seed=100 + index)
        path = folder / f"img{index:02d}.png"
        cv2.imwrite(str(path), img)
        lesion = index % 2 == 1
        rows.append({"image_path": str(path), "label": "malignant" if lesion else "normal",
                     "patient_id": f"P{index:02d}", "dataset": "fixture",
                     "roi": lesion_inside(mask, rng) if lesion else ""})
    return pd.DataFrame(rows)


def windows(manifest: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Each row's patch radius and in-breast fraction, normals by the old or the new rule."""
    manifest = pp.assign_normal_radii(manifest, seed=42)
    rows = []
    for row in manifest.itertuples(index=False):
        img = pp.read_image(row.image_path)
        roi = pp.parse_roi(row.roi)
        if roi is None:
            roi = (pp.breast_centred_roi(img) if rule == "old"
                   else pp.normal_patch_roi(img, row.patch_radius, row.patch_seed))
        rows.append({"lesion": row.roi != "", "radius": roi[2],
                     "in_breast": pp.in_breast_fraction(img, roi)})
    return pd.DataFrame(rows)


def test_new_sampling_matches_lesion_patches_and_old_does_not(same_texture):
    new, old = windows(same_texture, "new"), windows(same_texture, "old")
    for column in ("radius", "in_breast"):
        assert ks_2samp(new.loc[new.lesion, column], new.loc[~new.lesion, column]).pvalue > 0.05, column
        assert ks_2samp(old.loc[old.lesion, column], old.loc[~old.lesion, column]).pvalue < 0.001, column
    assert new["in_breast"].min() == 1.0  # every window wholly inside the breast
    assert set(new.loc[~new.lesion, "radius"]) <= set(new.loc[new.lesion, "radius"])


def test_six_statistics_see_the_old_shortcut_only(same_texture):
    patches = shortcuts.shortcut_patches(same_texture, preset="minimal", image_size=32, seed=0)
    table = shortcuts.sampling_comparison(patches, seed=0)
    assert table.loc["old", "AUC"] > 0.9
    assert table.loc["new", "AUC"] < 0.75
    images, titles = shortcuts.example_patches(patches, per_class=2)
    assert len(images) == 6 and titles[0] == "normal, old" and images[0].shape == (32, 32)


def test_radii_come_from_the_same_dataset_and_do_not_depend_on_row_order(tmp_path):
    manifest = pd.DataFrame({
        "image_path": [str(tmp_path / name)
                       for name in ("a/1.png", "a/2.png", "a/3.png", "b/1.png", "b/2.png")],
        "label": ["benign", "normal", "normal", "malignant", "normal"],
        "dataset": ["a", "a", "a", "b", "b"],
        "roi": ["5,5,7", "", "", "9,9,30", ""],
    })
    out = pp.assign_normal_radii(manifest, seed=1)
    assert out[pp.PATCH_RADIUS].tolist()[1:3] == [7, 7] and out[pp.PATCH_RADIUS].iloc[4] == 30
    assert np.isnan(out[pp.PATCH_RADIUS].iloc[0]) and out[pp.PATCH_SEED].iloc[0] == -1
    shuffled = pp.assign_normal_radii(manifest.iloc[::-1].reset_index(drop=True), seed=1).iloc[::-1]
    assert shuffled[pp.PATCH_SEED].tolist() == out[pp.PATCH_SEED].tolist()
    assert pp.assign_normal_radii(manifest, seed=2)[pp.PATCH_SEED].iloc[1] != out[pp.PATCH_SEED].iloc[1]
    with pytest.raises(ValueError, match="b/1.png.*'malignant' image without lesion coordinates"):
        pp.assign_normal_radii(manifest.assign(roi=["5,5,7", "", "", "", ""]), seed=1)
    external = manifest.assign(dataset="a", source=["training", "training", "test", "test", "test"])
    radii = pp.assign_normal_radii(external, seed=1)[pp.PATCH_RADIUS]  # test normals: test lesions only
    assert radii.iloc[[1, 2, 4]].tolist() == [7, 30, 30]
    b_normal = manifest.assign(roi=["5,5,7", "", "", "", ""], label=["benign"] + ["normal"] * 4)
    with pytest.raises(ValueError, match="dataset b: 2 lesion-free images but no lesion roi"):
        pp.assign_normal_radii(b_normal, seed=1)


def test_window_inside_the_breast_on_a_downscaled_mask_and_the_best_when_none_fits():
    img, _ = breast(seed=5, size=700, width=1100)  # larger than the 512 px mask copy
    for seed in range(5):
        roi = pp.normal_patch_roi(img, 40, seed)
        assert pp.in_breast_fraction(img, roi) == 1.0
    assert pp.normal_patch_roi(img, 40, 3) == pp.normal_patch_roi(img, 40, 3)
    small, _ = breast(seed=6, size=64)
    roi = pp.normal_patch_roi(small, 12, seed=0)  # a 48 px window cannot fit in this breast
    best = max(pp.in_breast_fraction(small, (x, y, 12)) for x in range(0, 64, 2) for y in range(0, 64, 2))
    assert best < 1.0 and pp.in_breast_fraction(small, roi) >= best - 0.05
    with pytest.raises(ValueError, match="blank.png: no breast found"):
        pp.normal_patch_roi(np.zeros((64, 64), np.uint16), 5, seed=0, source="blank.png")


def test_prepare_arrays_keys_and_draws_by_the_patch_seed(same_texture, tmp_path):
    manifest = same_texture.iloc[:4].reset_index(drop=True)
    first = pp.assign_normal_radii(manifest, seed=1)
    other = pp.assign_normal_radii(manifest, seed=2)
    assert pp.cache_key(first, "minimal", image_size=16, use_roi=True) != \
        pp.cache_key(other, "minimal", image_size=16, use_roi=True)
    a = pp.prepare_arrays(first, "minimal", image_size=16, use_roi=True, cache_dir=tmp_path / "a")
    b = pp.prepare_arrays(first, "minimal", image_size=16, use_roi=True, cache_dir=tmp_path / "b")
    c = pp.prepare_arrays(other, "minimal", image_size=16, use_roi=True, cache_dir=tmp_path / "c")
    assert np.array_equal(a.x, b.x)  # deterministic
    assert np.array_equal(a.x[1], c.x[1]) and not np.array_equal(a.x[0], c.x[0])  # lesion row 1 alike


def test_load_manifest_gives_normals_radii_only_with_roi_patches(tmp_path):
    root = make_mias_fixture(tmp_path / "mias", width=96, height=128, n_extra_pairs=6)

    def manifest(use_roi: bool) -> pd.DataFrame:
        settings = plan.resolve_settings("smoke", study="000", dataset="mias", data_dir=str(root),
                                         task="normal-vs-abnormal", use_roi=use_roi)
        return pipeline.load_manifest(settings)

    with_roi = manifest(True)
    normal = with_roi["roi"].eq("")
    lesion_radii = {float(roi.split(",")[2]) for roi in with_roi.loc[~normal, "roi"]}
    assert normal.any() and set(with_roi.loc[normal, pp.PATCH_RADIUS]) <= lesion_radii
    assert pp.PATCH_RADIUS not in manifest(False).columns


def test_patch_statistics_are_six_named_plain_numbers():
    flat = np.full((1, 8, 8, 3), 0.5, np.float32)
    checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[None]
    stats = shortcuts.patch_statistics(np.concatenate([flat[..., 0], checker]))
    assert tuple(stats.columns) == shortcuts.STATISTICS and len(shortcuts.STATISTICS) == 6
    assert stats.iloc[0].tolist() == [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert stats.loc[1, "background_share"] == 0.5 and stats.loc[1, "first_difference"] == 1.0
    assert stats.loc[1, "second_difference"] == 2.0
    assert stats.loc[1, "high_frequency_share"] == pytest.approx(1.0)


def test_grouped_cv_auc_needs_patients_of_both_classes():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    groups = np.arange(40) // 2
    assert shortcuts.grouped_cv_auc(y[:, None] + 0.1 * rng.standard_normal((40, 1)), y, groups) == 1.0
    assert 0.2 < shortcuts.grouped_cv_auc(rng.standard_normal((40, 2)), y, groups) < 0.8
    with pytest.raises(ValueError, match="at least 2 patients of each class"):
        shortcuts.grouped_cv_auc(rng.standard_normal((40, 2)), y, np.where(y == 1, 99, groups))


def test_breast_mask_keeps_the_whole_breast_where_otsu_keeps_only_the_muscle():
    from helpers import phantoms

    otsu_cover = []
    for _, phantom in phantoms.generate(3, seed=7, image_size=128):
        img, true = phantom.image.astype(np.float32) / 4095, phantom.breast_mask
        mask = pp.breast_mask(img)
        assert (mask & true).sum() >= 0.99 * true.sum() and (mask & ~true).sum() < 0.06 * true.sum()
        otsu_cover.append((pp.otsu_mask(img) & true).sum() / true.sum())
    assert min(otsu_cover) < 0.5  # an MLO view's pectoral muscle alone: why breast_mask is not otsu_mask


def test_some_patients_keeps_both_classes_and_whole_patients():
    manifest = pd.DataFrame({"patient_id": np.repeat([f"P{i:02d}" for i in range(30)], 2),
                             "target": np.repeat(["abnormal"] * 6 + ["normal"] * 24, 2)})
    some = shortcuts.some_patients(manifest, 10, seed=0)
    assert some["patient_id"].nunique() == 10 and (some.groupby("patient_id").size() == 2).all()
    assert some.drop_duplicates("patient_id")["target"].value_counts().to_dict() == {"normal": 8, "abnormal": 2}
    assert some.equals(shortcuts.some_patients(manifest, 10, seed=0))
    assert shortcuts.some_patients(manifest, 30, seed=0) is manifest
