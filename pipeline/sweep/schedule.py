"""The one scheduling loop of a sweep, and the interface its executors implement.

An executor runs trials somewhere (`LocalExecutor`: child processes of this one; `RayExecutor`: Ray tasks):
it is started, given trials one at a time with `submit` while it has a free slot, asked with `poll` what
happened since (progress events and finished trials), and told to `cancel` everything on a stop. The loop
decides what runs when: trials in the order planned, at most `slots` at once, and no two trials of one recipe
search side by side (`SearchGate`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.stopping import raise_if_stopped
from pipeline.sweep.events import Event
from pipeline.sweep.plan import Outcome, Trial, search_group

POLL_SECONDS = 1.0  # how long a poll waits for something to happen


@dataclass
class Polled:
    """What happened since the last poll: each running trial's new events, and the trials that ended."""

    events: list[tuple[Trial, Event]] = field(default_factory=list)
    finished: list[tuple[Trial, Outcome]] = field(default_factory=list)


class Executor(Protocol):
    name: str
    slots: int  # trials at once; known once started

    def start(self) -> None:
        """Acquire what the trials run on; a bad setting raises ConfigError before the sweep's run exists."""

    def submit(self, trial: Trial, experiment_id: str, parent_run_id: str, resume: str | None) -> None:
        """Start `trial` (continuing run `resume` if given) without waiting for it."""

    def poll(self, timeout: float) -> Polled:
        """Wait up to `timeout` seconds for something to happen; return what did."""

    def cancel(self) -> None:
        """Stop every running trial (each ends its run KILLED) and start no other; return once they have."""

    def close(self) -> None:
        """Release what `start` acquired."""


class SearchGate:
    """Trials that share a recipe search must not search side by side: the first to start searches and
    the others reuse its recipe. So while a group's first trial runs, the gate holds its other trials back
    (other trials take the free slots); once it has finished, they all may start. If it failed, the next
    one to start searches."""

    def __init__(self):
        self.searching: set[str] = set()
        self.searched: set[str] = set()

    def admits(self, trial: Trial) -> bool:
        group = search_group(trial.config)
        return group is None or group in self.searched or group not in self.searching

    def started(self, trial: Trial) -> None:
        group = search_group(trial.config)
        if group is not None and group not in self.searched:
            self.searching.add(group)

    def finished(self, trial: Trial, status: str) -> None:
        group = search_group(trial.config)
        if group is not None:
            self.searching.discard(group)
            if status == "FINISHED":
                self.searched.add(group)

    def next_admitted(self, queue: list[Trial]) -> Trial | None:
        return next((trial for trial in queue if self.admits(trial)), None)


def schedule(
    pending: list[Trial],
    resumes: dict[Trial, str],
    executor: Executor,
    experiment_id: str,
    parent_run_id: str,
    on_event: Callable[[Trial, Event, list[Trial]], None],
    on_outcome: Callable[[Outcome, list[Trial]], None],
) -> None:
    """Run `pending` through `executor` to the end; `on_event` and `on_outcome` get what happens, with the
    trials not finished yet. A stop (Ctrl-C, SIGTERM) cancels the running trials and starts no other."""
    queue, waiting, running, gate = list(pending), list(pending), set(), SearchGate()
    try:
        while queue or running:
            while len(running) < executor.slots and (trial := gate.next_admitted(queue)):
                queue.remove(trial)
                gate.started(trial)
                executor.submit(trial, experiment_id, parent_run_id, resumes.get(trial))
                running.add(trial)
            polled = executor.poll(POLL_SECONDS)
            raise_if_stopped()  # a stop whose exception a finaliser swallowed still stops the sweep
            for trial, event in polled.events:
                on_event(trial, event, list(waiting))
            for trial, outcome in polled.finished:
                running.discard(trial)
                waiting.remove(trial)
                gate.finished(trial, outcome.status)
                on_outcome(outcome, list(waiting))
    except BaseException:
        executor.cancel()
        raise
