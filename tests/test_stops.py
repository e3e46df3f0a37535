"""A stop signal is the reason a run ends, whatever exception it surfaced as."""

import signal

import mlflow
import pytest

from pipeline import stopping
from pipeline.tracking.store import stops_recorded

TRACED = AssertionError("Nesting violated for default stack of FuncGraph objects")


@pytest.mark.parametrize(
    ("received", "failure", "status", "error"),
    [
        ([signal.SIGTERM], TRACED, "KILLED", "Stopped: SIGTERM"),  # a stop TensorFlow's graph contexts re-raised
        ([], ValueError("broken"), "FAILED", "ValueError: broken"),  # no stop: the failure is recorded as itself
    ],
    ids=["stop-during-tracing", "failure"],
)
def test_a_run_ends_by_its_stop_signal_whatever_exception_surfaced(
    store, monkeypatch, received, failure, status, error
):
    monkeypatch.setattr(stopping, "RECEIVED", received)
    mlflow.set_experiment("stops")
    with pytest.raises(type(failure)), mlflow.start_run() as run, stops_recorded():
        raise failure
    ended = mlflow.get_run(run.info.run_id)
    assert (ended.info.status, ended.data.tags["error"]) == (status, error)
