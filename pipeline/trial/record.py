"""MLflow side effects of a training run: params and dataset inputs, per-epoch metrics and images, the
logged models with the final figures linked to them, the confusion matrix and the run's description.
(Where runs go, how they stop and registration are in `store`, which a sweep uses without TensorFlow.)"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature

from pipeline.config import RunConfig, user_settings
from pipeline.core.models import SGANModels, portable_copy
from pipeline.core.training import History
from pipeline.data import Dataset, class_counts
from pipeline.schema import CONFUSION_FIGURE, IMAGE_KEY, PER_CLASS_TABLE
from pipeline.tracking.store import log_dataset_input, log_new_params
from pipeline.trial.diagnostics import confusion, confusion_figure, most_confused_with, per_class_accuracy


def git_commit() -> str:
    """The project's commit, marked `-dirty` when the work tree has changes; `unknown` outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def versions() -> dict[str, str]:
    return {
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mlflow_version": mlflow.__version__,
    }


def data_params(dataset: Dataset) -> dict[str, object]:
    """The data's identity (its content), where it came from, and how its training split is used."""
    validation = np.ascontiguousarray(dataset.validation, dtype=np.int64)
    return {
        "dataset_sha256": dataset.checksum,
        "dataset_verified": dataset.verified,
        "dataset_source": dataset.source,
        "train_size": len(dataset.x_train),
        "test_size": len(dataset.x_test),
        "validation_size": len(validation),
        "validation_sha256": hashlib.sha256(validation.tobytes()).hexdigest(),
        "unlabeled_pool_size": len(dataset.pool),
    }


def log_run_inputs(config: RunConfig, dataset: Dataset, indices: np.ndarray) -> None:
    """Every resolved setting, the data's identity, and which training images carry labels."""
    counts = class_counts(dataset.y_train[indices], dataset.num_classes)
    params = {
        **config.as_params(),
        **data_params(dataset),
        "protocol": config.protocol,
        "labels_per_class": ",".join(map(str, counts)),
        "git_commit": git_commit(),
        **versions(),
    }
    log_new_params(params)
    log_datasets(config, dataset, indices)
    tagged = {field.name: getattr(config, field.name) for field in user_settings() if field.metadata["tag"]}
    mlflow.set_tags({"method": config.method, "arm": config.arm, "protocol": config.protocol, **tagged})
    mlflow.log_dict(
        {
            "indices": indices.tolist(),
            "labels_per_class": counts,
            "labels": config.labels,
            "seed": config.seed,
            "rule": config.labeled_subset,
            "validation_indices": dataset.validation.tolist(),
        },
        "labeled_subset.json",
    )


DIGEST_LENGTH = 16  # hex characters of a content hash shown as a dataset's digest (MLflow keeps at most 36)


def dataset_inputs(config: RunConfig, dataset: Dataset, indices: np.ndarray) -> list[tuple[object, str, dict]]:
    """(MLflow dataset, context, tags) for the training split, the labeled subset, the validation split and
    the test split, each with a digest of its content: equal digests, the same images."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource

    path = Path(dataset.source)
    source = LocalArtifactDatasetSource(str(path)) if path.is_file() else CodeDatasetSource({"loader": dataset.source})

    def subset(name: str, rows: np.ndarray) -> str:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        return hashlib.sha256(dataset.checksum.encode() + name.encode() + rows.tobytes()).hexdigest()[:DIGEST_LENGTH]

    rule = "" if config.labeled_subset == "balanced" else f"-{config.labeled_subset}"
    labeled_name = f"{config.dataset}-labeled{rule}-L{config.labels}-s{config.seed}"
    splits = [
        (f"{config.dataset}-train", dataset.x_train, dataset.y_train, dataset.checksum[:DIGEST_LENGTH], "training"),
        (labeled_name, dataset.x_train[indices], dataset.y_train[indices], subset("labeled", indices), "training"),
        (
            f"{config.dataset}-validation",
            dataset.x_train[dataset.validation],
            dataset.y_train[dataset.validation],
            subset("validation", dataset.validation),
            "validation",
        ),
        (f"{config.dataset}-test", dataset.x_test, dataset.y_test, dataset.checksum[:DIGEST_LENGTH], "evaluation"),
    ]
    tags = {"labels": str(config.labels), "seed": str(config.seed), "rule": config.labeled_subset}
    return [
        (
            mlflow.data.from_numpy(x, targets=y, source=source, name=name, digest=digest),
            context,
            tags if name == labeled_name else {},
        )
        for name, x, y, digest, context in splits
    ]


def log_datasets(config: RunConfig, dataset: Dataset, indices: np.ndarray) -> None:
    """The run's data as MLflow dataset inputs (the UI's Datasets column); a resumed run has them already."""
    logged = {d.dataset.name for d in mlflow.get_run(mlflow.active_run().info.run_id).inputs.dataset_inputs}
    for data, context, tags in dataset_inputs(config, dataset, indices):
        if data.name not in logged:
            log_dataset_input(data, context, tags)


def log_epoch_image(epoch: int, grid: np.ndarray) -> None:
    """Asynchronous, so that a slow store does not stall training; flushed before each checkpoint."""
    mlflow.log_image(grid, key=IMAGE_KEY, step=epoch, synchronous=False)


def log_epoch_metrics(history: History, epochs: range) -> None:
    """The given epochs' metrics from the history (step = epoch). Called once an epoch's checkpoint is
    saved, and on resume for epochs the checkpoint has but the store lacks: each epoch is logged once."""
    for epoch in epochs:
        mlflow.log_metrics({name: values[epoch - 1] for name, values in history.metrics.items()}, step=epoch)


def _requirements() -> list[str]:
    # Explicit, so MLflow does not infer them by re-loading the model in a subprocess.
    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]


MODEL_DESCRIPTIONS = {
    "classifier": "The classifier ({arm}; {architecture} networks) trained on {labels} labels of {dataset}, "
    "seed {seed}: images in [-1, 1], shape (N, 28, 28, 1) -> probabilities of the {classes} classes.",
    "classifier_ema": "The moving average of the classifier's weights ({arm}; {architecture} networks), "
    "{labels} labels of {dataset}, seed {seed}: images in [-1, 1], shape (N, 28, 28, 1) -> class probabilities.",
    "generator": "The SGAN's generator ({arm}; {architecture} networks), {labels} labels of {dataset}, "
    "seed {seed}: latent points, shape (N, latent_dim) -> images in [-1, 1], shape (N, 28, 28, 1).",
}


def log_models(models: SGANModels, images: np.ndarray, latent: np.ndarray, params: dict[str, object]) -> dict[str, str]:
    """The classifier and its moving average `classifier_ema` (images in [-1, 1], shape (N, 28, 28, 1)
    -> class probabilities) and the generator (latent (N, latent_dim) -> images in [-1, 1]), with
    signatures, input examples and `params` (what the model is: arm, architecture, data, labels).
    Returns each LoggedModel's id by name.

    Logged through `mlflow.tensorflow`, which saves Keras 3 models in the native `.keras` format:
    `mlflow.keras.log_model` crashes when given an input example (MLflow issue #16183). The generator
    and the GANs in Action classifiers are logged as stock-layer copies, so they load without this package.
    """
    example = images[:2].astype(np.float32)
    described = {"classes": models.classifier.output_shape[-1]} | {
        key: params.get(key, "?") for key in ("arm", "architecture", "labels", "dataset", "seed")
    }
    logged = [("classifier", models.classifier, example), ("classifier_ema", models.classifier_ema, example)]
    if models.generator is not None:
        logged.append(("generator", models.generator, latent[:2].astype(np.float32)))
    logged = [(name, portable_copy(model, models.architecture), example) for name, model, example in logged]
    keras.config.disable_interactive_logging()  # MLflow's example checks would print progress bars
    ids = {}
    try:
        for name, model, example in logged:
            info = mlflow.tensorflow.log_model(
                model,
                name=name,
                signature=infer_signature(example, np.asarray(model(example, training=False))),
                input_example=example,
                pip_requirements=_requirements(),
                params={key: str(value) for key, value in params.items()},
                model_type="classifier" if name.startswith("classifier") else "generator",
                tags={"mlflow.note.content": MODEL_DESCRIPTIONS[name].format_map(described)},
            )
            ids[name] = info.model_id
    finally:
        keras.config.enable_interactive_logging()
    return ids


def evaluation_datasets(config: RunConfig, dataset: Dataset, indices: np.ndarray) -> dict[str, object]:
    """The MLflow datasets the final figures are measured on, by the figures' prefix (`test`, `val`, `labeled`)."""
    named = {data.name: data for data, _, _ in dataset_inputs(config, dataset, indices)}
    rule = "" if config.labeled_subset == "balanced" else f"-{config.labeled_subset}"
    return {
        "test": named[f"{config.dataset}-test"],
        "val": named[f"{config.dataset}-validation"],
        "labeled": named[f"{config.dataset}-labeled{rule}-L{config.labels}-s{config.seed}"],
    }


def log_final_metrics(final: dict[str, float], model_ids: dict[str, str], datasets: dict[str, object]) -> None:
    """The figures that count, on the run and linked to the classifier they belong to (`*_ema` to
    `classifier_ema`, the others to `classifier`) and to the dataset they were measured on (`final_test_*` and
    the per-class figures: the test split; `final_val_*`: validation; `final_labeled_*`: the labeled subset), so
    the model page names its evaluation data. Which epoch counted is linked to the model alone."""
    for name, value in final.items():
        model_id = model_ids["classifier_ema" if name.endswith("_ema") else "classifier"]
        prefix = name.removeprefix("final_").split("_")[0]
        mlflow.log_metrics({name: value}, model_id=model_id, dataset=datasets.get(prefix))


def log_confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, title: str) -> dict[str, float]:
    """The reported classifier's confusion matrix on the test split as a figure, and its per-class
    accuracy as a table; returns the per-class accuracies as metrics (`test_accuracy_class_<k>`)."""
    matrix = confusion(y_true, y_pred, num_classes)
    accuracy = per_class_accuracy(matrix)
    mlflow.log_figure(confusion_figure(matrix, title), CONFUSION_FIGURE)
    mlflow.log_table(
        {
            "class": list(range(num_classes)),
            "test_examples": matrix.sum(axis=1).tolist(),
            "correct": np.diag(matrix).tolist(),
            "accuracy": accuracy.tolist(),
            "most_confused_with": most_confused_with(matrix).tolist(),
        },
        PER_CLASS_TABLE,
    )
    return {f"test_accuracy_class_{k}": float(a) for k, a in enumerate(accuracy) if np.isfinite(a)}


def describe_run(config: RunConfig, final: dict[str, float], selected_epoch: int) -> str:
    """One paragraph for the run's Description in the UI (the `mlflow.note.content` tag)."""
    chosen = (
        "the epoch with the best validation accuracy" if config.select_epoch == "best_validation" else "the last epoch"
    )
    rule = (
        "class-balanced, drawn by the seed" if config.labeled_subset == "balanced" else "the first images in file order"
    )
    return (
        f"{config.arm} ({config.architecture} networks) on {config.dataset} with {config.labels} labeled images "
        f"({rule}; seed {config.seed}), protocol {config.protocol}. Test accuracy "
        f"{final['final_test_accuracy']:.2%} (moving average of the weights: {final['final_test_accuracy_ema']:.2%}) "
        f"at epoch {selected_epoch} of {config.train_epochs}, {chosen}; validation accuracy "
        f"{final['final_val_accuracy']:.2%}. Nothing was chosen by test accuracy."
    )
