"""Stops asked for by a signal: SIGINT (Ctrl-C) or SIGTERM (`kill`, `timeout`, schedulers, a sweep stopping
its trials) unwind like Ctrl-C, so runs end KILLED and a sweep stops its trials.

Python runs a signal handler between two bytecodes of the main thread, wherever that is; when it is inside a
`__del__` or a weakref callback (TensorFlow has many), the exception it raises is printed as "Exception
ignored" and lost. So the stop is also remembered, and long loops call `raise_if_stopped` at their safe
points: a stop a library swallowed still ends the work at the next training call."""

from __future__ import annotations

import signal

RECEIVED: list[int] = []  # the stop signal, kept apart: a library may re-raise it as a bare KeyboardInterrupt


class Stopped(KeyboardInterrupt):
    """The stop asked for by signal `signum`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Turn SIGINT and SIGTERM into `Stopped`, raised at once and remembered for `raise_if_stopped`."""

    def handler(signum, frame):
        for other in (signal.SIGINT, signal.SIGTERM):  # one stop: the clean-up itself is not interrupted
            signal.signal(other, lambda *_: None)  # (a handler, unlike SIG_IGN, is not inherited by children)
        RECEIVED.append(signum)
        raise Stopped(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def raise_if_stopped() -> None:
    """Raise `Stopped` again if a stop signal came and its exception was lost on the way."""
    if RECEIVED:
        raise Stopped(RECEIVED[0])


def stopped_by_signal() -> bool:
    return bool(RECEIVED)


def stop_signal() -> int:
    """The signal that stopped this process (SIGINT when none did: a KeyboardInterrupt of another origin)."""
    return RECEIVED[0] if RECEIVED else signal.SIGINT
