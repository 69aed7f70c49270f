"""The run plan (``notebooks/study.yaml``): profiles, planned runs, and each run's resolved settings.

Every setting of a run is resolved the same way, in layers; a later layer wins wherever it names a
value (``None`` names nothing, so the layer below shows through):

1. ``defaults`` of ``study.yaml``;
2. the paper's recipe (:meth:`helpers.studies.Recipe.settings`);
3. the profile (``smoke``, ``cpu``, ``paper``);
4. the run: a lesson's parameters (its ``parameters`` cell, with what papermill injects for a run
   of the plan on top);
5. explicit keyword arguments of the call.

After the merge, named steps adapt it (:data:`ADAPTATIONS`): weights, the input size's aspect
ratio, the backbone (its minimum input size, the fusion's own head, frozen-base feature caching),
the data sources (a pooled dataset's folders, an external test set, a split file), and the
settings derived from others where no layer names them (normalisation, split). Where a
step changes what a layer asked for, it says so in ``scaled_down``.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from helpers import paths

PLAN_FILE = "study.yaml"
DEFAULT_SUITE = "study"
LAYERS = ("defaults", "recipe", "profile", "run", "explicit")
PROFILE_ONLY_KEYS = ("description", "timeout_s", "scaled_down", "jobs", "baseline_freeze", "resources")
"""Profile keys that are not settings of a run: what the profile is and how the runner runs it."""
SPLIT_METHODS = ("patient", "by-magnification", "official", "cv", "external", "file")
"""How images are split (``split``); "cv": patient-grouped k-fold cross-validation (``cv_folds`` folds,
``cv_repeats`` times with seeds ``seed``, ``seed + 1``, ...; see :func:`helpers.splits.cross_validation_folds`);
"external": train and val from the dataset, test the whole ``test_dataset``; "file": the patients of
``split_file`` (derived when those are set)."""
FUSION = "resnet50+alexnet"  # paper 003's fusion network as a run's "backbone" (helpers.models.FUSION_NAME)
PRECISIONS = ("auto", "float32", "mixed_float16")
"""Values of ``precision``: Keras' dtype policy of the network ("auto": resolved where the run trains,
:func:`helpers.training.resolve_precision`, like ``jit_compile: auto``)."""
DISTRIBUTIONS = ("none", "data-parallel")
"""Values of ``distribution`` (see :func:`helpers.training.distribution_scope`)."""
RANDOM_WEIGHTS = ("none", "None", "null")
"""Values of ``weights`` (``WEIGHTS`` in a lesson) that mean random initial weights."""
SETTINGS_CALL = "plan.settings_from_parameters("
"""How a lesson gets its settings; :func:`settings_for_run` knows a lesson resolves settings by it."""


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
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    """Everything a lesson notebook needs to know to run one experiment.

    Each field is a setting resolved by :func:`resolve_settings` (its defaults are in
    ``study.yaml``, not here); ``sources`` says which layer or step gave each value.
    """

    profile: str
    study: str
    backbone: str | None
    dataset: str  # a registered dataset, or several joined by "+" (pooled: "mias+inbreast")
    data_dir: str | dict[str, str] | None  # its folder; a pooled dataset's: {dataset: folder}
    dataset_options: dict[str, Any]
    test_dataset: str | None  # an external test set: train and val from `dataset`, test on this one
    test_data_dir: str | dict[str, str] | None
    split_file: str | None  # a user's own patient assignment (JSON), e.g. a published split
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
    weights: str | None  # None: random initial weights
    seed: int
    n_boot: int
    test_size: float
    val_size: float
    scaled_down: tuple[str, ...]
    skip_bad: bool  # leave bad files out (listed in the report) instead of failing
    augmentation: str  # a scheme of helpers.augmentation.SCHEMES, on the training split only
    offline_expansion: int  # paper 000's eightfold offline expansion of the training split
    fine_tune_epochs: int  # two-phase training: epochs of fine-tuning after the head-only phase
    fine_tune_learning_rate: float | None
    momentum: float | None
    weight_decay: float | None
    split: str  # one of SPLIT_METHODS
    cv_folds: int  # split "cv": the number of folds (k)
    cv_repeats: int  # split "cv": how many times the k folds are drawn (seeds seed, seed + 1, ...)
    run_eagerly: bool  # no graph tracing: faster for runs of a few steps (smoke)
    jit_compile: bool | str  # XLA: "auto" pays off on a GPU, not on a CPU
    precision: str  # one of PRECISIONS; "auto": mixed_float16 where the backend sees a GPU
    data_workers: int | str  # threads preparing training batches ahead; "auto": every CPU core
    distribution: str  # one of DISTRIBUTIONS: "data-parallel" trains one run on all local devices
    normalisation: str  # the model's first layer: "imagenet" (the backbone's own) or the paper's
    cache_features: bool  # frozen base: compute its features once, train the head on them
    save_model: bool  # keep the trained network in the run folder (always so for a run a later run reuses)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("sources")
        return values


IDENTITY = ("profile", "study", "backbone")
"""Fields that say which run this is: arguments of :func:`resolve_settings`, not merged."""
DERIVED = ("normalisation", "split")
"""Settings computed from others when no layer names them (``null`` in ``study.yaml``'s defaults)."""
SETTABLE = tuple(f.name for f in fields(RunSettings) if f.name not in IDENTITY + ("scaled_down", "sources"))
"""What a layer may name; a lesson's parameter for a setting is its name in capitals (``EPOCHS``)."""
RECIPE_ALWAYS = ("dataset", "task", "preset", "augmentation", "head", "loss", "freeze")
"""Settings every recipe names, so ``study.yaml``'s defaults need not."""
PROFILE_KEYS = PROFILE_ONLY_KEYS + SETTABLE


@functools.lru_cache(maxsize=8)
def _parsed_yaml(text: str) -> Any:
    """``text`` parsed as YAML (safe), once per text: the runner, a lesson and a test resolve
    settings many times, and parsing the plan is the slow part (libyaml's parser where PyYAML has it)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_plan(path: Path | str | None = None) -> Plan:
    """Read and check ``study.yaml``; errors name the file and the problem."""
    path = Path(path) if path else paths.notebooks_dir() / PLAN_FILE
    try:
        raw = copy.deepcopy(_parsed_yaml(path.read_text(encoding="utf-8")))  # callers may change theirs
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the study plan ({error})") from error
    if not isinstance(raw, dict) or "profiles" not in raw or "runs" not in raw:
        raise ValueError(f"{path}: the study plan needs 'profiles' and 'runs'")
    defaults = raw.get("defaults") or {}
    unknown = set(defaults) - set(SETTABLE)
    if unknown:
        raise ValueError(f"{path}: defaults has unknown settings {sorted(unknown)}; settings: {list(SETTABLE)}")
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
    return Plan(profiles=profiles, runs=tuple(runs), source=path, defaults=defaults)


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


def merge_layers(layers: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """The one merge: for each setting, the value of the last layer (in :data:`LAYERS` order) that
    names it with a value other than ``None``; and which layer that was."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in LAYERS:
        for key, value in (layers.get(layer) or {}).items():
            if value is not None:
                values[key], sources[key] = value, layer
    return values, sources


def resolve_settings(profile: str, *, study: str = "000", backbone: str | None = None,
                     run: Mapping[str, Any] | None = None, plan: Plan | None = None,
                     **explicit: Any) -> RunSettings:
    """A run's settings: ``study.yaml``'s defaults < the paper's recipe < the profile < ``run``
    (a lesson's parameters, by setting name) < ``explicit`` keyword arguments, then the
    :data:`ADAPTATIONS`. Any setting may be named in ``run`` or ``explicit`` (e.g. ``epochs=3``);
    ``None`` names nothing.
    """
    from helpers import studies

    plan = plan or load_plan()
    missing = set(SETTABLE) - set(RECIPE_ALWAYS) - set(plan.defaults)
    if missing:
        raise ValueError(f"{plan.source}: 'defaults' must name every setting a recipe may leave open "
                         f"(null where none applies); missing {sorted(missing)}")
    prof = get_profile(profile, plan)
    recipe = studies.get_study(study).recipe
    run = dict(run or {})
    for where, given in (("run", run), ("explicit", explicit)):
        unknown = set(given) - set(SETTABLE)
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)} ({where}); settings: {', '.join(SETTABLE)}")
    layers = {"defaults": plan.defaults, "recipe": recipe.settings(),
              "profile": {key: prof[key] for key in SETTABLE if key in prof and key != "dataset_options"},
              "run": run, "explicit": explicit}
    values, sources = merge_layers(layers)
    for key in plan.defaults:  # a null default that no layer overrides is still the defaults' value
        sources.setdefault(key, "defaults")
    if (prof.get("dataset_options") and values.get("dataset") == prof.get("dataset")
            and not _asked(sources, "dataset_options")):  # the profile's options are for its own dataset
        values["dataset_options"], sources["dataset_options"] = dict(prof["dataset_options"]), "profile"
    values.update(profile=profile, study=study, backbone=backbone)
    values["scaled_down"] = tuple(prof.get("scaled_down") or ())
    for adapt in ADAPTATIONS:
        adapt(values, sources, recipe)
    for item in fields(RunSettings):
        if item.type in ("int", "float", "bool") and values.get(item.name) is not None:
            values[item.name] = {"int": int, "float": float, "bool": bool}[item.type](values[item.name])
    return RunSettings(**{name: values.get(name) for name in SETTABLE + IDENTITY + ("scaled_down",)},
                       sources=sources)


def settings_from_parameters(parameters: Mapping[str, Any], *, plan: Plan | None = None,
                             **explicit: Any) -> RunSettings:
    """A lesson's settings from its parameters: ``PROFILE``, ``STUDY`` and ``BACKBONE`` say which
    run it is, and each parameter named like a setting in capitals (``EPOCHS``, ``WEIGHTS``, ...)
    is the run layer. A lesson calls ``plan.settings_from_parameters(globals())``, and
    ``--dry-run`` (:func:`settings_for_run`) makes the same call with the same parameters."""
    run = {name.lower(): value for name, value in parameters.items()
           if name.isupper() and name.lower() in SETTABLE}
    return resolve_settings(parameters["PROFILE"], study=str(parameters.get("STUDY") or "000"),
                            backbone=parameters.get("BACKBONE"), run=run, plan=plan, **explicit)


def notebook_parameters(notebook: Path | str) -> dict[str, Any] | None:
    """The literal values of a lesson's ``parameters`` cell (what it runs with unless papermill
    injects others), or None for a notebook that does not resolve settings."""
    path = Path(notebook)
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    if not any(SETTINGS_CALL in source for source in code):
        return None
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ValueError(f"{path}: no cell tagged 'parameters'")
    values = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError as error:
                raise ValueError(f"{path}: parameter {node.targets[0].id} is not a literal ({error})") from error
    return values


def settings_for_run(run: "PlannedRun", plan: Plan | None = None) -> RunSettings | None:
    """The settings a planned run's lesson will resolve (None for a lesson without settings, such
    as the results notebook): its parameters cell with the run's parameters on top."""
    defaults = notebook_parameters(run.notebook)
    if defaults is None:
        return None
    return settings_from_parameters({**defaults, **run.parameters}, plan=plan)


# ---------------------------------------------------------------------------------------------
# The steps after the merge
# ---------------------------------------------------------------------------------------------

def _asked(sources: Mapping[str, str], key: str) -> bool:
    """Did the run or the caller ask for ``key`` (rather than a default, recipe or profile)?"""
    return sources.get(key) in ("run", "explicit")


def adapt_weights(values: dict[str, Any], sources: dict[str, str], recipe: Any) -> None:
    """``"none"`` (or no value) means random initial weights: ``weights`` None."""
    weights = values.get("weights")
    values["weights"] = None if weights is None or weights in RANDOM_WEIGHTS else str(weights)


def adapt_recipe(values: dict[str, Any], sources: dict[str, str], recipe: Any) -> None:
    """A profile's single input size keeps a non-square paper's aspect ratio (paper 004's 96x144:
    32 -> 32x48); a profile's offline expansion scales the paper's and so applies only to papers
    that expand their data offline (paper 000)."""
    size, recipe_size = values["image_size"], recipe.input_size
    if (not _asked(sources, "image_size") and isinstance(size, int) and recipe_size is not None
            and recipe_size[0] != recipe_size[1]):
        scale = size / min(recipe_size)
        size = (round(recipe_size[0] * scale), round(recipe_size[1] * scale))
    values["image_size"] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not recipe.offline_expansion and not _asked(sources, "offline_expansion"):
        values["offline_expansion"], sources["offline_expansion"] = 1, "recipe"


def adapt_to_backbone(values: dict[str, Any], sources: dict[str, str], recipe: Any) -> None:
    """What the backbone needs: its minimum input size (a size asked for below it is an error, a
    profile's is raised and listed in ``scaled_down``), the fusion's own head, and feature caching
    only for a frozen base outside the fusion (without the paper's augmentation, listed)."""
    backbone = values["backbone"]
    if backbone is None:
        values["cache_features"] = False
        return
    from helpers import models

    minimum = (models.fusion_min_input_size() if backbone == FUSION
               else models.get_backbone(backbone).min_input_size)
    size = values["image_size"]
    if min(size) < minimum:
        if _asked(sources, "image_size"):
            raise ValueError(f"image_size {size} is below {backbone}'s minimum input of {minimum} px")
        values["image_size"] = (max(size[0], minimum), max(size[1], minimum))
        sources["image_size"] = "backbone"
        values["scaled_down"] += (f"{backbone}: input {values['image_size'][0]} px, its minimum, "
                                  f"instead of the profile's {size[0]} px",)
    if backbone == FUSION and not _asked(sources, "head"):
        values["head"], sources["head"] = "fusion", "backbone"
    values["cache_features"] = bool(values["cache_features"]) and values["freeze"] == "base" and backbone != FUSION
    if values["cache_features"]:
        values["scaled_down"] += ("frozen base: its features computed once and the head trained on them, so "
                                  f"without the paper's augmentation ({values['augmentation']})",)
        values["augmentation"], sources["augmentation"] = "none", "backbone"


def adapt_data_sources(values: dict[str, Any], sources: dict[str, str], recipe: Any) -> None:
    """Where the data comes from: each registered dataset of ``dataset`` (``+``-joined: pooled)
    with its folder (``data_dir``: one folder for one dataset, ``{dataset: folder}`` for a pool);
    the same for ``test_dataset``. An external test set makes the split "external", a split file
    "file" (with a test set, the file assigns train and val); a split asked for that contradicts
    them is an error naming both."""
    from helpers import datasets

    values["data_dir"] = _folders(datasets.member_folders(values["dataset"], values.get("data_dir")))
    test, split_file, split = values.get("test_dataset"), values.get("split_file"), values.get("split")
    if test is None and values.get("test_data_dir") is not None:
        raise ValueError(f"test_data_dir {values['test_data_dir']} ({sources.get('test_data_dir')}) is given "
                         f"without a test_dataset (--test-dataset NAME, TEST_DATASET in a lesson)")
    if test is not None:
        values["test_data_dir"] = _folders(datasets.member_folders(test, values.get("test_data_dir")))
    if split_file is not None:
        values["split_file"] = str(split_file)
    follows = "external" if test is not None else "file" if split_file is not None else None
    if split is None and follows:
        values["split"], sources["split"] = follows, "derived"
    elif follows and split != follows:
        given = f"test_dataset {test!r}" if test is not None else f"split_file {split_file}"
        raise ValueError(f"split {split!r} ({sources.get('split')}) cannot be used with {given}: its split is "
                         f"{follows!r}" + (" (a split file then assigns train and val)" if test is not None else ""))
    elif split in ("external", "file") and not follows:
        raise ValueError(f"split {split!r} ({sources.get('split')}) needs "
                         + ("a test_dataset (--test-dataset NAME)" if split == "external"
                            else "a split_file (--split-file FILE)"))


def _folders(folders: dict[str, str | None]) -> str | dict[str, str] | None:
    """A ``data_dir`` setting from :func:`helpers.datasets.member_folders`: one dataset's folder
    (or None), or a pool's ``{dataset: folder}`` of the datasets given one."""
    if len(folders) == 1:
        return next(iter(folders.values()))
    return {name: folder for name, folder in folders.items() if folder is not None} or None


def adapt_derived(values: dict[str, Any], sources: dict[str, str], recipe: Any) -> None:
    """Normalisation: the backbone's ImageNet convention with pretrained weights, else the
    preset's (the paper's). Split: by patient, except where the dataset or paper fixes it."""
    from helpers import preprocessing

    if values.get("normalisation") is None:
        values["normalisation"] = ("imagenet" if values["weights"] is not None
                                   else preprocessing.get_preset(values["preset"]).normalisation)
        sources["normalisation"] = "derived"
    if values.get("split") is None:
        sources["split"] = "derived"
    values["split"] = _split_method(values.get("split"), values["study"], values["dataset"])
    if values["split"] == "cv" and (int(values["cv_folds"]) < 2 or int(values["cv_repeats"]) < 1):
        raise ValueError(f"split 'cv' needs cv_folds >= 2 and cv_repeats >= 1, got cv_folds={values['cv_folds']} "
                         f"({sources.get('cv_folds')}) and cv_repeats={values['cv_repeats']} ({sources.get('cv_repeats')})")


def adapt_accelerator(values: dict[str, Any], sources: dict[str, str], recipe: Any) -> None:
    """The GPU keys checked: ``precision`` (:data:`PRECISIONS`), ``jit_compile`` (true, false or
    "auto"), ``data_workers`` (an int >= 1 or "auto") and ``distribution`` (:data:`DISTRIBUTIONS`).
    "auto" stays "auto" here: the machine that trains resolves it (:mod:`helpers.training`)."""
    checks = (("precision", lambda v: v in PRECISIONS, f"one of {list(PRECISIONS)}"),
              ("jit_compile", lambda v: isinstance(v, bool) or v == "auto", "true, false or 'auto'"),
              ("data_workers", lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
               "an int >= 1 or 'auto'"),
              ("distribution", lambda v: v in DISTRIBUTIONS, f"one of {list(DISTRIBUTIONS)}"))
    for key, valid, wanted in checks:
        if not valid(values.get(key)):
            raise ValueError(f"{key} {values.get(key)!r} ({sources.get(key)}) must be {wanted}")


ADAPTATIONS: tuple[Callable[[dict[str, Any], dict[str, str], Any], None], ...] = (
    adapt_weights, adapt_recipe, adapt_to_backbone, adapt_data_sources, adapt_derived, adapt_accelerator,
)
"""The named steps after the merge, in order."""


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


def settings_table(settings: RunSettings) -> "pd.DataFrame":
    """The resolved settings, each with the layer or step it came from, for lessons and reports."""
    import pandas as pd

    items = settings.as_dict()
    origin = {**{key: "run" for key in IDENTITY}, "scaled_down": "profile", **settings.sources}
    for key in ("data_dir", "test_data_dir"):  # a pool's folders: "mias=DIR1, inbreast=DIR2"
        if isinstance(items.get(key), Mapping):
            items[key] = ", ".join(f"{name}={folder}" for name, folder in items[key].items())
    return pd.DataFrame({"setting": list(items), "value": [str(v) for v in items.values()],
                         "from": [origin.get(key, "") for key in items]}).set_index("setting")


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
                plan: Plan | None = None, test_dataset: str | None = None,
                split_file: str | Path | None = None) -> str:
    """The folder under reports/ for a profile run on a dataset and suite.

    ``reports/<profile>`` for the default suite on the profile's own dataset; otherwise the
    dataset, an external test set, a split file's name and the suite are added
    (``reports/cpu-mias-real-data``, ``reports/cpu-cbis-ddsm-test-inbreast``,
    ``reports/cpu-mias-split-published``), so that results on other data never mix with the profile's.
    """
    prof = get_profile(profile, plan)
    if suite == DEFAULT_SUITE and dataset in (None, prof.get("dataset")) and not test_dataset and not split_file:
        return profile
    return "-".join([profile, dataset or str(prof.get("dataset") or "papers")]
                    + (["test", test_dataset] if test_dataset else [])
                    + (["split", re.sub(r"[^\w.+-]+", "_", Path(split_file).stem)] if split_file else [])
                    + ([] if suite == DEFAULT_SUITE else [suite]))


def _resolved_folders(data_dir: str | Mapping[str, str] | None) -> str | dict[str, str] | None:
    """A ``data_dir`` as the runs receive it: each folder absolute."""
    if data_dir is None:
        return None
    if isinstance(data_dir, Mapping):
        return {name: str(Path(folder).expanduser().resolve()) for name, folder in data_dir.items()}
    return str(Path(data_dir).expanduser().resolve())


def check_data_sources(dataset: str | None, data_dir: str | Mapping[str, str] | None,
                       test_dataset: str | None, test_data_dir: str | Mapping[str, str] | None,
                       split_file: str | Path | None) -> None:
    """The command line's data sources checked before any run starts (a run's settings check them
    again): datasets registered, each folder for a dataset of the list, a readable split file."""
    from helpers import datasets, splits

    if dataset is not None:
        datasets.member_folders(dataset, data_dir)
    elif isinstance(data_dir, Mapping):
        raise ValueError("--data-dir NAME=DIR needs --dataset (the datasets NAME belongs to)")
    if test_dataset is not None:
        datasets.member_folders(test_dataset, test_data_dir)
    elif test_data_dir is not None:
        raise ValueError(f"--test-data-dir {test_data_dir} is given without --test-dataset NAME")
    if split_file is not None:
        splits.read_split_file(split_file)


def planned_runs(
    profile: str,
    *,
    only: list[str] | None = None,
    dataset: str | None = None,
    data_dir: str | Mapping[str, str] | None = None,
    suite: str = DEFAULT_SUITE,
    skip_bad: bool = False,
    plan: Plan | None = None,
    reports_root: Path | None = None,
    test_dataset: str | None = None,
    test_data_dir: str | Mapping[str, str] | None = None,
    split_file: str | Path | None = None,
) -> list[PlannedRun]:
    """The runs of ``suite`` for ``profile`` with the parameters papermill will inject.

    ``data_dir`` is one folder, or ``{dataset: folder}`` for a pooled ``dataset``; an external
    test set (``test_dataset``, ``test_data_dir``) and a ``split_file`` reach every lesson whose
    parameters cell has ``TEST_DATASET``, ``TEST_DATA_DIR``, ``SPLIT_FILE`` (lessons 1, 3, 4, 5),
    checked first (:func:`check_data_sources`).
    """
    plan = plan or load_plan()
    check_data_sources(dataset, data_dir, test_dataset, test_data_dir, split_file)
    prof = get_profile(profile, plan)
    known_suites = suites(plan)
    if suite not in known_suites:
        raise KeyError(f"unknown suite {suite!r}; the plan {plan.source} has {known_suites}")
    root = (reports_root or paths.reports_dir()) / output_name(profile, dataset=dataset, suite=suite, plan=plan,
                                                               test_dataset=test_dataset, split_file=split_file)
    in_suite = [run for run in plan.runs if suite in run.suites]
    known = [run.name for run in in_suite]
    if only:
        missing = sorted(set(only) - set(known))
        if missing:
            raise KeyError(f"unknown run(s) {missing} in suite {suite!r}; it has {known}")
    by_name = {run.name: run for run in plan.runs}
    reused = {run.reuses for run in in_suite if run.reuses}  # whatever --only selects: same parameters, same fingerprint
    result = []
    for run in in_suite:
        if only and run.name not in only:
            continue
        if run.baseline_of and not _starts_from_weights(by_name[run.baseline_of], prof, plan):
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
            parameters["DATA_DIR"] = _resolved_folders(data_dir)
        takes = set(notebook_parameters(plan.source.parent / run.notebook) or ())
        if test_dataset and "TEST_DATASET" in takes:  # lessons that split the data take these
            parameters["TEST_DATASET"] = test_dataset
            if test_data_dir:
                parameters["TEST_DATA_DIR"] = _resolved_folders(test_data_dir)
        if split_file and "SPLIT_FILE" in takes:
            parameters["SPLIT_FILE"] = str(Path(split_file).expanduser().resolve())
        if skip_bad and not run.after_all:
            parameters["SKIP_BAD"] = True
        if run.reuses:
            parameters["NETWORK_DIR"] = str(root / run.reuses)
        if run.name in reused:
            parameters["SAVE_MODEL"] = True  # a later run reads this run's network
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


def _starts_from_weights(run: RunSpec, profile: dict[str, Any], plan: Plan) -> bool:
    """Does ``run`` start from pretrained weights under ``profile`` (recipes never name weights)?"""
    values, sources = merge_layers({"defaults": plan.defaults, "profile": profile,
                                    "run": {"weights": run.parameters.get("WEIGHTS")}})
    adapt_weights(values, sources, None)
    return values["weights"] is not None
