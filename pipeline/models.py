"""The reference SGAN networks (Odena 2016 / Salimans et al. 2016 as in the classic Keras tutorial).

The discriminator returns `(class_logits, aux)`: K class logits, and for the variants that need it one
extra logit (`two_head`: the real/fake logit; `k_plus_one`: the logit of the "generated" class). How
the real/fake probability follows from these lives in `pipeline.objectives`, so every model here is
made of stock Keras layers and saves and loads without custom objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from pipeline.data import IMAGE_SHAPE


@dataclass
class SGANModels:
    discriminator: keras.Model  # image -> [class_logits, aux]
    classifier: keras.Model  # image -> class probabilities (shares the discriminator's layers)
    generator: keras.Model | None  # latent -> image in [-1, 1]; None for the CNN baseline


def discriminator_body(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """Three stride-2 3x3 convolutions of 128 filters with LeakyReLU 0.2, then dropout 0.4."""
    x = inputs
    for i in range(3):
        x = layers.Conv2D(128, 3, strides=2, padding="same", name=f"conv{i + 1}")(x)
        x = layers.LeakyReLU(0.2, name=f"lrelu{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dropout(0.4, name="dropout")(x)


def build_discriminator(variant: str, num_classes: int) -> tuple[keras.Model, keras.Model]:
    """Return (discriminator, classifier); `variant="none"` builds the CNN baseline's classifier."""
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    features = discriminator_body(inputs)
    class_logits = layers.Dense(num_classes, name="class_logits")(features)
    outputs = [class_logits]
    if variant in ("two_head", "k_plus_one"):
        head = "real_fake_logit" if variant == "two_head" else "fake_class_logit"
        outputs.append(layers.Dense(1, name=head)(features))
    probabilities = layers.Softmax(name="class_probabilities", dtype="float32")(class_logits)
    discriminator = keras.Model(inputs, outputs, name="discriminator")
    classifier = keras.Model(inputs, probabilities, name="classifier")
    return discriminator, classifier


def build_generator(latent_dim: int) -> keras.Model:
    """Dense 7x7x128, two 4x4 stride-2 transposed convolutions to 28x28, a 7x7 tanh convolution."""
    z = keras.Input((latent_dim,), name="latent")
    x = layers.Dense(7 * 7 * 128, name="project")(z)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Reshape((7, 7, 128))(x)
    for i in range(2):
        x = layers.Conv2DTranspose(128, 4, strides=2, padding="same", name=f"upsample{i + 1}")(x)
        x = layers.LeakyReLU(0.2)(x)
    image = layers.Conv2D(1, 7, padding="same", activation="tanh", name="image", dtype="float32")(x)
    return keras.Model(z, image, name="generator")


def build_models(
    method: str, variant: str, num_classes: int, latent_dim: int, seed: int, precision: str = "float32"
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
        discriminator, classifier = build_discriminator(variant if method == "sgan" else "none", num_classes)
        generator = build_generator(latent_dim) if method == "sgan" else None
    finally:
        keras.config.set_dtype_policy(previous)
    return SGANModels(discriminator, classifier, generator)
