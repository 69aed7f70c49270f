"""Deep features + SVM: the ConvNet+SVM hybrid of Mahmood et al. (2021), seed 000.

A trained Keras classifier is cut at one of its layers (by default the pooled features before
the head, e.g. ``paper000_gap``) and its activations feed a support vector machine, as in the
paper's Figure 6 ("features extraction from fully connected layer to be input into SVM
classifier"; its best model used a linear kernel). Three pieces:

- :class:`DeepFeatureExtractor`, a scikit-learn transformer around a *trained* Keras model;
- :func:`svm_pipeline`, extractor -> ``StandardScaler`` -> SVC;
- :func:`tune_svm`, a grid search over the kernel, ``C`` and ``gamma`` (``SVM_PARAM_GRID``) on
  patient-grouped folds of the training split, returning the refit pipeline.

Probabilities. ``SVC(probability=True)`` is deprecated in scikit-learn 1.9 (removed in 1.11);
its documented replacement is ``CalibratedClassifierCV(SVC(), ensemble=False)``, which is what
libsvm did internally: the SVC is fitted on all the data and a sigmoid (Platt scaling) on
cross-validated decision values. So the SVC step of a pipeline with ``probability=True`` is such
a calibrated SVC. The grid search itself scores plain SVCs (``balanced_accuracy`` needs only
``predict``), which spares one inner cross-validation per candidate and fold.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from helpers import backend  # noqa: F401  (imports Keras quietly)
import keras
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted, validate_data

from helpers import models as _models  # noqa: F401 - registers ImageNormalisation for load_model

# Layers whose output is a pooled (or flattened) feature vector: the default cut of a classifier.
FEATURE_LAYER_TYPES = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
                       keras.layers.Flatten)

# Small on purpose (it runs on two CPU cores): 4 linear + 9 RBF candidates. Features are
# standardised first, so "scale" = 1 / n_features; 1e-4 and 1e-2 bracket it for the usual
# widths of pooled CNN features (a few hundred to a couple of thousand).
SVM_PARAM_GRID: list[dict[str, list]] = [
    {"svc__kernel": ["linear"], "svc__C": [0.01, 0.1, 1.0, 10.0]},
    {"svc__kernel": ["rbf"], "svc__C": [0.1, 1.0, 10.0], "svc__gamma": ["scale", 1e-4, 1e-2]},
]
CALIBRATION_FOLDS = 5  # folds of the Platt scaling (libsvm's own number), fewer for tiny classes
DEFAULT_CV_SPLITS = 5


# --------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------


def _layer_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers]


def default_feature_layer(model: keras.Model) -> str:
    """Name of the first top-level GlobalAveragePooling2D, GlobalMaxPooling2D or Flatten layer.

    Only the model's own (top-level) layers are searched, so pooling layers inside the nested
    backbone of a ``build_classifier`` model are skipped: the answer is the pooling that opens
    the head (``paper000_gap``, ``paper001_flatten``, ...).
    """
    for layer in model.layers:
        if isinstance(layer, FEATURE_LAYER_TYPES):
            return layer.name
    raise ValueError(f"model {model.name!r} has no top-level GlobalAveragePooling2D, "
                     f"GlobalMaxPooling2D or Flatten layer to take features from; pass layer= "
                     f"one of its layers: {', '.join(_layer_names(model))}")


def load_model(model: keras.Model | str | Path) -> keras.Model:
    """``model`` itself, or the model in the ``.keras`` file it names (loaded without compiling)."""
    if isinstance(model, keras.Model):
        return model
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be a keras.Model or the path of a .keras file, "
                        f"got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"could not load a Keras model from {path}: "
                         f"{type(error).__name__}: {error}") from error


def _single_input_shape(model: keras.Model) -> tuple:
    if len(model.inputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs; "
                         f"DeepFeatureExtractor needs a single-input model")
    return tuple(model.inputs[0].shape[1:])


def _feature_model(model: keras.Model, layer: str) -> keras.Model:
    return keras.Model(model.inputs[0], model.get_layer(layer).output,
                       name=f"{model.name}_{layer}")


class DeepFeatureExtractor(TransformerMixin, BaseEstimator):
    """Activations of one layer of a trained Keras model, as a scikit-learn transformer.

    Parameters
    ----------
    model : keras.Model or str or Path
        The trained network, or the path of a ``.keras`` file (loaded in ``fit`` without
        compiling). It is used as it is: the extractor never trains it.
    layer : str or None
        Name of a top-level layer of ``model``; None takes :func:`default_feature_layer`, the
        pooled features before the head.
    batch_size : int
        Images per forward pass in ``transform``.

    ``fit`` learns nothing from the data: it validates ``X``, resolves the model and layer and
    builds the feature sub-model ``model.inputs -> layer.output``. Fitted attributes: ``model_``,
    ``layer_``, ``feature_model_``, ``n_features_in_`` (``X.shape[1]``, scikit-learn's
    convention; for images that is the height, the full per-sample shape is checked against the
    model's input) and ``n_features_out_`` (the feature width).

    ``clone`` shares the model object instead of deep-copying it (a trained network is an input,
    like a weights file; copying a Keras model is slow and may fail), see ``__sklearn_clone__``.
    Pickling works; the feature sub-model is rebuilt from ``model_`` on unpickling, so that it
    keeps sharing the model's weights.
    """

    def __init__(self, model: keras.Model | str | Path | None = None, layer: str | None = None,
                 batch_size: int = 32) -> None:
        self.model = model
        self.layer = layer
        self.batch_size = batch_size

    def __sklearn_clone__(self) -> "DeepFeatureExtractor":
        """A new unfitted extractor with the same parameters; the Keras model is shared."""
        params = {name: value if name == "model" else clone(value, safe=False)
                  for name, value in self.get_params(deep=False).items()}
        new = type(self)(**params)
        if hasattr(self, "_sklearn_output_config"):  # set_output(...) survives cloning
            new._sklearn_output_config = copy.deepcopy(self._sklearn_output_config)
        return new

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images: (N, H, W, C) arrays are accepted
        tags.transformer_tags.preserves_dtype = ["float32"]  # features are float32
        tags.target_tags.required = False
        tags.non_deterministic = False  # inference only: dropout off, batch norm frozen
        tags.requires_fit = True
        return tags

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: BaseEstimator may return __dict__ itself
        state.pop("feature_model_", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "model_" in state and "layer_" in state:
            self.feature_model_ = _feature_model(self.model_, self.layer_)

    def _validate(self, X: Any, *, reset: bool) -> np.ndarray:
        return validate_data(self, X, reset=reset, allow_nd=True, dtype=np.float32,
                             ensure_all_finite=True, ensure_min_samples=1)

    def _check_shape(self, X: np.ndarray, model: keras.Model) -> None:
        expected = _single_input_shape(model)
        got = tuple(X.shape[1:])
        matches = len(got) == len(expected) and all(
            want is None or int(want) == have for want, have in zip(expected, got))
        if not matches:
            shown = tuple(None if side is None else int(side) for side in expected)
            raise ValueError(f"X has per-sample shape {got} but model {model.name!r} expects "
                             f"inputs of shape {shown} (None = any size)")

    def fit(self, X: Any, y: Any = None) -> "DeepFeatureExtractor":
        """Validate ``X`` and set up the feature model; learns nothing from the data."""
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.model is None:
            raise ValueError("DeepFeatureExtractor needs model= (a keras.Model or a .keras path)")
        X = self._validate(X, reset=True)
        model = load_model(self.model)
        self._check_shape(X, model)
        if self.layer is None:
            layer = default_feature_layer(model)
        elif self.layer in _layer_names(model):
            layer = self.layer
        else:
            raise ValueError(f"model {model.name!r} has no top-level layer {self.layer!r}; "
                             f"its layers: {', '.join(_layer_names(model))}")
        self.model_ = model
        self.layer_ = layer
        self.feature_model_ = _feature_model(model, layer)
        output_shape = tuple(self.feature_model_.outputs[0].shape[1:])
        if all(side is not None for side in output_shape):
            self.n_features_out_ = int(np.prod(output_shape, dtype=np.int64))
        else:  # e.g. Flatten over a spatially unsized input: measure it
            self.n_features_out_ = self._forward(X[:1]).shape[1]
        return self

    def _forward(self, X: np.ndarray) -> np.ndarray:
        batches = [keras.ops.convert_to_numpy(
                       self.feature_model_(X[start:start + self.batch_size], training=False))
                   for start in range(0, len(X), self.batch_size)]
        return np.concatenate(batches).reshape(len(X), -1).astype(np.float32, copy=False)

    def transform(self, X: Any) -> np.ndarray:
        """Features of ``X``: a float32 array of shape ``(n_samples, n_features_out_)``."""
        check_is_fitted(self, "feature_model_")
        X = self._validate(X, reset=False)
        self._check_shape(X, self.model_)
        return self._forward(X)

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        """``"<layer>_0"``, ``"<layer>_1"``, ... one name per output feature."""
        check_is_fitted(self, "n_features_out_")
        _check_feature_names_in(self, input_features)  # validates input_features if given
        return np.asarray([f"{self.layer_}_{index}" for index in range(self.n_features_out_)],
                          dtype=object)


# --------------------------------------------------------------------------------------------
# Pipeline, folds and grid search
# --------------------------------------------------------------------------------------------


def calibrated_svc(svc: SVC, *, seed: int,
                   folds: int = CALIBRATION_FOLDS) -> CalibratedClassifierCV:
    """``svc`` with Platt-scaled probabilities (sigmoid on ``folds``-fold decision values)."""
    return CalibratedClassifierCV(svc, method="sigmoid", ensemble=False,
                                  cv=StratifiedKFold(folds, shuffle=True, random_state=seed))


def svm_pipeline(extractor: DeepFeatureExtractor | None, *, seed: int, probability: bool = True,
                 calibration_folds: int = CALIBRATION_FOLDS, **svc_params: Any) -> Pipeline:
    """``[features ->] StandardScaler -> SVC(class_weight="balanced")``, steps named as shown.

    The ``"svc"`` step is ``calibrated_svc(SVC(...))`` when ``probability`` (it has
    ``predict_proba``), else the bare SVC (what the grid search scores; its parameters are
    ``svc__C`` etc.). ``svc_params`` go to the SVC (``kernel``, ``C``, ``gamma``). Without an
    extractor the pipeline takes features.
    """
    svc = SVC(class_weight="balanced", random_state=seed, **svc_params)
    steps: list[tuple[str, Any]] = [] if extractor is None else [("features", extractor)]
    steps.append(("scale", StandardScaler()))
    steps.append(("svc", calibrated_svc(svc, seed=seed, folds=calibration_folds)
                  if probability else svc))
    return Pipeline(steps)


def _check_labels_groups(y: Any, groups: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    groups = np.asarray(groups)
    if y.ndim != 1 or len(y) == 0 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be a non-empty 1-D array of int class indices, got dtype "
                         f"{y.dtype} and shape {y.shape}")
    if groups.shape != y.shape:
        raise ValueError(f"groups (patient ids) has shape {groups.shape} but y has {y.shape}")
    classes = np.unique(y)
    if classes.tolist() != list(range(len(classes))) or len(classes) < 2:
        raise ValueError(f"y must hold the class indices 0..C-1 with C >= 2 (all present), got "
                         f"{classes.tolist()}")
    return y, groups


def grouped_folds(y: Any, groups: Any, *, n_splits: int = DEFAULT_CV_SPLITS,
                  seed: int) -> StratifiedGroupKFold:
    """Patient-grouped, stratified, shuffled folds with as many splits as the data allow.

    ``n_splits`` is lowered to the number of patients of the rarest class (each validation
    part should see every class) and must stay at least 2: a class with fewer than 2 patients
    is a ValueError.
    """
    y, groups = _check_labels_groups(y, groups)
    patients = {int(label): len(np.unique(groups[y == label])) for label in np.unique(y)}
    fewest = min(patients.values())
    if fewest < 2:
        raise ValueError(f"patient-grouped cross-validation needs at least 2 patients in every "
                         f"class; patients per class: {patients}")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    return StratifiedGroupKFold(n_splits=min(n_splits, fewest), shuffle=True, random_state=seed)


@dataclass
class SvmSearch:
    """What :func:`tune_svm` returns."""

    pipeline: Pipeline  # extractor -> scaler -> calibrated SVC, best parameters, refit on all
    search: GridSearchCV  # the fitted search over scaler -> SVC on the extracted features
    best_params: dict[str, Any]  # e.g. {"svc__C": 1.0, "svc__kernel": "linear"}
    cv_table: pd.DataFrame  # kernel, C, gamma, mean_score, std_score, rank: one row per candidate
    folds: list[tuple[np.ndarray, np.ndarray]]  # (fit, validation) indices of the training split


def _cv_table(results: dict) -> pd.DataFrame:
    params = results["params"]
    return pd.DataFrame({
        "kernel": [p.get("svc__kernel", "rbf") for p in params],
        "C": [float(p.get("svc__C", 1.0)) for p in params],
        "gamma": [p.get("svc__gamma") for p in params],
        "mean_score": np.asarray(results["mean_test_score"], dtype=float),
        "std_score": np.asarray(results["std_test_score"], dtype=float),
        "rank": np.asarray(results["rank_test_score"], dtype=int),
    })


def _calibrated_name(name: str) -> str:
    """A search parameter name in the calibrated pipeline: ``svc__C`` -> ``svc__estimator__C``."""
    return "svc__estimator__" + name.removeprefix("svc__") if name.startswith("svc__") else name


def tune_svm(extractor: DeepFeatureExtractor | None, x_train: Any, y_train: Any,
             groups_train: Any, *, seed: int, scoring: str = "balanced_accuracy",
             n_splits: int = DEFAULT_CV_SPLITS,
             param_grid: list[dict[str, list]] | dict[str, list] = SVM_PARAM_GRID) -> SvmSearch:
    """Grid-search the SVM on patient-grouped folds of the TRAINING split; refit on all of it.

    Pass only the training split (``groups_train`` = its patient ids); the test split must not
    be seen here. The extractor learns nothing from data, so features are extracted once
    (``extractor.fit(x_train).transform(x_train)``) and the search runs over ``scaler -> SVC``
    on them: fitting ``extractor -> scaler -> SVC`` on a fold would compute the very same
    features, only once per fold and candidate. The returned ``pipeline`` chains the fitted
    extractor with a scaler and a calibrated SVC (best parameters) fitted on all training
    features, so ``pipeline.predict_proba(images)`` equals the scaler+SVC on
    ``extractor.transform(images)``: probabilities ``(N, C)`` in class order 0..C-1. With
    ``extractor=None``, ``x_train`` holds features already. Deterministic for a given ``seed``.
    """
    y, groups = _check_labels_groups(y_train, groups_train)
    if len(x_train) != len(y):
        raise ValueError(f"x_train has {len(x_train)} samples but y_train has {len(y)}")
    features = (np.asarray(x_train, dtype=np.float32) if extractor is None
                else extractor.fit(x_train).transform(x_train))
    splitter = grouped_folds(y, groups, n_splits=n_splits, seed=seed)
    folds = list(splitter.split(features, y, groups))
    search = GridSearchCV(svm_pipeline(None, seed=seed, probability=False), param_grid,
                          scoring=scoring, cv=folds, refit=False, error_score="raise")
    search.fit(features, y)
    best_params = dict(search.best_params_)
    calibration_folds = min(CALIBRATION_FOLDS, int(np.bincount(y).min()))  # >= 2, see above
    head = svm_pipeline(None, seed=seed, calibration_folds=calibration_folds)
    head.set_params(**{_calibrated_name(name): value for name, value in best_params.items()})
    head.fit(features, y)
    steps = list(head.steps) if extractor is None else [("features", extractor), *head.steps]
    return SvmSearch(pipeline=Pipeline(steps), search=search, best_params=best_params,
                     cv_table=_cv_table(search.cv_results_), folds=folds)
