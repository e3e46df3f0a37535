"""Report numbers against values computed independently from runs with known metrics."""

import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.report import build_report, make_report

from .conftest import ROOT, cli, refused

# final test accuracy per (method, labels, seed): SGAN wins at 50, loses once at 1000
KNOWN = {
    ("sgan", 50, 0): 0.90,
    ("sgan", 50, 1): 0.88,
    ("sgan", 50, 2): 0.93,
    ("cnn", 50, 0): 0.80,
    ("cnn", 50, 1): 0.83,
    ("cnn", 50, 2): 0.79,
    ("sgan", 1000, 0): 0.970,
    ("sgan", 1000, 1): 0.965,
    ("sgan", 1000, 2): 0.972,
    ("cnn", 1000, 0): 0.968,
    ("cnn", 1000, 1): 0.967,
    ("cnn", 1000, 2): 0.960,
}
T_975_DF2 = 4.302652729749464  # Student t quantile, 0.975, 2 degrees of freedom (from tables)


def log_known_runs(experiment: str, known=KNOWN, status="FINISHED", variant="stacked", **params) -> None:
    mlflow.set_experiment(experiment)
    for (method, labels, seed), accuracy in known.items():
        with mlflow.start_run(run_name=f"{method}-L{labels}-s{seed}", tags={"method": method}):
            mlflow.log_params(
                {
                    **params,
                    "variant": variant if method == "sgan" else "none",
                    "labels": labels,
                    "seed": seed,
                    "profile": "quick",
                    "num_epochs": 3,
                    "steps_per_epoch": 100,
                    "dataset": "mnist",
                    "git_commit": "abc123",
                    "tensorflow_version": "2.x",
                    "keras_version": "3.x",
                    "mlflow_version": "3.x",
                }
            )
            for epoch, fraction in enumerate([0.8, 0.9, 1.0], start=1):
                mlflow.log_metric("test_accuracy", accuracy * fraction, step=epoch)
                if method == "sgan":
                    for key in (
                        "loss_supervised",
                        "loss_unsupervised_real",
                        "loss_unsupervised_fake",
                        "loss_generator",
                    ):
                        mlflow.log_metric(key, 1.0 / epoch, step=epoch)
            mlflow.log_metric("final_test_accuracy", accuracy)
            mlflow.log_metric("final_test_accuracy_ema", accuracy + 0.001)
            mlflow.log_metric("wall_seconds", 10.0)
            if status != "FINISHED":
                mlflow.end_run(status)


def test_summary_and_paired_numbers_match_an_independent_computation(store):
    log_known_runs("known")
    report = build_report("known")
    for (arm, labels), rows in report.summary.groupby(["arm", "labels"]):
        name = "sgan" if arm.startswith("sgan") else "cnn"
        values = np.array([KNOWN[(name, labels, s)] for s in range(3)])
        (row,) = rows.itertuples()
        assert row.n == 3
        assert row.mean == pytest.approx(values.mean())
        assert row.std == pytest.approx(values.std(ddof=1))
        assert (row.min, row.max) == (values.min(), values.max())
    assert len(report.paired) == 2
    for row in report.paired.itertuples():
        assert (row.sgan_arm, row.baseline_arm, row.dataset, row.protocol) == (
            "sgan stacked",
            "cnn",
            "mnist",
            "quick 3x100",
        )
        diff = np.array([KNOWN[("sgan", row.labels, s)] - KNOWN[("cnn", row.labels, s)] for s in range(3)])
        half = T_975_DF2 * diff.std(ddof=1) / np.sqrt(3)
        assert row.n_pairs == 3
        assert row.mean_diff == pytest.approx(diff.mean())
        assert (row.ci_low, row.ci_high) == (pytest.approx(diff.mean() - half), pytest.approx(diff.mean() + half))
        assert (row.wins, row.losses, row.ties) == ((diff > 0).sum(), (diff < 0).sum(), 0)
    assert report.notes == []
    ranking = report.ranking[report.ranking.labels == 50]
    assert list(ranking.arm) == ["sgan stacked", "cnn"] and list(ranking["rank"]) == [1, 2]
    ema = build_report("known", metric="ema")
    assert ema.summary["mean"].to_numpy() == pytest.approx(report.summary["mean"].to_numpy() + 0.001)
    assert len(report.ema_effect) == 4 and set(report.ema_effect.n) == {3}
    assert report.ema_effect.mean_diff.to_numpy() == pytest.approx(np.full(4, 0.001))
    assert set(report.ema_effect.wins) == {3}


def test_report_files_state_what_is_reported_and_keep_published_numbers_apart(store, tmp_path):
    log_known_runs("known")
    out = tmp_path / "out"
    (tmp_path / "findings.txt").write_text("First finding,\nwrapped.\n\nSecond finding.\n")
    make_report("known", out, commentary=tmp_path / "findings.txt")
    expected = {
        "report.md",
        "report.html",
        "summary.csv",
        "paired.csv",
        "runs.csv",
        "accuracy_vs_labels.png",
        "paired_difference.png",
        "learning_curves.png",
        "sgan_losses.png",
    }
    assert expected <= {p.name for p in out.iterdir()}
    markdown = (out / "report.md").read_text()
    assert "No epoch, hyper-parameter, seed or run was chosen by test accuracy" in markdown
    assert "Data: mnist; protocols: quick 3x100; arms: cnn, sgan stacked." in markdown
    assert "`final_test_accuracy`" in markdown and "generous baseline" in markdown
    assert "commits abc123" in markdown
    assert markdown.index("Paired differences") < markdown.index("Published numbers (not measured here)")
    assert "arXiv:1606.03498" in markdown
    assert "## Findings\n\nFirst finding, wrapped.\n\nSecond finding." in markdown
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    body = html.split("</style>", 1)[1]  # rendered Markdown: no raw backticks, bold marks or table pipes
    assert "`" not in body and "**" not in body and "|---" not in body.replace(" ", "")
    assert "<code>final_test_accuracy</code>" in body and body.count("<table>") >= 2
    (run,) = mlflow.search_runs(experiment_names=["known"], filter_string="tags.report = 'true'", output_format="list")
    logged = {f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="report")}
    assert "report/report.md" in logged and "report/summary.csv" in logged


def test_val_selected_reports_each_run_at_its_best_validation_epoch(store, tmp_path):
    """Every arm stopped early on the validation split: the test accuracy at the first epoch of best validation
    accuracy, from the logged histories (test accuracy is KNOWN x 0.8, 0.9, 1.0 over epochs 1-3)."""
    at_50 = {key: value for key, value in KNOWN.items() if key[1] == 50}
    log_known_runs("early", at_50)
    validation = {"sgan": [0.7, 0.9, 0.9], "cnn": [0.9, 0.8, 0.7]}  # best: epoch 2 (the first of a tie), epoch 1
    client = mlflow.MlflowClient()
    for run in mlflow.search_runs(experiment_names=["early"], output_format="list"):
        method, seed = run.data.tags["method"], int(run.data.params["seed"])
        if (method, seed) != ("cnn", 2):  # logged before the validation split existed: no figure
            for epoch, value in enumerate(validation[method], start=1):
                client.log_metric(run.info.run_id, "val_accuracy", value, step=epoch)
    report = build_report("early", metric="val_selected")
    runs = report.runs.set_index(["method", "seed"])
    for seed in range(3):
        assert runs.loc[("sgan", seed), "val_selected"] == pytest.approx(0.9 * KNOWN[("sgan", 50, seed)])
        assert runs.loc[("sgan", seed), "val_selected_epoch"] == 2
    assert runs.loc[("cnn", 0), "val_selected"] == pytest.approx(0.8 * KNOWN[("cnn", 50, 0)])
    assert np.isnan(runs.loc[("cnn", 2), "val_selected"])
    (pair,) = report.paired.itertuples()
    expected = [0.9 * KNOWN[("sgan", 50, s)] - 0.8 * KNOWN[("cnn", 50, s)] for s in (0, 1)]
    assert pair.n_pairs == 2 and pair.mean_diff == pytest.approx(np.mean(expected))
    assert any("1 runs have no `test_accuracy at the best val_accuracy`" in note for note in report.notes)
    assert report.early_summary.empty  # the main tables are already early-stopped
    make_report("early", tmp_path / "out", metric="val_selected")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "every arm is stopped early on the validation split" in markdown and "generous baseline" not in markdown
    assert "## Every arm stopped early" not in markdown
    # the last-epoch report shows the early-stopped comparison too, in a section of its own
    final = build_report("early")
    (sgan,) = final.early_summary[final.early_summary.arm.str.startswith("sgan")].itertuples()
    assert sgan.n == 3 and sgan.mean_epoch == 2
    assert sgan.mean == pytest.approx(np.mean([0.9 * KNOWN[("sgan", 50, s)] for s in range(3)]))
    assert final.early_paired.mean_diff.tolist() == pytest.approx([np.mean(expected)])
    assert final.paired.mean_diff.tolist() == pytest.approx(
        [np.mean([KNOWN[("sgan", 50, s)] - KNOWN[("cnn", 50, s)] for s in range(3)])]
    )
    make_report("early", tmp_path / "last")
    markdown = (tmp_path / "last" / "report.md").read_text()
    assert "## Every arm stopped early on the validation split" in markdown
    assert {"early_stopped_summary.csv", "early_stopped_paired.csv"} <= {p.name for p in (tmp_path / "last").iterdir()}


def test_unpaired_label_counts_and_failed_runs_give_notes_not_crashes(store):
    log_known_runs("partial", {k: v for k, v in KNOWN.items() if not (k[0] == "cnn" and k[1] == 1000)})
    log_known_runs("partial", {("cnn", 1000, 0): 0.5}, status="FAILED")  # failed runs are ignored
    report = build_report("partial")
    note = "At 1000 labels (mnist, quick 3x100, mlm networks) only sgan stacked finished: no paired comparison there."
    assert note in report.notes
    assert 1000 not in set(report.paired.labels)
    assert report.summary.n.sum() == 9


def test_runs_of_different_protocols_are_kept_apart_and_reruns_are_named(store):
    log_known_runs("mixed", {("cnn", 50, 0): 0.80})
    log_known_runs("mixed", {("cnn", 50, 0): 0.82})  # a rerun of the same configuration: the latest counts
    first = mlflow.search_runs(experiment_names=["mixed"], order_by=["attributes.start_time ASC"]).run_id.iloc[0]
    mlflow.set_experiment("mixed")
    with mlflow.start_run(tags={"method": "cnn"}):
        mlflow.log_params(
            {
                "variant": "none",
                "labels": 50,
                "seed": 0,
                "profile": "paper",
                "num_epochs": 20,
                "steps_per_epoch": 600,
                "dataset": "mnist",
                "git_commit": "abc",
                "precision": "bfloat16",
                "tensorflow_version": "2.x",
                "keras_version": "3.x",
                "mlflow_version": "3.x",
            }
        )
        mlflow.log_metric("final_test_accuracy", 0.9)
    report = build_report("mixed")
    assert sorted(report.runs["final"]) == [0.82, 0.9]
    assert set(report.runs.arm) == {"cnn", "cnn bfloat16"} and set(report.runs.protocol) == {
        "quick 3x100",
        "paper 20x600",
    }
    assert list(report.superseded.run_id) == [first]
    assert any("2 data, protocol and architecture combinations" in note for note in report.notes), report.notes
    assert any(f"Superseded: {first}." in note for note in report.notes), report.notes


@pytest.mark.slow
def test_an_experiment_without_finished_runs_gives_a_clear_message(store, tmp_path):
    mlflow.create_experiment("empty")
    result = cli("report", "--experiment", "empty", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "No finished SGAN or baseline runs were found" in result.stdout
    assert "nothing to compare yet" in (tmp_path / "out" / "report.md").read_text()
    missing = refused("report", "--experiment", "no-such-experiment", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "experiment 'no-such-experiment' does not exist" in missing.stderr
    metric = refused("report", "--experiment", "empty", "--metric", "best", "--out", str(tmp_path / "y"))
    assert metric.returncode == 2 and "metric='best' is not one of final, ema" in metric.stderr


@pytest.mark.slow
def test_report_works_against_a_real_mlflow_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(mlflow_server)
    log_known_runs("served")
    result = cli("report", "--tracking-uri", mlflow_server, "--experiment", "served", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    sgan50 = summary[(summary.arm == "sgan stacked") & (summary.labels == 50)].iloc[0]
    assert sgan50["mean"] == pytest.approx(np.mean([0.90, 0.88, 0.93]))
    (run,) = mlflow.search_runs(experiment_names=["served"], filter_string="tags.report = 'true'", output_format="list")
    logged = {f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="report")}
    assert "report/report.html" in logged


def test_a_mixed_experiment_pairs_each_arm_with_each_baseline_and_never_pools(store):
    """Two SGAN variants and two precisions, two seeds each: every (SGAN arm, baseline arm) pair has
    exactly the two seed pairs of its own arms, with the interval of scipy's paired t test."""
    rng = np.random.default_rng(3)
    truth = {}
    for precision in ("float32", "bfloat16"):
        for variant in ("stacked", "two_head"):
            known = {("sgan", 100, seed): float(rng.uniform(0.8, 0.95)) for seed in (0, 1)}
            log_known_runs("arms", known, variant=variant, precision=precision)
            truth[("sgan " + variant + ("" if precision == "float32" else " bfloat16"))] = known
        known = {("cnn", 100, seed): float(rng.uniform(0.7, 0.8)) for seed in (0, 1)}
        log_known_runs("arms", known, precision=precision)
        truth["cnn" + ("" if precision == "float32" else " bfloat16")] = known
    report = build_report("arms")
    assert set(report.summary.n) == {2} and len(report.summary) == 6
    assert len(report.paired) == 4 * 2  # four SGAN arms x two baseline arms
    for row in report.paired.itertuples():
        a = np.array([truth[row.sgan_arm][("sgan", 100, s)] for s in (0, 1)])
        b = np.array([truth[row.baseline_arm][("cnn", 100, s)] for s in (0, 1)])
        expected = stats.ttest_rel(a, b)
        low, high = expected.confidence_interval(0.95)
        assert row.n_pairs == 2
        assert row.mean_diff == pytest.approx((a - b).mean())
        assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))
        assert row.p_value == pytest.approx(expected.pvalue)
    assert report.notes == []
    # the other three SGAN arms each against the stacked float32 one, paired by seed
    assert sorted(report.contrasts.arm) == ["sgan stacked bfloat16", "sgan two_head", "sgan two_head bfloat16"]
    for row in report.contrasts.itertuples():
        a = np.array([truth[row.arm][("sgan", 100, s)] for s in (0, 1)])
        b = np.array([truth["sgan stacked"][("sgan", 100, s)] for s in (0, 1)])
        low, high = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (row.reference_arm, row.n_pairs) == ("sgan stacked", 2)
        assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_the_report_never_imports_tensorflow():
    code = (
        "import sys, pipeline.report, pipeline.cli\n"
        "sys.exit(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_two_architectures_are_compared_each_on_its_own_networks(store):
    """Methods are compared on the same networks only: an SGAN of one architecture is never paired
    with a baseline of the other, though both share data, protocol, labels and seeds."""
    log_known_runs("nets", KNOWN)
    shifted = {key: value - (0.05 if key[0] == "sgan" else 0.0) for key, value in KNOWN.items()}
    log_known_runs("nets", shifted, architecture="gans_in_action")
    report = build_report("nets")
    assert len(report.paired) == 4 and set(report.paired.n_pairs) == {3}
    for row in report.paired.itertuples():
        suffix = " gans_in_action" if row.architecture == "gans_in_action" else ""
        assert (row.sgan_arm, row.baseline_arm) == ("sgan stacked" + suffix, "cnn" + suffix)
        truth = shifted if suffix else KNOWN
        diffs = [truth[("sgan", row.labels, s)] - truth[("cnn", row.labels, s)] for s in range(3)]
        assert row.mean_diff == pytest.approx(np.mean(diffs))
    assert any("2 data, protocol and architecture combinations" in note for note in report.notes)


@pytest.mark.parametrize("report", ["mnist-paper", "mnist-quick"])
def test_the_plotted_seed_differences_are_the_pairs_behind_the_paired_table(report):
    from pipeline.report.runs import GROUP
    from pipeline.report.statistics import paired_differences, seed_differences

    runs = pd.read_csv(ROOT / "reports" / report / "runs.csv")
    paired, seeds = paired_differences(runs), seed_differences(runs)
    by_pair = seeds.groupby([*GROUP, "labels", "sgan_arm", "baseline_arm"])["diff"]
    merged = paired.merge(
        by_pair.agg(["mean", "size"]).reset_index(), on=[*GROUP, "labels", "sgan_arm", "baseline_arm"]
    )
    assert len(merged) == len(paired) > 0
    np.testing.assert_allclose(merged["mean"], merged["mean_diff"])
    assert (merged["size"] == merged["n_pairs"]).all()


def test_a_written_report_is_replotted_from_its_runs_csv_and_rendered_again(tmp_path, capsys):
    import shutil

    from pipeline.report.replot import main as replot

    folder = tmp_path / "mnist-paper"
    shutil.copytree(ROOT / "reports" / "mnist-paper", folder)
    before = (folder / "accuracy_vs_labels.png").stat().st_mtime_ns
    (folder / "report.html").write_text("stale")
    assert replot([str(folder)]) == 0
    assert (folder / "accuracy_vs_labels.png").stat().st_mtime_ns != before
    page = (folder / "report.html").read_text()
    assert "<table>" in page and page.count("data:image/png;base64,") >= 2 and "|---" not in page
    assert replot([str(tmp_path)]) == 2 and "no runs.csv, not a written report" in capsys.readouterr().err
