"""Names that runs in the tracking store are written under: the contract between the code that writes
runs (tracking, runs, sweep) and the code that reads them (report). Plain constants, so the report can
read them without importing TensorFlow."""

FINGERPRINT_TAG = "config_fingerprint"  # a run's resolved configuration and data; a sweep reuses a match
SEARCH_TAG = "recipe_search_key"  # on a cnn_tuned recipe search: what the search depends on
CANDIDATE_TAG = "search_candidate"  # on each recipe tried by a search (nested under it)
SEARCH_SECONDS = "recipe_search_seconds"  # on a cnn_tuned run: its process's time in the search, not in training
SWEEP_TAG = "sweep"  # on a sweep's parent run
OWNER_TAG = "sweep_process"  # on a sweep's parent run: the process running it (see pipeline.sweep.owner)
STOPS_TAG = "earlier_stops"  # on a resumed run: why each stop it was resumed from ended it (its old `error`)
REPORT_TAG = "report"  # on a report run
TRIALS_FILE = "trials.json"  # in a sweep's parent run: every trial's run id, reused ones included
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens such experiments on runs
IMAGE_KEY = "generated_images"  # the per-epoch grid of generated digits
CHECKPOINT_DIR = "checkpoint"  # in a training run: the last epoch's checkpoint (see pipeline.core.checkpoint)
CHECKPOINT_STATE = "state.json"  # in CHECKPOINT_DIR: the epoch it holds and the metric history
CONFUSION_FIGURE = "confusion_matrix.png"  # in a training run: its reported classifier on the test split
PER_CLASS_TABLE = "per_class_accuracy.json"  # in a training run: the same, per class (an MLflow table)
