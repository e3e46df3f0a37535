"""A sweep's grid of trials, checked before anything trains, the command each trial runs, and what became of it."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

from pipeline.config import RunConfig, fingerprint, resolve_config, search_key, takes, user_settings
from pipeline.data import labeled_subset, load_dataset


@dataclass(frozen=True)
class Trial:
    config: RunConfig
    fingerprint: str


@dataclass
class Outcome:
    name: str
    method: str
    arm: str
    labels: int
    seed: int
    status: str  # FINISHED or FAILED
    run_id: str | None
    final_test_accuracy: float | None
    reused: bool
    seconds: float  # the trial's whole training run: a resumed trial's earlier processes included
    error: str | None = None
    resumed: bool = False  # continued from a checkpoint a stopped sweep left

    @classmethod
    def of(cls, trial: Trial, status: str, run_id: str | None, reused: bool, seconds: float = 0.0) -> Outcome:
        config = trial.config
        return cls(
            config.run_name,
            config.method,
            config.arm,
            config.labels,
            config.seed,
            status,
            run_id,
            None,
            reused,
            seconds,
        )


def plan_trials(
    methods: list[str], labels: list[int], seeds: list[int], listed: dict[str, list] | None = None, **settings
) -> list[Trial]:
    """Validate the whole grid, data included, before anything trains. `listed` gives several values of
    settings that make arms (`setting(listed=True)`: variant, generator loss, augmentation); each method
    gets a trial for every combination of those it takes. `settings` are the other `resolve_config`
    settings, shared by every trial. Trials are ordered label count by label count in the order given,
    then seed by seed, so that the arms of one (labels, seed) run back to back: partial sweeps stay paired."""
    listed = listed or {}
    recipes = []
    for method in methods:
        axes = [f.name for f in user_settings() if f.metadata["listed"] and takes(method, f) and f.name in listed]
        for values in itertools.product(*(listed[name] for name in axes)):
            recipes.append((method, dict(zip(axes, values, strict=True))))
    configs = [
        resolve_config(method, labels=count, seed=seed, **values, **settings)
        for count in labels
        for seed in seeds
        for method, values in recipes
    ]
    data = load_dataset(configs[0].dataset)
    for count in labels:  # rejects counts a class cannot supply outside the validation split
        labeled_subset(data.y_train, count, 0, data.num_classes, data.validation, configs[0].labeled_subset)
    return [Trial(config, fingerprint(config, data.checksum)) for config in configs]


def trial_command(config: RunConfig, parent_run_id: str) -> list[str]:
    """`python -m pipeline <method>` with every user setting the method takes, as its CLI flag (the
    MLproject's parameters have the same names)."""
    command = [sys.executable, "-m", "pipeline", config.method, "--parent-run-id", parent_run_id]
    command += ["--experiment", config.experiment]
    for field in user_settings():
        if takes(config.method, field):
            command += [f"--{field.name.replace('_', '-')}", str(getattr(config, field.name))]
    return command


def search_group(config: RunConfig) -> str | None:
    """cnn_tuned trials that share one recipe search: the same search key (a sweep's trials share their
    data, so its name stands in for its checksum)."""
    return search_key(config, config.dataset) if config.method == "cnn_tuned" else None
