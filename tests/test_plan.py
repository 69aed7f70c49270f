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


def test_smoke_and_cpu_use_random_weights_and_say_what_was_scaled_down():
    for profile in ("smoke", "cpu"):
        settings = plan.resolve_settings(profile, study="000", backbone="mobilenetv2")
        assert settings.weights is None
        assert settings.scaled_down


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
