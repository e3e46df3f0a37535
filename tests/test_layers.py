"""The layers the code is built in, and the libraries each may load, checked two ways: statically, every
`pipeline` import (lazy ones in functions included) goes only where its layer may; and in fresh interpreters,
importing a layer loads only the heavy libraries it is allowed (a sweep's driver and the report never load
TensorFlow; the training core never loads MLflow; the front door loads neither until the input is good)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
FOUNDATION = {"config", "environment", "schema", "faults", "stopping", "data"}  # top-level modules every layer uses
COMMANDS = {"cli", "mlproject", "bench", "__main__"}  # the front door and tools: may use every layer
# layer -> the layers its modules may import (besides its own and the foundation)
MAY_IMPORT = {
    "foundation": set(),
    "core": set(),
    "tracking": set(),
    "report": set(),
    "sweep": {"tracking", "sweep.events"},
    "trial": {"core", "tracking", "sweep.events"},
}


def _layer(module: str) -> str:
    """`pipeline.core.models` -> `core`; `pipeline.config` -> `foundation`; the events protocol on its own."""
    parts = module.split(".")[1:]
    if parts[:2] == ["sweep", "events"]:
        return "sweep.events"
    if (PACKAGE / parts[0]).is_dir():
        return parts[0]
    return "foundation" if parts[0] in FOUNDATION else "commands"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pipeline.core import models`
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("pipeline")}
    return {name for name in names if _resolves(name)}


def _resolves(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).is_dir() or (PACKAGE / relative).with_suffix(".py").is_file()


def test_every_import_goes_only_where_its_layer_may():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("pipeline", *path.relative_to(PACKAGE).with_suffix("").parts))
        layer = _layer(module)
        if layer == "commands":
            continue
        allowed = {layer, "foundation"} | MAY_IMPORT.get(layer, set())
        if layer == "sweep.events":
            allowed = {"foundation", "sweep.events"}
        wrong += [f"{module} imports {name}" for name in _imports(path) if _layer(name) not in allowed | {"commands"}]
        wrong += [f"{module} imports the command {name}" for name in _imports(path) if _layer(name) == "commands"]
    assert not wrong, "\n".join(wrong)


def test_the_layers_cover_every_package():
    packages = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert packages == set(MAY_IMPORT) - {"foundation"}
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == FOUNDATION | COMMANDS | {"__init__"}


def _modules(layer: str) -> list[str]:
    if layer == "foundation":
        return [f"pipeline.{name}" for name in sorted(FOUNDATION)] + ["pipeline.cli", "pipeline.mlproject"]
    folder = PACKAGE / layer
    return [f"pipeline.{layer}.{path.stem}" for path in sorted(folder.glob("*.py"))]


def _loaded(modules: list[str]) -> set[str]:
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(*sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


@pytest.mark.parametrize(
    ("layer", "allowed", "forbidden"),
    [
        ("foundation", set(), {"mlflow", "tensorflow", "keras", "ray"}),
        ("tracking", {"mlflow"}, {"tensorflow", "keras"}),
        ("sweep", {"mlflow"}, {"tensorflow", "keras", "ray"}),  # Ray: only once a sweep asks for it
        ("report", {"mlflow"}, {"tensorflow", "keras"}),
        ("core", {"tensorflow", "keras"}, {"mlflow"}),
    ],
)
def test_each_layer_loads_only_the_libraries_it_may(layer, allowed, forbidden):
    loaded = _loaded(_modules(layer))
    assert not forbidden & loaded, f"{sorted(forbidden & loaded)} loaded by {layer}"
    assert allowed <= loaded
