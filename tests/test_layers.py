"""The layers the processes rely on, checked in fresh interpreters: the settings, data and front door load
neither MLflow nor TensorFlow; the store, sweep and report load MLflow but never TensorFlow (a sweep's driver
and the report stay light); the training core loads TensorFlow but never MLflow (it trains without a store)."""

import subprocess
import sys

import pytest

LIGHT = ["config", "environment", "faults", "schema", "stopping", "owner", "data", "progress", "images"]
LIGHT += ["diagnostics", "device", "cli", "mlproject"]
TRACKING = ["store", "sweep", "ray_executor", "registry", "report"]
CORE = ["layers", "models", "objectives", "optimizers", "training", "checkpoint", "tuning"]


def _loaded(modules: list[str]) -> set[str]:
    code = f"import sys\nfor m in {modules!r}: __import__('pipeline.' + m)\nprint(*sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


@pytest.mark.parametrize(
    ("modules", "allowed", "forbidden"),
    [
        (LIGHT, set(), {"mlflow", "tensorflow", "keras"}),
        (TRACKING, {"mlflow"}, {"tensorflow", "keras"}),
        (CORE, {"tensorflow", "keras"}, {"mlflow"}),
    ],
    ids=["light", "tracking", "core"],
)
def test_each_layer_loads_only_the_libraries_it_may(modules, allowed, forbidden):
    loaded = _loaded(modules)
    assert not forbidden & loaded, f"{sorted(forbidden & loaded)} loaded by {modules}"
    assert allowed <= loaded
