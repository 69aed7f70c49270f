"""Tests of helpers.augmentation on tiny arrays (16-24 px)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import augmentation as aug
from helpers import studies

SIZE = 20


def unit_batch(count: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random images in [0, 1] spanning the whole range."""
    rng = np.random.default_rng(seed)
    x = rng.random((count, SIZE, SIZE, 3)).astype(np.float32)
    x[:, 0, 0, :], x[:, -1, -1, :] = 0.0, 1.0
    return x


def corner_batch(count: int) -> np.ndarray:
    """Dark images with a bright 5x5 square in the top-left corner."""
    x = np.zeros((count, SIZE, SIZE, 3), np.float32)
    x[:, :5, :5, :] = 1.0
    return x


def one_transform(layer: str, **arguments) -> aug.Scheme:
    return aug.Scheme("test", None, "one transform", (aug.Transform("t", "-", layer, arguments),))


# ------------------------------------------------------------------ registry


def test_registry_names_and_lookup() -> None:
    assert set(aug.SCHEMES) == {"none", "paper000", "paper001", "paper002", "paper003"}
    assert aug.get_scheme("paper000").study == "000"
    with pytest.raises(KeyError, match="paper002"):
        aug.get_scheme("paper009")
    assert aug.scheme_for_study("002") == "paper002"
    assert aug.scheme_for_study("004") == "none"  # paper 004 gives no augmentation settings
    with pytest.raises(KeyError):
        aug.scheme_for_study("999")
    with pytest.raises(ValueError, match="RandomWobble"):
        aug.Transform("x", "-", "RandomWobble")


def test_parameters_come_from_the_studies_registry() -> None:
    a000 = studies.get_study("000").recipe.augmentation
    args = {t.name: dict(t.arguments) for t in aug.SCHEMES["paper000"].transforms}
    deg = a000["rotation_deg"]
    assert args["rotation"]["factor"] == (-deg / 360, deg / 360)
    assert args["width/height shift"]["width_factor"] == a000["width_shift"]
    assert args["width/height shift"]["height_factor"] == a000["height_shift"]
    assert math.isclose(args["shear"]["x_factor"], math.tan(math.radians(a000["shear_deg"])))
    assert args["crop and pad"]["height_factor"] == a000["crop_and_pad"]

    recipe001 = studies.get_study("001").recipe
    low, high = recipe001.augmentation["translate_px"]
    translation = next(t for t in aug.SCHEMES["paper001"].transforms if t.layer == "RandomTranslation")
    width = recipe001.input_size[1]
    assert translation.arguments["width_factor"] == (low / width, high / width)
    rotation = next(t for t in aug.SCHEMES["paper001"].transforms if t.layer == "RandomRotation")
    assert rotation.arguments["factor"] == (0.0, 1.0)  # 0-360 degrees

    a003 = studies.get_study("003").recipe.augmentation
    zoom = next(t for t in aug.SCHEMES["paper003"].transforms if t.layer == "RandomZoom")
    small, large = a003["scale"]
    assert np.allclose(zoom.arguments["height_factor"], (1 / large - 1, 1 / small - 1))
    assert [t.layer for t in aug.SCHEMES["paper002"].transforms] == \
        ["RandomBrightness", "RandomFlip", "RandomRotation"]


def test_scheme_table_lists_every_transform() -> None:
    table = aug.scheme_table()
    assert len(table) == sum(len(s.transforms) for s in aug.SCHEMES.values())
    assert list(table.columns) == ["scheme", "transform", "paper", "layer", "arguments", "note"]
    assert set(table["scheme"]) == {"paper000", "paper001", "paper002", "paper003"}
    assert (table["arguments"] != "").all()


# ------------------------------------------------------------------ augmenter


@pytest.mark.parametrize("name", list(aug.SCHEMES))
def test_each_scheme_runs_keeps_shape_dtype_range_and_is_deterministic(name: str) -> None:
    x = unit_batch()
    augmenter = aug.build_augmenter(name, image_size=SIZE, seed=5)
    first = augmenter(x, 0)
    assert first.shape == x.shape and first.dtype == np.float32 and np.isfinite(first).all()
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert np.array_equal(first, augmenter(x, 0))
    assert np.array_equal(first, aug.build_augmenter(name, image_size=SIZE, seed=5)(x, 0))
    if name == "none":
        assert np.array_equal(first, x) and first is not x
    else:
        assert not np.array_equal(first, x)
        assert not np.array_equal(first, augmenter(x, 1))
        assert np.array_equal(first, augmenter(x, 0))  # earlier calls do not matter
        other_seed = aug.build_augmenter(name, image_size=SIZE, seed=6)
        assert not np.array_equal(first, other_seed(x, 0))


def test_rotation_moves_the_bright_corner() -> None:
    quarter_turn = aug.Augmenter(one_transform("RandomRotation", factor=(0.25, 0.25),
                                               fill_mode="constant", fill_value=0.0),
                                 (SIZE, SIZE), seed=0)
    out = quarter_turn(corner_batch(2), 0)
    # 90 degrees counter-clockwise: the top-left corner goes to the bottom-left
    assert out[:, :5, :5].mean() < 0.1 and out[:, -5:, :5].mean() > 0.9
    paper = aug.build_augmenter("paper001", image_size=SIZE, seed=1)
    moved = paper(corner_batch(8), 0)
    assert np.mean([m[:5, :5].mean() < 0.5 for m in moved]) >= 0.5  # 0-360 degrees: usually moved


def test_flip_mirrors_or_keeps() -> None:
    x = np.zeros((16, SIZE, SIZE, 3), np.float32)
    x[:, :, : SIZE // 2] = 1.0
    x[:, 2, :] = 0.5  # breaks the up-down symmetry
    flip = aug.Augmenter(one_transform("RandomFlip", mode="horizontal"), (SIZE, SIZE), 0)
    out = flip(x, 3)
    mirrored = [np.array_equal(o, x[0][:, ::-1]) for o in out]
    kept = [np.array_equal(o, x[0]) for o in out]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_normalised_data_are_refused_and_float16_clean_images_kept() -> None:
    x = unit_batch(4, seed=2)
    zero_mean = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
    augmenter = aug.build_augmenter("paper003", image_size=SIZE, seed=0)
    with pytest.raises(ValueError, match=r"leave \[0, 1\].*normalisation comes after augmentation"):
        augmenter(zero_mean.astype(np.float32), 0)
    half = augmenter(x.astype(np.float16), 0)  # the cache's dtype
    assert half.dtype == np.float16 and 0.0 <= half.min() and half.max() <= 1.0


def test_brightness_works_on_the_unit_range() -> None:
    x = np.full((6, SIZE, SIZE, 3), 0.5, np.float32)
    x[:, 0, 0] = 0.0
    x[:, -1, -1] = 1.0
    bright = aug.Augmenter(one_transform("RandomBrightness", factor=(0.2, 0.2), value_range=(0.0, 1.0)),
                           (SIZE, SIZE), 0)
    out = bright(x, 0)
    assert np.allclose(out[:, 5, 5], 0.7, atol=1e-5) and out.max() == 1.0  # +20 % of [0, 1], clipped


def test_bad_input_is_refused() -> None:
    augmenter = aug.build_augmenter("paper002", image_size=SIZE, seed=0)
    with pytest.raises(ValueError, match=r"leave \[0, 1\]"):
        augmenter(unit_batch() * 2, 0)
    with pytest.raises(ValueError, match="shape"):
        augmenter(np.zeros((2, SIZE + 1, SIZE, 3), np.float32), 0)
    with pytest.raises(ValueError, match="step"):
        augmenter(unit_batch(), -1)
    with pytest.raises(TypeError, match="float"):
        augmenter((unit_batch() * 255).astype(np.uint8), 0)
    with pytest.raises(ValueError, match="seed"):
        aug.build_augmenter("paper002", image_size=SIZE, seed=-1)


def test_variants_starts_with_the_original() -> None:
    image = unit_batch(1)[0]
    augmenter = aug.build_augmenter("paper000", image_size=SIZE, seed=0)
    out = aug.variants(image, augmenter, count=4)
    assert out.shape == (5, SIZE, SIZE, 3) and np.array_equal(out[0], image)
    assert len({out[i].tobytes() for i in range(5)}) == 5


# ------------------------------------------------------------------ offline expansion


def test_expand_offline_keeps_originals_and_adds_copies() -> None:
    x, y = unit_batch(5, seed=3), np.array([0, 1, 0, 1, 1])
    groups = np.array(["p1", "p1", "p2", "p3", "p3"])
    augmenter = aug.build_augmenter("paper000", image_size=SIZE, seed=0)
    factor = studies.get_study("000").recipe.offline_expansion
    ex, ey, eg = aug.expand_offline(x, y, groups, factor=factor, augmenter=augmenter, split=["train"] * 5)
    assert ex.shape == (5 * factor, SIZE, SIZE, 3) and ex.dtype == np.float32
    assert np.array_equal(ex[:5], x)
    assert np.array_equal(ey, np.tile(y, factor)) and np.array_equal(eg, np.tile(groups, factor))
    assert len({image.tobytes() for image in ex}) == 5 * factor  # every copy differs
    again = aug.expand_offline(x, y, groups, factor=factor, augmenter=augmenter, split=["train"] * 5)
    assert np.array_equal(again[0], ex)
    same = aug.expand_offline(x, y, groups, factor=1, augmenter=augmenter, split=["train"] * 5)
    assert np.array_equal(same[0], x) and np.array_equal(same[1], y)


def test_expand_offline_refuses_rows_outside_train() -> None:
    x, y, groups = unit_batch(3), np.array([0, 1, 1]), np.array(["a", "b", "c"])
    augmenter = aug.build_augmenter("paper000", image_size=SIZE, seed=0)
    with pytest.raises(ValueError, match=r"1 of 3 rows.*\['test'\]"):
        aug.expand_offline(x, y, groups, factor=8, augmenter=augmenter, split=["train", "test", "train"])
    with pytest.raises(ValueError, match="length"):
        aug.expand_offline(x, y, groups, factor=8, augmenter=augmenter, split=["train"] * 2)
    with pytest.raises(ValueError, match="factor"):
        aug.expand_offline(x, y, groups, factor=0, augmenter=augmenter, split=["train"] * 3)
