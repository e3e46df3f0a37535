"""Weight normalization (Salimans and Kingma 2016) as improved-gan uses it: a Keras layer and its
data-dependent initialization.

Keras ships no weight-normalized layer, so this one is written out; it is small and its definition is
tested. The Gaussian noise layers of the same networks are Keras' own `GaussianNoise` (additive, zero-mean,
on in training only: the definition improved-gan uses), so saved models need nothing of this package.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

NORM_EPSILON = 1e-6  # inside the square root of a column's squared norm, as improved-gan's `l2normalize`


class WeightNormDense(layers.Layer):
    """y = activation(x @ W + b) with W = direction * scale / ||direction|| (each unit's column
    normalized): the length of each unit's weight vector is `scale`, learned apart from its direction.

    `trainable_scale=False` (improved-gan's hidden layers) fixes the scale after the data-dependent
    initialization; the output layer learns it. Not registered with Keras (see `pipeline.core.models.ImageConv2D`);
    `portable_weights` gives a stock `Dense` layer's kernel and bias."""

    def __init__(
        self,
        units: int,
        activation=None,
        trainable_scale: bool = False,
        direction_initializer="random_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.trainable_scale = trainable_scale
        self.direction_initializer = keras.initializers.get(direction_initializer)

    def build(self, input_shape):
        inputs = input_shape[-1]
        self.direction = self.add_weight(
            shape=(inputs, self.units), initializer=self.direction_initializer, name="direction"
        )
        self.scale = self.add_weight(
            shape=(self.units,), initializer="ones", name="scale", trainable=self.trainable_scale
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def kernel(self):
        norm = ops.sqrt(ops.sum(ops.square(self.direction), axis=0) + NORM_EPSILON)
        return self.direction * (self.scale / norm)

    def pre_activation(self, inputs):
        return ops.matmul(inputs, ops.cast(self.kernel(), inputs.dtype)) + ops.cast(self.bias, inputs.dtype)

    def call(self, inputs):
        return self.activation(self.pre_activation(inputs))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def initialize(self, inputs) -> None:
        """Data-dependent initialization: choose scale and bias so that the pre-activations on `inputs` have
        zero mean and unit variance per unit (improved-gan's `init=True` pass)."""
        outputs = np.asarray(ops.matmul(inputs, self.kernel()))
        mean, std = outputs.mean(axis=0), outputs.std(axis=0)
        self.scale.assign(np.asarray(self.scale) / std)
        self.bias.assign(-mean / std)

    def portable_weights(self) -> list[np.ndarray]:
        return [np.asarray(self.kernel()), np.asarray(self.bias)]


def initialize_from_data(model: keras.Model, images) -> None:
    """Initialize every `WeightNormDense` of a chain of layers on one batch, first to last, each on what the
    layers before it (already initialized, noise on as in improved-gan's initialization pass) make of it."""
    x = images
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        if isinstance(layer, WeightNormDense):
            layer.initialize(x)
        x = layer(x, training=True)
