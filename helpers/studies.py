"""The one registry of the five studies: what each paper did and what each reported.

Everything here is transcribed from the seed texts (``shared/seeds/000..004``); presets, the run
plan and the comparison report read it, and nothing else in the project repeats these numbers.
Where a paper does not state something the value is ``None`` and ``Study.notes`` says so.

Conventions:

- Metrics are fractions in [0, 1], converted from the paper's percentages exactly as printed.
- ``Recipe.augmentation``: a key present with value ``None`` means the paper says it applied that
  transform but gives no amount. A scalar rotation/shift is a symmetric range in the sense of
  Keras' ``ImageDataGenerator`` (``rotation_deg: 45`` means +/-45 degrees); a tuple is an explicit
  ``(low, high)`` range.
- ``Reported.dataset`` is a dataset name, or names joined by ``+`` when the paper pooled them.
- ``Reported.backbone`` is a backbone registry name, or ``"resnet50+alexnet"`` (paper 003's fusion)
  or ``"convnet"`` (paper 000's own "Proposed ConvNet", whose architecture the paper never names).
- ``Study.scoring`` says how the paper's precision, recall and F1 combine its classes (its own
  positive class, a macro or a support-weighted average, or unknown), quoting where it says so,
  and its test set's class support where it prints one: the report compares our numbers computed
  the same way, and what always predicting the majority class would score on that support.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import pandas as pd

DATASET_NAMES: tuple[str, ...] = ("mias", "inbreast", "cbis-ddsm", "mini-ddsm", "breakhis", "private")
BACKBONE_NAMES: tuple[str, ...] = (
    "vgg16", "vgg19", "googlenet", "mobilenetv2", "resnet50", "densenet121", "alexnet",
    "squeezenet", "mobilenetv3small", "mobilenetv3large", "resnet50v2", "inceptionv3",
)
REPORTED_ONLY_BACKBONES: tuple[str, ...] = ("resnet50+alexnet", "convnet")
HEAD_NAMES: tuple[str, ...] = ("paper000", "paper001", "paper002", "paper003", "paper004")
PRESET_NAMES: tuple[str, ...] = ("minimal", "paper000", "paper001", "paper002", "paper003", "paper004")
SCHEME_NAMES: tuple[str, ...] = ("none", "paper000", "paper001", "paper002", "paper003")
OPTIMISER_NAMES: tuple[str, ...] = ("adam", "sgdm", "rmsprop")
LOSS_NAMES: tuple[str, ...] = ("categorical_crossentropy", "binary_crossentropy", "mse")
TASK_NAMES: tuple[str, ...] = ("benign-vs-malignant", "normal-vs-abnormal", "normal-benign-malignant")
IMAGE_TYPES: tuple[str, ...] = ("mammogram-roi", "mammogram-full", "histopathology")
CLASSIFIER_NAMES: tuple[str, ...] = ("softmax", "svm", "fusion", "sigmoid")
FREEZE_MODES: tuple[str, ...] = ("none", "base")  # or a string starting "top-", in the paper's words
METRIC_FIELDS: tuple[str, ...] = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "macro_f1")
AVERAGING_METHODS: tuple[str, ...] = ("binary", "macro", "weighted", "unknown", "none")
"""How a paper's precision/recall/F1 combine its classes: ``binary`` (the positive class's own),
``macro`` (unweighted mean over the classes), ``weighted`` (weighted by class support), ``unknown``
(not stated), ``none`` (it reports no precision, recall or F1)."""
TABLE_COLUMNS: tuple[str, ...] = (
    "study", "slug", "dataset", "backbone", "classifier", "optimiser", "split",
    *METRIC_FIELDS, "averaging", "source", "note",
)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Recipe:
    """What a study did: data, preprocessing, augmentation, model and training settings."""

    datasets: tuple[str, ...]
    classes: tuple[str, ...]
    task: str
    image_type: str
    preprocessing: tuple[str, ...]
    preprocessing_params: Mapping[str, Any] = field(hash=False)
    preset: str  # our preset of the paper's preprocessing (helpers.preprocessing.PRESETS)
    augmentation: Mapping[str, Any] = field(hash=False)
    augmentation_scheme: str  # our scheme of the paper's augmentation (helpers.augmentation.SCHEMES)
    offline_expansion: int | None
    backbones: tuple[str, ...]
    head: str
    head_description: str
    optimisers: tuple[str, ...]
    loss: str
    learning_rate: float | None
    momentum: float | None
    weight_decay: float | None
    batch_size: int | None
    epochs: int | None
    input_size: tuple[int, int] | None
    split: str
    freeze: str
    svm: bool = False
    fusion: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "preprocessing_params", _frozen(self.preprocessing_params))
        object.__setattr__(self, "augmentation", _frozen(self.augmentation))
        for name in self.datasets:
            _require(name in DATASET_NAMES, f"Recipe: unknown dataset {name!r}; known: {DATASET_NAMES}")
        for name in self.backbones:
            _require(name in BACKBONE_NAMES, f"Recipe: unknown backbone {name!r}; known: {BACKBONE_NAMES}")
        for name in self.optimisers:
            _require(name in OPTIMISER_NAMES, f"Recipe: unknown optimiser {name!r}; known: {OPTIMISER_NAMES}")
        _require(self.head in HEAD_NAMES, f"Recipe: unknown head {self.head!r}; known: {HEAD_NAMES}")
        _require(self.preset in PRESET_NAMES, f"Recipe: unknown preset {self.preset!r}; known: {PRESET_NAMES}")
        _require(self.augmentation_scheme in SCHEME_NAMES,
                 f"Recipe: unknown augmentation scheme {self.augmentation_scheme!r}; known: {SCHEME_NAMES}")
        _require(self.loss in LOSS_NAMES, f"Recipe: unknown loss {self.loss!r}; known: {LOSS_NAMES}")
        _require(self.task in TASK_NAMES, f"Recipe: unknown task {self.task!r}; known: {TASK_NAMES}")
        _require(self.image_type in IMAGE_TYPES,
                 f"Recipe: unknown image_type {self.image_type!r}; known: {IMAGE_TYPES}")
        _require(self.freeze in FREEZE_MODES or self.freeze.startswith("top-"),
                 f"Recipe: freeze must be one of {FREEZE_MODES} or start with 'top-', got {self.freeze!r}")
        _require(len(self.classes) >= 2, f"Recipe: need at least two classes, got {self.classes!r}")
        if self.input_size is not None:
            _require(len(self.input_size) == 2 and all(v > 0 for v in self.input_size),
                     f"Recipe: input_size must be (height, width) > 0, got {self.input_size!r}")


    def settings(self) -> dict[str, Any]:
        """This recipe as a layer of run settings (:func:`helpers.plan.resolve_settings`); what the
        paper does not state is None, so that the layer below (``study.yaml``'s defaults) shows."""
        return {
            "dataset": self.datasets[0], "task": self.task, "preset": self.preset,
            "augmentation": self.augmentation_scheme, "head": self.head, "loss": self.loss,
            "optimiser": self.optimisers[0] if self.optimisers else None,
            "learning_rate": self.learning_rate, "momentum": self.momentum, "weight_decay": self.weight_decay,
            "batch_size": self.batch_size, "epochs": self.epochs, "image_size": self.input_size,
            "freeze": self.freeze, "offline_expansion": self.offline_expansion,
        }


@dataclass(frozen=True)
class Reported:
    """One result row a paper reported for its own model (metrics as fractions in [0, 1])."""

    dataset: str
    backbone: str
    classifier: str
    optimiser: str | None
    split: str | None
    accuracy: float | None
    precision: float | None
    recall: float | None
    specificity: float | None
    f1: float | None
    auc: float | None
    source: str
    note: str = ""
    macro_f1: float | None = None  # where the paper also prints a macro-averaged F1 (paper 003)

    def __post_init__(self) -> None:
        where = f"Reported row ({self.source}, {self.backbone})"
        for name in self.dataset.split("+"):
            _require(name in DATASET_NAMES, f"{where}: unknown dataset {name!r}; known: {DATASET_NAMES}")
        _require(self.backbone in BACKBONE_NAMES + REPORTED_ONLY_BACKBONES,
                 f"{where}: unknown backbone {self.backbone!r}")
        _require(self.classifier in CLASSIFIER_NAMES,
                 f"{where}: unknown classifier {self.classifier!r}; known: {CLASSIFIER_NAMES}")
        _require(self.optimiser is None or self.optimiser in OPTIMISER_NAMES,
                 f"{where}: unknown optimiser {self.optimiser!r}; known: {OPTIMISER_NAMES}")
        for name in METRIC_FIELDS:
            value = getattr(self, name)
            _require(value is None or 0.0 <= value <= 1.0,
                     f"{where}: {name}={value!r} is not a fraction in [0, 1]")


@dataclass(frozen=True)
class Scoring:
    """How a paper averaged precision, recall and F1 over its classes, and its test-set support."""

    averaging: str  # one of AVERAGING_METHODS
    evidence: str  # where the paper says so (quoted), or why it is unknown
    positive_class: str | None = None  # the paper's positive class, where it names one
    test_support: Mapping[str, int] | None = field(default=None, hash=False)  # class as printed -> cases
    support_source: str = ""  # where the support is printed, or that it is not

    def __post_init__(self) -> None:
        _require(self.averaging in AVERAGING_METHODS,
                 f"Scoring: unknown averaging {self.averaging!r}; known: {AVERAGING_METHODS}")
        _require(self.averaging != "binary" or self.positive_class is not None,
                 "Scoring: 'binary' averaging needs the paper's positive_class")
        if self.test_support is not None:
            object.__setattr__(self, "test_support", _frozen(self.test_support))
            _require(len(self.test_support) >= 2 and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in self.test_support.values()),
                f"Scoring: test_support must map at least two classes to counts, got {dict(self.test_support)}")
            _require(bool(self.support_source), "Scoring: test_support needs its support_source")


@dataclass(frozen=True)
class Study:
    """One seed paper: bibliographic data, its recipe and its reported results."""

    key: str
    slug: str
    authors: str
    year: int | None
    title: str
    venue: str
    doi: str | None
    seed_file: str
    recipe: Recipe
    reported: tuple[Reported, ...]
    scoring: Scoring
    notes: str = ""

    def __post_init__(self) -> None:
        _require(len(self.reported) > 0, f"Study {self.key}: no reported rows")
        _require(self.seed_file.startswith(self.key + "_"),
                 f"Study {self.key}: seed_file {self.seed_file!r} does not start with its key")
        for row in self.reported:
            for name in row.dataset.split("+"):
                _require(name in self.recipe.datasets,
                         f"Study {self.key}: reported dataset {name!r} is not in recipe.datasets")
        _require(self.scoring.averaging != "none" or all(
            r.precision is None and r.recall is None and r.f1 is None for r in self.reported),
            f"Study {self.key}: scoring says 'none' but a reported row has precision, recall or F1")


def _pct(value: float) -> float:
    """A percentage as printed in a paper, as a fraction (rounded to kill float noise)."""
    return round(value / 100.0, 10)


# --------------------------------------------------------------------------------------------
# 000 Mahmood et al. 2021
# --------------------------------------------------------------------------------------------
_POOLED_000 = "mias+inbreast+private"


def _row000(backbone: str, classifier: str, p: float, r: float, f1: float, sens: float,
            train_acc: float, val_acc: float, auc: float) -> Reported:
    return Reported(
        dataset=_POOLED_000, backbone=backbone, classifier=classifier, optimiser="adam",
        split="validation", accuracy=_pct(val_acc), precision=_pct(p), recall=_pct(r),
        specificity=None, f1=_pct(f1), auc=_pct(auc), source="Table 4",
        note=(f"Validation ACC column (the 913-image test set); Training ACC {train_acc}%; "
              f"the table's separate Sensitivity column reads {sens}%."),
    )


_MAHMOOD_2021 = Study(
    key="000",
    slug="mahmood2021",
    authors="Tariq Mahmood, Jianqiang Li, Yan Pei, Faheem Akhtar",
    year=2021,
    title=("An Automated In-Depth Feature Learning Algorithm for Breast Abnormality Prognosis and "
           "Robust Characterization from Mammography Images Using Deep Transfer Learning"),
    venue="Biology 2021, 10, 859 (MDPI)",
    doi="10.3390/biology10090859",
    seed_file="000_e72d55dbeaa42954.txt",
    recipe=Recipe(
        datasets=("mias", "inbreast", "private"),
        classes=("benign", "malignant"),
        task="benign-vs-malignant",
        image_type="mammogram-roi",
        preprocessing=("artefact_removal", "median_filter", "gaussian_filter", "bilateral_filter",
                       "clahe", "otsu_crop", "resize", "grey_to_rgb", "zero_mean"),
        preprocessing_params={
            "artefact_removal": "morphological opening and closing to remove annotation labels",
            "resize_to": (224, 224),
            "resize_interpolation": "nearest",
            "grey_to_rgb": "replicate the single channel",
            "zero_mean": "(x - mean) / sd over all sample data",
        },
        augmentation={
            "rotation_deg": 45, "width_shift": 0.15, "height_shift": 0.2, "crop_and_pad": 0.25,
            "zoom": 0.2, "shear_deg": 16, "flip": None, "brightness": None,
        },
        offline_expansion=8,
        backbones=("vgg16", "vgg19", "googlenet", "mobilenetv2", "resnet50", "densenet121"),
        preset="paper000",
        augmentation_scheme="paper000",
        head="paper000",
        head_description=("Last pooling layer of the final block replaced by global average pooling, "
                          "then batch normalisation, FC1, FC2 and a softmax output layer; dropout 0.5 "
                          "(Table 2, position not stated). ConvNet+SVM: deep features from the fully "
                          "connected layer fed to a linear-kernel SVM."),
        optimisers=("adam",),
        loss="categorical_crossentropy",
        learning_rate=0.001,
        momentum=0.9,
        weight_decay=0.0001,
        batch_size=32,
        epochs=90,
        input_size=(224, 224),
        split="6346 train / 913 test images (87.4% / 12.5%) after the eightfold expansion; "
              "the test set is reported as 'validation'",
        freeze="base",
        svm=True,
    ),
    reported=(
        _row000("vgg16", "softmax", 90.2, 90.2, 96.5, 93.8, 77.1, 90.2, 86.4),
        _row000("vgg19", "softmax", 93.5, 93.5, 97.0, 97.0, 78.3, 93.5, 87.6),
        _row000("googlenet", "softmax", 63.4, 63.4, 48.8, 53.6, 63.4, 63.4, 79.4),
        _row000("mobilenetv2", "softmax", 71.3, 71.3, 61.6, 87.7, 71.3, 82.9, 66.8),
        _row000("resnet50", "softmax", 75.1, 75.1, 67.3, 71.3, 67.5, 75.1, 75.8),
        _row000("densenet121", "softmax", 78.6, 78.0, 76.6, 86.6, 75.1, 72.9, 81.7),
        _row000("convnet", "softmax", 78.3, 78.4, 76.6, 90.0, 78.3, 77.1, 87.7),
        _row000("convnet", "svm", 97.8, 97.7, 97.6, 97.9, 97.7, 97.8, 91.4),
    ),
    scoring=Scoring(
        averaging="unknown",
        positive_class="malignant",
        evidence=("Section 5 defines precision as TrP / (TrP + FaP), TrP being one that 'is a positive "
                  "instance accurately diagnosed as positive (malignant)' (Equations 13-15: the malignant "
                  "class's own figures), computed with 'Python's sci-kit-learn module'; but Figure 8 shows "
                  "'(a) Performance analysis for Benign class, (b) performance analysis for Malignant "
                  "class, (c) the cumulative performance of both classes', and Table 4's recall equals "
                  "its Validation ACC for VGGNet16, VGGNet19, GoogLeNet and ResNet50, as a "
                  "support-weighted recall always does. Which of them Table 4 holds is not stated."),
        support_source=("not printed per class: 'There were 6346 mammography images (87.4% of the "
                        "dataset) in the training set and 913 (12.5% of the dataset) in the test set'"),
    ),
    notes=(
        "Results are given only for the pooled MIAS + INbreast + private set (Table 4), not per "
        "dataset, and the SVM only for the paper's own 'ConvNet' (not per backbone); the ConvNet's "
        "architecture and the SVM's feature source are not stated, hence backbone 'convnet'. "
        "Learning rate: Table 2 says 0.001 (recorded) while Section 6.2 says 1e-4 and Section 3.3.5 "
        "'Lr^-3'; momentum 0.9 is listed for Adam. FC1/FC2 widths are not stated. Freezing is "
        "contradictory: Section 4.2 says 'All layers of the networks were trainable' and also that "
        "the lower/convolutional layers are fixed while FC1, FC2 and output are fine-tuned "
        "(recorded as 'base'). Loss is not named beyond 'cross-entropy loss' with a softmax output "
        "(recorded as categorical_crossentropy). Filter kernel sizes, CLAHE clip limit and the Otsu "
        "details are not stated. Augmentation: Table 1 gives the settings (recorded; shear units not "
        "printed, degrees in ImageDataGenerator); the text also names flipping and brightness "
        "without settings. The eightfold expansion was applied before the train/test split (Table 3 "
        "counts are post-augmentation), so test images may be augmented copies of training images. "
        "Conflicts: the text gives the ConvNet+SVM F1 as 97.06% but Table 4 says 97.6 (recorded); "
        "Section 3.4 calls the Validation ACC column 'training accuracy rates'. The abstract "
        "describes 'normal and suspected regions', but the data contain no normal images."
    ),
)

# --------------------------------------------------------------------------------------------
# 001 Bokade et al. 2024
# --------------------------------------------------------------------------------------------


def _row001(backbone: str, optimiser: str, tpr: float, precision: float, accuracy: float,
            f1: float) -> Reported:
    return Reported(
        dataset="mini-ddsm", backbone=backbone, classifier="softmax", optimiser=optimiser,
        split="test", accuracy=accuracy, precision=precision, recall=tpr, specificity=None,
        f1=f1, auc=None, source="Table 3",
    )


_BOKADE_2024 = Study(
    key="001",
    slug="bokade2024",
    authors="Aarti Bokade, Mamta Patel, Ripal Pathak, Anand Bhatt, Pradeep Patel",
    year=2024,
    title="Transfer Learning with AlexNet and SqueezeNet for Enhanced Mammography Image Classification",
    venue="journal not named in the seed (submitted 17/03/2024, accepted 09/05/2024)",
    doi=None,
    seed_file="001_ed35c7c846f33fe2.txt",
    recipe=Recipe(
        datasets=("mini-ddsm",),
        classes=("normal", "benign", "malignant"),
        task="normal-benign-malignant",
        image_type="mammogram-full",
        preprocessing=("resize", "contrast_stretch", "grey_to_rgb"),
        preprocessing_params={
            "resize_to": (227, 227),
            "contrast_stretch": "rescale intensities to [0, L], L the maximum pixel intensity",
        },
        augmentation={"rotation_deg": (0, 360), "x_reflection": True, "translate_px": (-30, 30)},
        offline_expansion=None,
        backbones=("alexnet", "squeezenet"),
        preset="paper001",
        augmentation_scheme="paper001",
        head="paper001",
        head_description=("AlexNet: new fully connected layer (3 classes), new softmax layer and new "
                          "classification layer. SqueezeNet: new convolutional layer (in place of "
                          "conv10) and new classification layer. New layers use weight and bias "
                          "learn-rate factor 20."),
        optimisers=("adam", "sgdm"),
        loss="categorical_crossentropy",
        learning_rate=0.0001,
        momentum=None,
        weight_decay=None,
        batch_size=128,
        epochs=10,
        input_size=(227, 227),
        split="training 1964 normal / 2419 benign / 2589 cancer images; 1937 test images randomly selected",
        freeze="none",
    ),
    reported=(
        _row001("alexnet", "adam", 0.77, 0.77, 0.84, 0.76),
        _row001("alexnet", "sgdm", 0.70, 0.71, 0.80, 0.71),
        _row001("squeezenet", "adam", 0.70, 0.70, 0.80, 0.70),
        _row001("squeezenet", "sgdm", 0.57, 0.59, 0.71, 0.56),
    ),
    scoring=Scoring(
        averaging="unknown",
        evidence=("Section 3.2 gives precision = TP/(TP+FP) and 'True positive rate (TPR)/Recall' = "
                  "TP/(TP+FN) for three classes without saying how the classes are combined; not "
                  "support-weighted, since a weighted recall equals the accuracy and Table 3's TPR "
                  "(0.77 for AlexNet with Adam) is below its accuracy (0.84)."),
        support_source="not printed per class: Table 1, 'Total Testing Samples' 1937 '(Randomly selected)'",
    ),
    notes=(
        "Table 1 is ambiguous: it lists 'Total Training Samples' 1964/2419/2589 (normal/benign/"
        "cancer) and 'Total Testing Samples' 1937 '(Randomly selected)'; Table 2's 540 total "
        "iterations over 10 epochs at batch 128 fits about 6972 training images. Hyperparameters "
        "(Table 2) are printed in the AlexNet row and apparently shared with SqueezeNet; the setup "
        "is MATLAB-style (learn-rate factors, classification layer, validation every 50 iterations). "
        "Momentum for SGDM, weight decay and the loss are not stated (a classification layer after "
        "softmax is cross-entropy, recorded as categorical_crossentropy). Freezing is not stated: "
        "the text says 'the final layers are trained', while learn-rate factor 20 on the new layers "
        "is the idiom for fine-tuning the whole network (recorded as 'none'). '227x227x3' implies "
        "grey-to-RGB. 'X-axis reflection' is recorded as printed. AUC and confusion matrices are "
        "shown only as figures; accuracy is above TPR and precision, so it may be a per-class "
        "(one-vs-rest) average, which is not stated. The reference list is misnumbered (AlexNet, "
        "SqueezeNet and Mini-DDSM are cited as [10], [11], [12]/[14] but the list shifts by one)."
    ),
)

# --------------------------------------------------------------------------------------------
# 002 Kumar et al. 2022 (student project report)
# --------------------------------------------------------------------------------------------
_KUMAR_2022 = Study(
    key="002",
    slug="kumar2022",
    authors="N. Sravan Kumar, K. Avinash Reddy, C. Gokul Krishna Reddy (guide: S. Joseph James)",
    year=2022,
    title="Breast Cancer Classification with Transfer Learning",
    venue=("B.Tech minor project report (course 18AIC301J), SRM Institute of Science and "
           "Technology, Kattankulathur, November 2022"),
    doi=None,
    seed_file="002_8105cfe7a4733d5c.txt",
    recipe=Recipe(
        datasets=("breakhis",),
        classes=("benign", "malignant"),
        task="benign-vs-malignant",
        image_type="histopathology",
        preprocessing=("resize", "backbone_preprocess"),
        preprocessing_params={
            "backbone_preprocess": "keras.applications <backbone>.preprocess_input inside the model",
        },
        augmentation={"brightness_factor": 0.2, "flip": "horizontal_and_vertical", "rotation_factor": 0.2},
        offline_expansion=None,
        backbones=("vgg16", "mobilenetv3large", "resnet50v2"),
        preset="paper002",
        augmentation_scheme="paper002",
        head="paper002",
        head_description=("On the pretrained base: VGG16 Dropout 0.4, Dense 384 ReLU, Dropout 0.3, "
                          "Dense 64 ReLU, Dropout 0.2, Dense 1 sigmoid; MobileNetV3 Dropout 0.4, "
                          "Dense 256 ReLU, Dropout 0.3, Dense 32 ReLU, Dropout 0.2, Dense 1 sigmoid; "
                          "ResNet Dropout 0.4, Dense 256 ReLU, Dense 32 ReLU, Dense 32 ReLU, "
                          "Dropout 0.2, Dense 1 sigmoid."),
        optimisers=("adam",),
        loss="binary_crossentropy",
        learning_rate=None,
        momentum=None,
        weight_decay=None,
        batch_size=None,
        epochs=None,
        input_size=None,
        split=("train/validation by sklearn train_test_split (default proportions, random_state=SEED) "
               "plus a separate test set; sizes not stated"),
        freeze="base",
    ),
    reported=(
        Reported(dataset="breakhis", backbone="vgg16", classifier="sigmoid", optimiser="adam",
                 split=None, accuracy=0.875389, precision=None, recall=None, specificity=None,
                 f1=None, auc=None, source="Table 2", note="loss 0.319651"),
        Reported(dataset="breakhis", backbone="mobilenetv3large", classifier="sigmoid",
                 optimiser="adam", split=None, accuracy=0.811526, precision=None, recall=None,
                 specificity=None, f1=None, auc=None, source="Table 2",
                 note="loss 0.402126; MobileNetV3 variant (Small/Large) not stated"),
        Reported(dataset="breakhis", backbone="resnet50v2", classifier="sigmoid", optimiser="adam",
                 split=None, accuracy=0.858255, precision=None, recall=None, specificity=None,
                 f1=None, auc=None, source="Table 2",
                 note="loss 0.319679; column headed 'ResNet', code builds ResNet50V2"),
    ),
    scoring=Scoring(
        averaging="none",
        evidence=("Table 2 gives accuracy and loss only; the method lists 'metrics like accuracy, "
                  "precision, recall, F1 score, and confusion matrix' but reports none of the others."),
        support_source="not printed: the test set's size is not stated",
    ),
    notes=(
        "A student minor-project report, not a peer-reviewed paper. The dataset is never named "
        "as used: the method says 'Common datasets include BreakHis' for histopathology images "
        "(recorded as breakhis). Image size, batch size, epochs, learning rate and seed are "
        "constants (IMG_SIZE, BATCH_SIZE, SEED) whose values are not shown. Adam and binary "
        "cross-entropy are given as examples ('e.g.') in the method, consistent with the sigmoid "
        "output. The text says ResNet50 but the code uses resnet_v2.preprocess_input and names "
        "the model 'ResNet50V2' (recorded as resnet50v2). The MobileNetV3 variant is not stated "
        "(recorded as mobilenetv3large, an assumption). Augmentation is from the code: "
        "RandomBrightness(0.2), RandomFlip() with Keras defaults (horizontal_and_vertical), "
        "RandomRotation(0.2) (factor of a full turn, +/-72 degrees); the method text also lists "
        "zoom, which the code lacks. The method says normalise to [0, 1] ('e.g.'), the code uses "
        "each backbone's preprocess_input. Freezing per the method ('Freeze the pre-trained "
        "layers'). How the base is pooled before the head is not shown. Table 2 does not say "
        "whether accuracy and loss are on the validation or the test set; precision, recall and "
        "F1 are named as metrics but not reported."
    ),
)

# --------------------------------------------------------------------------------------------
# 003 Akhi et al. (year not printed)
# --------------------------------------------------------------------------------------------
_AKHI = Study(
    key="003",
    slug="akhi",
    authors="Jannatul Afroj Akhi, Jishan-E-Giti, Kazi Khairul Islam, Md Atiqur Rahman",
    year=None,
    title=("Hybrid Deep Learning for Enhanced Mammographic Classification: A Resnet50 and Alexnet "
           "Fusion Approach"),
    venue="not stated in the seed (IEEE conference format)",
    doi=None,
    seed_file="003_605b502416c30e9d.txt",
    recipe=Recipe(
        datasets=("cbis-ddsm",),
        classes=("normal", "benign", "malignant"),
        task="normal-benign-malignant",
        image_type="mammogram-full",
        preprocessing=("resize", "normalise"),
        preprocessing_params={"normalisation": ("decimal_scaling", "mean_normalisation")},
        augmentation={
            "rotation_deg": (-25, 25), "translate": None, "scale": (0.8, 1.2),
            "flip": "horizontal_and_vertical", "shear": None, "brightness": None, "contrast": None,
        },
        offline_expansion=None,
        backbones=("resnet50", "alexnet"),
        preset="paper003",
        augmentation_scheme="paper003",
        head="paper003",
        head_description=("Fusion: ResNet50 (initial conv/pool plus identity and convolutional "
                          "blocks) in parallel with the first few AlexNet convolutional layers; "
                          "feature maps concatenated, refined by convolutional layers, flattened, "
                          "fully connected layers with dropout and batch normalisation, softmax "
                          "over three classes."),
        optimisers=(),
        loss="categorical_crossentropy",
        learning_rate=None,
        momentum=None,
        weight_decay=None,
        batch_size=None,
        epochs=None,
        input_size=None,
        split="training and validation sets; proportions not stated",
        freeze="none",
        fusion=True,
    ),
    reported=(
        Reported(dataset="cbis-ddsm", backbone="resnet50", classifier="softmax", optimiser=None,
                 split="validation", accuracy=_pct(96.23), precision=_pct(95.56),
                 recall=_pct(96.23), specificity=None, f1=_pct(95.61), auc=None, macro_f1=_pct(71.52),
                 source="Table II",
                 note=("precision/recall/F1 are the weighted averages (macro 82.45/66.42/71.52); "
                       "text: training accuracy 0.9710, loss 0.0805, validation loss 0.1219")),
        Reported(dataset="cbis-ddsm", backbone="alexnet", classifier="softmax", optimiser=None,
                 split="validation", accuracy=_pct(95.99), precision=_pct(95.16),
                 recall=_pct(95.99), specificity=None, f1=_pct(95.23), auc=None, macro_f1=_pct(68.61),
                 source="Table III",
                 note=("weighted averages (macro 80.45/63.77/68.61); Section V calls 95.99% a "
                       "training accuracy (loss 0.1171) and says there were no validation figures")),
        Reported(dataset="cbis-ddsm", backbone="resnet50+alexnet", classifier="fusion",
                 optimiser=None, split="validation", accuracy=_pct(97.23), precision=_pct(95.56),
                 recall=_pct(96.23), specificity=None, f1=_pct(95.61), auc=None, macro_f1=_pct(71.52),
                 source="Table IV (unnumbered table after Fig. 9)",
                 note=("weighted averages, identical to ResNet50's Table II (macro 82.45/66.42/"
                       "71.52); class-1 F1 printed as 99.99")),
    ),
    scoring=Scoring(
        averaging="weighted",
        evidence=("Tables II-IV are scikit-learn classification reports (rows 'Class 0', 'Class 1', "
                  "'Accuracy', 'Macro Avg', 'Weighted Avg'; column 'Support'); the precision, recall "
                  "and F1 recorded are the 'Weighted Avg' row, the macro F1 the 'Macro Avg' row. "
                  "ResNet50's and AlexNet's weighted recall equals their accuracy, as a weighted "
                  "recall must (the fusion table's does not: 96.23 against 97.23)."),
        test_support={"Class 0": 66197, "Class 1": 3184},
        support_source=("Table II and the fusion table, 'Support' column (Table III's repeats precision "
                        "values); the text calls this the validation set. Which of the paper's classes "
                        "'Class 0' and 'Class 1' are is not stated."),
    ),
    notes=(
        "Year and venue are not printed in the seed. The text claims three classes (normal, "
        "benign, malignant), but every results table shows two classes (Class 0 support 66,197, "
        "Class 1 support 3,184; 69,381 in all, far more than CBIS-DDSM's images), and the class "
        "names, image unit (full image, ROI or patch) and split proportions are not explained; "
        "CBIS-DDSM as distributed holds no normal cases. VGG16 is named among the models used but "
        "has no results. No optimiser, loss, learning rate, batch size, epochs or input size is "
        "stated (loss recorded as categorical_crossentropy for the three-class softmax, an "
        "assumption); resizing method and normalisation were 'selected' per model without saying "
        "which. Augmentation amounts for translation, shear, brightness and contrast are not given "
        "(applied on the fly). Freezing is not stated (recorded as 'none'). Table inconsistencies: "
        "the fusion table copies ResNet50's rows except accuracy 97.23 and class-1 F1 99.99, which "
        "cannot follow from its precision 98.02 and recall 93.61 (nor can ResNet50's 94.99); the "
        "macro averages do not follow from the two class rows; AlexNet's support column repeats "
        "precision values. AlexNet's 95.99% is a validation accuracy in Section IV and the abstract "
        "but a training accuracy in Section V. The abstract reports ResNet50 96.23% and AlexNet "
        "95.99% on the test set while the tables' text calls them validation accuracies."
    ),
)

# --------------------------------------------------------------------------------------------
# 004 Abu Al-Haija and Manasra
# --------------------------------------------------------------------------------------------
_ABU_AL_HAIJA_2020 = Study(
    key="004",
    slug="abualhaija2020",
    authors="Qasem Abu Al-Haija, Ghandi F. Manasra",
    year=2020,
    title=("Development of Breast Cancer Detection Model Using Transfer Learning of Residual "
           "Neural Network (ResNet-50)"),
    venue="not stated in the seed (IEEE conference format)",
    doi=None,
    seed_file="004_261f09a15e496dca.txt",
    recipe=Recipe(
        datasets=("breakhis",),
        classes=("benign", "malignant"),
        task="benign-vs-malignant",
        image_type="histopathology",
        preprocessing=("resize", "normalise"),
        preprocessing_params={"resize_to": (96, 144)},
        augmentation={},
        offline_expansion=None,
        backbones=("resnet50",),
        preset="paper004",
        augmentation_scheme="none",
        head="paper004",
        head_description=("ResNet-50 features into a fully connected layer of 1024 neurons with 40% "
                          "dropout and ReLU, then one sigmoid output neuron (binary classifier)."),
        optimisers=("rmsprop",),
        loss="mse",
        learning_rate=None,
        momentum=None,
        weight_decay=None,
        batch_size=32,
        epochs=200,
        input_size=(96, 144),
        split="train 100X/200X/400X, test 40X (about 75% / 25%)",
        freeze="none",
    ),
    reported=(
        Reported(dataset="breakhis", backbone="resnet50", classifier="sigmoid", optimiser="rmsprop",
                 split="40X", accuracy=_pct(99.10), precision=None, recall=None, specificity=None,
                 f1=None, auc=None,
                 source="Table I (comparison table, row 'Proposed Method')",
                 note=("abstract and Section IV: 99% (average testing accuracy, fluctuating "
                       "98%-99.8% after 100 epochs); conclusion: 99.1%")),
    ),
    scoring=Scoring(
        averaging="none",
        positive_class="malignant",
        evidence=("Only accuracy is reported ('an average testing accuracy of 99%'; 99.10 % in the "
                  "comparison table); label encoding 'Benign' 0, 'Malignant' 1."),
        test_support={"benign": 652, "malignant": 1370},
        support_source=("the dataset table's 40X column (the test set is 'all images with 40X "
                        "magnification'), as printed; its row total (2480 benign) and column total "
                        "(1995 at 40X) imply 625 benign, not 652"),
    ),
    notes=(
        "The year is not printed in the seed; 2020 follows the project's seed list (newest "
        "references are from 2020). Only one result is given, on the 40X test images; no per-"
        "magnification breakdown, precision, recall or AUC. The accuracy is printed as 99% "
        "(abstract, text) and 99.10% (the comparison table, recorded; that row cites [56], a "
        "Spanhol et al. paper). Input is 144x96 (width x height), three channels. Learning rate "
        "is not stated; steps per epoch 200. Loss is MSE with a sigmoid output, although the "
        "classification module text also mentions cross-entropy. 'Batch normalization' at the "
        "data-generation stage and 'real-time data augmentation' are mentioned without any "
        "parameters (augmentation recorded as {}; normalisation method unknown). Freezing is "
        "unclear: Fig. 3 describes retraining only the classifier on a convolutional base, the "
        "text 'retrain the powerful ResNet-50 CNN with Fine-tuning' (recorded as 'none'). The "
        "split is by magnification, not by patient: BreakHis' 82 patients appear in both train "
        "and test. The dataset table prints 652 benign 40X images, but its totals (2480 benign, "
        "1995 at 40X) imply 625; the text calls it 'Table 2'."
    ),
)

STUDIES: dict[str, Study] = {
    study.key: study
    for study in (_MAHMOOD_2021, _BOKADE_2024, _KUMAR_2022, _AKHI, _ABU_AL_HAIJA_2020)
}


def get_study(key: str) -> Study:
    """The study with seed number ``key`` ("000" .. "004"); KeyError listing known keys otherwise."""
    try:
        return STUDIES[key]
    except KeyError:
        raise KeyError(f"unknown study {key!r}; known: {sorted(STUDIES)}") from None


def reported_table(study: str | None = None) -> pd.DataFrame:
    """One row per reported result (all studies, or the one with key ``study``)."""
    studies = [get_study(study)] if study is not None else list(STUDIES.values())
    rows = [
        {"study": s.key, "slug": s.slug, "averaging": s.scoring.averaging,
         **{name: getattr(r, name) for name in TABLE_COLUMNS[2:] if name != "averaging"}}
        for s in studies
        for r in s.reported
    ]
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.astype({name: "float64" for name in METRIC_FIELDS})


def best_reported(study: str, backbone: str) -> Reported | None:
    """The row of ``study`` with the highest accuracy for ``backbone`` (None if it has none)."""
    rows = [r for r in get_study(study).reported if r.backbone == backbone and r.accuracy is not None]
    return max(rows, key=lambda r: r.accuracy) if rows else None
