"""Training steps and the epoch loop, with no MLflow in sight (tracking hooks in via `on_epoch_end`).

Steps are explicit `tf.GradientTape` updates: the Keras 2 recipe of compiling a discriminator and then
freezing it inside a composite GAN model trains nothing in Keras 3. Data lives on the device as
constants and batches are drawn on the graph, and `train_steps(n)` runs n steps in one call so the
host is not consulted between steps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import RunConfig
from pipeline.models import SGANModels
from pipeline.objectives import generator_loss, real_logit, supervised_loss, unsupervised_loss

STEPS_PER_CALL = 10  # steps per graph call: few host round trips, yet a lively progress bar


def make_optimizer(config: RunConfig) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(learning_rate=config.learning_rate, beta_1=config.beta_1)


def _apply(optimizer: keras.optimizers.Optimizer, tape: tf.GradientTape, loss, variables) -> None:
    """Apply the gradients that exist: a head a loss does not reach (two_head) gets none."""
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables, strict=True) if g is not None])


class Trainer:
    """The CNN baseline: supervised updates on the labeled subset only."""

    loss_names: tuple[str, ...] = ("loss_supervised",)

    def __init__(self, config: RunConfig, models: SGANModels, x_labeled, y_labeled, x_unlabeled):
        self.config = config
        self.models = models
        self.rng = tf.random.Generator.from_seed(config.seed)
        self.x_labeled = tf.constant(x_labeled, tf.float32)
        self.y_labeled = tf.constant(y_labeled, tf.int64)
        self.x_unlabeled = tf.constant(x_unlabeled, tf.float32)
        self.supervised_optimizer = make_optimizer(config)
        self.supervised_optimizer.build(models.discriminator.trainable_variables)
        self._run_steps = tf.function(self._steps)
        self._predict = tf.function(self._classes, reduce_retracing=True)

    def _discriminate(self, x: tf.Tensor, training: bool) -> list[tf.Tensor]:
        """[class_logits, aux?] in float32 (losses stay float32 under mixed precision); Keras returns a
        lone output unwrapped, so wrap it back."""
        outputs = tf.nest.flatten(self.models.discriminator(x, training=training))
        return [tf.cast(output, tf.float32) for output in outputs]

    def _sample(self, images: tf.Tensor, n: int) -> tf.Tensor:
        return self.rng.uniform([n], 0, tf.shape(images, out_type=tf.int64)[0], dtype=tf.int64)

    def _supervised_update(self) -> tf.Tensor:
        idx = self._sample(self.x_labeled, self.config.half_batch)
        x, y = tf.gather(self.x_labeled, idx), tf.gather(self.y_labeled, idx)
        variables = self.models.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            loss = supervised_loss(y, self._discriminate(x, training=True)[0])
        _apply(self.supervised_optimizer, tape, loss, variables)
        return loss

    def _step(self) -> list[tf.Tensor]:
        return [self._supervised_update()]

    def _steps(self, n: tf.Tensor) -> tf.Tensor:
        total = tf.zeros([len(self.loss_names)])
        for _ in tf.range(n):
            total += tf.stack(self._step())
        return total / tf.cast(n, tf.float32)

    def train_steps(self, n: int) -> dict[str, float]:
        """Run n training steps; return each loss averaged over them."""
        means = self._run_steps(tf.constant(n, tf.int32)).numpy()
        return dict(zip(self.loss_names, means.tolist(), strict=True))

    def _classes(self, x: tf.Tensor) -> tf.Tensor:
        return tf.argmax(self._discriminate(x, training=False)[0], axis=-1)

    def accuracy(self, x: np.ndarray | tf.Tensor, y: np.ndarray | tf.Tensor) -> float:
        """Classification accuracy over all of (x, y), in batches."""
        size = self.config.eval_batch_size
        correct = sum(
            int(tf.reduce_sum(tf.cast(self._predict(x[i : i + size]) == y[i : i + size], tf.int32)))
            for i in range(0, len(x), size)
        )
        return correct / len(x)


class SGANTrainer(Trainer):
    """Per step, as in the reference: a supervised update on labeled images, unsupervised updates on
    real then generated images (two optimizer steps, like its two `train_on_batch` calls), then a
    generator update through the discriminator."""

    loss_names = ("loss_supervised", "loss_unsupervised_real", "loss_unsupervised_fake", "loss_generator")

    def __init__(self, config: RunConfig, models: SGANModels, x_labeled, y_labeled, x_unlabeled):
        super().__init__(config, models, x_labeled, y_labeled, x_unlabeled)
        self.unsupervised_optimizer = make_optimizer(config)
        self.unsupervised_optimizer.build(models.discriminator.trainable_variables)
        self.generator_optimizer = make_optimizer(config)
        self.generator_optimizer.build(models.generator.trainable_variables)

    def _real_logit(self, x: tf.Tensor, training: bool = True) -> tf.Tensor:
        return real_logit(self.config.variant, self._discriminate(x, training))

    def _unsupervised_update(self, x: tf.Tensor, is_real: bool) -> tf.Tensor:
        variables = self.models.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            loss = unsupervised_loss(self._real_logit(x), is_real)
        _apply(self.unsupervised_optimizer, tape, loss, variables)
        return loss

    def _latent(self, n: int) -> tf.Tensor:
        return self.rng.normal([n, self.config.latent_dim])

    def _step(self) -> list[tf.Tensor]:
        half = self.config.half_batch
        generator = self.models.generator
        loss_sup = self._supervised_update()
        real = tf.gather(self.x_unlabeled, self._sample(self.x_unlabeled, half))
        loss_real = self._unsupervised_update(real, is_real=True)
        loss_fake = self._unsupervised_update(generator(self._latent(half), training=False), is_real=False)
        with tf.GradientTape() as tape:
            loss_gen = generator_loss(self._real_logit(generator(self._latent(self.config.batch_size), training=True)))
        _apply(self.generator_optimizer, tape, loss_gen, generator.trainable_variables)
        return [loss_sup, loss_real, loss_fake, loss_gen]

    def generate(self, z: np.ndarray) -> np.ndarray:
        return self.models.generator(z, training=False).numpy()


def make_trainer(config: RunConfig, models: SGANModels, x_labeled, y_labeled, x_unlabeled) -> Trainer:
    cls = SGANTrainer if config.method == "sgan" else Trainer
    return cls(config, models, x_labeled, y_labeled, x_unlabeled)


@dataclass
class History:
    """Per-epoch metrics, keyed by metric name, one value per epoch."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(value)

    def last(self, name: str) -> float:
        return self.metrics[name][-1]


EpochHook = Callable[[int, dict[str, float]], None]


def fit(
    trainer: Trainer,
    x_test: np.ndarray,
    y_test: np.ndarray,
    on_epoch_end: EpochHook | None = None,
    verbose: bool = True,
) -> History:
    """Train for the configured epochs; after each, measure test accuracy on the whole test split
    (the reported figure) and accuracy on the labeled subset (a training-set figure, named as such)."""
    config = trainer.config
    history = History()
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        if verbose:
            print(f"Epoch {epoch}/{config.epochs}", flush=True)
        bar = keras.utils.Progbar(
            config.steps_per_epoch, stateful_metrics=["test_acc", "labeled_acc"], verbose=1 if verbose else 0
        )
        done, sums = 0, dict.fromkeys(trainer.loss_names, 0.0)
        while done < config.steps_per_epoch:
            n = min(STEPS_PER_CALL, config.steps_per_epoch - done)
            losses = trainer.train_steps(n)
            done += n
            for name, value in losses.items():
                sums[name] += value * n
            if done < config.steps_per_epoch:
                bar.update(done, values=list(losses.items()))
        history.steps += config.steps_per_epoch
        metrics = {name: total / config.steps_per_epoch for name, total in sums.items()}
        metrics["test_accuracy"] = trainer.accuracy(x_test, y_test)
        metrics["labeled_accuracy"] = trainer.accuracy(trainer.x_labeled, trainer.y_labeled)
        accuracies = [("test_acc", metrics["test_accuracy"]), ("labeled_acc", metrics["labeled_accuracy"])]
        bar.update(done, values=[*losses.items(), *accuracies])
        history.add(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if not np.isfinite(list(metrics.values())).all():
            raise FloatingPointError(f"training diverged at epoch {epoch}: {metrics}")
    history.seconds = time.perf_counter() - started
    sys.stdout.flush()
    return history
