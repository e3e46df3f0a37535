"""The comparison report: how much each SGAN arm gains over each supervised baseline arm at each label
count, and how sure we are.

runs (which runs count) -> statistics (tables) -> notes (coverage) -> plots -> content (what the
report says) -> document (Markdown and HTML). Reads finished runs with `mlflow.search_runs` (any tracking
URI) and writes `reports/<experiment>/`. Imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd

from pipeline.environment import value
from pipeline.report import plots
from pipeline.report.content import blocks
from pipeline.report.document import to_html, to_markdown
from pipeline.report.notes import coverage_notes
from pipeline.report.runs import METRICS, ReportError, latest_per_identity, load_runs, with_validation_selection
from pipeline.report.statistics import (
    early_stopping_summary,
    ema_effect,
    paired_differences,
    rank_arms,
    seed_differences,
    sgan_contrasts,
    summarize,
)
from pipeline.schema import REPORT_TAG

__all__ = ["Report", "ReportError", "build_report", "make_report", "write_report"]


@dataclass
class Report:
    experiment: str
    metric: str  # a key of METRICS: "final" (raw classifier), "ema" or "val_selected"
    runs: pd.DataFrame  # the runs that count
    superseded: pd.DataFrame  # reruns replaced by a later run of the same arm, data, protocol, labels, seed
    summary: pd.DataFrame
    paired: pd.DataFrame
    ranking: pd.DataFrame
    ema_effect: pd.DataFrame  # EMA minus raw classifier, per arm and label count
    contrasts: pd.DataFrame  # every other SGAN arm minus the stacked float32 one, per label count
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    commentary: list[str] = field(default_factory=list)  # the analyst's findings, one paragraph each
    # every arm stopped early on validation (when the metric is another): accuracy and epoch per arm, paired
    early_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    early_paired: pd.DataFrame = field(default_factory=pd.DataFrame)


def build_report(
    experiment: str, sweep_run_id: str | None = None, metric: str = "final", labels: list[int] | None = None
) -> Report:
    if metric not in METRICS:
        raise ReportError(f"metric={metric!r} is not one of {', '.join(METRICS)}")
    runs, superseded = latest_per_identity(load_runs(experiment, sweep_run_id, labels))
    runs = with_validation_selection(runs)
    summary, paired = summarize(runs, metric), paired_differences(runs, metric)
    notes = coverage_notes(runs, superseded, paired, metric)
    ranking, contrasts = rank_arms(summary), sgan_contrasts(runs, metric)
    report = Report(experiment, metric, runs, superseded, summary, paired, ranking, ema_effect(runs), contrasts, notes)
    if metric != "val_selected" and runs.val_selected.notna().any():
        report.early_summary = early_stopping_summary(runs)
        report.early_paired = paired_differences(runs, "val_selected")
    return report


def write_report(report: Report, folder: Path) -> list[Path]:
    """Write tables, plots, report.md and report.html into `folder`; return what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"summary.csv": report.summary, "paired.csv": report.paired, "ranking.csv": report.ranking}
    tables["ema_effect.csv"] = report.ema_effect
    if not report.contrasts.empty:
        tables["sgan_contrasts.csv"] = report.contrasts
    if not report.early_summary.empty:
        tables["early_stopped_summary.csv"] = report.early_summary
        tables["early_stopped_paired.csv"] = report.early_paired
    tables["runs.csv"] = report.runs
    for name, table in tables.items():
        table.to_csv(folder / name, index=False)
    files = [folder / name for name in tables]
    figures = []
    if not report.runs.empty:
        ylabel = METRICS[report.metric][0]
        draw = {
            "accuracy_vs_labels.png": lambda p: plots.accuracy_vs_labels(
                report.summary, report.runs, report.metric, p, ylabel
            ),
            "paired_difference.png": lambda p: plots.paired_difference(
                report.paired, seed_differences(report.runs, report.metric), p
            ),
            "learning_curves.png": lambda p: plots.learning_curves(
                report.runs, p, "test_accuracy_ema" if report.metric == "ema" else "test_accuracy"
            ),
        }
        if (report.runs.method == "sgan").any():
            draw["sgan_losses.png"] = lambda p: plots.sgan_losses(report.runs, p)
        for name, plot in draw.items():
            plot(folder / name)
            figures.append(name)
        if plots.save_generated_grid(report.runs, folder / "generated.png"):
            figures.append("generated.png")
    report.files = files + [folder / name for name in figures]
    parts = blocks(report, figures)
    (folder / "report.md").write_text(to_markdown(parts))
    (folder / "report.html").write_text(to_html(parts, folder))
    return [*report.files, folder / "report.md", folder / "report.html"]


def read_commentary(path: Path | None) -> list[str]:
    """Paragraphs (separated by blank lines) of a text file written by whoever ran the benchmark."""
    if path is None:
        return []
    if not path.is_file():
        raise ReportError(f"commentary file {path} does not exist")
    return [" ".join(p.split()) for p in path.read_text().split("\n\n") if p.strip()]


def log_report_run(experiment: str, out_dir: Path, params: dict[str, object]) -> str:
    """A `report` run in the experiment the report summarises, holding the report as artifacts. Under
    `mlflow run -e report` the run MLflow made is that run when it is in this experiment; when `mlflow run` put
    it elsewhere (no `--experiment-name`: the Default experiment), the report run is made here all the same and
    the launched run names it (`report_run_id`). Returns the report run's id."""
    client = mlflow.MlflowClient()
    summarised = mlflow.get_experiment_by_name(experiment).experiment_id
    launched = value("MLFLOW_RUN_ID")
    if launched and client.get_run(launched).info.experiment_id == summarised:
        run_id = launched
    else:
        run_id = client.create_run(summarised, run_name=f"report-{experiment}", tags={REPORT_TAG: "true"}).info.run_id
        if launched:
            client.set_tag(launched, "report_run_id", run_id)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag(REPORT_TAG, "true")
        mlflow.log_params(params)
        mlflow.log_artifacts(str(out_dir), "report")
    return run_id


def make_report(
    experiment: str,
    out_dir: Path,
    sweep_run_id: str | None = None,
    log_to_run: str | None = None,
    commentary: Path | None = None,
    metric: str = "final",
    labels: list[int] | None = None,
) -> Report:
    """Build, write and log the report: into `log_to_run` if given (a sweep's parent), else a new
    `report` run in the same experiment, so it is browsable in the MLflow UI."""
    findings = read_commentary(commentary)  # a wrong path fails before any work
    report = build_report(experiment, sweep_run_id, metric, labels)
    report.commentary = findings
    write_report(report, out_dir)
    if log_to_run:
        mlflow.MlflowClient().log_artifacts(log_to_run, str(out_dir), "report")
    else:
        log_report_run(
            experiment,
            out_dir,
            {
                "sweep_run_id": sweep_run_id or "",
                "labels": ",".join(map(str, labels or [])),
                "n_runs": len(report.runs),
                "metric": metric,
            },
        )
    return report
