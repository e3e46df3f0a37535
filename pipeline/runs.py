"""One tracked training run, end to end: validate, load, subset, (for `cnn_tuned`: search a recipe),
train, log.

Everything that can be checked is checked before the MLflow run is created, so bad input never
leaves a run behind; once the run exists, any failure marks it FAILED with the error as a tag.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from pipeline import checkpoint
from pipeline.config import (
    SEARCH_SEED,
    TUNED_SEARCH_SPACE,
    ConfigError,
    RunConfig,
    fingerprint,
    search_key,
    user_settings,
)
from pipeline.data import Dataset, labeled_subset, load_dataset
from pipeline.device import configure_device
from pipeline.faults import fault_point
from pipeline.images import image_grid
from pipeline.models import SGANModels, build_models
from pipeline.schema import CANDIDATE_TAG, CHECKPOINT_DIR, FINGERPRINT_TAG, SEARCH_SECONDS, SEARCH_TAG
from pipeline.store import (
    check_tracking_uri,
    continue_stopped_run,
    has_checkpoint,
    log_new_params,
    newest_run,
    register_classifier,
    run_destination,
    stops_recorded,
    unfinished_run,
)
from pipeline.tracking import (
    data_params,
    describe_run,
    log_confusion,
    log_epoch_image,
    log_epoch_metrics,
    log_final_metrics,
    log_models,
    log_run_inputs,
)
from pipeline.training import TRACKS, FitState, History, fit, make_trainer
from pipeline.tuning import Candidate, recipes, search_recipe


@dataclass(frozen=True)
class RunResult:
    run_id: str
    experiment: str
    final_test_accuracy: float
    seconds: float
    steps_per_second: float
    models: SGANModels | None = field(default=None, repr=False, compare=False)  # the trained networks


def train_run(
    config: RunConfig,
    experiment_given: bool = False,
    parent_run_id: str | None = None,
    verbose: bool = True,
    resume: str | None = None,
    register_model: str = "",
    system_metrics: bool = False,
) -> RunResult:
    """Train and log one run; `resume` (a run id) continues that unfinished run of the same
    configuration and data from its last checkpoint, in place. `register_model` names a registered
    model to add the classifier to; `system_metrics` samples CPU and memory (GPU where present) with
    MLflow's system-metrics logging (also on when MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is true)."""
    check_tracking_uri()
    device = configure_device()  # before TensorFlow runs anything
    dataset = load_dataset(config.dataset)
    indices = labeled_subset(
        dataset.y_train, config.labels, config.seed, dataset.num_classes, dataset.validation, config.labeled_subset
    )
    config_fingerprint = fingerprint(config, dataset.checksum)  # the experiment is not part of it
    if resume:
        experiment_id = resumable_run(resume, config_fingerprint).info.experiment_id
        experiment = mlflow.get_experiment(experiment_id).name
    else:
        experiment, experiment_id = run_destination(config.experiment, experiment_given)
    config = replace(config, experiment=experiment)
    # The fingerprint from the start, so that a sweep finds the run of a trial that fails at once. It is the
    # run as asked for: a `cnn_tuned` run's recipe is filled in below by its search.
    tags = {"method": config.method, FINGERPRINT_TAG: config_fingerprint}
    searched = {}  # how long this process spent on cnn_tuned's recipe search (about 0 where it found one finished)
    if config.method == "cnn_tuned":
        searching = time.perf_counter()
        recipe, tags["recipe_search_run_id"] = tuned_recipe(config, dataset, experiment_id, parent_run_id, verbose)
        config = replace(config, **recipe)
        searched[SEARCH_SECONDS] = time.perf_counter() - searching
    x_labeled, y_labeled = dataset.x_train[indices], dataset.y_train[indices]
    splits = {"test": (dataset.x_test, dataset.y_test), "val": _validation(dataset)}
    # Fixed latent points, so the per-epoch grids show one generator evolving.
    points, shape = np.random.default_rng(config.seed), (config.grid_size**2, config.latent_dim)
    latent = points.random(shape) if config.networks.latent == "uniform" else points.standard_normal(shape)
    latent = latent.astype(np.float32)

    started_run = {"run_id": resume} if resume else {"run_name": config.run_name, "parent_run_id": parent_run_id}
    with (
        mlflow.start_run(
            experiment_id=experiment_id, tags=tags, log_system_metrics=system_metrics or None, **started_run
        ) as run,
        stops_recorded(),
    ):
        if resume:
            continue_stopped_run(run, parent_run_id)
        else:
            mlflow.log_metrics(searched)
        log_run_inputs(config, dataset, indices)
        log_new_params(device)
        fault_point("run_started", run_name=config.run_name)
        started = time.perf_counter()
        models = build_models(
            config.method,
            config.variant,
            dataset.num_classes,
            config.latent_dim,
            config.seed,
            config.precision,
            config.architecture,
        )
        trainer = make_trainer(config, models, x_labeled, y_labeled, dataset.x_train[dataset.pool])
        state = restore_checkpoint(run.info.run_id, trainer) if resume else None
        if state is not None:  # epochs the checkpoint holds but a hard stop kept from the store
            logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "test_accuracy")}
            log_epoch_metrics(state.history, [e for e in range(1, state.epoch + 1) if e not in logged])
            started -= state.history.seconds  # the run's wall time counts its earlier processes' training
        if verbose and resume:
            print(f"Resuming run {resume} after epoch {state.epoch if state else 0}", flush=True)

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            if config.method == "sgan":
                log_epoch_image(epoch, image_grid(trainer.generate(latent), config.grid_size))

        def on_checkpoint(state: FitState) -> None:
            mlflow.flush_async_logging()
            with tempfile.TemporaryDirectory() as folder:
                checkpoint.save(Path(folder), trainer, state, config_fingerprint)
                mlflow.log_artifacts(folder, CHECKPOINT_DIR)
            log_epoch_metrics(state.history, range(state.epoch, state.epoch + 1))
            fault_point("epoch_logged", epoch=state.epoch)

        history = fit(trainer, splits, on_epoch_end, verbose, state, on_checkpoint)
        result = RunResult(
            run_id=run.info.run_id,
            experiment=config.experiment,
            final_test_accuracy=history.chosen("test_accuracy"),
            seconds=time.perf_counter() - started,
            steps_per_second=history.steps / history.seconds,
            models=models,
        )
        mlflow.log_metrics(
            {
                "train_seconds": history.seconds,
                "wall_seconds": result.seconds,
                "steps_per_second": result.steps_per_second,
            }
        )
        final = final_metrics(history)
        predicted = trainer.predictions(dataset.x_test)
        final |= log_confusion(dataset.y_test, predicted, dataset.num_classes, f"{config.run_name}, test split")
        described = model_params(config)
        model_ids = log_models(models, dataset.x_test, latent, described)
        log_final_metrics(final, model_ids)
        mlflow.set_tag("mlflow.note.content", describe_run(config, final, history.selected[""]))
        if register_model:
            version = register_classifier(model_ids["classifier"], register_model, described)
            print(f"Registered the classifier as {register_model} version {version}", flush=True)
        drop_checkpoint(run.info.artifact_uri)
        mlflow.flush_async_logging()
    if verbose:
        print(summary_line(config, result), flush=True)
    return result


def resumable_run(run_id: str, config_fingerprint: str) -> mlflow.entities.Run:
    """The run `--resume` names, if it can be continued with this configuration and data."""
    run = unfinished_run(run_id)
    logged = run.data.tags.get(FINGERPRINT_TAG)
    if logged != config_fingerprint:
        raise ConfigError(
            f"resume={run_id}: that run was made with another configuration or data (fingerprint {logged}, "
            f"these settings give {config_fingerprint}); resume it with the settings it was started with"
        )
    return run


def drop_checkpoint(artifact_uri: str) -> None:
    """A finished run needs no checkpoint: delete it (about 20 MB for an SGAN) where the store allows."""
    try:
        get_artifact_repository(artifact_uri).delete_artifacts(CHECKPOINT_DIR)
    except Exception as err:  # a store that cannot delete keeps it; the run is fine either way
        print(f"note: the finished run's checkpoint stays in its artifacts ({err})", file=sys.stderr)


def restore_checkpoint(run_id: str, trainer) -> FitState | None:
    """The run's last checkpoint put back into `trainer`, or None if it saved none (stopped in epoch 1)."""
    if not has_checkpoint(run_id):
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT_DIR, dst_path=folder)
        return checkpoint.load(Path(local), trainer)


def _validation(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return dataset.x_train[dataset.validation], dataset.y_train[dataset.validation]


def model_params(config: RunConfig) -> dict[str, object]:
    """What a logged classifier is, as its own params (and a registered version's tags)."""
    keys = [f.name for f in user_settings() if f.metadata["arm"] or f.metadata["tag"] or f.metadata["grid"]]
    return {"arm": config.arm, "protocol": config.protocol, "method": config.method} | {
        key: getattr(config, key) for key in keys
    }


def final_metrics(history: History) -> dict[str, float]:
    """The figures that count: each track's accuracies at its selected epoch (the last, or for
    `cnn_tuned` the best validation epoch), and which epoch that was."""
    final = {"final_labeled_accuracy": history.chosen("labeled_accuracy")}
    for track in TRACKS:
        final[f"final_test_accuracy{track}"] = history.chosen(f"test_accuracy{track}", track)
        final[f"final_val_accuracy{track}"] = history.chosen(f"val_accuracy{track}", track)
        final[f"selected_epoch{track}"] = history.selected[track]
    return final


def tuned_recipe(
    config: RunConfig, dataset: Dataset, experiment_id: str, parent_run_id: str | None, verbose: bool
) -> tuple[dict[str, object], str]:
    """The recipe of `cnn_tuned` for this (dataset, protocol, label count, precision): from a finished
    search in the experiment, else from a search logged as a run with one nested run per candidate. A search
    that was stopped is continued in its own run: the candidates it (or an earlier stopped one) finished are
    reused, the rest trained. Returns (recipe, the search's run id)."""
    key = search_key(config, dataset.checksum)
    found = newest_run(experiment_id, f"tags.{SEARCH_TAG} = '{key}' and attributes.status = 'FINISHED'")
    if found:
        return json.loads(found.data.params["chosen_recipe"]), found.info.run_id
    stopped = newest_run(experiment_id, f"tags.{SEARCH_TAG} = '{key}'")  # none finished: any is a stopped one
    finished = finished_candidates(experiment_id, key) if stopped else []
    indices = labeled_subset(
        dataset.y_train, config.labels, SEARCH_SEED, dataset.num_classes, dataset.validation, config.labeled_subset
    )
    suffix = "" if config.architecture == "mlm" else f"-{config.architecture}"
    name = f"cnn_tuned-search{suffix}-{config.dataset}-L{config.labels}"
    done, clock = 0, 0.0

    def report(candidate: Candidate, seconds: float | None, reused: bool = False) -> None:
        """One line per candidate, with how long it trained (a reused one: as its run recorded): about what a
        trial of its recipe takes, which a sweep reads for its ETA."""
        if verbose:
            chosen = ", ".join(f"{k}={v}" for k, v in candidate.recipe.items())
            took = ", reused from the stopped search" if reused else ""
            took += f", {seconds:.0f} s" if seconds is not None else ""
            print(
                f"search {done}/{len(recipes())}: {chosen}: best validation accuracy {candidate.score:.4f} at epoch "
                f"{candidate.best_epoch}{took}",
                flush=True,
            )

    def on_candidate(candidate: Candidate) -> None:
        nonlocal done, clock
        done += 1
        seconds, clock = time.perf_counter() - clock, time.perf_counter()
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{name}-{done}", nested=True, tags={CANDIDATE_TAG: "true"}
        ):
            mlflow.log_params({**candidate.recipe, "num_epochs": config.train_epochs, "search_seed": SEARCH_SEED})
            log_epoch_metrics(candidate.history, range(1, config.train_epochs + 1))
            metrics = {"best_val_accuracy": candidate.score, "best_epoch": candidate.best_epoch}
            mlflow.log_metrics({**metrics, "train_seconds": seconds})
        report(candidate, seconds)
        fault_point("candidate_logged", candidate=done)

    started_run = (
        {"run_id": stopped.info.run_id}
        if stopped
        else {"run_name": name, "parent_run_id": parent_run_id, "tags": {SEARCH_TAG: key, "recipe_search": "true"}}
    )
    with mlflow.start_run(experiment_id=experiment_id, **started_run) as search, stops_recorded():
        if stopped:
            continue_stopped_run(search, parent_run_id)
        for candidate in finished:
            done += 1
            report(candidate, candidate.seconds, reused=True)
        log_new_params(
            {
                "labels": config.labels,
                "dataset": config.dataset,
                "protocol": config.protocol,
                "precision": config.precision,
                "architecture": config.architecture,
                "search_space": json.dumps(TUNED_SEARCH_SPACE),
                "search_seed": SEARCH_SEED,
                "max_epochs": config.train_epochs,
                **data_params(dataset),
            }
        )
        clock = time.perf_counter()
        recipe, candidates = search_recipe(
            config,
            dataset.x_train[indices],
            dataset.y_train[indices],
            dataset.x_train[dataset.pool],
            *_validation(dataset),
            on_candidate,
            finished,
        )
        table = [{**c.recipe, "best_val_accuracy": c.score, "best_epoch": c.best_epoch} for c in candidates]
        mlflow.log_dict({"candidates": table, "chosen": recipe}, "search.json")
        mlflow.log_param("chosen_recipe", json.dumps(recipe))
        mlflow.log_metric("best_val_accuracy", max(c.score for c in candidates))
    return recipe, search.info.run_id


def finished_candidates(experiment_id: str, key: str) -> list[Candidate]:
    """The candidates that stopped searches of `key` finished, one per recipe (their scores; a reused
    candidate's per-epoch history stays in its own run)."""
    client = mlflow.MlflowClient()
    searches = {run.info.run_id for run in client.search_runs([experiment_id], f"tags.{SEARCH_TAG} = '{key}'")}
    runs = client.search_runs(
        [experiment_id], f"tags.{CANDIDATE_TAG} = 'true' and attributes.status = 'FINISHED'", max_results=50000
    )
    found: list[Candidate] = []
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") not in searches:
            continue
        params, metrics = run.data.params, run.data.metrics
        for recipe in recipes():
            if all(params.get(k) == str(v) for k, v in recipe.items()) and recipe not in [c.recipe for c in found]:
                score, best = metrics["best_val_accuracy"], int(metrics["best_epoch"])
                found.append(Candidate(recipe, score, best, History(), metrics.get("train_seconds")))
    return sorted(found, key=lambda c: recipes().index(c.recipe))


def summary_line(config: RunConfig, result: RunResult) -> str:
    minutes, seconds = divmod(round(result.seconds), 60)
    return (
        f"{config.run_name}: final test accuracy {result.final_test_accuracy:.4f} after "
        f"{config.total_steps} steps in {minutes}m{seconds:02d}s ({result.steps_per_second:.2f} steps/s); "
        f"run {result.run_id} in experiment '{result.experiment}'"
    )
