"""The GPU path on a CPU: mixed precision, threaded batch preparation, streaming from a memory-mapped
cache, and data-parallel training on two logical CPU devices (TensorFlow and JAX, in subprocesses,
since devices must be configured before the backend starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from helpers import plan, training
from helpers.augmentation import build_augmenter
from helpers.models import OUTPUT_DTYPE, build_classifier
from helpers.pipeline import order_by_split, split_rows
from helpers.training import ShuffledBatches

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def bright_dark(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 bright, class 0 dark, in [0, 1] (clean images, as the augmenter wants)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    level = np.where(y == 1, 0.7, 0.3)[:, None, None, None]
    x = np.clip(level + rng.normal(0, 0.1, (n, size, size, 3)), 0, 1)
    return x.astype("float32"), y.astype("int64")


@pytest.fixture
def float32_afterwards():
    """Whatever a test sets, the global dtype policy is float32 again after it."""
    yield
    keras.config.set_dtype_policy("float32")


def test_gpu_keys_resolve_in_one_place_and_are_checked():
    gpu = training.gpu_available()
    assert training.resolve_precision("auto") == ("mixed_float16" if gpu else "float32")
    assert training.resolve_jit_compile("auto") is (gpu and keras.config.backend() != "torch")
    assert training.resolve_precision("mixed_float16") == "mixed_float16"  # explicit: also on a CPU
    assert training.resolve_jit_compile(False) is False
    assert training.resolve_workers(3) == 3 and training.resolve_workers("auto") >= 1
    with pytest.raises(ValueError, match="precision"):
        training.resolve_precision("float8")
    paper = plan.resolve_settings("paper", study="000", backbone="vgg16")
    assert (paper.precision, paper.jit_compile, paper.data_workers) == ("auto", "auto", "auto")
    smoke = plan.resolve_settings("smoke", study="000", backbone="vgg16")
    assert (smoke.precision, smoke.jit_compile, smoke.data_workers, smoke.distribution) == (
        "float32", False, 1, "none")
    for key, bad in (("precision", "half"), ("distribution", "model-parallel"), ("data_workers", 0),
                     ("jit_compile", "yes")):
        with pytest.raises(ValueError, match=key):
            plan.resolve_settings("smoke", study="000", backbone="vgg16", **{key: bad})


def tiny_classifier(seed: int = 0) -> keras.Model:
    """A small CNN shaped like ``build_classifier``'s (a nested base named after a backbone, a head
    ending in a float32 softmax), built under the current dtype policy: fast to trace and train."""
    keras.utils.set_random_seed(seed)
    base = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D()], name="squeezenet")
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.Dense(2, activation="softmax", dtype=OUTPUT_DTYPE)(base(inputs))
    return keras.Model(inputs, outputs, name="tiny")


def test_mixed_float16_trains_on_the_cpu_with_float32_outputs(tmp_path, float32_afterwards):
    assert training.apply_precision("mixed_float16") == "mixed_float16"
    heads = build_classifier("squeezenet", head="paper000", weights=None, freeze="none",
                             input_shape=(SIZE, SIZE, 3), num_classes=2, seed=0)
    assert keras.backend.standardize_dtype(heads.outputs[0].dtype) == "float32"  # the project's head
    assert heads.layers[-1].compute_dtype == "float32"
    model = training.compile_classifier(tiny_classifier(), learning_rate=1e-2)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    conv = model.get_layer("squeezenet").layers[0]
    assert (conv.compute_dtype, conv.variable_dtype) == ("float16", "float32")
    x, y = bright_dark(16, seed=1)
    history = training.train(model, x, y, x[:8], y[:8], epochs=1, batch_size=8, run_dir=tmp_path,
                             seed=0, verbose=0, save_model=False, fine_tune_epochs=1)
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["val_loss"]).all()
    assert list(history["phase"]) == [1, 2]  # the fine-tuning phase re-wraps the inner optimiser
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    proba = training.predict_batches(model, x)
    assert proba.dtype == np.float32 and np.allclose(proba.sum(axis=1), 1, atol=1e-3)
    assert training.apply_precision("float32") == "float32"
    assert tiny_classifier().get_layer("squeezenet").layers[0].compute_dtype == "float32"


def _batches(workers: int, augment) -> ShuffledBatches:
    x, y = bright_dark(20, seed=3)
    return ShuffledBatches(x, y, batch_size=6, epochs=3, seed=5, augment=augment, workers=workers)


def test_batches_depend_only_on_seed_epoch_and_step_whatever_the_threads():
    augmenter = build_augmenter("paper000", image_size=SIZE, seed=11)
    sequential = _batches(1, augmenter)
    expected = [sequential[i] for i in range(sequential.num_batches)]
    threaded = _batches(2, build_augmenter("paper000", image_size=SIZE, seed=11))
    assert threaded.workers == 2
    order = list(range(threaded.num_batches))[::-1]  # out of order, across epoch boundaries
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(order, pool.map(threaded.__getitem__, order)))
    for index, (x, y) in enumerate(expected):
        np.testing.assert_array_equal(got[index][0], x)
        np.testing.assert_array_equal(got[index][1], y)
    assert not np.array_equal(expected[0][0], expected[sequential.steps][0])  # epochs differ


def test_train_with_two_workers_equals_one_worker(tmp_path):
    x, y = bright_dark(24, seed=1)
    x_val, y_val = bright_dark(12, seed=2)
    results = []
    for workers in (1, 2):
        model = training.compile_classifier(tiny_classifier(), learning_rate=5e-2, run_eagerly=True)
        history = training.train(model, x, y, x_val, y_val, epochs=2, batch_size=8, seed=3, verbose=0,
                                 run_dir=tmp_path / f"w{workers}", save_model=False, workers=workers,
                                 augment=build_augmenter("paper000", image_size=SIZE, seed=4))
        results.append((history, model.get_weights()))
    pd.testing.assert_frame_equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)


def test_a_keras_augmentation_layer_refuses_several_workers():
    x, y = bright_dark(8, seed=1)
    with pytest.raises(ValueError, match="workers=1"):
        ShuffledBatches(x, y, batch_size=4, epochs=1, seed=0, workers=2,
                        augmentation=keras.layers.RandomFlip(seed=0))


def test_splits_ordered_by_split_are_views_of_the_cache(tmp_path):
    manifest = pd.DataFrame({"image_path": [f"{i}.png" for i in range(9)],
                             "split": ["test", "train", "val", "train", "test", "val", "train", "val", "test"]})
    ordered = order_by_split(manifest)
    assert list(ordered["split"]) == ["train"] * 3 + ["val"] * 3 + ["test"] * 3
    assert list(ordered["image_path"][:3]) == ["1.png", "3.png", "6.png"]  # each split keeps its order
    cache = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=(9, 4, 4, 3))
    cache[:] = np.arange(9, dtype=np.float16)[:, None, None, None]
    cache.flush()
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    for split in ("train", "val", "test"):
        part = split_rows(mapped, (ordered["split"] == split).to_numpy())
        assert isinstance(part, np.memmap) and np.shares_memory(part, mapped) and len(part) == 3
    scattered = split_rows(mapped, (manifest["split"] == "train").to_numpy())  # not contiguous: a copy
    assert not np.shares_memory(scattered, mapped)
    np.testing.assert_array_equal(scattered[:, 0, 0, 0], [1, 3, 6])


STREAM_SCRIPT = r"""
import json, sys, threading, time, tracemalloc
from pathlib import Path
import numpy as np
from helpers import backend  # noqa: F401
import keras
from helpers import training

def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0

def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.AveragePooling2D(12)(inputs)
    x = keras.layers.Flatten()(x)
    return training.compile_classifier(keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)),
                                       learning_rate=1e-2)

SIDE, N, BATCH = 96, {n}, 16
path = Path(sys.argv[1])
# warm-up on a small array in memory: graph tracing and allocator pools, not the data
small = np.random.default_rng(0).random((64, SIDE, SIDE, 3)).astype(np.float16)
labels = np.arange(64) % 2
training.train(model(), small, labels, small[:32], labels[:32], epochs=1, batch_size=32,
               run_dir=path.parent / "warm", seed=0, verbose=0, save_model=False)
x = np.load(path, mmap_mode="r")
y = np.arange(N) % 2
net = model()
peak, stop = [rss_anon()], threading.Event()
def sample():
    while not stop.is_set():
        peak.append(rss_anon()); time.sleep(0.005)
baseline = rss_anon()
sampler = threading.Thread(target=sample); sampler.start()
tracemalloc.start()
training.train(net, x[:N - 256], y[:N - 256], x[N - 256:], y[N - 256:], epochs=1, batch_size=BATCH,
               run_dir=path.parent / "run", seed=0, verbose=0, save_model=False, workers=2)
proba = training.predict_batches(net, x, batch_size=BATCH)
traced = tracemalloc.get_traced_memory()[1]
stop.set(); sampler.join()
print(json.dumps({{"array": int(x.nbytes), "rss_anon_growth": max(peak) - baseline, "traced_peak": traced,
                  "rows": int(len(proba))}}))
"""


def test_training_and_prediction_stream_a_memory_mapped_cache(tmp_path):
    n = 3072  # 3072 x 96 x 96 x 3 float16: 170 MB on disk
    cache = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=(n, 96, 96, 3))
    for start in range(0, n, 512):
        cache[start:start + 512] = np.random.default_rng(start).random((512, 96, 96, 3), dtype=np.float32)
    cache.flush()
    del cache
    out = subprocess.run([sys.executable, "-c", STREAM_SCRIPT.format(n=n), str(tmp_path / "x.npy")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["rows"] == n
    # a copy of the whole array (x[mask], np.asarray(x, "float32"), fit converting it) would add >= 170 MB;
    # what is allowed: the batches prepared ahead (a queue of 10) and the backend's own buffers
    assert measured["traced_peak"] < measured["array"] / 8, measured
    assert measured["rss_anon_growth"] < measured["array"] / 4, measured


DATA_PARALLEL_SCRIPT = r"""
import json, os, sys
from pathlib import Path
BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {tests_dir!r})
from helpers import backend  # noqa: F401
import keras
import numpy as np
import pandas as pd
from helpers import evaluation, pipeline, plan, training
from test_accelerated_training import bright_dark

run_dir = Path(sys.argv[1])
settings = plan.resolve_settings("smoke", study="000", backbone="squeezenet", distribution="data-parallel",
                                 epochs=4, batch_size=8, learning_rate=0.05, run_eagerly=False)
strategy, devices = training._distribution(settings.distribution)
with training.distribution_scope(settings.distribution):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs, name="tiny")
if BACKEND == "tensorflow":
    replicas = strategy.num_replicas_in_sync
    placed = len(model.weights[0].value.values)  # a MirroredVariable: one copy per device
else:
    replicas = int(np.prod(strategy.device_mesh.shape))
    placed = len(model.weights[0].value.sharding.device_set)
x, y = bright_dark(32, seed=1)
x_val, y_val = bright_dark(16, seed=2)
history = pipeline.fit_classifier(settings, model, x, y, x_val, y_val, run_dir)
proba = training.predict_proba(model, x_val)
names = ["benign", "malignant"]
results = evaluation.evaluate(y_val, proba, names, n_boot=0, seed=0)
splits = ["train"] * len(y) + ["val"] * len(y_val)
labels = np.concatenate([y, y_val])
manifest = pd.DataFrame({{"image_path": [f"/data/{{i}}.png" for i in range(len(splits))],
                         "patient_id": [f"P{{i}}" for i in range(len(splits))], "label": [names[c] for c in labels],
                         "target": [names[c] for c in labels], "split": splits, "dataset": "synthetic", "roi": ""}})
part = {{"train": slice(0, len(y)), "val": slice(len(y), None), "test": slice(len(y), None)}}
data = pipeline.PreparedData(settings=settings, manifest=manifest, class_names=names,
                             x={{k: None for k in part}}, y={{k: labels[v] for k, v in part.items()}},
                             patients={{k: manifest["patient_id"].to_numpy()[v] for k, v in part.items()}},
                             skipped=[], excluded=[], split_file=run_dir / "split.json", arrays_from_cache=False)
record = pipeline.run_record(settings, data, run_name="dp", notebook="none", weights_description="random")
pipeline.write_metrics(run_dir, record, results)
print(json.dumps({{"replicas": replicas, "placed": placed, "devices": len(devices),
                  "loss": history["loss"].tolist()}}))
"""


@pytest.mark.parametrize("backend_name", ["tensorflow", "jax"])
def test_data_parallel_training_on_two_cpu_devices(backend_name, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend_name, "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()}
    script = DATA_PARALLEL_SCRIPT.format(tests_dir=str(ROOT / "tests"))
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["replicas"] == measured["placed"] == measured["devices"] == 2, measured
    loss = measured["loss"]
    assert len(loss) == 4 and loss[-1] < loss[0], loss
    history = pd.read_csv(tmp_path / training.HISTORY_FILE)
    assert list(history["epoch"]) == [1, 2, 3, 4] and {"val_loss", "val_accuracy"} <= set(history)
    run = json.loads((tmp_path / "metrics.json").read_text())["run"]
    assert run["distribution"] == "data-parallel" and run["devices"] == 2


def test_data_parallel_on_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(keras.config, "backend", lambda: "torch")
    monkeypatch.setattr(training, "_STRATEGIES", {})
    with pytest.raises(ValueError, match="not supported on the torch backend"):
        with training.distribution_scope("data-parallel"):
            pass


def test_a_diverged_epoch_stops_training_without_a_per_batch_hook(tmp_path):
    x, y = bright_dark(16, seed=1)
    x[3] = np.nan  # one batch's loss is NaN, so the epoch's mean is
    model = training.compile_classifier(tiny_classifier(), learning_rate=1e-2, run_eagerly=True)
    with pytest.raises(RuntimeError, match="never reached a finite val_loss"):
        training.train(model, x, y, x, y, epochs=3, batch_size=8, run_dir=tmp_path, seed=0, verbose=0)
    assert list(tmp_path.iterdir()) == []
    stop = training._StopOnNonFiniteLoss()  # epoch hooks only: Keras keeps dispatching steps asynchronously
    assert type(stop).on_train_batch_end is keras.callbacks.Callback.on_train_batch_end
    assert type(stop).on_batch_end is keras.callbacks.Callback.on_batch_end
