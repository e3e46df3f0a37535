"""The improved-gan networks and recipe (Salimans et al. 2016): weight normalization and its data-dependent
initialization against their definitions, noise only in training, the joint discriminator step and feature
matching on the named layer, every weight moving, and runs named and kept apart as their own arms."""

import dataclasses

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, arm_name, fingerprint, resolve_config
from pipeline.core.layers import WeightNormDense, initialize_from_data
from pipeline.core.models import FEATURE_LAYER, IMPROVED_GAN_UNITS, build_models, portable_copy
from pipeline.core.training import INIT_IMAGES, JointSGANTrainer, make_optimizer, make_trainer, tiled_indices
from pipeline.data import labeled_subset, load_dataset
from pipeline.report import build_report
from pipeline.trial.run import train_run

from .conftest import tracking_store
from .test_report import KNOWN, log_known_runs


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trainer(digits, method="sgan", labels=20, profile="smoke"):
    recipe = {"generator_loss": "feature_matching"} if method == "sgan" else {}
    config = resolve_config(
        method, dataset="digits", labels=labels, seed=0, profile=profile, architecture="improved_gan", **recipe
    )
    idx = labeled_subset(digits.y_train, labels, 0, excluded=digits.validation)
    models = build_models(method, config.variant, 10, config.latent_dim, 0, architecture="improved_gan")
    return make_trainer(config, models, digits.x_train[idx], digits.y_train[idx], digits.x_train[digits.pool])


def test_weight_norm_kernel_has_the_scale_as_each_units_length_and_init_whitens_the_batch():
    x = tf.random.stateless_normal([500, 30], seed=[1, 2]) * 3.0 + 1.0
    layer = WeightNormDense(7, activation="relu")
    layer.build(x.shape)
    layer.scale.assign(np.arange(1, 8, dtype=np.float32))
    kernel = np.asarray(layer.kernel())
    assert np.linalg.norm(kernel, axis=0) == pytest.approx(np.arange(1, 8), rel=1e-4)  # epsilon 1e-6 inside
    direction = np.asarray(layer.direction)
    assert kernel / np.linalg.norm(kernel, axis=0) == pytest.approx(direction / np.linalg.norm(direction, axis=0))
    assert np.asarray(layer(x)) == pytest.approx(np.maximum(np.asarray(x) @ kernel, 0.0), abs=1e-4)
    layer.initialize(x)  # data-dependent: zero-mean, unit-variance pre-activations on this batch
    pre = np.asarray(layer.pre_activation(x))
    assert pre.mean(axis=0) == pytest.approx(np.zeros(7), abs=1e-4)
    assert pre.std(axis=0) == pytest.approx(np.ones(7), rel=1e-4)
    assert not layer.scale.trainable and WeightNormDense(3, trainable_scale=True).trainable_scale


def test_the_discriminator_is_the_published_mlp_with_noise_only_in_training(digits):
    models = build_models("sgan", "stacked", 10, 100, 0, architecture="improved_gan")
    d = models.discriminator
    dense = [layer for layer in d.layers if isinstance(layer, WeightNormDense)]
    assert [layer.units for layer in dense] == [*IMPROVED_GAN_UNITS, 10]
    assert [layer.scale.trainable for layer in dense] == [False] * 5 + [True]  # the output's scale is learned
    noise = [layer.stddev for layer in d.layers if isinstance(layer, keras.layers.GaussianNoise)]
    assert noise == [0.3] + [0.5] * 5
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in d.layers)
    assert models.features.output_shape == (None, 250)
    x = digits.x_test[:64]
    assert np.array_equal(models.classifier(x, training=False), models.classifier(x, training=False))
    assert not np.allclose(models.classifier(x, training=True), models.classifier(x, training=True))
    # what is logged: stock layers, the same function at inference
    copy = portable_copy(models.classifier, "improved_gan")
    assert not any(isinstance(layer, WeightNormDense) for layer in copy.layers)
    assert np.asarray(copy(x)) == pytest.approx(np.asarray(models.classifier(x, training=False)), abs=1e-6)


def test_the_generator_is_the_published_mlp_and_makes_images_in_this_projects_range():
    models = build_models("sgan", "stacked", 10, 100, 0, architecture="improved_gan")
    g = models.generator
    norms = [layer for layer in g.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert [(n.center, n.scale) for n in norms] == [(True, False)] * 2
    assert [layer.units for layer in g.layers if isinstance(layer, keras.layers.Dense)] == [500, 500]
    assert g.get_layer("pixels").units == 784 and g.get_layer("pixels").trainable_scale
    images = np.asarray(g(np.random.default_rng(0).random((16, 100)).astype(np.float32), training=True))
    assert images.shape == (16, 28, 28, 1) and images.min() >= -1.0 and images.max() <= 1.0
    copy = portable_copy(g, "improved_gan")
    z = np.random.default_rng(1).random((4, 100)).astype(np.float32)
    assert np.asarray(copy(z)) == pytest.approx(np.asarray(g(z, training=False)), abs=1e-6)


def test_data_dependent_init_runs_once_on_unlabeled_images_and_the_average_starts_from_it(digits):
    trainer = _trainer(digits)
    dense = [layer for layer in trainer.models.discriminator.layers if isinstance(layer, WeightNormDense)]
    assert all(not np.allclose(np.asarray(layer.scale), 1.0) for layer in dense)  # set from the data
    ema = trainer.models.classifier_ema.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(trainer.models.classifier.get_weights(), ema, strict=True))


def test_each_layer_is_initialized_on_what_the_initialized_layers_before_it_make_of_the_batch():
    inputs = keras.Input((12,))
    x = WeightNormDense(9, "relu", name="first")(inputs)
    x = WeightNormDense(7, "relu", name="second")(x)
    model = keras.Model(inputs, WeightNormDense(4, name="out")(x))
    batch = tf.random.stateless_uniform([INIT_IMAGES, 12], seed=[3, 4], minval=-2.0, maxval=5.0)
    initialize_from_data(model, batch)
    h = batch
    for name in ("first", "second", "out"):
        layer = model.get_layer(name)
        pre = np.asarray(layer.pre_activation(h))
        assert pre.mean(axis=0) == pytest.approx(np.zeros(layer.units), abs=1e-4)
        assert pre.std(axis=0) == pytest.approx(np.ones(layer.units), rel=1e-3)
        h = layer(h)


def test_tiled_labeled_batches_hold_every_labeled_image_equally_often():
    rng = tf.random.Generator.from_seed(0)
    for count, batch in ((100, 100), (20, 100), (30, 100)):
        counts = np.bincount(tiled_indices(rng, count, batch).numpy(), minlength=count)
        assert counts.sum() == batch and counts.max() - counts.min() <= 1
    drawn = tiled_indices(rng, 1000, 100).numpy()
    assert len(set(drawn)) == 100  # more labeled images than the batch: without replacement


@pytest.mark.parametrize("method", ["sgan", "cnn"])
def test_every_network_learns_with_one_joint_discriminator_update_per_step(digits, method):
    trainer = _trainer(digits, method)
    assert trainer.config.labeled_sampling == "tiled" and trainer.config.ema_decay == 0.999  # smoke profile
    networks = [trainer.models.discriminator] + ([trainer.models.generator] if method == "sgan" else [])
    before = [[np.array(v) for v in net.trainable_variables] for net in networks]
    losses = trainer.train_steps(3)
    assert all(np.isfinite(v) for v in losses.values())
    for net, weights in zip(networks, before, strict=True):
        assert all(not np.allclose(a, np.array(b)) for a, b in zip(weights, net.trainable_variables, strict=True))
    assert int(trainer.supervised_optimizer.iterations) == 3  # the discriminator's one optimizer, once a step
    if method == "sgan":
        assert isinstance(trainer, JointSGANTrainer) and trainer.unsupervised_optimizer is None
        assert int(trainer.generator_optimizer.iterations) == 3


def test_feature_matching_compares_the_last_hidden_layer(digits):
    """The generator's loss is the squared distance of the batch means of `dense5`'s output, noise on."""
    trainer = _trainer(digits)
    d = trainer.models.discriminator
    probe = keras.Model(d.input, d.get_layer(FEATURE_LAYER).output)
    real = tf.constant(digits.x_train[:64])
    ours = trainer.models.features(real, training=False)
    assert np.asarray(ours) == pytest.approx(np.asarray(probe(real, training=False)))
    before = [np.array(v) for v in d.weights]
    loss = float(trainer._generator_update(real))
    assert np.isfinite(loss) and loss > 0
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, d.weights, strict=True))  # G learns alone


def test_settings_name_the_mlp_and_keep_runs_apart():
    sgan = resolve_config(
        "sgan", profile="improved_gan", architecture="improved_gan", generator_loss="feature_matching"
    )
    assert (sgan.epochs, sgan.steps_per_epoch, sgan.discriminator_batch, sgan.batch_size) == (300, 600, 100, 100)
    assert (sgan.learning_rate, sgan.beta_1, sgan.ema_decay) == (3e-3, 0.5, 0.9999)
    assert sgan.arm == "sgan stacked feature matching improved_gan"
    mlp = resolve_config("cnn", profile="improved_gan", architecture="improved_gan")
    assert mlp.arm == "mlp improved_gan" and mlp.run_name == "mlp-improved_gan-mnist-L100-s0"
    assert arm_name("cnn_tuned", "none", architecture="improved_gan") == "mlp_tuned improved_gan"
    assert resolve_config("cnn").arm == "cnn"  # the other architectures keep their names
    assert fingerprint(mlp, "x") != fingerprint(resolve_config("cnn", profile="improved_gan"), "x")
    with pytest.raises(ConfigError, match="variant='two_head': the improved_gan discriminator is built as stacked"):
        resolve_config("sgan", variant="two_head", architecture="improved_gan")


@pytest.mark.slow
def test_a_run_is_logged_with_its_architecture_and_the_report_pairs_it_with_its_own_mlp(tmp_path, digits):
    with tracking_store(tmp_path):
        config = resolve_config(
            "sgan",
            dataset="digits",
            labels=20,
            seed=0,
            profile="smoke",
            architecture="improved_gan",
            generator_loss="feature_matching",
        )
        result = train_run(config, verbose=False)
        run = mlflow.get_run(result.run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == "sgan-stacked-fm-improved_gan-digits-L20-s0"
        assert run.data.params["architecture"] == "improved_gan" and run.data.params["ema_decay"] == "0.999"
        assert "improved_gan networks" in run.data.tags["mlflow.note.content"]
        log_known_runs("nets", KNOWN)
        log_known_runs("nets", KNOWN, architecture="improved_gan")
        report = build_report("nets")
    pairs = {(row.sgan_arm, row.baseline_arm) for row in report.paired.itertuples()}
    assert pairs == {("sgan stacked", "cnn"), ("sgan stacked improved_gan", "mlp improved_gan")}


def test_improved_gans_adam_puts_epsilon_inside_the_square_root():
    """Four steps against improved-gan's `nn.adam_updates` written out in NumPy; Keras' Adam differs where the
    gradients are small (the generator's are about 1e-5 to 1e-4)."""
    start = np.array([0.5, -0.25, 1.0], np.float32)
    gradients = [np.array([3e-5, -1e-4, 2e-2], np.float32) * k for k in (1.0, -0.5, 2.0, 1.5)]
    lr, beta_1, beta_2 = 3e-3, 0.5, 0.999
    p, m, v = start.astype(np.float64), np.zeros(3), np.zeros(3)
    for t, g in enumerate(gradients, start=1):
        m, v = beta_1 * m + (1 - beta_1) * g, beta_2 * v + (1 - beta_2) * g**2
        p = p - lr * (m / (1 - beta_1**t)) / np.sqrt(v / (1 - beta_2**t) + 1e-8)
    config = resolve_config("sgan", profile="improved_gan", architecture="improved_gan")
    assert config.optimizer == "inner_epsilon_adam"
    results = {}
    for name in ("inner_epsilon_adam", "adam"):
        variable = keras.Variable(start)
        optimizer = make_optimizer(dataclasses.replace(config, optimizer=name))
        for g in gradients:
            optimizer.apply_gradients([(tf.constant(g), variable)])
        results[name] = np.asarray(variable)
    assert results["inner_epsilon_adam"] == pytest.approx(p, rel=1e-5)
    assert abs(results["adam"][0] - start[0]) > 2 * abs(p[0] - start[0])  # Keras' form: a much larger step
    assert resolve_config("sgan").optimizer == "adam"
