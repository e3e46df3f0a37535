"""The embedded executor: each trial a child process of the sweep, `max_parallel` at a time, each given an
equal share of the machine's cores (without it every trial's TensorFlow starts one thread per core and the
trials fight over them; a user's own SGAN_INTRA_OP_THREADS wins)."""

from __future__ import annotations

import os
import queue
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.environment import THREADS, value
from pipeline.sweep.events import Event
from pipeline.sweep.plan import Trial
from pipeline.sweep.schedule import Polled
from pipeline.sweep.trial import TrialProcesses, run_trial


def threads_per_trial(parallel_trials: int, cpus: int | None = None) -> int:
    """An equal share of this machine's cores for each of `parallel_trials` trials (at least one)."""
    return max(1, (cpus or os.cpu_count() or 1) // parallel_trials)


class LocalExecutor:
    name = "local"

    def __init__(self, max_parallel: int = 1):
        if max_parallel < 1:
            raise ConfigError(f"max_parallel={max_parallel} must be a positive integer")
        self.slots = max_parallel
        self.processes = TrialProcesses()
        self.events: queue.Queue[tuple[Trial, Event]] = queue.Queue()
        self.running: dict[Future, Trial] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.folder: tempfile.TemporaryDirectory | None = None

    def start(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=self.slots)
        self.folder = tempfile.TemporaryDirectory()

    def submit(self, trial: Trial, experiment_id: str, parent_run_id: str, resume: str | None) -> None:
        threads = 0 if value(THREADS) or self.slots == 1 else threads_per_trial(self.slots)
        future = self.pool.submit(
            run_trial,
            trial,
            experiment_id,
            parent_run_id,
            Path(self.folder.name),
            self.processes,
            resume,
            threads,
            lambda event: self.events.put((trial, event)),
        )
        self.running[future] = trial

    def poll(self, timeout: float) -> Polled:
        done, _ = wait(self.running, timeout=timeout, return_when=FIRST_COMPLETED)
        polled = Polled()
        while not self.events.empty():
            polled.events.append(self.events.get_nowait())
        for future in done:
            polled.finished.append((self.running.pop(future), future.result()))
        return polled

    def cancel(self) -> None:
        self.processes.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.running.clear()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None
