"""`--executor ray` on real Ray: a cluster started with `ray start` and joined by address, and a local
instance the sweep starts itself; the same trials, runs, reuse, failure records and stops as the local executor,
through a real `mlflow server` and through SQLite."""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mlflow
import psutil
import pytest

from pipeline.config import ConfigError
from pipeline.faults import arm
from pipeline.sweep.ray_cluster import check_tracking_for_cluster

from .conftest import assert_nothing_lost, cli, free_port, refused, started, wait_until
from .test_sweep import _parents, _trial_runs
from .test_sweep_stops import _processes_mentioning

pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

RAY_SWEEP = ["sweep", "--dataset", "digits", "--profile", "smoke", "--executor", "ray", "--cpus-per-trial", "1"]


@pytest.fixture
def ray_cluster(tmp_path_factory):
    """A Ray cluster started as on a head node (`ray start --head`), with token authentication: its address,
    and what a driver needs to join it (RAY_AUTH_MODE and the token). Its own temp dir keeps it out of sight of
    a plain `ray.init()`, which would otherwise join the last cluster `ray start` made on this machine."""
    folder = tmp_path_factory.mktemp("ray")
    port = free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--num-cpus", "2", "--port", str(port)]
    head += ["--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(folder)]
    log = folder / "ray-start.log"  # a file, not a pipe: the cluster's daemons keep what they inherit open
    with log.open("w") as out:  # in a process group of its own, which the cluster's processes inherit
        start = subprocess.Popen(head, env={**os.environ, **auth}, stdout=out, stderr=out, start_new_session=True)
    try:  # a start that fails or hangs half-way is cleaned up too
        assert start.wait(timeout=180) == 0, log.read_text()[-3000:]
        yield (folder / "ray_current_cluster").read_text().strip(), auth
    finally:  # only this cluster's processes (`ray stop` stops every Ray instance of this user), at once:
        group = [proc for proc in psutil.process_iter() if _group(proc) == start.pid]  # its GCS outlives SIGTERM
        procs = {each for proc in group for each in (proc, *_children(proc))}  # workers have groups of their own
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=30)


def _group(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except ProcessLookupError:
        return None


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_a_ray_sweep_joins_a_cluster_nests_every_trial_records_a_failure_loses_nothing_and_a_rerun_reuses_the_rest(
    ray_cluster, mlflow_server, tmp_path, monkeypatch
):
    """A cluster joined by its address, through a real `mlflow server`: what a cluster's nodes share (the SIGTERM
    test below has the sweep start a local instance, with SQLite)."""
    address, auth = ray_cluster
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    nowhere = f"127.0.0.1:{free_port()}"  # an address nobody answers at, tried once by Ray (20 times by default):
    aside = ThreadPoolExecutor(1)  # still about 40 s, so that sweep runs while the rest of this test does
    once = {"RAY_gcs_server_port_wait_time_s": "1"}
    nowhere_args = [*RAY_SWEEP, "--ray-address", nowhere, "--experiment", "nowhere"]
    unanswered = aside.submit(cli, *nowhere_args, cwd=tmp_path, env=once)
    args = [*RAY_SWEEP, "--labels", "10,20", "--seeds", "0", "--experiment", "on-ray"]
    quick = {"RAY_AUTH_MODE": "disabled", "RAY_gcs_server_port_wait_time_s": "2"}  # Ray retries for 20 s by default
    without_token = cli(*args, "--ray-address", address, cwd=tmp_path, env=quick)
    assert without_token.returncode == 2, without_token.stderr[-3000:]
    assert f"error: could not join the Ray cluster at '{address}': AuthenticationError" in without_token.stderr
    assert "the cluster uses token authentication: set RAY_AUTH_MODE=token" in without_token.stderr
    assert mlflow.get_experiment_by_name("on-ray") is None  # refused before any run
    first = cli(*args, "--ray-address", address, cwd=tmp_path, env={**auth, **arm(fail_runs=["cnn-digits-L10-s0"])})
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
    second = cli(*args, cwd=tmp_path, env={**auth, "RAY_ADDRESS": address})  # Ray's own way to name the cluster
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4/4 trials finished (3 reused), 0 failed" in second.stdout
    joined = f"Ray cluster at {address}: 1 node(s), 2 CPUs, 2 trials at once"  # the fixture's, both times
    assert joined in first.stdout and joined in second.stdout
    refused_join = unanswered.result(timeout=300)
    aside.shutdown()
    assert refused_join.returncode == 2, refused_join.stderr[-3000:]
    assert f"error: could not join the Ray cluster at '{nowhere}': RpcError" in refused_join.stderr
    assert "token" not in refused_join.stderr.split("error: ")[-1]  # no advice that does not apply
    assert mlflow.get_experiment_by_name("nowhere") is None  # refused before any run
    runs = _trial_runs("on-ray")
    assert len(runs) == 5 and (runs.status == "FINISHED").sum() == 4


@pytest.mark.slow
def test_sigterm_to_a_ray_sweep_stops_its_trials_and_leaves_nothing_running(store, tmp_path):
    args = [*RAY_SWEEP, "--methods", "sgan", "--labels", "10,20", "--seeds", "0", "--epochs", "60"]
    sweep = started(*args, "--experiment", "ray-stop", cwd=tmp_path)

    def both_logged_an_epoch() -> bool:  # both trials run at once (2 CPUs)
        runs, client = _trial_runs("ray-stop"), mlflow.MlflowClient()
        return len(runs) == 2 and all(client.get_metric_history(r, "test_accuracy") for r in runs.run_id)

    wait_until(both_logged_an_epoch, "both trials' first epoch", timeout=600)  # Ray and two TensorFlow starts
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
