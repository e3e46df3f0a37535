"""Report numbers against values computed independently from runs with known metrics."""

import socket
import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from pipeline.report import build_report, make_report

from .conftest import cli

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


def log_known_runs(experiment: str, known=KNOWN, status="FINISHED") -> None:
    mlflow.set_experiment(experiment)
    for (method, labels, seed), accuracy in known.items():
        with mlflow.start_run(run_name=f"{method}-L{labels}-s{seed}", tags={"method": method}):
            mlflow.log_params(
                {
                    "variant": "stacked" if method == "sgan" else "none",
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
            mlflow.log_metric("wall_seconds", 10.0)
            if status != "FINISHED":
                mlflow.end_run(status)


def test_summary_and_paired_numbers_match_an_independent_computation(store):
    log_known_runs("known")
    report = build_report("known")
    for (method, labels), rows in report.summary.groupby(["method", "labels"]):
        name = "sgan" if method.startswith("sgan") else "cnn"
        values = np.array([KNOWN[(name, labels, s)] for s in range(3)])
        (row,) = rows.itertuples()
        assert row.n == 3
        assert row.mean == pytest.approx(values.mean())
        assert row.std == pytest.approx(values.std(ddof=1))
        assert (row.min, row.max) == (values.min(), values.max())
    for row in report.paired.itertuples():
        diff = np.array([KNOWN[("sgan", row.labels, s)] - KNOWN[("cnn", row.labels, s)] for s in range(3)])
        half = T_975_DF2 * diff.std(ddof=1) / np.sqrt(3)
        assert row.n_pairs == 3
        assert row.mean_diff == pytest.approx(diff.mean())
        assert (row.ci_low, row.ci_high) == (pytest.approx(diff.mean() - half), pytest.approx(diff.mean() + half))
        assert (row.wins, row.losses, row.ties) == ((diff > 0).sum(), (diff < 0).sum(), 0)
    assert report.notes == []


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
    assert "final test accuracy" in markdown and "No epoch, seed or run was selected" in markdown
    assert "profile: quick; epochs: 3 of 100 steps; precision: float32" in markdown
    assert "commit abc123" in markdown
    assert markdown.index("Paired difference") < markdown.index("Published numbers (not measured here)")
    assert "arXiv:1606.03498" in markdown
    assert "## Findings\n\nFirst finding, wrapped.\n\nSecond finding." in markdown
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    (run,) = mlflow.search_runs(experiment_names=["known"], filter_string="tags.report = 'true'", output_format="list")
    logged = {f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="report")}
    assert "report/report.md" in logged and "report/summary.csv" in logged


def test_unpaired_label_counts_and_failed_runs_give_notes_not_crashes(store):
    log_known_runs("partial", {k: v for k, v in KNOWN.items() if not (k[0] == "cnn" and k[1] == 1000)})
    log_known_runs("partial", {("cnn", 1000, 0): 0.5}, status="FAILED")  # failed runs are ignored
    report = build_report("partial")
    assert "At 1000 labels only sgan runs finished: no paired comparison there." in report.notes
    row = report.paired.set_index("labels").loc[1000]
    assert row.n_pairs == 0 and np.isnan(row.mean_diff)
    assert report.summary.n.sum() == 9


def test_runs_of_different_protocols_are_kept_apart_from_duplicates_and_flagged(store):
    log_known_runs("mixed", {("cnn", 50, 0): 0.80})
    log_known_runs("mixed", {("cnn", 50, 0): 0.82})  # a rerun of the same configuration: the latest counts
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
    assert sorted(report.runs.accuracy) == [0.82, 0.9]
    assert any("mix protocols" in note and "paper 20x600 bfloat16" in note for note in report.notes), report.notes


def test_an_experiment_without_finished_runs_gives_a_clear_message(store, tmp_path):
    mlflow.create_experiment("empty")
    result = cli("report", "--experiment", "empty", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "No finished SGAN or CNN runs were found" in result.stdout
    assert "nothing to compare yet" in (tmp_path / "out" / "report.md").read_text()
    missing = cli("report", "--experiment", "no-such-experiment", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "experiment 'no-such-experiment' does not exist" in missing.stderr


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_works_against_a_real_mlflow_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(mlflow_server)
    log_known_runs("served")
    result = cli("report", "--tracking-uri", mlflow_server, "--experiment", "served", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    sgan50 = summary[(summary.method == "sgan (stacked)") & (summary.labels == 50)].iloc[0]
    assert sgan50["mean"] == pytest.approx(np.mean([0.90, 0.88, 0.93]))
    (run,) = mlflow.search_runs(experiment_names=["served"], filter_string="tags.report = 'true'", output_format="list")
    logged = {f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="report")}
    assert "report/report.html" in logged
