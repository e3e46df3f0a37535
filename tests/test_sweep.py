"""Real smoke sweeps on digits: nested child processes, resume, failures, bad input."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from .conftest import assert_nothing_lost, cli, tracking_store

SWEEP = ["sweep", "--dataset", "digits", "--profile", "smoke"]


def _trial_runs(experiment="digits-smoke") -> pd.DataFrame:
    runs = mlflow.search_runs(experiment_names=[experiment])
    if "tags.method" not in runs:  # none yet, or only the parent run
        return pd.DataFrame(columns=["run_id", "status", "tags.method"])
    return runs[runs["tags.method"].notna()]


def _parents(experiment="digits-smoke") -> pd.DataFrame:
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.sweep = 'true'")
    return runs.sort_values("start_time")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One 2 labels x 2 seeds x 2 methods smoke sweep, then the same command again."""
    folder = tmp_path_factory.mktemp("sweep-store")
    with tracking_store(folder):
        first = cli(*SWEEP, "--labels", "10,20", "--seeds", "0,1", cwd=folder)
        second = cli(*SWEEP, "--labels", "10,20", "--seeds", "0,1", cwd=folder)
        yield folder, first, second


def test_sweep_makes_one_nested_child_run_per_trial(swept):
    _, first, _ = swept
    assert first.returncode == 0, first.stderr[-3000:]
    runs = _trial_runs()
    first_parent = _parents().run_id.iloc[0]
    assert len(runs) == 8 and set(runs.status) == {"FINISHED"}
    assert set(runs["tags.mlflow.parentRunId"]) == {first_parent}
    grid = set(zip(runs["tags.method"], runs["params.labels"], runs["params.seed"], strict=True))
    assert grid == {(m, labels, s) for m in ("sgan", "cnn") for labels in ("10", "20") for s in ("0", "1")}
    assert "[8/8]" in first.stdout and "ETA" in first.stdout and "elapsed" in first.stdout
    # live progress: each running trial's epochs, with its own ETA and the sweep's
    assert re.search(r"    sgan-stacked-digits-L20-s1: epoch 2/2, test_accuracy \d\.\d{4} .*\| trial ETA", first.stdout)
    logs = mlflow.artifacts.list_artifacts(run_id=first_parent, artifact_path="trial_logs")
    assert len(logs) == 8
    assert "8/8 trials finished (0 reused), 0 failed" in first.stdout


def test_running_the_same_sweep_again_reuses_every_finished_trial(swept):
    folder, _, second = swept
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(_trial_runs()) == 8  # no new trial runs
    assert second.stdout.count("reused, test accuracy") == 8
    assert "8/8 trials finished (8 reused), 0 failed" in second.stdout
    # the second sweep's report covers the reused runs
    parent = _parents().run_id.iloc[-1]
    report = cli("report", "--experiment", "digits-smoke", "--sweep-run-id", parent, "--out", str(folder / "r"))
    assert report.returncode == 0, report.stderr[-3000:]
    summary = pd.read_csv(folder / "r" / "summary.csv")
    assert summary.n.sum() == 8


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(store, tmp_path):
    args = ["sweep", "--dataset", "digits", "--profile", "smoke", "--methods", "cnn", "--labels", "10"]
    args += ["--seeds", "0,1", "--max-parallel", "2", "--experiment", "flaky"]
    failed = cli(*args, env={"SGAN_FAIL_RUNS": "cnn-digits-L10-s1"}, cwd=tmp_path)
    assert failed.returncode == 1
    assert "1 failed" in failed.stdout and "FAILED cnn-digits-L10-s1" in failed.stdout
    runs = _trial_runs("flaky").set_index("tags.mlflow.runName")
    assert runs.loc["cnn-digits-L10-s0", "status"] == "FINISHED"
    assert runs.loc["cnn-digits-L10-s1", "status"] == "FAILED"
    assert "failure injected" in runs.loc["cnn-digits-L10-s1", "tags.error"]
    assert _parents("flaky").status.iloc[0] == "FAILED"
    # started again, only the failed trial runs
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2/2 trials finished (1 reused)" in again.stdout
    assert len(_trial_runs("flaky")) == 3


def test_parallel_local_trials_on_one_sqlite_file_lose_nothing(store, tmp_path):
    args = [*SWEEP, "--methods", "sgan,cnn", "--labels", "10", "--seeds", "0,1", "--max-parallel", "2"]
    result = cli(*args, "--experiment", "parallel", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _trial_runs("parallel")
    assert len(runs) == 4 and set(runs.status) == {"FINISHED"}
    assert_nothing_lost(runs, epochs=2)
    share = str(max(1, (os.cpu_count() or 1) // 2))  # each trial an equal share of the cores, not all of them
    assert set(runs["params.intra_op_threads"]) == {share}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "5,10"], "labels=5 is below the number of classes"),
        (["--labels", "ten"], "labels='ten' must be a comma-separated list of int values"),
        (["--seeds", "1,1"], "seeds='1,1' lists a value twice"),
        (["--methods", "sgan,gan"], "method='gan' is not one of sgan, cnn"),
        (["--max-parallel", "0"], "max_parallel=0 must be a positive integer"),
        (["--labels", "2000"], "training split has only"),
    ],
)
def test_bad_sweep_input_fails_before_any_run(store, args, message):
    result = cli(*SWEEP, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_ctrl_c_keeps_finished_trials_and_the_same_command_resumes(store, tmp_path):
    import os

    args = [*SWEEP, "--methods", "cnn", "--labels", "10", "--seeds", "0,1,2", "--experiment", "interrupted"]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for the first trial to finish, then press Ctrl-C
        runs = _trial_runs("interrupted") if mlflow.get_experiment_by_name("interrupted") else pd.DataFrame()
        if not runs.empty and (runs.status == "FINISHED").any():
            break
        time.sleep(1)
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


def test_a_sweep_over_variants_and_generator_losses_makes_one_arm_each_and_a_tuned_baseline(store, tmp_path):
    args = [*SWEEP, "--methods", "sgan,cnn_tuned", "--labels", "20", "--seeds", "0", "--experiment", "arms"]
    args += ["--variant", "stacked,k_plus_one", "--generator-loss", "non_saturating,feature_matching"]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _trial_runs("arms")
    assert set(runs.status) == {"FINISHED"}
    assert sorted(runs["tags.arm"]) == [
        "cnn_tuned",
        "sgan k_plus_one",
        "sgan k_plus_one feature matching",
        "sgan stacked",
        "sgan stacked feature matching",
    ]
    parent = _parents("arms").run_id.iloc[0]
    assert set(runs["tags.mlflow.parentRunId"]) == {parent}
    # the tuned baseline's search is nested under the sweep too, with its candidates under it
    search = mlflow.search_runs(experiment_names=["arms"], filter_string="tags.recipe_search = 'true'")
    assert list(search["tags.mlflow.parentRunId"]) == [parent]
    report = cli("report", "--experiment", "arms", "--sweep-run-id", parent, "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr[-3000:]
    paired = pd.read_csv(tmp_path / "r" / "paired.csv")
    assert len(paired) == 4 and set(paired.baseline_arm) == {"cnn_tuned"} and set(paired.n_pairs) == {1}


def test_a_sweep_started_again_resumes_a_half_done_trial_from_its_checkpoint(store, tmp_path):
    args = [*SWEEP, "--methods", "cnn", "--labels", "10", "--seeds", "0", "--epochs", "3", "--experiment", "halfway"]
    stopped = cli(*args, cwd=tmp_path, env={"SGAN_KILL_AFTER_EPOCH": "1"})  # the trial dies hard after epoch 1
    assert stopped.returncode == 1 and "1 failed" in stopped.stdout
    (run,) = _trial_runs("halfway").itertuples()
    assert run.status == "FAILED"
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    (resumed,) = _trial_runs("halfway").itertuples()
    assert resumed.run_id == run.run_id and resumed.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(run.run_id, "test_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            pass
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_sweep_alone_stops_its_trials_and_leaves_nothing_running(store, tmp_path, signum):
    """What `kill`, `timeout`, systemd or a scheduler do: signal the sweep's process only."""
    args = [*SWEEP, "--methods", "sgan", "--labels", "10", "--seeds", "0,1", "--epochs", "50", "--experiment", "stop"]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the first trial has logged an epoch
        runs = _trial_runs("stop") if mlflow.get_experiment_by_name("stop") else pd.DataFrame()
        if not runs.empty and mlflow.MlflowClient().get_metric_history(runs.run_id.iloc[0], "test_accuracy"):
            break
        time.sleep(1)
    parent = _parents("stop").run_id.iloc[0]
    assert _processes_mentioning(parent), "the trial process should be running"
    for _ in range(60):  # the running trial's log reaches the parent run while it runs
        if mlflow.artifacts.list_artifacts(run_id=parent, artifact_path="trial_logs"):
            break
        time.sleep(1)
    log = mlflow.artifacts.load_text(f"runs:/{parent}/trial_logs/sgan-stacked-digits-L10-s0.log")
    assert "epoch 1/50 done at" in log
    sweep.send_signal(signum)
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "run the same command again" in stderr
    assert _processes_mentioning(parent) == []  # no orphan trial
    statuses = set(mlflow.search_runs(experiment_names=["stop"]).status)
    assert statuses == {"KILLED"}  # the parent and the running trial; the second trial never started
    assert len(_trial_runs("stop")) == 1
