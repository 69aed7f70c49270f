from pathlib import Path

import pytest

from helpers import paths, plan, studies


def test_plan_has_the_three_profiles_and_unique_runs():
    loaded = plan.load_plan()
    assert {"smoke", "cpu", "paper"} <= set(loaded.profiles)
    names = [run.name for run in loaded.runs]
    assert len(names) == len(set(names))
    for run in loaded.runs:
        assert (loaded.source.parent / run.notebook).exists(), run.notebook


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_planned_run_resolves(profile):
    for run in plan.planned_runs(profile):
        params = run.parameters
        assert params["PROFILE"] == profile and params["RUN_NAME"] == run.name
        assert Path(params["RUN_DIR"]).name == run.name
        if "STUDY" in params:
            settings = plan.resolve_settings(profile, study=params["STUDY"], backbone=params.get("BACKBONE"))
            assert settings.image_size[0] > 0 and settings.epochs > 0 and settings.batch_size > 0


def test_paper_profile_takes_the_papers_own_settings():
    recipe = studies.get_study("000").recipe
    settings = plan.resolve_settings("paper", study="000", backbone="vgg16")
    assert settings.image_size == tuple(recipe.input_size)
    assert settings.epochs == recipe.epochs and settings.batch_size == recipe.batch_size
    assert settings.weights == "imagenet"
    assert settings.dataset == recipe.datasets[0]
    assert settings.task == recipe.task


def test_smoke_uses_random_weights_and_cpu_imagenet_and_both_say_what_was_scaled_down():
    smoke = plan.resolve_settings("smoke", study="000", backbone="mobilenetv2")
    cpu = plan.resolve_settings("cpu", study="000", backbone="mobilenetv2")
    assert smoke.weights is None and smoke.normalisation == "zero_mean" and not smoke.cache_features
    assert cpu.weights == "imagenet" and cpu.normalisation == "imagenet" and cpu.freeze == "base"
    assert cpu.cache_features and cpu.augmentation == "none" and min(cpu.image_size) >= 96
    assert smoke.scaled_down and any("without the paper's augmentation" in item for item in cpu.scaled_down)


def test_each_backbone_has_a_random_weights_baseline_with_the_same_recipe():
    runs = {run.name: run for run in plan.planned_runs("cpu")}
    baselines = [run for run in runs.values() if run.baseline_of]
    assert {plan.settings_for_run(run).backbone for run in baselines} == {
        plan.settings_for_run(run).backbone for run in runs.values()
        if run.name.startswith("tl_") and plan.settings_for_run(run) is not None}
    for run in baselines:
        ours, theirs = plan.settings_for_run(run), plan.settings_for_run(runs[run.baseline_of])
        assert ours.weights is None and theirs.weights == "imagenet"
        assert ours.freeze == plan.get_profile("cpu")["baseline_freeze"]
        differ = {k for k, v in ours.as_dict().items() if theirs.as_dict()[k] != v}
        assert differ <= {"weights", "normalisation", "save_model"}, (run.name, differ)  # the same recipe and data
    assert not [run for run in plan.planned_runs("smoke") if run.baseline_of]  # smoke: all random already
    paper = {run.name: run for run in plan.planned_runs("paper")}
    assert plan.settings_for_run(paper["scratch_000_vgg16"]).freeze == "none"  # the paper profile trains all


def test_overrides_and_random_weights():
    settings = plan.resolve_settings("smoke", study="000", epochs=3, image_size=48, weights="imagenet")
    assert settings.epochs == 3 and settings.image_size == (48, 48) and settings.weights == "imagenet"
    assert plan.resolve_settings("paper", study="000", weights="none").weights is None
    assert plan.resolve_settings("paper", study="000", weights=None).weights == "imagenet"  # None names nothing
    with pytest.raises(TypeError, match="unknown setting"):
        plan.resolve_settings("smoke", study="000", epochz=3)


def test_dataset_option_from_the_command_line_reaches_every_run(tmp_path):
    runs = plan.planned_runs("smoke", dataset="cbis-sample", data_dir=str(tmp_path))
    assert all(r.parameters["DATASET"] == "cbis-sample" for r in runs)
    assert all(r.parameters["DATA_DIR"] == str(tmp_path.resolve()) for r in runs)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(KeyError, match="unknown profile 'fast'"):
        plan.planned_runs("fast")
    with pytest.raises(KeyError, match="unknown run"):
        plan.planned_runs("smoke", only=["nope"])
    bad = tmp_path / "study.yaml"
    bad.write_text("profiles: {smoke: {epochz: 1}}\nruns: []\n")
    with pytest.raises(ValueError, match="unknown keys"):
        plan.load_plan(bad)
    bad.write_text("profiles: [\n")
    with pytest.raises(ValueError, match="study.yaml"):
        plan.load_plan(bad)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_dry_run_lists_every_run_with_resolved_settings(profile, capsys):
    from helpers.__main__ import main

    assert main(["run", "--profile", profile, "--dry-run"]) == 0
    out = capsys.readouterr().out
    runs = plan.planned_runs(profile)
    for run in runs:
        assert f"{run.name}: {run.notebook.name}" in out
    resolved = [line for line in out.splitlines() if line.strip().startswith("resolved:")]
    baselines = 10 if profile != "smoke" else 0
    assert len(resolved) == sum(plan.settings_for_run(run) is not None for run in runs) == 2 + 16 + baselines + 6 + 1
    assert sum("head=fusion" in line and "backbone=resnet50+alexnet" in line for line in resolved) == 1
    for study, backbone, optimiser in [("001", "alexnet", "sgdm"), ("001", "squeezenet", "adam"),
                                       ("004", "resnet50", "rmsprop")]:
        assert any(f"study={study}, backbone={backbone}," in line and f"optimiser={optimiser}," in line
                   for line in resolved), (study, backbone, optimiser)
    if profile == "paper":  # the papers' own settings, ImageNet where Keras has it
        assert any("study=004" in l and "image_size=(96, 144)" in l and "loss=mse" in l
                   and "split=by-magnification" in l and "weights=imagenet" in l for l in resolved)
        assert any("study=001, backbone=alexnet" in l and "weights=imagenet" in l and "batch_size=128" in l
                   for l in resolved)
        assert any("study=000" in l and "offline_expansion=8" in l and "augmentation=paper000" in l
                   for l in resolved)
    else:  # scaled down: square inputs of the profile, AlexNet raised to its minimum
        size = plan.get_profile(profile)["image_size"]
        alexnet = f"({max(size, 63)}, {max(size, 63)})"
        assert any("backbone=alexnet" in l and f"image_size={alexnet}" in l for l in resolved)
        assert any("backbone=vgg16" in l and f"image_size=({size}, {size})" in l for l in resolved)


def test_every_reported_row_of_the_papers_has_a_run_in_the_plan():
    from helpers import studies

    runs = [plan.settings_for_run(run) for run in plan.planned_runs("paper")]
    planned = {(s.study, s.backbone, s.optimiser) for s in runs if s is not None}
    reported = studies.reported_table()
    network = reported[reported["classifier"].isin(["softmax", "sigmoid"]) & (reported["backbone"] != "convnet")]
    for row in network.itertuples():
        optimisers = [row.optimiser] if isinstance(row.optimiser, str) else ["adam", "sgdm", "rmsprop"]
        assert any((row.study, row.backbone, o) in planned for o in optimisers), (row.study, row.backbone)


def test_every_profile_says_what_it_scales_down_in_plain_sentences():
    for name, profile in plan.load_plan().profiles.items():
        items = profile.get("scaled_down") or []
        assert all(isinstance(item, str) and item for item in items), (name, items)
        assert bool(items) == (name != "paper"), name


def test_the_hybrids_are_planned_and_svm_runs_reuse_lesson_3s_networks():
    runs = {run.name: run for run in plan.planned_runs("cpu")}
    for backbone in studies.get_study("000").recipe.backbones:
        svm = runs[f"svm_000_{backbone}"]
        assert svm.reuses == f"tl_000_{backbone}"
        assert svm.parameters["NETWORK_DIR"] == str(runs[f"tl_000_{backbone}"].run_dir)
        ours, theirs = plan.settings_for_run(svm), plan.settings_for_run(runs[f"tl_000_{backbone}"])
        assert theirs.save_model and not ours.save_model  # the reused network is kept, the SVM run's not
        assert {**ours.as_dict(), "save_model": True} == theirs.as_dict()
    fusion = plan.settings_for_run(runs["fusion_003_resnet50_alexnet"])
    assert fusion.backbone == plan.FUSION and fusion.head == "fusion" and fusion.task == "normal-benign-malignant"
    assert min(fusion.image_size) >= 63  # AlexNet's minimum input
    paper = plan.settings_for_run(next(r for r in plan.planned_runs("paper") if r.name.startswith("fusion_")))
    assert paper.weights == "imagenet" and paper.normalisation == "imagenet"  # each pathway its own


def test_a_run_can_only_reuse_an_earlier_run_of_its_suites(tmp_path):
    bad = tmp_path / "study.yaml"
    head = "profiles: {smoke: {}}\nruns:\n"
    bad.write_text(head + "  - {name: b, notebook: x.ipynb, reuses: a}\n  - {name: a, notebook: x.ipynb}\n")
    with pytest.raises(ValueError, match="reuses 'a', which is not an earlier run"):
        plan.load_plan(bad)
    bad.write_text(head + "  - {name: a, notebook: x.ipynb}\n"
                   "  - {name: b, notebook: x.ipynb, reuses: a, suites: [study, other]}\n")
    with pytest.raises(ValueError, match=r"suites \['other'\] without the run 'a'"):
        plan.load_plan(bad)


# ---------------------------------------------------------------------------------------------
# One layered resolution (issue 11)
# ---------------------------------------------------------------------------------------------

def test_each_layer_wins_over_the_one_below_and_says_so():
    loaded = plan.load_plan()
    assert loaded.defaults["epochs"] == 10 and loaded.defaults["seed"] == 42  # visible in study.yaml
    recipe = studies.get_study("000").recipe
    assert recipe.epochs == 90 and plan.get_profile("cpu")["epochs"] == 30
    paper = plan.resolve_settings("paper", study="000", backbone="vgg16")
    assert (paper.epochs, paper.sources["epochs"]) == (90, "recipe")  # the paper profile names none
    assert (paper.seed, paper.sources["seed"]) == (42, "defaults")
    cpu = plan.resolve_settings("cpu", study="000", backbone="vgg16")
    assert (cpu.epochs, cpu.sources["epochs"]) == (30, "profile")
    run = plan.resolve_settings("cpu", study="000", backbone="vgg16", run={"epochs": 5})
    assert (run.epochs, run.sources["epochs"]) == (5, "run")
    explicit = plan.resolve_settings("cpu", study="000", backbone="vgg16", run={"epochs": 5}, epochs=2)
    assert (explicit.epochs, explicit.sources["epochs"]) == (2, "explicit")
    table = plan.settings_table(explicit)
    assert table.loc["epochs", "from"] == "explicit" and table.loc["seed", "from"] == "defaults"
    assert table.loc["normalisation", "from"] == "derived"


def test_the_merge_is_one_rule_for_every_setting():
    values, sources = plan.merge_layers({"defaults": {"a": 1, "b": 1, "c": 1}, "recipe": {"b": 2, "c": None},
                                         "explicit": {"c": 5}, "profile": {"b": None}})
    assert values == {"a": 1, "b": 2, "c": 5}
    assert sources == {"a": "defaults", "b": "recipe", "c": "explicit"}


def test_a_lesson_and_the_dry_run_resolve_the_same_settings():
    run = next(r for r in plan.planned_runs("cpu") if r.name == "tl_001_alexnet_sgdm")
    cell = plan.notebook_parameters(run.notebook)
    assert cell["WEIGHTS"] is None and cell["PROFILE"] == "smoke"
    namespace = {**cell, **run.parameters, "np": object(), "other": 1}  # what globals() holds in the kernel
    assert plan.settings_from_parameters(namespace) == plan.settings_for_run(run)
    settings = plan.settings_for_run(run)
    assert (settings.backbone, settings.optimiser, settings.sources["optimiser"]) == ("alexnet", "sgdm", "run")
    results = next(r for r in plan.planned_runs("cpu") if r.name == "results")
    assert plan.notebook_parameters(results.notebook) is None and plan.settings_for_run(results) is None


def test_lessons_hold_no_sentinels_and_make_one_settings_call():
    import json
    import re

    for notebook in sorted(paths.notebooks_dir().glob("0[1-5]_*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        assert sum(plan.SETTINGS_CALL in source for source in code) == 1, notebook.name
        assert not any("resolve_settings(" in source or re.search(r"\bor None\b", source) for source in code)
        values = plan.notebook_parameters(notebook)
        assert "profile" not in {v for v in values.values() if isinstance(v, str)}, notebook.name
        if "SKIP_BAD" in values:
            assert values["SKIP_BAD"] is None, notebook.name


def test_the_profiles_dataset_options_stay_with_its_own_dataset():
    options = plan.get_profile("cpu")["dataset_options"]
    same = plan.resolve_settings("cpu", study="000", dataset="synthetic")
    assert same.dataset_options == options and same.sources["dataset_options"] == "profile"
    other = plan.resolve_settings("cpu", study="000", dataset="cbis-sample")
    assert other.dataset_options == {}
    assert plan.output_name("cpu", dataset="synthetic") == "cpu"
    assert plan.output_name("cpu", dataset="cbis-sample") == "cpu-cbis-sample"


def test_backbone_adaptations_come_after_the_merge_and_are_listed():
    smoke = plan.resolve_settings("smoke", study="001", backbone="alexnet")
    assert smoke.image_size == (63, 63) and smoke.sources["image_size"] == "backbone"
    assert any(note.startswith("alexnet: input 63 px, its minimum") for note in smoke.scaled_down)
    with pytest.raises(ValueError, match="below alexnet's minimum input of 63 px"):
        plan.resolve_settings("smoke", study="001", backbone="alexnet", image_size=32)
    fusion = plan.resolve_settings("cpu", study="003", backbone=plan.FUSION)
    assert fusion.head == "fusion" and not fusion.cache_features  # a frozen fusion is trained whole
    frozen = plan.resolve_settings("cpu", study="000", backbone="vgg16")
    assert frozen.cache_features and frozen.augmentation == "none"
    assert any("features computed once" in note for note in frozen.scaled_down)


def test_a_plan_without_complete_defaults_is_an_error_naming_it(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("defaults: {epochs: 3}\nprofiles: {smoke: {}}\nruns: []\n")
    loaded = plan.load_plan(path)
    with pytest.raises(ValueError, match=r"study.yaml: 'defaults' must name every setting.*missing \['batch_size'"):
        plan.resolve_settings("smoke", plan=loaded)
    path.write_text("defaults: {epochz: 3}\nprofiles: {smoke: {}}\nruns: []\n")
    with pytest.raises(ValueError, match="defaults has unknown settings \\['epochz'\\]"):
        plan.load_plan(path)
