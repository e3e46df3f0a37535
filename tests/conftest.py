"""Shared fixtures: real data from ../shared/data (never written to), real SQLite MLflow stores in temp dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SGAN_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
os.environ["SGAN_DATA_DIR"] = str(SHARED_DATA)
os.environ["SGAN_OFFLINE"] = "1"  # nothing downloads during tests
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store; the cwd is the temp dir so artifacts land there too."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def mnist_slice_dir(tmp_path_factory) -> Path:
    """A small real MNIST file (first 3,000 train and 1,000 test images) in Keras layout."""
    folder = tmp_path_factory.mktemp("mnist-slice")
    with np.load(SHARED_DATA / "mnist.npz") as full:
        np.savez_compressed(
            folder / "mnist.npz",
            x_train=full["x_train"][:3000],
            y_train=full["y_train"][:3000],
            x_test=full["x_test"][:1000],
            y_test=full["y_test"][:1000],
        )
    return folder


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run `python -m pipeline ...` as a user would, in a fresh process."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
