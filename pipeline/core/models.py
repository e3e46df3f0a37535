"""The SGAN networks of the two sources, by `architecture`:

- `mlm`: the Machine Learning Mastery tutorial's (Odena 2016 / Salimans et al. 2016 style);
- `gans_in_action`: GANs in Action (Langr and Bok), chapter 7, with BatchNorm in both networks;
- `improved_gan`: Salimans et al. (2016)'s MNIST MLPs, weight-normalized (`pipeline.core.layers`), with
  Gaussian noise in the discriminator.

The discriminator returns `(class_logits, aux)`: K class logits, and for the variants that need it one
extra logit (`two_head`: the real/fake logit; `k_plus_one`: the logit of the "generated" class). How
the real/fake probability follows from these lives in `pipeline.core.objectives`, so the discriminator is made
of stock Keras layers, and for `gans_in_action` BatchNorm layers whose moving statistics are
zero-debiased as in Keras 2. The `mlm` generator's last layer is `ImageConv2D`, a faster `Conv2D` with the
same weights and function, and the generators' transposed convolutions are `SummedBiasConv2DTranspose`;
`portable_copy` gives the stock-layer copies that are saved and logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from pipeline.core.layers import WeightNormDense
from pipeline.data import IMAGE_SHAPE


@dataclass
class SGANModels:
    discriminator: keras.Model  # image -> [class_logits, aux]
    classifier: keras.Model  # image -> class probabilities (shares the discriminator's layers)
    generator: keras.Model | None  # latent -> image in [-1, 1]; None for the CNN baseline
    features: keras.Model  # image -> the discriminator's last hidden features (shares its layers)
    classifier_ema: keras.Model  # a separate classifier holding the moving average of the weights
    architecture: str = "mlm"


class DebiasedBatchNormalization(layers.BatchNormalization):
    """`BatchNormalization` whose moving statistics are zero-debiased, as Keras 2's TensorFlow backend kept
    them (`moving_average_update` called `assign_moving_average(..., zero_debias=True)`), and so as the
    GANs in Action code ran. Keras 3 blends the batch statistics into the initial 0 and 1 instead: after
    the 120 updates of the book's supervised baseline at 100 labels the initial values still weigh 30%
    (0.99^120), and that baseline scored 45% in inference mode against the notebook's 69%. Here, after t
    updates, the moving statistics are biased / (1 - momentum^t), where biased starts at 0 and follows the
    stock update: the momentum-weighted mean of the t batch statistics alone. Training-mode outputs are the
    stock layer's. Not registered with Keras (see `ImageConv2D`); `portable_copy` gives stock layers that
    hold the same statistics."""

    def build(self, input_shape):
        super().build(input_shape)
        shape = self.moving_mean.shape
        self.biased_mean = self.add_weight(
            shape=shape, name="biased_mean", initializer="zeros", trainable=False, autocast=False
        )
        self.biased_variance = self.add_weight(
            shape=shape, name="biased_variance", initializer="zeros", trainable=False, autocast=False
        )
        self.momentum_power = self.add_weight(
            shape=(), name="momentum_power", initializer="ones", trainable=False, autocast=False
        )

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:  # masks: not used by these networks
            return super().call(inputs, training=training, mask=mask)
        outputs = super().call(inputs, training=True)  # normalized by the batch's statistics
        axis = self.axis % len(inputs.shape)
        mean, variance = ops.moments(ops.cast(inputs, "float32"), [i for i in range(len(inputs.shape)) if i != axis])
        momentum = self.momentum
        self.biased_mean.assign(self.biased_mean * momentum + mean * (1.0 - momentum))
        self.biased_variance.assign(self.biased_variance * momentum + variance * (1.0 - momentum))
        self.momentum_power.assign(self.momentum_power * momentum)
        self.moving_mean.assign(self.biased_mean / (1.0 - self.momentum_power))
        self.moving_variance.assign(self.biased_variance / (1.0 - self.momentum_power))
        return outputs


def _batch_normalization(name: str, portable: bool) -> layers.BatchNormalization:
    return layers.BatchNormalization(name=name) if portable else DebiasedBatchNormalization(name=name)


def discriminator_body(
    inputs: keras.KerasTensor, architecture: str = "mlm", portable: bool = False
) -> tuple[keras.KerasTensor, ...]:
    """Returns (features, dropped out): the flattened last hidden features (what feature matching
    compares), and the same after dropout (what the heads read).

    `mlm`: three stride-2 3x3 convolutions of 128 filters with LeakyReLU 0.2, dropout 0.4.
    `gans_in_action`: stride-2 3x3 convolutions of 32, 64 and 128 filters, BatchNorm after the second
    and third, LeakyReLU 0.01, dropout 0.5 (the book drops out before flattening; element-wise dropout
    is the same function either side of a reshape). Its BatchNorm is `DebiasedBatchNormalization`, or the
    stock layer with `portable=True`."""
    x = inputs
    if architecture == "improved_gan":
        return improved_gan_body(x, portable)
    if architecture == "gans_in_action":
        for i, filters in enumerate((32, 64, 128)):
            x = layers.Conv2D(filters, 3, strides=2, padding="same", name=f"conv{i + 1}")(x)
            if i:
                x = _batch_normalization(f"batchnorm{i + 1}", portable)(x)
            x = layers.LeakyReLU(0.01, name=f"lrelu{i + 1}")(x)
        rate = 0.5
    else:
        for i in range(3):
            x = layers.Conv2D(128, 3, strides=2, padding="same", name=f"conv{i + 1}")(x)
            x = layers.LeakyReLU(0.2, name=f"lrelu{i + 1}")(x)
        rate = 0.4
    features = layers.Flatten(name="flatten")(x)
    return features, layers.Dropout(rate, name="dropout")(features)


IMPROVED_GAN_UNITS = (1000, 500, 250, 250, 250)
FEATURE_LAYER = "dense5"  # the last hidden layer: what improved-gan's feature matching compares


def _dense(units: int, name: str, portable: bool, activation=None, trainable_scale: bool = False, initializer=None):
    """A weight-normalized dense layer, or with `portable=True` the stock `Dense` that holds its kernel."""
    if portable:
        return layers.Dense(units, activation=activation, name=name)
    initializer = initializer or keras.initializers.RandomNormal(stddev=0.1)  # improved-gan's `theta`
    return WeightNormDense(units, activation, trainable_scale, initializer, name=name)


def improved_gan_body(inputs: keras.KerasTensor, portable: bool = False) -> tuple[keras.KerasTensor, ...]:
    """Pixels back to [0, 1] (improved-gan's range), Gaussian noise of 0.3 on them, then weight-normalized
    ReLU layers of 1000, 500, 250, 250 and 250 units, each followed by Gaussian noise of 0.5 (on in
    training only). Features: the last hidden layer's output before its noise; the heads read it after."""
    x = layers.Rescaling(0.5, offset=0.5, name="unit_range")(inputs)
    x = layers.Flatten(name="flatten")(x)
    x = layers.GaussianNoise(0.3, name="noise0")(x)
    for i, units in enumerate(IMPROVED_GAN_UNITS):
        x = _dense(units, f"dense{i + 1}", portable, "relu")(x)
        features = x
        x = layers.GaussianNoise(0.5, name=f"noise{i + 1}")(x)
    return features, x


def build_discriminator(
    variant: str, num_classes: int, architecture: str = "mlm", portable: bool = False
) -> tuple[keras.Model, keras.Model, keras.Model]:
    """Return (discriminator, classifier, features); `variant="none"` builds a baseline's classifier."""
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    features, dropped = discriminator_body(inputs, architecture, portable)
    if architecture == "improved_gan":  # weight-normalized too, with a learned scale
        class_logits = _dense(num_classes, "class_logits", portable, trainable_scale=True)(dropped)
    else:
        class_logits = layers.Dense(num_classes, name="class_logits")(dropped)
    outputs = [class_logits]
    if variant in ("two_head", "k_plus_one"):
        head = "real_fake_logit" if variant == "two_head" else "fake_class_logit"
        outputs.append(layers.Dense(1, name=head)(dropped))
    probabilities = layers.Softmax(name="class_probabilities", dtype="float32")(class_logits)
    discriminator = keras.Model(inputs, outputs, name="discriminator")
    classifier = keras.Model(inputs, probabilities, name="classifier")
    return discriminator, classifier, keras.Model(inputs, features, name="features")


class ImageConv2D(layers.Conv2D):
    """A stride-1 "same" `Conv2D` with one filter, computed as one matrix product and a shift-and-add.

    Why: TensorFlow's CPU kernels run a one-filter convolution far below the machine's matrix-product rate, so
    the generator's 7x7 128->1 layer took a large share of its time for a small share of its arithmetic
    (measured in the README's Performance section). Here one matrix product
    gives every tap's response at every pixel (taps x channels times channels x pixels), and the taps'
    planes, shifted into place, are summed.
    Same weights and, up to float rounding, same outputs and gradients as `Conv2D` (tested).
    Deliberately not registered with Keras: MLflow pickles registered classes into every logged model,
    which would then need this package to load.
    """

    def convolution_op(self, inputs, kernel):
        kh, kw, channels, filters = kernel.shape
        height, width = inputs.shape[1], inputs.shape[2]
        layout = (filters, tuple(self.strides), tuple(self.dilation_rate), self.padding, self.data_format)
        if layout != (1, (1, 1), (1, 1), "same", "channels_last") or None in (height, width):
            return super().convolution_op(inputs, kernel)
        taps = tf.reshape(kernel, [kh * kw, channels])
        planes = tf.matmul(taps, tf.reshape(inputs, [-1, channels]), transpose_b=True)
        planes = tf.reshape(planes, [kh * kw, -1, height, width])
        return _shift_add(planes, kh, kw)[..., None]


def _shift_add(planes: tf.Tensor, kh: int, kw: int) -> tf.Tensor:
    """out[n, i, j] = sum over taps (a, b) of planes[a * kw + b, n, i + a - top, j + b - left], zero
    outside the image: "same" padding, which TensorFlow puts at the bottom and right when it is odd.

    The gradient is written out because TensorFlow's gradient of each slice would be a zero tensor the
    size of all the planes; the adjoint is the same slices taken the other way round."""
    top, left = (kh - 1) // 2, (kw - 1) // 2
    height, width = planes.shape[2], planes.shape[3]

    @tf.custom_gradient
    def shift_add(planes):
        padded = tf.pad(planes, [[0, 0], [0, 0], [top, kh - 1 - top], [left, kw - 1 - left]])
        out = tf.add_n([padded[a * kw + b, :, a : a + height, b : b + width] for a in range(kh) for b in range(kw)])

        def grad(upstream):
            up = tf.pad(upstream, [[0, 0], [kh - 1 - top, top], [kw - 1 - left, left]])
            rows, cols = kh - 1, kw - 1
            return tf.stack(
                [up[:, rows - a : rows - a + height, cols - b : cols - b + width] for a in range(kh) for b in range(kw)]
            )

        return out, grad

    return shift_add(planes)


class SummedBiasConv2DTranspose(layers.Conv2DTranspose):
    """A `Conv2DTranspose` whose bias gradient is one matrix product (a row of ones times the upstream
    gradient as pixels x channels) instead of TensorFlow's `BiasAddGrad`.

    Why: `BiasAddGrad` over the generator's 28x28x128 maps (100 images) took 47 ms of a 380 ms float32
    step, several times what the same sum costs as a matrix product; and under mixed precision it sums its
    78,400 terms in bfloat16, where a running sum stops growing once it is large against each term (on
    the bfloat16 case of `tests/test_models.py` the stock layer's came out 99% short). The matrix
    product accumulates in float32. The regular convolutions do not need this: oneDNN fuses their bias
    gradient into the filter gradient.
    Same weights and, up to float rounding, the same outputs and gradients as the stock layer (tested);
    not registered with Keras, like `ImageConv2D`."""

    def call(self, inputs):
        if not self.use_bias or self.data_format != "channels_last":
            return super().call(inputs)
        outputs = ops.conv_transpose(
            inputs,
            self.kernel,
            strides=list(self.strides),
            padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        outputs = _bias_add(outputs, tf.convert_to_tensor(self.bias))  # read here: the gradient is ours
        return outputs if self.activation is None else self.activation(outputs)


@tf.custom_gradient
def _bias_add(x: tf.Tensor, bias: tf.Tensor):
    def grad(upstream):
        # in float32 whatever the compute dtype: a bfloat16 matrix product accumulates in float32 only on
        # CPUs with native bfloat16 (on AVX2 alone the sum came out more than one bfloat16 step short)
        pixels = tf.reshape(tf.cast(upstream, tf.float32), [-1, upstream.shape[-1]])
        ones = tf.ones([1, tf.shape(pixels)[0]], tf.float32)
        return upstream, tf.cast(tf.reshape(tf.matmul(ones, pixels), [-1]), upstream.dtype)

    return tf.nn.bias_add(x, bias), grad


def build_generator(latent_dim: int, portable: bool = False, architecture: str = "mlm") -> keras.Model:
    """`mlm`: Dense 7x7x128, two 4x4 stride-2 transposed convolutions to 28x28 (LeakyReLU 0.2), a 7x7
    tanh convolution; `portable=True` uses the stock `Conv2D` for that last layer (for saving, and for
    the bench's reference), the default the faster `ImageConv2D`.
    `gans_in_action`: Dense 7x7x256 (no activation), 3x3 transposed convolutions of 128 (stride 2) and
    64 (stride 1) each with BatchNorm (`DebiasedBatchNormalization`; stock with `portable=True`) and
    LeakyReLU 0.01, then one of 1 filter (stride 2) and tanh.
    Transposed convolutions are `SummedBiasConv2DTranspose`, or stock with `portable=True`."""
    z = keras.Input((latent_dim,), name="latent")
    if architecture == "improved_gan":
        return improved_gan_generator(z, portable)
    transposed = layers.Conv2DTranspose if portable else SummedBiasConv2DTranspose
    if architecture == "gans_in_action":
        x = layers.Dense(7 * 7 * 256, name="project")(z)
        x = layers.Reshape((7, 7, 256))(x)
        for i, (filters, stride) in enumerate(((128, 2), (64, 1))):
            x = transposed(filters, 3, strides=stride, padding="same", name=f"upsample{i + 1}")(x)
            x = _batch_normalization(f"batchnorm{i + 1}", portable)(x)
            x = layers.LeakyReLU(0.01)(x)
        x = transposed(1, 3, strides=2, padding="same", name="upsample3")(x)
        image = layers.Activation("tanh", name="image", dtype="float32")(x)
        return keras.Model(z, image, name="generator")
    x = layers.Dense(7 * 7 * 128, name="project")(z)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Reshape((7, 7, 128))(x)
    for i in range(2):
        x = transposed(128, 4, strides=2, padding="same", name=f"upsample{i + 1}")(x)
        x = layers.LeakyReLU(0.2)(x)
    conv = layers.Conv2D if portable else ImageConv2D
    image = conv(1, 7, padding="same", activation="tanh", name="image", dtype="float32")(x)
    return keras.Model(z, image, name="generator")


def improved_gan_generator(z: keras.KerasTensor, portable: bool = False) -> keras.Model:
    """Two dense layers of 500 without bias, each BatchNorm (a learned shift, no scale; improved-gan's
    statistics: epsilon 1e-6, momentum 0.9) then softplus; a weight-normalized sigmoid layer of 784
    pixels with a learned scale (improved-gan's `l2normalize`, no data-dependent initialization), brought
    from [0, 1] to this project's [-1, 1]."""
    x = z
    for i in range(2):
        x = layers.Dense(500, use_bias=False, name=f"dense{i + 1}")(x)
        x = layers.BatchNormalization(scale=False, epsilon=1e-6, momentum=0.9, name=f"batchnorm{i + 1}")(x)
        x = layers.Activation("softplus", name=f"softplus{i + 1}")(x)
    glorot = keras.initializers.GlorotUniform()  # Lasagne's DenseLayer default, which `l2normalize` wraps
    x = _dense(int(np.prod(IMAGE_SHAPE)), "pixels", portable, "sigmoid", trainable_scale=True, initializer=glorot)(x)
    x = layers.Rescaling(2.0, offset=-1.0, name="signed_range")(x)
    image = layers.Reshape(IMAGE_SHAPE, name="image", dtype="float32")(x)
    return keras.Model(z, image, name="generator")


FAST_LAYERS = (
    ImageConv2D,
    SummedBiasConv2DTranspose,
    DebiasedBatchNormalization,
    WeightNormDense,
)  # what `portable_copy` replaces


def portable_copy(model: keras.Model, architecture: str = "mlm") -> keras.Model:
    """A copy of a generator or classifier made of stock Keras layers, with the same weights and inference
    function, so it loads anywhere without this package (what is saved and logged); `model` itself if it
    is made of stock layers already."""
    if not any(isinstance(layer, FAST_LAYERS) for layer in model.layers):
        return model
    if model.name == "generator":
        copy = build_generator(model.input_shape[-1], portable=True, architecture=architecture)
    else:
        copy = build_discriminator("none", model.output_shape[-1], architecture, portable=True)[1]
    for source, target in zip(model.layers, copy.layers, strict=True):
        if isinstance(source, WeightNormDense):
            target.set_weights(source.portable_weights())
        else:  # a DebiasedBatchNormalization's own statistics follow the stock layer's four weights
            target.set_weights(source.get_weights()[: len(target.weights)])
    return copy


def build_models(
    method: str,
    variant: str,
    num_classes: int,
    latent_dim: int,
    seed: int,
    precision: str = "float32",
    architecture: str = "mlm",
) -> SGANModels:
    """Seeded so that the same seed gives the same initial weights (the discriminator is built first,
    so the CNN baseline starts from the same body and class head as the `stacked` SGAN).

    `precision="bfloat16"` computes in bfloat16 with float32 weights (Keras' `mixed_bfloat16`); the
    class probabilities and generated images stay float32, so logged models keep their signatures.
    """
    keras.utils.set_random_seed(seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        head = variant if method == "sgan" else "none"
        discriminator, classifier, features = build_discriminator(head, num_classes, architecture)
        generator = build_generator(latent_dim, architecture=architecture) if method == "sgan" else None
        classifier_ema = build_discriminator("none", num_classes, architecture)[1]
    finally:
        keras.config.set_dtype_policy(previous)
    classifier_ema.set_weights(classifier.get_weights())
    return SGANModels(discriminator, classifier, generator, features, classifier_ema, architecture)
