"""A sweep's console progress: a line per epoch of each running trial and per finished trial, with ETAs
measured per arm, from the events the trials send (`pipeline.sweep.events`). On a terminal the same shows
as live bars (rich): one for the sweep, one per running trial, with the finished trials' lines above them;
elsewhere (a log, CI, a pipe) as plain lines."""

from __future__ import annotations

import heapq
import sys
import threading
import time
from statistics import fmean

from pipeline.sweep.events import CandidateDone, EpochDone, Event
from pipeline.sweep.plan import Outcome, Trial


class Lines:
    """Plain lines, one per event."""

    def note(self, text: str) -> None:
        print(text, flush=True)

    def step(self, name: str, done: int, total: int, text: str) -> None:
        print(f"    {name}: {text}", flush=True)

    def finished(self, name: str, text: str, done: int, eta: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


class Bars:
    """Live bars on a terminal: the sweep's trials done with its ETA, and each running trial's epochs (or its
    recipe search's candidates) with its last figures; lines for what is not a bar print above them."""

    def __init__(self, total: int, console=None):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as RichProgress
        from rich.table import Column

        name = TextColumn("{task.description}", table_column=Column(no_wrap=True, max_width=30))
        note = TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=44))
        columns = (name, BarColumn(bar_width=16), MofNCompleteColumn(), note)
        self.bars = RichProgress(*columns, console=console, transient=False)
        self.sweep = self.bars.add_task("sweep", total=total, note="")
        self.trials: dict[str, int] = {}
        self.bars.start()

    def note(self, text: str) -> None:
        self.bars.console.print(text, highlight=False)

    def step(self, name: str, done: int, total: int, text: str) -> None:
        if name not in self.trials:
            self.trials[name] = self.bars.add_task(name, total=total, note="")
        trial, _, sweep = text.rpartition(" sweep ")  # "<the trial's figures and ETA>, sweep <ETA>"
        trial = trial.rstrip(", |").removeprefix(f"epoch {done}/{total}, ")  # the bar counts the epochs
        self.bars.update(self.trials[name], completed=done, total=total, note=trial)
        self.bars.update(self.sweep, note=sweep)

    def finished(self, name: str, text: str, done: int, eta: str) -> None:
        if name in self.trials:
            self.bars.remove_task(self.trials.pop(name))
        self.bars.update(self.sweep, completed=done, note=eta)
        self.note(text)

    def close(self) -> None:
        self.bars.stop()


class Progress:
    """`[i/N] name: accuracy (duration) | elapsed, ETA` lines when a trial ends, and a line per epoch
    of each running trial; safe to call from worker threads. ETAs come from measured durations of the
    same arm: finished trials, else the projection of a running one (never another arm's)."""

    def __init__(self, total: int, parallel: int, verbose: bool, display: Lines | Bars | None = None):
        self.total, self.parallel, self.verbose = total, parallel, verbose
        if display is None and verbose:
            display = Bars(total) if sys.stdout.isatty() else Lines()
        self.display = display
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
            if self.display:
                self.display.note(f"    {trial.config.run_name}: resumes run {run_id} after epoch {epoch}/{total}")

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
            if self.display:
                text = f"recipe search {event.done}/{event.total}: {event.describe()} | sweep {self.eta(remaining)}"
                self.display.step(name, event.done, event.total, text)

    def epoch(self, trial: Trial, event: EpochDone, remaining: list[Trial]) -> None:
        """A running trial finished an epoch."""
        with self.lock:
            projected = event.seconds * event.epochs / event.epoch
            self.running[trial.config.run_name] = (trial.config.arm, event.seconds, projected)
            if self.display:
                left = clock(projected - event.seconds)
                sweep = self.eta(remaining)
                text = f"epoch {event.epoch}/{event.epochs}, {event.describe()} | trial ETA {left}, sweep {sweep}"
                self.display.step(trial.config.run_name, event.epoch, event.epochs, text)

    def report(self, outcome: Outcome, remaining: list[Trial]) -> None:
        with self.lock:
            self.running.pop(outcome.name, None)
            self.done += 1
            if outcome.seconds:  # a reused run's duration is a measurement of its arm too
                self.durations.setdefault(outcome.arm, []).append(outcome.seconds)
            if not self.display:
                return
            if outcome.status == "FINISHED":
                accuracy = f"{outcome.final_test_accuracy:.4f}" if outcome.final_test_accuracy is not None else "n/a"
                what = f"{'reused' if outcome.reused else 'finished'}, test accuracy {accuracy}"
            else:
                what = f"FAILED: {outcome.error}"
            took = "" if outcome.reused else f" in {clock(outcome.seconds)}"
            took += " in all (resumed)" if outcome.resumed else ""
            elapsed, eta = clock(time.perf_counter() - self.started), self.eta(remaining)
            text = f"[{self.done}/{self.total}] {outcome.name}: {what}{took} | elapsed {elapsed}, {eta}"
            self.display.finished(outcome.name, text, self.done, eta)

    def close(self) -> None:
        """End the live display (a sweep's last lines print below it)."""
        if self.display:
            self.display.close()


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
