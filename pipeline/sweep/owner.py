"""Which process owns a RUNNING sweep run, so that a later sweep can tell a live one from one killed hard.

A sweep stopped by SIGTERM or Ctrl-C ends its parent run KILLED, but one killed with SIGKILL (the
out-of-memory killer, a scheduler's hard kill, a machine's session ending) cannot: its parent run stays
RUNNING in MLflow forever. The parent therefore records its process, as host, pid and the process's
start time (a pid alone can be reused); a run whose process is gone from this host was abandoned. A run
owned by another host cannot be checked from here, so it is left alone.
"""

from __future__ import annotations

import socket

import psutil


def process_identity() -> str:
    """This process, as `host pid start-time`."""
    return f"{socket.gethostname()} {psutil.Process().pid} {psutil.Process().create_time():.2f}"


def is_abandoned(identity: str) -> bool:
    """True when `identity` names a process of this host that no longer runs; False when it runs, or
    when it is another host's (or unreadable), which this host cannot check."""
    try:
        host, pid, started = identity.rsplit(" ", 2)
        pid_number, start_time = int(pid), float(started)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(pid_number).create_time() - start_time) > 1.0  # the pid was reused
    except psutil.NoSuchProcess:  # a zombie too: it has ended
        return True
    except psutil.Error:
        return False
