"""The project's environment variables are registered in one module (pipeline.environment): the code reads no
other, Ray workers get every forwarded one, and the test-only failures do nothing unless armed."""

import re

import pytest

from pipeline import environment
from pipeline.faults import arm, fault_point

from .conftest import ROOT

READS = re.compile(r"""(?:os\.environ(?:\.get)?\s*[\[(]|value\()\s*["']([A-Z][A-Z0-9_]+)["']""")


def test_the_code_reads_only_registered_variables():
    registered = {v.name for v in environment.VARIABLES}
    for path in (ROOT / "pipeline").rglob("*.py"):
        for name in READS.findall(path.read_text()):
            assert name in registered, f"{path.name} reads {name}, which pipeline.environment does not register"
    with pytest.raises(KeyError, match="NOT_OURS is not one of the project's environment variables"):
        environment.value("NOT_OURS")


def test_ray_workers_get_every_forwarded_variable_and_only_those(monkeypatch):
    for variable in environment.VARIABLES:
        monkeypatch.setenv(variable.name, "x")
    monkeypatch.setenv("UNRELATED", "y")
    expected = {v.name for v in environment.VARIABLES if v.forwarded}
    assert set(environment.forwarded()) == expected and environment.FAULTS in expected


def test_faults_do_nothing_unless_armed(monkeypatch):
    monkeypatch.delenv(environment.FAULTS, raising=False)
    fault_point("run_started", run_name="cnn-digits-L10-s0")  # nothing armed: nothing happens
    monkeypatch.setenv(*arm(fail_runs=["cnn-digits-L10-s0"]).popitem())
    fault_point("run_started", run_name="sgan-stacked-digits-L10-s0")  # another run
    with pytest.raises(RuntimeError, match="failure injected for cnn-digits-L10-s0 by SGAN_TEST_FAULTS"):
        fault_point("run_started", run_name="cnn-digits-L10-s0")
