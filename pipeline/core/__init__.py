"""The training core: data to trained networks with TensorFlow and Keras, and nothing of MLflow (it trains
without a store). Checkpoints are plain folders; progress is printed."""
