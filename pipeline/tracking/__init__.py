"""The tracking store, with MLflow and never TensorFlow: where runs go, how a stopped run is ended, the Model
Registry. A sweep's driver and the report use it without loading TensorFlow."""
