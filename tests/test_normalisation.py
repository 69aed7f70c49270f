"""Input scaling travels with the weights: the model's normalisation layer, per backbone and per paper.

The photo test needs ImageNet weights, which the project never downloads in its tests: it uses
``../shared/weights`` (a copy of Keras' cache with MobileNetV2 and three labelled photographs)
and skips with the reason where that folder is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import models, preprocessing
from helpers.models import BACKBONES, NORMALISATIONS, ImageNormalisation

from conftest import SHARED

WEIGHTS = SHARED / "weights"
MOBILENETV2_TOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"


def clean_batch(seed: int = 0, shape: tuple[int, ...] = (3, 9, 7, 3)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def normalise(mode: str, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(ImageNormalisation(mode)(x))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_in_model_normalisation_equals_keras_preprocess_input(name: str) -> None:
    """With ImageNet weights the model's first layer computes what keras.applications' own
    ``preprocess_input`` computes on the 0-255 image (MobileNetV3's is the identity: its built-in
    rescaling layer, kept in the base, does the rest)."""
    spec = BACKBONES[name]
    x = clean_batch(seed=len(name))
    ours = normalise(models.input_normalisation(name, "imagenet"), x)
    theirs = np.asarray(spec.preprocess_input(x.copy() * 255.0))
    assert np.allclose(ours, theirs, atol=1e-3, rtol=1e-5), name


def test_each_backbone_names_its_convention() -> None:
    expected = {"vgg16": "caffe", "vgg19": "caffe", "resnet50": "caffe", "resnet50v2": "tf",
                "mobilenetv2": "tf", "mobilenetv3small": "raw255", "mobilenetv3large": "raw255",
                "densenet121": "torch", "inceptionv3": "tf", "alexnet": "torch", "squeezenet": "caffe",
                "googlenet": "tf"}
    assert {name: spec.imagenet_normalisation for name, spec in BACKBONES.items()} == expected


def test_paper_normalisations_per_image() -> None:
    x = clean_batch(seed=3) * 0.5 + 0.2
    zero_mean = normalise("zero_mean", x)
    assert np.allclose(zero_mean.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    assert np.allclose(zero_mean.std(axis=(1, 2, 3)), 1, atol=1e-4)
    centred = normalise("mean_normalisation", x)
    assert np.allclose(centred.mean(axis=(1, 2, 3)), 0, atol=1e-6)
    assert np.allclose(centred.std(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), rtol=1e-5)
    decimal = normalise("decimal_scaling", x)  # 8-bit values (at most 255) divided by 10**3
    assert np.allclose(decimal, x * 255 / 1000, rtol=1e-5)
    assert np.array_equal(normalise("unit", x), x)
    assert np.allclose(normalise("zero_mean", np.full((1, 4, 4, 3), 0.5, np.float32)), 0)  # no NaN
    assert np.array_equal(normalise("decimal_scaling", np.zeros((1, 2, 2, 3), np.float32)), np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="unknown normalisation 'z_score'"):
        ImageNormalisation("z_score")


def test_float16_input_is_computed_in_float32() -> None:
    half = clean_batch(seed=4).astype(np.float16)  # what the cache holds
    for mode in NORMALISATIONS:
        out = normalise(mode, half)
        assert out.dtype == np.float32 and np.allclose(out, normalise(mode, half.astype(np.float32))), mode


def test_settings_pick_the_weights_convention_or_the_papers() -> None:
    from helpers import plan

    imagenet = plan.resolve_settings("smoke", study="000", backbone="vgg16", weights="imagenet")
    scratch = plan.resolve_settings("smoke", study="000", backbone="vgg16", weights="none")
    paper003 = plan.resolve_settings("smoke", study="003", backbone="resnet50", weights="none")
    chosen = plan.resolve_settings("smoke", study="003", backbone="resnet50", weights="none",
                                   normalisation="decimal_scaling")
    assert (imagenet.normalisation, scratch.normalisation) == ("imagenet", "zero_mean")
    assert (paper003.normalisation, chosen.normalisation) == ("mean_normalisation", "decimal_scaling")


def test_classifier_normalises_inside_and_a_saved_model_keeps_it(tmp_path: Path) -> None:
    model = models.build_classifier("squeezenet", head="paper001", weights=None, freeze="none",
                                    input_shape=(40, 40, 3), num_classes=2, seed=1, normalisation="zero_mean")
    assert model.get_layer("normalisation").mode == "zero_mean"
    assert models.build_classifier("squeezenet", input_shape=(40, 40, 3)).get_layer("normalisation").mode == "unit"
    x = clean_batch(seed=5, shape=(4, 40, 40, 3))
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    assert reloaded.get_layer("normalisation").mode == "zero_mean"
    assert np.allclose(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


def test_mobilenetv3_keeps_its_rescaling_only_for_its_imagenet_convention() -> None:
    def rescalings(model: keras.Model) -> int:
        base = models.find_backbone(model)
        return sum(isinstance(layer, keras.layers.Rescaling) for layer in base.layers)

    own = models.build_classifier("mobilenetv3small", weights=None, input_shape=(32, 32, 3), normalisation="imagenet")
    paper = models.build_classifier("mobilenetv3small", weights=None, input_shape=(32, 32, 3),
                                    normalisation="zero_mean")
    assert own.get_layer("normalisation").mode == "raw255" and rescalings(own) == 1
    assert rescalings(paper) == 0


def test_fusion_normalises_each_pathway_in_its_own_convention() -> None:
    fusion = models.build_fusion(weights=None, normalisation="imagenet", input_shape=(64, 64, 3), num_classes=2)
    assert fusion.get_layer("resnet50_normalisation").mode == "caffe"
    assert fusion.get_layer("alexnet_normalisation").mode == "torch"
    paper = models.build_fusion(weights=None, normalisation="mean_normalisation", input_shape=(64, 64, 3),
                                num_classes=2)
    assert {paper.get_layer(f"{p}_normalisation").mode for p in ("resnet50", "alexnet")} == {"mean_normalisation"}


@pytest.fixture()
def keras_cache(tmp_path: Path, monkeypatch) -> Path:
    """A copy (never a link) of ../shared/weights' Keras cache, with KERAS_HOME pointing at it."""
    source = WEIGHTS / "keras-cache" / "models"
    if not (source / MOBILENETV2_TOP).is_file() or not (WEIGHTS / "test-images").is_dir():
        pytest.skip(f"needs the offline ImageNet weights and photographs of {WEIGHTS} (absent here)")
    shutil.copytree(source, tmp_path / "models")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path / "models"


def _photo(name: str) -> np.ndarray:
    """A photograph through the project's own reading route: read in colour, resized (paper 002's
    colour preset: bilinear resize, [0, 1]) to 224 px."""
    image = preprocessing.read_image(WEIGHTS / "test-images" / name, color=True)
    return preprocessing.apply_preset(image, "paper002", image_size=224)


def test_imagenet_mobilenetv2_classifies_photos_through_the_models_own_normalisation(keras_cache: Path) -> None:
    """Fails if the scaling is wrong: the ImageNet MobileNetV2 *with* its top, fed clean [0, 1]
    images through its normalisation layer, names the cat and the parrot, and gives exactly the
    probabilities of keras.applications' documented route (preprocess_input on 0-255)."""
    labels = (WEIGHTS / "test-images" / "imagenet_labels.txt").read_text().splitlines()  # 0: background
    network = keras.applications.MobileNetV2(weights=str(keras_cache / MOBILENETV2_TOP))
    image = keras.Input((224, 224, 3))
    mode = models.input_normalisation("mobilenetv2", "imagenet")
    model = keras.Model(image, network(ImageNormalisation(mode)(image)))
    photos = np.stack([_photo("cat.bmp"), _photo("parrot.jpg")])
    probabilities = keras.ops.convert_to_numpy(model(photos))
    assert [labels[i + 1] for i in probabilities.argmax(axis=1)] == ["Egyptian cat", "macaw"]
    documented = keras.applications.mobilenet_v2.preprocess_input(photos.astype(np.float32) * 255.0)
    assert np.allclose(probabilities, keras.ops.convert_to_numpy(network(documented)), atol=1e-4)
    # another backbone's convention (caffe, VGG's) in front of the same weights: both wrong
    wrong = keras.Model(image, network(ImageNormalisation("caffe")(image)))
    assert not {labels[i + 1] for i in keras.ops.convert_to_numpy(wrong(photos)).argmax(axis=1)} & {
        "Egyptian cat", "macaw"}


def test_build_classifier_with_imagenet_weights_from_the_cache(keras_cache: Path) -> None:
    model = models.build_classifier("mobilenetv2", weights="imagenet", freeze="base", input_shape=(96, 96, 3),
                                    num_classes=2, seed=0)
    assert model.get_layer("normalisation").mode == "tf"
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    reference.load_weights(str(keras_cache / models.imagenet_file_name("mobilenetv2")))
    base = models.find_backbone(model)
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(), reference.get_weights()))
