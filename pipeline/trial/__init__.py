"""One tracked run, the process a trial is: the training core's run recorded in MLflow (params, inputs,
per-epoch metrics, checkpoints, models). The only layer that loads both TensorFlow and MLflow."""
