"""Seeded, reproducible training: optimisers, losses, ``train`` with checkpoints and a CSV history.

``train`` feeds the data through :class:`ShuffledBatches`, a ``keras.utils.PyDataset`` whose
batch order depends only on ``(seed, epoch)``, so the same seed gives bit-identical weights
and history on the CPU, in one process or across processes. It can train in two phases
(Keras' transfer-learning recipe): the head first with the base as built (usually frozen),
then the unfrozen base at a lower learning rate.

Labels are always given as integer class indices; ``train`` converts them to what the
model's loss and output need (indices, one-hot rows, or a 0/1 float column for a one-unit
sigmoid output).

The GPU path: ``precision`` (Keras' dtype policy, :func:`apply_precision`) and ``jit_compile``
(XLA) are resolved here, both "auto" = on where the backend sees a GPU (:func:`resolve_precision`,
:func:`resolve_jit_compile`); ``workers`` threads prepare batches ahead; ``distribution
"data-parallel"`` trains one run on all local devices (:func:`distribution_scope`). Images are
read batch by batch (training, validation, prediction, batch-norm calibration), never copied
whole, so a memory-mapped cache larger than memory streams from disk.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from helpers import backend  # noqa: F401  (imports Keras quietly)
import keras
import numpy as np
import pandas as pd

from helpers.models import all_layers, find_backbone, output_kind, set_freeze
from helpers.paths import atomic_path

BEST_MODEL_FILE = "best.keras"
HISTORY_FILE = "history.csv"
Optimizer = keras.optimizers.Optimizer
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")
FINE_TUNE_LR_FACTOR = 0.1  # phase-two learning rate when none is given: a tenth of phase one's
Augment = Callable[[np.ndarray, int], np.ndarray]


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and the backend; on TensorFlow also make ops deterministic."""
    keras.utils.set_random_seed(int(seed))
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf  # only here: the rest of the project is backend-agnostic

        tf.config.experimental.enable_op_determinism()


@functools.lru_cache(maxsize=None)
def gpu_available(backend_name: str | None = None) -> bool:
    """Does the Keras backend (``backend_name``, default the current one) see a GPU?"""
    from helpers.backend import _gpu_names

    return bool(_gpu_names(backend_name or keras.config.backend()))


PRECISIONS = ("float32", "mixed_float16")


def resolve_precision(precision: str) -> str:
    """The dtype policy a run trains with: ``"auto"`` is ``mixed_float16`` where the backend sees a
    GPU and ``float32`` otherwise; an explicit ``mixed_float16`` also runs on a CPU (slowly)."""
    if precision == "auto":
        return "mixed_float16" if gpu_available() else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: auto, {', '.join(PRECISIONS)}")
    return precision


def resolve_jit_compile(jit_compile: bool | str) -> bool:
    """XLA or not: ``"auto"`` is on where the backend sees a GPU (not on torch, where Keras has no
    XLA), off on a CPU (compiling a deep network there takes longer than a short run saves).
    On TensorFlow, Keras turns XLA off again while op determinism is on (:func:`set_determinism`)."""
    if jit_compile == "auto":
        return keras.config.backend() != "torch" and gpu_available()
    return bool(jit_compile)


def resolve_workers(workers: int | str) -> int:
    """Threads preparing batches ahead: ``"auto"`` is every CPU core this process may use."""
    if workers == "auto":
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        return max(1, len(cores))
    if isinstance(workers, bool) or int(workers) < 1:
        raise ValueError(f"workers must be an int >= 1 or 'auto', got {workers!r}")
    return int(workers)


def apply_precision(precision: str) -> str:
    """Set Keras' global dtype policy for the networks built next (call before building or
    loading one); returns the policy's name. A classifier's output layer computes in float32
    under any policy (:func:`helpers.models.build_classifier`'s heads)."""
    policy = resolve_precision(precision)
    keras.config.set_dtype_policy(policy)
    return policy


DISTRIBUTIONS = ("none", "data-parallel")
_STRATEGIES: dict[str, object] = {}


def distribution_devices(distribution: str) -> list[str]:
    """The devices a run with ``distribution`` trains on (one entry for "none")."""
    if distribution == "none":
        return ["default"]
    return list(_distribution(distribution)[1])


def _distribution(distribution: str) -> tuple[object, list[str]]:
    """The strategy (TensorFlow) or distribution (JAX) of "data-parallel" and its devices, made once."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
    backend_name = keras.config.backend()
    if backend_name not in _STRATEGIES:
        if backend_name == "tensorflow":
            import tensorflow as tf  # only here: the strategy is TensorFlow's own API

            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            _STRATEGIES[backend_name] = (tf.distribute.MirroredStrategy(devices=devices), devices)
        elif backend_name == "jax":
            devices = keras.distribution.list_devices()
            _STRATEGIES[backend_name] = (keras.distribution.DataParallel(devices=devices), devices)
        else:
            raise ValueError(f"distribution {distribution!r} is not supported on the {backend_name} backend "
                             f"(TensorFlow: MirroredStrategy, JAX: keras.distribution.DataParallel); use "
                             f"distribution 'none' or KERAS_BACKEND=tensorflow or jax")
    return _STRATEGIES[backend_name]


@contextlib.contextmanager
def distribution_scope(distribution: str = "none") -> Iterator[None]:
    """Where a data-parallel run builds, compiles and fits its network.

    "none": nothing changes. "data-parallel": TensorFlow's ``MirroredStrategy`` over all local
    GPUs (else all logical CPU devices), or JAX's ``keras.distribution.DataParallel`` over
    ``keras.distribution.list_devices()``; the same strategy every time in a process. The batch
    size is the global batch, split across the devices; the learning rate is not scaled with the
    number of devices (the recipe's rate is the rate of its global batch). Torch: an error.
    """
    if distribution == "none":
        yield
        return
    strategy, _ = _distribution(distribution)
    with strategy.scope():
        yield


def _adam(learning_rate: float, weight_decay: float | None, momentum: float) -> Optimizer:
    """Adam; ``momentum`` is its first-moment decay ``beta_1`` (0.9 = Keras' default)."""
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=momentum,
                                 weight_decay=weight_decay)


def _sgdm(learning_rate: float, weight_decay: float | None, momentum: float) -> Optimizer:
    """SGD with (heavy-ball) momentum."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                                weight_decay=weight_decay)


def _rmsprop(learning_rate: float, weight_decay: float | None, momentum: float) -> Optimizer:
    """RMSprop as in Keras (no momentum term; ``momentum`` is ignored)."""
    return keras.optimizers.RMSprop(learning_rate=learning_rate, weight_decay=weight_decay)


OPTIMISERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "adam": _adam,
    "sgdm": _sgdm,
    "rmsprop": _rmsprop,
}


# Loss name -> Keras loss class. The label format follows from the name and the output:
# "sparse_*" takes class indices, the others one-hot rows (or a 0/1 column for one sigmoid unit).
LOSSES: dict[str, Callable[[], keras.losses.Loss]] = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
    "mse": keras.losses.MeanSquaredError,
}
_LOSS_ALIASES = {"mean_squared_error": "mse"}


def resolve_loss(model: keras.Model, loss: str) -> str:
    """``loss`` (the run's setting: :mod:`helpers.plan`) checked against ``LOSSES``. Cross-entropy
    asked for a one-unit sigmoid output is binary cross-entropy (the same objective), so it
    becomes that."""
    loss = _LOSS_ALIASES.get(loss, loss)
    if loss not in LOSSES:
        raise KeyError(f"unknown loss {loss!r}; known: {', '.join(sorted(LOSSES))}")
    if output_kind(model) == "sigmoid" and loss.endswith("categorical_crossentropy"):
        return "binary_crossentropy"
    return loss


def compile_classifier(model: keras.Model, *, optimiser: str = "adam",
                       learning_rate: float = 1e-3, loss: str = "sparse_categorical_crossentropy",
                       weight_decay: float | None = None, momentum: float = 0.9,
                       jit_compile: bool | str = False, run_eagerly: bool = False,
                       distribution: str = "none") -> keras.Model:
    """Compile ``model`` with a named optimiser, loss and the accuracy metric; return it.

    ``loss`` is a name in ``LOSSES``; a run passes its settings' loss (the paper's), and nothing
    is guessed from the model (see ``resolve_loss``).
    ``jit_compile`` is off by default: on a CPU, XLA-compiling a deep network takes longer than
    a short run saves (``"auto"``: on where the backend sees a GPU, :func:`resolve_jit_compile`).
    ``run_eagerly=True`` skips graph tracing altogether, which is faster for a run of a few steps
    (the smoke profile) on TensorFlow and torch; on JAX, whose eager steps compile op by op, it
    compiles the step once instead. Under a ``mixed_float16`` policy Keras wraps the optimiser in a
    ``LossScaleOptimizer``. ``distribution``: compile in the run's :func:`distribution_scope`.
    """
    if optimiser not in OPTIMISERS:
        raise KeyError(f"unknown optimiser {optimiser!r}; known: {', '.join(sorted(OPTIMISERS))}")
    eager = run_eagerly and keras.config.backend() != "jax"  # JAX's eager steps compile op by op: slower
    with distribution_scope(distribution):
        model.compile(optimizer=OPTIMISERS[optimiser](learning_rate, weight_decay, momentum),
                      loss=resolve_loss(model, loss), metrics=["accuracy"],
                      jit_compile=resolve_jit_compile(jit_compile) or (run_eagerly and not eager),
                      run_eagerly=eager)
    return model


def _loss_name(model: keras.Model) -> str:
    loss = model.loss
    name = loss if isinstance(loss, str) else getattr(loss, "name", type(loss).__name__)
    return _LOSS_ALIASES.get(name, name)


def encode_labels(y: np.ndarray, model: keras.Model) -> np.ndarray:
    """Integer class indices in the format the compiled ``model``'s loss and output need."""
    y = np.asarray(y).astype(np.int64)
    units = int(model.output_shape[-1])
    if units == 1:
        return y.astype("float32")[:, None]
    if "sparse" in _loss_name(model):
        return y
    return np.eye(units, dtype="float32")[y]


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced class weights ``n / (k * count)`` for the classes present (as scikit-learn)."""
    labels = _check_labels(np.asarray(y), "y")
    classes, counts = np.unique(labels, return_counts=True)
    return {int(c): float(len(labels) / (len(classes) * n)) for c, n in zip(classes, counts)}


def predict_proba(model: keras.Model, x: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Class probabilities, shape ``(N, num_classes)``, float64 (a sigmoid column -> 2 columns).

    The model is called batch by batch in inference mode rather than through ``predict``: one
    pass over a test split does not repay tracing a graph (seconds for a deep network on a CPU),
    and the numbers are the same.
    """
    proba = predict_batches(model, x, batch_size=batch_size).astype(np.float64)
    if proba.ndim != 2:
        raise ValueError(f"model {model.name} outputs shape {proba.shape}, expected (N, classes)")
    if proba.shape[1] == 1:
        proba = np.concatenate([1.0 - proba, proba], axis=1)
    return proba


def predict_batches(model: keras.Model, x: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """``model``'s outputs for ``x``, called batch by batch in inference mode (see
    :func:`predict_proba` for why not ``predict``), as one float32 array."""
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError(f"no images to predict with model {model.name}")
    batches = [keras.ops.convert_to_numpy(model(x[start:start + batch_size], training=False))
               for start in range(0, len(x), batch_size)]
    return np.concatenate(batches).astype(np.float32)


def split_at_backbone(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """``(features, head)`` of a ``build_classifier`` model, sharing its layers (no copies).

    ``features``: image -> the layers up to and including the nested backbone; ``head``: the
    backbone's output -> the rest, named like ``model`` (its loss is looked up by name). Training
    ``head`` trains ``model``'s head; with a frozen backbone, training ``head`` on precomputed
    features is training ``model`` without augmentation, at a fraction of the cost.
    """
    base = find_backbone(model)
    position = model.layers.index(base)
    before, after = model.layers[1:position], model.layers[position + 1:]
    image = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    x = image
    for layer in before + [base]:
        x = layer(x)
    features = keras.Model(image, x, name=f"{model.name}_features")
    inputs = keras.Input(shape=tuple(base.output_shape[1:]), name="features")
    x = inputs
    for layer in after:  # the heads are chains of layers
        x = layer(x)
    return features, keras.Model(inputs, x, name=model.name)


def calibrate_batch_norm(base: keras.Model, x: np.ndarray, *, batch_size: int = 32) -> int:
    """Set the moving statistics of ``base``'s batch-norm layers from images ``x`` (no weight
    is learned); return how many layers were set. Flags and momentums are restored.

    A *random* frozen base would otherwise normalise with its initial statistics (mean 0,
    variance 1): activations then shrink layer by layer (to about 1e-12 at MobileNetV2's last
    layer), every image gets the same features and the head cannot learn: no baseline at all.
    One pass in training mode over ``x``, with each layer's momentum set so that its moving
    statistics become the running mean of the batches' statistics (momentum ``(k - 1) / k`` at
    batch ``k``), gives each layer the statistics of the training images as the layers before it
    see them. Call it on the training split only; ImageNet bases keep their ImageNet statistics.
    """
    layers_inside = [base, *all_layers(base)]
    norms = [layer for layer in layers_inside if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    flags = [(layer, layer.trainable) for layer in layers_inside]
    momentums = [(layer, layer.momentum) for layer in norms]
    try:
        for layer, _ in flags:
            layer.trainable = True
        for count, start in enumerate(range(0, len(x), batch_size), start=1):
            for layer in norms:
                layer.momentum = (count - 1) / count
            base(np.asarray(x[start:start + batch_size]), training=True)
    finally:
        for layer, trainable in flags:
            layer.trainable = trainable
        for layer, momentum in momentums:
            layer.momentum = momentum
    return len(norms)


def _check_labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array of class indices, "
                         f"got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{what} must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{what} holds a negative class index ({y.min()})")
    return y.astype(np.int64)


def _check_xy(x: np.ndarray, y: np.ndarray, what: str,
              num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), _check_labels(np.asarray(y), f"y_{what}")
    if x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"x_{what} has shape {x.shape} but y_{what} has {len(y)} labels")
    if y.max() >= num_classes:
        raise ValueError(f"y_{what} holds class index {y.max()} but the model has "
                         f"{num_classes} outputs")
    return x, y


class OrderedBatches(keras.utils.PyDataset):
    """``x`` (with ``y``) in order, ``batch_size`` rows at a time: validation data read batch by
    batch (a memory map stays on disk) rather than converted whole to a tensor by ``fit``."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None, *, batch_size: int,
                 workers: int = 1) -> None:
        super().__init__(workers=workers, use_multiprocessing=False)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int):
        rows = slice(int(index) * self.batch_size, (int(index) + 1) * self.batch_size)
        x = np.asarray(self.x[rows])
        return x if self.y is None else (x, np.asarray(self.y[rows]))


class ShuffledBatches(keras.utils.PyDataset):
    """Training batches for ``epochs`` epochs in one stream, order seeded per epoch.

    Batch ``k`` belongs to epoch ``first_epoch + k // steps``; its samples come from a
    permutation drawn from ``numpy.random.default_rng([seed, epoch])``, so the stream does not
    depend on when Keras prefetches. ``augmentation`` (a Keras layer) is applied to each batch,
    then ``augment(x, index)`` with ``index = epoch * steps + step`` (so a seeded augmentation
    is reproducible); it must return an array of the batch's shape.

    ``workers`` threads prepare batches ahead (Keras keeps their order). A batch's content
    depends only on ``(seed, epoch, step)``, so any number of workers gives the same stream:
    the permutations are drawn under a lock, and ``augment`` is called under a lock (the
    project's :class:`helpers.augmentation.Augmenter` reseeds its layers from the index at each
    call but shares them between calls). A Keras ``augmentation`` layer draws from its own
    random state in call order, so it needs ``workers=1``. Rows are gathered from ``x`` batch
    by batch: a memory-mapped ``x`` is read from disk, never loaded whole.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int,
                 seed: int, augmentation: keras.layers.Layer | None = None,
                 augment: Augment | None = None, first_epoch: int = 0,
                 workers: int = 1) -> None:
        if augmentation is not None and workers > 1:
            raise ValueError(f"ShuffledBatches: a Keras augmentation layer ({augmentation.name}) draws "
                             f"from its own random state in call order, so {workers} workers would make "
                             f"the stream depend on thread timing; use workers=1, or augment(x, index)")
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(10, 2 * workers))
        self.x, self.y = x, y
        self.batch_size, self.epochs, self.seed = batch_size, epochs, seed
        self.augmentation, self.augment, self.first_epoch = augmentation, augment, first_epoch
        self.steps = math.ceil(len(x) / batch_size)
        self._orders: dict[int, np.ndarray] = {}
        self._order_lock, self._augment_lock = threading.Lock(), threading.Lock()

    def _order(self, epoch: int) -> np.ndarray:
        with self._order_lock:  # workers may straddle an epoch's end: keep the neighbours
            if epoch not in self._orders:
                rng = np.random.default_rng([self.seed, epoch])
                self._orders = {e: order for e, order in self._orders.items() if abs(e - epoch) <= 1}
                self._orders[epoch] = rng.permutation(len(self.x))
            return self._orders[epoch]

    @property
    def num_batches(self) -> int:
        return self.steps * self.epochs

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, step = divmod(int(index), self.steps)
        epoch += self.first_epoch
        picked = self._order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        x, y = np.asarray(self.x[picked]), self.y[picked]
        if self.augmentation is not None:
            x = keras.ops.convert_to_numpy(self.augmentation(x, training=True)).astype(x.dtype)
        if self.augment is not None:
            with self._augment_lock:
                augmented = np.asarray(self.augment(x, epoch * self.steps + step))
            if augmented.shape != x.shape:
                raise ValueError(f"augment returned shape {augmented.shape} for a batch of "
                                 f"shape {x.shape}; it must keep the shape")
            x = augmented.astype(x.dtype, copy=False)
        return x, y


class _LearningRateLog(keras.callbacks.Callback):
    """Adds the optimiser's learning rate to the epoch logs as ``lr``."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            rate = self.model.optimizer.learning_rate
            logs["lr"] = float(keras.ops.convert_to_numpy(rate))


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop training after an epoch whose mean loss is NaN or infinite (then any batch's was).

    Keras' ``TerminateOnNaN`` checks every batch, and a callback with a batch hook makes Keras wait
    for each step and read its loss before dispatching the next (no asynchronous dispatch): on a
    GPU the device then idles between steps. Checking once per epoch costs nothing; a diverged
    epoch keeps no weights (its ``val_loss`` is not finite, see :class:`_KeepBest`).
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True


def _history_frame(history: dict[str, list], first_epoch: int = 0) -> pd.DataFrame:
    frame = pd.DataFrame({key: np.asarray(values, dtype=np.float64)
                          for key, values in history.items()})
    if "learning_rate" in frame and "lr" not in frame:
        frame = frame.rename(columns={"learning_rate": "lr"})
    frame.insert(0, "epoch", np.arange(first_epoch + 1, first_epoch + len(frame) + 1))
    ordered = [c for c in HISTORY_COLUMNS if c in frame]
    return frame[ordered + [c for c in frame if c not in ordered]]


class _KeepBest(keras.callbacks.Callback):
    """Keep, in memory, the weights of the epoch with the lowest finite ``val_loss`` so far.

    (Keras' ModelCheckpoint would write the whole model with its optimiser state, hundreds of
    megabytes for VGG, at every improvement.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.best = np.inf
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get("val_loss")
        if value is not None and np.isfinite(value) and value < self.best:
            self.best = float(value)
            self.weights = [np.array(w, copy=True) for w in self.model.get_weights()]


def save_without_optimizer(model: keras.Model, path: Path | str) -> Path:
    """Save ``model`` as ``.keras`` with its weights but no optimiser state (a third of the size
    for Adam), through an uncompiled clone; reload with ``keras.saving.load_model``."""
    clone = keras.Model.from_config(model.get_config())  # clone_model would keep the optimiser
    clone.set_weights(model.get_weights())
    clone.save(str(path))
    return Path(path)


def _fine_tune_optimiser(model: keras.Model, learning_rate: float) -> Optimizer:
    """A fresh optimiser of the model's kind and settings at ``learning_rate`` (the optimiser
    inside a mixed-precision ``LossScaleOptimizer``: compile wraps it again)."""
    optimizer = model.optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    config = optimizer.get_config()
    config["learning_rate"] = learning_rate
    return type(optimizer).from_config(config)


def _current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def train(model: keras.Model, x_train: np.ndarray, y_train: np.ndarray,
          x_val: np.ndarray, y_val: np.ndarray, *, epochs: int, batch_size: int,
          run_dir: Path, seed: int, class_weight: dict | None = None,
          early_stopping_patience: int | None = None,
          augmentation: keras.layers.Layer | None = None,
          augment: Augment | None = None,
          fine_tune_epochs: int = 0, fine_tune_learning_rate: float | None = None,
          fine_tune_freeze: str | int = "none",
          verbose: int | str = 2, saved_model: keras.Model | None = None,
          save_model: bool = True, workers: int | str = 1,
          distribution: str = "none") -> pd.DataFrame:
    """Fit a compiled ``model``; keep the best epoch (lowest ``val_loss``); return the history.

    Writes ``run_dir/best.keras`` (the best model, whose weights ``model`` ends with) and
    ``run_dir/history.csv`` (epoch numbered from 1, loss, accuracy, val_loss, val_accuracy,
    lr). Both appear only when training succeeds; a failure leaves ``run_dir`` untouched.
    ``y_train``/``y_val`` are class indices, converted for the loss (``encode_labels``).

    ``augment(x, index)`` (or the Keras layer ``augmentation``) changes training batches only,
    never validation data; see :class:`ShuffledBatches`.

    Two phases when ``fine_tune_epochs > 0`` (Keras' transfer-learning guide): after
    ``epochs`` epochs with the model as built (e.g. ``freeze="base"``: head only), the best
    weights so far are restored, the backbone is re-frozen with ``fine_tune_freeze`` ("none":
    all trainable; N or "top-N"), the model recompiled with the same optimiser settings at
    ``fine_tune_learning_rate`` (default a tenth of the first phase's), and trained for
    ``fine_tune_epochs`` more epochs. The history then has a ``phase`` column (1, 2) and the
    best checkpoint is the best of both phases. Early stopping applies to each phase.

    ``saved_model``: the model written to ``best.keras`` when it is not ``model`` itself, e.g. the
    whole classifier when ``model`` is its head (:func:`split_at_backbone`). ``save_model=False``
    writes no ``best.keras`` (a run that keeps no model file: :func:`helpers.pipeline.save_network`).

    ``workers`` (an int or "auto": :func:`resolve_workers`) threads prepare training and
    validation batches ahead; the stream is the same for any number (:class:`ShuffledBatches`).
    ``distribution`` "data-parallel": ``model`` must have been built and compiled in the same
    :func:`distribution_scope`; ``batch_size`` is the global batch, split across the devices, and
    the learning rate is not scaled with the number of devices.
    """
    if getattr(model, "optimizer", None) is None or not model.compiled:
        raise ValueError(f"model {model.name} is not compiled: call compile_classifier first")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if fine_tune_epochs < 0:
        raise ValueError(f"fine_tune_epochs must be >= 0, got {fine_tune_epochs}")
    if fine_tune_epochs:
        find_backbone(model)  # fail before training, not after phase one
    num_classes = int(model.output_shape[-1])
    x_train, y_train = _check_xy(x_train, y_train, "train", max(num_classes, 2))
    x_val, y_val = _check_xy(x_val, y_val, "val", max(num_classes, 2))
    y_train, y_val = encode_labels(y_train, model), encode_labels(y_val, model)
    workers = resolve_workers(workers)
    distribution_devices(distribution)  # an unsupported backend fails before training
    set_determinism(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=".train-", dir=run_dir))
    try:
        best_path = work_dir / BEST_MODEL_FILE

        keep_best = _KeepBest()

        def fit(phase_epochs: int, first_epoch: int) -> pd.DataFrame:
            batches = ShuffledBatches(x_train, y_train, batch_size=batch_size,
                                      epochs=phase_epochs, seed=seed, augmentation=augmentation,
                                      augment=augment, first_epoch=first_epoch,
                                      workers=1 if augmentation is not None else workers)
            validation = OrderedBatches(x_val, y_val, batch_size=batch_size, workers=workers)
            callbacks: list[keras.callbacks.Callback] = [
                _LearningRateLog(),
                _StopOnNonFiniteLoss(),
                keep_best,
            ]
            if early_stopping_patience is not None:
                callbacks.append(keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=early_stopping_patience))
            with distribution_scope(distribution):
                fitted = model.fit(batches, steps_per_epoch=batches.steps, epochs=phase_epochs,
                                   validation_data=validation, class_weight=class_weight,
                                   callbacks=callbacks, verbose=verbose)
            if keep_best.weights is None:
                raise RuntimeError(f"training {model.name} never reached a finite val_loss; "
                                   f"no best model was kept")
            model.set_weights(keep_best.weights)
            return _history_frame(fitted.history, first_epoch)

        history = fit(epochs, 0)
        if fine_tune_epochs:
            rate = (fine_tune_learning_rate if fine_tune_learning_rate is not None
                    else _current_learning_rate(model) * FINE_TUNE_LR_FACTOR)
            set_freeze(model, fine_tune_freeze)
            with distribution_scope(distribution):
                model.compile(optimizer=_fine_tune_optimiser(model, rate), loss=model.loss,
                              metrics=["accuracy"], jit_compile=model.jit_compile,
                              run_eagerly=model.run_eagerly)
            second = fit(fine_tune_epochs, len(history))  # keep_best goes on from phase one's best
            history = pd.concat([history.assign(phase=1), second.assign(phase=2)],
                                ignore_index=True)
        with atomic_path(run_dir / HISTORY_FILE) as tmp:
            history.to_csv(tmp, index=False)
        if save_model:
            save_without_optimizer(saved_model if saved_model is not None else model, best_path)
            with atomic_path(run_dir / BEST_MODEL_FILE) as tmp:
                shutil.move(best_path, tmp)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return history
