"""Real training on real (small) data: every network's weights move, for every variant."""

import os
import signal
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import resolve_config
from pipeline.core.models import build_models
from pipeline.core.training import fit, make_trainer
from pipeline.data import labeled_subset, load_dataset
from pipeline.stopping import RECEIVED, Stopped, stop_on_signals


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trainer(digits, method, variant="stacked", labels=20, **settings):
    config = resolve_config(method, dataset="digits", labels=labels, seed=0, profile="smoke", variant=variant)
    config = replace(config, **settings)
    idx = labeled_subset(digits.y_train, labels, seed=0, excluded=digits.validation)
    models = build_models(method, config.variant, 10, config.latent_dim, config.seed)
    pool = digits.x_train[digits.pool]
    return make_trainer(config, models, digits.x_train[idx], digits.y_train[idx], pool), idx


def _weights(model, names):
    return {name: [w.copy() for w in model.get_layer(name).get_weights()] for name in names}


def _moved(before, model):
    return {
        name: all(not np.allclose(old, new) for old, new in zip(ws, model.get_layer(name).get_weights(), strict=True))
        for name, ws in before.items()
    }


BODY = ["conv1", "conv2", "conv3"]
GENERATOR = ["project", "upsample1", "upsample2", "image"]


@pytest.mark.parametrize(
    ("variant", "heads"),
    [
        ("stacked", ["class_logits"]),
        ("two_head", ["class_logits", "real_fake_logit"]),
        ("k_plus_one", ["class_logits", "fake_class_logit"]),
    ],
)
def test_sgan_step_moves_discriminator_heads_and_generator(digits, variant, heads):
    trainer, _ = _trainer(digits, "sgan", variant)
    d_before = _weights(trainer.models.discriminator, BODY + heads)
    g_before = _weights(trainer.models.generator, GENERATOR)
    losses = trainer.train_steps(3)
    assert set(losses) == {"loss_supervised", "loss_unsupervised_real", "loss_unsupervised_fake", "loss_generator"}
    assert all(np.isfinite(v) for v in losses.values())
    assert all(_moved(d_before, trainer.models.discriminator).values()), _moved(d_before, trainer.models.discriminator)
    assert all(_moved(g_before, trainer.models.generator).values()), _moved(g_before, trainer.models.generator)
    # the classifier shares the discriminator's layers: it is the trained network, not a copy
    assert trainer.models.classifier.get_layer("conv1") is trainer.models.discriminator.get_layer("conv1")


def test_cnn_trains_its_classifier_on_supervised_updates_only(digits):
    trainer, _ = _trainer(digits, "cnn")
    assert trainer.models.generator is None and trainer.loss_names == ("loss_supervised",)
    before = _weights(trainer.models.discriminator, BODY + ["class_logits"])
    trainer.train_steps(3)
    assert all(_moved(before, trainer.models.discriminator).values())


def test_labels_reach_the_trainer_only_for_the_subset(digits):
    trainer, idx = _trainer(digits, "sgan", labels=30)
    assert trainer.y_labeled.shape == (30,)
    np.testing.assert_array_equal(trainer.y_labeled.numpy(), digits.y_train[idx])
    np.testing.assert_array_equal(trainer.x_labeled.numpy(), digits.x_train[idx])
    # the unlabeled pool is images only: no other integer (label) tensor is held by the trainer
    label_like = [k for k, v in vars(trainer).items() if hasattr(v, "dtype") and v.dtype.is_integer]
    assert label_like == ["y_labeled"]


def test_same_seed_gives_same_initial_classifier_for_sgan_and_cnn():
    sgan = build_models("sgan", "stacked", 10, 100, seed=7).classifier
    cnn = build_models("cnn", "none", 10, 100, seed=7).classifier
    for a, b in zip(sgan.get_weights(), cnn.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_records_one_value_per_epoch_and_learns_digits(digits):
    trainer, _ = _trainer(digits, "cnn", labels=100, discriminator_batch=50)
    seen = []
    history = fit(
        trainer,
        {"test": (digits.x_test, digits.y_test)},
        on_epoch_end=lambda epoch, metrics: seen.append(epoch),
        verbose=False,
    )
    assert seen == [1, 2]
    assert len(history.metrics["test_accuracy"]) == 2 and history.steps == 10
    assert len(history.metrics["test_accuracy_ema"]) == 2 and history.selected == {"": 2, "_ema": 2}
    # 10 supervised steps of 50 of 100 labeled digits already beat chance (10%) clearly
    assert history.last("labeled_accuracy") > 0.3


@pytest.mark.slow  # the fast tier's budget; the same logic runs there on lighter cases
def test_bfloat16_mixed_precision_trains_every_network_and_keeps_float32_outputs(digits):
    config = resolve_config("sgan", dataset="digits", labels=20, seed=0, profile="smoke", precision="bfloat16")
    idx = labeled_subset(digits.y_train, 20, seed=0, excluded=digits.validation)
    models = build_models("sgan", "stacked", 10, config.latent_dim, 0, precision="bfloat16")
    trainer = make_trainer(config, models, digits.x_train[idx], digits.y_train[idx], digits.x_train)
    assert models.discriminator.get_layer("conv1").compute_dtype == "bfloat16"
    assert models.discriminator.get_layer("conv1").variable_dtype == "float32"
    d_before = _weights(models.discriminator, BODY + ["class_logits"])
    g_before = _weights(models.generator, GENERATOR)
    assert all(np.isfinite(v) for v in trainer.train_steps(3).values())
    assert all(_moved(d_before, models.discriminator).values()) and all(_moved(g_before, models.generator).values())
    assert models.classifier.predict(digits.x_test[:4], verbose=0).dtype == np.float32
    assert models.generator.predict(np.zeros((2, 100), np.float32), verbose=0).dtype == np.float32
    # the global policy is left as it was
    assert build_models("cnn", "none", 10, 100, 0).classifier.get_layer("conv1").compute_dtype == "float32"


@pytest.mark.parametrize("variant", ["stacked", "two_head", "k_plus_one"])
def test_feature_matching_trains_the_generator_of_every_variant(digits, variant):
    trainer, _ = _trainer(digits, "sgan", variant, generator_loss="feature_matching")
    g_before = _weights(trainer.models.generator, GENERATOR)
    d_before = _weights(trainer.models.discriminator, BODY + ["class_logits"])
    losses = trainer.train_steps(3)
    assert all(np.isfinite(v) for v in losses.values()) and losses["loss_generator"] >= 0
    assert all(_moved(g_before, trainer.models.generator).values())
    assert all(_moved(d_before, trainer.models.discriminator).values())


def test_feature_matching_loss_is_the_squared_distance_of_feature_means():
    from pipeline.core.objectives import feature_matching_loss

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    expected = np.mean((real.mean(axis=0) - fake.mean(axis=0)) ** 2)
    assert float(feature_matching_loss(tf.constant(real), tf.constant(fake))) == pytest.approx(expected, rel=1e-5)
    fake_var = tf.Variable(fake)
    with tf.GradientTape() as tape:
        loss = feature_matching_loss(tf.constant(real), fake_var)
    assert np.abs(tape.gradient(loss, fake_var).numpy()).sum() > 0
    assert float(feature_matching_loss(tf.constant(real), tf.constant(real))) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("method", ["sgan", "cnn"])
def test_the_moving_average_follows_the_classifier_with_warm_up(digits, method):
    trainer, _ = _trainer(digits, method, ema_decay=0.5)
    initial = [w.copy() for w in trainer.models.classifier.get_weights()]
    np.testing.assert_array_equal(initial[0], trainer.models.classifier_ema.get_weights()[0])
    trainer.train_steps(1)
    # first update: decay = min(0.5, 1/10) = 0.1, so ema = 0.1 * initial + 0.9 * weights
    for start, now, ema in zip(
        initial, trainer.models.classifier.get_weights(), trainer.models.classifier_ema.get_weights(), strict=True
    ):
        np.testing.assert_allclose(ema, 0.1 * start + 0.9 * now, rtol=1e-5, atol=1e-6)
    previous_ema = [w.copy() for w in trainer.models.classifier_ema.get_weights()]
    trainer.train_steps(1)  # second: decay = min(0.5, 2/11)
    decay = 2 / 11
    for before, now, ema in zip(
        previous_ema, trainer.models.classifier.get_weights(), trainer.models.classifier_ema.get_weights(), strict=True
    ):
        np.testing.assert_allclose(ema, decay * before + (1 - decay) * now, rtol=1e-5, atol=1e-6)
    assert int(trainer.average.updates.numpy()) == 2
    x = digits.x_test[:64]
    assert 0 <= trainer.accuracy(x, digits.y_test[:64], "_ema") <= 1


def test_shift_augmentation_moves_each_image_by_at_most_two_pixels():
    from pipeline.core.training import shift_images

    images = -np.ones((200, 28, 28, 1), np.float32)
    images[:, 13, 13, 0] = 1.0  # one bright pixel in the middle
    shifted = shift_images(tf.constant(images), tf.random.Generator.from_seed(0)).numpy()
    assert shifted.shape == images.shape and set(np.unique(shifted)) == {-1.0, 1.0}
    rows, cols = np.nonzero(shifted[..., 0] == 1.0)[1:]
    assert len(rows) == 200 and np.abs(rows - 13).max() == 2 and np.abs(cols - 13).max() == 2
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 25  # every offset occurs


@pytest.mark.slow  # the fast tier's budget; the same logic runs there on lighter cases
def test_the_sgan_supervised_update_trains_on_shifted_images_when_asked(digits):
    """Same seed, same first labeled batch: only the augmentation can change the first supervised loss."""
    first = {}
    for name, augment in (("plain", "none"), ("again", "none"), ("shifted", "shift")):
        trainer, _ = _trainer(digits, "sgan", augment=augment)
        first[name] = trainer.train_steps(1)["loss_supervised"]
    assert first["again"] == pytest.approx(first["plain"], rel=1e-6)
    assert first["shifted"] != pytest.approx(first["plain"], rel=1e-3)


def test_best_validation_selection_keeps_the_best_epoch_weights(digits):
    trainer, _ = _trainer(digits, "cnn_tuned", labels=50)
    val = (digits.x_train[digits.validation], digits.y_train[digits.validation])
    history = fit(trainer, {"val": val}, verbose=False)
    assert len(history.metrics["val_accuracy"]) == trainer.config.train_epochs == 6
    for track in ("", "_ema"):
        curve = history.metrics[f"val_accuracy{track}"]
        assert history.selected[track] == int(np.argmax(curve)) + 1
    # the networks end with the selected epoch's weights: evaluating them again gives its figures
    assert trainer.accuracy(*val) == pytest.approx(history.chosen("val_accuracy"))
    assert trainer.accuracy(*val, "_ema") == pytest.approx(history.chosen("val_accuracy_ema", "_ema"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed stop, as meant
def test_a_stop_signal_whose_exception_a_finaliser_swallowed_still_ends_training(digits):
    """Python runs a signal handler wherever the main thread is; inside a `__del__` (TensorFlow has many) the
    `Stopped` it raises is printed as "Exception ignored" and lost. The stop is remembered, and `fit` ends at
    its next training call, before any step."""

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(10_000))  # the handler runs here, and its exception goes nowhere

    trainer, _ = _trainer(digits, "cnn")
    before = _weights(trainer.models.discriminator, BODY)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop_on_signals()
        Finaliser()  # dropped at once: the signal arrives and is handled inside its `__del__`
        assert RECEIVED == [signal.SIGTERM]
        with pytest.raises(Stopped, match="SIGTERM"):
            fit(trainer, {"test": (digits.x_test, digits.y_test)}, verbose=False)
    finally:
        RECEIVED.clear()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert not any(_moved(before, trainer.models.discriminator).values())  # no step was taken
