"""What a user sees in MLflow: dataset inputs, final figures linked to the logged classifier, a run
description, the confusion matrix, the Model Registry, system metrics, and `mlflow models serve`,
against a real SQLite store and a real `mlflow server`."""

import json
import os
import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from pipeline.config import resolve_config
from pipeline.data import load_dataset
from pipeline.tracking.registry import CHOSEN_BY, choose_best
from pipeline.trial.run import train_run

from .conftest import cli, free_port, new_store, tracking_store, wait_until_up


def _models(run) -> dict:
    """The run's LoggedModels by name."""
    models = [mlflow.get_logged_model(output.model_id) for output in run.outputs.model_outputs]
    return {model.name: model for model in models}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Two smoke SGAN runs on digits (seeds 0 and 1), the first registered and with system metrics."""
    folder = tmp_path_factory.mktemp("native")
    with tracking_store(folder), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
        runs = []
        for seed in (0, 1):
            config = resolve_config("sgan", dataset="digits", labels=20, seed=seed, profile="smoke", epochs=3)
            register = "digits-classifier" if seed == 0 else ""
            result = train_run(config, verbose=False, register_model=register, system_metrics=seed == 0)
            runs.append(mlflow.get_run(result.run_id))
        yield folder, runs


@pytest.mark.slow
def test_every_run_lists_its_datasets_with_content_digests(smoke_runs):
    _, (first, second) = smoke_runs
    inputs = {d.dataset.name: d for d in first.inputs.dataset_inputs}
    assert set(inputs) == {"digits-train", "digits-labeled-L20-s0", "digits-validation", "digits-test"}
    context = {name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for name, d in inputs.items()}
    assert context == {
        "digits-train": "training",
        "digits-labeled-L20-s0": "training",
        "digits-validation": "validation",
        "digits-test": "evaluation",
    }
    digits = load_dataset("digits")
    assert inputs["digits-train"].dataset.digest == digits.checksum[:16]
    assert json.loads(inputs["digits-test"].dataset.profile)["features_shape"] == [len(digits.y_test), 28, 28, 1]
    other = {d.dataset.name: d.dataset.digest for d in second.inputs.dataset_inputs}
    assert other["digits-train"] == inputs["digits-train"].dataset.digest  # same data, same digest
    assert other["digits-labeled-L20-s1"] != inputs["digits-labeled-L20-s0"].dataset.digest  # other images


@pytest.mark.slow
def test_final_figures_are_linked_to_the_classifier_they_belong_to(smoke_runs):
    _, (run, _) = smoke_runs
    models = _models(run)
    assert set(models) == {"classifier", "classifier_ema", "generator"}
    classifier, ema = models["classifier"], models["classifier_ema"]
    linked = {m.key: m.value for m in classifier.metrics}
    assert linked["final_test_accuracy"] == pytest.approx(run.data.metrics["final_test_accuracy"])
    assert {f"test_accuracy_class_{k}" for k in range(10)} <= set(linked)
    ema_linked = {m.key for m in ema.metrics}  # (MLflow also copies the run's step-0 metrics to each model)
    assert {"final_test_accuracy_ema", "final_val_accuracy_ema", "selected_epoch_ema"} <= ema_linked
    assert "final_test_accuracy" not in ema_linked and "final_test_accuracy_ema" not in linked
    assert classifier.params["arm"] == "sgan stacked" and classifier.params["architecture"] == "mlm"
    assert classifier.params["labels"] == "20" and classifier.params["seed"] == "0"
    measured_on = {m.key: (m.dataset_name, m.dataset_digest) for m in classifier.metrics + ema.metrics}
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    for key, dataset in [("final_test_accuracy", "digits-test"), ("test_accuracy_class_3", "digits-test"),
                         ("final_val_accuracy_ema", "digits-validation"),
                         ("final_labeled_accuracy", "digits-labeled-L20-s0")]:  # fmt: skip
        assert measured_on[key] == (dataset, inputs[dataset]), key  # the model page names its evaluation data
    assert measured_on["selected_epoch"][0] is None


@pytest.mark.slow
def test_each_logged_model_says_what_it_is(smoke_runs):
    _, (run, _) = smoke_runs
    described = {name: model.tags.get("mlflow.note.content", "") for name, model in _models(run).items()}
    assert described["classifier"].startswith("The classifier (sgan stacked; mlm networks) trained on 20 labels of")
    assert "probabilities of the 10 classes" in described["classifier"]
    assert described["classifier_ema"].startswith("The moving average of the classifier's weights")
    assert "latent points" in described["generator"]


@pytest.mark.slow
def test_each_run_has_a_description_a_confusion_matrix_and_per_class_accuracy(smoke_runs):
    _, (run, _) = smoke_runs
    description = run.data.tags["mlflow.note.content"]
    accuracy = run.data.metrics["final_test_accuracy"]
    assert description.startswith("sgan stacked (mlm networks) on digits with 20 labeled images")
    assert f"{accuracy:.2%}" in description and "Nothing was chosen by test accuracy" in description
    files = {f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id)}
    assert {"confusion_matrix.png", "per_class_accuracy.json"} <= files
    table = pd.DataFrame(**json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/per_class_accuracy.json")))
    assert list(table["class"]) == list(range(10))
    assert table.test_examples.sum() == len(load_dataset("digits").y_test)
    assert table.correct.sum() / table.test_examples.sum() == pytest.approx(accuracy)  # the reported classifier
    for row in table.itertuples():
        assert run.data.metrics[f"test_accuracy_class_{row[1]}"] == pytest.approx(row.correct / row.test_examples)


@pytest.mark.slow
def test_register_model_adds_the_classifier_to_the_registry(smoke_runs):
    _, (run, other) = smoke_runs
    (version,) = mlflow.MlflowClient().search_model_versions("name = 'digits-classifier'")
    assert version.source == f"models:/{_models(run)['classifier'].model_id}"
    assert version.tags["arm"] == "sgan stacked" and version.tags["labels"] == "20"
    assert not mlflow.MlflowClient().search_model_versions(f"run_id = '{other.info.run_id}'")


@pytest.mark.slow
def test_system_metrics_are_logged_only_where_asked(smoke_runs):
    _, (run, other) = smoke_runs
    system = [key for key in run.data.metrics if key.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
    assert not [key for key in other.data.metrics if key.startswith("system/")]


def test_the_sweeps_registered_classifier_is_chosen_on_validation_never_on_test():
    runs = pd.DataFrame(
        {
            "run_id": ["a0", "a1", "b0", "b1", "c0"],
            "arm": ["sgan stacked", "sgan stacked", "cnn", "cnn", "cnn"],
            "labels": [100, 100, 100, 100, 50],
            CHOSEN_BY: [0.90, 0.80, 0.86, 0.87, 0.70],
            "final_test_accuracy": [0.10, 0.10, 0.99, 0.99, 0.5],  # ignored
        }
    )
    chosen = choose_best(runs).set_index("labels")
    assert chosen.loc[100, "run_id"] == "b1"  # cnn: mean 0.865 beats 0.85, then its best run
    assert chosen.loc[50, "run_id"] == "c0"


@pytest.mark.slow
def test_a_served_classifier_answers_http_with_class_probabilities(smoke_runs, tmp_path):
    folder, (run, _) = smoke_runs
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    model_id = _models(run)["classifier"].model_id
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{model_id}", "--env-manager", "local"]
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", "mlflow models serve")
        images = load_dataset("digits").x_test[:3]
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": images.tolist()}, timeout=60)
        assert answer.status_code == 200, answer.text
        probabilities = np.array(answer.json()["predictions"])
        assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
        local = mlflow.pyfunc.load_model(f"models:/{model_id}").predict(images)
        np.testing.assert_allclose(probabilities, np.asarray(local), atol=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_run_through_a_real_mlflow_server_has_inputs_linked_metrics_and_a_registered_model(
    mlflow_server, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    args = ["cnn", "--dataset", "digits", "--profile", "smoke", "--labels", "20", "--register-model", "served"]
    fast_sampling = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    fast_sampling["MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"] = "1"
    result = cli(*args, "--system-metrics", env=fast_sampling)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = mlflow.search_runs(experiment_names=["digits-smoke"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.note.content"].startswith("cnn (mlm networks) on digits with 20 labeled images")
    assert "system/cpu_utilization_percentage" in run.data.metrics
    files = {f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id)}
    assert {"confusion_matrix.png", "per_class_accuracy.json"} <= files
    assert {d.dataset.name for d in run.inputs.dataset_inputs} >= {"digits-train", "digits-labeled-L20-s0"}
    classifier = _models(run)["classifier"]
    assert {m.key for m in classifier.metrics} >= {"final_test_accuracy", "final_val_accuracy"}
    (version,) = mlflow.MlflowClient().search_model_versions("name = 'served'")
    assert version.source == f"models:/{classifier.model_id}"
    loaded = mlflow.pyfunc.load_model(f"models:/served/{version.version}")
    assert np.asarray(loaded.predict(load_dataset("digits").x_test[:2])).shape == (2, 10)


RACE = """
import sys, time
import mlflow, numpy as np
from pipeline.tracking.store import log_dataset_input
uri, experiment_id, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
mlflow.set_tracking_uri(uri)
data = mlflow.data.from_numpy(np.arange(10.0), name="shared")
with mlflow.start_run(experiment_id=experiment_id):
    time.sleep(max(0.0, start - time.time()))  # every process logs the new dataset at the same moment
    log_dataset_input(data, "training", None)
"""


@pytest.mark.slow  # the fast tier's budget; the same logic runs there on lighter cases
def test_parallel_runs_logging_the_same_new_dataset_all_keep_it(tmp_path):
    """MLflow's SQL store finds-then-inserts a dataset, so of runs logging the same new dataset at once
    one could fail (seen: a sweep trial failed on the unique constraint); each run must end up with it."""
    uri = new_store(tmp_path / "mlflow.db")
    experiment_id = mlflow.MlflowClient(uri).create_experiment("race")
    start = time.time() + 8  # after every process has imported MLflow
    command = [sys.executable, "-c", RACE, uri, experiment_id, str(start)]
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, errors
    runs = mlflow.MlflowClient(uri).search_runs([experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert all([d.dataset.name for d in r.inputs.dataset_inputs] == ["shared"] for r in runs)
