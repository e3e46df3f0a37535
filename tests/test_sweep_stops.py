"""Stopping and resuming sweeps with real processes and real signals: Ctrl-C, SIGTERM, a trial killed hard.
(Apart from test_sweep.py so that the two long groups run in parallel under pytest-xdist.)"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from pipeline.faults import arm
from pipeline.schema import CANDIDATE_TAG
from pipeline.sweep.owner import is_abandoned, process_identity
from pipeline.sweep.recovery import close_unfinished_runs

from .conftest import cli, started, wait_until
from .test_sweep import SWEEP, _parents, _trial_runs


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_the_same_command_resumes(store, tmp_path):
    args = [*SWEEP, "--methods", "cnn", "--labels", "10", "--seeds", "0,1,2", "--experiment", "interrupted"]
    sweep = started(*args, cwd=tmp_path, own_group=True)
    wait_until(lambda: (_trial_runs("interrupted").status == "FINISHED").any(), "the first trial to finish")
    os.killpg(sweep.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground group
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume" in stderr
    assert _parents("interrupted").status.iloc[0] == "KILLED"
    finished_before = set(_trial_runs("interrupted").query("status == 'FINISHED'").run_id)
    assert 1 <= len(finished_before) < 3
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"3/3 trials finished ({len(finished_before)} reused)" in again.stdout
    finished = _trial_runs("interrupted").query("status == 'FINISHED'")
    assert finished_before <= set(finished.run_id) and len(finished) == 3


@pytest.mark.slow
def test_a_sweep_started_again_resumes_a_half_done_trial_and_closes_a_sweep_killed_hard(store, tmp_path):
    args = [*SWEEP, "--methods", "cnn", "--labels", "10", "--seeds", "0", "--epochs", "3", "--experiment", "halfway"]
    stopped = cli(*args, cwd=tmp_path, env=arm(kill_after_epoch=1))  # the trial dies hard after epoch 1
    assert stopped.returncode == 1 and "1 failed" in stopped.stdout
    (run,) = _trial_runs("halfway").itertuples()
    assert run.status == "FAILED"
    # started again, it resumes the trial; this time SIGKILL takes the whole sweep after epoch 2, as the
    # out-of-memory killer or a scheduler's hard kill would: nothing can close its runs
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=tmp_path,
        env={**os.environ, **arm(kill_after_epoch=2, scope="group")},
        start_new_session=True,  # its own process group, without this test's
        capture_output=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL
    abandoned = _parents("halfway").iloc[-1]
    assert abandoned.status == "RUNNING" and list(_trial_runs("halfway").status) == ["RUNNING"]
    live = mlflow.MlflowClient().create_run(  # a sweep of this test's own, live process: not to be touched
        abandoned.experiment_id, tags={"sweep": "true", "sweep_process": process_identity()}
    )
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Closed sweep run {abandoned.run_id}, left RUNNING by a sweep killed hard" in again.stdout
    assert f"cnn-digits-L10-s0: resumes run {run.run_id} after epoch 2/3" in again.stdout
    assert re.search(
        r"\[1/1\] cnn-digits-L10-s0: finished, test accuracy 0\.\d+ in \d+m\d\ds in all \(resumed\)", again.stdout
    )
    closed = mlflow.get_run(abandoned.run_id)
    assert closed.info.status == "KILLED" and "ended without closing it (killed hard)" in closed.data.tags["error"]
    assert mlflow.get_run(live.info.run_id).info.status == "RUNNING"
    (resumed,) = _trial_runs("halfway").itertuples()
    assert resumed.run_id == run.run_id and resumed.status == "FINISHED"
    tags = mlflow.get_run(run.run_id).data.tags  # finished: no error left, the two stops kept
    first, second = tags["earlier_stops"].split("\n")
    assert "error" not in tags and first.startswith("killed by SIGKILL, its last line: ") and "epoch 1/3" in first
    assert second.startswith("stopped with its sweep")  # nested under the sweep that resumed it, which closed it
    assert tags["mlflow.parentRunId"] == _parents("halfway").run_id.iloc[-1]  # the sweep that finished it
    history = mlflow.MlflowClient().get_metric_history(run.run_id, "test_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]
    (outcome,) = mlflow.artifacts.load_dict(f"runs:/{tags['mlflow.parentRunId']}/trials.json")["trials"]
    whole = mlflow.get_run(run.run_id).data.metrics["wall_seconds"]  # all three processes' training
    assert outcome["resumed"] and outcome["seconds"] == whole  # what the arm's ETA is made of


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            pass
    return found


@pytest.mark.slow
def test_a_signal_to_the_sweep_alone_stops_its_trials_and_leaves_nothing_running(store, tmp_path):
    """What `kill`, `timeout`, systemd or a scheduler do: signal the sweep's process only. (SIGINT to the
    sweep alone: test_a_sweep_stopped_during_a_recipe_search_...; to its whole group: test_ctrl_c_...)"""
    args = [*SWEEP, "--methods", "sgan", "--labels", "10", "--seeds", "0,1", "--epochs", "50", "--experiment", "stop"]
    sweep = started(*args, cwd=tmp_path)

    def first_epoch_logged() -> bool:
        runs = _trial_runs("stop")
        return not runs.empty and bool(mlflow.MlflowClient().get_metric_history(runs.run_id.iloc[0], "test_accuracy"))

    wait_until(first_epoch_logged, "the first trial's first epoch")
    parent = _parents("stop").run_id.iloc[0]
    assert _processes_mentioning(parent), "the trial process should be running"
    for _ in range(60):  # the running trial's log reaches the parent run while it runs
        if mlflow.artifacts.list_artifacts(run_id=parent, artifact_path="trial_logs"):
            break
        time.sleep(1)
    log = mlflow.artifacts.load_text(f"runs:/{parent}/trial_logs/sgan-stacked-digits-L10-s0.log")
    assert "epoch 1/50 done at" in log
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "run the same command again" in stderr
    assert _processes_mentioning(parent) == []  # no orphan trial
    statuses = set(mlflow.search_runs(experiment_names=["stop"]).status)
    assert statuses == {"KILLED"}  # the parent and the running trial; the second trial never started
    assert len(_trial_runs("stop")) == 1
    log = mlflow.artifacts.load_text(f"runs:/{parent}/trial_logs/sgan-stacked-digits-L10-s0.log")
    assert "stopped by SIGTERM: the run is marked KILLED" in log  # the trial's last words reach the sweep run


def test_a_stopped_sweep_closes_every_run_left_open_under_it_and_nothing_else(store):
    """The safety net after a stop: a trial process that died before closing its run (killed by the grace
    period's SIGKILL, or with its Ray worker) and what it nested are ended KILLED; runs elsewhere are not."""
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("left-open")
    sweep, other_sweep = (client.create_run(experiment).info.run_id for _ in range(2))

    def child(parent: str) -> str:
        return client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id

    open_trial, done_trial, other_trial = child(sweep), child(sweep), child(other_sweep)
    search = child(sweep)  # a tuned baseline's recipe search beside the trials, with a candidate under it
    candidate = child(search)
    client.set_terminated(done_trial, "FINISHED")
    assert sorted(close_unfinished_runs(experiment, sweep)) == sorted([open_trial, search, candidate])
    status = {run_id: client.get_run(run_id).info.status for run_id in (open_trial, search, candidate)}
    assert set(status.values()) == {"KILLED"}
    assert "stopped with its sweep" in client.get_run(open_trial).data.tags["error"]
    assert client.get_run(done_trial).info.status == "FINISHED"
    assert client.get_run(other_trial).info.status == "RUNNING" and client.get_run(sweep).info.status == "RUNNING"


def test_only_a_process_gone_from_this_host_counts_as_abandoning_its_sweep():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = f"{socket.gethostname()} {sleeper.pid} {psutil.Process(sleeper.pid).create_time():.2f}"
    assert not is_abandoned(identity) and not is_abandoned(process_identity())
    sleeper.kill()
    sleeper.wait()
    assert is_abandoned(identity)
    host, pid, started = process_identity().split(" ")
    assert is_abandoned(f"{host} {pid} {float(started) - 100:.2f}")  # the pid now runs another process
    assert not is_abandoned(f"another-host {sleeper.pid} {identity.split(' ')[2]}")  # not checkable here
    assert not is_abandoned("")  # a sweep run older than the tag


@pytest.mark.slow
def test_a_sweep_stopped_during_a_recipe_search_ends_the_search_killed_and_invents_no_trial_run(store, tmp_path):
    """SIGINT to the sweep alone while a `cnn_tuned` trial searches its recipe (it has no run of its own yet):
    the sweep stops the trial, whose search ends KILLED with the stop as its error; its finished candidates are
    kept, and no FAILED stand-in is made for the trial."""
    args = [*SWEEP, "--methods", "cnn_tuned", "--labels", "20", "--seeds", "0", "--epochs", "40"]
    sweep = started(*args, "--experiment", "stop-search", cwd=tmp_path)
    finished = f"tags.{CANDIDATE_TAG} = 'true' and attributes.status = 'FINISHED'"
    wait_until(
        lambda: (
            mlflow.get_experiment_by_name("stop-search")
            and len(mlflow.search_runs(experiment_names=["stop-search"], filter_string=finished))
        ),
        "the search's first candidate",
        poll=0.5,
    )
    parent = _parents("stop-search").run_id.iloc[0]
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "stopped by SIGINT" in stderr and "run the same command again" in stderr
    assert _processes_mentioning(parent) == []  # no orphan trial
    runs = mlflow.search_runs(experiment_names=["stop-search"])
    search = runs[runs["tags.recipe_search"] == "true"]  # the sweep stops its trials with SIGTERM
    (logged,) = mlflow.artifacts.list_artifacts(run_id=parent, artifact_path="trial_logs")
    trial_log = mlflow.artifacts.load_text(f"runs:/{parent}/{logged.path}")
    assert list(search.status) == ["KILLED"] and list(search["tags.error"]) == ["Stopped: SIGTERM"], trial_log
    candidates = runs[runs[f"tags.{CANDIDATE_TAG}"] == "true"]
    assert 1 <= len(candidates) < 4 and set(candidates.status) == {"FINISHED"}
    assert _trial_runs("stop-search").empty  # the trial never reached its own run: nothing stands in for it
    assert list(_parents("stop-search").status) == ["KILLED"]
