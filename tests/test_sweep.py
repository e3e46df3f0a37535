"""Real smoke sweeps on digits: nested child processes, resume, failures, bad input."""

import os
import re
import time

import mlflow
import pandas as pd
import pytest

from pipeline.config import resolve_config
from pipeline.faults import arm
from pipeline.schema import FINGERPRINT_TAG, SEARCH_SECONDS
from pipeline.sweep.plan import Trial, plan_trials, trial_command
from pipeline.sweep.schedule import SearchGate
from pipeline.sweep.trial import settle

from .conftest import assert_nothing_lost, cli, refused, tracking_store

SWEEP = ["sweep", "--dataset", "digits", "--profile", "smoke"]
FAILING = "cnn-digits-L10-s0"  # the trial the shared sweep makes fail


def _trial_runs(experiment="digits-smoke") -> pd.DataFrame:
    runs = mlflow.search_runs(experiment_names=[experiment]) if mlflow.get_experiment_by_name(experiment) else {}
    if "tags.method" not in runs:  # no experiment yet, no run yet, or only the parent run
        return pd.DataFrame(columns=["run_id", "status", "tags.method"])
    return runs[runs["tags.method"].notna()]


def _parents(experiment="digits-smoke") -> pd.DataFrame:
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.sweep = 'true'")
    return runs.sort_values("start_time")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One 2 labels x 2 methods smoke sweep, two trials at a time on one SQLite file, registering its best
    classifiers, with one trial made to fail; then the same command again, which reruns only that trial
    (seeds in the grid: test_the_grid_has_one_sgan_arm_per_...)."""
    folder = tmp_path_factory.mktemp("sweep-store")
    with tracking_store(folder):
        args = [*SWEEP, "--labels", "10,20", "--seeds", "0", "--max-parallel", "2", "--register-model", "best-digits"]
        first = cli(*args, cwd=folder, env=arm(fail_runs=FAILING.split(",")))
        plan = cli(*args, "--dry-run", cwd=folder)
        second = cli(*args, cwd=folder)
        yield folder, first, second, plan


def _runs_of(parent: str) -> pd.DataFrame:
    runs = _trial_runs()
    return runs[runs["tags.mlflow.parentRunId"] == parent]


@pytest.mark.slow
def test_a_dry_run_prints_the_plan_with_reuse_and_an_eta_and_runs_nothing(swept):
    *_, plan = swept
    assert plan.returncode == 0, plan.stderr[-3000:]
    lines = plan.stdout.splitlines()
    assert lines[0].startswith("Plan of 4 trials in experiment 'digits-smoke'")
    assert sum(line.startswith("  reuse   ") for line in lines) == 3
    assert [line.strip() for line in lines if line.startswith("  run     ")] == [f"run     {FAILING}"]
    assert re.fullmatch(r"1 to run \(0 resumed\), 3 reused; ETA \d+m\d\ds at 2 trials at once", lines[-1])
    assert len(_parents()) == 2  # the two real sweeps; the dry run made no run


@pytest.mark.slow
def test_sweep_makes_one_nested_child_run_per_trial_and_parallel_trials_lose_nothing(swept):
    _, first, _, _ = swept
    assert first.returncode == 1, first.stderr[-3000:]  # one trial failed; the sweep went on
    first_parent = _parents().iloc[0]
    runs = _runs_of(first_parent.run_id).set_index("tags.mlflow.runName")
    assert len(runs) == 4 and first_parent.status == "FAILED"
    grid = set(zip(runs["tags.method"], runs["params.labels"], runs["params.seed"], strict=True))
    assert grid == {(m, labels, "0") for m in ("sgan", "cnn") for labels in ("10", "20")}
    assert runs.loc[FAILING, "status"] == "FAILED" and "failure injected" in runs.loc[FAILING, "tags.error"]
    assert "[4/4]" in first.stdout and "ETA" in first.stdout and "elapsed" in first.stdout
    assert "1 failed" in first.stdout and f"FAILED {FAILING}" in first.stdout
    # live progress: each running trial's epochs, with its own ETA and the sweep's
    assert re.search(r"    sgan-stacked-digits-L20-s0: epoch 2/2, test_accuracy \d\.\d{4} .*\| trial ETA", first.stdout)
    logs = mlflow.artifacts.list_artifacts(run_id=first_parent.run_id, artifact_path="trial_logs")
    assert len(logs) == 4  # the failed trial's too
    finished = runs[runs.status == "FINISHED"].reset_index()
    assert len(finished) == 3
    assert_nothing_lost(finished, epochs=2)
    share = str(max(1, (os.cpu_count() or 1) // 2))  # each trial an equal share of the cores, not all of them
    assert set(runs["params.intra_op_threads"]) == {share}


@pytest.mark.slow
def test_a_sweep_registers_its_best_classifier_per_label_count_with_an_alias(swept):
    _, first, second, _ = swept
    client = mlflow.MlflowClient()
    runs = _trial_runs()  # the alias follows the best finished run, the rerun trial's included
    for labels in (10, 20):
        version = client.get_model_version_by_alias("best-digits", f"best-L{labels}")
        candidates = runs[runs["params.labels"] == str(labels)]
        best = candidates.loc[candidates["metrics.final_val_accuracy"].idxmax()]
        assert version.tags["run_id"] == best.run_id and version.tags["labels"] == str(labels)
    assert "Registered best-digits version" in first.stdout and "Registered best-digits version" in second.stdout


@pytest.mark.slow
def test_running_the_same_sweep_again_reruns_only_the_failed_trial_and_reuses_the_rest(swept):
    folder, _, second, _ = swept
    assert second.returncode == 0, second.stderr[-3000:]
    runs = _trial_runs()
    assert len(runs) == 5  # one new run: the failed trial's
    rerun = _runs_of(_parents().run_id.iloc[-1])
    assert list(rerun["tags.mlflow.runName"]) == [FAILING] and list(rerun.status) == ["FINISHED"]
    assert second.stdout.count("reused, test accuracy") == 3
    assert "4/4 trials finished (3 reused), 0 failed" in second.stdout
    # the second sweep's report covers the reused runs
    parent = _parents().run_id.iloc[-1]
    report = cli("report", "--experiment", "digits-smoke", "--sweep-run-id", parent, "--out", str(folder / "r"))
    assert report.returncode == 0, report.stderr[-3000:]
    summary = pd.read_csv(folder / "r" / "summary.csv")
    assert summary.n.sum() == 4
    # several sweeps at once, one label count: each finished run once, whichever sweep listed it
    both = ",".join(_parents().run_id)
    report = cli(
        "report", "--experiment", "digits-smoke", "--sweep-run-id", both, "--labels", "10", "--out", str(folder / "r10")
    )
    assert report.returncode == 0, report.stderr[-3000:]
    summary = pd.read_csv(folder / "r10" / "summary.csv")
    assert summary.n.sum() == 2 and set(summary.labels) == {10}


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
    result = refused(*SWEEP, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_the_grid_has_one_sgan_arm_per_variant_and_generator_loss_and_one_per_baseline():
    grid = {"variant": ["stacked", "k_plus_one"], "generator_loss": ["non_saturating", "feature_matching"]}
    trials = plan_trials(["sgan", "cnn_tuned"], [20], [0, 1], grid, dataset="digits", profile="smoke")
    arms = ["cnn_tuned", "sgan k_plus_one", "sgan k_plus_one feature matching", "sgan stacked"]
    arms.append("sgan stacked feature matching")
    assert [t.config.seed for t in trials] == [0] * 5 + [1] * 5  # the arms of one seed run back to back
    assert sorted(t.config.arm for t in trials if t.config.seed == 0) == arms
    assert len({t.fingerprint for t in trials}) == 10


def test_augmentation_makes_its_own_arms_of_the_fixed_recipes_and_reaches_their_trial_commands():
    trials = plan_trials(["sgan", "cnn", "cnn_tuned"], [20], [0], {"augment": ["none", "shift"]}, dataset="digits")
    by_arm = {t.config.arm: t.config for t in trials}
    assert sorted(by_arm) == ["cnn", "cnn shift", "cnn_tuned", "sgan stacked", "sgan stacked shift"]
    assert by_arm["sgan stacked shift"].run_name == "sgan-stacked-shift-digits-L20-s0"
    assert by_arm["cnn_tuned"].augment == "none"  # its search chooses; not part of its arm
    shifted = trial_command(by_arm["sgan stacked shift"], "parent")
    assert shifted[shifted.index("--augment") + 1] == "shift"
    assert "--augment" not in trial_command(by_arm["cnn_tuned"], "parent")


@pytest.mark.slow
def test_the_search_gate_lets_one_trial_search_while_the_others_of_its_group_wait():
    trials = plan_trials(["cnn_tuned", "cnn"], [20, 30], [0, 1], dataset="digits", profile="smoke")
    tuned20 = [t for t in trials if t.config.method == "cnn_tuned" and t.config.labels == 20]
    gate = SearchGate()
    gate.started(tuned20[0])
    assert not gate.admits(tuned20[1])  # the same search: wait for it
    assert all(gate.admits(t) for t in trials if t not in tuned20)  # other label counts and methods go on
    assert gate.next_admitted(tuned20[1:] + [trials[-1]]) == trials[-1]
    gate.finished(tuned20[0], "FAILED")  # no recipe yet: the next one to start searches, alone again
    assert gate.admits(tuned20[1])
    gate.started(tuned20[1])
    assert not gate.admits(tuned20[0])
    gate.finished(tuned20[1], "FINISHED")  # the recipe exists: every trial of the group may start
    assert gate.admits(tuned20[0]) and gate.admits(tuned20[1])


@pytest.mark.slow
def test_parallel_tuned_trials_of_one_label_count_share_one_recipe_search_nested_in_the_sweep(store, tmp_path):
    args = [*SWEEP, "--methods", "cnn_tuned", "--labels", "20", "--seeds", "0,1", "--max-parallel", "2"]
    result = cli(*args, "--epochs", "1", "--experiment", "one-search", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _trial_runs("one-search")
    assert len(runs) == 2 and set(runs.status) == {"FINISHED"}
    # the search's progress reaches the sweep's console, one line per candidate with its training time, from
    # which the sweep projects its ETA (a trial trains about as long as a candidate)
    line = r"cnn_tuned-digits-L20-s\d: recipe search [1-4]/4: learning_rate=[^\n]*, \d+ s \| sweep ETA \d"
    assert re.search(line, result.stdout), result.stdout
    search = mlflow.search_runs(experiment_names=["one-search"], filter_string="tags.recipe_search = 'true'")
    assert len(search) == 1  # not one per trial
    (search_id,) = search.run_id
    assert set(runs["tags.recipe_search_run_id"]) == {search_id}
    # the search is nested under the sweep, beside the trials, and its candidates under it
    assert list(search["tags.mlflow.parentRunId"]) == [_parents("one-search").run_id.iloc[0]]
    candidates = mlflow.search_runs(
        experiment_names=["one-search"], filter_string=f"tags.mlflow.parentRunId = '{search_id}'"
    )
    assert len(candidates) == 4 and set(candidates.status) == {"FINISHED"}
    assert (candidates["metrics.train_seconds"] > 0).all()
    # one trial ran the search, the other found it finished: each run records the time its process spent on it
    spent = runs.set_index("tags.mlflow.runName")[f"metrics.{SEARCH_SECONDS}"].sort_values()
    search_run = mlflow.get_run(search_id).info
    assert spent.iloc[0] < (search_run.end_time - search_run.start_time) / 1000 <= spent.iloc[1] + 0.01


def test_a_trial_that_ran_the_recipe_search_counts_for_its_arm_without_it(store):
    """The other trials of its label count reuse the search, so the ETA must not expect them to run it again."""
    trial = Trial(
        resolve_config("cnn_tuned", dataset="digits", labels=20, seed=0, profile="smoke"), "fingerprint-of-the-trial"
    )
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("settled")
    parent = client.create_run(experiment).info.run_id
    tags = {FINGERPRINT_TAG: trial.fingerprint, "mlflow.parentRunId": parent}
    run = client.create_run(experiment, tags=tags).info.run_id
    client.log_metric(run, SEARCH_SECONDS, 100.0)
    client.log_metric(run, "wall_seconds", 20.0)
    client.set_terminated(run, "FINISHED")
    outcome = settle(trial, experiment, parent, 0, None, time.perf_counter() - 130, lambda: "")
    assert outcome.status == "FINISHED" and outcome.seconds == pytest.approx(30, abs=5)
    resumed = settle(trial, experiment, parent, 0, run, time.perf_counter() - 130, lambda: "")
    assert resumed.resumed and resumed.seconds == 20.0  # the run's whole time, its earlier processes' included
