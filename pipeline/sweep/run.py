"""A sweep: the grid of methods x label counts x seeds under one parent run.

Each trial runs `python -m pipeline <method>` in its own process (memory isolation: a crash or leak
in one trial cannot take the sweep down) and becomes a child run nested under the parent, identical
to what the `sgan`/`cnn` entry points produce. A trial whose finished run with the same resolved
configuration (the `config_fingerprint` tag) already exists in the experiment is reused, so a stopped
sweep started again reruns only what did not finish, and continues a half-done trial from its checkpoint.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import asdict, dataclass, replace

import mlflow
from mlflow.entities import RunStatus

from pipeline.schema import OWNER_TAG, SWEEP_TAG, TRIALS_FILE
from pipeline.sweep.local import LocalExecutor
from pipeline.sweep.owner import process_identity
from pipeline.sweep.plan import Outcome, Trial
from pipeline.sweep.progress import Progress
from pipeline.sweep.recovery import close_abandoned_sweeps, close_unfinished_runs, survey
from pipeline.sweep.schedule import Executor, schedule
from pipeline.tracking.store import check_tracking_uri, log_new_params, record_stop, run_destination


@dataclass
class SweepResult:
    parent_run_id: str
    experiment: str
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "FINISHED"]


def run_sweep(
    trials: list[Trial],
    experiment: str,
    experiment_given: bool,
    executor: Executor | None = None,
    force: bool = False,
    verbose: bool = True,
    sweep_params: dict[str, object] | None = None,
) -> SweepResult:
    """Run the trials that have no finished run yet through `executor` (local processes by default, or
    `pipeline.sweep.ray_cluster.RayExecutor`, started and closed by the caller), under one parent run; the same
    records whichever ran them."""
    if executor is None:
        with closing(LocalExecutor()) as local:
            local.start()
            return run_sweep(trials, experiment, experiment_given, local, force, verbose, sweep_params)
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
        if verbose:
            print(f"Sweep of {len(trials)} trials in experiment '{experiment}', parent run {parent.info.run_id}")
        progress = Progress(len(trials), executor.slots, verbose)
        found = survey(trials, experiment_id, force)
        for trial, (run_id, epoch) in found.resumes.items():
            progress.resuming(trial, run_id, epoch)
        outcomes = []
        for outcome in found.reused:  # reported once the trials left to run are known, for an honest ETA
            outcomes.append(outcome)
            progress.report(outcome, found.pending)

        def on_outcome(outcome: Outcome, waiting: list[Trial]) -> None:
            outcomes.append(outcome)
            progress.report(outcome, waiting)

        try:
            if found.pending:
                resumes = {trial: run_id for trial, (run_id, _) in found.resumes.items()}
                parent_id = parent.info.run_id
                schedule(found.pending, resumes, executor, experiment_id, parent_id, progress.update, on_outcome)
        except BaseException as err:
            log_trials(outcomes)
            close_unfinished_runs(experiment_id, parent.info.run_id)
            record_stop(err)
            raise
        finally:
            progress.close()
        log_trials(outcomes)
        result = SweepResult(parent.info.run_id, experiment, outcomes)
        mlflow.log_metrics({"trials_finished": len(outcomes) - len(result.failed), "trials_failed": len(result.failed)})
        if result.failed:
            mlflow.set_tag("error", f"{len(result.failed)} of {len(trials)} trials failed")
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
    if verbose:
        print(sweep_summary(result))
    return result


def log_trials(outcomes: list[Outcome]) -> None:
    """Every trial's run id and outcome (the trials' logs are already there: `TrialLog`)."""
    mlflow.log_dict({"trials": [asdict(o) for o in outcomes]}, TRIALS_FILE)


def sweep_summary(result: SweepResult) -> str:
    finished = len(result.outcomes) - len(result.failed)
    reused = sum(o.reused for o in result.outcomes)
    lines = [
        f"Sweep {result.parent_run_id}: {finished}/{len(result.outcomes)} trials finished ({reused} reused), "
        f"{len(result.failed)} failed."
    ]
    lines += [f"  FAILED {o.name} (run {o.run_id}): {o.error}" for o in result.failed]
    return "\n".join(lines)


def dry_run(trials: list[Trial], experiment: str, slots: int, force: bool = False) -> list[str]:
    """The plan, without running or creating anything: each trial reused (its finished run), resumed (the run
    and the epochs its checkpoint holds) or run, and the ETA from the durations of the reused runs' arms."""
    found_experiment = mlflow.get_experiment_by_name(experiment)
    found = survey(trials, found_experiment.experiment_id if found_experiment else None, force)
    progress = Progress(len(trials), slots, verbose=False)
    lines = [f"Plan of {len(trials)} trials in experiment '{experiment}' ({mlflow.get_tracking_uri()}):"]
    for trial in trials:
        name = trial.config.run_name
        if trial in found.resumes:
            run_id, epoch = found.resumes[trial]
            progress.resuming(trial, run_id, epoch)
            lines.append(f"  resume  {name}: run {run_id} after epoch {epoch}/{trial.config.train_epochs}")
        elif trial in found.pending:
            lines.append(f"  run     {name}")
        else:
            (outcome,) = [o for o in found.reused if o.name == name]
            accuracy = f"{outcome.final_test_accuracy:.4f}" if outcome.final_test_accuracy is not None else "n/a"
            lines.append(f"  reuse   {name}: run {outcome.run_id}, test accuracy {accuracy}")
    for outcome in found.reused:
        progress.report(outcome, found.pending)
    left = f"{len(found.pending)} to run ({len(found.resumes)} resumed), {len(found.reused)} reused"
    lines.append(f"{left}; {progress.eta(found.pending)} at {slots} trial{'s' if slots > 1 else ''} at once")
    return lines
