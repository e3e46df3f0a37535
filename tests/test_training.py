"""Real training on real (small) data: every network's weights move, for every variant."""

import numpy as np
import pytest

from pipeline.config import resolve_config
from pipeline.data import labeled_subset, load_dataset
from pipeline.models import build_models
from pipeline.training import fit, make_trainer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trainer(digits, method, variant="stacked", labels=20):
    config = resolve_config(method, "digits", labels, seed=0, profile="smoke", variant=variant)
    idx = labeled_subset(digits.y_train, labels, seed=0)
    models = build_models(method, config.variant, 10, config.latent_dim, config.seed)
    return make_trainer(config, models, digits.x_train[idx], digits.y_train[idx], digits.x_train), idx


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
    trainer, _ = _trainer(digits, "cnn", labels=100)
    seen = []
    history = fit(
        trainer,
        digits.x_test,
        digits.y_test,
        on_epoch_end=lambda epoch, metrics: seen.append(epoch),
        verbose=False,
    )
    assert seen == [1, 2]
    assert len(history.metrics["test_accuracy"]) == 2 and history.steps == 10
    # 10 supervised steps on 100 labeled digits already beat chance (10%) clearly
    assert history.last("labeled_accuracy") > 0.3


def test_bfloat16_mixed_precision_trains_every_network_and_keeps_float32_outputs(digits):
    config = resolve_config("sgan", "digits", 20, seed=0, profile="smoke", precision="bfloat16")
    idx = labeled_subset(digits.y_train, 20, seed=0)
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
