"""Adam as improved-gan writes it (`nn.adam_updates`), where it differs from Keras' Adam.

Keras adds epsilon (1e-7) after the square root of the second moment; improved-gan adds it (1e-8) inside:
step = lr * m_hat / sqrt(v_hat + 1e-8). The two agree for large gradients, but for gradients near 1e-4 and
below the published form takes steps several times smaller: the improved-gan generator's gradients are
mostly there, so the difference is part of its recipe. Keras has no such option; this subclass changes only
the update's last line.
"""

from __future__ import annotations

import keras
from keras import ops

INNER_EPSILON = 1e-8


class InnerEpsilonAdam(keras.optimizers.Adam):
    """Adam with bias-corrected moments and epsilon inside the square root (improved-gan's form); weight
    decay, when given, is Keras' decoupled one, as in `keras.optimizers.AdamW`."""

    def __init__(self, learning_rate: float, beta_1: float, weight_decay: float | None = None, **kwargs):
        super().__init__(learning_rate, beta_1, epsilon=INNER_EPSILON, weight_decay=weight_decay, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        m_hat = ops.divide(m, 1 - ops.power(ops.cast(self.beta_1, variable.dtype), step))
        v_hat = ops.divide(v, 1 - ops.power(ops.cast(self.beta_2, variable.dtype), step))
        self.assign_sub(variable, ops.divide(ops.multiply(lr, m_hat), ops.sqrt(ops.add(v_hat, self.epsilon))))
