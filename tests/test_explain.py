"""Tests of helpers.explain: CAM and Grad-CAM, their target layers, the TensorFlow, JAX and PyTorch gradients,
lesion masks in the model's geometry, and the localisation score against its baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from conftest import REPO_ROOT
from helpers import datasets, evaluation, explain, models, phantoms, pipeline, plan
from helpers.models import HEADS, build_classifier
from helpers.preprocessing import Preset, Step, apply_preset

SMALLEST = {"alexnet": 63, "squeezenet": 32}
"""Input sides for the head checks below. That the target layer is the backbone's last feature map with
paper 000's head is checked for every backbone of the registry in tests/test_models.py
(test_every_backbone_builds_and_outputs_probabilities, test_custom_backbones_save_reload_and_weights_files)."""


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype("float32")


def _gap_model(head: str = "dense", seed: int = 0, outputs: int = 3) -> keras.Model:
    """image -> conv (the maps f_k) -> GAP -> a head: "dense" (Dense softmax, the textbook CAM
    network), "deep" (batch norm, ReLU Dense, dropout, Dense softmax: paper 000's shape)."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="features")(image)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if head == "deep":
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.Dense(6, activation="relu", name="fc")(x)
        x = keras.layers.Dropout(0.5, name="dropout")(x)
    activation = "sigmoid" if outputs == 1 else "softmax"
    return keras.Model(image, keras.layers.Dense(outputs, activation=activation, name="output")(x))


def _features(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("features").output)(x))


# ---------------------------------------------------------------------------------------------
# CAM and Grad-CAM
# ---------------------------------------------------------------------------------------------

def test_cam_is_papers_equation_and_grad_cam_equals_it_for_a_gap_dense_network():
    model = _gap_model("dense")
    x, classes = _images(4, 8), np.array([0, 1, 2, 1])
    f = _features(model, x)                                    # f_k(x, y): (N, 8, 8, 5)
    w = keras.ops.convert_to_numpy(model.get_layer("output").kernel)  # w_k^c: (5, 3)
    textbook = np.einsum("nhwk,kn->nhw", f, w[:, classes])     # paper 000's eq. 11
    cam = explain.class_activation_map(model, x, classes, raw=True)
    np.testing.assert_allclose(cam, textbook, rtol=1e-5, atol=1e-6)
    # Grad-CAM's alpha_k is w_k^c / (h w): the same map over its 64 cells, before the ReLU
    np.testing.assert_allclose(explain.grad_cam(model, x, classes, raw=True) * 64, textbook, rtol=1e-4, atol=1e-6)
    shown = explain.grad_cam(model, x, classes)
    np.testing.assert_allclose(shown, explain.class_activation_map(model, x, classes), atol=1e-5)
    peaks = shown.max(axis=(1, 2))  # 1, or 0 for a map without positive evidence (ReLU)
    assert shown.shape == (4, 8, 8) and shown.min() >= 0 and set(peaks) <= {0.0, 1.0} and peaks.max() == 1
    assert not np.allclose(cam[0], explain.class_activation_map(model, x[:1], 1, raw=True)[0])  # class matters


def test_cam_of_a_deeper_head_uses_its_linearisation_at_each_image():
    model = _gap_model("deep", seed=1)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.2, 0.3, 5).astype("float32"))  # away from the identity
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 5).astype("float32"))
    x, classes = _images(3, 8, seed=2), np.array([2, 0, 1])
    f = _features(model, x)
    g = f.mean(axis=(1, 2))
    value = lambda layer, name: keras.ops.convert_to_numpy(getattr(model.get_layer(layer), name))  # noqa: E731
    scale = value("bn", "gamma") / np.sqrt(value("bn", "moving_variance") + bn.epsilon)
    hidden = (g - value("bn", "moving_mean")) * scale + value("bn", "beta")
    active = (hidden @ value("fc", "kernel") + value("fc", "bias")) > 0
    # d y^c / d g_k through batch norm (affine), the active ReLU units and the output kernel
    weights = np.stack([scale * (value("fc", "kernel") @ (active[n] * value("output", "kernel")[:, c]))
                        for n, c in enumerate(classes)])
    np.testing.assert_allclose(explain.class_activation_map(model, x, classes, raw=True),
                               np.einsum("nhwk,nk->nhw", f, weights), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(explain.grad_cam(model, x, classes), explain.class_activation_map(model, x, classes),
                               atol=1e-5)  # Grad-CAM at the GAP's input is ReLU(CAM) up to a factor


def test_one_sigmoid_unit_explains_class_0_by_minus_the_logit():
    model = _gap_model("dense", seed=3, outputs=1)
    x = _images(2, 8, seed=4)
    one, zero = (explain.class_activation_map(model, x, c, raw=True) for c in (1, 0))
    np.testing.assert_allclose(zero, -one, atol=1e-7)
    assert np.abs(one).max() > 0
    with pytest.raises(ValueError, match="out of range for 2 classes"):
        explain.grad_cam(model, x, 2)


# ---------------------------------------------------------------------------------------------
# Target layers: every backbone and head, nested layers, the fusion
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone, heads", [("alexnet", tuple(HEADS)), ("squeezenet", ("paper001",))])
def test_target_layer_and_class_scores_with_every_head(backbone, heads):
    size = SMALLEST[backbone]
    x = _images(2, size)
    for head in heads:
        model = build_classifier(backbone, head=head, input_shape=(size, size, 3), num_classes=2, seed=0)
        target = explain.target_layer(model)
        expected = "paper001_relu_conv10" if (backbone, head) == ("squeezenet", "paper001") else backbone
        assert target.name == expected, head
        units = 1 if head in ("paper002", "paper004") else 2  # one sigmoid unit for two classes
        assert tuple(target.from_map.output.shape) == (None, units) and target.sigmoid == (units == 1)
        maps = explain.grad_cam(model, x, [0, 1], target=target)
        assert maps.shape == (2, size, size) and maps.min() >= 0 and maps.max() <= 1, head
        # the split network computes what the network does: the logits give its probabilities
        logits = keras.ops.convert_to_numpy(target.from_map(target.to_map(x)))
        proba = keras.ops.convert_to_numpy(model(x, training=False))
        expected_proba = (1 / (1 + np.exp(-logits)) if units == 1
                          else np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
        np.testing.assert_allclose(proba, expected_proba, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def squeezenet() -> keras.Model:
    """SqueezeNet 1.1 with paper 000's head at 64 px (3x3 maps), random weights."""
    return build_classifier("squeezenet", head="paper000", input_shape=(64, 64, 3), num_classes=2, seed=3)


def test_a_layer_inside_the_backbone_can_be_named_where_it_is_a_cut_point(squeezenet):
    for name in ("fire8_concat", "squeezenet/fire8_concat"):
        target = explain.target_layer(squeezenet, name)
        assert target.name == "squeezenet/fire8_concat" and tuple(target.to_map.output.shape)[1:3] == (3, 3)
    maps = explain.grad_cam(squeezenet, _images(2, 64), 1, layer="fire6_concat")
    assert maps.shape == (2, 64, 64)
    with pytest.raises(ValueError, match="not a cut point"):  # fire9's 1x1 branch: its 3x3 twin bypasses it
        explain.target_layer(squeezenet, "fire9_expand1x1")
    with pytest.raises(ValueError, match="no layer 'conv5'.*squeezenet/fire9_concat"):
        explain.target_layer(squeezenet, "conv5")
    with pytest.raises(ValueError, match="not a spatial"):
        explain.target_layer(squeezenet, "paper000_fc1")


def test_fusion_maps_at_its_refined_fused_layer():
    fusion = models.build_fusion(input_shape=(63, 63, 3), num_classes=3, seed=0)
    target = explain.target_layer(fusion)
    assert target.name == "fusion_refine1_relu"
    x = _images(2, 63)
    maps = explain.grad_cam(fusion, x, [0, 2], target=target)
    assert maps.shape == (2, 63, 63) and 0 <= maps.min() and maps.max() <= 1
    assert explain.target_layer(fusion, "fusion_concat").name == "fusion_concat"
    with pytest.raises(ValueError, match="only in a build_classifier model"):
        explain.target_layer(fusion, "resnet50_to_stage3/conv3_block4_out")
    with pytest.raises(ValueError, match="no global average pooling"):
        explain.class_activation_map(fusion, x, 0)


SMALL_NETWORK = """
def small_network(init):
    image = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", kernel_initializer=init, name="conv1")(image)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init, name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="fc")(x)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    return keras.Model(image, keras.layers.Dense(3, activation="softmax", kernel_initializer=init, name="output")(x))
"""
"""A network with batch norm and dropout before and after its maps (inference mode matters), built
alike in every process. The JAX and torch ones start from zeros and load the weights (JAX compiles a
random initialiser for seconds; keras.utils.set_random_seed would import TensorFlow)."""

OTHER_BACKEND_SCRIPT = """
import os
import sys
import numpy as np
from helpers import backend  # noqa: F401
import keras
from helpers import explain
assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
""" + SMALL_NETWORK + """
model = small_network("zeros")
model.load_weights(sys.argv[1])
x = np.load(sys.argv[2])
np.savez(sys.argv[3], grad_cam=explain.grad_cam(model, x, [0, 1, 2]),
         raw=explain.grad_cam(model, x, [2, 1, 0], layer="relu1", raw=True),
         cam=explain.class_activation_map(model, x, [1, 0, 1], raw=True))
"""


def _torch_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@pytest.mark.parametrize("other", ["jax", pytest.param("torch", marks=pytest.mark.skipif(
    not _torch_importable(), reason="torch is not installed (pip install torch==2.13.0, the CPU build)"))])
def test_tensorflow_and_other_backends_give_the_same_maps(tmp_path, other):
    """The same network and weights, the maps computed here (TensorFlow) and in a process on the JAX
    or the PyTorch backend: Grad-CAM at the last maps and at an earlier layer, and CAM."""
    assert keras.backend.backend() == "tensorflow"
    scope: dict = {"keras": keras}
    exec(SMALL_NETWORK, scope)  # noqa: S102 - the network's definition, shared with the JAX process
    keras.utils.set_random_seed(4)
    model = scope["small_network"]("glorot_uniform")
    for name in ("bn1", "bn2"):  # batch-norm statistics away from the identity
        layer = model.get_layer(name)
        layer.moving_mean.assign(np.linspace(-0.1, 0.2, layer.moving_mean.shape[0]).astype("float32"))
        layer.moving_variance.assign(np.linspace(0.5, 1.5, layer.moving_variance.shape[0]).astype("float32"))
    x = _images(3, 16, seed=5)
    model.save_weights(tmp_path / "model.weights.h5")
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "maps.py"
    script.write_text(OTHER_BACKEND_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "model.weights.h5"), str(tmp_path / "x.npy"),
                           str(tmp_path / "other.npz")], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "KERAS_BACKEND": other}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "other.npz")
    ours = {"grad_cam": explain.grad_cam(model, x, [0, 1, 2]),
            "raw": explain.grad_cam(model, x, [2, 1, 0], layer="relu1", raw=True),
            "cam": explain.class_activation_map(model, x, [1, 0, 1], raw=True)}
    assert ours["grad_cam"].max() == 1 and ours["raw"].shape == (3, 16, 16) and np.abs(ours["cam"]).max() > 0
    np.testing.assert_allclose(theirs["grad_cam"], ours["grad_cam"], atol=1e-4)
    for key in ("raw", "cam"):  # compared relative to their size
        scale = np.abs(ours[key]).max()
        np.testing.assert_allclose(theirs[key] / scale, ours[key] / scale, atol=1e-4, err_msg=key)


def test_a_backend_without_a_gradient_function_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(NotImplementedError, match="tensorflow, jax, torch backends.*'numpy'"):
        explain.grad_cam(_gap_model(), _images(1, 8), 0)


# ---------------------------------------------------------------------------------------------
# Lesion masks in the geometry of the prepared arrays
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[False, True], ids=["whole-images", "lesion-patches"])
def prepared(request) -> pipeline.PreparedData:
    """Smoke-profile data of 16 phantoms at 64 px, normal vs abnormal: paper 000's whole-image
    preset (artefact removal, Otsu crop), or lesion-centred patches (use_roi)."""
    settings = plan.resolve_settings("smoke", study="000", backbone="squeezenet", task="normal-vs-abnormal",
                                     image_size=64, use_roi=request.param, n_boot=50,
                                     dataset_options={"n_patients": 16, "image_size": 128, "difficulty": 0.0,
                                                      "seed": 2})
    return pipeline.prepare_data(settings, progress=False)


def test_lesion_masks_have_the_geometry_of_the_cached_arrays(prepared):
    for split in ("train", "test"):
        masks, images = explain.lesion_masks(prepared, split, with_images=True)
        labels = prepared.manifest.loc[prepared.manifest["split"] == split, "label"].to_numpy()
        assert len(masks) == len(prepared.x[split])
        assert [mask is None for mask in masks] == list(labels == "normal")
        for mask, image, cached in zip(masks, images, prepared.x[split]):
            if mask is None:
                continue
            assert mask.dtype == bool and mask.shape == (64, 64) and 0 < mask.mean() < 0.5
            np.testing.assert_allclose(image, cached.astype(np.float32), atol=1e-3)  # float16 rounding
            # the mask lies on the lesion: at difficulty 0 a lesion is brighter than its surroundings
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~mask
            assert image[..., 0][mask].mean() > image[..., 0][ring].mean()
            if prepared.settings.use_roi:  # a lesion patch is centred on its lesion
                ys, xs = np.nonzero(mask)
                assert abs(ys.mean() - 31.5) < 8 and abs(xs.mean() - 31.5) < 8


def test_disc_and_lesion_positions():
    disc = explain.disc_mask((9, 9), 4, 4, 2)
    assert disc.sum() == 13 and disc[4, 4] and disc[4, 6] and not disc[6, 6]
    assert explain.disc_mask((5, 5), 1.2, 3.0, 0.1).sum() == 1  # at least the pixel under the centre
    row = pd.Series({"image_path": "/x/a.pgm", "roi": "10,20,5", "dataset": "mias", "lesion_mask_path": ""})
    assert explain.lesion_position(row) == ("disc", (10.0, 20.0, 5.0))
    assert explain.lesion_source(row) == "mias centre and radius (disc)"
    row["lesion_mask_path"] = "/x/m.png"
    assert explain.lesion_position(row) == ("mask", "/x/m.png")
    assert explain.lesion_position(pd.Series({"image_path": "/x/b.pgm", "roi": "", "lesion_mask_path": np.nan})) is None


def test_apply_preset_follows_crops_and_keeps_a_small_lesion():
    image = np.zeros((200, 120), np.float32)
    image[20:180, 10:100] = 0.6                      # the "breast": otsu_crop cuts to it
    lesion = np.zeros_like(image, dtype=bool)
    lesion[100:103, 50:52] = True                    # 3 x 2 px: below one pixel of a 32 px result
    preset = Preset("t", (Step("otsu_crop", {"margin": 0.0}), Step("resize", {"method": "nearest"}),
                          Step("grey_to_rgb")), "test")
    alone = apply_preset(image, preset, image_size=32)
    shown, mask = apply_preset(image, preset, image_size=32, mask=lesion)
    np.testing.assert_array_equal(shown, alone)
    ys, xs = np.nonzero(mask)
    assert 1 <= len(ys) <= 4 and abs(ys.mean() - 81 / 160 * 32) < 1.5 and abs(xs.mean() - 41 / 90 * 32) < 1.5
    with pytest.raises(ValueError, match="does not match"):
        apply_preset(image, preset, image_size=32, mask=lesion[:10])


def test_synthetic_folders_of_before_lesion_masks_get_them_without_touching_the_images(tmp_path):
    root = tmp_path / "syn"
    first = datasets.synthetic(root, n_patients=4, image_size=64, seed=1)
    lesions = first[first["label"] != "normal"]
    assert all(Path(p).is_file() for p in lesions["lesion_mask_path"])
    assert first.loc[first["label"] == "normal", "lesion_mask_path"].eq("").all()
    old = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False).drop(columns="lesion_mask_path")
    old.to_csv(root / "manifest.csv", index=False)   # a folder written before lesion masks were
    for path in (root / "lesions").iterdir():
        path.unlink()
    stamps = {p: os.stat(p).st_mtime_ns for p in first["image_path"]}
    again = datasets.synthetic(root, n_patients=4, image_size=64, seed=1)
    assert list(again["lesion_mask_path"]) == list(first["lesion_mask_path"])
    assert {p: os.stat(p).st_mtime_ns for p in again["image_path"]} == stamps
    phantom = next(p for _, p in phantoms.generate(4, seed=1, image_size=64) if p.label != "normal")
    written = cv2.imread(str(lesions["lesion_mask_path"].iloc[0]), cv2.IMREAD_UNCHANGED) > 0
    np.testing.assert_array_equal(written, phantom.lesion_mask)


# ---------------------------------------------------------------------------------------------
# Localisation scores
# ---------------------------------------------------------------------------------------------

def test_baselines_and_ties_on_hand_made_masks():
    centre = explain.disc_mask((9, 9), 4, 4, 2)
    corner = explain.disc_mask((9, 9), 0, 0, 2)
    peaked = np.zeros((9, 9))
    peaked[4, 4] = 1.0
    scores = explain.localisation_scores([peaked, peaked, peaked], [centre, corner, None], ["a", "b", "c"],
                                         n_boot=200, seed=1)
    assert scores["n_images"] == 2 and scores["n_patients"] == 2
    assert scores["pointing_game"]["value"] == 0.5 and scores["baselines"]["centred"]["pointing_game"] == 0.5
    area = (centre.mean() + corner.mean()) / 2
    assert scores["baselines"]["uniform"] == {"pointing_game": pytest.approx(area), "mass_inside": pytest.approx(area)}
    alone = explain.localisation_scores([peaked], [centre], ["a"], n_boot=0)
    assert alone["baselines"]["centred"]["pointing_game"] == 1.0 and alone["pointing_game"]["ci"] == [None, None]
    far = explain.localisation_scores([peaked], [corner], ["a"], n_boot=0)
    assert far["baselines"]["centred"]["pointing_game"] == 0
    flat, zero = np.full((9, 9), 0.3), np.zeros((9, 9))   # every pixel ties: the lesion's area share
    for heatmap in (flat, zero):
        tied = explain.localisation_scores([heatmap], [centre], ["a"], n_boot=0)
        assert tied["pointing_game"]["value"] == pytest.approx(centre.mean())
        assert tied["mass_inside"]["value"] == pytest.approx(centre.mean())
    two = np.zeros((9, 9))
    two[4, 4] = two[0, 8] = 1.0                           # two maxima, one inside
    assert explain.pointing_hit(two, centre) == 0.5
    even = explain.centred_map((8, 8))
    assert explain.pointing_hit(even, explain.disc_mask((8, 8), 3, 3, 0.5)) == 0.25  # four central pixels tie
    with pytest.raises(ValueError, match="no image has a lesion mask"):
        explain.localisation_scores([peaked], [None], ["a"])
    with pytest.raises(ValueError, match="negative"):
        explain.localisation_scores([-peaked], [centre], ["a"])


def test_bootstrap_resamples_whole_patients():
    rng = np.random.default_rng(0)
    masks = [explain.disc_mask((9, 9), *rng.uniform(2, 7, 2), 2) for _ in range(30)]
    maps = [rng.uniform(0, 1, (9, 9)) for _ in range(30)]
    patients = np.repeat([f"p{i}" for i in range(10)], 3)
    scores = explain.localisation_scores(maps, masks, patients, n_boot=500, seed=3)
    for key in ("pointing_game", "mass_inside"):
        low, high = scores[key]["ci"]
        assert low <= scores[key]["value"] <= high and high - low > 0
    assert scores == explain.localisation_scores(maps, masks, patients, n_boot=500, seed=3)
    one_patient = explain.localisation_scores(maps, masks, ["p"] * 30, n_boot=100, seed=3)
    assert one_patient["pointing_game"]["ci"][0] == one_patient["pointing_game"]["ci"][1]  # one patient: no spread


def _phantom_images(size: int = 32) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """Whole phantom images with visible masses (difficulty 0; calcification groups left out), normal
    or abnormal, their true lesion masks in the same geometry, and patients."""
    preset = Preset("t", (Step("to_float", {"bits": 12}), Step("resize", {"method": "area"}), Step("grey_to_rgb")),
                    "test")
    images, labels, masks, patients = [], [], [], []
    for patient, phantom in phantoms.generate(120, seed=5, image_size=128, difficulty=0.0,
                                              class_balance=(0.5, 0.5, 0.0)):
        if phantom.lesion_kind == "calcifications":
            continue
        image, mask = apply_preset(phantom.image, preset, image_size=size, mask=phantom.lesion_mask)
        images.append(image - cv2.GaussianBlur(image, (0, 0), size / 10))  # high-pass: the masses stand out
        labels.append(int(phantom.label != "normal"))
        masks.append(mask if mask.any() else None)
        patients.append(patient)
    x = np.stack(images)
    x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
    return x.astype("float32"), np.array(labels), masks, np.array(patients)


def test_a_trained_network_points_at_phantom_lesions_and_an_untrained_one_does_not():
    x, y, masks, patients = _phantom_images()
    people = np.unique(patients)
    train = np.isin(patients, people[:len(people) * 2 // 3])   # two thirds of the patients
    test = np.flatnonzero(~train)
    keras.utils.set_random_seed(0)
    image = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(16, 5, padding="same", activation="relu")(image)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(image, keras.layers.Dense(2, activation="softmax")(h))

    def scores() -> dict:
        maps = explain.grad_cam(model, x[test], y[test])
        return explain.localisation_scores(maps, [masks[i] for i in test], patients[test], n_boot=200, seed=0)

    def beats_both(result: dict) -> bool:
        best = {key: max(result["baselines"]["uniform"][key], result["baselines"]["centred"][key])
                for key in ("pointing_game", "mass_inside")}
        return (result["pointing_game"]["value"] > best["pointing_game"] + 0.1
                and result["mass_inside"]["value"] > 1.25 * best["mass_inside"])

    untrained = scores()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[train], y[train], epochs=20, batch_size=16, verbose=0)
    trained = scores()
    accuracy = (keras.ops.convert_to_numpy(model(x[test])).argmax(axis=1) == y[test]).mean()
    # measured (seed 0; seeds 1, 2 alike): accuracy 0.76; pointing game 0.41 (untrained 0.12), mass inside
    # 0.124 (untrained 0.037); baselines: uniform 0.028 / 0.028, centred 0.037 / 0.042 (34 lesion images)
    assert accuracy > 0.7 and trained["n_images"] >= 30
    assert beats_both(trained), trained
    assert not beats_both(untrained), untrained
    for key in ("pointing_game", "mass_inside"):
        low, high = trained[key]["ci"]
        assert low <= trained[key]["value"] <= high


# ---------------------------------------------------------------------------------------------
# A run: explain_run, cam_overlays.png and metrics.json's localisation block
# ---------------------------------------------------------------------------------------------

def test_explain_run_writes_overlays_and_a_valid_localisation_block(prepared, squeezenet, tmp_path):
    y_prob = np.tile([0.4, 0.6], (len(prepared.y["test"]), 1))
    explained = explain.explain_run(prepared.settings, prepared, squeezenet, tmp_path, y_prob)
    block = explained.block
    assert (tmp_path / explain.OVERLAYS_FILE).is_file()
    assert set(block) == {"status", "method", "target_layer", "class_explained", "lesions", "input", "n_images",
                          "n_patients", "pointing_game", "mass_inside", "baselines", "n_boot"}
    assert block["status"] == "ok" and block["target_layer"] == "squeezenet"
    assert block["lesions"] == "phantom lesion masks"
    assert block["input"] == ("lesion-centred patches" if prepared.settings.use_roi else "whole images")
    assert block["n_images"] == sum(mask is not None for mask in explained.masks) > 0
    assert explained.maps.shape == (len(prepared.y["test"]), 64, 64)
    table = explain.localisation_table(block)
    assert list(table.index) == ["grad-cam (squeezenet)", "uniform (baseline)", "centred (baseline)"]
    results = evaluation.evaluate(prepared.y["test"], y_prob, prepared.class_names, n_boot=0)
    record = pipeline.run_record(prepared.settings, prepared, run_name="t", notebook="03", weights_description="none")
    written = pipeline.write_metrics(tmp_path, record, {**results, "localisation": block})
    assert json.loads(written.read_text())["localisation"]["pointing_game"]["value"] == pytest.approx(
        block["pointing_game"]["value"], abs=1e-6)
    with pytest.raises(ValueError, match="localisation.baselines.centred.mass_inside"):
        broken = {**block, "baselines": {"uniform": block["baselines"]["uniform"], "centred": {}}}
        pipeline.write_metrics(tmp_path, record, {**results, "localisation": broken})
    unavailable = {key: block[key] for key in evaluation.LOCALISATION_KEYS}
    assert evaluation._missing_keys({"run": record, **results, "localisation": {**unavailable,
                                     "status": "unavailable"}}) == ["localisation.reason"]


def test_pick_examples_takes_correct_then_wrong_lesions_first():
    y_true = np.array([1, 1, 1, 0, 0, 1, 0])
    y_pred = np.array([1, 1, 0, 0, 1, 0, 0])
    masks = [np.ones((2, 2), bool), None, np.ones((2, 2), bool), None, None, None, None]
    picked = explain.pick_examples(y_true, y_pred, masks, n_correct=2, n_wrong=2, seed=0)
    assert picked[0] == 0 and set(picked[:2]) <= {0, 1, 3, 6} and picked[2] == 2 and set(picked[2:]) <= {2, 4, 5}
    assert len(explain.pick_examples(y_true, y_pred, masks, n_correct=9, n_wrong=9)) == 7
