"""A sweep's console progress: a line per epoch of each running trial and per finished trial, with ETAs
measured per arm, from the events the trials send (`pipeline.sweep.events`)."""

from __future__ import annotations

import heapq
import sys
import threading
import time
from statistics import fmean

from pipeline.sweep.events import CandidateDone, EpochDone, Event
from pipeline.sweep.plan import Outcome, Trial


class Progress:
    """`[i/N] name: accuracy (duration) | elapsed, ETA` lines when a trial ends, and a line per epoch
    of each running trial; safe to call from worker threads. ETAs come from measured durations of the
    same arm: finished trials, else the projection of a running one (never another arm's)."""

    def __init__(self, total: int, parallel: int, verbose: bool):
        self.total, self.parallel, self.verbose = total, parallel, verbose
        self.done, self.started = 0, time.perf_counter()
        self.durations: dict[str, list[float]] = {}
        self.running: dict[str, tuple[str, float, float]] = {}  # name -> (arm, elapsed, projected total)
        self.candidates: dict[str, list[float]] = {}  # arm -> its recipe searches' candidate durations
        self.resumed: dict[str, float] = {}  # trial -> the share of its training its checkpoint holds
        self.lock = threading.Lock()

    def _left(self, trial: Trial) -> float | None:
        """Seconds until `trial` ends: what a running trial has left, else its arm's mean duration."""
        name, arm = trial.config.run_name, trial.config.arm
        if name in self.running:
            _, elapsed, total = self.running[name]
            return max(total - elapsed, 0.0)
        projected = [total for a, _, total in self.running.values() if a == arm]
        measured = self.durations.get(arm) or self.candidates.get(arm) or projected  # a trial ~ a candidate
        return fmean(measured) * (1.0 - self.resumed.get(name, 0.0)) if measured else None

    def eta(self, remaining: list[Trial]) -> str:
        guesses = [self._left(t) for t in remaining]
        if None in guesses:
            missing = sorted({t.config.arm for t, g in zip(remaining, guesses, strict=True) if g is None})
            return f"ETA unknown until a {', '.join(missing)} trial is measured"
        running = [g for t, g in zip(remaining, guesses, strict=True) if t.config.run_name in self.running]
        queued = [g for t, g in zip(remaining, guesses, strict=True) if t.config.run_name not in self.running]
        return f"ETA {clock(makespan(running + queued, self.parallel))}"

    def resuming(self, trial: Trial, run_id: str, epoch: int) -> None:
        """`trial` will continue run `run_id` from its checkpoint after `epoch`: until its first epoch line,
        what is left of it is its arm's duration less that share."""
        with self.lock:
            total = trial.config.train_epochs
            self.resumed[trial.config.run_name] = min(epoch / total, 1.0)
            if self.verbose:
                print(f"    {trial.config.run_name}: resumes run {run_id} after epoch {epoch}/{total}", flush=True)

    def update(self, trial: Trial, event: Event, remaining: list[Trial]) -> None:
        if isinstance(event, EpochDone):
            self.epoch(trial, event, remaining)
        else:
            self.search(trial, event, remaining)

    def search(self, trial: Trial, event: CandidateDone, remaining: list[Trial]) -> None:
        """A running trial's recipe search finished a candidate: what is left of the trial is the search's
        other candidates, then its own training, about one candidate's time."""
        with self.lock:
            name, arm = trial.config.run_name, trial.config.arm
            if event.seconds is not None:
                self.candidates.setdefault(arm, []).append(event.seconds)
            if arm in self.candidates:
                self.running[name] = (arm, 0.0, (event.total - event.done + 1) * fmean(self.candidates[arm]))
            if self.verbose:
                print(
                    f"    {name}: recipe search {event.done}/{event.total}: {event.describe()} | "
                    f"sweep {self.eta(remaining)}",
                    flush=True,
                )

    def epoch(self, trial: Trial, event: EpochDone, remaining: list[Trial]) -> None:
        """A running trial finished an epoch."""
        with self.lock:
            projected = event.seconds * event.epochs / event.epoch
            self.running[trial.config.run_name] = (trial.config.arm, event.seconds, projected)
            if self.verbose:
                left = clock(projected - event.seconds)
                print(
                    f"    {trial.config.run_name}: epoch {event.epoch}/{event.epochs}, {event.describe()} | "
                    f"trial ETA {left}, sweep {self.eta(remaining)}",
                    flush=True,
                )

    def report(self, outcome: Outcome, remaining: list[Trial]) -> None:
        with self.lock:
            self.running.pop(outcome.name, None)
            self.done += 1
            if outcome.seconds:  # a reused run's duration is a measurement of its arm too
                self.durations.setdefault(outcome.arm, []).append(outcome.seconds)
            if not self.verbose:
                return
            if outcome.status == "FINISHED":
                accuracy = f"{outcome.final_test_accuracy:.4f}" if outcome.final_test_accuracy is not None else "n/a"
                what = f"{'reused' if outcome.reused else 'finished'}, test accuracy {accuracy}"
            else:
                what = f"FAILED: {outcome.error}"
            took = "" if outcome.reused else f" in {clock(outcome.seconds)}"
            took += " in all (resumed)" if outcome.resumed else ""
            elapsed = clock(time.perf_counter() - self.started)
            print(f"[{self.done}/{self.total}] {outcome.name}: {what}{took} | elapsed {elapsed}, {self.eta(remaining)}")
            sys.stdout.flush()


def makespan(durations: list[float], slots: int) -> float:
    """When the last of `durations` ends if each starts, in this order, on the first of `slots` to be free (as
    the executors hand out trials): one long trial left alone is not shared out over the slots."""
    ends = [0.0] * slots  # a min-heap of when each slot is free
    for duration in durations:
        heapq.heapreplace(ends, ends[0] + duration)
    return max(ends)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
