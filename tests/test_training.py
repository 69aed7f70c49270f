"""Tests of helpers.training: determinism, checkpoints, history, optimisers, weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from helpers.models import build_classifier
from helpers.training import (
    BEST_MODEL_FILE,
    HISTORY_FILE,
    LOSSES,
    OPTIMISERS,
    ShuffledBatches,
    class_weights,
    compile_classifier,
    encode_labels,
    predict_proba,
    resolve_loss,
    set_determinism,
    train,
)

SIZE = 32


def bright_dark(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable toy problem: class 1 images are bright, class 0 dark (plus noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    level = np.where(y == 1, 0.6, -0.6)[:, None, None, None]
    x = level + rng.normal(0, 0.3, (n, SIZE, SIZE, 3))
    return x.astype("float32"), y.astype("int64")


def tiny_model(seed: int = 0) -> keras.Model:
    """A small CNN (fast to trace and train) for testing ``train`` itself."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2, seed=seed)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    return compile_classifier(keras.Model(inputs, outputs, name="tiny"), learning_rate=5e-2)


def run_once(run_dir: Path, seed: int = 3, epochs: int = 3, make_model=tiny_model, **options):
    x_train, y_train = bright_dark(24, seed=1)
    x_val, y_val = bright_dark(12, seed=2)
    model = make_model()
    history = train(model, x_train, y_train, x_val, y_val, epochs=epochs, batch_size=8,
                    run_dir=run_dir, seed=seed, verbose=0, **options)
    return model, history, predict_proba(model, x_val)


CROSS_PROCESS_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests_dir!r})
import numpy as np
from test_training import run_once
model, history, proba = run_once(Path({run_dir!r}))
history.to_csv({history_out!r}, index=False)
np.save({proba_out!r}, proba)
"""


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory):
    """``run_once`` in this process and in a fresh one, started first so that it runs meanwhile (it
    spends most of its time importing Keras): (model, history, proba, folder, the other process).
    This run writes ``folder/a``; the other writes ``folder/there``, its history and probabilities."""
    folder = tmp_path_factory.mktemp("seeded-run")
    script = CROSS_PROCESS_SCRIPT.format(
        tests_dir=str(Path(__file__).parent), run_dir=str(folder / "there"),
        history_out=str(folder / "history.csv"), proba_out=str(folder / "proba.npy"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(folder / "other.err", "w") as errors:
        other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=errors,
                                 text=True, env=env)
    try:
        model, history, proba = run_once(folder / "a")
        yield model, history, proba, folder, other
    finally:
        if other.poll() is None:
            other.kill()
        other.wait()


def test_training_is_deterministic_learns_and_writes_outputs(seeded_run, tmp_path):
    model, first, proba_first, folder, _ = seeded_run
    _, second, proba_second = run_once(tmp_path / "b")

    pd.testing.assert_frame_equal(first, second)
    np.testing.assert_array_equal(proba_first, proba_second)
    assert proba_first.dtype == np.float64 and proba_first.shape == (12, 2)
    assert list(first.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert first["epoch"].tolist() == [1, 2, 3]
    assert first["lr"].iloc[0] == pytest.approx(5e-2)
    assert first["val_accuracy"].iloc[-1] >= 0.9  # bright vs dark is easy

    for run_dir in (folder / "a", tmp_path / "b"):
        assert sorted(p.name for p in run_dir.iterdir()) == ["best.keras", "history.csv"]
    on_disk = pd.read_csv(folder / "a" / "history.csv")
    np.testing.assert_allclose(on_disk.to_numpy(), first.to_numpy())

    # the model ends with the best (lowest val_loss) epoch's weights, as saved
    best = keras.saving.load_model(folder / "a" / "best.keras")
    x_val, y_val = bright_dark(12, seed=2)
    np.testing.assert_allclose(predict_proba(best, x_val), proba_first, rtol=1e-6)
    loss_now = model.evaluate(x_val, y_val, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert loss_now == pytest.approx(first["val_loss"].min(), rel=1e-4)


def test_best_epoch_is_restored_not_last(tmp_path):
    """Validation labels flipped: val_loss worsens as the model learns; epoch 1 is best."""
    x_train, y_train = bright_dark(24, seed=1)
    x_val, y_val = bright_dark(12, seed=2)
    model = tiny_model()
    history = train(model, x_train, y_train, x_val, 1 - y_val, epochs=3, batch_size=8,
                    run_dir=tmp_path, seed=0, verbose=0)
    assert history["val_loss"].idxmin() == 0 and history["val_loss"].iloc[-1] > history[
        "val_loss"].iloc[0]
    loss_now = model.evaluate(x_val, 1 - y_val, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert loss_now == pytest.approx(history["val_loss"].iloc[0], rel=1e-4)


def test_training_is_deterministic_across_processes(seeded_run):
    _, history_here, proba_here, folder, other = seeded_run
    assert other.wait(timeout=120) == 0, (folder / "other.err").read_text()[-3000:]
    np.testing.assert_array_equal(np.load(folder / "proba.npy"), proba_here)
    np.testing.assert_array_equal(pd.read_csv(folder / "history.csv").to_numpy(),
                                  pd.read_csv(folder / "a" / "history.csv").to_numpy())


def test_paper000_classifier_trains_head_only_with_frozen_base(tmp_path):
    def classifier():
        model = build_classifier("squeezenet", input_shape=(SIZE, SIZE, 3), freeze="base",
                                 seed=0)
        return compile_classifier(model, learning_rate=1e-3)

    model, history, proba = run_once(tmp_path, epochs=1, make_model=classifier)
    assert len(history) == 1 and np.isfinite(proba).all()
    fresh = classifier()
    for a, b in zip(model.get_layer("squeezenet").get_weights(),
                    fresh.get_layer("squeezenet").get_weights()):
        np.testing.assert_array_equal(a, b)  # freeze="base": the backbone did not move
    assert not np.array_equal(model.get_layer("paper000_fc1").get_weights()[0],
                              fresh.get_layer("paper000_fc1").get_weights()[0])


def test_seed_and_class_weight_change_the_run(tmp_path):
    _, history, _ = run_once(tmp_path / "a", seed=3, epochs=1)
    _, other_seed, _ = run_once(tmp_path / "b", seed=4, epochs=1)
    _, weighted, _ = run_once(tmp_path / "c", seed=3, epochs=1, class_weight={0: 1.0, 1: 3.0})
    assert history["loss"].iloc[0] != other_seed["loss"].iloc[0]
    assert history["loss"].iloc[0] != weighted["loss"].iloc[0]


def test_early_stopping_stops(tmp_path):
    x, y = bright_dark(16, seed=1)
    model = compile_classifier(tiny_model(), learning_rate=0.0)  # never improves
    history = train(model, x, y, x, y, epochs=6, batch_size=8, run_dir=tmp_path, seed=0,
                    early_stopping_patience=1, verbose=0)
    assert len(history) < 6


def test_augmentation_applies_to_training_batches_only(tmp_path):
    calls = []

    class Record(keras.layers.Layer):
        def call(self, x, training=None):
            calls.append((tuple(x.shape), training))
            return x

    x, y = bright_dark(16, seed=1)
    model = tiny_model()
    train(model, x, y, x[:4], y[:4], epochs=1, batch_size=8, run_dir=tmp_path, seed=0,
          augmentation=Record(), verbose=0)
    assert calls and all(shape[0] == 8 and training is True for shape, training in calls)


def test_shuffled_batches_are_seeded_per_epoch():
    x = np.arange(10, dtype="float32").reshape(10, 1)
    y = np.arange(10) % 2
    batches = ShuffledBatches(x, y, batch_size=4, epochs=2, seed=5)
    assert batches.steps == 3 and batches.num_batches == 6
    epoch0 = np.concatenate([batches[i][0][:, 0] for i in range(3)])
    epoch1 = np.concatenate([batches[i][0][:, 0] for i in range(3, 6)])
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert not np.array_equal(epoch0, epoch1)
    again = ShuffledBatches(x, y, batch_size=4, epochs=2, seed=5)
    np.testing.assert_array_equal(again[4][0], batches[4][0])  # random access, same order


def test_failed_training_leaves_run_dir_clean(tmp_path):
    x, y = bright_dark(8, seed=1)

    class Explode(keras.layers.Layer):
        def call(self, x, training=None):
            raise RuntimeError("augmentation broke")

    model = tiny_model()
    with pytest.raises(Exception, match="augmentation broke"):
        train(model, x, y, x, y, epochs=1, batch_size=4, run_dir=tmp_path, seed=0,
              augmentation=Explode(), verbose=0)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_raise(tmp_path):
    x, y = bright_dark(8, seed=1)
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="compile"):
        train(model, x, y, x, y, epochs=1, batch_size=4, run_dir=tmp_path, seed=0)
    compile_classifier(model)
    with pytest.raises(ValueError, match="y_train"):
        train(model, x, y[:5], x, y, epochs=1, batch_size=4, run_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="class index 2"):
        train(model, x, y, x, y + 1, epochs=1, batch_size=4, run_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="integer"):
        train(model, x, y + 0.5, x, y, epochs=1, batch_size=4, run_dir=tmp_path, seed=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_compile_with_each_optimiser(name):
    model = tiny_model()
    compile_classifier(model, optimiser=name, learning_rate=0.01, weight_decay=1e-4,
                       momentum=0.8, run_eagerly=True)  # one step: tracing it would cost seconds
    optimiser = model.optimizer
    assert float(keras.ops.convert_to_numpy(optimiser.learning_rate)) == pytest.approx(0.01)
    assert optimiser.weight_decay == pytest.approx(1e-4)
    expected = {"adam": keras.optimizers.Adam, "sgdm": keras.optimizers.SGD,
                "rmsprop": keras.optimizers.RMSprop}[name]
    assert type(optimiser) is expected
    if name == "sgdm":
        assert optimiser.momentum == pytest.approx(0.8)
    if name == "adam":
        assert optimiser.beta_1 == pytest.approx(0.8)
    x, y = bright_dark(4, seed=0)
    assert np.isfinite(model.train_on_batch(x, y, return_dict=True)["loss"])


def test_unknown_optimiser_lists_names():
    model = tiny_model()
    with pytest.raises(KeyError, match="sgdm"):
        compile_classifier(model, optimiser="adadelta9")


def test_class_weights_balanced_like_sklearn():
    weights = class_weights(np.array([0, 0, 0, 1]))
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert all(isinstance(k, int) for k in weights)
    with pytest.raises(ValueError):
        class_weights(np.array([], dtype=int))
    with pytest.raises(ValueError):
        class_weights(np.array([0, -1]))


def test_predict_proba_handles_sigmoid_output():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    proba = predict_proba(model, np.zeros((5, 3), dtype="float32"))
    assert proba.shape == (5, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_set_determinism_reseeds_numpy():
    set_determinism(11)
    first = np.random.rand(3)
    set_determinism(11)
    np.testing.assert_array_equal(first, np.random.rand(3))


# ---------------------------------------------------------------------------------------------
# Losses and label formats, sigmoid heads, two-phase training, the augment hook
# ---------------------------------------------------------------------------------------------


def tiny_head_model(head: str, units: int, seed: int = 0) -> keras.Model:
    """A small CNN ending like a ``build_classifier`` head (name and output layer)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if units == 1:
        outputs = keras.layers.Dense(1, activation="sigmoid", name=f"{head}_sigmoid")(x)
    else:
        outputs = keras.layers.Dense(units, activation="softmax", name=f"{head}_output")(x)
    return keras.Model(inputs, outputs, name=f"tiny_{head}")


def test_losses_registry_defaults_and_label_formats():
    assert set(LOSSES) == {"sparse_categorical_crossentropy", "categorical_crossentropy",
                           "binary_crossentropy", "mse"}
    sigmoid_mse = tiny_head_model("paper004", 1)
    sigmoid_bce = tiny_head_model("paper002", 1)
    softmax = tiny_head_model("paper003", 3)
    assert resolve_loss(sigmoid_bce, "categorical_crossentropy") == "binary_crossentropy"
    assert resolve_loss(sigmoid_bce, "sparse_categorical_crossentropy") == "binary_crossentropy"
    assert resolve_loss(softmax, "mean_squared_error") == "mse"
    with pytest.raises(KeyError, match="binary_crossentropy"):
        resolve_loss(softmax, "hinge9")

    y = np.array([0, 1, 1, 0])
    compile_classifier(sigmoid_mse, optimiser="rmsprop", loss="mse")  # the loss is the settings', not the head's
    assert sigmoid_mse.loss == "mse"
    compile_classifier(sigmoid_bce)
    assert sigmoid_bce.loss == "binary_crossentropy"
    encoded = encode_labels(y, sigmoid_mse)
    assert encoded.dtype == np.float32 and encoded.shape == (4, 1)
    np.testing.assert_array_equal(encoded[:, 0], y)
    compile_classifier(softmax, loss="categorical_crossentropy")
    np.testing.assert_array_equal(encode_labels(np.array([2, 0]), softmax),
                                  [[0, 0, 1], [1, 0, 0]])
    compile_classifier(softmax, loss="mse")
    assert encode_labels(np.array([1]), softmax).shape == (1, 3)
    compile_classifier(softmax)
    np.testing.assert_array_equal(encode_labels(np.array([2, 0]), softmax), [2, 0])


def test_sigmoid_binary_crossentropy_learns_with_class_weights(tmp_path):
    x, y = bright_dark(16, seed=1)

    def run(run_dir: Path, **options) -> pd.DataFrame:
        model = compile_classifier(tiny_head_model("paper002", 1), learning_rate=5e-2)
        assert model.loss == "binary_crossentropy"
        return train(model, x, y, x, y, epochs=2, batch_size=8, run_dir=run_dir, seed=0,
                     verbose=0, **options)

    plain = run(tmp_path / "a")
    assert plain["val_accuracy"].iloc[-1] >= 0.9
    weighted = run(tmp_path / "b", class_weight={0: 1.0, 1: 4.0})
    assert weighted["loss"].iloc[0] != plain["loss"].iloc[0]


def test_softmax_head_with_one_hot_loss_trains(tmp_path):
    x, y = bright_dark(16, seed=1)
    model = compile_classifier(tiny_head_model("paper003", 2), loss="categorical_crossentropy",
                               learning_rate=5e-2)
    history = train(model, x, y, x, y, epochs=2, batch_size=8, run_dir=tmp_path, seed=0,
                    verbose=0)
    assert history["val_accuracy"].iloc[-1] >= 0.9


def test_two_phase_training_of_a_sigmoid_head(tmp_path):
    """paper004 on SqueezeNet end to end: one sigmoid unit trained with MSE on 0/1 labels,
    head first (base frozen), then fine-tuning; one history, the best checkpoint kept."""
    x_train, y_train = bright_dark(16, seed=1)
    x_val, y_val = bright_dark(8, seed=2)
    model = build_classifier("squeezenet", head="paper004", input_shape=(SIZE, SIZE, 3),
                             freeze="base", seed=0)
    compile_classifier(model, optimiser="sgdm", learning_rate=1e-2, momentum=0.8, loss="mse")
    assert model.loss == "mse"
    history = train(model, x_train, y_train, x_val, y_val, epochs=2, batch_size=8,
                    run_dir=tmp_path, seed=0, verbose=0, fine_tune_epochs=1,
                    fine_tune_freeze="top-8")
    assert history["epoch"].tolist() == [1, 2, 3] and history["phase"].tolist() == [1, 1, 2]
    assert history["lr"].tolist() == pytest.approx([1e-2, 1e-2, 1e-3])
    assert np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()
    on_disk = pd.read_csv(tmp_path / HISTORY_FILE)
    assert list(on_disk.columns) == list(history.columns) and "phase" in on_disk.columns
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.momentum == pytest.approx(0.8) and model.loss == "mse"
    base = model.get_layer("squeezenet")
    assert sum(layer.trainable for layer in base.layers) == 8  # phase two's freeze

    proba = predict_proba(model, x_val)
    assert proba.shape == (8, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    best = keras.saving.load_model(tmp_path / BEST_MODEL_FILE)
    assert best.get_layer("paper004_sigmoid").units == 1
    np.testing.assert_allclose(predict_proba(best, x_val), proba, rtol=1e-6)
    loss_now = model.evaluate(x_val, encode_labels(y_val, model), batch_size=8, verbose=0,
                              return_dict=True)["loss"]
    assert loss_now == pytest.approx(history["val_loss"].min(), rel=1e-4)

    fresh = build_classifier("squeezenet", input_shape=(SIZE, SIZE, 3), seed=0)
    moved = {layer.name: not all(np.array_equal(a, b) for a, b in zip(
        layer.get_weights(), fresh.get_layer("squeezenet").get_layer(layer.name).get_weights()))
        for layer in base.layers if layer.weights}
    assert not any(moved[name] for name in moved if not base.get_layer(name).trainable)
    if history["val_loss"].idxmin() == 2:  # the best epoch is a fine-tuned one
        assert any(moved.values())


def test_two_phase_needs_a_backbone_and_fails_before_writing(tmp_path):
    x, y = bright_dark(8, seed=1)
    with pytest.raises(ValueError, match="backbone"):
        train(tiny_model(), x, y, x, y, epochs=1, batch_size=4, run_dir=tmp_path, seed=0,
              fine_tune_epochs=1, verbose=0)
    assert list(tmp_path.iterdir()) == []


def test_augment_hook_applies_to_training_batches_only_and_is_seeded(tmp_path):
    calls: list[tuple[int, int]] = []

    def flip(batch: np.ndarray, index: int) -> np.ndarray:
        calls.append((len(batch), index))
        rng = np.random.default_rng(index)
        return np.where(rng.random((len(batch), 1, 1, 1)) < 0.5, batch[:, :, ::-1], batch)

    x, y = bright_dark(24, seed=1)
    x_val, y_val = bright_dark(4, seed=2)

    def run(run_dir: Path) -> pd.DataFrame:
        return train(tiny_model(), x, y, x_val, y_val, epochs=2, batch_size=8, run_dir=run_dir,
                     seed=0, augment=flip, verbose=0)

    first = run(tmp_path / "a")
    # 3 steps x 2 epochs, never the 4 validation images (Keras may fetch batch 0 twice)
    assert set(calls) == {(8, index) for index in range(6)}
    calls.clear()
    pd.testing.assert_frame_equal(first, run(tmp_path / "b"))
    plain = train(tiny_model(), x, y, x_val, y_val, epochs=2, batch_size=8,
                  run_dir=tmp_path / "c", seed=0, verbose=0)
    assert not first["loss"].equals(plain["loss"])  # the flips changed the batches

    batches = ShuffledBatches(x, y, batch_size=8, epochs=1, seed=0, augment=flip,
                              first_epoch=1)
    assert batches[0][0].shape == (8, SIZE, SIZE, 3) and calls[-1] == (8, 3)  # epoch 1, step 0
    bad = ShuffledBatches(x, y, batch_size=8, epochs=1, seed=0,
                          augment=lambda batch, index: batch[:, :4])
    with pytest.raises(ValueError, match="shape"):
        bad[0]


def test_split_at_backbone_shares_layers_and_trains_the_whole_models_head(tmp_path):
    from helpers import models, training

    model = models.build_classifier("squeezenet", head="paper000", weights=None, freeze="base",
                                    input_shape=(40, 40, 3), num_classes=2, seed=0, normalisation="zero_mean")
    features, head = training.split_at_backbone(model)
    x = np.random.default_rng(0).random((12, 40, 40, 3)).astype(np.float16)  # as the cache holds them
    y = np.array([0, 1] * 6)
    assert np.allclose(training.predict_batches(head, training.predict_batches(features, x)),
                       training.predict_batches(model, x), atol=1e-5)
    before = [w.copy() for w in model.get_layer("paper000_fc1").get_weights()]
    training.compile_classifier(head, optimiser="adam", learning_rate=1e-2)
    cached = training.predict_batches(features, x)
    training.train(head, cached, y, cached, y, epochs=2, batch_size=4, run_dir=tmp_path, seed=0,
                   saved_model=model, verbose=0)
    after = model.get_layer("paper000_fc1").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))  # the model's own head learned
    reloaded = keras.saving.load_model(tmp_path / training.BEST_MODEL_FILE, compile=False)
    assert reloaded.name == model.name and reloaded.get_layer("normalisation").mode == "zero_mean"
    assert np.allclose(training.predict_batches(reloaded, x), training.predict_batches(model, x), atol=1e-5)


def test_a_random_frozen_base_gets_batch_norm_statistics_from_the_images_and_stays_frozen():
    from helpers import models, training

    model = models.build_classifier("mobilenetv2", head="paper000", weights=None, freeze="base",
                                    input_shape=(32, 32, 3), num_classes=2, seed=0, normalisation="zero_mean")
    features, _ = training.split_at_backbone(model)
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:32, :32]
    x = np.stack([np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * r ** 2))  # a blob per image
                  for cy, cx, r in zip(rng.uniform(4, 28, 40), rng.uniform(4, 28, 40), rng.uniform(2, 9, 40))])
    x = np.repeat(x[..., None], 3, axis=3).astype(np.float32)
    flat = training.predict_batches(features, x)
    assert np.allclose(flat, flat[0], atol=1e-6)  # initial statistics: every image the same features
    base = models.find_backbone(model)
    kernels = [w.copy() for w in base.get_layer("Conv1").get_weights()]
    assert training.calibrate_batch_norm(features, x, batch_size=8) > 10
    calibrated = training.predict_batches(features, x)
    assert calibrated.reshape(40, -1).std(axis=0).max() > 1e-3  # now the images differ
    assert all(np.array_equal(a, b) for a, b in zip(kernels, base.get_layer("Conv1").get_weights()))
    assert not base.trainable and not any(layer.trainable for layer in base.layers)
    assert {layer.momentum for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)} == {
        models.SCRATCH_BN_MOMENTUM}
