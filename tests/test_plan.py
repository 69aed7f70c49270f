from pathlib import Path

import pytest

from helpers import plan, studies


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
        assert differ <= {"weights", "normalisation"}, (run.name, differ)  # the same recipe and data
    assert not [run for run in plan.planned_runs("smoke") if run.baseline_of]  # smoke: all random already
    paper = {run.name: run for run in plan.planned_runs("paper")}
    assert plan.settings_for_run(paper["scratch_000_vgg16"]).freeze == "none"  # the paper profile trains all


def test_overrides_and_weight_sentinels():
    settings = plan.resolve_settings("smoke", study="000", epochs=3, image_size=48, weights="imagenet")
    assert settings.epochs == 3 and settings.image_size == (48, 48) and settings.weights == "imagenet"
    assert plan.resolve_settings("paper", study="000", weights="none").weights is None
    assert plan.resolve_settings("paper", study="000", weights="profile").weights == "imagenet"
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
    assert len(resolved) == sum(plan.settings_for_run(run) is not None for run in runs) == 16 + baselines + 6 + 1
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
        assert plan.settings_for_run(svm) == plan.settings_for_run(runs[f"tl_000_{backbone}"])
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
