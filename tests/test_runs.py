"""Whole tracked runs against real SQLite MLflow stores, on digits and a small MNIST slice."""

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from pipeline.config import resolve_config
from pipeline.data import labeled_subset, load_dataset
from pipeline.trial.run import train_run

from .conftest import cli, free_port, refused, tracking_store

SGAN_LOSSES = ["loss_supervised", "loss_unsupervised_real", "loss_unsupervised_fake", "loss_generator"]


def _history(run_id, key):
    return [(m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key)]


def _models(run_id):
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    found = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")
    return {m.name: m for m in found if m.source_run_id == run_id}


@pytest.fixture(scope="module")
def sgan_run(tmp_path_factory):
    """One smoke SGAN run on digits, shared by the tests that only read it."""
    with tracking_store(tmp_path_factory.mktemp("store")):
        config = resolve_config("sgan", dataset="digits", labels=25, seed=1, profile="smoke", epochs=3)
        result = train_run(config, verbose=False)
        yield config, result


@pytest.mark.slow
def test_sgan_run_logs_params_tags_and_per_epoch_metrics(sgan_run):
    config, result = sgan_run
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "sgan" and run.info.run_name == "sgan-stacked-digits-L25-s1"
    params = run.data.params
    assert params["labels"] == "25" and params["seed"] == "1" and params["variant"] == "stacked"
    assert params["num_epochs"] == "3" and params["steps_per_epoch"] == "5" and params["profile"] == "smoke"
    assert params["dataset_sha256"] == load_dataset("digits").checksum
    assert params["validation_size"] == "134" and params["unlabeled_pool_size"] == str(1347 - 134)
    assert params["generator_loss"] == "non_saturating" and params["ema_decay"] == "0.999"
    assert run.data.tags["arm"] == "sgan stacked" and run.data.tags["protocol"] == "smoke 3x5"
    assert {"tensorflow_version", "keras_version", "mlflow_version", "git_commit"} <= set(params)
    assert sorted(map(int, params["labels_per_class"].split(","))) == [2] * 5 + [3] * 5
    for key in [
        "test_accuracy",
        "test_accuracy_ema",
        "val_accuracy",
        "val_accuracy_ema",
        "labeled_accuracy",
        *SGAN_LOSSES,
    ]:
        history = _history(result.run_id, key)
        assert [step for step, _ in history] == [1, 2, 3], key
        assert all(np.isfinite(value) for _, value in history)
    assert run.data.metrics["final_test_accuracy"] == _history(result.run_id, "test_accuracy")[-1][1]
    assert run.data.metrics["final_test_accuracy"] == result.final_test_accuracy
    metrics = run.data.metrics
    assert metrics["final_test_accuracy_ema"] == _history(result.run_id, "test_accuracy_ema")[-1][1]
    assert metrics["final_val_accuracy_ema"] == _history(result.run_id, "val_accuracy_ema")[-1][1]
    assert metrics["selected_epoch"] == metrics["selected_epoch_ema"] == 3  # an SGAN reports its last epoch
    assert run.data.metrics["steps_per_second"] > 0 and run.data.metrics["wall_seconds"] > 0


@pytest.mark.slow
def test_sgan_run_logs_the_subset_and_one_image_grid_per_epoch(sgan_run, tmp_path):
    config, result = sgan_run
    subset = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/labeled_subset.json")
    digits = load_dataset("digits")
    expected = labeled_subset(digits.y_train, 25, 1, excluded=digits.validation)
    assert subset["indices"] == expected.tolist()
    images = mlflow.artifacts.list_artifacts(run_id=result.run_id, artifact_path="images")
    pngs = [f.path for f in images if f.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in pngs) == [1, 2, 3]
    assert all(p.split("/")[-1].startswith("generated_images+") for p in pngs)


@pytest.mark.slow
def test_logged_classifier_reloads_with_the_same_predictions(sgan_run):
    _, result = sgan_run
    models = _models(result.run_id)
    assert set(models) == {"classifier", "classifier_ema", "generator"}
    x = load_dataset("digits").x_test[:16]
    reloaded = mlflow.pyfunc.load_model(models["classifier"].model_uri)
    expected = result.models.classifier.predict(x, verbose=0)
    np.testing.assert_allclose(np.asarray(reloaded.predict(x)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)
    signature = reloaded.metadata.signature.to_dict()
    assert "[-1, 28, 28, 1]" in signature["inputs"] and "[-1, 10]" in signature["outputs"]
    generator = mlflow.pyfunc.load_model(models["generator"].model_uri)
    images = np.asarray(generator.predict(np.zeros((2, 100), np.float32)))
    assert images.shape == (2, 28, 28, 1) and np.abs(images).max() <= 1.0


@pytest.mark.slow
def test_logged_generator_loads_in_a_python_that_never_imports_this_package(sgan_run, tmp_path):
    _, result = sgan_run
    z = np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    load = (
        "import sys, numpy as np, mlflow\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "np.save(sys.argv[3], np.asarray(model.predict(np.load(sys.argv[2]))))\n"
        "assert not any(name.split('.')[0] == 'pipeline' for name in sys.modules)\n"
    )
    uri = _models(result.run_id)["generator"].model_uri
    done = subprocess.run(
        [sys.executable, "-c", load, uri, str(tmp_path / "z.npy"), str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = result.models.generator(z, training=False).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "images.npy"), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_cnn_run_on_an_mnist_slice_pairs_with_the_sgan_subset(store, mnist_slice_dir, monkeypatch):
    monkeypatch.setenv("SGAN_DATA_DIR", str(mnist_slice_dir))
    results = {
        method: train_run(
            resolve_config(method, dataset="mnist", labels=50, seed=4, profile="smoke", epochs=1), verbose=False
        )
        for method in ("cnn", "sgan")
    }
    subsets = {m: mlflow.artifacts.load_dict(f"runs:/{r.run_id}/labeled_subset.json") for m, r in results.items()}
    assert subsets["cnn"]["indices"] == subsets["sgan"]["indices"]
    assert subsets["cnn"]["labels_per_class"] == [5] * 10
    cnn = mlflow.get_run(results["cnn"].run_id)
    assert cnn.data.tags["method"] == "cnn" and cnn.data.params["test_size"] == "1000"
    assert "loss_generator" not in cnn.data.metrics and "loss_supervised" in cnn.data.metrics
    assert set(_models(results["cnn"].run_id)) == {"classifier", "classifier_ema"}
    experiment = mlflow.get_experiment(cnn.info.experiment_id)
    assert experiment.name == "mnist-smoke"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs


@pytest.mark.slow
def test_a_failure_after_the_run_started_marks_it_failed_and_keeps_what_was_logged(store, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("artifacts cannot be written below a file")
    mlflow.create_experiment("broken", artifact_location=str(blocker / "artifacts"))
    config = resolve_config("cnn", dataset="digits", labels=10, seed=0, profile="smoke", experiment="broken")
    with pytest.raises(Exception, match="not-a-folder"):
        train_run(config, verbose=False)
    (run,) = mlflow.search_runs(experiment_names=["broken"], output_format="list")
    assert run.info.status == "FAILED"
    assert run.data.params["labels"] == "10"
    assert "not-a-folder" in run.data.tags["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sgan", "--dataset", "cifar"], "dataset='cifar' is not one of mnist, fashion_mnist, digits"),
        (["sgan", "--profile", "huge"], "profile='huge' is not one of smoke, quick, paper"),
        (["sgan", "--variant", "wide"], "variant='wide' is not one of stacked, two_head, k_plus_one"),
        (
            ["sgan", "--generator-loss", "wasserstein"],
            "generator_loss='wasserstein' is not one of non_saturating, feature_matching",
        ),
        (["sgan", "--augment", "flip"], "augment='flip' is not one of none, shift"),
        (["cnn_tuned", "--augment", "shift"], "augment='shift': cnn_tuned does not take this setting (only sgan, cnn)"),
        (["cnn", "--labels", "5", "--profile", "smoke"], "labels=5 is below the number of classes"),
        (["cnn", "--epochs", "0", "--profile", "smoke"], "epochs=0 must be a positive integer"),
        (["sgan", "--epochs", "-2", "--profile", "smoke"], "epochs=-2 must be a positive integer"),
        (["cnn", "--dataset", "digits", "--labels", "2000", "--profile", "smoke"], "training split has only"),
    ],
)
def test_bad_input_fails_before_training_and_creates_no_run(store, args, message):
    result = refused(
        *args, "--profile" if "--profile" not in args else "--quiet", *(["smoke"] if "--profile" not in args else [])
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Epoch 1" not in result.stdout
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_unreadable_data_file_is_reported_with_its_path(store, tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"this is not a zip file")
    result = refused("sgan", "--profile", "smoke", env={"SGAN_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert f"{tmp_path / 'mnist.npz'}: cannot read the file" in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_unreachable_tracking_uri_fails_fast(store):
    uri = f"http://127.0.0.1:{free_port()}"
    code = (
        "import sys\nfrom pipeline.cli import main\n"
        "code = main(['cnn', '--dataset', 'digits', '--profile', 'smoke'])\n"
        "print('tensorflow loaded:', 'tensorflow' in sys.modules)\nsys.exit(code)"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert f"tracking URI {uri} is unreachable" in result.stderr
    assert "tensorflow loaded: False" in result.stdout  # refused before the heavy imports


@pytest.mark.slow
def test_cli_run_prints_progress_and_a_summary(store):
    result = cli("cnn", "--dataset", "digits", "--labels", "20", "--profile", "smoke")
    assert result.returncode == 0, result.stderr
    assert "Epoch 2/2" in result.stdout and "loss_supervised" in result.stdout
    *_, summary, browse, link = result.stdout.strip().splitlines()  # the summary, then where to look
    assert summary.startswith("cnn-digits-L20-s0: final test accuracy ")
    (run,) = mlflow.search_runs(experiment_names=["digits-smoke"], output_format="list")
    assert run.info.run_id in summary and run.data.params["labels"] == "20"
    assert browse.startswith("Browse the runs: ") and browse.endswith(f"ui --backend-store-uri {store} --port 5000")
    assert link.strip() == f"then open http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs"


def _permuted_test_labels(source, folder):
    folder.mkdir()
    with np.load(source / "mnist.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays["y_test"] = np.random.default_rng(0).permutation(arrays["y_test"])
    np.savez(folder / "mnist.npz", **arrays)
    return folder


@pytest.mark.slow
def test_cnn_tuned_searches_on_validation_only_and_reports_its_best_validation_epoch(
    mnist_slice_dir, tmp_path, monkeypatch
):
    """The search and the epoch choice never read the test split: with the test labels shuffled they
    choose exactly the same; only the reported test figure changes."""
    outcomes = {}
    for name, folder in [
        ("original", mnist_slice_dir),
        ("shuffled", _permuted_test_labels(mnist_slice_dir, tmp_path / "shuffled-data")),
    ]:
        monkeypatch.setenv("SGAN_DATA_DIR", str(folder))
        (tmp_path / name).mkdir()
        with tracking_store(tmp_path / name):
            config = resolve_config("cnn_tuned", dataset="mnist", labels=50, seed=1, profile="smoke")
            result = train_run(config, verbose=False)
            run = mlflow.get_run(result.run_id)
            search_id = run.data.tags["recipe_search_run_id"]
            search = mlflow.artifacts.load_dict(f"runs:/{search_id}/search.json")
            candidates = mlflow.search_runs(
                experiment_ids=[run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{search_id}'"
            )
            val_curve = [v for _, v in _history(result.run_id, "val_accuracy")]
            test_curve = [v for _, v in _history(result.run_id, "test_accuracy")]
            outcomes[name] = (run, search, candidates, val_curve, test_curve)
    run, search, candidates, val_curve, test_curve = outcomes["original"]
    assert run.info.status == "FINISHED" and run.data.tags["arm"] == "cnn_tuned"
    assert len(search["candidates"]) == len(candidates) == 4 and set(candidates.status) == {"FINISHED"}
    best = max(search["candidates"], key=lambda c: c["best_val_accuracy"])
    assert search["chosen"] == {k: best[k] for k in search["chosen"]}
    for key, value in search["chosen"].items():  # the run trained with the chosen recipe
        assert run.data.params[key] == str(value)
    assert len(val_curve) == 6  # three times the protocol's two epochs
    assert run.data.metrics["selected_epoch"] == int(np.argmax(val_curve)) + 1
    assert run.data.metrics["final_test_accuracy"] == test_curve[int(run.data.metrics["selected_epoch"]) - 1]
    shuffled_run, shuffled_search, _, shuffled_val, _ = outcomes["shuffled"]
    assert shuffled_search == search and shuffled_val == val_curve
    assert shuffled_run.data.metrics["selected_epoch"] == run.data.metrics["selected_epoch"]
    assert shuffled_run.data.metrics["final_test_accuracy"] != run.data.metrics["final_test_accuracy"]
    assert shuffled_run.data.params["dataset_sha256"] != run.data.params["dataset_sha256"]  # other content
