"""The tracking store: checked before any work, where runs go, how a stopped run is ended, and the Model
Registry. MLflow only, so light processes (a sweep's parent, the report) use it without importing TensorFlow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow

from pipeline.config import ConfigError
from pipeline.environment import value
from pipeline.schema import CHECKPOINT_DIR, CHECKPOINT_STATE, EXPERIMENT_KIND, STOPS_TAG
from pipeline.stopping import Stopped, stop_signal, stopped_by_signal


def check_tracking_uri(uri: str | None = None) -> str:
    """Fail fast, before training, when the tracking store cannot be reached or opened."""
    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise ConfigError(f"tracking URI {uri} is unreachable: {err}") from err
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # any store error means the same to the user
        raise ConfigError(f"tracking URI {uri} cannot be used: {err}") from err
    return uri


def log_dataset_input(data: mlflow.data.Dataset, context: str, tags: dict[str, str] | None) -> None:
    """`mlflow.log_input` to the active run, safe when parallel runs of one experiment log the same new
    dataset at the same moment: MLflow's SQL store looks the dataset up, then inserts it, not atomically,
    so the later insert breaks the unique (experiment, name, digest) constraint (seen with two sweep
    trials starting together on one SQLite file). The dataset exists by then; logging again links it."""
    try:
        mlflow.log_input(data, context=context, tags=tags or None)
    except mlflow.exceptions.MlflowException as err:
        if "IntegrityError" not in str(err):
            raise
        mlflow.log_input(data, context=context, tags=tags or None)


def newest_run(experiment_id: str, filter_string: str) -> mlflow.entities.Run | None:
    """The most recently started run of the experiment that matches `filter_string`, if any."""
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return found[0] if found else None


def has_checkpoint(run_id: str) -> bool:
    """Whether the run saved a checkpoint to resume from (none if it stopped in its first epoch)."""
    saved = mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=CHECKPOINT_DIR)
    return any(f.path == f"{CHECKPOINT_DIR}/{CHECKPOINT_STATE}" for f in saved)


def launched_run_experiment(experiment: str, experiment_given: bool) -> str | None:
    """The experiment of the run `mlflow run` already created for this process (MLFLOW_RUN_ID), named by
    its own `--experiment-name`; None outside `mlflow run`. An explicit, different `experiment` cannot be
    honoured there and is refused rather than silently ignored (the CLI asks before TensorFlow loads)."""
    launched_run = value("MLFLOW_RUN_ID")
    if not launched_run:
        return None
    existing = mlflow.get_experiment(mlflow.get_run(launched_run).info.experiment_id).name
    if experiment_given and experiment != existing:
        raise ConfigError(
            f"experiment={experiment!r} differs from {existing!r}, where `mlflow run` already "
            f"created this run: pass `--experiment-name {experiment}` to `mlflow run` instead"
        )
    return existing


def run_destination(experiment: str, experiment_given: bool) -> tuple[str, str | None]:
    """Where a run goes: (the experiment's real name, the id to create the run in); the id is None when
    `mlflow run` already created the run (`launched_run_experiment`)."""
    existing = launched_run_experiment(experiment, experiment_given)
    if existing is not None:
        return existing, None
    found = mlflow.get_experiment_by_name(experiment)
    return experiment, found.experiment_id if found else mlflow.create_experiment(experiment, tags=EXPERIMENT_KIND)


def unfinished_run(run_id: str) -> mlflow.entities.Run:
    """The run `--resume` names, if it exists and has not finished. The CLI asks before TensorFlow loads;
    whether the run's configuration and data are these is checked once the data is (`runs.resumable_run`)."""
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"resume={run_id}: no such run at tracking URI {mlflow.get_tracking_uri()}") from None
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume={run_id}: that run already FINISHED; there is nothing to resume")
    return run


def log_new_params(params: dict[str, object]) -> None:
    """Log params, skipping those `mlflow run` already logged from its entry-point parameters
    (params are immutable, and its raw values, such as `epochs=''`, would clash)."""
    already = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({key: value for key, value in params.items() if key not in already})


@contextmanager
def stops_recorded() -> Iterator[None]:
    """Inside the active run: whatever ends it early (a failure, Ctrl-C, SIGTERM) is recorded by `record_stop`,
    after what was logged so far is flushed, and raised on."""
    try:
        yield
    except BaseException as err:
        mlflow.flush_async_logging()  # what was logged before a failure is kept
        record_stop(err)
        raise


def record_stop(err: BaseException) -> None:
    """Tag the active run with why it stopped; Ctrl-C ends it KILLED (MLflow's run context would call
    any exception FAILED). Either way it is never left FINISHED. A stop signal counts as the stop even when
    it surfaced as another exception: one raised while TensorFlow traces a function unwinds through its graph
    contexts, which then raise an AssertionError ("Nesting violated ...") of their own."""
    if stopped_by_signal():
        err = Stopped(stop_signal())
    mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000] if str(err) else type(err).__name__)
    if isinstance(err, KeyboardInterrupt):
        mlflow.end_run("KILLED")


def continue_stopped_run(run: mlflow.entities.Run, parent_run_id: str | None) -> None:
    """For the active run `run`, resumed after a stop: the `error` tag its stop left moves to `earlier_stops`
    (one line per stop it came back from), so that a run resumed to the end is FINISHED without an error;
    and it is nested under the sweep running it now (if any), whose stop then closes it."""
    error = run.data.tags.get("error")
    if error:
        earlier = run.data.tags.get(STOPS_TAG)
        mlflow.set_tag(STOPS_TAG, (f"{earlier}\n{error}" if earlier else error)[-5000:])
        mlflow.delete_tag("error")
    if parent_run_id:
        mlflow.set_tag("mlflow.parentRunId", parent_run_id)


def register_classifier(model_id: str, name: str, tags: dict[str, object], alias: str | None = None) -> str:
    """Register a logged classifier as a new version of `name` (with `alias` pointing at it); returns the
    version."""
    version = mlflow.register_model(f"models:/{model_id}", name, tags={k: str(v) for k, v in tags.items()})
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version.version
