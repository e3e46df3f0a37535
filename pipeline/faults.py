"""Failures the tests inject into real processes, armed in one place and by one variable.

`SGAN_TEST_FAULTS` holds a JSON object; the code calls `fault_point(name, ...)` at the few points named here,
which do nothing unless that variable arms them. No other variable changes what training does.
- `{"fail_runs": ["<run name>", ...]}`: the named runs raise once started (a failure after the run exists);
- `{"kill_after_epoch": N, "scope": "process" | "group"}`: SIGKILL after epoch N's checkpoint and metrics are
  logged, of the process or its whole process group (a machine going away);
- `{"kill_after_candidate": N}`: SIGKILL after the N-th candidate of a recipe search is logged.
"""

from __future__ import annotations

import json
import os
import signal

from pipeline.environment import FAULTS, value


def armed() -> dict:
    text = value(FAULTS)
    return json.loads(text) if text else {}


def arm(**faults: object) -> dict[str, str]:
    """The environment entry that arms these faults in a child process (for tests)."""
    return {FAULTS: json.dumps(faults)}


def fault_point(point: str, **context: object) -> None:
    """Trip the failure armed for this point, if any."""
    faults = armed()
    if not faults:
        return
    if point == "run_started" and context["run_name"] in faults.get("fail_runs", ()):
        raise RuntimeError(f"failure injected for {context['run_name']} by {FAULTS}")
    if point == "epoch_logged" and faults.get("kill_after_epoch") == context["epoch"]:
        os.killpg(0, signal.SIGKILL) if faults.get("scope") == "group" else os.kill(os.getpid(), signal.SIGKILL)
    if point == "candidate_logged" and faults.get("kill_after_candidate") == context["candidate"]:
        os.kill(os.getpid(), signal.SIGKILL)
