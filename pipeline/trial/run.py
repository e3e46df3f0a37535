"""One tracked training run, end to end: prepare (validate, load, subset; for `cnn_tuned`, its recipe),
open the run, train, log the outcome.

Everything that can be checked is checked before the MLflow run is created, so bad input never
leaves a run behind; once the run exists, any failure marks it FAILED with the error as a tag.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from pipeline.config import ConfigError, RunConfig, fingerprint, user_settings
from pipeline.core import checkpoint
from pipeline.core.device import configure_device
from pipeline.core.images import image_grid
from pipeline.core.models import SGANModels, build_models
from pipeline.core.training import SHOWN, TRACKS, FitState, History, Trainer, fit, make_trainer
from pipeline.data import Dataset, labeled_subset, load_dataset
from pipeline.faults import fault_point
from pipeline.schema import CHECKPOINT_DIR, FINGERPRINT_TAG, SEARCH_SECONDS
from pipeline.sweep.events import EpochDone, emit
from pipeline.tracking.store import (
    check_tracking_uri,
    continue_stopped_run,
    has_checkpoint,
    log_new_params,
    register_classifier,
    run_destination,
    stops_recorded,
    unfinished_run,
)
from pipeline.trial.record import (
    describe_run,
    evaluation_datasets,
    log_confusion,
    log_epoch_image,
    log_epoch_metrics,
    log_final_metrics,
    log_models,
    log_run_inputs,
)
from pipeline.trial.search import RecipeSearch


@dataclass(frozen=True)
class RunResult:
    run_id: str
    experiment: str
    final_test_accuracy: float
    seconds: float
    steps_per_second: float
    models: SGANModels | None = field(default=None, repr=False, compare=False)  # the trained networks


@dataclass(frozen=True)
class Prepared:
    """A run's inputs, checked and loaded before its MLflow run exists (bad input leaves no run behind)."""

    config: RunConfig  # for `cnn_tuned`, with its searched recipe filled in
    dataset: Dataset
    indices: np.ndarray  # the labeled subset
    fingerprint: str  # the run as asked for, before any recipe search
    experiment_id: str
    tags: dict[str, str]
    searched: dict[str, float]  # how long this process spent on a recipe search
    device: dict[str, str]
    latent: np.ndarray  # fixed latent points, so the per-epoch grids show one generator evolving


@dataclass(frozen=True)
class Trained:
    models: SGANModels
    trainer: Trainer
    history: History
    seconds: float  # the run's wall time, its earlier processes' training included


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
    prepared = prepare(config, experiment_given, parent_run_id, verbose, resume)
    with open_run(prepared, parent_run_id, resume, system_metrics) as run:
        trained = train(prepared, run.info.run_id, resume, verbose)
        result = log_outcome(prepared, trained, run, register_model)
    if verbose:
        print(summary_line(prepared.config, result), flush=True)
    return result


def prepare(
    config: RunConfig, experiment_given: bool, parent_run_id: str | None, verbose: bool, resume: str | None
) -> Prepared:
    """Device, data, labeled subset, destination; for `cnn_tuned`, its recipe (found or searched)."""
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
    searched = {}
    if config.method == "cnn_tuned":
        searching = time.perf_counter()
        search = RecipeSearch(config, dataset, experiment_id, parent_run_id, verbose)
        recipe, tags["recipe_search_run_id"] = search.recipe()
        config = replace(config, **recipe)
        searched[SEARCH_SECONDS] = time.perf_counter() - searching  # about 0 where it found one finished
    points, shape = np.random.default_rng(config.seed), (config.grid_size**2, config.latent_dim)
    latent = points.random(shape) if config.networks.latent == "uniform" else points.standard_normal(shape)
    return Prepared(
        config, dataset, indices, config_fingerprint, experiment_id, tags, searched, device, latent.astype(np.float32)
    )


@contextmanager
def open_run(
    prepared: Prepared, parent_run_id: str | None, resume: str | None, system_metrics: bool
) -> Iterator[mlflow.ActiveRun]:
    """The run, new or continued, with its inputs logged; whatever ends it early is recorded on it."""
    config = prepared.config
    started = {"run_id": resume} if resume else {"run_name": config.run_name, "parent_run_id": parent_run_id}
    with (
        mlflow.start_run(
            experiment_id=prepared.experiment_id,
            tags=prepared.tags,
            log_system_metrics=system_metrics or None,
            **started,
        ) as run,
        stops_recorded(),
    ):
        if resume:
            continue_stopped_run(run, parent_run_id)
        else:
            mlflow.log_metrics(prepared.searched)
        log_run_inputs(config, prepared.dataset, prepared.indices)
        log_new_params(prepared.device)
        fault_point("run_started", run_name=config.run_name)
        yield run


def train(prepared: Prepared, run_id: str, resume: str | None, verbose: bool) -> Trained:
    """Build and train the networks (from the run's checkpoint when resuming), logging every epoch's metrics
    and a checkpoint as it ends, and telling a sweep (`EpochDone`)."""
    config, dataset = prepared.config, prepared.dataset
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
    x_labeled, y_labeled = dataset.x_train[prepared.indices], dataset.y_train[prepared.indices]
    trainer = make_trainer(config, models, x_labeled, y_labeled, dataset.x_train[dataset.pool])
    state = restore_checkpoint(run_id, trainer) if resume else None
    if state is not None:  # epochs the checkpoint holds but a hard stop kept from the store
        logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "test_accuracy")}
        log_epoch_metrics(state.history, [e for e in range(1, state.epoch + 1) if e not in logged])
        started -= state.history.seconds  # the run's wall time counts its earlier processes' training
    if verbose and resume:
        print(f"Resuming run {resume} after epoch {state.epoch if state else 0}", flush=True)

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        if config.method == "sgan":
            log_epoch_image(epoch, image_grid(trainer.generate(prepared.latent), config.grid_size))

    def on_checkpoint(state: FitState) -> None:
        mlflow.flush_async_logging()
        with tempfile.TemporaryDirectory() as folder:
            checkpoint.save(Path(folder), trainer, state, prepared.fingerprint)
            mlflow.log_artifacts(folder, CHECKPOINT_DIR)
        log_epoch_metrics(state.history, range(state.epoch, state.epoch + 1))
        figures = {name: state.history.last(name) for name in SHOWN}
        emit(EpochDone(state.epoch, config.train_epochs, state.history.seconds, figures))
        fault_point("epoch_logged", epoch=state.epoch)

    splits = {"test": (dataset.x_test, dataset.y_test), "val": _validation(dataset)}
    history = fit(trainer, splits, on_epoch_end, verbose, state, on_checkpoint)
    return Trained(models, trainer, history, time.perf_counter() - started)


def log_outcome(prepared: Prepared, trained: Trained, run: mlflow.ActiveRun, register_model: str) -> RunResult:
    """The figures that count, the confusion matrix, the logged models linked to their figures, the run's
    description; the classifier registered if asked; the checkpoint dropped."""
    config, dataset, history = prepared.config, prepared.dataset, trained.history
    result = RunResult(
        run_id=run.info.run_id,
        experiment=config.experiment,
        final_test_accuracy=history.chosen("test_accuracy"),
        seconds=trained.seconds,
        steps_per_second=history.steps / history.seconds,
        models=trained.models,
    )
    mlflow.log_metrics(
        {"train_seconds": history.seconds, "wall_seconds": result.seconds, "steps_per_second": result.steps_per_second}
    )
    final = final_metrics(history)
    predicted = trained.trainer.predictions(dataset.x_test)
    final |= log_confusion(dataset.y_test, predicted, dataset.num_classes, f"{config.run_name}, test split")
    described = model_params(config)
    model_ids = log_models(trained.models, dataset.x_test, prepared.latent, described)
    log_final_metrics(final, model_ids, evaluation_datasets(config, dataset, prepared.indices))
    mlflow.set_tag("mlflow.note.content", describe_run(config, final, history.selected[""]))
    if register_model:
        version = register_classifier(model_ids["classifier"], register_model, described)
        print(f"Registered the classifier as {register_model} version {version}", flush=True)
    drop_checkpoint(run.info.artifact_uri)
    mlflow.flush_async_logging()
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


def summary_line(config: RunConfig, result: RunResult) -> str:
    minutes, seconds = divmod(round(result.seconds), 60)
    return (
        f"{config.run_name}: final test accuracy {result.final_test_accuracy:.4f} after "
        f"{config.total_steps} steps in {minutes}m{seconds:02d}s ({result.steps_per_second:.2f} steps/s); "
        f"run {result.run_id} in experiment '{result.experiment}'"
    )
