"""The executor interface (`pipeline.sweep.schedule.Executor`), one test for both executors: real trial
processes on scikit-learn's digits, through the local executor and a local Ray instance. Each runs a trial
to the end with its events in order, records a failing trial FAILED, and on `cancel` stops a running trial
so that its run ends KILLED and no process is left."""

import time

import mlflow
import pytest

from pipeline.faults import arm
from pipeline.sweep.events import EpochDone
from pipeline.sweep.local import LocalExecutor
from pipeline.sweep.plan import Trial, plan_trials
from pipeline.sweep.schedule import Executor

from .test_sweep_stops import _processes_mentioning

pytestmark = pytest.mark.slow


def _executor(kind: str) -> Executor:
    if kind == "local":
        return LocalExecutor(max_parallel=2)
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    from pipeline.sweep.ray_cluster import RayExecutor

    return RayExecutor(None, cpus_per_trial=1)


def _trial(seed: int, epochs: int) -> Trial:
    (trial,) = plan_trials(
        ["sgan"], [20], [seed], dataset="digits", profile="smoke", epochs=epochs, experiment="executor"
    )
    return trial


def _poll_until_finished(executor: Executor, count: int, timeout: float = 600) -> tuple[list, dict]:
    events, finished, deadline = [], {}, time.monotonic() + timeout
    while len(finished) < count:
        assert time.monotonic() < deadline, f"only {len(finished)} of {count} trials finished"
        polled = executor.poll(1.0)
        events += polled.events
        finished |= {trial.config.seed: outcome for trial, outcome in polled.finished}
    return events, finished


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_an_executor_runs_trials_with_their_events_records_a_failure_and_cancels_cleanly(kind, store, monkeypatch):
    experiment_id = mlflow.create_experiment("executor")
    parent = mlflow.MlflowClient().create_run(experiment_id, run_name="sweep").info.run_id
    good, bad = _trial(0, epochs=2), _trial(1, epochs=2)
    monkeypatch.setenv(*next(iter(arm(fail_runs=[bad.config.run_name]).items())))  # trials inherit it
    executor = _executor(kind)
    executor.start()
    try:
        assert executor.slots >= 1
        executor.submit(good, experiment_id, parent, None)
        executor.submit(bad, experiment_id, parent, None)
        events, finished = _poll_until_finished(executor, 2)
        assert [event.epoch for trial, event in events if trial == good] == [1, 2]
        assert all(isinstance(event, EpochDone) and event.epochs == 2 for _, event in events)
        assert finished[0].status == "FINISHED", finished[0].error
        assert 0 <= finished[0].final_test_accuracy <= 1
        assert finished[1].status == "FAILED" and "failure injected" in finished[1].error
        for outcome in finished.values():
            run = mlflow.get_run(outcome.run_id)
            assert run.data.tags["mlflow.parentRunId"] == parent
            assert run.info.status == outcome.status

        long = _trial(2, epochs=200)
        executor.submit(long, experiment_id, parent, None)
        deadline = time.monotonic() + 600
        while not [event for trial, event in executor.poll(1.0).events if trial == long]:
            assert time.monotonic() < deadline, "the long trial never finished an epoch"
        assert _processes_mentioning(parent), "the long trial's process should be running"
        executor.cancel()
        assert _processes_mentioning(parent) == []
        runs = mlflow.search_runs([experiment_id], f"tags.mlflow.runName = '{long.config.run_name}'")
        assert list(runs.status) == ["KILLED"]
        assert executor.poll(0.1).finished == []  # a cancelled trial is settled by the sweep's stop, not here
    finally:
        executor.close()
