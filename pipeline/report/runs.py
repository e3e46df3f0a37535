"""Which runs the report reads: the finished training runs of an experiment (or of one sweep), one
row per run, with the arm, data and protocol each belongs to."""

from __future__ import annotations

import mlflow
import pandas as pd

from pipeline.config import AUGMENTED_METHODS, METHODS, ConfigError, arm_name, setting_default
from pipeline.schema import TRIALS_FILE

# A comparison unit: runs pair only within the same data, protocol and networks, and only on the same
# labels and seed.
GROUP = ["dataset", "protocol", "architecture"]
IDENTITY = ["arm", *GROUP, "labels", "seed"]  # a run repeated with all of these equal is a rerun

METRICS = {
    "final": ("final_test_accuracy", "raw classifier"),
    "ema": ("final_test_accuracy_ema", "moving average of the classifier's weights (EMA)"),
    "val_selected": ("test_accuracy at the best val_accuracy", "raw classifier at its run's best validation epoch"),
}


class ReportError(ConfigError):
    """The report cannot be made from what was asked for (for example: no such experiment)."""


def _param(runs: pd.DataFrame, name: str, default: str | None = None) -> pd.Series:
    """A param column, with the value that runs logged before the param existed had (a setting's default)."""
    default = str(setting_default(name)) if default is None else default
    column = runs.get(f"params.{name}", pd.Series(default, index=runs.index))
    return column.fillna(default)


def load_runs(experiment: str, sweep_run_id: str | None = None, labels: list[int] | None = None) -> pd.DataFrame:
    """Every finished training run of the experiment, newest first; if given, only those of the sweeps
    in `sweep_run_id` (comma-separated parent run ids) and only those with these label counts."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"experiment {experiment!r} does not exist at tracking URI {mlflow.get_tracking_uri()}")
    runs = mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    if runs.empty or "tags.method" not in runs:
        return pd.DataFrame()
    runs = runs[runs["tags.method"].isin(METHODS)]  # not reports, sweeps, searches or their candidates
    if sweep_run_id:
        members = set().union(*(sweep_members(one.strip()) for one in sweep_run_id.split(",") if one.strip()))
        runs = runs[runs["run_id"].isin(members)]
    if labels:
        runs = runs[runs["params.labels"].astype(int).isin(labels)]
    if runs.empty:
        return pd.DataFrame()
    method, variant = runs["tags.method"], runs["params.variant"]
    generator_loss = _param(runs, "generator_loss").where(method == "sgan", "none")
    precision = _param(runs, "precision")
    architecture = _param(runs, "architecture")
    augment = _param(runs, "augment").where(method.isin(AUGMENTED_METHODS), "none")  # cnn_tuned: its search's
    epochs, steps = runs["params.num_epochs"].astype(int), runs["params.steps_per_epoch"].astype(int)
    budget = runs["params.profile"] + " " + epochs.astype(str) + "x" + steps.astype(str)
    table = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "arm": [
                arm_name(*row)
                for row in zip(method, variant, generator_loss, precision, architecture, augment, strict=True)
            ],
            "method": method,
            "variant": variant,
            "generator_loss": generator_loss,
            "precision": precision,
            "architecture": architecture,
            "augment": augment,
            "dataset": runs["params.dataset"],
            "protocol": _param(runs, "protocol", "").mask(lambda p: p == "", budget),  # as RunConfig.protocol
            "labels": runs["params.labels"].astype(int),
            "seed": runs["params.seed"].astype(int),
            "final": runs["metrics.final_test_accuracy"],
            "ema": runs.get("metrics.final_test_accuracy_ema", pd.Series(float("nan"), index=runs.index)),
            "selected_epoch": runs.get("metrics.selected_epoch", epochs),
            "start_time": runs["start_time"],
            "git_commit": runs["params.git_commit"],
            "tensorflow_version": runs["params.tensorflow_version"],
            "keras_version": runs["params.keras_version"],
            "mlflow_version": runs["params.mlflow_version"],
            "seconds": runs.get("metrics.wall_seconds"),
        }
    )
    return table.reset_index(drop=True)


def latest_per_identity(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs that count, the ones superseded): of runs repeating an arm, data, protocol, label
    count and seed, the latest finished one counts, since a rerun is made to replace a run (after a
    fix, or with `--force`). `runs` must be newest first."""
    if runs.empty:
        return runs, runs
    repeated = runs.duplicated(IDENTITY, keep="first")
    counted = runs[~repeated].sort_values([*GROUP, "labels", "arm", "seed"]).reset_index(drop=True)
    return counted, runs[repeated].reset_index(drop=True)


def sweep_members(sweep_run_id: str) -> set[str]:
    """The sweep's child runs plus the finished runs it reused (listed in its trials file)."""
    children = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{sweep_run_id}'"
    )
    members = set(children["run_id"]) if not children.empty else set()
    try:
        trials = mlflow.artifacts.load_dict(f"runs:/{sweep_run_id}/{TRIALS_FILE}")["trials"]
        members |= {t["run_id"] for t in trials if t["run_id"]}
    except Exception:  # a sweep stopped before it wrote its trial list: its children still count
        pass
    return members


def metric_histories(run_ids: list[str], key: str) -> pd.DataFrame:
    """Every logged value of metric `key` of these runs: one row per (run_id, step, value)."""
    client = mlflow.MlflowClient()
    rows = [(rid, m.step, m.value) for rid in run_ids for m in client.get_metric_history(rid, key)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


def with_validation_selection(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `val_selected`, each run's test accuracy at its epoch of best validation accuracy (the
    first on ties, as `cnn_tuned` picks its own), and that epoch (`val_selected_epoch`), read from the logged
    per-epoch histories: every arm stopped early on the validation split, not only `cnn_tuned`. A run
    without a validation history (logged before the split existed) gets none."""
    run_ids = list(runs.get("run_id", []))  # (no runs: no columns either)
    val = metric_histories(run_ids, "val_accuracy").sort_values(["run_id", "step"], ignore_index=True)
    best = val.loc[val.groupby("run_id")["value"].idxmax(), ["run_id", "step"]]  # idxmax: the first of equals
    test = metric_histories(run_ids, "test_accuracy")
    chosen = best.merge(test, on=["run_id", "step"], how="left").set_index("run_id")
    return runs.assign(
        val_selected=[chosen["value"].get(rid, float("nan")) for rid in run_ids],
        val_selected_epoch=pd.array([chosen["step"].get(rid) for rid in run_ids], dtype="Int64"),
    )
