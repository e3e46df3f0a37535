"""Sweeps, with MLflow and never TensorFlow: the grid of trials, the one scheduling loop and its executors
(local processes, Ray), progress, recovery after a stop or a crash. Each trial is a `pipeline.trial` process."""
