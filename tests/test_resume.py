"""Checkpoints and resume of one run, with real processes and a real SIGKILL."""

import re
import subprocess
import sys

import mlflow
import pytest

from pipeline.faults import arm

from .conftest import cli, refused

RUN = ["--dataset", "digits", "--profile", "smoke", "--epochs", "4", "--labels", "20", "--seed", "2", "--quiet"]
KEYS = ["test_accuracy", "test_accuracy_ema", "val_accuracy", "labeled_accuracy", "loss_supervised"]


def _runs(experiment, method="cnn"):
    """The training runs, oldest first (a cnn_tuned experiment also holds its recipe search and candidates)."""
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string=f"tags.method = '{method}'", output_format="list"
    )
    return sorted(runs, key=lambda run: run.info.start_time)


def _histories(run_id, keys):
    client = mlflow.MlflowClient()
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "keys"),
    [
        ("sgan", [*KEYS, "loss_unsupervised_real", "loss_unsupervised_fake", "loss_generator"]),
        ("cnn_tuned", [*KEYS, "val_accuracy_ema"]),
    ],
)
def test_a_run_killed_hard_and_resumed_matches_the_uninterrupted_run_to_the_float(store, tmp_path, method, keys):
    # one experiment: cnn_tuned's recipe search runs once and serves both runs
    if method == "cnn_tuned":  # ... after a hard stop inside it, which it continues rather than starts again
        stopped = cli(method, *RUN, "--experiment", "resume", cwd=tmp_path, env=arm(kill_after_candidate=2))
        assert stopped.returncode == -9
    loud = [arg for arg in RUN if arg != "--quiet"] if method == "cnn_tuned" else RUN  # a line per candidate
    whole = cli(method, *loud, "--experiment", "resume", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    if method == "cnn_tuned":  # the candidates it reused are reported with the time their runs recorded
        assert len(re.findall(r"^search [12]/4: .*, reused from the stopped search, \d+ s$", whole.stdout, re.M)) == 2
        (search,) = mlflow.search_runs(experiment_names=["resume"], filter_string="tags.recipe_search = 'true'").run_id
        candidates = mlflow.search_runs(
            experiment_names=["resume"], filter_string=f"tags.mlflow.parentRunId = '{search}'"
        )
        assert sorted(candidates["tags.mlflow.runName"].str[-2:]) == ["-1", "-2", "-3", "-4"]  # none trained twice
        assert set(candidates.status) == {"FINISHED"} and mlflow.get_run(search).info.status == "FINISHED"
    killed = cli(method, *RUN, "--experiment", "resume", cwd=tmp_path, env=arm(kill_after_epoch=2))
    assert killed.returncode == -9  # SIGKILL: nothing of the process could react
    reference, run = _runs("resume", method)
    assert run.info.status == "RUNNING"  # what a hard stop leaves; the resume ends it properly
    assert [s for s, _ in _histories(run.info.run_id, ["test_accuracy"])["test_accuracy"]] == [1, 2]
    run_id = run.info.run_id  # refused before any training: other settings, an unknown run, later a finished one
    other = refused(method, *RUN, "--labels", "30", "--resume", run_id, cwd=tmp_path)
    assert other.returncode == 2 and f"resume={run_id}: that run was made with another configuration" in other.stderr
    missing = refused(method, *RUN, "--resume", "0123456789abcdef0123456789abcdef", cwd=tmp_path)
    assert missing.returncode == 2 and "no such run" in missing.stderr
    resumed = cli(method, *RUN, "--resume", run_id, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = refused(method, *RUN, "--resume", run_id, cwd=tmp_path)
    assert again.returncode == 2 and "already FINISHED" in again.stderr
    after = mlflow.get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and [r.info.run_id for r in _runs("resume", method)][1:] == [run.info.run_id]
    assert mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="checkpoint") == []  # pruned
    expected, got = _histories(reference.info.run_id, keys), _histories(run.info.run_id, keys)
    steps = list(range(1, 5 if method == "sgan" else 13))  # cnn_tuned trains three times the 4 epochs
    for key in keys:
        assert [s for s, _ in got[key]] == steps, key  # no step missing or twice
        assert got[key] == expected[key], key  # the same floats, not just close
    for name in ("final_test_accuracy", "final_test_accuracy_ema", "selected_epoch"):
        assert after.data.metrics[name] == reference.data.metrics[name], name
    assert after.data.metrics["wall_seconds"] > after.data.metrics["train_seconds"]  # both over all its processes


def test_what_cannot_be_resumed_or_honoured_is_refused_before_tensorflow_loads(store, tmp_path):
    """A run id that does not exist or has finished, and an experiment other than the one `mlflow run` made the
    run in, are refused in a second: before the TensorFlow start-up and the data (in a fresh Python)."""
    client = mlflow.MlflowClient()
    finished = client.create_run(client.create_experiment("done")).info.run_id
    client.set_terminated(finished, "FINISHED")
    code = (
        "import os, sys\n"
        "from pipeline.cli import main\n"
        "run = ['cnn', '--dataset', 'digits', '--profile', 'smoke']\n"
        "codes = [main([*run, '--resume', r]) for r in sys.argv[1:]]\n"
        "os.environ['MLFLOW_RUN_ID'] = sys.argv[2]  # as `mlflow run` launches its command\n"
        "codes.append(main([*run, '--experiment', 'elsewhere']))\n"
        "print(*codes, any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))"
    )
    missing = "0123456789abcdef0123456789abcdef"
    result = subprocess.run(
        [sys.executable, "-c", code, missing, finished], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.stdout.split() == ["2", "2", "2", "False"], result.stderr[-3000:]
    assert f"resume={missing}: no such run" in result.stderr and "already FINISHED" in result.stderr
    assert "pass `--experiment-name elsewhere` to `mlflow run`" in result.stderr
