"""The report's figures, drawn with matplotlib from the tables and the runs' metric histories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator  # noqa: E402

from pipeline.report.runs import GROUP, metric_histories  # noqa: E402

SGAN_LOSSES = ["loss_supervised", "loss_unsupervised_real", "loss_unsupervised_fake", "loss_generator"]


def _line_name(row, several_groups: bool) -> str:
    return f"{row.arm} ({row.dataset}, {row.protocol})" if several_groups else row.arm


def _label_axis(ax, values) -> None:
    ticks = sorted(set(values))
    ax.set_xscale("log")
    ax.set_xticks(ticks, labels=[str(v) for v in ticks])
    ax.xaxis.set_minor_locator(NullLocator())  # only the label counts measured, not log-scale minor ticks
    ax.grid(alpha=0.3)


def accuracy_vs_labels(summary: pd.DataFrame, runs: pd.DataFrame, metric: str, path: Path, ylabel: str) -> None:
    """Each arm's mean ± 1 std over seeds, and every seed's run as a dot (with 3 to 10 seeds, the points say
    more than the bar)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    several = len(summary[GROUP].drop_duplicates()) > 1
    for key, rows in summary.groupby([*GROUP, "arm"]):
        name = _line_name(rows.iloc[0], several)
        line = ax.errorbar(rows["labels"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=4, label=name)
        seeds = runs.set_index([*GROUP, "arm"]).loc[[key]].dropna(subset=[metric])
        ax.scatter(seeds["labels"], seeds[metric], s=10, alpha=0.5, color=line[0].get_color(), zorder=3)
    ax.set(xlabel="labeled examples", ylabel=ylabel, title="Test accuracy vs labels (mean ± 1 std; dots: seeds)")
    _label_axis(ax, summary["labels"])
    ax.legend(fontsize=8)
    _save(fig, path)


def paired_difference(paired: pd.DataFrame, seeds: pd.DataFrame, path: Path) -> None:
    """Each comparison's mean difference and 95% interval, and each seed's own difference as a dot."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rows = paired.dropna(subset=["mean_diff"])
    several = len(rows[GROUP].drop_duplicates()) > 1
    comparisons = list(rows.groupby([*GROUP, "sgan_arm", "baseline_arm"]))
    for i, (key, group) in enumerate(comparisons):
        offset = 1 + 0.04 * (i - (len(comparisons) - 1) / 2)  # side by side on the log axis
        low = (group.mean_diff - group.ci_low).fillna(0)
        high = (group.ci_high - group.mean_diff).fillna(0)
        name = f"{key[-2]} - {key[-1]}" + (f" ({key[0]}, {key[1]})" if several else "")  # key: *GROUP, arms
        line = ax.errorbar(
            group["labels"] * offset,
            group["mean_diff"] * 100,
            yerr=np.vstack([low, high]) * 100,
            marker="o",
            capsize=4,
            label=name,
        )
        own = seeds.set_index([*GROUP, "sgan_arm", "baseline_arm"]).loc[[key]] if len(seeds) else seeds
        ax.scatter(own["labels"] * offset, own["diff"] * 100, s=10, alpha=0.5, color=line[0].get_color(), zorder=3)
    ax.axhline(0, color="grey", lw=1)
    title = "Paired difference, mean and 95% CI (dots: seeds)"
    ax.set(xlabel="labeled examples", ylabel="difference (accuracy points)", title=title)
    if len(rows):
        _label_axis(ax, rows["labels"])
        ax.legend(fontsize=8)
    _save(fig, path)


def learning_curves(runs: pd.DataFrame, path: Path, key: str) -> None:
    label_counts = sorted(runs.labels.unique())
    fig, axes = plt.subplots(1, len(label_counts), figsize=(4.2 * len(label_counts), 3.6), squeeze=False)
    history = metric_histories(list(runs.run_id), key).merge(runs[["run_id", "arm", *GROUP, "labels"]])
    several = len(runs[GROUP].drop_duplicates()) > 1
    for ax, labels in zip(axes[0], label_counts, strict=True):
        for _, rows in history[history.labels == labels].groupby([*GROUP, "arm"]):
            curve = rows.groupby("step")["value"].agg(["mean", "std"]).fillna(0)
            ax.plot(curve.index, curve["mean"], label=_line_name(rows.iloc[0], several))
            ax.fill_between(curve.index, curve["mean"] - curve["std"], curve["mean"] + curve["std"], alpha=0.2)
        ax.set(title=f"{labels} labels", xlabel="epoch", ylabel=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def sgan_losses(runs: pd.DataFrame, path: Path) -> None:
    sgan = runs[runs.method == "sgan"]
    fig, axes = plt.subplots(1, len(SGAN_LOSSES), figsize=(4 * len(SGAN_LOSSES), 3.2), squeeze=False)
    for ax, key in zip(axes[0], SGAN_LOSSES, strict=True):
        history = metric_histories(list(sgan.run_id), key).merge(sgan[["run_id", "arm", "labels"]])
        for (arm, labels), rows in history.groupby(["arm", "labels"]):
            curve = rows.groupby("step")["value"].mean()
            ax.plot(curve.index, curve.values, label=f"{arm}, {labels} labels")
        ax.set(title=key, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
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
