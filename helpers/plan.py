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
PROFILE_KEYS = (
    "description", "dataset", "dataset_options", "task", "use_roi", "image_size", "epochs",
    "batch_size", "learning_rate", "freeze", "weights", "n_boot", "timeout_s", "scaled_down",
)


@dataclass(frozen=True)
class RunSpec:
    """One entry of ``runs:`` in the plan."""

    name: str
    notebook: str
    study: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    after_all: bool = False


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
    runs = []
    for entry in raw["runs"]:
        try:
            runs.append(RunSpec(**entry))
        except TypeError as error:
            raise ValueError(f"{path}: bad run entry {entry!r} ({error})") from error
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: run names must be unique, got {names}")
    return Plan(profiles=profiles, runs=tuple(runs), source=path)


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
    return RunSettings(
        profile=profile,
        study=study,
        backbone=backbone,
        dataset=chosen_dataset,
        data_dir=data_dir,
        dataset_options=options,
        task=pick("task", recipe.task),
        use_roi=bool(pick("use_roi", False)),
        preset=overrides.get("preset", preset),
        image_size=_size(pick("image_size", recipe.input_size or 224)),
        epochs=int(pick("epochs", recipe.epochs or 10)),
        batch_size=int(pick("batch_size", recipe.batch_size or 32)),
        learning_rate=float(pick("learning_rate", recipe.learning_rate or 1e-3)),
        optimiser=overrides.get("optimiser", optimiser),
        loss=overrides.get("loss", "sparse_categorical_crossentropy"),
        head=overrides.get("head", recipe.head),
        freeze=pick("freeze", "base"),
        weights=_weights(overrides.get("weights", "profile"), prof.get("weights")),
        seed=seed,
        n_boot=int(pick("n_boot", 1000)),
        test_size=float(overrides.get("test_size", 0.25)),
        val_size=float(overrides.get("val_size", 0.2)),
        scaled_down=tuple(prof.get("scaled_down") or ()),
    )


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


def planned_runs(
    profile: str,
    *,
    only: list[str] | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    plan: Plan | None = None,
    reports_root: Path | None = None,
) -> list[PlannedRun]:
    """The runs of the plan for ``profile`` with the parameters papermill will inject."""
    plan = plan or load_plan()
    prof = get_profile(profile, plan)
    root = (reports_root or paths.reports_dir()) / profile
    known = [run.name for run in plan.runs]
    if only:
        missing = sorted(set(only) - set(known))
        if missing:
            raise KeyError(f"unknown run(s) {missing}; the plan has {known}")
    result = []
    for run in plan.runs:
        if only and run.name not in only:
            continue
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
        parameters.update(run.parameters)
        result.append(
            PlannedRun(
                name=run.name,
                notebook=plan.source.parent / run.notebook,
                run_dir=root / run.name,
                parameters=parameters,
                timeout_s=int(prof.get("timeout_s") or 3600),
                after_all=run.after_all,
            )
        )
    return result
