"""One trial of a sweep, wherever an executor runs it: a `python -m pipeline <method>` process with its own
environment, its console log copied to the sweep's run, its events passed on, and its outcome as MLflow
recorded it (a trial killed hard is recorded FAILED all the same)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus

from pipeline.environment import EVENTS, THREADS, trial_environment
from pipeline.schema import FINGERPRINT_TAG, SEARCH_SECONDS
from pipeline.sweep.events import Event, EventReader
from pipeline.sweep.plan import Outcome, Trial, trial_command
from pipeline.sweep.recovery import latest_run

WATCH_SECONDS = 10  # how often a running trial's events are read
POLL_SECONDS = 1.0  # how often a running trial is checked for its end and for a stop


class TrialProcesses:
    """An executor's trial processes running now, so that a stopped sweep can stop them too (a SIGTERM sent to
    the sweep alone does not reach them, and they must end their runs KILLED, not linger as orphans)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stopping = False

    def run(
        self, command: list[str], watch: Callable[[], None], should_stop: Callable[[], bool] = lambda: False, **kwargs
    ) -> int:
        """Run `command` to its end and return its exit code, calling `watch` every WATCH_SECONDS meanwhile
        and once after; if `should_stop()` turns true (a Ray sweep being stopped), or `stop()` is called, stop
        the trial and raise KeyboardInterrupt."""
        with self.lock:
            if self.stopping or should_stop():
                raise KeyboardInterrupt("the sweep is stopping")
            process = subprocess.Popen(command, **kwargs)
            self.processes.add(process)
        try:
            watched = time.monotonic()
            while True:
                try:
                    code = process.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if should_stop():
                        raise KeyboardInterrupt("the sweep is stopping") from None
                    if time.monotonic() - watched >= WATCH_SECONDS:
                        watch()
                        watched = time.monotonic()
            watch()
            if self.stopping:  # ended by the sweep's stop: nothing to settle, the stop closes what it left open
                raise KeyboardInterrupt("the sweep is stopping")
            return code
        except BaseException:  # a stop (or an interrupt in this thread): stop the trial too
            terminate([process])
            raise
        finally:
            with self.lock:
                self.processes.discard(process)

    def stop(self) -> None:
        """Stop every trial, and start no new one."""
        with self.lock:
            self.stopping = True
            processes = list(self.processes)
        terminate(processes)


def terminate(processes: list[subprocess.Popen], grace_seconds: float = 120.0) -> None:
    """SIGTERM to each trial (each ends its run KILLED), then wait; SIGKILL what outlives the grace."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class TrialLog:
    """A trial's console output and events, read while it runs: each new event goes to `on_event`, and the
    log is copied to the parent run's `trial_logs/` after new events and at the end, so it can be read in the
    MLflow UI meanwhile and survives a crash of the sweep."""

    def __init__(self, folder: Path, name: str, parent_run_id: str, on_event: Callable[[Event], None]):
        self.path, self.events = folder / f"{name}.log", EventReader(folder / f"{name}.events")
        self.parent_run_id, self.on_event = parent_run_id, on_event

    def watch(self) -> None:
        new = self.events.new()
        for event in new:
            self.on_event(event)
        if new:
            self.upload()

    def upload(self) -> None:
        try:
            mlflow.MlflowClient().log_artifact(self.parent_run_id, str(self.path), "trial_logs")
        except Exception as err:  # a store hiccup must not stop the trial; the next call tries again
            print(f"warning: could not log {self.path.name} to the sweep run: {err}", file=sys.stderr)

    def last_line(self) -> str:
        lines = [line for line in self.path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1][:2000] if lines else "the trial process printed nothing"


def run_trial(
    trial: Trial,
    experiment_id: str,
    parent_run_id: str,
    folder: Path,
    processes: TrialProcesses,
    resume: str | None = None,
    threads: int = 0,
    on_event: Callable[[Event], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Run one trial in a fresh process (continuing run `resume` if given; `threads`: TensorFlow's intra-op
    threads there, 0 for its default); make sure whatever happened is recorded in MLflow."""
    log = TrialLog(folder, trial.config.run_name, parent_run_id, on_event)
    per_trial = {EVENTS: str(log.events.path)} | ({THREADS: str(threads)} if threads else {})
    env = trial_environment(mlflow.get_tracking_uri(), **per_trial)
    command = trial_command(trial.config, parent_run_id) + (["--resume", resume] if resume else [])
    started = time.perf_counter()
    try:
        with open(log.path, "w") as handle:
            code = processes.run(command, log.watch, should_stop, stdout=handle, stderr=subprocess.STDOUT, env=env)
    finally:
        log.upload()  # a stopped trial's last lines too
    return settle(trial, experiment_id, parent_run_id, code, resume, started, log.last_line)


def settle(
    trial: Trial,
    experiment_id: str,
    parent_run_id: str,
    returncode: int,
    resume: str | None,
    started: float,
    last_words: Callable[[], str],
) -> Outcome:
    """The outcome of a trial whose process ended with `returncode`, as MLflow records it; a run the
    trial left RUNNING (killed hard), or never created, is recorded FAILED with the error. (A trial the
    sweep's own stop ended is not settled: the stop closes what it left open, KILLED.)"""
    config = trial.config
    if resume:
        run = mlflow.get_run(resume)
    else:
        run = latest_run(experiment_id, trial, f"tags.mlflow.parentRunId = '{parent_run_id}'")
    outcome = Outcome.of(trial, "FAILED", None, reused=False, seconds=time.perf_counter() - started)
    if returncode == 0 and run is not None and run.info.status == "FINISHED":
        outcome.status, outcome.run_id = "FINISHED", run.info.run_id
        outcome.final_test_accuracy = run.data.metrics.get("final_test_accuracy")
        if resume:  # this process did the last part only; the arm's ETA needs the whole
            outcome.resumed, outcome.seconds = True, run.data.metrics.get("wall_seconds", outcome.seconds)
        else:  # not the recipe search a `cnn_tuned` trial ran first: the other trials of its label count reuse it
            outcome.seconds -= run.data.metrics.get(SEARCH_SECONDS, 0.0)
        return outcome
    killed = f"killed by {signal.Signals(-returncode).name}, its last line: " if returncode < 0 else ""
    outcome.error = (run.data.tags.get("error") if run else None) or killed + last_words()
    client = mlflow.MlflowClient()
    if run is None:  # died before its run existed: record the failure anyway
        run = client.create_run(
            experiment_id,
            run_name=config.run_name,
            tags={
                "mlflow.parentRunId": parent_run_id,
                "method": config.method,
                FINGERPRINT_TAG: trial.fingerprint,
            },
        )
    if run.info.status in ("RUNNING", "SCHEDULED"):  # killed hard: nobody closed it
        client.set_tag(run.info.run_id, "error", outcome.error)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    outcome.run_id = run.info.run_id
    return outcome
