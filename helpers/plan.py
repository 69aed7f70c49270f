"""The run plan (``notebooks/study.yaml``): profiles, planned runs, and each run's resolved settings.

A run's settings come from three places, most specific first: the run's own parameters, the
profile (``smoke``, ``cpu``, ``paper``), then the paper's recipe in :mod:`helpers.studies`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helpers import paths

PLAN_FILE = "study.yaml"
DEFAULT_SUITE = "study"
PROFILE_KEYS = (
    "description", "dataset", "dataset_options", "task", "use_roi", "image_size", "epochs",
    "batch_size", "learning_rate", "freeze", "weights", "n_boot", "timeout_s", "scaled_down",
    "skip_bad", "augmentation", "offline_expansion", "fine_tune_epochs",
    "run_eagerly", "jit_compile", "jobs", "cache_features", "baseline_freeze",
)
SPLIT_METHODS = ("patient", "by-magnification", "official")
FUSION = "resnet50+alexnet"  # paper 003's fusion network as a run's "backbone" (helpers.models.FUSION_NAME)


@dataclass(frozen=True)
class RunSpec:
    """One entry of ``runs:`` in the plan."""

    name: str
    notebook: str
    study: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    after_all: bool = False
    suites: tuple[str, ...] = (DEFAULT_SUITE,)  # the suites (named sets of runs) it belongs to
    reuses: str | None = None  # an earlier run whose trained network this run reads (NETWORK_DIR)
    baseline_of: str | None = None  # an earlier run this one repeats from random weights


BASELINE_PARAMETERS = {"WEIGHTS": "none"}
"""What a ``baseline_of`` run changes in the run it repeats: random initial weights. Its freezing
is the profile's ``baseline_freeze`` ("none": every layer trained) unless the entry names one."""


@dataclass(frozen=True)
class Plan:
    profiles: dict[str, dict[str, Any]]
    runs: tuple[RunSpec, ...]
    source: Path


@dataclass(frozen=True)
class RunSettings:
    """Everything a lesson notebook needs to know to run one experiment."""

    profile: str
    study: str
    backbone: str | None
    dataset: str
    data_dir: str | None
    dataset_options: dict[str, Any]
    task: str
    use_roi: bool
    preset: str
    image_size: tuple[int, int]
    epochs: int
    batch_size: int
    learning_rate: float
    optimiser: str
    loss: str
    head: str
    freeze: str | int
    weights: str | None
    seed: int
    n_boot: int
    test_size: float
    val_size: float
    scaled_down: tuple[str, ...]
    skip_bad: bool = False  # leave bad files out (listed in the report) instead of failing
    augmentation: str = "none"  # a scheme of helpers.augmentation.SCHEMES, on the training split only
    offline_expansion: int = 1  # paper 000's eightfold offline expansion of the training split
    fine_tune_epochs: int = 0  # two-phase training: epochs of fine-tuning after the head-only phase
    fine_tune_learning_rate: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    split: str = "patient"  # one of SPLIT_METHODS
    run_eagerly: bool = False  # no graph tracing: faster for runs of a few steps (smoke)
    jit_compile: bool | str = False  # XLA: "auto" pays off on a GPU, not on a CPU
    normalisation: str = "unit"  # the model's first layer: "imagenet" (the backbone's own) or the paper's
    cache_features: bool = False  # frozen base: compute its features once, train the head on them

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_plan(path: Path | str | None = None) -> Plan:
    """Read and check ``study.yaml``; errors name the file and the problem."""
    path = Path(path) if path else paths.notebooks_dir() / PLAN_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the study plan ({error})") from error
    if not isinstance(raw, dict) or "profiles" not in raw or "runs" not in raw:
        raise ValueError(f"{path}: the study plan needs 'profiles' and 'runs'")
    profiles = raw["profiles"]
    for name, profile in profiles.items():
        unknown = set(profile) - set(PROFILE_KEYS)
        if unknown:
            raise ValueError(f"{path}: profile {name!r} has unknown keys {sorted(unknown)}")
    runs: list[RunSpec] = []
    for entry in raw["runs"]:
        try:
            if "suites" in entry:
                entry = {**entry, "suites": tuple(entry["suites"])}
            if entry.get("baseline_of"):
                entry = _baseline_entry(entry, {run.name: run for run in runs}, path)
            runs.append(RunSpec(**entry))
        except TypeError as error:
            raise ValueError(f"{path}: bad run entry {entry!r} ({error})") from error
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: run names must be unique, got {names}")
    for index, run in enumerate(runs):
        if run.reuses is None:
            continue
        earlier = {r.name: r for r in runs[:index]}
        if run.reuses not in earlier:
            raise ValueError(f"{path}: run {run.name!r} reuses {run.reuses!r}, which is not an earlier run")
        missing = set(run.suites) - set(earlier[run.reuses].suites)
        if missing:
            raise ValueError(f"{path}: run {run.name!r} is in suites {sorted(missing)} without the run "
                             f"{run.reuses!r} it reuses")
    return Plan(profiles=profiles, runs=tuple(runs), source=path)


def _baseline_entry(entry: dict[str, Any], earlier: dict[str, RunSpec], path: Path) -> dict[str, Any]:
    """A ``baseline_of: X`` entry completed from run X: its notebook, study, suites and
    parameters, with :data:`BASELINE_PARAMETERS` and the entry's own parameters on top (the
    profile's ``baseline_freeze`` is added in :func:`planned_runs`)."""
    original = earlier.get(entry["baseline_of"])
    if original is None:
        raise ValueError(f"{path}: run {entry.get('name')!r} is the baseline of {entry['baseline_of']!r}, "
                         f"which is not an earlier run")
    return {"notebook": original.notebook, "study": original.study, "suites": original.suites,
            "reuses": None, **entry,
            "parameters": {**original.parameters, **BASELINE_PARAMETERS, **(entry.get("parameters") or {})}}


def get_profile(name: str, plan: Plan | None = None) -> dict[str, Any]:
    plan = plan or load_plan()
    if name not in plan.profiles:
        raise KeyError(f"unknown profile {name!r}; the plan {plan.source} has {sorted(plan.profiles)}")
    return plan.profiles[name]


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


def resolve_settings(
    profile: str,
    *,
    study: str = "000",
    backbone: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    seed: int = 42,
    plan: Plan | None = None,
    **overrides: Any,
) -> RunSettings:
    """Merge run overrides, the profile and the paper's recipe into one :class:`RunSettings`.

    ``overrides`` may name any field of :class:`RunSettings` (e.g. ``epochs=3``); a value of
    ``None`` means "not overridden".
    """
    from helpers import preprocessing, studies

    prof = get_profile(profile, plan)
    recipe = studies.get_study(study).recipe
    unknown = set(overrides) - set(RunSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown setting(s) {sorted(unknown)}")
    overrides = {key: value for key, value in overrides.items() if value is not None}

    def pick(key: str, from_recipe: Any) -> Any:
        if key in overrides:
            return overrides[key]
        value = prof.get(key)
        return from_recipe if value is None else value

    chosen_dataset = dataset or prof.get("dataset") or recipe.datasets[0]
    options = dict(prof.get("dataset_options") or {}) if not dataset else {}
    preset = f"paper{study}" if f"paper{study}" in preprocessing.PRESETS else "minimal"
    optimiser = recipe.optimisers[0] if recipe.optimisers else "adam"
    weights = _weights(overrides.get("weights", "profile"), prof.get("weights"))
    freeze = pick("freeze", recipe.freeze)
    scaled_down = tuple(prof.get("scaled_down") or ())
    chosen_preset = overrides.get("preset", preset)
    normalisation = overrides.get("normalisation") or (
        "imagenet" if weights is not None else preprocessing.get_preset(chosen_preset).normalisation)
    augmentation = _augmentation(pick("augmentation", "paper"), study)
    cache_features = bool(pick("cache_features", False)) and freeze == "base" and backbone != FUSION
    if cache_features:
        scaled_down += ("frozen base: its features computed once and the head trained on them, so without "
                        f"the paper's augmentation ({augmentation})",)
        augmentation = "none"
    return RunSettings(
        profile=profile,
        study=study,
        backbone=backbone,
        dataset=chosen_dataset,
        data_dir=data_dir,
        dataset_options=options,
        task=pick("task", recipe.task),
        use_roi=bool(pick("use_roi", False)),
        preset=chosen_preset,
        image_size=_image_size(_keep_aspect(pick("image_size", recipe.input_size or 224), recipe.input_size,
                                            explicit="image_size" in overrides), backbone,
                               explicit="image_size" in overrides),
        epochs=int(pick("epochs", recipe.epochs or 10)),
        batch_size=int(pick("batch_size", recipe.batch_size or 32)),
        learning_rate=float(pick("learning_rate", recipe.learning_rate or 1e-3)),
        optimiser=overrides.get("optimiser", optimiser),
        loss=overrides.get("loss", recipe.loss),
        head=overrides.get("head", "fusion" if backbone == FUSION else recipe.head),
        freeze=freeze,
        weights=weights,
        seed=seed,
        n_boot=int(pick("n_boot", 1000)),
        test_size=float(overrides.get("test_size", 0.25)),
        val_size=float(overrides.get("val_size", 0.2)),
        scaled_down=scaled_down,
        skip_bad=bool(pick("skip_bad", False)),
        augmentation=augmentation,
        offline_expansion=int(pick("offline_expansion", recipe.offline_expansion)) if recipe.offline_expansion else 1,
        fine_tune_epochs=int(pick("fine_tune_epochs", 0)),
        fine_tune_learning_rate=overrides.get("fine_tune_learning_rate"),
        momentum=overrides.get("momentum", recipe.momentum),
        weight_decay=overrides.get("weight_decay", recipe.weight_decay),
        split=_split_method(overrides.get("split"), study, chosen_dataset),
        run_eagerly=bool(pick("run_eagerly", False)),
        jit_compile=pick("jit_compile", False),
        normalisation=normalisation,
        cache_features=cache_features,
    )


def _keep_aspect(value: Any, recipe_size: tuple[int, int] | None, *, explicit: bool) -> Any:
    """A profile's single size for a paper with a non-square input (paper 004: 96x144) becomes
    the short side, keeping the paper's aspect ratio (32 -> 32x48)."""
    if explicit or not isinstance(value, int) or recipe_size is None or recipe_size[0] == recipe_size[1]:
        return value
    height, width = recipe_size
    scale = value / min(height, width)
    return (round(height * scale), round(width * scale))


def _image_size(value: Any, backbone: str | None, *, explicit: bool) -> tuple[int, int]:
    """The input size; a profile's size below the backbone's minimum is raised to that minimum
    (AlexNet needs 63 px, InceptionV3 75 px), an explicitly requested one is an error."""
    size = _size(value)
    if backbone is None:
        return size
    from helpers import models

    minimum = (models.fusion_min_input_size() if backbone == FUSION
               else models.get_backbone(backbone).min_input_size)
    if min(size) >= minimum:
        return size
    if explicit:
        raise ValueError(f"image_size {size} is below {backbone}'s minimum input of {minimum} px")
    return (max(size[0], minimum), max(size[1], minimum))


PARAMETER_SETTINGS = {
    "STUDY": "study", "BACKBONE": "backbone", "DATASET": "dataset", "DATA_DIR": "data_dir",
    "TASK": "task", "USE_ROI": "use_roi", "WEIGHTS": "weights", "FREEZE": "freeze",
    "OPTIMISER": "optimiser", "EPOCHS": "epochs", "IMAGE_SIZE": "image_size", "SKIP_BAD": "skip_bad",
    "SEED": "seed", "NORMALISATION": "normalisation",
}
"""Notebook parameter -> :func:`resolve_settings` argument (the lesson notebooks' convention)."""


FIXED_MODELS = {"05_fusion_resnet50_alexnet.ipynb": FUSION}
"""Lesson notebooks whose model is fixed rather than a BACKBONE parameter."""


def settings_for_run(run: "PlannedRun", plan: Plan | None = None) -> RunSettings | None:
    """The settings a planned training run will resolve to (None for runs that train nothing)."""
    backbone = run.parameters.get("BACKBONE", FIXED_MODELS.get(Path(run.notebook).name))
    if backbone is None:
        return None
    arguments = {PARAMETER_SETTINGS[key]: value for key, value in run.parameters.items()
                 if key in PARAMETER_SETTINGS}
    arguments["backbone"] = backbone
    if arguments.get("skip_bad") is False:
        arguments["skip_bad"] = None
    return resolve_settings(run.parameters["PROFILE"], plan=plan, **arguments)


def _augmentation(requested: str, study: str) -> str:
    """``"paper"``: the study's own scheme (``none`` where it used no augmentation)."""
    from helpers import augmentation

    if requested == "paper":
        return f"paper{study}" if f"paper{study}" in augmentation.SCHEMES else "none"
    augmentation.get_scheme(requested)  # KeyError naming the known schemes
    return requested


def _split_method(requested: str | None, study: str, dataset: str) -> str:
    """How images are split: by patient, except where a dataset or paper fixes the split.

    CBIS-DDSM comes with an official train/test split ("official"); paper 004 tests on the 40X
    BreakHis images ("by-magnification", kept patient-level: see splits.magnification_split).
    """
    if requested is None:
        if dataset == "cbis-ddsm":
            requested = "official"
        elif dataset == "breakhis" and study == "004":
            requested = "by-magnification"
        else:
            requested = "patient"
    if requested not in SPLIT_METHODS:
        raise ValueError(f"unknown split {requested!r}; known: {list(SPLIT_METHODS)}")
    return requested


def _weights(requested: Any, from_profile: Any) -> str | None:
    """``"profile"`` keeps the profile's choice; ``"none"`` means random initial weights."""
    if requested == "profile":
        return from_profile
    if requested in (None, "none", "None", "null"):
        return None
    return str(requested)


def settings_table(settings: RunSettings) -> "pd.DataFrame":
    """The resolved settings as a two-column table for lessons and reports."""
    import pandas as pd

    items = settings.as_dict()
    return pd.DataFrame({"setting": list(items), "value": [str(v) for v in items.values()]}).set_index("setting")


@dataclass(frozen=True)
class PlannedRun:
    """A run of the plan under one profile: which notebook, where to, with which parameters."""

    name: str
    notebook: Path
    run_dir: Path
    parameters: dict[str, Any]
    timeout_s: int
    after_all: bool
    reuses: str | None = None
    baseline_of: str | None = None


def suites(plan: Plan | None = None) -> list[str]:
    """The names of the plan's suites, the default one first."""
    plan = plan or load_plan()
    names = {name for run in plan.runs for name in run.suites}
    return [DEFAULT_SUITE] + sorted(names - {DEFAULT_SUITE})


def output_name(profile: str, *, dataset: str | None = None, suite: str = DEFAULT_SUITE,
                plan: Plan | None = None) -> str:
    """The folder under reports/ for a profile run on a dataset and suite.

    ``reports/<profile>`` for the default suite on the profile's own dataset; otherwise the
    dataset and suite are added (``reports/cpu-mias-real-data``), so that results on other data
    never mix with the profile's.
    """
    prof = get_profile(profile, plan)
    if suite == DEFAULT_SUITE and dataset in (None, prof.get("dataset")):
        return profile
    return "-".join([profile, dataset or str(prof.get("dataset") or "papers")]
                    + ([] if suite == DEFAULT_SUITE else [suite]))


def planned_runs(
    profile: str,
    *,
    only: list[str] | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    suite: str = DEFAULT_SUITE,
    skip_bad: bool = False,
    plan: Plan | None = None,
    reports_root: Path | None = None,
) -> list[PlannedRun]:
    """The runs of ``suite`` for ``profile`` with the parameters papermill will inject."""
    plan = plan or load_plan()
    prof = get_profile(profile, plan)
    known_suites = suites(plan)
    if suite not in known_suites:
        raise KeyError(f"unknown suite {suite!r}; the plan {plan.source} has {known_suites}")
    root = (reports_root or paths.reports_dir()) / output_name(profile, dataset=dataset, suite=suite, plan=plan)
    in_suite = [run for run in plan.runs if suite in run.suites]
    known = [run.name for run in in_suite]
    if only:
        missing = sorted(set(only) - set(known))
        if missing:
            raise KeyError(f"unknown run(s) {missing} in suite {suite!r}; it has {known}")
    by_name = {run.name: run for run in plan.runs}
    result = []
    for run in in_suite:
        if only and run.name not in only:
            continue
        if run.baseline_of and not _starts_from_weights(by_name[run.baseline_of], prof):
            continue  # its original already starts from random weights under this profile
        parameters: dict[str, Any] = {
            "PROFILE": profile,
            "RUN_NAME": run.name,
            "RUN_DIR": str(root / run.name),
        }
        if run.study is not None:
            parameters["STUDY"] = run.study
        if dataset:
            parameters["DATASET"] = dataset
        if data_dir:
            parameters["DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
        if skip_bad and not run.after_all:
            parameters["SKIP_BAD"] = True
        if run.reuses:
            parameters["NETWORK_DIR"] = str(root / run.reuses)
        parameters.update(run.parameters)
        if run.baseline_of:
            parameters.setdefault("FREEZE", prof.get("baseline_freeze") or "none")
        result.append(
            PlannedRun(
                name=run.name,
                notebook=plan.source.parent / run.notebook,
                run_dir=root / run.name,
                parameters=parameters,
                timeout_s=int(prof.get("timeout_s") or 3600),
                after_all=run.after_all,
                reuses=run.reuses,
                baseline_of=run.baseline_of,
            )
        )
    return result


def _starts_from_weights(run: RunSpec, profile: dict[str, Any]) -> bool:
    """Does ``run`` start from pretrained weights under ``profile`` (its own WEIGHTS, else the profile's)?"""
    return _weights(run.parameters.get("WEIGHTS", "profile"), profile.get("weights")) is not None
