"""A sweep's classifiers in the Model Registry: per label count, the best arm's best classifier, chosen on
the validation split (never the test split), registered as a version of one model with an alias
`best-L<labels>`."""

from __future__ import annotations

import mlflow
import pandas as pd

from pipeline.tracking.store import register_classifier

CHOSEN_BY = "final_val_accuracy"  # the validation split; a cnn_tuned run's is its best epoch's


def alias(labels: int) -> str:
    return f"best-L{labels}"


def choose_best(runs: pd.DataFrame) -> pd.DataFrame:
    """Per label count: the arm with the best mean validation accuracy over its runs, then that arm's
    run with the best validation accuracy (ties: the first listed). `runs` has columns run_id, arm,
    labels and `CHOSEN_BY`; returns one row per label count."""
    runs = runs.dropna(subset=[CHOSEN_BY])
    rows = []
    for _, group in runs.groupby("labels"):
        arm = group.groupby("arm", sort=True)[CHOSEN_BY].mean().idxmax()
        rows.append(group[group.arm == arm].loc[lambda g: g[CHOSEN_BY].idxmax()])
    return pd.DataFrame(rows).reset_index(drop=True) if rows else runs.iloc[:0]


def classifier_of(run: mlflow.entities.Run) -> str:
    """The id of the LoggedModel named `classifier` that the run produced."""
    for output in run.outputs.model_outputs:
        if mlflow.get_logged_model(output.model_id).name == "classifier":
            return output.model_id
    raise LookupError(f"run {run.info.run_id} logged no classifier")


def register_best(run_ids: list[str], name: str) -> list[str]:
    """Register the best classifier per label count among these finished runs; returns a line each."""
    fetched = [mlflow.get_run(run_id) for run_id in run_ids]
    table = pd.DataFrame(
        {
            "run_id": [r.info.run_id for r in fetched],
            "arm": [r.data.tags.get("arm", r.data.tags.get("method")) for r in fetched],
            "labels": [int(r.data.params["labels"]) for r in fetched],
            CHOSEN_BY: [r.data.metrics.get(CHOSEN_BY) for r in fetched],
        }
    )
    runs = {r.info.run_id: r for r in fetched}
    lines = []
    for row in choose_best(table).itertuples():
        run = runs[row.run_id]
        tags = {"arm": row.arm, "labels": row.labels, "chosen_by": f"{CHOSEN_BY} {getattr(row, CHOSEN_BY):.4f}"}
        version = register_classifier(classifier_of(run), name, {**tags, "run_id": row.run_id}, alias(row.labels))
        lines.append(f"{name} version {version} (alias {alias(row.labels)}): {row.arm}, run {row.run_id}")
    return lines
