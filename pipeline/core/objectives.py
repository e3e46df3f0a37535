"""Losses of the SGAN and its variants, all from logits so that nothing saturates or overflows.

Every variant reduces to one real/fake logit `r` with D(x) = sigmoid(r):
- `stacked`: D(x) = Z / (Z + 1) with Z = sum(exp(class_logits)), so r = logsumexp(class_logits);
- `two_head`: r is the separate real/fake head's logit;
- `k_plus_one`: softmax over K + 1 logits, P(real) = 1 - P(class K + 1), so
  r = logsumexp(class_logits) - fake_class_logit.
"""

from __future__ import annotations

import tensorflow as tf


def real_logit(variant: str, outputs: list[tf.Tensor]) -> tf.Tensor:
    class_logits = outputs[0]
    if variant == "stacked":
        return tf.reduce_logsumexp(class_logits, axis=-1)
    if variant == "two_head":
        return tf.squeeze(outputs[1], axis=-1)
    if variant == "k_plus_one":
        return tf.reduce_logsumexp(class_logits, axis=-1) - tf.squeeze(outputs[1], axis=-1)
    raise ValueError(f"unknown variant {variant!r}")


def supervised_loss(labels: tf.Tensor, class_logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy over the K real classes (for `k_plus_one`: conditioned on the image being real)."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=class_logits))


def unsupervised_loss(logit: tf.Tensor, is_real: bool) -> tf.Tensor:
    """Binary cross-entropy of D(x) against "real" or "generated"."""
    target = tf.ones_like(logit) if is_real else tf.zeros_like(logit)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logit))


def generator_loss(fake_logit: tf.Tensor) -> tf.Tensor:
    """Non-saturating generator loss: make D call generated images real (the reference's GAN model)."""
    return unsupervised_loss(fake_logit, is_real=True)


def feature_matching_loss(real_features: tf.Tensor, fake_features: tf.Tensor) -> tf.Tensor:
    """Salimans et al. (2016): the mean squared difference between the batch means of the
    discriminator's hidden features on real and on generated images. Only the generator learns from
    it, so the real side is a constant."""
    real_mean = tf.stop_gradient(tf.reduce_mean(real_features, axis=0))
    return tf.reduce_mean(tf.square(real_mean - tf.reduce_mean(fake_features, axis=0)))
