"""`--executor ray` on a real local Ray instance (this machine's CPUs): the same trials, runs, reuse,
failure records and stops as the local executor, through SQLite and through a real `mlflow server`."""

import signal
import subprocess
import sys

import mlflow
import pytest

from pipeline.config import ConfigError
from pipeline.ray_executor import check_tracking_for_cluster

from .conftest import assert_nothing_lost, cli, refused, started, wait_until
from .test_sweep import _parents, _trial_runs
from .test_sweep_stops import _processes_mentioning

pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

RAY_SWEEP = ["sweep", "--dataset", "digits", "--profile", "smoke", "--executor", "ray", "--cpus-per-trial", "1"]


def test_a_ray_sweep_nests_every_trial_records_a_failure_loses_nothing_and_a_rerun_reuses_the_rest(
    mlflow_server, tmp_path, monkeypatch
):
    """Through a real `mlflow server`, what a cluster's nodes share (the SIGTERM test below uses SQLite)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    args = [*RAY_SWEEP, "--labels", "10,20", "--seeds", "0", "--experiment", "on-ray"]
    first = cli(*args, cwd=tmp_path, env={"SGAN_FAIL_RUNS": "cnn-digits-L10-s0"})
    assert first.returncode == 1, first.stderr[-3000:]
    assert "epoch 2/2" in first.stdout and "[4/4]" in first.stdout and "1 failed" in first.stdout
    parent = _parents("on-ray").iloc[0]
    assert parent["params.executor"] == "ray" and parent.status == "FAILED"
    runs = _trial_runs("on-ray").set_index("tags.mlflow.runName")
    assert runs.loc["cnn-digits-L10-s0", "status"] == "FAILED"
    assert "failure injected" in runs.loc["cnn-digits-L10-s0", "tags.error"]
    finished = runs[runs.status == "FINISHED"].reset_index()
    assert len(finished) == 3 and set(runs["tags.mlflow.parentRunId"]) == {parent.run_id}
    assert_nothing_lost(finished, epochs=2)  # two trials ran at once (2 CPUs, 1 per trial)
    logs = mlflow.artifacts.list_artifacts(run_id=parent.run_id, artifact_path="trial_logs")
    assert len(logs) == 4
    second = cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4/4 trials finished (3 reused), 0 failed" in second.stdout
    runs = _trial_runs("on-ray")
    assert len(runs) == 5 and (runs.status == "FINISHED").sum() == 4


def test_sigterm_to_a_ray_sweep_stops_its_trials_and_leaves_nothing_running(store, tmp_path):
    args = [*RAY_SWEEP, "--methods", "sgan", "--labels", "10,20", "--seeds", "0", "--epochs", "60"]
    sweep = started(*args, "--experiment", "ray-stop", cwd=tmp_path)

    def both_logged_an_epoch() -> bool:  # both trials run at once (2 CPUs)
        runs, client = _trial_runs("ray-stop"), mlflow.MlflowClient()
        return len(runs) == 2 and all(client.get_metric_history(r, "test_accuracy") for r in runs.run_id)

    wait_until(both_logged_an_epoch, "both trials' first epoch")
    parent = _parents("ray-stop").run_id.iloc[0]
    assert len(_processes_mentioning(parent)) == 2, "both trial processes should be running"
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=400)
    assert sweep.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    assert _processes_mentioning(parent) == []  # no orphan trial on the Ray workers
    assert set(mlflow.search_runs(experiment_names=["ray-stop"]).status) == {"KILLED"}


def test_a_cluster_with_nodes_elsewhere_refuses_a_local_tracking_store():
    for uri in ("sqlite:///mlflow.db", "/home/me/mlruns", "file:///tmp/mlruns"):
        with pytest.raises(ConfigError, match="start `mlflow server"):
            check_tracking_for_cluster(uri, ["10.0.0.7"])
    check_tracking_for_cluster("http://10.0.0.2:5000", ["10.0.0.7"])  # a server every node reaches
    check_tracking_for_cluster("sqlite:///mlflow.db", [])  # one machine: a file is fine


def test_executor_ray_without_ray_says_how_to_install(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "from pipeline.cli import main\n"
        "sys.exit(main(['sweep', '--dataset', 'digits', '--profile', 'smoke', '--executor', 'ray']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert "executor=ray needs Ray, which is not installed: pip install -e '.[ray]'" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run


def test_bad_ray_resources_are_refused_before_any_run(tmp_path):
    result = refused(*RAY_SWEEP[:-2], "--cpus-per-trial", "0", cwd=tmp_path)
    assert result.returncode == 2 and "cpus_per_trial=0.0 must be positive" in result.stderr
    result = refused("sweep", "--dataset", "digits", "--executor", "spark", cwd=tmp_path)
    assert result.returncode == 2 and "executor='spark' is not one of local, ray" in result.stderr
