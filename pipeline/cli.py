"""`python -m pipeline <command>`: the same commands as the MLproject entry points."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from pathlib import Path

from pipeline.config import (
    ARCHITECTURES,
    METHODS,
    PRECISIONS,
    ConfigError,
    check_choice,
    default_experiment,
    parse_list,
    resolve_config,
    setting_default,
    user_settings,
)
from pipeline.data import DataError
from pipeline.environment import value
from pipeline.stopping import stop_on_signals, stop_signal, stopped_by_signal

EXECUTORS = ("local", "ray")
# Importing TensorFlow, Keras and MLflow and tracing a model leave about a million long-lived Python objects, which
# Python's default collector thresholds (700, 10, 10) re-scan in full several times in a short run; larger young
# generations leave none and still collect cycles (measured in docs/development.md).
GC_THRESHOLDS = (10_000, 10, 10)


def optional_int(text: str) -> int | None:
    """MLproject passes unset parameters as empty strings: '' means "use the profile's value"."""
    if text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def flag(text: str) -> bool:
    """`--force` alone, or `--force true|false` as MLproject passes it."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", ""):
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value in ("true", "1", "yes")


def add_setting_arguments(parser: argparse.ArgumentParser, method: str | None) -> None:
    """A flag for every user setting (`pipeline.config.setting`), with its default for `method`; for a
    sweep (`method=None`), a comma-separated list where the setting makes arms, and the grid's axes
    (labels, seeds) as lists under their own names."""
    for field in user_settings():
        meta = field.metadata
        text = meta["help"] + (f": {', '.join(meta['choices'])}" if meta["choices"] else "")
        if method is not None and meta["methods"] != METHODS:
            text += f" ({', '.join(meta['methods'])} only)"
        if method is None and meta["grid"]:
            name, default = meta["grid"]
            parser.add_argument(
                f"--{name}", default=default, help=f"{text}: a comma-separated list (default {default})"
            )
            continue
        annotation = field.type if isinstance(field.type, str) else field.type.__name__  # text where postponed
        kind = optional_int if meta["profile"] else {"int": int, "float": float}.get(annotation, str)
        default = None if meta["profile"] else setting_default(field.name, method or "")
        if method is None and meta["listed"]:
            text += "; a comma-separated list, one arm each"
        if default is not None:
            text += f" (default {default})"
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=default, help=text)
    add_store_arguments(parser, "<dataset>-<profile>")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_store_arguments(parser: argparse.ArgumentParser, default_experiment: str) -> None:
    """Where runs go, as MLflow's own tools spell it: `--experiment-name` (`--experiment` too) and `--tracking-uri`,
    defaulting to MLflow's variables."""
    parser.add_argument(
        "--experiment-name",
        "--experiment",
        dest="experiment",
        default="",
        help=f"MLflow experiment (default MLFLOW_EXPERIMENT_NAME or MLFLOW_EXPERIMENT_ID, else {default_experiment})",
    )
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default MLFLOW_TRACKING_URI)")


def apply_store_arguments(args: argparse.Namespace) -> None:
    """`--tracking-uri` for this process and the trials it starts; the experiment from MLflow's variables when
    not given (under `mlflow run`, its run's experiment decides: `pipeline.tracking.store`)."""
    if getattr(args, "tracking_uri", ""):
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if not hasattr(args, "experiment") or args.experiment or value("MLFLOW_RUN_ID"):
        return
    if value("MLFLOW_EXPERIMENT_NAME"):
        args.experiment = value("MLFLOW_EXPERIMENT_NAME")
    elif experiment_id := value("MLFLOW_EXPERIMENT_ID"):
        import mlflow

        try:
            args.experiment = mlflow.get_experiment(experiment_id).name
        except mlflow.exceptions.MlflowException:
            raise ConfigError(f"MLFLOW_EXPERIMENT_ID={experiment_id}: no such experiment at the tracking URI") from None


def setting_values(args: argparse.Namespace) -> dict[str, object]:
    """The user settings a command was given, as `resolve_config` takes them."""
    return {field.name: getattr(args, field.name) for field in user_settings() if hasattr(args, field.name)} | {
        "experiment": args.experiment or None
    }


METHOD_HELP = {
    "sgan": "train a semi-supervised GAN",
    "cnn": "train the supervised baseline (the SGAN's classifier and optimizer, labeled images only)",
    "cnn_tuned": "train the tuned supervised baseline (recipe chosen by a search on the validation split)",
    "cnn_source": "train the CNN baseline exactly as the architecture's source does (gans_in_action)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for method in METHODS:
        add_method_command(commands.add_parser(method, help=METHOD_HELP[method]), method)
    add_sweep_command(commands.add_parser("sweep", help="train every trial of a grid, each a nested child run"))
    add_sweep_command(commands.add_parser("main", help="sweep, then report"), with_report=True)
    add_report_command(commands.add_parser("report", help="aggregate finished runs into tables and plots"))
    add_bench_command(commands.add_parser("bench", help="time training steps: ours vs the classic Keras reference"))
    return parser


def add_method_command(sub: argparse.ArgumentParser, method: str) -> None:
    """One training run of `method`."""
    sub.add_argument("--parent-run-id", default=None, help=argparse.SUPPRESS)
    sub.add_argument(
        "--resume", default="", help="continue this unfinished run (same settings) from its last checkpoint"
    )
    sub.add_argument("--register-model", default="", help="register the classifier as a version of this model")
    sub.add_argument(
        "--system-metrics",
        nargs="?",
        type=flag,
        const=True,
        default=False,
        help="log CPU and memory (GPU where present) with MLflow's system metrics",
    )
    add_setting_arguments(sub, method)


def add_sweep_command(sub: argparse.ArgumentParser, with_report: bool = False) -> None:
    """A sweep (`sweep`), or a sweep and its report (`main`)."""
    sub.add_argument("--methods", default="sgan,cnn", help=f"comma-separated, of {', '.join(METHODS)}")
    sub.add_argument("--max-parallel", type=int, default=1, help="trials at once, local executor (default 1)")
    sub.add_argument(
        "--executor", default="local", help="local (child processes, default) or ray (tasks on a Ray instance)"
    )
    sub.add_argument(
        "--ray-address", default="", help="Ray cluster to join (default RAY_ADDRESS, else a new local instance)"
    )
    sub.add_argument("--cpus-per-trial", type=float, default=1, help="Ray: CPUs per trial (default 1)")
    sub.add_argument("--gpus-per-trial", type=float, default=0, help="Ray: GPUs per trial, fractions share one")
    sub.add_argument(
        "--force", nargs="?", type=flag, const=True, default=False, help="re-run trials that already finished"
    )
    sub.add_argument(
        "--register-model",
        default="",
        help="register the best arm's classifier per label count (chosen on the validation split) under this name",
    )
    sub.add_argument(
        "--system-metrics",
        type=flag,
        default=True,
        help="each trial logs CPU and memory (GPU where present) with MLflow's system metrics (default true)",
    )
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (what runs, is reused or resumed) and its ETA; run nothing",
    )
    add_setting_arguments(sub, None)
    if with_report:
        sub.add_argument("--out", default=None, help="report folder (default reports/<experiment>)")


def add_report_command(sub: argparse.ArgumentParser) -> None:
    add_store_arguments(sub, default_experiment("mnist", "quick"))
    sub.add_argument(
        "--sweep-run-id", default="", help="only these sweeps' runs (comma-separated; children and reused runs)"
    )
    sub.add_argument("--labels", default="", help="only these label counts (comma-separated; default all)")
    sub.add_argument("--out", default=None, help="output folder (default reports/<experiment>)")
    sub.add_argument("--commentary", default="", help="text file of findings to include (paragraphs)")
    sub.add_argument(
        "--metric",
        default="final",
        help="final (raw classifier, default), ema (moving average of its weights) or val_selected (each run's "
        "test accuracy at its best validation epoch: every arm stopped early on the validation split)",
    )


def add_bench_command(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--dataset", default="mnist", help="data the steps draw from (default mnist)")
    sub.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    sub.add_argument("--steps", type=int, default=10, help="steps per round and method (default 10)")
    sub.add_argument("--precision", default="float32", help="our trainer's precision: float32 or bfloat16")
    sub.add_argument("--architecture", default="mlm", help=f"{' or '.join(ARCHITECTURES)}, each with its protocol")
    sub.add_argument(
        "--ops", type=int, default=0, help="also profile our steps and list the N op types taking most time"
    )
    sub.add_argument("--json", action="store_true", help="print one JSON object")


def run_single(args: argparse.Namespace) -> int:
    config = resolve_config(args.command, **setting_values(args))
    from pipeline.tracking.store import check_tracking_uri, launched_run_experiment, unfinished_run

    # an unreachable store fails in a second, before TensorFlow loads; so do an experiment `mlflow run` cannot
    # use and a run to resume that does not exist or has finished
    check_tracking_uri()
    launched_run_experiment(config.experiment, bool(args.experiment))
    if args.resume:
        unfinished_run(args.resume)
    from pipeline.trial.run import train_run  # heavy imports only once the input is known to be good

    result = train_run(
        config,
        bool(args.experiment),
        args.parent_run_id,
        verbose=not args.quiet,
        resume=args.resume or None,
        register_model=args.register_model,
        system_metrics=args.system_metrics,
    )
    if not args.parent_run_id:  # a sweep's trial: its sweep says where to look
        print_where_to_look(result.run_id)
    return 0


def run_sweep_command(args: argparse.Namespace) -> tuple[int, str, str]:
    """Returns (exit code, experiment, parent run id)."""
    from pipeline.sweep.plan import plan_trials
    from pipeline.sweep.run import run_sweep

    check_choice("executor", args.executor, EXECUTORS)
    if args.executor == "ray":
        from pipeline.sweep.ray_cluster import check_ray_available, check_resources

        check_ray_available()
        check_resources(args.cpus_per_trial, args.gpus_per_trial)

    experiment = args.experiment or default_experiment(args.dataset, args.profile)
    listed = {f.name: parse_list(f.name, getattr(args, f.name)) for f in user_settings() if f.metadata["listed"]}
    shared = {
        f.name: getattr(args, f.name) for f in user_settings() if not (f.metadata["listed"] or f.metadata["grid"])
    }
    trials = plan_trials(
        parse_list("methods", args.methods),
        parse_list("labels", args.labels, int),
        parse_list("seeds", args.seeds, int),
        listed,
        experiment=experiment,
        **shared,
    )
    skipped = ("command", "quiet", "experiment", "epochs", "steps_per_epoch", "out")  # the last two: as resolved
    params = {k: v for k, v in vars(args).items() if k not in skipped}
    params |= {"num_epochs": trials[0].config.epochs, "steps_per_epoch": trials[0].config.steps_per_epoch}
    if args.dry_run:
        from pipeline.sweep.run import dry_run
        from pipeline.tracking.store import check_tracking_uri

        check_tracking_uri()
        slots = args.max_parallel if args.executor == "local" else 1
        print("\n".join(dry_run(trials, experiment, slots, args.force)))
        return 0, experiment, ""
    if args.system_metrics:  # MLflow's own switch: the trial processes inherit it
        os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true"
    executor = make_executor(args)
    try:
        result = run_sweep(trials, experiment, bool(args.experiment), executor, args.force, not args.quiet, params)
    finally:
        executor.close()
    if args.register_model:
        from pipeline.tracking.registry import register_best

        finished = [o.run_id for o in result.outcomes if o.status == "FINISHED"]
        for line in register_best(finished, args.register_model):
            print(f"Registered {line}", flush=True)
    return (1 if result.failed else 0), result.experiment, result.parent_run_id


def make_executor(args: argparse.Namespace):
    """The sweep's executor, started: for Ray, joined to its cluster (or a new local instance)."""
    if args.executor == "local":
        from pipeline.sweep.local import LocalExecutor

        executor = LocalExecutor(args.max_parallel)
    else:
        from pipeline.sweep.ray_cluster import RayExecutor

        executor = RayExecutor(args.ray_address, args.cpus_per_trial, args.gpus_per_trial)
    try:
        executor.start()
    except BaseException:
        executor.close()
        raise
    return executor


def run_report_command(
    experiment: str,
    out: str | None,
    sweep_run_id: str = "",
    log_to_run: str | None = None,
    commentary: str = "",
    metric: str = "final",
    labels: str = "",
) -> int:
    from pipeline.report import make_report
    from pipeline.tracking.store import check_tracking_uri

    counts = parse_list("labels", labels, int) if labels.strip() else None
    check_tracking_uri()
    folder = Path(out or Path("reports") / experiment)
    findings = Path(commentary) if commentary else None
    report = make_report(experiment, folder, sweep_run_id or None, log_to_run, findings, metric, counts)
    count = len(report.runs)
    print(f"Report of {count} run{'' if count == 1 else 's'} written to {folder / 'report.md'} (and report.html)")
    for note in report.notes:
        print(f"note: {note}")
    from pipeline.report.overview import REPORTS, ROOT, regenerate

    if folder.resolve().parent == ROOT / "reports" and folder.name in REPORTS:  # a committed report: its overview
        for path in regenerate():
            print(f"Updated {path.relative_to(ROOT)} from the reports' tables")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    if args.command in METHODS:
        return run_single(args)
    if args.command == "bench":
        _positive_ints(rounds=args.rounds, steps=args.steps)
        if args.ops < 0:
            raise ConfigError(f"ops={args.ops} must be 0 (no profile) or a positive number of op types")
        check_choice("precision", args.precision, PRECISIONS)
        check_choice("architecture", args.architecture, list(ARCHITECTURES))
        from pipeline.bench import ReferenceError, format_result, run_bench  # TensorFlow: once the settings are good

        try:
            result = run_bench(
                args.dataset, args.rounds, args.steps, args.precision, architecture=args.architecture, ops=args.ops
            )
        except ReferenceError as err:
            print(f"error: the bench's reference is broken, its times would mean nothing: {err}", file=sys.stderr)
            return 1
        print(format_result(result, args.json))
        return 0
    if args.command == "report":
        return run_report_command(
            args.experiment or default_experiment("mnist", "quick"),
            args.out,
            args.sweep_run_id,
            commentary=args.commentary,
            metric=args.metric,
            labels=args.labels,
        )
    code, experiment, parent = run_sweep_command(args)
    if not parent:  # a dry run
        return code
    if args.command == "main":
        run_report_command(experiment, args.out, parent, log_to_run=parent)
    print_where_to_look(parent)
    return code


def _positive_ints(**values: int) -> None:
    for name, number in values.items():
        if number <= 0:
            raise ConfigError(f"{name}={number} must be a positive integer")


def print_where_to_look(run_id: str) -> None:
    """The UI command and the link to the experiment of `run_id`'s training runs."""
    import mlflow

    from pipeline.tracking.links import where_to_look

    experiment_id = mlflow.get_run(run_id).info.experiment_id
    print("\n".join(where_to_look(mlflow.get_tracking_uri(), experiment_id)), flush=True)


def how_to_resume(command: str) -> str:
    if command in METHODS:
        import mlflow

        last = mlflow.last_active_run()
        run = last.info.run_id if last else "RUN_ID"
        return (
            f"the run is marked KILLED; continue it from its last checkpoint with the same command and --resume {run}"
        )
    return "finished trials are kept; run the same command again to resume (a half-done trial continues)"


def main(argv: list[str] | None = None) -> int:
    gc.set_threshold(*GC_THRESHOLDS)
    args = build_parser().parse_args(argv)
    stop_on_signals()
    try:
        apply_store_arguments(args)
        return dispatch(args)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BaseException as err:  # a stop, even one TensorFlow turned into another exception (see tracking.store)
        if not (isinstance(err, KeyboardInterrupt) or stopped_by_signal()):
            raise
        signum = stop_signal()
        print(f"stopped by {signal.Signals(signum).name}: {how_to_resume(args.command)}", file=sys.stderr)
        return 128 + signum
