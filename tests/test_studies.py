"""Tests of helpers.studies: the registry of the five seed papers."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from helpers import plan, studies
from helpers.studies import STUDIES, Reported, best_reported, get_study, reported_table

SEEDS_DIR = Path(__file__).resolve().parents[2] / "shared" / "seeds"

ALLOWED_DATASETS = {"mias", "inbreast", "cbis-ddsm", "mini-ddsm", "breakhis", "private"}
ALLOWED_BACKBONES = {
    "vgg16", "vgg19", "googlenet", "mobilenetv2", "resnet50", "densenet121", "alexnet",
    "squeezenet", "mobilenetv3small", "mobilenetv3large", "resnet50v2", "inceptionv3",
}
ALLOWED_REPORTED_BACKBONES = ALLOWED_BACKBONES | {"resnet50+alexnet", "convnet"}
ALLOWED_HEADS = {"paper000", "paper001", "paper002", "paper003", "paper004"}
ALLOWED_OPTIMISERS = {"adam", "sgdm", "rmsprop"}
ALLOWED_LOSSES = {"categorical_crossentropy", "binary_crossentropy", "mse"}
ALLOWED_TASKS = {"benign-vs-malignant", "normal-vs-abnormal", "normal-benign-malignant"}
ALLOWED_IMAGE_TYPES = {"mammogram-roi", "mammogram-full", "histopathology"}
ALLOWED_CLASSIFIERS = {"softmax", "svm", "fusion", "sigmoid"}
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "macro_f1")
COLUMNS = ["study", "slug", "dataset", "backbone", "classifier", "optimiser", "split",
           "accuracy", "precision", "recall", "specificity", "f1", "auc", "macro_f1", "averaging", "source", "note"]
QUOTE = re.compile(r"(?<!\w)'(.+?)'(?!\w)")  # a quotation in single quotes (apostrophes inside words are not)


def all_rows() -> list[tuple[str, Reported]]:
    return [(s.key, r) for s in STUDIES.values() for r in s.reported]


def test_all_five_studies_present_with_matching_keys():
    assert list(STUDIES) == ["000", "001", "002", "003", "004"]
    for key, study in STUDIES.items():
        assert study.key == key
        assert study.seed_file.startswith(key + "_") and study.seed_file.endswith(".txt")
    assert len({s.slug for s in STUDIES.values()}) == 5


def test_every_study_has_reported_rows_and_metrics_are_fractions():
    for key, study in STUDIES.items():
        assert study.reported, f"study {key} has no reported rows"
    for key, row in all_rows():
        for name in METRICS:
            value = getattr(row, name)
            assert value is None or 0.0 <= value <= 1.0, (key, row.backbone, name, value)
        assert row.accuracy is not None, (key, row.backbone)


def test_names_belong_to_the_allowed_sets():
    for key, study in STUDIES.items():
        recipe = study.recipe
        assert set(recipe.datasets) <= ALLOWED_DATASETS, key
        assert set(recipe.backbones) <= ALLOWED_BACKBONES, key
        assert set(recipe.optimisers) <= ALLOWED_OPTIMISERS, key
        assert recipe.head in ALLOWED_HEADS, key
        assert recipe.loss in ALLOWED_LOSSES, key
        assert recipe.task in ALLOWED_TASKS, key
        assert recipe.image_type in ALLOWED_IMAGE_TYPES, key
        assert recipe.freeze in {"none", "base"} or recipe.freeze.startswith("top-"), key
        for row in study.reported:
            assert set(row.dataset.split("+")) <= set(recipe.datasets), (key, row.dataset)
            assert row.backbone in ALLOWED_REPORTED_BACKBONES, (key, row.backbone)
            assert row.backbone in recipe.backbones or row.backbone in {"resnet50+alexnet", "convnet"}
            assert row.classifier in ALLOWED_CLASSIFIERS, (key, row.classifier)
            assert row.optimiser is None or row.optimiser in ALLOWED_OPTIMISERS, key


def test_module_name_sets_match_the_documented_ones():
    assert set(studies.DATASET_NAMES) == ALLOWED_DATASETS
    assert set(studies.BACKBONE_NAMES) == ALLOWED_BACKBONES
    assert set(studies.HEAD_NAMES) == ALLOWED_HEADS
    assert set(studies.CLASSIFIER_NAMES) == ALLOWED_CLASSIFIERS


def test_recipe_flags_and_settings_per_paper():
    assert get_study("000").recipe.svm and not get_study("000").recipe.fusion
    assert get_study("003").recipe.fusion and not get_study("003").recipe.svm
    assert sum(s.recipe.svm for s in STUDIES.values()) == 1
    assert sum(s.recipe.fusion for s in STUDIES.values()) == 1
    r000 = get_study("000").recipe
    assert (r000.input_size, r000.batch_size, r000.epochs, r000.offline_expansion) == ((224, 224), 32, 90, 8)
    assert r000.augmentation["rotation_deg"] == 45 and r000.augmentation["width_shift"] == 0.15
    r001 = get_study("001").recipe
    assert (r001.input_size, r001.batch_size, r001.epochs, r001.learning_rate) == ((227, 227), 128, 10, 0.0001)
    assert r001.optimisers == ("adam", "sgdm")
    r004 = get_study("004").recipe
    assert (r004.input_size, r004.loss, r004.optimisers) == ((96, 144), "mse", ("rmsprop",))
    assert get_study("003").recipe.learning_rate is None  # not stated in the paper


def test_records_are_immutable():
    study = get_study("000")
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.key = "999"  # type: ignore[misc]
    with pytest.raises(TypeError):
        study.recipe.augmentation["rotation_deg"] = 90  # type: ignore[index]


@pytest.mark.parametrize("key, backbone, classifier, optimiser, metric, expected", [
    ("000", "convnet", "svm", "adam", "accuracy", 0.978),
    ("000", "convnet", "svm", "adam", "auc", 0.914),
    ("000", "vgg16", "softmax", "adam", "accuracy", 0.902),
    ("000", "densenet121", "softmax", "adam", "recall", 0.78),
    ("001", "alexnet", "softmax", "adam", "accuracy", 0.84),
    ("001", "alexnet", "softmax", "sgdm", "accuracy", 0.80),
    ("001", "squeezenet", "softmax", "sgdm", "f1", 0.56),
    ("002", "vgg16", "sigmoid", "adam", "accuracy", 0.875389),
    ("002", "resnet50v2", "sigmoid", "adam", "accuracy", 0.858255),
    ("003", "resnet50", "softmax", None, "accuracy", 0.9623),
    ("003", "alexnet", "softmax", None, "accuracy", 0.9599),
    ("003", "resnet50+alexnet", "fusion", None, "accuracy", 0.9723),
    ("004", "resnet50", "sigmoid", "rmsprop", "accuracy", 0.991),
])
def test_spot_checks(key, backbone, classifier, optimiser, metric, expected):
    rows = [r for r in get_study(key).reported
            if (r.backbone, r.classifier, r.optimiser) == (backbone, classifier, optimiser)]
    assert len(rows) == 1, rows
    assert getattr(rows[0], metric) == pytest.approx(expected, abs=1e-12)


def test_row_counts_per_paper():
    assert [len(s.reported) for s in STUDIES.values()] == [8, 4, 3, 3, 1]


def test_reported_table_columns_and_filter():
    table = reported_table()
    assert list(table.columns) == COLUMNS
    assert len(table) == sum(len(s.reported) for s in STUDIES.values())
    assert table["accuracy"].dtype == "float64"
    one = reported_table("001")
    assert list(one.columns) == COLUMNS
    assert set(one["study"]) == {"001"} and set(one["slug"]) == {"bokade2024"}
    assert len(one) == 4
    assert one["auc"].isna().all()


def test_unknown_study_is_a_keyerror_listing_known_keys():
    with pytest.raises(KeyError, match="000"):
        get_study("999")
    with pytest.raises(KeyError):
        reported_table("nope")


def test_best_reported():
    assert best_reported("001", "alexnet").optimiser == "adam"
    assert best_reported("001", "squeezenet").accuracy == pytest.approx(0.80)
    assert best_reported("000", "convnet").classifier == "svm"
    assert best_reported("004", "vgg16") is None


def test_validation_rejects_bad_rows():
    good = get_study("004").reported[0]
    with pytest.raises(ValueError, match="accuracy"):
        dataclasses.replace(good, accuracy=99.1)
    with pytest.raises(ValueError, match="backbone"):
        dataclasses.replace(good, backbone="resnet51")
    with pytest.raises(ValueError, match="dataset"):
        dataclasses.replace(good, dataset="breakhis+ddsm")
    with pytest.raises(ValueError, match="head"):
        dataclasses.replace(get_study("004").recipe, head="paper999")


def _numbers_in(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text.replace(",", ""))]


def _printed(value: float, numbers: list[float]) -> bool:
    """True if ``value`` is printed among ``numbers`` as a fraction or a percentage."""
    return any(math.isclose(n, value, abs_tol=1e-9) or math.isclose(n, value * 100, abs_tol=1e-7)
               for n in numbers)


@pytest.mark.skipif(not SEEDS_DIR.is_dir(), reason=f"seed texts not found at {SEEDS_DIR}")
def test_every_reported_metric_is_printed_in_its_seed_text():
    for key, study in STUDIES.items():
        path = SEEDS_DIR / study.seed_file
        assert path.is_file(), f"seed file missing: {path}"
        numbers = _numbers_in(path.read_text(encoding="utf-8"))
        for row in study.reported:
            for name in METRICS:
                value = getattr(row, name)
                if value is not None:
                    assert _printed(value, numbers), f"{key} {row.backbone} {name}={value} not in {path.name}"


@pytest.mark.skipif(not SEEDS_DIR.is_dir(), reason=f"seed texts not found at {SEEDS_DIR}")
def test_each_papers_averaging_is_quoted_from_its_seed_text_and_its_test_support_printed_there():
    for key, study in STUDIES.items():
        text = " ".join((SEEDS_DIR / study.seed_file).read_text(encoding="utf-8").split())
        scoring = study.scoring
        quotes = QUOTE.findall(scoring.evidence + " " + scoring.support_source)
        assert quotes, f"{key}: the scoring quotes nothing from the paper"
        for quote in quotes:
            assert " ".join(quote.split()) in text, f"{key}: {quote!r} is not in {study.seed_file}"
        for count in (scoring.test_support or {}).values():
            assert float(count) in _numbers_in(text), f"{key}: support {count} not printed"


def test_scoring_per_paper():
    averaging = {key: study.scoring.averaging for key, study in STUDIES.items()}
    assert averaging == {"000": "unknown", "001": "unknown", "002": "none", "003": "weighted", "004": "none"}
    assert dict(get_study("003").scoring.test_support) == {"Class 0": 66197, "Class 1": 3184}
    assert dict(get_study("004").scoring.test_support) == {"benign": 652, "malignant": 1370}
    assert all(get_study(key).scoring.test_support is None for key in ("000", "001", "002"))
    resnet = [r for r in get_study("003").reported if r.backbone == "resnet50"][0]
    assert (resnet.recall, resnet.accuracy, resnet.macro_f1) == (0.9623, 0.9623, 0.7152)  # weighted recall = accuracy
    assert set(reported_table()["averaging"]) == set(averaging.values())


def test_scoring_validation():
    scoring = get_study("003").scoring
    with pytest.raises(ValueError, match="averaging"):
        dataclasses.replace(scoring, averaging="micro")
    with pytest.raises(ValueError, match="positive_class"):
        dataclasses.replace(scoring, averaging="binary", positive_class=None)
    with pytest.raises(ValueError, match="test_support"):
        dataclasses.replace(scoring, test_support={"Class 0": 10})
    with pytest.raises(ValueError, match="test_support"):
        dataclasses.replace(scoring, test_support={"Class 0": 10, "Class 1": -1})
    with pytest.raises(ValueError, match="support_source"):
        dataclasses.replace(scoring, support_source="")
    with pytest.raises(ValueError, match="'none'"):
        dataclasses.replace(get_study("003"), scoring=get_study("004").scoring)
    with pytest.raises(TypeError):
        scoring.test_support["Class 0"] = 1  # type: ignore[index]


def test_printed_check_can_fail():
    numbers = _numbers_in("accuracy of 96.23% and 0.875389, support 66,197")
    assert _printed(0.9623, numbers) and _printed(0.875389, numbers) and _printed(66197, numbers)
    assert not _printed(0.9632, numbers)


def test_every_name_in_the_studies_is_in_the_live_registries():
    """studies keeps its own name lists (it imports no Keras); they must match what the code runs."""
    from helpers import augmentation, datasets, models, preprocessing, training

    assert set(studies.BACKBONE_NAMES) == set(models.BACKBONES)
    assert set(studies.HEAD_NAMES) == set(models.HEADS)
    assert set(studies.PRESET_NAMES) == set(preprocessing.PRESETS)
    assert set(studies.SCHEME_NAMES) == set(augmentation.SCHEMES)
    assert set(studies.OPTIMISER_NAMES) <= set(training.OPTIMISERS)
    assert set(studies.LOSS_NAMES) <= set(training.LOSSES)
    assert set(studies.DATASET_NAMES) - {"private"} <= set(datasets.DATASETS)
    assert set(studies.TASK_NAMES) <= set(datasets.TASKS)
    for key, study in STUDIES.items():
        recipe = study.recipe
        assert recipe.preset in preprocessing.PRESETS and recipe.head in models.HEADS, key
        assert recipe.augmentation_scheme in augmentation.SCHEMES, key
        assert recipe.loss in training.LOSSES and set(recipe.optimisers) <= set(training.OPTIMISERS), key
        scheme = augmentation.SCHEMES[recipe.augmentation_scheme]
        assert recipe.augmentation_scheme == "none" or scheme.study == key, key
        assert set(recipe.settings()) <= set(plan.SETTABLE), key


EPOCH_RANGE = re.compile(r"\b(\d+)(?: \(paper (\d{3})\))? to (\d+)(?: epochs)?(?: \(paper (\d{3}))?")
EPOCH_LIMIT = re.compile(r"(?:up to|at most|as many as) (\d+) epochs")


def test_the_lessons_epoch_range_is_the_recipes():
    """Where lesson 6, README or study.yaml say how long the papers trained ("10 to 200 epochs"), the
    range and any paper named with its end are those of the recipes in helpers.studies."""
    import nbformat

    root = Path(__file__).resolve().parents[1]
    stated = {key: s.recipe.epochs for key, s in STUDIES.items() if s.recipe.epochs is not None}
    low, high = min(stated.values()), max(stated.values())
    texts = {"README.md": (root / "README.md").read_text(encoding="utf-8"),
             "study.yaml": (root / "notebooks" / "study.yaml").read_text(encoding="utf-8")}
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(notebook, as_version=4).cells
        texts[notebook.name] = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    claims = [(name, match) for name, text in texts.items() for line in text.splitlines()
              if "epoch" in line and "paper" in line for match in EPOCH_RANGE.finditer(line)]
    assert {name for name, _ in claims} >= {"06_results.ipynb", "study.yaml"}
    for name, match in claims:
        first, first_paper, last, last_paper = match.groups()
        assert (int(first), int(last)) == (low, high), f"{name}: {match.group(0)!r}, recipes {stated}"
        assert first_paper in (None, *[k for k, e in stated.items() if e == low]), f"{name}: {match.group(0)!r}"
        assert last_paper in (None, *[k for k, e in stated.items() if e == high]), f"{name}: {match.group(0)!r}"
    limits = [(name, match) for name, text in texts.items() for match in EPOCH_LIMIT.finditer(text)]
    for name, match in limits:
        assert int(match.group(1)) == high, f"{name}: {match.group(0)!r}, recipes {stated}"
