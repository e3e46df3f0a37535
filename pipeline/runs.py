"""One tracked training run, end to end: validate, load, subset, train, log.

Everything that can be checked is checked before the MLflow run is created, so bad input never
leaves a run behind; once the run exists, any failure marks it FAILED with the error as a tag.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import mlflow
import numpy as np

from pipeline.config import RunConfig
from pipeline.data import labeled_subset, load_dataset
from pipeline.images import image_grid
from pipeline.models import SGANModels, build_models
from pipeline.tracking import (
    check_tracking_uri,
    log_epoch,
    log_models,
    log_run_inputs,
    record_stop,
    run_destination,
)
from pipeline.training import fit, make_trainer


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
) -> RunResult:
    check_tracking_uri()
    dataset = load_dataset(config.dataset)
    indices = labeled_subset(dataset.y_train, config.labels, config.seed, dataset.num_classes)
    experiment, experiment_id = run_destination(config.experiment, experiment_given)
    config = replace(config, experiment=experiment)
    x_labeled, y_labeled = dataset.x_train[indices], dataset.y_train[indices]
    # Fixed latent points, so the per-epoch grids show one generator evolving.
    latent = np.random.default_rng(config.seed).standard_normal((config.grid_size**2, config.latent_dim))
    latent = latent.astype(np.float32)

    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=config.run_name,
        parent_run_id=parent_run_id,
        tags={"method": config.method},
    ) as run:
        try:
            log_run_inputs(config, dataset, indices)
            if config.run_name in os.environ.get("SGAN_FAIL_RUNS", "").split(","):
                raise RuntimeError(f"failure injected for {config.run_name} by SGAN_FAIL_RUNS")
            started = time.perf_counter()
            models = build_models(
                config.method, config.variant, dataset.num_classes, config.latent_dim, config.seed, config.precision
            )
            trainer = make_trainer(config, models, x_labeled, y_labeled, dataset.x_train)

            def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
                grid = image_grid(trainer.generate(latent), config.grid_size) if config.method == "sgan" else None
                log_epoch(epoch, metrics, grid)

            history = fit(trainer, dataset.x_test, dataset.y_test, on_epoch_end, verbose)
            result = RunResult(
                run_id=run.info.run_id,
                experiment=config.experiment,
                final_test_accuracy=history.last("test_accuracy"),
                seconds=time.perf_counter() - started,
                steps_per_second=history.steps / history.seconds,
                models=models,
            )
            mlflow.log_metrics(
                {
                    "final_test_accuracy": result.final_test_accuracy,
                    "final_labeled_accuracy": history.last("labeled_accuracy"),
                    "train_seconds": history.seconds,
                    "wall_seconds": result.seconds,
                    "steps_per_second": result.steps_per_second,
                }
            )
            log_models(models.classifier, models.generator, dataset.x_test, latent)
        except BaseException as err:
            mlflow.flush_async_logging()  # what was logged before a failure is kept
            record_stop(err)
            raise
        mlflow.flush_async_logging()
    if verbose:
        print(summary_line(config, result), flush=True)
    return result


def summary_line(config: RunConfig, result: RunResult) -> str:
    minutes, seconds = divmod(round(result.seconds), 60)
    return (
        f"{config.run_name}: final test accuracy {result.final_test_accuracy:.4f} after "
        f"{config.total_steps} steps in {minutes}m{seconds:02d}s ({result.steps_per_second:.2f} steps/s); "
        f"run {result.run_id} in experiment '{result.experiment}'"
    )
