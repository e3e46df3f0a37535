"""What a user meets first: the README's generated verdict and reports/README.md match the committed reports'
CSVs, and the links the commands print open the experiment's training runs with this environment's mlflow."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipeline.report import overview
from pipeline.tracking.links import where_to_look

from .conftest import cli, new_store, refused
from .test_mlproject import mlflow_run


def test_the_committed_overviews_are_what_the_reports_csvs_give():
    readme, results = (overview.ROOT / "README.md").read_text(), (overview.ROOT / "reports" / "README.md").read_text()
    assert overview.replace_generated(readme, overview.verdict(overview.ROOT / "reports"), "README") == readme, (
        "README.md's verdict is stale: run python -m pipeline.report.overview"
    )
    assert overview.replace_generated(results, overview.results(overview.ROOT / "reports"), "reports") == results


def test_the_verdict_reads_each_figure_from_the_csvs(tmp_path):
    folder = tmp_path / "reports" / "mnist-paper"
    folder.mkdir(parents=True)
    group = {"dataset": "mnist", "protocol": "paper 20x600", "architecture": "mlm", "labels": 100}
    pd.DataFrame(
        [{**group, "arm": arm, "n": 3, "mean": mean, "std": 0.01, "min": 0, "max": 1}
         for arm, mean in (("sgan stacked", 0.91), ("cnn", 0.75), ("cnn_tuned", 0.925))]
    ).to_csv(folder / "summary.csv", index=False)  # fmt: skip
    paired = {**group, "sgan_arm": "sgan stacked", "n_pairs": 3, "p_value": 0.5, "losses": 0, "ties": 0}
    pd.DataFrame(
        [{**paired, "baseline_arm": "cnn", "mean_diff": 0.16, "ci_low": 0.12, "ci_high": 0.2, "wins": 3},
         {**paired, "baseline_arm": "cnn_tuned", "mean_diff": -0.015, "ci_low": -0.03, "ci_high": 0.0, "wins": 1}]
    ).to_csv(folder / "paired.csv", index=False)  # fmt: skip
    (row,) = overview.verdict_rows(tmp_path / "reports")
    assert (row["SGAN"], row["compute-matched"], row["tuned"], row["seeds"]) == ("91.00%", "75.00%", "92.50%", "3")
    assert row["SGAN - compute-matched"] == "+16.00 [+12.00, +20.00], 3 of 3"
    assert row["SGAN - tuned"] == "-1.50 [-3.00, +0.00], 1 of 3"


def test_a_generated_block_must_exist_to_be_replaced():
    with pytest.raises(ValueError, match="no generated block"):
        overview.replace_generated("# a README without markers", "table", "README.md")


def test_the_printed_links_open_the_experiments_training_runs():
    local = where_to_look("sqlite:///mlflow.db", "7")
    assert local[0].endswith("ui --backend-store-uri sqlite:///mlflow.db --port 5000")
    assert local[1].strip() == "then open http://127.0.0.1:5000/#/experiments/7/runs"
    assert where_to_look("http://127.0.0.1:5001/", "7") == [
        "Browse the runs: http://127.0.0.1:5001/#/experiments/7/runs"
    ]


def _mlflow_executable(path: str) -> str:
    code = "from pipeline.tracking.links import mlflow_executable; print(mlflow_executable())"
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "PATH": path}, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


def test_the_ui_command_names_this_environments_mlflow_unless_it_is_the_one_on_the_path():
    here = Path(sys.executable).parent
    assert (here / "mlflow").exists(), "mlflow is installed beside this interpreter"
    assert _mlflow_executable("/usr/bin:/bin") == str(here / "mlflow")  # a venv not activated
    assert _mlflow_executable(f"{here}:/usr/bin:/bin") == "mlflow"  # activated


@pytest.mark.slow
def test_mlflows_own_names_and_variables_choose_the_store_and_the_experiment(store, tmp_path):
    """`--tracking-uri`, `MLFLOW_EXPERIMENT_NAME`, `--experiment-name`, and a report logged as a run of the
    experiment it summarises even when `mlflow run` put its own run in the Default experiment."""
    other = new_store(tmp_path / "other.db")
    smoke = ["--dataset", "digits", "--profile", "smoke", "--labels", "20", "--quiet"]
    trained = cli("cnn", *smoke, "--tracking-uri", other, env={"MLFLOW_EXPERIMENT_NAME": "from-env"})
    assert trained.returncode == 0, trained.stderr[-2000:]
    client = mlflow.MlflowClient(other)
    experiment = client.get_experiment_by_name("from-env")
    assert experiment is not None and mlflow.get_experiment_by_name("from-env") is None  # not the default store
    assert f"#/experiments/{experiment.experiment_id}/runs" in trained.stdout
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"

    named = cli("report", "--experiment-name", "from-env", "--tracking-uri", other, "--out", str(tmp_path / "r"))
    assert named.returncode == 0, named.stderr[-2000:]
    reports = client.search_runs([experiment.experiment_id], "tags.report = 'true'")
    assert len(reports) == 1 and (tmp_path / "r" / "report.md").exists()

    launched = mlflow_run("-e", "report", "-P", "experiment=from-env", "-P", f"out={tmp_path / 'r2'}",
                          env={"MLFLOW_TRACKING_URI": other})  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-2000:]
    reports = client.search_runs([experiment.experiment_id], "tags.report = 'true'", order_by=["start_time DESC"])
    assert len(reports) == 2, "the report run belongs to the experiment it summarises"
    (default_run,) = client.search_runs(["0"])  # where `mlflow run` made its own run
    assert default_run.data.tags["report_run_id"] == reports[0].info.run_id


def test_an_experiment_id_that_does_not_exist_is_refused_in_one_line(store):
    result = refused("report", env={"MLFLOW_EXPERIMENT_ID": "424242"})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: MLFLOW_EXPERIMENT_ID=424242: no such experiment at the tracking URI"


def test_the_improved_gan_verdict_pairs_its_feature_matching_sgan_with_its_mlps(tmp_path):
    folder = tmp_path / "reports" / "mnist-improved-gan"
    folder.mkdir(parents=True)
    group = {"dataset": "mnist", "protocol": "improved_gan 150x600", "architecture": "improved_gan", "labels": 100}
    sgan = "sgan stacked feature matching improved_gan"
    arms = ((sgan, 0.988), ("mlp improved_gan", 0.80), ("sgan stacked improved_gan", 0.5))
    pd.DataFrame(
        [{**group, "arm": arm, "n": 5, "mean": mean, "std": 0.01, "min": 0, "max": 1} for arm, mean in arms]
    ).to_csv(folder / "summary.csv", index=False)
    pd.DataFrame(
        [{**group, "sgan_arm": sgan, "baseline_arm": "mlp improved_gan", "n_pairs": 5, "mean_diff": 0.188,
          "ci_low": 0.17, "ci_high": 0.2, "p_value": 0.001, "wins": 5, "losses": 0, "ties": 0}]
    ).to_csv(folder / "paired.csv", index=False)  # fmt: skip
    (row,) = overview.verdict_rows(tmp_path / "reports")
    assert (row["SGAN"], row["compute-matched"], row["tuned"]) == ("98.80%", "80.00%", "n/a")
    assert row["SGAN - compute-matched"] == "+18.80 [+17.00, +20.00], 5 of 5" and row["SGAN - tuned"] == "n/a"
