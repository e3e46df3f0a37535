"""`mlflow run . -e <entry> --env-manager local`, exactly as the README tells users."""

import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from pipeline.faults import arm

from .conftest import ROOT


def mlflow_run(*args: str, env: dict[str, str] | None = None):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_an_experiment_parameter_that_mlflow_run_cannot_honour_is_refused(store):
    result = mlflow_run("-e", "cnn", "-P", "dataset=digits", "-P", "profile=smoke", "-P", "experiment=elsewhere")
    assert result.returncode != 0
    assert "pass `--experiment-name elsewhere` to `mlflow run`" in result.stderr
    assert mlflow.get_experiment_by_name("elsewhere") is None


@pytest.mark.slow
def test_main_entry_point_sweeps_one_arm_per_generator_loss_then_reports_each_against_the_baseline(store, tmp_path):
    parameters = {
        "dataset": "digits",
        "profile": "smoke",
        "labels": "10",
        "seeds": "0",
        "variant": "k_plus_one",
        "generator_loss": "non_saturating,feature_matching",
        "max_parallel": "2",
        "out": tmp_path / "report",
    }
    pairs = [word for key, value in parameters.items() for word in ("-P", f"{key}={value}")]
    result = mlflow_run("-e", "main", *pairs, "--experiment-name", "arms")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["arms"])
    parent = runs[runs["tags.sweep"] == "true"].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent.run_id]
    assert set(children.status) == {"FINISHED"}
    assert sorted(children["tags.arm"]) == ["cnn", "sgan k_plus_one", "sgan k_plus_one feature matching"]
    logged = {f.path for f in mlflow.artifacts.list_artifacts(run_id=parent.run_id, artifact_path="report")}
    assert {"report/report.md", "report/summary.csv", "report/accuracy_vs_labels.png"} <= logged
    paired = pd.read_csv(tmp_path / "report" / "paired.csv")
    assert len(paired) == 2 and set(paired.baseline_arm) == {"cnn"} and set(paired.n_pairs) == {1}
    assert not (tmp_path / "report" / "sgan_contrasts.csv").exists()  # no stacked float32 SGAN to contrast with


def test_every_entry_point_passes_each_parameter_to_a_cli_flag_with_the_same_default():
    """MLproject and the CLI stay one definition: each entry point's parameters are flags of the
    command of the same name, spelled alike (underscores as dashes), with the CLI's defaults."""
    import shlex

    import yaml

    from pipeline.cli import build_parser

    project = yaml.safe_load((ROOT / "MLproject").read_text())
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert set(project["entry_points"]) <= set(subcommands)
    for name, entry in project["entry_points"].items():
        words = shlex.split(entry["command"])
        assert words[:4] == ["python", "-m", "pipeline", name], name
        flags = dict(zip(words[4::2], words[5::2], strict=True))
        assert set(flags.values()) == {f"{{{p}}}" for p in entry["parameters"]}, name
        actions = {a.dest: a for a in subcommands[name]._actions}
        for flag, value in flags.items():
            parameter = value.strip("{}")
            assert flag == "--" + parameter.replace("_", "-"), (name, flag)
            action = actions[parameter]
            default = entry["parameters"][parameter]["default"]
            cli_default = "" if action.default is None else action.default
            assert str(default).lower() == str(cli_default).lower(), (name, parameter, default, cli_default)


@pytest.mark.slow
def test_mlflow_run_trains_an_sgan_and_resumes_it_after_a_stop_with_run_id_and_resume(store):
    args = ["-e", "sgan", "-P", "dataset=digits", "-P", "profile=smoke", "-P", "epochs=3", "-P", "labels=20"]
    args += ["-P", "seed=1", "-P", "variant=two_head", "--experiment-name", "mr"]
    stopped = mlflow_run(*args, env=arm(kill_after_epoch=1))
    assert stopped.returncode != 0
    (run,) = mlflow.search_runs(experiment_names=["mr"], output_format="list")
    assert run.info.status == "FAILED"  # `mlflow run` saw its command die
    resumed = mlflow_run(*args, "-P", f"resume={run.info.run_id}", "--run-id", run.info.run_id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (after,) = mlflow.search_runs(experiment_names=["mr"], output_format="list")
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert after.data.tags["method"] == "sgan" and after.data.params["variant"] == "two_head"
    assert after.data.params["num_epochs"] == "3" and after.data.params["labels"] == "20"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "test_accuracy")]
    assert sorted(steps) == [1, 2, 3]


def test_the_committed_mlproject_is_the_one_generated_from_the_cli():
    """Settings are defined once: the MLproject file is generated (`python -m pipeline.mlproject`), never edited."""
    from pipeline.cli import build_parser
    from pipeline.mlproject import render

    assert (ROOT / "MLproject").read_text() == render(build_parser())


def test_conda_yaml_installs_what_pyproject_declares_with_the_ray_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    (pip,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    assert sorted(pip) == sorted(project["dependencies"] + project["optional-dependencies"]["ray"])


def test_the_constraints_pin_every_declared_package_within_its_bounds():
    """The tested set (constraints.txt) that the README's commands and CI install holds a version of every
    package pyproject.toml declares (with the test and ray extras) that its bounds admit."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for text in project["dependencies"] + extras["test"] + extras["ray"]:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is declared but not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(requirement))
