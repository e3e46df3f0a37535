"""`pytest --cpu-top N`: the N tests that cost the most CPU time, their child processes included.

On a 2-core machine the suite's wall time is bounded by its CPU time, not by its wall-clock durations
(`--durations` counts a test that waits for its child processes as cheap while they use both cores).
Each test's figure is its worker's CPU time plus that of the child processes it waited for (sweep trials
included, through the sweep; not Ray's workers, which Ray's own processes start), setup and teardown of
the fixtures it built included. The summary also gives the whole machine's busy CPU time over the session
(Linux `/proc/stat`), which counts what the per-test figures cannot: Ray's processes and the trials they
start, servers that were terminated rather than waited for, and anything else running.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

_START = pytest.StashKey[tuple[float, float]]()  # CPU and wall clock when a test began
_MACHINE = pytest.StashKey[tuple[float, float] | None]()  # the machine's busy CPU and wall clock at the start


def machine_busy_seconds() -> float | None:
    """CPU-seconds this machine's cores have been busy since boot (all processes), or None off Linux."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle and waiting for I/O
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-top",
        type=int,
        default=0,
        metavar="N",
        help="list the N tests that used the most CPU time, waited-for child processes included",
    )


def pytest_configure(config: pytest.Config) -> None:
    busy = machine_busy_seconds()
    config.stash[_MACHINE] = None if busy is None else (busy, time.perf_counter())


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    item.stash[_START] = (_cpu_seconds(), time.perf_counter())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if call.when == "teardown" and _START in item.stash:
        cpu, wall = item.stash[_START]
        report = outcome.get_result()  # user properties travel from xdist workers to the controller
        report.user_properties.append(("cpu_seconds", _cpu_seconds() - cpu))
        report.user_properties.append(("wall_seconds", time.perf_counter() - wall))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    top = config.getoption("cpu_top")
    if top <= 0:
        return
    costs = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            properties = dict(getattr(report, "user_properties", ()))
            if getattr(report, "when", None) == "teardown" and "cpu_seconds" in properties:
                costs.append((properties["cpu_seconds"], properties["wall_seconds"], report.nodeid))
    costs.sort(reverse=True)
    total = sum(cpu for cpu, _, _ in costs)
    terminalreporter.write_sep("=", f"CPU time per test: {total:.0f} s over {len(costs)} tests, top {top}")
    start, busy = config.stash.get(_MACHINE, None), machine_busy_seconds()
    if start is not None and busy is not None:
        used, wall = busy - start[0], time.perf_counter() - start[1]
        terminalreporter.write_line(
            f"the machine: {used:.0f} CPU-seconds busy over {wall:.0f} s ({used / wall:.2f} of "
            f"{os.cpu_count()} cores on average; all its processes, Ray's and the trials they start included)"
        )
    for cpu, wall, nodeid in costs[:top]:
        terminalreporter.write_line(f"{cpu:7.1f} s CPU {wall:7.1f} s wall  {nodeid}")
