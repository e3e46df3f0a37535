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
METHODS = ("sgan", "cnn", "cnn_tuned")
BASELINES = ("cnn", "cnn_tuned")  # supervised methods: the same network, no generator
PRECISIONS = ("float32", "bfloat16")  # bfloat16: mixed precision, float32 weights
GENERATOR_LOSSES = ("non_saturating", "feature_matching")
NUM_CLASSES = 10  # every supported dataset has ten classes
TUNED_EPOCH_FACTOR = 3  # cnn_tuned may train this many times the protocol's epochs, stopping early
# cnn_tuned's recipe search (see pipeline.tuning): RunConfig fields and the values tried; the grid is
# their product in this order, and ties go to the earlier recipe.
TUNED_SEARCH_SPACE: dict[str, tuple] = {
    "learning_rate": (1e-3,),
    "beta_1": (0.9,),
    "augment": ("none", "shift"),
    "weight_decay": (0.0, 0.1),
}


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
    generator_loss: str = "non_saturating"  # "none" for the baselines
    ema_decay: float = 0.999  # moving average of the classifier weights (with warm-up: see MovingAverage)
    weight_decay: float = 0.0  # decoupled (AdamW); 0 is plain Adam
    augment: str = "none"  # of the labeled images, for the supervised update
    select_epoch: str = "last"  # "best_validation": report the epoch with the best validation accuracy

    @property
    def half_batch(self) -> int:
        return self.batch_size // 2

    @property
    def train_epochs(self) -> int:
        """Epochs actually trained: the protocol's, or for `cnn_tuned` a multiple of them (early stopping
        on the validation split decides which epoch counts)."""
        return self.epochs * (TUNED_EPOCH_FACTOR if self.method == "cnn_tuned" else 1)

    @property
    def total_steps(self) -> int:
        return self.train_epochs * self.steps_per_epoch

    @property
    def protocol(self) -> str:
        """The training budget runs are compared under: the profile and its epochs x steps."""
        return f"{self.profile} {self.epochs}x{self.steps_per_epoch}"

    @property
    def arm(self) -> str:
        return arm_name(self.method, self.variant, self.generator_loss, self.precision)

    @property
    def run_name(self) -> str:
        tag = f"{self.method}-{self.variant}" if self.method == "sgan" else self.method
        if self.method == "sgan" and self.generator_loss == "feature_matching":
            tag += "-fm"
        return f"{tag}-{self.dataset}-L{self.labels}-s{self.seed}"

    def as_params(self) -> dict[str, object]:
        """The resolved settings as MLflow params. `mlflow run` logs its raw entry-point parameters
        first (`epochs=''` for "the profile's"), and params are immutable, so the resolved epoch count
        goes under `num_epochs`; the experiment is where the run lives, not a param."""
        params = dataclasses.asdict(self)
        params["num_epochs"] = params.pop("epochs")
        del params["experiment"]
        return params


def arm_name(method: str, variant: str, generator_loss: str = "non_saturating", precision: str = "float32") -> str:
    """An arm is everything that defines a method's recipe (not the data, the protocol or the seed), as
    one readable name: `sgan stacked`, `sgan two_head feature matching bfloat16`, `cnn_tuned`."""
    parts = [method]
    if method == "sgan":
        parts.append(variant)
        if generator_loss not in ("non_saturating", "none"):
            parts.append(generator_loss.replace("_", " "))
    if precision != "float32":
        parts.append(precision)
    return " ".join(parts)


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
    generator_loss: str = "non_saturating",
) -> RunConfig:
    """Validate user settings and fill in the profile's values; explicit values win."""
    check_choice("method", method, METHODS)
    check_choice("dataset", dataset, DATASETS)
    check_choice("profile", profile, list(PROFILES))
    check_choice("variant", variant, VARIANTS)
    check_choice("precision", precision, PRECISIONS)
    check_choice("generator_loss", generator_loss, GENERATOR_LOSSES)
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
        generator_loss=generator_loss if method == "sgan" else "none",
        select_epoch="best_validation" if method == "cnn_tuned" else "last",
    )


def default_experiment(dataset: str, profile: str) -> str:
    return f"{dataset}-{profile}"


# Settings added after runs were first logged, left out of the fingerprint at their default so that
# those runs still match (a sweep resumed with newer code reuses them). Fingerprints start anew with
# FINGERPRINT_VERSION 2: the validation split changed which images may be labeled.
LATER_DEFAULTS: dict[str, object] = {}
FINGERPRINT_VERSION = 2


def fingerprint(config: RunConfig, data_checksum: str) -> str:
    """Identity of a run's resolved configuration and data: equal fingerprints, interchangeable runs.
    A `cnn_tuned` run also depends on the space its recipe was searched in."""
    params = {k: v for k, v in config.as_params().items() if LATER_DEFAULTS.get(k, object()) != v}
    if config.method == "cnn_tuned":
        params["search_space"] = TUNED_SEARCH_SPACE
    payload = json.dumps({**params, "dataset_sha256": data_checksum, "version": FINGERPRINT_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
