"""The comparison report: how much the SGAN gains over the CNN at each label count, and how sure we are.

Reads finished runs with `mlflow.search_runs` (any tracking URI), computes the tables with pandas
and scipy, draws the plots with matplotlib, and writes `reports/<experiment>/`.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy import stats  # noqa: E402

from pipeline.config import ConfigError  # noqa: E402
from pipeline.sweep import TRIALS_FILE  # noqa: E402

METRIC = "final_test_accuracy"
SGAN_LOSSES = ["loss_supervised", "loss_unsupervised_real", "loss_unsupervised_fake", "loss_generator"]

# Published numbers, kept apart from anything measured here. Salimans et al. report test *errors*
# (incorrect test examples out of 10,000) with feature matching; Odena reports classifier accuracy.
PUBLISHED = pd.DataFrame(
    [
        ("Salimans et al. 2016, Table 1 (feature matching)", "SGAN", 20, "83.23% (1677 ± 452 errors)"),
        ("Salimans et al. 2016, Table 1 (feature matching)", "SGAN", 50, "97.79% (221 ± 136 errors)"),
        ("Salimans et al. 2016, Table 1 (feature matching)", "SGAN", 100, "99.07% (93 ± 6.5 errors)"),
        ("Salimans et al. 2016, Table 1 (feature matching)", "SGAN", 200, "99.10% (90 ± 4.2 errors)"),
        ("Odena 2016, Table 1", "CNN", 1000, "96.5%"),
        ("Odena 2016, Table 1", "SGAN", 1000, "96.4%"),
        ("Odena 2016, Table 1", "CNN", 100, "89.5%"),
        ("Odena 2016, Table 1", "SGAN", 100, "92.8%"),
        ("Odena 2016, Table 1", "CNN", 50, "85.9%"),
        ("Odena 2016, Table 1", "SGAN", 50, "88.3%"),
    ],
    columns=["source", "method", "labels", "MNIST test accuracy"],
)
CITATIONS = [
    "Salimans, Goodfellow, Zaremba, Cheung, Radford, Chen. Improved Techniques for Training GANs. NeurIPS 2016. "
    "arXiv:1606.03498",
    "Odena. Semi-Supervised Learning with Generative Adversarial Networks. ICML 2016 workshop on Data-Efficient "
    "Machine Learning. arXiv:1606.01583",
]


class ReportError(ConfigError):
    """The report cannot be made from what was asked for (for example: no such experiment)."""


@dataclass
class Report:
    experiment: str
    runs: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    commentary: list[str] = field(default_factory=list)  # the analyst's findings, one paragraph each


def load_runs(experiment: str, sweep_run_id: str | None = None) -> pd.DataFrame:
    """Finished training runs of the experiment (of one sweep if given), one row per (method, variant,
    labels, seed): when a configuration was run more than once, the latest finished run counts."""
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
    runs = runs[runs["tags.method"].isin(["sgan", "cnn"])]
    if sweep_run_id:
        runs = runs[runs["run_id"].isin(sweep_members(sweep_run_id))]
    table = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "method": runs["tags.method"],
            "variant": runs["params.variant"],
            "labels": runs["params.labels"].astype(int),
            "seed": runs["params.seed"].astype(int),
            "accuracy": runs[f"metrics.{METRIC}"],
            "profile": runs["params.profile"],
            "num_epochs": runs["params.num_epochs"].astype(int),
            "steps_per_epoch": runs["params.steps_per_epoch"].astype(int),
            # runs logged before the precision option existed were float32
            "precision": runs.get("params.precision", pd.Series("float32", index=runs.index)).fillna("float32"),
            "dataset": runs["params.dataset"],
            "git_commit": runs["params.git_commit"],
            "tensorflow_version": runs["params.tensorflow_version"],
            "keras_version": runs["params.keras_version"],
            "mlflow_version": runs["params.mlflow_version"],
            "seconds": runs.get("metrics.wall_seconds"),
        }
    )
    protocol = ["profile", "num_epochs", "steps_per_epoch", "precision"]
    table = table.drop_duplicates(["method", "variant", "labels", "seed", *protocol], keep="first")
    return table.sort_values(["labels", "method", "seed"]).reset_index(drop=True)


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


def method_label(method: str, variant: str) -> str:
    return f"sgan ({variant})" if method == "sgan" else method


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy per method x label count: mean, sample std, n, min, max."""
    if runs.empty:
        return pd.DataFrame(columns=["method", "labels", "n", "mean", "std", "min", "max"])
    labelled = runs.assign(method=[method_label(m, v) for m, v in zip(runs.method, runs.variant, strict=True)])
    grouped = labelled.groupby(["method", "labels"])["accuracy"]
    table = grouped.agg(n="count", mean="mean", std="std", min="min", max="max").reset_index()
    return table.sort_values(["labels", "method"]).reset_index(drop=True)


def paired_differences(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """SGAN - CNN per label count over seeds present for both (same seed = same labeled subset):
    mean, t-based confidence interval, wins/losses/ties. With one pair the interval is undefined."""
    columns = ["labels", "n_pairs", "mean_diff", "ci_low", "ci_high", "wins", "losses", "ties"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    sgan = runs[runs.method == "sgan"].set_index(["labels", "seed"])["accuracy"]
    cnn = runs[runs.method == "cnn"].set_index(["labels", "seed"])["accuracy"]
    diff = (sgan - cnn).dropna()
    rows = []
    for labels in sorted(runs.labels.unique()):
        d = diff[diff.index.get_level_values("labels") == labels].to_numpy()
        n = len(d)
        mean = d.mean() if n else np.nan
        if n >= 2:
            half = stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
            low, high = mean - half, mean + half
        else:
            low = high = np.nan
        rows.append((labels, n, mean, low, high, int((d > 0).sum()), int((d < 0).sum()), int((d == 0).sum())))
    return pd.DataFrame(rows, columns=columns)


def _coverage_notes(runs: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    notes = []
    if runs.empty:
        return ["No finished SGAN or CNN runs were found, so there is nothing to compare yet."]
    for labels in sorted(runs.labels.unique()):
        methods = set(runs[runs.labels == labels].method)
        if methods != {"sgan", "cnn"}:
            (only,) = methods
            notes.append(f"At {labels} labels only {only} runs finished: no paired comparison there.")
    unpaired = paired[(paired.n_pairs == 1)]
    for labels in unpaired.labels:
        notes.append(f"At {labels} labels there is one seed pair: no confidence interval can be given.")
    protocols = runs[["profile", "num_epochs", "steps_per_epoch", "precision"]].drop_duplicates()
    if len(protocols) > 1:
        described = "; ".join(f"{p} {e}x{s} {f}" for p, e, s, f in protocols.itertuples(index=False))
        notes.append(f"The runs mix protocols ({described}) and are pooled below: compare with care.")
    return notes


def build_report(experiment: str, sweep_run_id: str | None = None) -> Report:
    runs = load_runs(experiment, sweep_run_id)
    summary, paired = summarize(runs), paired_differences(runs)
    return Report(experiment, runs, summary, paired, _coverage_notes(runs, paired))


# ---- plots ----------------------------------------------------------------------------------------


def _histories(run_ids: list[str], key: str) -> pd.DataFrame:
    client = mlflow.MlflowClient()
    rows = [(rid, m.step, m.value) for rid in run_ids for m in client.get_metric_history(rid, key)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


def plot_accuracy_vs_labels(summary: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in summary.groupby("method"):
        ax.errorbar(rows["labels"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=4, label=method)
    ax.set(xscale="log", xlabel="labeled examples", ylabel="final test accuracy", title="Test accuracy vs labels")
    ax.set_xticks(sorted(summary["labels"].unique()), labels=[str(v) for v in sorted(summary["labels"].unique())])
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_paired_difference(paired: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = paired.dropna(subset=["mean_diff"])
    yerr = np.vstack([rows.mean_diff - rows.ci_low, rows.ci_high - rows.mean_diff]).astype(float)
    ax.errorbar(rows["labels"], rows["mean_diff"] * 100, yerr=np.nan_to_num(yerr) * 100, marker="o", capsize=4)
    ax.axhline(0, color="grey", lw=1)
    ax.set(xscale="log", xlabel="labeled examples", ylabel="SGAN - CNN (accuracy points)")
    ax.set_title("Paired difference, mean and 95% CI")
    if len(rows):
        ax.set_xticks(list(rows["labels"]), labels=[str(v) for v in rows["labels"]])
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_learning_curves(runs: pd.DataFrame, path: Path) -> None:
    label_counts = sorted(runs.labels.unique())
    fig, axes = plt.subplots(1, len(label_counts), figsize=(4 * len(label_counts), 3.5), squeeze=False)
    history = _histories(list(runs.run_id), "test_accuracy").merge(runs[["run_id", "method", "variant", "labels"]])
    for ax, labels in zip(axes[0], label_counts, strict=True):
        for (method, variant), rows in history[history.labels == labels].groupby(["method", "variant"]):
            curve = rows.groupby("step")["value"].agg(["mean", "std"]).fillna(0)
            ax.plot(curve.index, curve["mean"], label=method_label(method, variant))
            ax.fill_between(curve.index, curve["mean"] - curve["std"], curve["mean"] + curve["std"], alpha=0.2)
        ax.set(title=f"{labels} labels", xlabel="epoch", ylabel="test accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_sgan_losses(runs: pd.DataFrame, path: Path) -> None:
    sgan = runs[runs.method == "sgan"]
    fig, axes = plt.subplots(1, len(SGAN_LOSSES), figsize=(4 * len(SGAN_LOSSES), 3.2), squeeze=False)
    for ax, key in zip(axes[0], SGAN_LOSSES, strict=True):
        history = _histories(list(sgan.run_id), key).merge(sgan[["run_id", "labels"]])
        for labels, rows in history.groupby("labels"):
            curve = rows.groupby("step")["value"].mean()
            ax.plot(curve.index, curve.values, label=f"{labels} labels")
        ax.set(title=key, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def save_generated_grid(runs: pd.DataFrame, path: Path) -> bool:
    """The last epoch's generated-image grid of the SGAN run with the most labels and lowest seed."""
    sgan = runs[runs.method == "sgan"].sort_values(["labels", "seed"], ascending=[False, True])
    for run_id in sgan.run_id:
        pngs = [
            f.path
            for f in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="images")
            if f.path.endswith(".png") and "+step+" in f.path
        ]
        if pngs:
            last = max(pngs, key=lambda p: int(p.split("+step+")[1].split("+")[0]))
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=last)
            path.write_bytes(Path(local).read_bytes())
            return True
    return False


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- documents ------------------------------------------------------------------------------------


def _fmt(table: pd.DataFrame, percent: list[str] = (), points: list[str] = ()) -> pd.DataFrame:
    shown = table.copy()
    for column in percent:
        shown[column] = [f"{v * 100:.2f}%" if pd.notna(v) else "n/a" for v in shown[column]]
    for column in points:
        shown[column] = [f"{v * 100:+.2f}" if pd.notna(v) else "n/a" for v in shown[column]]
    return shown


def _provenance(runs: pd.DataFrame) -> list[str]:
    if runs.empty:
        return []

    def values(column: str) -> str:
        return ", ".join(sorted(map(str, runs[column].unique())))

    variants = ", ".join(sorted(set(runs[runs.method == "sgan"].variant))) or "none"
    return [
        f"Dataset: {values('dataset')}; profile: {values('profile')}; epochs: {values('num_epochs')} "
        f"of {values('steps_per_epoch')} steps; precision: {values('precision')}; SGAN variant: {variants}.",
        f"Versions: TensorFlow {values('tensorflow_version')}, Keras {values('keras_version')}, "
        f"MLflow {values('mlflow_version')}; commit {values('git_commit')}.",
    ]


STATEMENT = (
    "Reported figure: **final test accuracy**: the classifier after the last epoch, evaluated on the whole "
    "held-out test split. No epoch, seed or run was selected by looking at test data."
)


def sections(report: Report) -> list[tuple[str, object]]:
    """The report as (kind, content) pairs, rendered to Markdown and HTML alike."""
    summary = _fmt(report.summary, percent=["mean", "min", "max"])
    summary["std"] = [f"{v * 100:.2f}" if pd.notna(v) else "n/a" for v in report.summary["std"]]
    paired = _fmt(report.paired, points=["mean_diff", "ci_low", "ci_high"])
    parts: list[tuple[str, object]] = [
        ("h1", f"SGAN vs CNN: {report.experiment}"),
        ("p", STATEMENT),
        *[("p", line) for line in _provenance(report.runs)],
        *[("p", f"**Note:** {note}") for note in report.notes],
        *([("h2", "Findings")] if report.commentary else []),
        *[("p", paragraph) for paragraph in report.commentary],
        ("h2", "Final test accuracy per method and label count"),
        ("p", "Mean, sample standard deviation (accuracy points), number of seeds, min and max."),
        ("table", summary),
        ("h2", "Paired difference SGAN - CNN"),
        (
            "p",
            "Per label count, over seeds where both methods finished (same seed = same labeled images). "
            "Differences in accuracy points; 95% confidence interval from the t distribution.",
        ),
        ("table", paired),
    ]
    for name, title in [
        ("accuracy_vs_labels.png", "Test accuracy vs labeled examples"),
        ("paired_difference.png", "Paired difference vs labeled examples"),
        ("learning_curves.png", "Learning curves (test accuracy per epoch, mean and ±1 std band)"),
        ("sgan_losses.png", "SGAN losses per epoch (mean over seeds)"),
        ("generated.png", "Generated images, last epoch of one SGAN run"),
    ]:
        if any(f.name == name for f in report.files):
            parts += [("h2", title), ("img", name)]
    parts += [
        ("h2", "Published numbers (not measured here)"),
        ("p", "For orientation only: other architectures, training lengths and protocols."),
        ("table", PUBLISHED),
        *[("p", citation) for citation in CITATIONS],
    ]
    return parts


def to_markdown(parts: list[tuple[str, object]]) -> str:
    out = []
    for kind, content in parts:
        if kind == "h1":
            out.append(f"# {content}")
        elif kind == "h2":
            out.append(f"## {content}")
        elif kind == "table":
            out.append(content.to_markdown(index=False) if len(content) else "_(no rows)_")
        elif kind == "img":
            out.append(f"![{content}]({content})")
        else:
            out.append(str(content))
    return "\n\n".join(out) + "\n"


def to_html(parts: list[tuple[str, object]], folder: Path) -> str:
    body = []
    for kind, content in parts:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "table":
            body.append(content.to_html(index=False, na_rep="n/a", border=0, classes="table"))
        elif kind == "img":  # embedded, so the page is whole wherever it is opened (MLflow UI included)
            data = base64.b64encode((folder / content).read_bytes()).decode()
            body.append(f'<img alt="{content}" src="data:image/png;base64,{data}">')
        else:
            text = html.escape(str(content))
            while "**" in text:
                text = text.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
            body.append(f"<p>{text}</p>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(parts[0][1])}</title><style>{style}</style>\n"
        + "\n".join(body)
    )


def write_report(report: Report, folder: Path) -> list[Path]:
    """Write tables, plots, report.md and report.html into `folder`; return what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    report.summary.to_csv(folder / "summary.csv", index=False)
    report.paired.to_csv(folder / "paired.csv", index=False)
    report.runs.to_csv(folder / "runs.csv", index=False)
    files = [folder / "summary.csv", folder / "paired.csv", folder / "runs.csv"]
    if not report.runs.empty:
        plots = {
            "accuracy_vs_labels.png": lambda p: plot_accuracy_vs_labels(report.summary, p),
            "paired_difference.png": lambda p: plot_paired_difference(report.paired, p),
            "learning_curves.png": lambda p: plot_learning_curves(report.runs, p),
        }
        if (report.runs.method == "sgan").any():
            plots["sgan_losses.png"] = lambda p: plot_sgan_losses(report.runs, p)
        for name, draw in plots.items():
            draw(folder / name)
            files.append(folder / name)
        if save_generated_grid(report.runs, folder / "generated.png"):
            files.append(folder / "generated.png")
    report.files = files
    parts = sections(report)
    (folder / "report.md").write_text(to_markdown(parts))
    (folder / "report.html").write_text(to_html(parts, folder))
    return [*files, folder / "report.md", folder / "report.html"]


def read_commentary(path: Path | None) -> list[str]:
    """Paragraphs (separated by blank lines) of a text file written by whoever ran the benchmark."""
    if path is None:
        return []
    if not path.is_file():
        raise ReportError(f"commentary file {path} does not exist")
    return [" ".join(p.split()) for p in path.read_text().split("\n\n") if p.strip()]


def make_report(
    experiment: str,
    out_dir: Path,
    sweep_run_id: str | None = None,
    log_to_run: str | None = None,
    commentary: Path | None = None,
) -> Report:
    """Build, write and log the report: into `log_to_run` if given (a sweep's parent), else a new
    `report` run in the same experiment, so it is browsable in the MLflow UI."""
    findings = read_commentary(commentary)  # a wrong path fails before any work
    report = build_report(experiment, sweep_run_id)
    report.commentary = findings
    write_report(report, out_dir)
    if log_to_run:
        mlflow.MlflowClient().log_artifacts(log_to_run, str(out_dir), "report")
    else:
        # under `mlflow run -e report` the run exists already (MLFLOW_RUN_ID) and is the report run
        launched = os.environ.get("MLFLOW_RUN_ID")
        experiment_id = None if launched else mlflow.get_experiment_by_name(experiment).experiment_id
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"report-{experiment}", tags={"report": "true"}):
            mlflow.log_params({"sweep_run_id": sweep_run_id or "", "n_runs": len(report.runs)})
            mlflow.log_artifacts(str(out_dir), "report")
    return report
