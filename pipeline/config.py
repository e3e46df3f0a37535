"""Run settings: the profiles, the choices the CLI accepts, and their validation.

Everything here is pure and cheap so that bad input is rejected before any data is read or any
model is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

DATASETS = ("mnist", "fashion_mnist", "digits")
VARIANTS = ("stacked", "two_head", "k_plus_one")
METHODS = ("sgan", "cnn")
PRECISIONS = ("float32", "bfloat16")  # bfloat16: mixed precision, float32 weights
NUM_CLASSES = 10  # every supported dataset has ten classes


class ConfigError(ValueError):
    """A setting given by the user is invalid; the message names the setting."""


@dataclass(frozen=True)
class Profile:
    epochs: int
    steps_per_epoch: int
    why: str


PROFILES: dict[str, Profile] = {
    "smoke": Profile(2, 5, "seconds per run: for tests and for checking an installation"),
    "quick": Profile(
        10,
        60,
        "about 5 minutes per SGAN run on a 2-core CPU, so a 24-run MNIST sweep fits in about an hour: 600 "
        "steps (a twentieth of the reference protocol) already separate the SGAN from the CNN at 100 labels",
    ),
    "paper": Profile(20, 600, "the reference protocol: 20 epochs of 600 steps of batch 100 (one MNIST pass per epoch)"),
}


@dataclass(frozen=True)
class RunConfig:
    """Every resolved setting of one training run; all of it is logged as MLflow params."""

    method: str
    dataset: str = "mnist"
    labels: int = 100
    seed: int = 0
    profile: str = "quick"
    variant: str = "stacked"
    epochs: int = PROFILES["quick"].epochs
    steps_per_epoch: int = PROFILES["quick"].steps_per_epoch
    experiment: str = ""
    batch_size: int = 100  # the reference's batch: half labeled, half real and half generated
    latent_dim: int = 100
    learning_rate: float = 2e-4
    beta_1: float = 0.5
    eval_batch_size: int = 1000
    grid_size: int = 10  # the generated-image grid is grid_size x grid_size
    precision: str = "float32"

    @property
    def half_batch(self) -> int:
        return self.batch_size // 2

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def run_name(self) -> str:
        tag = f"{self.method}-{self.variant}" if self.method == "sgan" else self.method
        return f"{tag}-{self.dataset}-L{self.labels}-s{self.seed}"

    def as_params(self) -> dict[str, object]:
        """The resolved settings as MLflow params. `mlflow run` logs its raw entry-point parameters
        first (`epochs=''` for "the profile's"), and params are immutable, so the resolved epoch count
        goes under `num_epochs`; the experiment is where the run lives, not a param."""
        params = dataclasses.asdict(self)
        params["num_epochs"] = params.pop("epochs")
        del params["experiment"]
        return params


def check_choice(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name}={value} must be a positive integer")


def validate_labels(labels: int, num_classes: int = NUM_CLASSES) -> None:
    """Reject counts that cannot give every class at least one labeled example."""
    if labels < num_classes:
        raise ConfigError(
            f"labels={labels} is below the number of classes ({num_classes}): every class needs "
            "at least one labeled example"
        )


def resolve_config(
    method: str,
    dataset: str = "mnist",
    labels: int = 100,
    seed: int = 0,
    profile: str = "quick",
    variant: str = "stacked",
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    experiment: str | None = None,
    precision: str = "float32",
) -> RunConfig:
    """Validate user settings and fill in the profile's values; explicit values win."""
    check_choice("method", method, METHODS)
    check_choice("dataset", dataset, DATASETS)
    check_choice("profile", profile, list(PROFILES))
    check_choice("variant", variant, VARIANTS)
    check_choice("precision", precision, PRECISIONS)
    validate_labels(labels)
    _positive("epochs", epochs)
    _positive("steps_per_epoch", steps_per_epoch)
    if seed < 0:
        raise ConfigError(f"seed={seed} must be zero or positive")
    chosen = PROFILES[profile]
    return RunConfig(
        method=method,
        dataset=dataset,
        labels=labels,
        seed=seed,
        profile=profile,
        variant=variant if method == "sgan" else "none",
        epochs=epochs or chosen.epochs,
        steps_per_epoch=steps_per_epoch or chosen.steps_per_epoch,
        experiment=experiment or default_experiment(dataset, profile),
        precision=precision,
    )


def default_experiment(dataset: str, profile: str) -> str:
    return f"{dataset}-{profile}"


# Settings added after runs were first logged, left out of the fingerprint at their default so that
# those runs still match (a sweep resumed with newer code reuses them).
LATER_DEFAULTS = {"precision": "float32"}


def fingerprint(config: RunConfig, data_checksum: str) -> str:
    """Identity of a run's resolved configuration and data: equal fingerprints, interchangeable runs."""
    params = {k: v for k, v in config.as_params().items() if LATER_DEFAULTS.get(k, object()) != v}
    payload = json.dumps({**params, "dataset_sha256": data_checksum}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
