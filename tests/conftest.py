"""Shared fixtures: real data from ../shared/data (never written to), real SQLite MLflow stores in temp dirs."""

from __future__ import annotations

import atexit
import functools
import gc
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from pipeline.cli import GC_THRESHOLDS

pytest_plugins = ["tests.cpu_report"]  # `--cpu-top N`

gc.set_threshold(*GC_THRESHOLDS)  # as in every command's process: this one imports TensorFlow and trains too

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SGAN_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
os.environ["SGAN_DATA_DIR"] = str(SHARED_DATA)
os.environ["SGAN_OFFLINE"] = "1"  # nothing downloads during tests
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_xdist_auto_num_workers(config) -> int:
    """`--numprocesses=auto`: one worker more than the cores (at most `--maxprocesses`). About a quarter of
    the suite's time is spent waiting (servers and Ray starting, child processes polled), so a spare
    worker keeps the cores busy."""
    return (os.cpu_count() or 1) + 1


@functools.cache
def _empty_store() -> Path:
    """An empty SQLite tracking store made by MLflow once per test process: creating one runs MLflow's
    schema migrations, about 6 s (mostly waiting on disk syncs), which every store-using test paid."""
    folder = Path(tempfile.mkdtemp(prefix="empty-mlflow-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def new_store(path: Path) -> str:
    """A fresh SQLite tracking store at `path` (a copy of the empty one, with every table already made:
    a test that polls the store while a child process creates them can clash with it, "table ... already
    exists"); returns its URI."""
    shutil.copyfile(_empty_store(), path)
    return f"sqlite:///{path}"


@contextmanager
def tracking_store(folder: Path):
    """A fresh SQLite tracking store in `folder`, which is also the cwd so artifacts land there too."""
    uri = new_store(folder / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run():
                mlflow.end_run()


@pytest.fixture(autouse=True)
def no_inherited_experiment():
    """`mlflow.set_experiment` exports MLFLOW_EXPERIMENT_ID for child processes; one test's experiment must not
    leak into a later test's `mlflow run` in the same worker (which then refuses `--experiment-name`)."""
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture
def store(tmp_path) -> str:
    with tracking_store(tmp_path) as uri:
        yield uri


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
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def started(*args: str, cwd: Path, own_group: bool = False) -> subprocess.Popen:
    """`python -m pipeline ...` started in a fresh process and left running, to be signalled while it works
    (`own_group`: in a process group of its own, like a terminal's foreground job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        start_new_session=own_group,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 300, poll: float = 1.0) -> None:
    """Poll `condition` until it holds; fail, naming `what`, if it does not within `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def refused(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """`python -m pipeline ...` for input it must refuse before any work, run in this process: the same
    parser, checks, messages and exit code as the command, without a Python start-up that imports
    TensorFlow and MLflow for each case (commands that do work are run in real processes, by `cli`)."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        if cwd is not None:
            mp.chdir(cwd)
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's own refusals
            code = exit_.code
        finally:
            for signum, handler in handlers.items():  # main() installs its stop handlers
                signal.signal(signum, handler)
    return subprocess.CompletedProcess(["pipeline", *args], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    """A TCP port nothing listens on at this moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_mlflow_server(folder: Path):
    """A real `mlflow server` on 127.0.0.1 (SQLite behind it, artifacts proxied): the client-server path."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            new_store(folder / "server.db"),
            "--artifacts-destination",
            str(folder / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{uri}/health", "mlflow server")
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path):
    with running_mlflow_server(tmp_path) as uri:
        yield uri


def assert_nothing_lost(runs: pd.DataFrame, epochs: int) -> None:
    """Every trial run has every epoch of its metrics, its image grids and its models: parallel trials
    writing to one store lost nothing."""
    client = mlflow.MlflowClient()
    for _, run in runs.iterrows():
        for key in ("test_accuracy", "val_accuracy_ema", "loss_supervised"):
            assert sorted(m.step for m in client.get_metric_history(run.run_id, key)) == list(range(1, epochs + 1))
        outputs = mlflow.get_run(run.run_id).outputs.model_outputs
        names = {mlflow.get_logged_model(o.model_id).name for o in outputs}
        if run["tags.method"] == "sgan":
            assert names == {"classifier", "classifier_ema", "generator"}
            images = mlflow.artifacts.list_artifacts(run_id=run.run_id, artifact_path="images")
            assert len([f for f in images if f.path.endswith(".png")]) == epochs
        else:
            assert names == {"classifier", "classifier_ema"}


def wait_until_up(url: str, what: str, seconds: float = 120.0) -> None:
    """Poll a server's health URL until it answers OK; fail the test if it never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} did not start within {seconds:.0f} s")
