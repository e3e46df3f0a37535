"""What the comparison report says, in order, as document blocks: the statement of what is
reported and how it was chosen, provenance, notes, findings, tables, figures, published numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.report.runs import METRICS

HERE = Path(__file__).parent
PUBLISHED = HERE / "published.csv"  # numbers from papers and tutorials: data, never mixed with measurements
CITATIONS = HERE / "citations.txt"

FIGURES = [
    ("accuracy_vs_labels.png", "Test accuracy vs labeled examples"),
    ("paired_difference.png", "Paired differences vs labeled examples"),
    ("learning_curves.png", "Learning curves (test accuracy per epoch, mean and ±1 std band)"),
    ("sgan_losses.png", "SGAN losses per epoch (mean over seeds)"),
    ("generated.png", "Generated images, last epoch of one SGAN run"),
]


def statement(metric: str) -> str:
    column, what = METRICS[metric]
    if metric == "val_selected":
        epochs = (
            "Every run reports its epoch of best validation accuracy (the first on ties), read from its per-epoch "
            "history: every arm is stopped early on the validation split, as `cnn_tuned` always is, so the SGAN "
            "too gains what a drifting or overfitting last epoch would cost it."
        )
    else:
        epochs = (
            "SGAN, `cnn` and `cnn_source` runs report their last epoch; `cnn_tuned` its epoch of best validation "
            "accuracy. It is a generous baseline: it uses validation labels that the SGAN never sees, so an SGAN "
            "gain that survives it is robust."
        )
    return (
        f"Reported figure: **`{column}`**, the accuracy of the {what} on the whole held-out test split. {epochs} "
        "`cnn_tuned` trains with a recipe (augmentation, weight decay; Adam at 1e-3, beta1 0.9; up to three times "
        "the protocol's epochs) chosen by a search on the validation split; `cnn_source` is the baseline as the "
        "architecture's source trains it (for GANs in Action 30 passes of batch 32 over the labeled images, Adam "
        "with Keras' defaults). The validation split is a fixed, class-stratified set of training images (5,000 "
        "for MNIST), never labeled for training and not in the unlabeled pool. No epoch, hyper-parameter, seed or "
        "run was chosen by test accuracy."
    )


def provenance(runs: pd.DataFrame) -> list[str]:
    if runs.empty:
        return []

    def values(column: str) -> str:
        return ", ".join(sorted(map(str, runs[column].unique())))

    return [
        f"Data: {values('dataset')}; protocols: {values('protocol')}; arms: {values('arm')}.",
        f"Versions: TensorFlow {values('tensorflow_version')}, Keras {values('keras_version')}, "
        f"MLflow {values('mlflow_version')}; commits {values('git_commit')}.",
    ]


def _percent(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    shown = table.copy()
    for column in columns:
        shown[column] = [f"{v * 100:.2f}%" if pd.notna(v) else "n/a" for v in shown[column]]
    return shown


def _points(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    shown = table.copy()
    for column in columns:
        shown[column] = [f"{v * 100:+.2f}" if pd.notna(v) else "n/a" for v in shown[column]]
    return shown


def _accuracies(table: pd.DataFrame, columns: tuple[str, ...] = ("mean", "min", "max")) -> pd.DataFrame:
    """A table of accuracies as shown: percentages, and the standard deviation in points."""
    shown = _percent(table, list(columns))
    shown["std"] = [f"{v * 100:.2f}" if pd.notna(v) else "n/a" for v in table["std"]]
    return shown


def _differences(table: pd.DataFrame) -> pd.DataFrame:
    """A table of paired differences as shown: signed points and a short p-value."""
    shown = _points(table, ["mean_diff", "ci_low", "ci_high"])
    shown["p_value"] = [f"{v:.3g}" if pd.notna(v) else "n/a" for v in table["p_value"]]
    return shown


def blocks(report, figures: list[str]) -> list[tuple[str, object]]:
    """`report` is a `pipeline.report.Report`; `figures` the names of the figure files written."""
    summary, ranking = _accuracies(report.summary), _accuracies(report.ranking, ("mean",))
    paired, ema, contrasts = (_differences(t) for t in (report.paired, report.ema_effect, report.contrasts))
    early_summary = report.early_summary
    if not early_summary.empty:
        early_summary = _accuracies(early_summary).assign(mean_epoch=[f"{v:.1f}" for v in early_summary.mean_epoch])
    parts: list[tuple[str, object]] = [
        ("h1", f"SGAN vs supervised baselines: {report.experiment}"),
        ("p", statement(report.metric)),
        *[("p", line) for line in provenance(report.runs)],
        *[("p", f"**Note:** {note}") for note in report.notes],
        *([("h2", "Findings")] if report.commentary else []),
        *[("p", paragraph) for paragraph in report.commentary],
        ("h2", "Test accuracy per arm and label count"),
        (
            "p",
            "An arm is a method's whole recipe (method, SGAN variant, generator loss, augmentation, precision, "
            "architecture); runs are grouped by data, protocol and architecture (the networks). Mean, sample "
            "standard deviation (accuracy points), number of seeds, min, max.",
        ),
        ("table", summary),
        ("h2", "Paired differences: each SGAN arm minus each baseline arm"),
        (
            "p",
            "Per data, protocol, architecture and label count, over the seeds both arms finished (same seed = same "
            "labeled images). Differences in accuracy points; 95% confidence interval and p-value of the paired t test "
            "(`scipy.stats.ttest_rel`). Two arms are never pooled.",
        ),
        ("table", paired),
        *(
            [
                ("h2", "Every arm stopped early on the validation split"),
                (
                    "p",
                    "The same comparison with every run at its epoch of best validation accuracy (the first of "
                    "equals: `cnn_tuned`'s own choice), read from its per-epoch history, so that no arm is judged "
                    "at a last epoch that drifted while another is judged at its best validation epoch. Test "
                    "accuracy per arm with the mean epoch chosen, then the paired differences as above.",
                ),
                ("table", early_summary),
                ("table", _differences(report.early_paired)),
            ]
            if not report.early_summary.empty
            else []
        ),
        *(
            [
                ("h2", "SGAN arms against the stacked float32 SGAN"),
                (
                    "p",
                    "What a discriminator variant, the generator loss or the precision changes: each other SGAN arm "
                    "minus `sgan stacked` (non-saturating generator loss, float32) of the same data, protocol, "
                    "architecture and label count, paired by seed as above.",
                ),
                ("table", contrasts),
            ]
            if not report.contrasts.empty
            else []
        ),
        ("h2", "Arms ranked per label count"),
        ("p", "By mean test accuracy; a rank says nothing of significance (see the paired table)."),
        ("table", ranking),
        ("h2", "Moving average (EMA) minus raw classifier"),
        (
            "p",
            "Per arm and label count, over the same runs: what evaluating the moving average of the weights "
            "(decay 0.999 with warm-up) changes. Accuracy points; 95% interval of the paired t test.",
        ),
        ("table", ema),
    ]
    for name, title in FIGURES:
        if name in figures:
            parts += [("h2", title), ("img", name)]
    parts += [
        ("h2", "Published numbers (not measured here)"),
        ("p", "For orientation only: other architectures, training lengths and protocols."),
        ("table", pd.read_csv(PUBLISHED)),
        *[("p", line) for line in CITATIONS.read_text().splitlines() if line.strip()],
    ]
    return parts
