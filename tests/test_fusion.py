"""Tests of helpers.models.build_fusion: paper 003's ResNet50 + AlexNet fusion network."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import models
from helpers.models import (
    ALEXNET_BLOCKS,
    FUSION_NAME,
    RESNET50_STAGES,
    build_fusion,
    describe_weights,
    fusion_min_input_size,
    pathway,
    registry,
)

SIZE = 64
HEAD_LAYERS = ["fusion_refine1_conv", "fusion_refine1_bn", "fusion_refine1_relu", "fusion_flatten",
               "fusion_fc1", "fusion_bn1", "fusion_relu1", "fusion_dropout1",
               "fusion_fc2", "fusion_bn2", "fusion_relu2", "fusion_dropout2", "fusion_output"]


def _images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


def _numpy(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


def _shape(model: keras.Model, layer_name: str) -> tuple:
    return tuple(model.get_layer(layer_name).output.shape)


@pytest.fixture(scope="module")
def fusion() -> keras.Model:
    """The default fusion at 64x64, seeded (read only: tests must not train it)."""
    return build_fusion(input_shape=(SIZE, SIZE, 3), seed=0)


def test_stage_layer_names_exist_in_the_networks():
    resnet = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    assert [resnet.get_layer(name).name for name in RESNET50_STAGES.values()] == list(
        RESNET50_STAGES.values())
    alexnet = models.AlexNet(input_shape=(63, 63, 3))
    assert [alexnet.get_layer(name).name for name in ALEXNET_BLOCKS.values()] == list(
        ALEXNET_BLOCKS.values())
    assert FUSION_NAME == "resnet50+alexnet"


def test_fusion_layer_structure(fusion):
    assert fusion.name == "fusion_resnet50_alexnet"
    assert fusion.layers[0].name == "image" and len(fusion.inputs) == 1
    resnet, alexnet = fusion.get_layer("resnet50_to_stage3"), fusion.get_layer("alexnet_to_block2")
    # ResNet50 stage 3 at 64 px: 8x8x512; AlexNet pool2: 3x3x192 -> ResNet map resized to 3x3
    assert tuple(resnet.output.shape) == (None, 8, 8, 512)
    assert tuple(alexnet.output.shape) == (None, 3, 3, 192)
    assert resnet.layers[-1].name == RESNET50_STAGES[3]
    assert alexnet.layers[-1].name == ALEXNET_BLOCKS[2]
    resize = fusion.get_layer("resnet50_resize")
    assert isinstance(resize, keras.layers.Resizing) and resize.interpolation == "bilinear"
    assert _shape(fusion, "resnet50_resize") == (None, 3, 3, 512)
    assert "alexnet_resize" not in [layer.name for layer in fusion.layers]  # already the smaller
    assert _shape(fusion, "fusion_concat") == (None, 3, 3, 512 + 192)
    assert _shape(fusion, "fusion_refine1_conv") == (None, 3, 3, models.FUSION_REFINE_FILTERS[0])
    assert fusion.get_layer("fusion_refine1_conv").kernel_size == (3, 3)
    assert _shape(fusion, "fusion_flatten") == (None, 3 * 3 * 256)
    assert [fusion.get_layer(f"fusion_fc{i}").units for i in (1, 2)] == list(
        models.PAPER003_FC_UNITS)
    assert fusion.get_layer("fusion_dropout1").rate == models.PAPER003_DROPOUT
    assert [layer.name for layer in fusion.layers[-len(HEAD_LAYERS):]] == HEAD_LAYERS
    output = fusion.get_layer("fusion_output")
    assert output.activation.__name__ == "softmax" and output.dtype_policy.compute_dtype == "float32"
    assert fusion.output_shape == (None, 3)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in fusion.layers)
    proba = _numpy(fusion(_images(2), training=False))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_resize_goes_to_the_smaller_map_either_way():
    # ResNet50 stage 5 at 64 px is 2x2, smaller than AlexNet's pool2 (3x3): AlexNet is resized
    model = build_fusion(resnet_stage=5, alexnet_blocks=2, input_shape=(SIZE, SIZE, 3), seed=0,
                         num_classes=2)
    assert _shape(model, "alexnet_resize") == (None, 2, 2, 192)
    assert "resnet50_resize" not in [layer.name for layer in model.layers]
    assert _shape(model, "fusion_concat") == (None, 2, 2, 2048 + 192)
    assert model.output_shape == (None, 2)


@pytest.mark.parametrize("name, map_shape", [("resnet50", (8, 8, 512)), ("alexnet", (3, 3, 192))])
def test_single_pathway_baseline_has_the_same_refinement_and_head(name, map_shape, fusion):
    model = build_fusion(pathways=(name,), input_shape=(SIZE, SIZE, 3), seed=0)
    assert model.name == f"pathway_{name}"
    names = [layer.name for layer in model.layers]
    assert "fusion_concat" not in names and not any(n.endswith("_resize") for n in names)
    assert names[-len(HEAD_LAYERS):] == HEAD_LAYERS and len(names) == 3 + len(HEAD_LAYERS)
    assert names[1] == f"{name}_normalisation"
    assert _shape(model, "fusion_refine1_conv") == (None, *map_shape[:2], 256)
    for layer_name in HEAD_LAYERS[4:]:  # from the first FC on, shapes equal the fusion's
        assert _shape(model, layer_name) == _shape(fusion, layer_name), layer_name


@pytest.mark.parametrize("kwargs, match", [
    ({"pathways": ("resnet50", "vgg16")}, r"unknown fusion pathway 'vgg16'.*resnet50, alexnet"),
    ({"pathways": ("resnet50", "resnet50")}, "two different"),
    ({"pathways": ()}, "one or two"),
    ({"resnet_stage": 1}, r"stage 1 .*resnet50.*2, 3, 4, 5"),
    ({"alexnet_blocks": 6}, r"block 6 .*alexnet.*1, 2, 3, 4, 5"),
    ({"freeze": "top-3"}, "freeze"),
    ({"num_classes": 1}, "num_classes"),
    ({"input_shape": (62, 62, 3)}, r"AlexNet.*63"),
])
def test_bad_arguments_raise_valueerror(kwargs, match):
    options = {"input_shape": (SIZE, SIZE, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        build_fusion(**options)


def test_pathway_names_and_errors():
    cut = pathway("alexnet", stage=3, weights=None, input_shape=(SIZE, SIZE, 3))
    assert cut.name == "alexnet_to_block3" and tuple(cut.output.shape) == (None, 3, 3, 384)
    with pytest.raises(ValueError, match="unknown fusion pathway 'googlenet'"):
        pathway("googlenet", stage=2, weights=None, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match=r"stage 9.*2, 3, 4, 5"):
        pathway("resnet50", stage=9, weights=None, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        pathway("alexnet", stage=2, weights="missing.h5", input_shape=(SIZE, SIZE, 3))


def test_min_input_size_and_single_pathway_minimum():
    assert fusion_min_input_size() == 63
    assert fusion_min_input_size(("resnet50",)) == 32
    with pytest.raises(ValueError, match="unknown fusion pathway"):
        fusion_min_input_size(("vgg16",))
    small = build_fusion(pathways=("resnet50",), input_shape=(32, 32, 3), seed=0)  # no AlexNet
    assert small.output_shape == (None, 3)


def test_same_seed_same_weights_other_seed_other_weights(fusion):
    again = build_fusion(input_shape=(SIZE, SIZE, 3), seed=0)
    other = build_fusion(input_shape=(SIZE, SIZE, 3), seed=1)
    first = fusion.get_weights()
    assert len(first) == len(again.get_weights())
    for a, b in zip(first, again.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other.get_weights()))
    x = _images(3)
    np.testing.assert_array_equal(_numpy(fusion(x, training=False)),
                                  _numpy(again(x, training=False)))


def test_save_and_reload_give_identical_predictions(fusion, tmp_path):
    path = tmp_path / "fusion.keras"
    keras.saving.save_model(fusion, path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.name == fusion.name
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in fusion.layers]
    x = _images(3, seed=4)
    np.testing.assert_allclose(_numpy(reloaded(x, training=False)),
                               _numpy(fusion(x, training=False)), rtol=1e-6, atol=1e-7)


def test_freeze_base_leaves_only_refinement_and_head_trainable():
    model = build_fusion(input_shape=(SIZE, SIZE, 3), freeze="base", seed=0)
    for name in ("resnet50_to_stage3", "alexnet_to_block2"):
        nested = model.get_layer(name)
        assert not nested.trainable and nested.trainable_weights == []
        assert not any(layer.trainable for layer in nested.layers)
    trainable_paths = [weight.path for weight in model.trainable_weights]
    assert trainable_paths and all(path.startswith("fusion_") for path in trainable_paths)
    head_kernels = {"fusion_refine1_conv", "fusion_fc1", "fusion_fc2", "fusion_output"}
    assert head_kernels <= {path.split("/")[0] for path in trainable_paths}
    # frozen batch norm runs in inference mode: training=True leaves its statistics alone
    norms = [layer for layer in model.get_layer("resnet50_to_stage3").layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    before = [_numpy(bn.moving_mean).copy() for bn in norms]
    model(_images(4), training=True)
    for old, bn in zip(before, norms):
        np.testing.assert_array_equal(old, _numpy(bn.moving_mean))
    everything = build_fusion(input_shape=(SIZE, SIZE, 3), freeze="none", seed=0)
    assert len(everything.trainable_weights) > len(model.trainable_weights)
    assert all(layer.trainable for layer in everything.get_layer("resnet50_to_stage3").layers)


def _resnet_norms(model: keras.Model, name: str = "resnet50_to_stage3") -> list:
    return [layer for layer in model.get_layer(name).layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def _write_legacy_h5(path: Path, model: keras.Model) -> None:
    """A Keras 2 style weights file as Keras' cache holds them (read by layer order)."""
    import h5py

    with h5py.File(path, "w") as handle:
        names = []
        for layer in model.layers:
            names.append(layer.name.encode())
            group = handle.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            weight_names = []
            for weight in weights:
                key = f"{layer.name}/{weight.name}:0"
                group.create_dataset(key, data=_numpy(weight))
                weight_names.append(key.encode())
            group.attrs["weight_names"] = weight_names
        handle.attrs["layer_names"] = names
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.2.4"


def test_weights_none_lowers_resnet_batchnorm_momentum(fusion):
    norms = _resnet_norms(fusion)
    assert norms and all(bn.momentum == models.SCRATCH_BN_MOMENTUM for bn in norms)


def test_imagenet_weights_load_into_both_pathways_from_keras_cache(tmp_path, monkeypatch):
    from helpers import torchvision_weights

    keras.utils.set_random_seed(123)
    source = keras.applications.ResNet50(weights=None, include_top=False,
                                         input_shape=(32, 32, 3))  # the weights fit any size
    alex_source = models.AlexNet(include_top=False, input_shape=(SIZE, SIZE, 3))
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    _write_legacy_h5(models_dir / models.imagenet_file_name("resnet50"), source)
    _write_legacy_h5(models_dir / models.imagenet_file_name("alexnet"), alex_source)  # as if converted
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("the cached file must be used, no download")

    monkeypatch.setattr(registry, "_download_imagenet_file", no_download)
    monkeypatch.setattr(torchvision_weights, "_download", no_download)
    model = build_fusion(weights="imagenet", input_shape=(SIZE, SIZE, 3), seed=0)
    checked = 0
    for cut, original in (("resnet50_to_stage3", source), ("alexnet_to_block2", alex_source)):
        for layer in model.get_layer(cut).layers:
            if not layer.weights:
                continue
            for mine, theirs in zip(layer.weights, original.get_layer(layer.name).weights):
                np.testing.assert_array_equal(_numpy(mine), _numpy(theirs))
                checked += 1
    assert checked > 100  # every weight of both pathways came from the files
    assert all(bn.momentum == 0.99 for bn in _resnet_norms(model))  # pretrained: Keras' momentum
    assert model.get_layer("resnet50_normalisation").mode == "caffe"
    assert model.get_layer("alexnet_normalisation").mode == "torch"
    assert describe_weights("imagenet", FUSION_NAME) == (
        "imagenet (ResNet50 pathway), imagenet (torchvision, converted) (AlexNet pathway)")
    assert describe_weights(None, FUSION_NAME) == "random init (weights=None)"


def test_architecture_figure_without_graphviz_returns_none(fusion, tmp_path):
    try:
        import pydot  # noqa: F401
        pytest.skip("pydot is installed: the figure may really be drawn")
    except ImportError:
        pass
    target = tmp_path / "figures" / "fusion.png"
    assert models.architecture_figure(fusion, target) is None
    assert not target.exists()
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_one_epoch_of_training_is_finite_and_updates_both_pathways():
    model = build_fusion(input_shape=(SIZE, SIZE, 3), seed=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], run_eagerly=True)  # tracing ResNet50 costs 10 s
    resnet_conv = model.get_layer("resnet50_to_stage3").get_layer("conv1_conv").kernel
    alex_conv = model.get_layer("alexnet_to_block2").get_layer("conv1").kernel
    before = [_numpy(resnet_conv).copy(), _numpy(alex_conv).copy()]
    labels = np.random.default_rng(0).integers(0, 3, 16)
    history = model.fit(_images(16, seed=9), labels, epochs=1, batch_size=16, verbose=0)
    loss = history.history["loss"][-1]
    assert np.isfinite(loss)
    assert not np.array_equal(before[0], _numpy(resnet_conv))  # gradients pass the resize
    assert not np.array_equal(before[1], _numpy(alex_conv))
