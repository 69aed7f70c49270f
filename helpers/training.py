"""Seeded, reproducible training: optimisers, ``train`` with checkpoints and a CSV history.

``train`` feeds the data through :class:`ShuffledBatches`, a ``keras.utils.PyDataset`` whose
batch order depends only on ``(seed, epoch)``, so the same seed gives bit-identical weights
and history on the CPU, in one process or across processes.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd

from helpers.paths import atomic_path

BEST_MODEL_FILE = "best.keras"
HISTORY_FILE = "history.csv"
Optimizer = keras.optimizers.Optimizer
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and the backend; on TensorFlow also make ops deterministic."""
    keras.utils.set_random_seed(int(seed))
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf  # only here: the rest of the project is backend-agnostic

        tf.config.experimental.enable_op_determinism()


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


def compile_classifier(model: keras.Model, *, optimiser: str = "adam",
                       learning_rate: float = 1e-3,
                       loss: str = "sparse_categorical_crossentropy",
                       weight_decay: float | None = None, momentum: float = 0.9) -> keras.Model:
    """Compile ``model`` with a named optimiser and the accuracy metric; return it."""
    if optimiser not in OPTIMISERS:
        raise KeyError(f"unknown optimiser {optimiser!r}; known: {', '.join(sorted(OPTIMISERS))}")
    model.compile(optimizer=OPTIMISERS[optimiser](learning_rate, weight_decay, momentum),
                  loss=loss, metrics=["accuracy"])
    return model


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced class weights ``n / (k * count)`` for the classes present (as scikit-learn)."""
    labels = _check_labels(np.asarray(y), "y")
    classes, counts = np.unique(labels, return_counts=True)
    return {int(c): float(len(labels) / (len(classes) * n)) for c, n in zip(classes, counts)}


def predict_proba(model: keras.Model, x: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Class probabilities, shape ``(N, num_classes)``, float64 (a sigmoid column -> 2 columns)."""
    proba = np.asarray(model.predict(np.asarray(x), batch_size=batch_size, verbose=0),
                       dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"model {model.name} outputs shape {proba.shape}, expected (N, classes)")
    if proba.shape[1] == 1:
        proba = np.concatenate([1.0 - proba, proba], axis=1)
    return proba


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


class ShuffledBatches(keras.utils.PyDataset):
    """Training batches for ``epochs`` epochs in one stream, order seeded per epoch.

    Batch ``k`` belongs to epoch ``k // steps``; its samples come from a permutation drawn
    from ``numpy.random.default_rng([seed, epoch])``, so the stream does not depend on when
    Keras prefetches. ``augmentation`` (a Keras layer) is applied to each batch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int,
                 seed: int, augmentation: keras.layers.Layer | None = None) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y = x, y
        self.batch_size, self.epochs, self.seed = batch_size, epochs, seed
        self.augmentation = augmentation
        self.steps = math.ceil(len(x) / batch_size)
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            self._orders = {epoch: rng.permutation(len(self.x))}
        return self._orders[epoch]

    @property
    def num_batches(self) -> int:
        return self.steps * self.epochs

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, step = divmod(int(index), self.steps)
        picked = self._order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        x, y = self.x[picked], self.y[picked]
        if self.augmentation is not None:
            x = keras.ops.convert_to_numpy(self.augmentation(x, training=True)).astype(x.dtype)
        return x, y


class _LearningRateLog(keras.callbacks.Callback):
    """Adds the optimiser's learning rate to the epoch logs as ``lr``."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            rate = self.model.optimizer.learning_rate
            logs["lr"] = float(keras.ops.convert_to_numpy(rate))


def _history_frame(history: dict[str, list]) -> pd.DataFrame:
    frame = pd.DataFrame({key: np.asarray(values, dtype=np.float64)
                          for key, values in history.items()})
    if "learning_rate" in frame and "lr" not in frame:
        frame = frame.rename(columns={"learning_rate": "lr"})
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    ordered = [c for c in HISTORY_COLUMNS if c in frame]
    return frame[ordered + [c for c in frame if c not in ordered]]


def train(model: keras.Model, x_train: np.ndarray, y_train: np.ndarray,
          x_val: np.ndarray, y_val: np.ndarray, *, epochs: int, batch_size: int,
          run_dir: Path, seed: int, class_weight: dict | None = None,
          early_stopping_patience: int | None = None,
          augmentation: keras.layers.Layer | None = None,
          verbose: int | str = 2) -> pd.DataFrame:
    """Fit a compiled ``model``; keep the best epoch (lowest ``val_loss``); return the history.

    Writes ``run_dir/best.keras`` (the best model, whose weights ``model`` ends with) and
    ``run_dir/history.csv`` (epoch numbered from 1, loss, accuracy, val_loss, val_accuracy,
    lr). Both appear only when training succeeds; a failure leaves ``run_dir`` untouched.
    """
    if getattr(model, "optimizer", None) is None or not model.compiled:
        raise ValueError(f"model {model.name} is not compiled: call compile_classifier first")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    num_classes = int(model.output_shape[-1])
    x_train, y_train = _check_xy(x_train, y_train, "train", max(num_classes, 2))
    x_val, y_val = _check_xy(x_val, y_val, "val", max(num_classes, 2))
    set_determinism(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    batches = ShuffledBatches(x_train, y_train, batch_size=batch_size, epochs=epochs,
                              seed=seed, augmentation=augmentation)
    work_dir = Path(tempfile.mkdtemp(prefix=".train-", dir=run_dir))
    try:
        best_path = work_dir / BEST_MODEL_FILE
        callbacks: list[keras.callbacks.Callback] = [
            _LearningRateLog(),
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_loss",
                                            save_best_only=True, verbose=0),
        ]
        if early_stopping_patience is not None:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=early_stopping_patience))
        fitted = model.fit(batches, steps_per_epoch=batches.steps, epochs=epochs,
                           validation_data=(x_val, y_val), validation_batch_size=batch_size,
                           class_weight=class_weight, callbacks=callbacks, verbose=verbose)
        if not best_path.is_file():
            raise RuntimeError(f"training {model.name} never reached a finite val_loss; "
                               f"no best model was saved")
        model.load_weights(str(best_path))
        history = _history_frame(fitted.history)
        with atomic_path(run_dir / HISTORY_FILE) as tmp:
            history.to_csv(tmp, index=False)
        with atomic_path(run_dir / BEST_MODEL_FILE) as tmp:
            shutil.move(best_path, tmp)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return history
