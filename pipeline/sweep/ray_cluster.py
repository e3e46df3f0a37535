"""Sweep trials as Ray tasks, on this machine (a local Ray instance) or on a cluster (`--ray-address`).

Each task runs `pipeline.sweep.trial.run_trial` on the node Ray gives it: the same trial process, the same MLflow run
nested under the sweep's parent run, the same resume by fingerprint and checkpoint and the same outcome
record as the local executor. A trial's events come back to the sweep through a Ray queue. A stop
raises a flag every task watches: each stops its trial process, which ends its run KILLED, and returns;
a task still running after the grace period is cancelled by force. (Not `ray.cancel` first: its
KeyboardInterrupt can land inside the task's own clean-up and leave the trial's run open.)
Ray is an optional extra, imported only here and only when asked for.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow

from pipeline.config import ConfigError
from pipeline.environment import forwarded, value
from pipeline.sweep.plan import Outcome, Trial
from pipeline.sweep.schedule import Polled
from pipeline.sweep.trial import TrialProcesses, run_trial, settle

STOP_GRACE_SECONDS = 180  # for cancelled tasks to stop their trials and close their runs
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray's switch for token authentication
INSTALL_HINT = "pip install -e '.[ray]' (Ray 2.40 to 2.x)"


def check_ray_available() -> None:
    """Before any work: `--executor ray` without Ray installed says how to get it."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"executor=ray needs Ray, which is not installed: {INSTALL_HINT}")


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    if cpus_per_trial <= 0:
        raise ConfigError(f"cpus_per_trial={cpus_per_trial} must be positive")
    if gpus_per_trial < 0:
        raise ConfigError(f"gpus_per_trial={gpus_per_trial} must be zero or positive")


def check_tracking_for_cluster(tracking_uri: str, remote_nodes: list[str]) -> None:
    """A SQLite file or a local folder is only valid on one machine: with workers on other machines the
    tracking store must be a server every node reaches."""
    if remote_nodes and urlparse(tracking_uri).scheme in ("", "file", "sqlite"):
        raise ConfigError(
            f"the Ray cluster has nodes on other machines ({', '.join(remote_nodes)}) but the tracking URI "
            f"{tracking_uri!r} is a local file there: start `mlflow server --host 0.0.0.0 --port 5000 "
            "--backend-store-uri sqlite:///mlflow.db` on a machine every node reaches and pass its "
            "http:// URI as MLFLOW_TRACKING_URI"
        )


def join_failure(address: str | None, err: Exception) -> str:
    """Why Ray could not connect, from the last line of what it raised (its own message is the last line of a
    traceback inside the error), and what to do when the cause is token authentication: a cluster with it
    refuses a driver without RAY_AUTH_MODE=token, and Ray offers a token by itself only to a cluster it found
    on this machine (no address, or `auto`), never to one named by its address."""
    reason = str(err.__cause__ or err).strip().splitlines()[-1].removeprefix("ray.exceptions.")
    reason = reason.split(" Note: ")[0].rstrip(".")  # Ray's advice follows; ours, shorter, below
    if not address:
        return f"could not start or join a local Ray instance: {reason}"
    message = f"could not join the Ray cluster at {address!r}: {reason}"
    if "AuthToken" in reason or "Authentication" in reason:
        message += (
            f"; the cluster uses token authentication: set {AUTH_MODE_ENV}=token and give its token in "
            "RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head node prints it)"
        )
    return message


class StopFlag:
    """Raised once by the sweep when it is stopped; read by every running task (a Ray actor)."""

    def __init__(self):
        self.raised = False

    def raise_(self) -> None:
        self.raised = True

    def is_raised(self) -> bool:
        return self.raised


def trial_task(
    trial: Trial, experiment_id: str, parent_run_id: str, resume: str | None, queue, stop, threads: int
) -> Outcome:
    """One trial on a Ray worker. TensorFlow in the trial process uses the CPUs the task was given; when
    the sweep raises `stop`, the trial process is stopped (its run ends KILLED) and the task returns."""
    import ray

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    processes = TrialProcesses()
    with tempfile.TemporaryDirectory() as folder:
        try:
            return run_trial(
                trial,
                experiment_id,
                parent_run_id,
                Path(folder),
                processes,
                resume,
                threads,
                lambda event: queue.put((trial.config.run_name, event)),
                lambda: ray.get(stop.is_raised.remote()),
            )
        except BaseException:
            processes.stop()
            raise


class RayExecutor:
    """Trials as Ray tasks with `cpus_per_trial` CPUs and `gpus_per_trial` GPUs each (fractions share)."""

    name = "ray"

    def __init__(self, address: str | None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0):
        check_ray_available()
        check_resources(cpus_per_trial, gpus_per_trial)
        self.address = address or value("RAY_ADDRESS") or None
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        self.slots = 1
        self.started = False
        self.refs: dict = {}  # Ray object ref -> (trial, when it was submitted, its resume)
        self.by_name: dict[str, Trial] = {}

    def start(self) -> None:
        """Join the cluster (or start a local instance), and refuse a tracking store its nodes cannot share."""
        import ray
        from ray.util.queue import Queue

        env = forwarded()
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            ray.init(
                address=self.address,
                runtime_env={"env_vars": env},
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except ConnectionError as err:  # before the sweep's run exists: refused like any bad input
            raise ConfigError(join_failure(self.address, err)) from err
        self.started = True
        for signum, handler in handlers.items():  # Ray's own SIGTERM handler would abort the sweep mid-stop
            signal.signal(signum, handler)
        here = ray.util.get_node_ip_address()
        nodes = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
        check_tracking_for_cluster(env["MLFLOW_TRACKING_URI"], sorted({n for n in nodes if n != here}))
        resources = ray.cluster_resources()
        slots = resources.get("CPU", 1.0) // self.cpus_per_trial
        if self.gpus_per_trial:
            slots = min(slots, resources.get("GPU", 0.0) // self.gpus_per_trial)
            if slots < 1:
                raise ConfigError(
                    f"gpus_per_trial={self.gpus_per_trial}, but the Ray cluster has {resources.get('GPU', 0)} GPUs"
                )
        self.slots = max(1, int(slots))
        self.queue, self.stop = Queue(), ray.remote(num_cpus=0)(StopFlag).remote()
        self.task = ray.remote(trial_task).options(
            num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial, max_retries=0
        )
        where = ray.get_runtime_context().gcs_address
        cpus = resources.get("CPU", 0)
        print(f"Ray cluster at {where}: {len(nodes)} node(s), {cpus:g} CPUs, {self.slots} trials at once", flush=True)

    def submit(self, trial: Trial, experiment_id: str, parent_run_id: str, resume: str | None) -> None:
        threads = max(1, int(self.cpus_per_trial))
        ref = self.task.remote(trial, experiment_id, parent_run_id, resume, self.queue, self.stop, threads)
        self.refs[ref] = (trial, time.perf_counter(), experiment_id, parent_run_id, resume)
        self.by_name[trial.config.run_name] = trial

    def poll(self, timeout: float) -> Polled:
        import ray

        done, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout) if self.refs else ([], [])
        polled = Polled()
        while not self.queue.empty():
            name, event = self.queue.get_nowait()
            polled.events.append((self.by_name[name], event))
        for ref in done:
            trial, started, experiment_id, parent_run_id, resume = self.refs.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as err:  # the worker died: record the trial as FAILED all the same
                outcome = settle(trial, experiment_id, parent_run_id, -1, resume, started, lambda e=err: str(e))
            polled.finished.append((trial, outcome))
        return polled

    def cancel(self) -> None:
        """Running tasks stop their trials, queued ones start none; a task still running after the grace is
        cancelled by force (its worker and trial process killed; the sweep closes the run)."""
        import ray

        if not self.refs:
            return
        ray.get(self.stop.raise_.remote())  # a task that starts from now on returns at once
        _, late = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=STOP_GRACE_SECONDS)
        for ref in late:
            ray.cancel(ref, force=True)
        self.refs.clear()

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
