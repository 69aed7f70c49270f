"""Tests of helpers.models: registry, heads, freeze modes, weights handling."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import models
from helpers.models import (
    BACKBONES,
    HEADS,
    WeightsUnavailableError,
    build_backbone,
    build_classifier,
    describe_weights,
    imagenet_file_name,
    keras_models_dir,
)

SHARED_KERAS_CACHE = Path(__file__).resolve().parents[2] / "shared" / "weights" / "keras-cache"
MOBILENETV2_224 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


def _batchnorm_statistics_move(model: keras.Model, x: np.ndarray) -> bool:
    """True when a training=True call changes any backbone BN moving statistics."""
    backbone = model.layers[1]
    norms = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    before = [keras.ops.convert_to_numpy(bn.moving_mean).copy() for bn in norms]
    model(x, training=True)
    after = [keras.ops.convert_to_numpy(bn.moving_mean) for bn in norms]
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_every_backbone_builds_and_outputs_probabilities():
    for name, spec in BACKBONES.items():
        size = max(32, spec.min_input_size)
        model = build_classifier(name, input_shape=(size, size, 3), num_classes=3, seed=1)
        assert model.name == f"{name}_paper000"
        assert model.get_layer(name).name == name  # nested backbone named after its key
        proba = keras.ops.convert_to_numpy(model(_images(2, size), training=False))
        assert proba.shape == (2, 3), name
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5, err_msg=name)
        assert spec.name == name and spec.imagenet_files and spec.weights_base_url
        assert callable(spec.preprocess_input)


def test_paper000_head_layers():
    model = build_classifier("mobilenetv3small", input_shape=(32, 32, 3), seed=0)
    kinds = [type(layer).__name__ for layer in model.layers[2:]]
    assert kinds == ["GlobalAveragePooling2D", "BatchNormalization", "Dense", "Dense",
                     "Dropout", "Dense"]
    assert model.get_layer("paper000_dropout").rate == 0.5
    assert model.get_layer("paper000_output").activation.__name__ == "softmax"
    assert [model.get_layer(f"paper000_fc{i}").units for i in (1, 2)] == list(
        models.PAPER000_FC_UNITS)
    assert set(HEADS) == {"paper000"}


def test_default_input_shape_is_backbone_default():
    model = build_classifier("vgg16", seed=0)
    assert tuple(model.input_shape[1:]) == (224, 224, 3)


def test_same_seed_same_initial_weights():
    first = build_classifier("mobilenetv3small", input_shape=(32, 32, 3), seed=7)
    second = build_classifier("mobilenetv3small", input_shape=(32, 32, 3), seed=7)
    other = build_classifier("mobilenetv3small", input_shape=(32, 32, 3), seed=8)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first.get_weights(), other.get_weights()))


def test_freeze_base_keeps_backbone_frozen_and_bn_in_inference_mode():
    model = build_classifier("mobilenetv2", input_shape=(32, 32, 3), freeze="base", seed=0)
    backbone = model.get_layer("mobilenetv2")
    assert not backbone.trainable and backbone.trainable_weights == []
    assert model.trainable_weights
    assert all(w.path.startswith("paper000") for w in model.trainable_weights)
    assert not _batchnorm_statistics_move(model, _images(4, 32))


def test_freeze_none_trains_everything_including_bn_statistics():
    model = build_classifier("mobilenetv2", input_shape=(32, 32, 3), freeze="none", seed=0)
    backbone = model.get_layer("mobilenetv2")
    assert backbone.trainable and all(layer.trainable for layer in backbone.layers)
    assert len(model.non_trainable_weights) == len(
        [w for w in model.weights if "moving" in w.path])  # only BN statistics
    assert _batchnorm_statistics_move(model, _images(4, 32))


def test_freeze_last_n_layers_keeps_batchnorm_frozen():
    model = build_classifier("mobilenetv2", input_shape=(32, 32, 3), freeze=5, seed=0)
    backbone = model.get_layer("mobilenetv2")
    trainable = [layer for layer in backbone.layers if layer.trainable]
    assert len(trainable) == 5
    candidates = [layer for layer in backbone.layers if not isinstance(
        layer, (keras.layers.BatchNormalization, keras.layers.InputLayer))]
    assert trainable == candidates[-5:]
    assert isinstance(backbone.layers[-2], keras.layers.BatchNormalization)  # Conv_1_bn
    assert not backbone.layers[-2].trainable
    assert len(backbone.trainable_weights) == sum(len(l.trainable_weights) for l in trainable)
    assert not _batchnorm_statistics_move(model, _images(4, 32))
    # and fit really updates the unfrozen layers, not the frozen ones
    compiled = keras.Model(model.inputs, model.outputs)
    compiled.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    def kernel(layer_name: str) -> np.ndarray:
        return keras.ops.convert_to_numpy(backbone.get_layer(layer_name).kernel).copy()

    top_before, low_before = kernel("Conv_1"), kernel("Conv1")
    compiled.train_on_batch(_images(4, 32), np.array([0, 1, 0, 1]))
    assert not np.array_equal(top_before, kernel("Conv_1"))
    np.testing.assert_array_equal(low_before, kernel("Conv1"))
    assert not _batchnorm_statistics_move(model, _images(4, 32))


@pytest.mark.parametrize("freeze", ["all", -1, 10_000, True, 1.5])
def test_bad_freeze_raises(freeze):
    with pytest.raises(ValueError, match="freeze"):
        build_classifier("vgg16", input_shape=(32, 32, 3), freeze=freeze)


def test_input_below_minimum_raises_naming_backbone_and_minimum():
    with pytest.raises(ValueError, match=r"InceptionV3.*75"):
        build_classifier("inceptionv3", input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"VGG16.*32"):
        build_backbone("vgg16", weights=None, input_shape=(31, 64, 3))


def test_unknown_names_raise_keyerror_listing_known_names():
    with pytest.raises(KeyError, match="mobilenetv2"):
        build_classifier("alexnet9")
    with pytest.raises(KeyError, match="paper000"):
        build_classifier("vgg16", head="nohead", input_shape=(32, 32, 3))


def test_missing_weights_path_raises_filenotfound(tmp_path):
    missing = tmp_path / "nothing.weights.h5"
    with pytest.raises(FileNotFoundError, match="nothing.weights.h5"):
        build_classifier("vgg16", weights=missing, input_shape=(32, 32, 3))


def test_weights_file_round_trip(tmp_path):
    source = build_backbone("mobilenetv3small", weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "small.weights.h5"
    source.save_weights(str(path))
    keras.utils.set_random_seed(99)  # the new backbone starts from other random weights
    loaded = build_backbone("mobilenetv3small", weights=path, input_shape=(32, 32, 3))
    x = _images(2, 32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(source(x, training=False)),
                                  keras.ops.convert_to_numpy(loaded(x, training=False)))
    classifier = build_classifier("mobilenetv3small", weights=str(path), input_shape=(32, 32, 3))
    for a, b in zip(source.get_weights(), classifier.get_layer("mobilenetv3small").get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_file_of_another_network_raises_naming_file(tmp_path):
    path = tmp_path / "vgg.weights.h5"
    build_backbone("vgg16", weights=None, input_shape=(32, 32, 3)).save_weights(str(path))
    with pytest.raises(ValueError, match="vgg.weights.h5"):
        build_backbone("mobilenetv3small", weights=path, input_shape=(32, 32, 3))
    bad = tmp_path / "weights.txt"
    bad.write_text("not weights")
    with pytest.raises(ValueError, match="weights.txt"):
        build_backbone("vgg16", weights=bad, input_shape=(32, 32, 3))


def test_describe_weights():
    assert describe_weights(None) == "random init (weights=None)"
    assert describe_weights("imagenet") == "imagenet"
    assert describe_weights(Path("/x/y/my.weights.h5")) == "file: my.weights.h5"


def test_keras_models_dir_follows_env_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_models_dir() == tmp_path / "models"
    monkeypatch.delenv("KERAS_HOME")
    assert keras_models_dir() == Path.home() / ".keras" / "models"


def test_imagenet_file_names_follow_keras():
    assert imagenet_file_name("mobilenetv2", (224, 224, 3)) == MOBILENETV2_224
    assert imagenet_file_name("mobilenetv2", (128, 128, 3)).endswith("1.0_128_no_top.h5")
    assert imagenet_file_name("mobilenetv2", (100, 100, 3)) == MOBILENETV2_224
    assert imagenet_file_name("mobilenetv2", (128, 160, 3)) == MOBILENETV2_224
    assert imagenet_file_name("vgg16", (32, 32, 3)) == BACKBONES["vgg16"].imagenet_files[0]


def test_imagenet_offline_raises_quickly_with_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        build_classifier("vgg16", weights="imagenet", input_shape=(32, 32, 3))
    assert time.monotonic() - start < 30
    message = str(caught.value)
    assert "KERAS_HOME/models" in message and "weights=None" in message
    assert str(tmp_path / "models" / BACKBONES["vgg16"].imagenet_files[0]) in message


def test_imagenet_download_failure_is_reported(tmp_path, monkeypatch):
    def refuse(file_name, url, models_dir):
        raise OSError("network is unreachable")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(models, "_download_imagenet_file", refuse)
    with pytest.raises(WeightsUnavailableError, match="network is unreachable"):
        build_backbone("mobilenetv2", weights="imagenet", input_shape=(96, 96, 3))


def test_imagenet_weights_load_from_keras_cache(tmp_path, monkeypatch):
    if not SHARED_KERAS_CACHE.is_dir():
        pytest.skip(f"no offline ImageNet weights at {SHARED_KERAS_CACHE}")
    h5py = pytest.importorskip("h5py")
    keras_home = tmp_path / "keras-home"
    shutil.copytree(SHARED_KERAS_CACHE, keras_home)  # a copy, never a link
    monkeypatch.setenv("KERAS_HOME", str(keras_home))

    model = build_classifier("mobilenetv2", weights="imagenet", input_shape=(224, 224, 3), seed=0)
    conv = model.get_layer("mobilenetv2").get_layer("Conv1")
    with h5py.File(keras_home / "models" / MOBILENETV2_224, "r") as weights_file:
        expected = np.asarray(weights_file["Conv1"]["Conv1"]["kernel"])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(conv.kernel), expected)
