"""A stop signal is the reason a run ends, whatever exception it surfaced as."""

import signal

import mlflow

from pipeline import stopping
from pipeline.store import stops_recorded


def test_a_stop_that_tensorflow_turned_into_another_exception_still_ends_the_run_killed(store, monkeypatch):
    """A SIGTERM raised while TensorFlow traces a function comes out of its graph contexts as an AssertionError
    ("Nesting violated ..."): the run is KILLED with the stop as its error, not FAILED with TensorFlow's."""
    monkeypatch.setattr(stopping, "RECEIVED", [signal.SIGTERM])
    mlflow.set_experiment("stops")
    try:
        with mlflow.start_run() as run, stops_recorded():
            raise AssertionError("Nesting violated for default stack of FuncGraph objects")
    except AssertionError:
        pass
    ended = mlflow.get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags["error"] == "Stopped: SIGTERM"


def test_without_a_stop_signal_a_failure_is_recorded_as_itself(store, monkeypatch):
    monkeypatch.setattr(stopping, "RECEIVED", [])
    mlflow.set_experiment("stops")
    try:
        with mlflow.start_run() as run, stops_recorded():
            raise ValueError("broken")
    except ValueError:
        pass
    ended = mlflow.get_run(run.info.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags["error"] == "ValueError: broken"
