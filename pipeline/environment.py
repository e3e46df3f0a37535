"""Every environment variable this project reads, in one place: what it does, and how a sweep's trials get it.
A trial started here inherits the sweep's environment less what belongs to the sweep's own process
(`to_trials=False`), plus what the sweep sets for it alone (`trial_environment`); a trial on a Ray worker gets
the variables marked `forwarded` (`forwarded()`), the one list both derive from."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    what: str
    forwarded: bool = True  # to a sweep's trials on Ray workers
    to_trials: bool = True  # False: the sweep's own, never passed on to a trial process


DATA_DIR = "SGAN_DATA_DIR"
OFFLINE = "SGAN_OFFLINE"
THREADS = "SGAN_INTRA_OP_THREADS"
FAULTS = "SGAN_TEST_FAULTS"
EVENTS = "SGAN_TRIAL_EVENTS"

VARIABLES = (
    Variable(DATA_DIR, "the folder holding <dataset>.npz (default: this project's cache, where downloads go)"),
    Variable("XDG_CACHE_HOME", "the user's cache folder, holding sgan-bench/datasets (default ~/.cache)"),
    Variable(OFFLINE, "1: never download a dataset; a missing file is an error"),
    Variable(THREADS, "TensorFlow's intra-op threads in a trial (set by the sweep from its slots; 0: TensorFlow's)"),
    Variable("KERAS_HOME", "Keras' own folder, where its loader keeps what it downloads (Keras' own)"),
    Variable("MLFLOW_TRACKING_URI", "MLflow's tracking store (MLflow's own variable)"),
    Variable("MLFLOW_EXPERIMENT_NAME", "the experiment a command uses when none is given (MLflow's own)"),
    Variable("MLFLOW_EXPERIMENT_ID", "the same, by id, when MLFLOW_EXPERIMENT_NAME is not set (MLflow's own)"),
    Variable("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true: every run samples CPU, memory and GPU (MLflow's own)"),
    Variable("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "seconds between system-metric samples (MLflow's own)"),
    Variable("TF_CPP_MIN_LOG_LEVEL", "TensorFlow's C++ log level (its own)"),
    Variable(EVENTS, "set by a sweep for each trial: the file its progress events go to", forwarded=False),
    Variable(
        "MLFLOW_RUN_ID", "set by `mlflow run`: the run an entry point logs into", forwarded=False, to_trials=False
    ),
    Variable("RAY_ADDRESS", "the Ray cluster a sweep with --executor ray joins (Ray's own)", forwarded=False),
    Variable(FAULTS, "tests only: the failures pipeline.faults injects (never set it otherwise)"),
)


def value(name: str, default: str = "") -> str:
    """A registered variable's value (unregistered names are a programming error)."""
    if name not in {v.name for v in VARIABLES}:
        raise KeyError(f"{name} is not one of the project's environment variables (pipeline.environment)")
    return os.environ.get(name, default)


def forwarded() -> dict[str, str]:
    """What a trial on a Ray worker gets from the sweep's environment."""
    return {v.name: os.environ[v.name] for v in VARIABLES if v.forwarded and v.name in os.environ}


def trial_environment(tracking_uri: str, **per_trial: str) -> dict[str, str]:
    """The environment of a trial process started by this one: this process's, less the variables that are
    its own (a sweep's run id must not become the trial's run), with the store the sweep uses and the
    registered variables the sweep sets for this trial alone (`per_trial`, by name)."""
    registered = {v.name for v in VARIABLES}
    if unknown := set(per_trial) - registered:
        raise KeyError(f"{sorted(unknown)} are not the project's environment variables (pipeline.environment)")
    env = {key: val for key, val in os.environ.items() if key not in {v.name for v in VARIABLES if not v.to_trials}}
    return {**env, "MLFLOW_TRACKING_URI": tracking_uri, **per_trial}
