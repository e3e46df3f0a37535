"""The tuned supervised baseline's recipe search (`cnn_tuned`), on the validation split only.

Oliver et al. (2018) ask that a semi-supervised method be compared with a supervised baseline of the
same network tuned with the same care. What limits this network on a few hundred images is over-fitting,
so the search covers what counters it: augmentation, weight decay, and the number of epochs (every
candidate trains for `TUNED_EPOCH_FACTOR` times the protocol's epochs and is scored at its best
validation epoch, i.e. early stopping), at the usual Adam settings for a supervised network.

The search is run once per (dataset, protocol, label count, precision, architecture) on the labeled subset of
`SEARCH_SEED`, and its recipe serves every seed. Nothing here is given test data: the functions below
take the labeled subset, the unlabeled pool and the validation split, and nothing else.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.config import NUM_CLASSES, SEARCH_SEED, TUNED_SEARCH_SPACE, RunConfig
from pipeline.core.models import build_models
from pipeline.core.training import History, fit, make_trainer
from pipeline.stopping import raise_if_stopped


@dataclass(frozen=True)
class Candidate:
    recipe: dict[str, object]
    score: float  # best validation accuracy over its epochs
    best_epoch: int
    history: History
    seconds: float | None = None  # a reused candidate's training time, as its run recorded it


def recipes() -> list[dict[str, object]]:
    keys = list(TUNED_SEARCH_SPACE)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*TUNED_SEARCH_SPACE.values())]


def search_recipe(
    config: RunConfig,
    x_labeled: np.ndarray,
    y_labeled: np.ndarray,
    x_pool: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    on_candidate: Callable[[Candidate], None] | None = None,
    finished: Sequence[Candidate] = (),
) -> tuple[dict[str, object], list[Candidate]]:
    """Train every recipe of the grid on the given labeled subset (seed `SEARCH_SEED`) and return the
    one with the best validation accuracy at its best epoch, with every candidate's result. Recipes in
    `finished` (a stopped search's; each candidate trains on its own, so they are what it would give) are
    not trained again."""
    results = []
    for recipe in recipes():
        if done := [c for c in finished if c.recipe == recipe]:
            results.append(done[0])
            continue
        candidate = replace(config, seed=SEARCH_SEED, select_epoch="best_validation", **recipe)
        models = build_models(
            candidate.method,
            candidate.variant,
            NUM_CLASSES,
            candidate.latent_dim,
            candidate.seed,
            candidate.precision,
            candidate.architecture,
        )
        trainer = make_trainer(candidate, models, x_labeled, y_labeled, x_pool)
        history = fit(trainer, {"val": (x_val, y_val)}, verbose=False)
        best = history.selected[""]
        results.append(Candidate(recipe, history.metrics["val_accuracy"][best - 1], best, history))
        if on_candidate is not None:
            on_candidate(results[-1])
        raise_if_stopped()  # a stop lost during the candidate's last evaluation ends the search here
    winner = max(results, key=lambda c: c.score)  # max keeps the first of equal scores
    return winner.recipe, results
