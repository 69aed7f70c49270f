"""Tests of helpers.models: registry, heads, freeze modes, weights handling."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import explain, models
from helpers.models import (
    BACKBONES,
    HEADS,
    WeightsUnavailableError,
    build_backbone,
    build_classifier,
    describe_weights,
    imagenet_file_name,
    keras_models_dir,
    registry,
)

SHARED_KERAS_CACHE = Path(__file__).resolve().parents[2] / "shared" / "weights" / "keras-cache"
MOBILENETV2_224 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


def _batchnorm_statistics_move(model: keras.Model, x: np.ndarray) -> bool:
    """True when a training=True call changes any backbone BN moving statistics."""
    backbone = models.find_backbone(model)
    norms = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    before = [keras.ops.convert_to_numpy(bn.moving_mean).copy() for bn in norms]
    model(x, training=True)
    after = [keras.ops.convert_to_numpy(bn.moving_mean) for bn in norms]
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def _assert_grad_cam_target(model: keras.Model, backbone: str, classes: int) -> None:
    """Grad-CAM's automatic target layer (helpers.explain) is the nested backbone's last feature map;
    the network split there ends in the class logits (symbolic: nothing is computed)."""
    target = explain.target_layer(model)
    assert target.name == backbone
    assert tuple(target.to_map.output.shape) == tuple(model.get_layer(backbone).output.shape), backbone
    assert tuple(target.from_map.output.shape) == (None, classes), backbone


def test_every_backbone_builds_and_outputs_probabilities():
    for name, spec in BACKBONES.items():
        if spec.written_here:
            continue  # built, run, saved and reloaded in test_custom_backbones_save_reload...
        size = max(32, spec.min_input_size)
        model = build_classifier(name, input_shape=(size, size, 3), num_classes=3, seed=1)
        assert model.name == f"{name}_paper000"
        assert model.get_layer(name).name == name  # nested backbone named after its key
        proba = keras.ops.convert_to_numpy(model(_images(2, size), training=False))
        assert proba.shape == (2, 3), name
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5, err_msg=name)
        assert spec.name == name and callable(spec.preprocess_input)
        assert len(spec.imagenet_files) == 1 and spec.weights_base_url  # every backbone has ImageNet weights
        _assert_grad_cam_target(model, name, 3)


def test_paper000_head_layers():
    model = build_classifier("mobilenetv3small", input_shape=(32, 32, 3), seed=0)
    kinds = [type(layer).__name__ for layer in model.layers[3:]]  # image, normalisation, backbone
    assert kinds == ["GlobalAveragePooling2D", "BatchNormalization", "Dense", "Dense",
                     "Dropout", "Dense"]
    assert model.get_layer("paper000_dropout").rate == 0.5
    assert model.get_layer("paper000_output").activation.__name__ == "softmax"
    assert [model.get_layer(f"paper000_fc{i}").units for i in (1, 2)] == list(
        models.PAPER000_FC_UNITS)
    assert set(HEADS) == {"paper000", "paper001", "paper002", "paper003", "paper004"}


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


@pytest.mark.parametrize("freeze", ["all", -1, 10_000, True, 1.5, "top-x", "top--1"])
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
    # one file per backbone, its 224 px weights, at any input size (MobileNetV2's 96-192 px
    # variants are separate trainings, not used)
    for shape in ((224, 224, 3), (128, 128, 3), (96, 96, 3), (128, 160, 3)):
        assert imagenet_file_name("mobilenetv2", shape) == MOBILENETV2_224
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
    monkeypatch.setattr(registry, "_download_imagenet_file", refuse)
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


# ---------------------------------------------------------------------------------------------
# The three networks written here: AlexNet, SqueezeNet 1.1, GoogLeNet
# ---------------------------------------------------------------------------------------------
SQUEEZENET_FILE = SHARED_KERAS_CACHE / "models" / models.SQUEEZENET_IMAGENET_FILE


@pytest.mark.parametrize("name, published", [
    ("alexnet", 61_100_840),     # torchvision AlexNet_Weights.IMAGENET1K_V1 num_params
    ("squeezenet", 1_235_496),   # torchvision SqueezeNet1_1_Weights.IMAGENET1K_V1 num_params
    ("googlenet", 6_624_904),    # torchvision GoogLeNet_Weights.IMAGENET1K_V1 num_params (no aux)
])
def test_published_parameter_counts_with_imagenet_top(name, published):
    assert models.count_parameters(name) == published == models.PUBLISHED_PARAMETERS[name]


def test_parameter_counts_without_top_and_of_a_keras_network():
    # SqueezeNet's top is conv10 alone: 512 * 1000 + 1000 parameters
    assert models.count_parameters("squeezenet", include_top=False) == 1_235_496 - 513_000
    # AlexNet's top is fc6, fc7, fc8 on the 6x6x256 features
    top = (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert models.count_parameters("alexnet", include_top=False) == 61_100_840 - top
    # batch-norm moving statistics are not counted: MobileNetV3Small's learnable weights only
    built = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3),
                                                include_top=False)
    moving = sum(2 * l.moving_mean.shape[0] for l in built.layers
                 if isinstance(l, keras.layers.BatchNormalization))
    assert models.count_parameters("mobilenetv3small", include_top=False,
                                   input_shape=(32, 32, 3)) == built.count_params() - moving


@pytest.mark.parametrize("name, size, expected", [
    ("alexnet", 227, (6, 6, 256)), ("alexnet", 224, (6, 6, 256)), ("alexnet", 63, (1, 1, 256)),
    ("squeezenet", 227, (13, 13, 512)), ("squeezenet", 31, (1, 1, 512)),
    ("googlenet", 224, (7, 7, 1024)), ("googlenet", 32, (1, 1, 1024)),
])
def test_feature_map_shapes(name, size, expected):
    base = build_backbone(name, weights=None, input_shape=(size, size, 3))
    assert tuple(base.output_shape[1:]) == expected and base.name == name


@pytest.mark.parametrize("name, minimum", [("alexnet", 63), ("squeezenet", 31)])
def test_minimum_input_is_exact(name, minimum):
    assert BACKBONES[name].min_input_size == minimum
    with pytest.raises(ValueError, match=str(minimum)):
        build_backbone(name, weights=None, input_shape=(minimum - 1, minimum - 1, 3))
    with pytest.raises(ValueError):  # the network itself cannot take it either
        BACKBONES[name].constructor(input_shape=(minimum - 1, minimum - 1, 3))


def test_architectures_follow_their_definitions():
    alexnet = build_backbone("alexnet", weights=None, input_shape=(227, 227, 3))
    convs = [l for l in alexnet.layers if isinstance(l, keras.layers.Conv2D)]
    assert [(l.filters, l.kernel_size[0], l.strides[0]) for l in convs] == [
        (64, 11, 4), (192, 5, 1), (384, 3, 1), (256, 3, 1), (256, 3, 1)]

    googlenet = build_backbone("googlenet", weights=None, input_shape=(64, 64, 3))
    concats = [l.name for l in googlenet.layers if isinstance(l, keras.layers.Concatenate)]
    assert concats == [f"inception{k}_concat" for k in
                       ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    norms = [l for l in googlenet.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(norms) == 3 + 9 * 6 and all(l.epsilon == 0.001 for l in norms)
    assert not any(isinstance(l, keras.layers.Dense) for l in googlenet.layers)  # no aux heads

    squeezenet = build_backbone("squeezenet", weights=None, input_shape=(64, 64, 3))
    with_weights = [l.name for l in squeezenet.layers if l.weights]
    assert with_weights[0] == "conv1" and len(with_weights) == 1 + 8 * 3
    assert {"fire2_squeeze1x1", "fire2_expand1x1", "fire2_expand3x3", "fire9_expand3x3",
            "fire5_concat", "pool3", "pool5"} <= {l.name for l in squeezenet.layers}


def test_preprocessing_modes():
    x = np.full((1, 2, 2, 3), 255.0, dtype="float32")
    torch_style = BACKBONES["alexnet"].preprocess_input(x.copy())
    np.testing.assert_allclose(torch_style[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-5)
    # GoogLeNet's torchvision weights are used with transform_input: [-1, 1] ("tf")
    np.testing.assert_allclose(BACKBONES["googlenet"].preprocess_input(x.copy()), 1.0)
    rgb = np.zeros((1, 1, 1, 3), dtype="float32")
    rgb[..., 0] = 200.0  # red
    caffe = BACKBONES["squeezenet"].preprocess_input(rgb)
    np.testing.assert_allclose(caffe[0, 0, 0], [-103.939, -116.779, 200 - 123.68], rtol=1e-5)


@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_imagenet_unavailable_says_which_file_to_put_where(name, tmp_path, monkeypatch):
    from helpers import downloads, torchvision_weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(downloads, "fetch", offline)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_classifier(name, weights="imagenet", input_shape=(64, 64, 3))
    message = str(caught.value)
    published = torchvision_weights.TORCHVISION_FILES[name].file_name
    assert published in message and str(tmp_path / "models") in message and "weights=None" in message
    assert "network is unreachable" in message
    assert BACKBONES[name].display_name in message
    assert describe_weights("imagenet", name) == "imagenet (torchvision, converted)"
    assert describe_weights("imagenet", "vgg16") == "imagenet"


def test_squeezenet_imagenet_url_is_the_ports_release(tmp_path, monkeypatch):
    requested = []

    def record(file_name, url, models_dir):
        requested.append((file_name, url, models_dir))
        raise OSError("offline")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(registry, "_download_imagenet_file", record)
    with pytest.raises(WeightsUnavailableError, match="offline"):
        build_backbone("squeezenet", weights="imagenet", input_shape=(64, 64, 3))
    assert requested == [(
        "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/"
        "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5", tmp_path / "models")]


def _write_legacy_h5(path: Path, model: keras.Model, *, drop: str = "",
                     reshape: str = "") -> None:
    """A Keras 2 style weights file (attrs layer_names / weight_names, "/" in names)."""
    import h5py

    with h5py.File(path, "w") as handle:
        names = []
        for layer in model.layers:
            if layer.name == drop:
                continue
            legacy = layer.name.replace("_", "/", 1) if "fire" in layer.name else layer.name
            names.append(legacy.encode())
            group = handle.create_group(legacy)
            weight_names = []
            for index, weight in enumerate(layer.weights):
                value = keras.ops.convert_to_numpy(weight)
                if layer.name == reshape and index == 0:
                    value = value[..., :-1]
                key = f"{legacy}_1/{['kernel', 'bias'][index]}:0"
                group.create_dataset(key, data=value)
                weight_names.append(key.encode())
            group.attrs["weight_names"] = weight_names
        handle.attrs["layer_names"] = names
        handle.attrs["backend"] = b"tensorflow"


def test_legacy_h5_loader_assigns_by_name_and_reports_problems(tmp_path):
    keras.utils.set_random_seed(1)
    source = build_backbone("squeezenet", weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "legacy.h5"
    _write_legacy_h5(path, source)
    keras.utils.set_random_seed(2)
    loaded = build_backbone("squeezenet", weights=path, input_shape=(32, 32, 3))
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)

    missing = tmp_path / "missing.h5"
    _write_legacy_h5(missing, source, drop="fire4_expand3x3")
    with pytest.raises(ValueError, match=r"missing\.h5.*fire4_expand3x3"):
        build_backbone("squeezenet", weights=missing, input_shape=(32, 32, 3))
    wrong = tmp_path / "wrong.h5"
    _write_legacy_h5(wrong, source, reshape="fire7_squeeze1x1")
    with pytest.raises(ValueError, match=r"wrong\.h5.*fire7_squeeze1x1.*shapes"):
        models.load_h5_weights_by_name(source, wrong)
    keras3 = tmp_path / "new.weights.h5"
    source.save_weights(str(keras3))
    with pytest.raises(ValueError, match="legacy"):
        models.load_h5_weights_by_name(source, keras3)


def test_squeezenet_imagenet_file_loads_layer_by_layer(tmp_path, monkeypatch):
    if not SQUEEZENET_FILE.is_file():
        pytest.skip(f"no offline SqueezeNet weights at {SQUEEZENET_FILE}")
    h5py = pytest.importorskip("h5py")
    (tmp_path / "models").mkdir()
    shutil.copy(SQUEEZENET_FILE, tmp_path / "models")  # a copy, never a link
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    base = build_backbone("squeezenet", weights="imagenet", input_shape=(227, 227, 3))
    again = build_backbone("squeezenet", weights="imagenet", input_shape=(227, 227, 3))
    checked = 0
    with h5py.File(SQUEEZENET_FILE, "r") as handle:
        for layer in base.layers:
            if not layer.weights:
                continue
            group = handle[layer.name.replace("_", "/", 1)]
            names = [n.decode() for n in group.attrs["weight_names"]]
            for weight, name in zip(layer.weights, names):
                np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), group[name])
            checked += 1
    assert checked == 25
    x = BACKBONES["squeezenet"].preprocess_input(_images(2, 227, seed=3) * 127.5 + 127.5)
    first = keras.ops.convert_to_numpy(base(x))
    np.testing.assert_array_equal(first, keras.ops.convert_to_numpy(again(x)))
    assert first.shape == (2, 13, 13, 512) and np.isfinite(first).all() and first.max() > 0


CUSTOM_BACKBONES = [("alexnet", 63), ("squeezenet", 32), ("googlenet", 32)]
"""The networks written in helpers.models, at their smallest input (the others are walked above)."""


def test_custom_backbone_list_is_every_network_written_here():
    assert {name for name, _ in CUSTOM_BACKBONES} == {name for name, spec in BACKBONES.items() if spec.written_here}


@pytest.mark.parametrize("name, size", CUSTOM_BACKBONES)
def test_custom_backbones_save_reload_and_weights_files(name, size, tmp_path):
    model = build_classifier(name, input_shape=(size, size, 3), freeze="none", num_classes=3,
                             seed=0)
    assert model.name == f"{name}_paper000" and model.get_layer(name).name == name
    _assert_grad_cam_target(model, name, 3)
    x = _images(2, size)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    assert expected.shape == (2, 3)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x, training=False)),
                               expected, rtol=1e-6, atol=1e-7)
    weights = tmp_path / f"{name}.weights.h5"
    model.get_layer(name).save_weights(str(weights))
    from_file = build_classifier(name, weights=weights, input_shape=(size, size, 3), seed=5)
    for a, b in zip(model.get_layer(name).get_weights(),
                    from_file.get_layer(name).get_weights()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Heads and freezing
# ---------------------------------------------------------------------------------------------


def _head_kinds(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers[3:]]  # after image, normalisation, backbone


def test_paper001_head_replaces_the_last_layer():
    squeeze = build_classifier("squeezenet", head="paper001", input_shape=(32, 32, 3),
                               num_classes=3, seed=0)
    conv10 = squeeze.get_layer("paper001_conv10")
    assert conv10.filters == 3 and conv10.kernel_size == (1, 1)
    assert _head_kinds(squeeze) == ["Dropout", "Conv2D", "Activation",
                                    "GlobalAveragePooling2D", "Activation"]
    assert squeeze.get_layer("paper001_output").activation.__name__ == "softmax"

    alex = build_classifier("alexnet", head="paper001", input_shape=(63, 63, 3), num_classes=3,
                            seed=0)
    assert [alex.get_layer(f"paper001_fc{i}").units for i in (6, 7)] == [4096, 4096]
    assert alex.get_layer("paper001_output").units == 3
    other = build_classifier("mobilenetv3small", head="paper001", input_shape=(32, 32, 3),
                             seed=0)
    assert _head_kinds(other) == ["GlobalAveragePooling2D", "Dense"]


@pytest.mark.parametrize("backbone, units", [
    ("vgg16", [384, 64]), ("mobilenetv3large", [256, 32]), ("resnet50v2", [256, 32, 32]),
    ("squeezenet", [384, 64]),
])
def test_paper002_head_follows_the_reports_code(backbone, units):
    features = keras.Input((2, 2, 8))  # the head alone: its layers depend on the backbone name
    model = keras.Model(features, HEADS["paper002"](features, num_classes=2, seed=0,
                                                    backbone=backbone), name="x_paper002")
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [l.units for l in dense] == units + [1]
    assert dense[-1].name == "paper002_sigmoid" and dense[-1].activation.__name__ == "sigmoid"
    rates = [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert rates == ([0.4, 0.3, 0.2] if len(units) == 2 else [0.4, 0.2])
    assert models.output_kind(model) == "sigmoid" and models.head_name(model) == "paper002"
    three = HEADS["paper002"](features, num_classes=3, backbone=backbone)
    assert tuple(three.shape) == (None, 3)


def test_paper002_classifier_outputs_one_probability():
    model = build_classifier("squeezenet", head="paper002", input_shape=(32, 32, 3), seed=0)
    assert model.output_shape == (None, 1) and model.name == "squeezenet_paper002"
    assert model.get_layer("paper002_fc1").units == 384


def test_paper003_and_paper004_heads():
    three = build_classifier("squeezenet", head="paper003", input_shape=(32, 32, 3),
                             num_classes=3, seed=0)
    assert three.output_shape == (None, 3) and models.output_kind(three) == "softmax"
    assert _head_kinds(three) == ["GlobalAveragePooling2D"] + [
        "Dense", "BatchNormalization", "Activation", "Dropout"] * 2 + ["Dense"]

    binary = build_classifier("squeezenet", head="paper004", input_shape=(32, 32, 3), seed=0)
    assert _head_kinds(binary) == ["GlobalAveragePooling2D", "Dense", "Dropout", "Activation",
                                   "Dense"]
    assert binary.get_layer("paper004_fc").units == 1024
    assert binary.get_layer("paper004_dropout").rate == 0.4
    assert binary.get_layer("paper004_sigmoid").units == 1 and binary.output_shape == (None, 1)
    proba = keras.ops.convert_to_numpy(binary(_images(3, 32), training=False))
    assert ((proba > 0) & (proba < 1)).all()
    wider = build_classifier("squeezenet", head="paper004", input_shape=(32, 32, 3),
                             num_classes=3, seed=0)
    assert wider.get_layer("paper004_output").units == 3  # more classes: softmax instead


def test_freeze_top_n_string_equals_int_and_set_freeze_refreezes():
    by_int = build_classifier("squeezenet", input_shape=(32, 32, 3), freeze=4, seed=0)
    by_text = build_classifier("squeezenet", input_shape=(32, 32, 3), freeze="top-4", seed=0)
    flags = [l.trainable for l in by_int.get_layer("squeezenet").layers]
    assert flags == [l.trainable for l in by_text.get_layer("squeezenet").layers]
    assert sum(flags) == 4 and flags[-4:] == [True] * 4
    base = models.find_backbone(by_text)
    assert base.name == "squeezenet"
    models.set_freeze(by_text, "none")
    assert all(l.trainable for l in base.layers)
    models.set_freeze(by_text, "base")
    assert base.trainable_weights == [] and by_text.trainable_weights
    with pytest.raises(ValueError, match="no nested backbone"):
        models.find_backbone(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]))


def test_outputs_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for head in ("paper000", "paper001", "paper004"):
            model = build_classifier("squeezenet", head=head, input_shape=(32, 32, 3), seed=0)
            assert model.layers[-1].compute_dtype == "float32", head
            assert model.get_layer("squeezenet").layers[1].compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_weights_command_lists_every_backbones_file(tmp_path, monkeypatch, capsys):
    from helpers.__main__ import main

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / MOBILENETV2_224).write_bytes(b"")  # only "is it there" is asked
    assert main(["weights", "list"]) == 1  # some are missing
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Keras' cache: {tmp_path / 'models'}"
    rows = {line.split()[0]: line.split()[-1] for line in lines[1:]}
    assert set(rows) == set(BACKBONES) and rows["mobilenetv2"] == "cached" and rows["alexnet"] == "missing"
