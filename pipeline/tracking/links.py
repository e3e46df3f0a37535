"""Where to look, printed after a command: the MLflow UI command with this environment's own executable (a
venv's `mlflow` is not on the PATH until it is activated) and the link that opens the experiment's training runs
(`#/experiments/<id>/runs`; the UI's root opens on whatever view the browser last used)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

UI_PORT = 5000


def mlflow_executable() -> str:
    """This interpreter's environment's `mlflow`, by path when it is not the one on the PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    if beside.exists() and shutil.which("mlflow") != str(beside):
        return str(beside)
    return "mlflow"


def runs_url(base: str, experiment_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"


def where_to_look(tracking_uri: str, experiment_id: str) -> list[str]:
    """The lines to print: for a tracking server, its page of the experiment's runs; for a local store, the
    command that serves it and the page to open."""
    if urlparse(tracking_uri).scheme in ("http", "https"):
        return [f"Browse the runs: {runs_url(tracking_uri, experiment_id)}"]
    return [
        f"Browse the runs: {mlflow_executable()} ui --backend-store-uri {tracking_uri} --port {UI_PORT}",
        f"  then open {runs_url(f'http://127.0.0.1:{UI_PORT}', experiment_id)}",
    ]
