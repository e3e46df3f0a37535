import numpy as np
import tensorflow as tf

from pipeline.core.objectives import real_logit, supervised_loss, unsupervised_loss


def test_stacked_real_probability_is_z_over_z_plus_one():
    logits = tf.constant([[0.5, -1.0, 2.0], [-3.0, -2.0, -4.0]])
    z = np.exp(logits.numpy()).sum(axis=1)
    d = tf.sigmoid(real_logit("stacked", [logits])).numpy()
    np.testing.assert_allclose(d, z / (z + 1), rtol=1e-6)


def test_stacked_is_stable_for_extreme_logits():
    logits = tf.constant([[1000.0, 999.0], [-1000.0, -1001.0]])
    r = real_logit("stacked", [logits])
    assert np.isfinite(r.numpy()).all()
    real_loss = unsupervised_loss(r[:1], is_real=True).numpy()
    fake_loss = unsupervised_loss(r[1:], is_real=False).numpy()
    assert real_loss < 1e-6 and fake_loss < 1e-6


def test_k_plus_one_real_probability_is_one_minus_the_fake_class():
    class_logits = tf.constant([[0.1, 0.7, -0.3]])
    fake_logit = tf.constant([[0.4]])
    probs = tf.nn.softmax(tf.concat([class_logits, fake_logit], axis=1)).numpy()
    d = tf.sigmoid(real_logit("k_plus_one", [class_logits, fake_logit])).numpy()
    np.testing.assert_allclose(d, 1 - probs[:, -1], rtol=1e-6)


def test_two_head_uses_its_own_logit_and_supervised_loss_is_cross_entropy():
    np.testing.assert_allclose(real_logit("two_head", [tf.zeros([2, 3]), tf.constant([[1.5], [-2.0]])]), [1.5, -2.0])
    logits = tf.constant([[2.0, 0.0], [0.0, 2.0]])
    expected = -np.log(np.exp(2.0) / (np.exp(2.0) + 1.0))
    np.testing.assert_allclose(supervised_loss(tf.constant([0, 1]), logits).numpy(), expected, rtol=1e-6)
