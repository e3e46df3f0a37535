"""The tracking store, checked before any work: MLflow only, so light commands (report) can use it
without importing TensorFlow."""

from __future__ import annotations

import mlflow

from pipeline.config import ConfigError


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
