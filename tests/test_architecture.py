"""The GANs in Action networks: they train, BatchNorm behaves as documented in pipeline.core.training (moving
statistics zero-debiased as in Keras 2), the source's own baseline recipe (`cnn_source`) makes passes over
the labeled images, and the setting is part of the arm and the fingerprint without changing the identity
of earlier runs."""

from dataclasses import replace

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.bench import ReferenceSGAN, check_reference_updates, flops_per_step
from pipeline.config import ConfigError, fingerprint, resolve_config
from pipeline.core.models import DebiasedBatchNormalization, build_models, portable_copy
from pipeline.core.training import LabeledPasses, make_trainer, moving_statistics
from pipeline.data import labeled_subset, load_dataset
from pipeline.sweep.plan import trial_command


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trainer(digits, method="sgan", variant="stacked", labels=20, profile="smoke"):
    config = resolve_config(
        method, dataset="digits", labels=labels, seed=0, profile=profile, variant=variant, architecture="gans_in_action"
    )
    idx = labeled_subset(digits.y_train, labels, 0, excluded=digits.validation)
    models = build_models(method, config.variant, 10, config.latent_dim, 0, architecture="gans_in_action")
    return make_trainer(config, models, digits.x_train[idx], digits.y_train[idx], digits.x_train[digits.pool])


def _copy(variables):
    return [np.array(v) for v in variables]


def _all_moved(before, variables):
    return all(not np.allclose(a, np.array(b)) for a, b in zip(before, variables, strict=True))


def _none_moved(before, variables):
    return all(np.array_equal(a, np.array(b)) for a, b in zip(before, variables, strict=True))


@pytest.mark.parametrize("variant", ["stacked", "two_head", "k_plus_one"])
def test_gans_in_action_sgan_moves_every_weight_of_both_networks(digits, variant):
    trainer = _trainer(digits, variant=variant)
    d, g = trainer.models.discriminator, trainer.models.generator
    assert [layer.name for layer in d.layers if isinstance(layer, keras.layers.BatchNormalization)] == [
        "batchnorm2",
        "batchnorm3",
    ]
    assert d.get_layer("conv1").filters == 32 and d.get_layer("dropout").rate == 0.5
    assert g.get_layer("project").units == 7 * 7 * 256 and g.output_shape == (None, 28, 28, 1)
    d_before, g_before = _copy(d.weights), _copy(g.weights)  # BatchNorm moving statistics included
    losses = trainer.train_steps(3)
    assert all(np.isfinite(v) for v in losses.values())
    assert _all_moved(d_before, d.weights) and _all_moved(g_before, g.weights)


def test_batchnorm_statistics_move_only_in_the_updates_that_own_them(digits):
    """Discriminator updates move its moving statistics (not the generator's: its fakes come from the
    generator in inference mode); the generator update moves the generator's and puts the
    discriminator's back; evaluation moves none."""
    trainer = _trainer(digits)
    d_stats = moving_statistics(trainer.models.discriminator)
    g_stats = moving_statistics(trainer.models.generator)
    assert len(d_stats) == 10 and len(g_stats) == 10  # 2 layers: mean, variance and 3 debiasing states
    real = tf.constant(digits.x_train[:32])

    d_before, g_before = _copy(d_stats), _copy(g_stats)
    d_kernel = _copy(trainer.models.discriminator.trainable_variables)
    trainer._generator_update(real)
    assert _none_moved(d_before, d_stats) and _none_moved(d_kernel, trainer.models.discriminator.trainable_variables)
    assert _all_moved(g_before, g_stats)

    g_before = _copy(g_stats)
    fake = trainer.models.generator(trainer._latent(32), training=False)
    trainer._unsupervised_update(fake, is_real=False)
    trainer._supervised_update()
    assert _all_moved(d_before, d_stats) and _none_moved(g_before, g_stats)

    d_before = _copy(d_stats)
    trainer.accuracy(digits.x_test, digits.y_test)
    trainer.accuracy(digits.x_test, digits.y_test, "_ema")
    assert _none_moved(d_before, d_stats) and _none_moved(g_before, g_stats)


def test_the_same_generator_update_in_a_graph_also_keeps_the_discriminator_statistics(digits):
    trainer = _trainer(digits)
    d_stats = moving_statistics(trainer.models.discriminator)
    before = _copy(d_stats)
    tf.function(trainer._generator_update)(tf.constant(digits.x_train[:32]))
    assert _none_moved(before, d_stats)


def test_labeled_passes_see_every_image_once_per_pass_in_a_new_order():
    passes = LabeledPasses(10, 4, tf.random.Generator.from_seed(0))
    draw = tf.function(passes.next)
    orders = []
    for _ in range(3):
        batches = [draw().numpy() for _ in range(3)]
        assert [len(b) for b in batches] == [4, 4, 2]  # the last batch of a pass is smaller, as in fit
        orders.append(np.concatenate(batches))
        assert sorted(orders[-1]) == list(range(10))
    assert not np.array_equal(orders[0], orders[1])


def test_cnn_source_trains_as_the_book_does(digits):
    config = resolve_config(
        "cnn_source", dataset="digits", labels=40, seed=0, profile="quick", architecture="gans_in_action"
    )
    assert (config.train_epochs, config.train_steps_per_epoch, config.total_steps) == (30, 2, 60)
    assert (config.learning_rate, config.beta_1, config.discriminator_batch) == (1e-3, 0.9, 32)
    assert config.protocol == "quick 10x60"  # paired with the SGAN runs of the same protocol
    trainer = _trainer(digits, "cnn_source", labels=40, profile="quick")
    before = _copy(trainer.models.discriminator.weights)
    trainer.train_steps(2)
    assert _all_moved(before, trainer.models.discriminator.weights)
    assert "labeled_passes/0" in trainer.state_variables()  # its place in the pass is checkpointed


def test_cnn_source_is_refused_for_an_architecture_whose_source_has_no_baseline():
    with pytest.raises(ConfigError, match="architecture='mlm' has no supervised baseline in its source"):
        resolve_config("cnn_source", architecture="mlm")
    with pytest.raises(ConfigError, match="architecture='resnet' is not one of mlm, gans_in_action"):
        resolve_config("sgan", architecture="resnet")


def test_the_gans_in_action_protocol_is_the_books():
    config = resolve_config("sgan", profile="gans_in_action", architecture="gans_in_action")
    assert (config.epochs * config.steps_per_epoch, config.batch_size, config.discriminator_batch) == (8000, 32, 32)
    assert (config.learning_rate, config.beta_1) == (1e-3, 0.9)
    assert config.arm == "sgan stacked gans_in_action"
    assert config.run_name == "sgan-stacked-gans_in_action-mnist-L100-s0"
    assert 8e9 < flops_per_step(config) < 11e9  # about a sixth of the mlm step's 62 GFLOP


def test_architecture_and_subset_rule_are_in_the_fingerprint_and_earlier_runs_keep_theirs():
    """Values computed by the code before these settings existed: runs logged then still match."""
    assert (
        fingerprint(resolve_config("sgan", dataset="mnist", labels=100, seed=3, profile="quick"), "abc")
        == "7e13bb29ef9a4fd6"
    )
    assert (
        fingerprint(resolve_config("cnn", dataset="mnist", labels=100, seed=3, profile="quick"), "abc")
        == "b9683bcdd27f4998"
    )
    assert (
        fingerprint(resolve_config("cnn_tuned", dataset="mnist", labels=100, seed=3, profile="quick"), "abc")
        == "6de4fa6b920e9d06"
    )
    base = resolve_config("sgan", dataset="mnist", labels=100, seed=3, profile="quick")
    others = {
        fingerprint(replace(base, architecture="gans_in_action"), "abc"),
        fingerprint(replace(base, labeled_subset="first"), "abc"),
        fingerprint(base, "abc"),
    }
    assert len(others) == 3
    gia = resolve_config("sgan", dataset="mnist", labels=100, seed=3, profile="quick", architecture="gans_in_action")
    assert (base.batchnorm, gia.batchnorm) == ("none", "zero_debiased")  # GiA runs before it run again
    assert fingerprint(gia, "abc") != fingerprint(replace(gia, batchnorm="none"), "abc")
    # bfloat16 SGAN runs from before the float32-summed bias gradients run again; float32 ones are kept
    bf16 = resolve_config("sgan", dataset="mnist", labels=100, seed=3, profile="quick", precision="bfloat16")
    assert fingerprint(bf16, "abc") != "8cb5ab58d59f87c6"  # what the code before computed


def test_debiased_batchnorm_keeps_the_weighted_mean_of_the_batch_statistics_alone():
    """Keras 2's zero-debiased moving statistics (the book's): after t updates, the momentum-weighted mean
    of the t batch statistics, nothing of the initial 0 and 1; training outputs are the stock layer's."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (8, 4, 4, 5)).astype(np.float32) for _ in range(6)]
    debiased, stock = DebiasedBatchNormalization(), keras.layers.BatchNormalization()
    for batch in batches:
        np.testing.assert_allclose(debiased(batch, training=True), stock(batch, training=True), rtol=0, atol=1e-5)
    weights = np.array([0.99 ** (len(batches) - 1 - k) for k in range(len(batches))])
    weights /= weights.sum()
    means = np.array([batch.mean(axis=(0, 1, 2)) for batch in batches])
    variances = np.array([batch.var(axis=(0, 1, 2)) for batch in batches])
    np.testing.assert_allclose(debiased.moving_mean.numpy(), weights @ means, rtol=1e-4)
    np.testing.assert_allclose(debiased.moving_variance.numpy(), weights @ variances, rtol=1e-4)
    assert np.all(stock.moving_mean.numpy() < 0.1 * means.mean(axis=0))  # Keras 3's: still 94% the initial 0
    expected = (batches[0] - weights @ means) / np.sqrt(weights @ variances + debiased.epsilon)  # inference
    np.testing.assert_allclose(debiased(batches[0], training=False), expected, rtol=0, atol=1e-4)


def test_trained_gans_in_action_networks_are_logged_as_stock_layers_with_the_same_outputs(digits):
    trainer = _trainer(digits)
    trainer.train_steps(3)
    images = tf.constant(digits.x_test[:16])
    latent = tf.random.stateless_normal([4, trainer.config.latent_dim], seed=[1, 2])
    for model, x in ((trainer.models.classifier, images), (trainer.models.generator, latent)):
        copy = portable_copy(model, "gans_in_action")
        assert all(type(layer).__module__.startswith("keras.") for layer in copy.layers), model.name
        np.testing.assert_allclose(copy(x, training=False), model(x, training=False), rtol=0, atol=1e-5)


def test_first_n_labeled_images_ignore_the_seed_and_skip_the_validation_split(digits):
    first = labeled_subset(digits.y_train, 30, 0, excluded=digits.validation, rule="first")
    assert np.array_equal(first, labeled_subset(digits.y_train, 30, 5, excluded=digits.validation, rule="first"))
    open_indices = np.setdiff1d(np.arange(len(digits.y_train)), digits.validation)
    assert np.array_equal(first, open_indices[:30])
    config = resolve_config("sgan", dataset="digits", labels=30, labeled_subset="first")
    assert config.protocol == "quick 10x60, first 30 labeled"


def test_a_sweep_trial_command_is_parsed_back_into_the_same_settings():
    from pipeline.cli import build_parser, setting_values

    for method, taken in (("sgan", {"variant": "two_head"}), ("cnn_source", {})):
        config = resolve_config(
            method,
            dataset="digits",
            labels=30,
            seed=2,
            profile="smoke",
            precision="bfloat16",
            architecture="gans_in_action",
            **taken,
        )
        args = build_parser().parse_args(trial_command(config, "parent")[3:])
        assert (args.command, args.parent_run_id) == (method, "parent")
        assert resolve_config(args.command, **setting_values(args)) == config


@pytest.mark.slow  # the fast tier's budget; the same logic runs there on lighter cases
def test_the_classic_keras_reference_of_the_book_trains_what_it_intends(digits):
    idx = labeled_subset(digits.y_train, 20, 0, excluded=digits.validation)
    config = resolve_config(
        "sgan", dataset="digits", labels=20, profile="gans_in_action", architecture="gans_in_action"
    )
    reference = ReferenceSGAN(digits.x_train[idx], digits.y_train[idx], digits.x_train, config)
    check_reference_updates(reference)
