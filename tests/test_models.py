"""The generator's fast layers compute what the stock Keras layers compute, forwards and backwards."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.models import ImageConv2D, SummedBiasConv2DTranspose, build_generator, build_models, portable_copy


def _outputs_and_gradients(layer: keras.layers.Layer, x: tf.Tensor):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.sin(3.0 * y))  # a non-trivial upstream gradient
    return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]


def assert_same_function(stock: keras.layers.Layer, fast: keras.layers.Layer, x: tf.Tensor, tolerance: float) -> None:
    """`fast` computes what `stock` computes, given the same (non-zero bias) weights: outputs, the input
    gradient and every weight gradient, each within `tolerance` of its largest value (float32 sums in
    another order: a bias gradient adds thousands of terms; a wrong tap, shift or sum would be off by
    the order of the values themselves)."""
    stock.build(x.shape)
    fast.build(x.shape)
    fast.set_weights([w + 0.01 for w in stock.get_weights()])
    stock.set_weights(fast.get_weights())
    for expected, actual in zip(_outputs_and_gradients(stock, x), _outputs_and_gradients(fast, x), strict=True):
        assert actual.shape == expected.shape
        scale = float(tf.reduce_max(tf.abs(expected)))
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize(("kernel", "activation"), [(7, "tanh"), (5, None), (3, "tanh"), ((3, 5), None)])
def test_image_conv_matches_stock_conv2d_in_outputs_and_all_gradients(kernel, activation):
    keras.utils.set_random_seed(0)
    x = tf.random.stateless_normal([3, 28, 28, 16], seed=[1, 2])
    stock = keras.layers.Conv2D(1, kernel, padding="same", activation=activation)
    assert_same_function(stock, ImageConv2D(1, kernel, padding="same", activation=activation), x, 1e-4)


@pytest.mark.parametrize(
    ("filters", "kernel", "strides", "activation", "use_bias"),
    [(128, 4, 2, None, True), (1, 3, 2, "tanh", True), (64, 3, 1, None, True), (8, 3, 2, None, False)],
)
def test_summed_bias_transposed_conv_matches_the_stock_layer_in_outputs_and_all_gradients(
    filters, kernel, strides, activation, use_bias
):
    keras.utils.set_random_seed(0)
    x = tf.random.stateless_normal([4, 7, 7, 16], seed=[1, 2])
    settings = dict(strides=strides, padding="same", activation=activation, use_bias=use_bias)
    stock = keras.layers.Conv2DTranspose(filters, kernel, **settings)
    assert_same_function(stock, SummedBiasConv2DTranspose(filters, kernel, **settings), x, 1e-5)


def test_summed_bias_gradient_under_bfloat16_is_the_float32_sum_rounded_once():
    """Mixed precision: the bias gradient of 100 maps of 28x28 (78,400 terms) is accumulated in float32,
    so it is the float32 sum up to one bfloat16 rounding (8 significant bits)."""
    x = tf.random.stateless_normal([100, 14, 14, 8], seed=[5, 6])
    upstream = tf.random.stateless_uniform([100, 28, 28, 16], seed=[7, 8], minval=0.5, maxval=1.5)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = SummedBiasConv2DTranspose(16, 4, strides=2, padding="same")
        layer.build(x.shape)
    finally:
        keras.config.set_dtype_policy(previous)
    with tf.GradientTape() as tape:
        y = layer(x)
        assert y.dtype == tf.bfloat16
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    bias_gradient = tape.gradient(loss, layer.bias.value)
    exact = tf.reduce_sum(upstream, axis=[0, 1, 2])  # about 78,400 each
    np.testing.assert_allclose(bias_gradient.numpy(), exact.numpy(), rtol=2**-8, atol=0)


def test_image_conv_falls_back_to_the_stock_op_where_the_fast_path_does_not_apply():
    x = tf.random.stateless_normal([2, 8, 8, 4], seed=[3, 4])
    stock, fast = keras.layers.Conv2D(2, 3, strides=2), ImageConv2D(2, 3, strides=2)
    stock.build(x.shape)
    fast.build(x.shape)
    fast.set_weights(stock.get_weights())
    np.testing.assert_array_equal(fast(x).numpy(), stock(x).numpy())


def test_portable_generator_is_stock_keras_and_generates_the_same_images():
    models = build_models("sgan", "stacked", 10, 100, seed=0)
    generator = models.generator
    portable = portable_copy(generator)
    assert portable_copy(models.classifier) is models.classifier  # stock layers already
    assert isinstance(generator.get_layer("image"), ImageConv2D)
    assert all(type(layer).__module__.startswith("keras.") for layer in portable.layers)
    z = tf.random.stateless_normal([4, 100], seed=[5, 6])
    np.testing.assert_allclose(portable(z).numpy(), generator(z).numpy(), rtol=0, atol=1e-5)


def test_same_seed_same_generator_weights_whichever_last_layer():
    keras.utils.set_random_seed(7)
    fast = build_generator(100)
    keras.utils.set_random_seed(7)
    stock = build_generator(100, portable=True)
    for a, b in zip(fast.get_weights(), stock.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
