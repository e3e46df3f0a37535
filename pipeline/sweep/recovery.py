"""What a sweep finds of earlier sweeps in its experiment: finished runs to reuse, unfinished ones to continue
from their checkpoints, and runs a stopped or killed sweep left RUNNING, to close."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
from mlflow.entities import RunStatus

from pipeline.schema import CHECKPOINT_DIR, CHECKPOINT_STATE, FINGERPRINT_TAG, OWNER_TAG, SWEEP_TAG
from pipeline.sweep.owner import is_abandoned
from pipeline.sweep.plan import Outcome, Trial
from pipeline.tracking.store import has_checkpoint, newest_run


@dataclass
class Survey:
    """What a sweep's trials find in their experiment: finished runs to reuse, and of the trials left to run,
    those that continue a stopped run from its checkpoint (run id, epochs its checkpoint holds)."""

    pending: list[Trial] = field(default_factory=list)
    resumes: dict[Trial, tuple[str, int]] = field(default_factory=dict)
    reused: list[Outcome] = field(default_factory=list)


def survey(trials: list[Trial], experiment_id: str | None, force: bool = False) -> Survey:
    """`experiment_id` None: the experiment does not exist yet, so every trial runs from the start."""
    found = Survey()
    for trial in trials:
        existing = None
        if experiment_id is not None and not force:
            existing = latest_run(experiment_id, trial, "attributes.status = 'FINISHED'")
        if existing is None:
            found.pending.append(trial)
            if experiment_id is not None and not force and (unfinished := resumable(experiment_id, trial)):
                found.resumes[trial] = unfinished
            continue
        metrics = existing.data.metrics
        outcome = Outcome.of(trial, "FINISHED", existing.info.run_id, True, metrics.get("wall_seconds", 0.0))
        outcome.final_test_accuracy = metrics.get("final_test_accuracy")
        found.reused.append(outcome)
    return found


def latest_run(experiment_id: str, trial: Trial, condition: str) -> mlflow.entities.Run | None:
    """The newest run of this trial's configuration that also meets `condition` (a search filter)."""
    return newest_run(experiment_id, f"tags.{FINGERPRINT_TAG} = '{trial.fingerprint}' and {condition}")


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
