"""The grid of methods x label counts x seeds under one parent run.

Each trial runs `python -m pipeline <method>` in its own process (memory isolation: a crash or leak
in one trial cannot take the sweep down) and becomes a child run nested under the parent, identical
to what the `sgan`/`cnn` entry points produce. A trial whose finished run with the same resolved
configuration (the `config_fingerprint` tag) already exists in the experiment is reused, so a stopped
sweep started again reruns only what did not finish.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus

from pipeline.config import ConfigError, RunConfig, fingerprint, resolve_config, search_key, takes, user_settings
from pipeline.data import labeled_subset, load_dataset
from pipeline.device import THREADS_ENV, threads_per_trial
from pipeline.owner import is_abandoned, process_identity
from pipeline.progress import EPOCH_LINE, SEARCH_LINE, Progress, ProgressEvent
from pipeline.schema import (
    CHECKPOINT_DIR,
    CHECKPOINT_STATE,
    FINGERPRINT_TAG,
    OWNER_TAG,
    SEARCH_SECONDS,
    SWEEP_TAG,
    TRIALS_FILE,
)
from pipeline.stopping import raise_if_stopped
from pipeline.store import (
    check_tracking_uri,
    has_checkpoint,
    log_new_params,
    newest_run,
    record_stop,
    run_destination,
)


@dataclass(frozen=True)
class Trial:
    config: RunConfig
    fingerprint: str


@dataclass
class Outcome:
    name: str
    method: str
    arm: str
    labels: int
    seed: int
    status: str  # FINISHED or FAILED
    run_id: str | None
    final_test_accuracy: float | None
    reused: bool
    seconds: float  # the trial's whole training run: a resumed trial's earlier processes included
    error: str | None = None
    resumed: bool = False  # continued from a checkpoint a stopped sweep left


def plan_trials(
    methods: list[str], labels: list[int], seeds: list[int], listed: dict[str, list] | None = None, **settings
) -> list[Trial]:
    """Validate the whole grid, data included, before anything trains. `listed` gives several values of
    settings that make arms (`setting(listed=True)`: variant, generator loss, augmentation); each method
    gets a trial for every combination of those it takes. `settings` are the other `resolve_config`
    settings, shared by every trial. Trials are ordered label count by label count in the order given,
    then seed by seed, so that the arms of one (labels, seed) run back to back: partial sweeps stay paired."""
    listed = listed or {}
    recipes = []
    for method in methods:
        axes = [f.name for f in user_settings() if f.metadata["listed"] and takes(method, f) and f.name in listed]
        for values in itertools.product(*(listed[name] for name in axes)):
            recipes.append((method, dict(zip(axes, values, strict=True))))
    configs = [
        resolve_config(method, labels=count, seed=seed, **values, **settings)
        for count in labels
        for seed in seeds
        for method, values in recipes
    ]
    data = load_dataset(configs[0].dataset)
    for count in labels:  # rejects counts a class cannot supply outside the validation split
        labeled_subset(data.y_train, count, 0, data.num_classes, data.validation, configs[0].labeled_subset)
    return [Trial(config, fingerprint(config, data.checksum)) for config in configs]


def latest_run(experiment_id: str, trial: Trial, condition: str) -> mlflow.entities.Run | None:
    """The newest run of this trial's configuration that also meets `condition` (a search filter)."""
    return newest_run(experiment_id, f"tags.{FINGERPRINT_TAG} = '{trial.fingerprint}' and {condition}")


def trial_command(config: RunConfig, parent_run_id: str) -> list[str]:
    """`python -m pipeline <method>` with every user setting the method takes, as its CLI flag (the
    MLproject's parameters have the same names)."""
    command = [sys.executable, "-m", "pipeline", config.method, "--parent-run-id", parent_run_id]
    command += ["--experiment", config.experiment]
    for field in user_settings():
        if takes(config.method, field):
            command += [f"--{field.name.replace('_', '-')}", str(getattr(config, field.name))]
    return command


def _outcome(trial: Trial, status: str, run_id: str | None, reused: bool, seconds: float = 0.0) -> Outcome:
    config = trial.config
    return Outcome(
        config.run_name, config.method, config.arm, config.labels, config.seed, status, run_id, None, reused, seconds
    )


def _last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:2000] if lines else "the trial process printed nothing"


WATCH_SECONDS = 10  # how often a running trial's log is read
POLL_SECONDS = 1.0  # how often a running trial is checked for its end and for a stop


class TrialProcesses:
    """The trial processes running now, so that a stopped sweep can stop them too (a SIGTERM sent to
    the sweep alone does not reach them, and they must end their runs KILLED, not linger as orphans)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stopping = False

    def run(
        self, command: list[str], watch: Callable[[], None], should_stop: Callable[[], bool] = lambda: False, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run `command` to its end, calling `watch` every WATCH_SECONDS meanwhile and once after; if
        `should_stop()` turns true (a Ray sweep being stopped), stop the trial and raise KeyboardInterrupt."""
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
            return subprocess.CompletedProcess(command, code)
        except BaseException:  # a stop (or an interrupt in this thread): stop the trial too
            _terminate([process])
            raise
        finally:
            with self.lock:
                self.processes.discard(process)

    def stop(self) -> None:
        """Stop every trial, and start no new one."""
        with self.lock:
            self.stopping = True
            processes = list(self.processes)
        _terminate(processes)


def _terminate(processes: list[subprocess.Popen], grace_seconds: float = 120.0) -> None:
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


RUNNING = TrialProcesses()


def resumable(experiment_id: str, trial: Trial) -> tuple[str, int] | None:
    """The newest unfinished run of this trial's configuration that saved a checkpoint, and the epoch
    the checkpoint holds: a trial a stopped sweep left half done, to be continued rather than restarted."""
    run = latest_run(experiment_id, trial, "attributes.status != 'FINISHED'")
    if run is None:
        return None
    if not has_checkpoint(run.info.run_id):
        return None
    state = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{CHECKPOINT_DIR}/{CHECKPOINT_STATE}")
    return run.info.run_id, state["epoch"]


class TrialLog:
    """A trial's console output, read while it runs: the epoch lines `fit` prints (and a tuned baseline's
    search lines) become sweep progress, and the log is copied to the parent run's `trial_logs/` at each
    new one and at the end, so it can be read in the MLflow UI meanwhile and survives a crash of the sweep."""

    def __init__(self, path: Path, parent_run_id: str, on_progress: Callable[[ProgressEvent], None]):
        self.path, self.parent_run_id, self.on_progress = path, parent_run_id, on_progress
        self.seen, self.searched = 0, 0

    def watch(self) -> None:
        text = self.path.read_text(errors="replace")
        searches = SEARCH_LINE.findall(text)
        if len(searches) != self.searched:
            self.searched = len(searches)
            done, total, result = searches[-1]
            self.on_progress(("search", int(done), int(total), result))
            self.upload()
        lines = EPOCH_LINE.findall(text)
        if lines and int(lines[-1][0]) != self.seen:
            epoch, total, seconds, figures = lines[-1]
            self.seen = int(epoch)
            self.on_progress(("epoch", int(epoch), int(total), float(seconds), figures))
            self.upload()

    def upload(self) -> None:
        try:
            mlflow.MlflowClient().log_artifact(self.parent_run_id, str(self.path), "trial_logs")
        except Exception as err:  # a store hiccup must not stop the trial; the next call tries again
            print(f"warning: could not log {self.path.name} to the sweep run: {err}", file=sys.stderr)


def run_trial(
    trial: Trial,
    experiment_id: str,
    parent_run_id: str,
    log_dir: Path,
    resume: str | None = None,
    on_progress: Callable[[ProgressEvent], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Run one trial in a fresh process (continuing run `resume` if given); make sure whatever
    happened is recorded in MLflow."""
    config = trial.config
    log = TrialLog(log_dir / f"{config.run_name}.log", parent_run_id, on_progress)
    started = time.perf_counter()
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_RUN_ID"}  # not the parent's run
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    command = trial_command(config, parent_run_id) + (["--resume", resume] if resume else [])
    try:
        with open(log.path, "w") as handle:
            code = RUNNING.run(command, log.watch, should_stop, stdout=handle, stderr=subprocess.STDOUT, env=env)
    finally:
        log.upload()  # a stopped trial's last lines too
    return settle(trial, experiment_id, parent_run_id, code.returncode, resume, started, lambda: _last_error(log.path))


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
    outcome = _outcome(trial, "FAILED", None, reused=False, seconds=time.perf_counter() - started)
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


@dataclass
class SweepResult:
    parent_run_id: str
    experiment: str
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "FINISHED"]


def search_group(config: RunConfig) -> str | None:
    """cnn_tuned trials that share one recipe search: the same search key (a sweep's trials share their
    data, so its name stands in for its checksum)."""
    return search_key(config, config.dataset) if config.method == "cnn_tuned" else None


class SearchGate:
    """Trials that share a recipe search must not search side by side: the first to start searches and
    the others reuse its recipe. So while a group's first trial runs, the gate holds its other trials back
    (other trials take the free slots); once it has finished, they all may start. If it failed, the next
    one to start searches."""

    def __init__(self):
        self.searching: set[str] = set()
        self.searched: set[str] = set()

    def admits(self, trial: Trial) -> bool:
        group = search_group(trial.config)
        return group is None or group in self.searched or group not in self.searching

    def started(self, trial: Trial) -> None:
        group = search_group(trial.config)
        if group is not None and group not in self.searched:
            self.searching.add(group)

    def finished(self, trial: Trial, status: str) -> None:
        group = search_group(trial.config)
        if group is not None:
            self.searching.discard(group)
            if status == "FINISHED":
                self.searched.add(group)

    def next_admitted(self, queue: list[Trial]) -> Trial | None:
        return next((trial for trial in queue if self.admits(trial)), None)


class LocalExecutor:
    """The embedded default: each trial a child process of this one, `max_parallel` at a time."""

    name = "local"

    def __init__(self, max_parallel: int = 1):
        if max_parallel < 1:
            raise ConfigError(f"max_parallel={max_parallel} must be a positive integer")
        self.slots = max_parallel

    def run(self, pending, resumes, experiment_id, parent_run_id, progress, outcomes) -> None:
        if self.slots > 1:  # the trial processes inherit it; a user's own setting wins
            os.environ.setdefault(THREADS_ENV, str(threads_per_trial(self.slots)))
        with tempfile.TemporaryDirectory() as folder:
            _run_pending(pending, resumes, experiment_id, parent_run_id, Path(folder), self.slots, progress, outcomes)

    def close(self) -> None:
        pass


def run_sweep(
    trials: list[Trial],
    experiment: str,
    experiment_given: bool,
    executor: LocalExecutor | None = None,
    force: bool = False,
    verbose: bool = True,
    sweep_params: dict[str, object] | None = None,
) -> SweepResult:
    """Run the trials that have no finished run yet through `executor` (local processes by default, or
    `pipeline.ray_executor.RayExecutor`), under one parent run; the same records whichever ran them."""
    executor = executor or LocalExecutor()
    check_tracking_uri()
    experiment, experiment_id = run_destination(experiment, experiment_given)
    run_name = f"sweep-{trials[0].config.dataset}-{trials[0].config.profile}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as parent:
        mlflow.set_tags({SWEEP_TAG: "true", OWNER_TAG: process_identity()})  # also on a run `mlflow run` made
        experiment_id = parent.info.experiment_id
        for abandoned in close_abandoned_sweeps(experiment_id):
            if verbose:
                print(f"Closed sweep run {abandoned}, left RUNNING by a sweep killed hard (now KILLED)")
        trials = [Trial(replace(t.config, experiment=experiment), t.fingerprint) for t in trials]
        log_new_params({**(sweep_params or {}), "n_trials": len(trials), "executor": executor.name})
        progress = Progress(len(trials), executor.slots, verbose)
        outcomes: list[Outcome] = []
        pending: list[Trial] = []
        if verbose:
            print(f"Sweep of {len(trials)} trials in experiment '{experiment}', parent run {parent.info.run_id}")
        resumes: dict[Trial, str] = {}
        reused: list[Outcome] = []
        for trial in trials:
            existing = None if force else latest_run(experiment_id, trial, "attributes.status = 'FINISHED'")
            if existing is None:
                pending.append(trial)
                if not force and (unfinished := resumable(experiment_id, trial)):
                    resumes[trial], epoch = unfinished
                    progress.resuming(trial, resumes[trial], epoch)
                continue
            metrics = existing.data.metrics
            outcome = _outcome(trial, "FINISHED", existing.info.run_id, True, metrics.get("wall_seconds", 0.0))
            outcome.final_test_accuracy = metrics.get("final_test_accuracy")
            reused.append(outcome)
        for outcome in reused:  # reported once the trials left to run are known, for an honest ETA
            outcomes.append(outcome)
            progress.report(outcome, pending)
        try:
            executor.run(pending, resumes, experiment_id, parent.info.run_id, progress, outcomes)
        except BaseException as err:
            _log_trials(outcomes)
            close_unfinished_runs(experiment_id, parent.info.run_id)
            record_stop(err)
            raise
        _log_trials(outcomes)
        result = SweepResult(parent.info.run_id, experiment, outcomes)
        mlflow.log_metrics({"trials_finished": len(outcomes) - len(result.failed), "trials_failed": len(result.failed)})
        if result.failed:
            mlflow.set_tag("error", f"{len(result.failed)} of {len(trials)} trials failed")
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
    if verbose:
        print(sweep_summary(result))
    return result


def close_abandoned_sweeps(experiment_id: str) -> list[str]:
    """End KILLED, with what they nested, the sweep runs of the experiment still RUNNING although the
    process that ran them on this host is gone (killed hard: it could not close them). Returns their ids."""
    client = mlflow.MlflowClient()
    running = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.{SWEEP_TAG} = 'true'")
    abandoned = [run for run in running if is_abandoned(run.data.tags.get(OWNER_TAG, ""))]
    for run in abandoned:
        close_unfinished_runs(experiment_id, run.info.run_id)
        owner = run.data.tags[OWNER_TAG]
        client.set_tag(run.info.run_id, "error", f"its sweep process ({owner}) ended without closing it (killed hard)")
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return [run.info.run_id for run in abandoned]


def close_unfinished_runs(experiment_id: str, parent_run_id: str) -> list[str]:
    """After a stop, once the executor has stopped its trials: end KILLED every run under the sweep that
    is still RUNNING (a trial process that died before it could close its run, and the searches and
    candidates nested under it), so that a stop never leaves a run RUNNING. Returns their ids."""
    client = mlflow.MlflowClient()
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=50000)
    parents = {run.info.run_id: run.data.tags.get("mlflow.parentRunId") for run in running}
    closed, ours = [], {parent_run_id}
    while found := [run_id for run_id, parent in parents.items() if parent in ours and run_id not in ours]:
        for run_id in found:
            client.set_tag(run_id, "error", "stopped with its sweep; its process ended without closing it")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        closed += found
        ours |= set(found)
    return closed


def _log_trials(outcomes: list[Outcome]) -> None:
    """Every trial's run id and outcome (the trials' logs are already there: `TrialLog`)."""
    mlflow.log_dict({"trials": [asdict(o) for o in outcomes]}, TRIALS_FILE)


def _run_pending(pending, resumes, experiment_id, parent_run_id, log_dir, max_parallel, progress, outcomes) -> None:
    pool = ThreadPoolExecutor(max_workers=max_parallel)
    try:
        waiting, queue, running, gate = list(pending), list(pending), {}, SearchGate()

        def watcher(trial: Trial) -> Callable[[ProgressEvent], None]:
            return lambda event: progress.update(trial, event, list(waiting))

        while queue or running:
            while len(running) < max_parallel and (trial := gate.next_admitted(queue)):
                queue.remove(trial)
                gate.started(trial)
                args = (trial, experiment_id, parent_run_id, log_dir, resumes.get(trial), watcher(trial))
                running[pool.submit(run_trial, *args)] = trial
            done, _ = wait(running, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            raise_if_stopped()  # a stop whose exception a finaliser swallowed still stops the sweep
            for future in done:
                trial = running.pop(future)
                waiting.remove(trial)
                outcome = future.result()
                gate.finished(trial, outcome.status)
                outcomes.append(outcome)
                progress.report(outcome, waiting)
    except BaseException:  # Ctrl-C or SIGTERM: start no queued trial, stop the running ones
        RUNNING.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def sweep_summary(result: SweepResult) -> str:
    finished = len(result.outcomes) - len(result.failed)
    reused = sum(o.reused for o in result.outcomes)
    lines = [
        f"Sweep {result.parent_run_id}: {finished}/{len(result.outcomes)} trials finished ({reused} reused), "
        f"{len(result.failed)} failed."
    ]
    lines += [f"  FAILED {o.name} (run {o.run_id}): {o.error}" for o in result.failed]
    return "\n".join(lines)
