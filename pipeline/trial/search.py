"""The tuned baseline's recipe search as MLflow runs: one search run per (dataset, protocol, label count,
precision, architecture) in an experiment, with a nested run per candidate, found again by its key.

A stopped search is continued in its own run: the candidates it (or an earlier stopped one) finished are
reused, the rest trained. What the search tries and how it scores is `pipeline.core.tuning`'s."""

from __future__ import annotations

import json
import time

import mlflow

from pipeline.config import SEARCH_SEED, TUNED_SEARCH_SPACE, RunConfig, search_key
from pipeline.core.training import History
from pipeline.core.tuning import Candidate, recipes, search_recipe
from pipeline.data import Dataset, labeled_subset
from pipeline.faults import fault_point
from pipeline.schema import CANDIDATE_TAG, SEARCH_TAG
from pipeline.sweep.events import CandidateDone, emit
from pipeline.tracking.store import continue_stopped_run, log_new_params, newest_run, stops_recorded
from pipeline.trial.record import data_params, log_epoch_metrics


class RecipeSearch:
    """The recipe of `cnn_tuned` for `config`: from a finished search in the experiment, else from a search
    run made (or continued) here."""

    def __init__(
        self, config: RunConfig, dataset: Dataset, experiment_id: str, parent_run_id: str | None, verbose: bool
    ):
        self.config, self.dataset, self.verbose = config, dataset, verbose
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.key = search_key(config, dataset.checksum)
        suffix = "" if config.architecture == "mlm" else f"-{config.architecture}"
        self.name = f"cnn_tuned-search{suffix}-{config.dataset}-L{config.labels}"
        self.done, self.total = 0, len(recipes())
        self.clock = 0.0  # when the candidate being trained started

    def recipe(self) -> tuple[dict[str, object], str]:
        """The chosen recipe and the search's run id."""
        found = newest_run(self.experiment_id, f"tags.{SEARCH_TAG} = '{self.key}' and attributes.status = 'FINISHED'")
        if found:
            return json.loads(found.data.params["chosen_recipe"]), found.info.run_id
        stopped = newest_run(self.experiment_id, f"tags.{SEARCH_TAG} = '{self.key}'")  # none finished: stopped
        finished = self.finished_candidates() if stopped else []
        started = (
            {"run_id": stopped.info.run_id}
            if stopped
            else {
                "run_name": self.name,
                "parent_run_id": self.parent_run_id,
                "tags": {SEARCH_TAG: self.key, "recipe_search": "true"},
            }
        )
        with mlflow.start_run(experiment_id=self.experiment_id, **started) as search, stops_recorded():
            if stopped:
                continue_stopped_run(search, self.parent_run_id)
            for candidate in finished:
                self.done += 1
                self.report(candidate, candidate.seconds, reused=True)
            log_new_params(self.params())
            recipe = self.run(finished)
        return recipe, search.info.run_id

    def params(self) -> dict[str, object]:
        config = self.config
        return {
            "labels": config.labels,
            "dataset": config.dataset,
            "protocol": config.protocol,
            "precision": config.precision,
            "architecture": config.architecture,
            "search_space": json.dumps(TUNED_SEARCH_SPACE),
            "search_seed": SEARCH_SEED,
            "max_epochs": config.train_epochs,
            **data_params(self.dataset),
        }

    def run(self, finished: list[Candidate]) -> dict[str, object]:
        """Train the candidates not `finished` on the search seed's subset (never an evaluated seed's), score
        every one on validation, and log the table and the choice to the search run."""
        data = self.dataset
        indices = labeled_subset(
            data.y_train, self.config.labels, SEARCH_SEED, data.num_classes, data.validation, self.config.labeled_subset
        )
        self.clock = time.perf_counter()
        recipe, candidates = search_recipe(
            self.config,
            data.x_train[indices],
            data.y_train[indices],
            data.x_train[data.pool],
            data.x_train[data.validation],
            data.y_train[data.validation],
            self.log_candidate,
            finished,
        )
        table = [{**c.recipe, "best_val_accuracy": c.score, "best_epoch": c.best_epoch} for c in candidates]
        mlflow.log_dict({"candidates": table, "chosen": recipe}, "search.json")
        mlflow.log_param("chosen_recipe", json.dumps(recipe))
        mlflow.log_metric("best_val_accuracy", max(c.score for c in candidates))
        return recipe

    def log_candidate(self, candidate: Candidate) -> None:
        """A candidate just trained, as its own run nested under the search."""
        self.done += 1
        seconds, self.clock = time.perf_counter() - self.clock, time.perf_counter()
        with mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=f"{self.name}-{self.done}",
            nested=True,
            tags={CANDIDATE_TAG: "true"},
        ):
            mlflow.log_params({**candidate.recipe, "num_epochs": self.config.train_epochs, "search_seed": SEARCH_SEED})
            log_epoch_metrics(candidate.history, range(1, self.config.train_epochs + 1))
            metrics = {"best_val_accuracy": candidate.score, "best_epoch": candidate.best_epoch}
            mlflow.log_metrics({**metrics, "train_seconds": seconds})
        self.report(candidate, seconds)
        fault_point("candidate_logged", candidate=self.done)

    def report(self, candidate: Candidate, seconds: float | None, reused: bool = False) -> None:
        """An event per candidate with how long it trained (a reused one: as its run recorded), about what a
        trial of its recipe takes, which a sweep reads for its ETA; and a line for the console."""
        event = CandidateDone(
            self.done, self.total, candidate.recipe, candidate.score, candidate.best_epoch, seconds, reused
        )
        emit(event)
        if self.verbose:
            print(f"search {self.done}/{self.total}: {event.describe()}", flush=True)

    def finished_candidates(self) -> list[Candidate]:
        """The candidates that stopped searches of this key finished, one per recipe (their scores; a reused
        candidate's per-epoch history stays in its own run)."""
        client = mlflow.MlflowClient()
        key_filter = f"tags.{SEARCH_TAG} = '{self.key}'"
        searches = {run.info.run_id for run in client.search_runs([self.experiment_id], key_filter)}
        runs = client.search_runs(
            [self.experiment_id], f"tags.{CANDIDATE_TAG} = 'true' and attributes.status = 'FINISHED'", max_results=50000
        )
        found: list[Candidate] = []
        for run in runs:
            if run.data.tags.get("mlflow.parentRunId") not in searches:
                continue
            params, metrics = run.data.params, run.data.metrics
            for recipe in recipes():
                if all(params.get(k) == str(v) for k, v in recipe.items()) and recipe not in [c.recipe for c in found]:
                    score, best = metrics["best_val_accuracy"], int(metrics["best_epoch"])
                    found.append(Candidate(recipe, score, best, History(), metrics.get("train_seconds")))
        return sorted(found, key=lambda c: recipes().index(c.recipe))
