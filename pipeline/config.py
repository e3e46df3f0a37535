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
METHODS = ("sgan", "cnn", "cnn_tuned", "cnn_source")
BASELINES = ("cnn", "cnn_tuned", "cnn_source")  # supervised methods: the same network, no generator
LABELED_SUBSETS = ("balanced", "first")  # seeded and class-balanced; or the first N images, as one source does
PRECISIONS = ("float32", "bfloat16")  # bfloat16: mixed precision, float32 weights
GENERATOR_LOSSES = ("non_saturating", "feature_matching")
# Keras' Adam, or improved-gan's (epsilon inside the square root: see pipeline.core.optimizers); a protocol's choice
OPTIMIZERS = ("adam", "inner_epsilon_adam")
# of the labeled images in the supervised update: none, or random translations of up to 2 pixels. A choice of
# the methods with a fixed recipe (part of their arm); cnn_tuned's search chooses its own, cnn_source follows
# its source.
AUGMENTATIONS = ("none", "shift")
AUGMENTED_METHODS = ("sgan", "cnn")
NUM_CLASSES = 10  # every supported dataset has ten classes
TUNED_EPOCH_FACTOR = 3  # cnn_tuned may train this many times the protocol's epochs, stopping early
# cnn_tuned's recipe search (see pipeline.core.tuning): RunConfig fields and the values tried; the grid is
# their product in this order, and ties go to the earlier recipe.
SEARCH_SEED = 0  # whose labeled subset cnn_tuned's search trains on
TUNED_SEARCH_SPACE: dict[str, tuple] = {
    "learning_rate": (1e-3,),
    "beta_1": (0.9,),
    "augment": AUGMENTATIONS,
    "weight_decay": (0.0, 0.1),
}


class ConfigError(ValueError):
    """A setting given by the user is invalid; the message names the setting."""


@dataclass(frozen=True)
class Architecture:
    """The networks of one source, and the supervised baseline that source trains (`cnn_source`), as
    RunConfig fields plus `epochs`: full passes over the labeled images, like Keras' `fit`."""

    why: str
    source_baseline: dict[str, object] | None = None
    batchnorm: str = "none"  # how its BatchNorm keeps moving statistics ("none": it has no BatchNorm)
    # the parts of its source's recipe that go with the networks (derived from the architecture, so already in
    # every run's arm and fingerprint):
    discriminator_step: str = "separate"  # "separate": supervised, real, generated updates; "joint": one update
    latent: str = "normal"  # the generator's noise: standard normal, or uniform on [0, 1)
    labeled_batches: str = "uniform"  # "uniform": drawn with replacement; "tiled": every labeled image equally often
    variants: tuple[str, ...] = VARIANTS  # the SGAN variants its discriminator can be built as
    baseline_name: str = "cnn"  # what its supervised baseline is called in reports (the network is not a CNN)


ARCHITECTURES: dict[str, Architecture] = {
    "mlm": Architecture(
        "the Machine Learning Mastery tutorial's networks (Odena 2016 / Salimans et al. 2016 style): 3x 128-filter "
        "convolutions, LeakyReLU 0.2, no BatchNorm; its source trains no supervised baseline"
    ),
    "gans_in_action": Architecture(
        "GANs in Action (Langr and Bok), chapter 7: convolutions of 32/64/128 filters with BatchNorm, LeakyReLU "
        "0.01, dropout 0.5; a BatchNorm generator from 7x7x256",
        {"epochs": 30, "batch_size": 32, "discriminator_batch": 32, "learning_rate": 1e-3, "beta_1": 0.9},
        batchnorm="zero_debiased",  # as Keras 2 kept them, which the book used (`DebiasedBatchNormalization`)
    ),
    "improved_gan": Architecture(
        "Salimans et al. (2016), openai/improved-gan's MNIST code: a weight-normalized ReLU MLP discriminator "
        "(1000-500-250-250-250, Gaussian noise 0.3 on the input and 0.5 after every hidden layer, data-dependent "
        "initialization) and a 500-500 softplus BatchNorm MLP generator; one joint discriminator update, feature "
        "matching; its supervised baselines are that MLP",
        discriminator_step="joint",
        latent="uniform",
        labeled_batches="tiled",
        variants=("stacked",),
        baseline_name="mlp",
    ),
}


@dataclass(frozen=True)
class Profile:
    """A protocol: the training budget and the optimizer and batch settings every method of it uses."""

    epochs: int
    steps_per_epoch: int
    why: str
    batch_size: int = 100  # generated images per generator update
    discriminator_batch: int = 50  # labeled, real and generated images per discriminator update
    learning_rate: float = 2e-4
    beta_1: float = 0.5
    ema_decay: float = 0.999  # of the moving average of the classifier's weights
    optimizer: str = "adam"  # one of OPTIMIZERS


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        2,
        5,
        "seconds per run: for tests and for checking an installation; small batches, since a run of this "
        "profile checks that everything works, not what it reaches (batches of 100 were a quarter of its CPU time)",
        batch_size=20,
        discriminator_batch=10,
    ),
    "quick": Profile(
        10,
        60,
        "a twentieth of the reference protocol, so that a whole MNIST sweep fits a 2-core CPU in an evening: 600 "
        "steps already separate the SGAN from the CNN at 100 labels",
    ),
    "paper": Profile(20, 600, "the reference protocol: 20 epochs of 600 steps of batch 100 (one MNIST pass per epoch)"),
    "gans_in_action": Profile(
        10,
        800,
        "the GANs in Action protocol: 8,000 iterations of batch 32 (labeled, unlabeled and generated alike), Adam "
        "with Keras' defaults, logged as 10 epochs of 800 (the book's sampling interval)",
        batch_size=32,
        discriminator_batch=32,
        learning_rate=1e-3,
        beta_1=0.9,
    ),
    "improved_gan": Profile(
        300,
        600,
        "the improved-gan MNIST protocol: 300 epochs of 600 iterations, batches of 100 labeled, 100 unlabeled and "
        "100 generated images, Adam 3e-3 / 0.5, the classifier's weights averaged with decay 0.9999",
        batch_size=100,
        discriminator_batch=100,
        learning_rate=3e-3,
        beta_1=0.5,
        ema_decay=0.9999,
        optimizer="inner_epsilon_adam",
    ),
}


def setting(
    default: object,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    methods: tuple[str, ...] = METHODS,
    absent: object = None,
    listed: bool = False,
    grid: tuple[str, str] | None = None,
    profile: bool = False,
    later: bool = False,
    arm: bool = False,
    tag: bool = False,
    method_defaults: dict[str, object] | None = None,
):
    """A RunConfig field and everything derived from it, declared in one place:

    - `help`: a user setting: a flag of every command that takes it (`--name-with-dashes`), a parameter of
      the MLproject entry points (generated from the CLI), passed on by the sweep to its trials;
    - `choices`: the values accepted (checked by `resolve_config`, listed in the help);
    - `methods`: the methods that take it; for the others it is `absent` (and any other value is refused);
    - `listed`: sweeps take a comma-separated list of values, one arm each; `grid`: sweeps take a list under
      this (flag, default), one trial each;
    - `profile`: filled in from the profile (`Profile` has a field of the same name) unless given;
    - `later`: added after runs were first logged: left out of the fingerprint at its default, so those runs
      still match;
    - `arm`: part of an arm's name; `tag`: also set as a run tag (for search filters and the UI's columns);
    - `method_defaults`: a method whose default differs (`cnn_source` takes its architecture's source)."""
    metadata = {
        "help": help,
        "choices": choices,
        "methods": methods,
        "absent": absent,
        "listed": listed,
        "grid": grid,
        "profile": profile,
        "later": later,
        "arm": arm,
        "tag": tag,
        "method_defaults": method_defaults or {},
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunConfig:
    """Every resolved setting of one training run; all of it is logged as MLflow params."""

    method: str
    dataset: str = setting("mnist", "the data", choices=DATASETS, tag=True)
    labels: int = setting(100, "labeled training examples", grid=("labels", "25,50,100,1000"))
    seed: int = setting(0, "fixes the labeled subset and the initialisation", grid=("seeds", "0,1,2"))
    profile: str = setting("quick", "the protocol: budget, batches and optimizer (see README)", choices=tuple(PROFILES))
    variant: str = setting(
        "stacked", "SGAN variant", choices=VARIANTS, methods=("sgan",), absent="none", listed=True, tag=True
    )
    epochs: int = setting(PROFILES["quick"].epochs, "override the profile's epochs", profile=True)
    steps_per_epoch: int = setting(
        PROFILES["quick"].steps_per_epoch, "override the profile's steps per epoch", profile=True
    )
    experiment: str = ""  # where the run lives, not a param; the CLI's flag is its own (see pipeline.cli)
    batch_size: int = setting(100, profile=True)  # generated images per generator update
    discriminator_batch: int = setting(50, profile=True, later=True)  # labeled, real and generated per D update
    latent_dim: int = 100
    learning_rate: float = setting(2e-4, profile=True)
    beta_1: float = setting(0.5, profile=True)
    eval_batch_size: int = 1000
    grid_size: int = 10  # the generated-image grid is grid_size x grid_size
    precision: str = setting(
        "float32", "float32, or bfloat16 (mixed precision, float32 weights)", choices=PRECISIONS, arm=True
    )
    generator_loss: str = setting(
        "non_saturating",
        "SGAN generator loss",
        choices=GENERATOR_LOSSES,
        methods=("sgan",),
        absent="none",
        listed=True,
        arm=True,
    )
    ema_decay: float = setting(0.999, profile=True)  # moving average of the classifier weights (see MovingAverage)
    weight_decay: float = 0.0  # decoupled (AdamW); 0 is plain Adam
    augment: str = setting(
        "none",
        "random 2-pixel translations of the labeled images in the supervised update (cnn_tuned's search chooses "
        "its own)",
        choices=AUGMENTATIONS,
        methods=AUGMENTED_METHODS,
        absent="none",
        listed=True,
        arm=True,
    )
    select_epoch: str = "last"  # "best_validation": report the epoch with the best validation accuracy
    architecture: str = setting(
        "mlm",
        "the networks, each with its protocol (see README)",
        choices=tuple(ARCHITECTURES),
        later=True,
        arm=True,
        tag=True,
        method_defaults={"cnn_source": "gans_in_action"},
    )
    labeled_subset: str = setting(
        "balanced", "seeded class-balanced labeled images, or the first N", choices=LABELED_SUBSETS, later=True
    )
    source_epochs: int = setting(0, later=True)  # cnn_source: passes over the labeled images (0 for the others)
    batchnorm: str = setting("none", later=True)  # the architecture's BatchNorm statistics: "zero_debiased", "none"
    optimizer: str = setting("adam", profile=True, later=True)  # the protocol's form of Adam (OPTIMIZERS)

    @property
    def train_epochs(self) -> int:
        """Epochs actually trained: the protocol's; for `cnn_tuned` a multiple of them (early stopping
        on the validation split decides which epoch counts); for `cnn_source` its source's count."""
        if self.method == "cnn_source":
            return self.source_epochs
        return self.epochs * (TUNED_EPOCH_FACTOR if self.method == "cnn_tuned" else 1)

    @property
    def train_steps_per_epoch(self) -> int:
        """Steps per trained epoch: the protocol's, or for `cnn_source` one pass over the labeled images
        (the last batch smaller, as in Keras' `fit`)."""
        if self.method == "cnn_source":
            return -(-self.labels // self.discriminator_batch)
        return self.steps_per_epoch

    @property
    def labeled_sampling(self) -> str:
        """How labeled batches are drawn: `uniform` (with replacement, every step), `passes` (shuffled
        passes over the labeled images, the supervised recipe of `cnn_source`) or `tiled` (improved-gan's:
        every labeled image equally often in each batch; see `pipeline.core.training.tiled_indices`)."""
        return "passes" if self.method == "cnn_source" else ARCHITECTURES[self.architecture].labeled_batches

    @property
    def networks(self) -> Architecture:
        return ARCHITECTURES[self.architecture]

    @property
    def total_steps(self) -> int:
        return self.train_epochs * self.train_steps_per_epoch

    @property
    def protocol(self) -> str:
        """The training budget runs are compared under: the profile and its epochs x steps, and the rule
        that picked the labeled images when it is not the default."""
        rule = "" if self.labeled_subset == "balanced" else f", {self.labeled_subset} {self.labels} labeled"
        return f"{self.profile} {self.epochs}x{self.steps_per_epoch}{rule}"

    @property
    def arm(self) -> str:
        return arm_name(self.method, self.variant, self.generator_loss, self.precision, self.architecture, self.augment)

    @property
    def run_name(self) -> str:
        tag = (
            f"{self.method}-{self.variant}"
            if self.method == "sgan"
            else baseline_display(self.method, self.architecture)
        )
        if self.method == "sgan" and self.generator_loss == "feature_matching":
            tag += "-fm"
        if self.method in AUGMENTED_METHODS and self.augment != "none":
            tag += f"-{self.augment}"
        if self.architecture != "mlm":
            tag += f"-{self.architecture}"
        return f"{tag}-{self.dataset}-L{self.labels}-s{self.seed}"

    def as_params(self) -> dict[str, object]:
        """The resolved settings as MLflow params. `mlflow run` logs its raw entry-point parameters
        first (`epochs=''` for "the profile's"), and params are immutable, so the resolved epoch count
        goes under `num_epochs`; the experiment is where the run lives, not a param."""
        params = dataclasses.asdict(self)
        params["num_epochs"] = params.pop("epochs")
        del params["experiment"]
        return params


def arm_name(
    method: str,
    variant: str,
    generator_loss: str = "non_saturating",
    precision: str = "float32",
    architecture: str = "mlm",
    augment: str = "none",
) -> str:
    """An arm is everything that defines a method's recipe (not the data, the protocol or the seed), as
    one readable name: `sgan stacked`, `sgan two_head feature matching bfloat16`, `sgan stacked shift`,
    `cnn_tuned` (whatever its search chose), `cnn_source gans_in_action`; a baseline of an architecture
    whose network is no CNN is named after it (`mlp_tuned improved_gan`)."""
    parts = [baseline_display(method, architecture)]
    if method == "sgan":
        parts.append(variant)
        if generator_loss not in ("non_saturating", "none"):
            parts.append(generator_loss.replace("_", " "))
    if method in AUGMENTED_METHODS and augment != "none":
        parts.append(augment)
    if precision != "float32":
        parts.append(precision)
    if architecture != "mlm":
        parts.append(architecture)
    return " ".join(parts)


def baseline_display(method: str, architecture: str = "mlm") -> str:
    """A method's name as runs and reports show it: `cnn`, `cnn_tuned` ... say what the baseline's network
    is (`mlp`, `mlp_tuned` for improved-gan's MLP); the method (the CLI command, the `method` tag) stays."""
    name = ARCHITECTURES[architecture].baseline_name if architecture in ARCHITECTURES else "cnn"
    return name + method[len("cnn") :] if method in BASELINES else method


def is_baseline_arm(arm: str) -> bool:
    """Whether an arm name is a supervised baseline's, whatever its network is called."""
    return arm.split()[0] in {baseline_display(m, a) for m in BASELINES for a in ARCHITECTURES}


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


def parse_list(name: str, text: str, cast=str) -> list:
    """'25,50, 100' -> [25, 50, 100], with an error that names the parameter."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{name} must list at least one value, got {text!r}")
    try:
        values = [cast(item) for item in items]
    except ValueError:
        raise ConfigError(f"{name}={text!r} must be a comma-separated list of {cast.__name__} values") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{name}={text!r} lists a value twice")
    return values


def user_settings() -> list[dataclasses.Field]:
    """The settings a user gives (flags, MLproject parameters, trial arguments), in RunConfig's order."""
    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("help")]


def setting_default(name: str, method: str = "") -> object:
    """A setting's default (for `method`, where its default differs)."""
    field = RunConfig.__dataclass_fields__[name]
    return field.metadata.get("method_defaults", {}).get(method, field.default)


def takes(method: str, field: dataclasses.Field) -> bool:
    return method in field.metadata.get("methods", METHODS)


def resolve_config(method: str, experiment: str | None = None, **given: object) -> RunConfig:
    """Validate user settings (any of `user_settings()`, by name) and fill in the rest from the profile;
    explicit values win. `cnn_source` takes its optimizer, batch and epochs from its architecture's source
    instead of the profile. A setting the method does not take may only be left at its default."""
    check_choice("method", method, METHODS)
    fields = {f.name: f for f in user_settings()}
    unknown = set(given) - set(fields)
    if unknown:
        raise TypeError(f"resolve_config() got unknown settings: {', '.join(sorted(unknown))}")
    values: dict[str, object] = {}
    for name, field in fields.items():
        default = setting_default(name, method)
        value = given.get(name, None if field.metadata["profile"] else default)
        if field.metadata["choices"] is not None:
            check_choice(name, value, field.metadata["choices"])
        if not takes(method, field):
            if value != default:
                who = ", ".join(field.metadata["methods"])
                raise ConfigError(f"{name}={value!r}: {method} does not take this setting (only {who})")
            value = field.metadata["absent"]
        values[name] = value
    architecture, variant = values["architecture"], given.get("variant", "stacked")
    source = ARCHITECTURES[architecture].source_baseline
    if method == "cnn_source" and source is None:
        with_one = ", ".join(name for name, known in ARCHITECTURES.items() if known.source_baseline)
        raise ConfigError(
            f"method=cnn_source: architecture={architecture!r} has no supervised baseline in its source; "
            f"use cnn or cnn_tuned, or an architecture with one ({with_one})"
        )
    if method == "sgan" and variant not in ARCHITECTURES[architecture].variants:
        raise ConfigError(
            f"variant={variant!r}: the {architecture} discriminator is built as "
            f"{', '.join(ARCHITECTURES[architecture].variants)} only"
        )
    validate_labels(values["labels"])
    _positive("epochs", values["epochs"])
    _positive("steps_per_epoch", values["steps_per_epoch"])
    if values["seed"] < 0:
        raise ConfigError(f"seed={values['seed']} must be zero or positive")
    chosen = PROFILES[values["profile"]]
    from_profile = [f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("profile")]
    recipe = {name: getattr(chosen, name) for name in from_profile if values.get(name) is None}
    if method == "cnn_source":
        recipe |= {k: v for k, v in source.items() if k != "epochs"} | {"source_epochs": source["epochs"]}
    return RunConfig(
        method=method,
        **{name: value for name, value in values.items() if value is not None},
        **recipe,
        experiment=experiment or default_experiment(values["dataset"], values["profile"]),
        select_epoch="best_validation" if method == "cnn_tuned" else "last",
        batchnorm=ARCHITECTURES[architecture].batchnorm,
    )


def default_experiment(dataset: str, profile: str) -> str:
    return f"{dataset}-{profile}"


# Settings added after runs were first logged (`setting(later=True)`), left out of the fingerprint at their
# default so that those runs still match (a sweep resumed with newer code reuses them). Fingerprints start
# anew with FINGERPRINT_VERSION 2: the validation split changed which images may be labeled.
def later_defaults() -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(RunConfig) if f.metadata.get("later")}


FINGERPRINT_VERSION = 2


def search_key(config: RunConfig, data_checksum: str) -> str:
    """What a search depends on: equal keys, the same recipe."""
    payload = {
        "dataset_sha256": data_checksum,
        "protocol": config.protocol,
        "labels": config.labels,
        "precision": config.precision,
        "ema_decay": config.ema_decay,
        "space": TUNED_SEARCH_SPACE,
        "seed": SEARCH_SEED,
    }
    if config.architecture != "mlm":  # added later: searches of the first architecture keep their keys
        payload["architecture"] = config.architecture
    if config.batchnorm != "none":
        payload["batchnorm"] = config.batchnorm
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(config: RunConfig, data_checksum: str) -> str:
    """Identity of a run's resolved configuration and data: equal fingerprints, interchangeable runs.
    A `cnn_tuned` run also depends on the space its recipe was searched in."""
    params = {k: v for k, v in config.as_params().items() if later_defaults().get(k, object()) != v}
    if config.method == "cnn_tuned":
        params["search_space"] = TUNED_SEARCH_SPACE
    if config.method == "sgan" and config.precision == "bfloat16":
        # the generator's transposed-convolution bias gradients were summed in bfloat16 before
        # `SummedBiasConv2DTranspose` (badly wrong: see its docstring); those runs differ, so they run again
        params["bias_gradient"] = "float32_sum"
    payload = json.dumps({**params, "dataset_sha256": data_checksum, "version": FINGERPRINT_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
