"""Training steps and the epoch loop, with no MLflow in sight (tracking hooks in via `on_epoch_end`).

Steps are explicit `tf.GradientTape` updates: the Keras 2 recipe of compiling a discriminator and then
freezing it inside a composite GAN model trains nothing in Keras 3. Data lives on the device as
constants and batches are drawn on the graph, and `train_steps(n)` runs n steps in one call so the
host is not consulted between steps. After every step an exponential moving average (EMA) of the
classifier's weights is updated; both the raw and the averaged classifier are evaluated each epoch.

BatchNorm (the `gans_in_action` networks), as in that book's Keras 2 code: every update runs its
networks in training mode (batch statistics; dropout on). The discriminator's updates (labeled, real,
generated) move its moving statistics; the generated images it is trained on come from the generator
in inference mode (its moving statistics, as the book's `generator.predict`); the generator's update
moves the generator's moving statistics and leaves the discriminator's as they were (the book's
discriminator is frozen there). Evaluation uses the moving statistics, zero-debiased as Keras 2 kept them
(`pipeline.core.models.DebiasedBatchNormalization`).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import RunConfig
from pipeline.core.layers import WeightNormDense, initialize_from_data
from pipeline.core.models import SGANModels
from pipeline.core.objectives import (
    feature_matching_loss,
    generator_loss,
    real_logit,
    supervised_loss,
    unsupervised_loss,
)
from pipeline.core.optimizers import InnerEpsilonAdam
from pipeline.stopping import raise_if_stopped

STEPS_PER_CALL = 10  # steps per graph call: few host round trips, yet a lively progress bar
MAX_SHIFT = 2  # pixels, for `augment="shift"`
TRACKS = ("", "_ema")  # the raw classifier and its moving average


def make_optimizer(config: RunConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "inner_epsilon_adam":
        return InnerEpsilonAdam(config.learning_rate, config.beta_1, weight_decay=config.weight_decay or None)
    if config.weight_decay:
        return keras.optimizers.AdamW(
            learning_rate=config.learning_rate, beta_1=config.beta_1, weight_decay=config.weight_decay
        )
    return keras.optimizers.Adam(learning_rate=config.learning_rate, beta_1=config.beta_1)


class MovingAverage:
    """target <- d * target + (1 - d) * source after every step, with the warm-up of TensorFlow's
    `ExponentialMovingAverage(num_updates=...)`: d = min(decay, (1 + t) / (10 + t)), so early steps
    are not dominated by the random initial weights."""

    def __init__(self, source: keras.Model, target: keras.Model, decay: float):
        self.pairs = list(zip(source.weights, target.weights, strict=True))
        self.decay = decay
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_updates")

    def update(self) -> None:
        t = tf.cast(self.updates, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + t) / (10.0 + t))
        for source, target in self.pairs:
            target.assign(decay * target + (1.0 - decay) * tf.cast(source, target.dtype))
        self.updates.assign_add(1)


def shift_images(images: tf.Tensor, rng: tf.random.Generator, max_shift: int = MAX_SHIFT) -> tf.Tensor:
    """Translate each image by its own random offset of up to `max_shift` pixels in each direction,
    filling with the background (-1): the classic augmentation for digits."""
    size = images.shape[1]
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]], constant_values=-1.0)
    offsets = rng.uniform([tf.shape(images)[0], 2], 0, 2 * max_shift + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(size)[None, :]
    cols = offsets[:, 1:] + tf.range(size)[None, :]
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def _apply(optimizer: keras.optimizers.Optimizer, tape: tf.GradientTape, loss, variables) -> None:
    """Apply the gradients that exist: a head a loss does not reach (two_head) gets none."""
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables, strict=True) if g is not None])


def moving_statistics(model: keras.Model) -> list[tf.Variable]:
    """The BatchNorm moving means and variances of a model, with the state that keeps them debiased
    (`DebiasedBatchNormalization`); none in the `mlm` networks."""
    return [
        variable
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for variable in layer.non_trainable_variables
    ]


class LabeledPasses:
    """Shuffled passes over the labeled images, `batch` at a time and the last batch of a pass smaller,
    as Keras' `fit(shuffle=True)` draws them: the supervised recipe of `cnn_source`. Its state (the
    pass's order and the position in it) is checkpointed with the rest."""

    def __init__(self, count: int, batch: int, rng: tf.random.Generator):
        self.count, self.batch, self.rng = count, batch, rng
        self.order = tf.Variable(tf.range(count, dtype=tf.int64), trainable=False, name="labeled_order")
        self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="labeled_position")

    def _shuffled(self) -> tf.Tensor:
        order = tf.cast(tf.argsort(self.rng.uniform([self.count])), tf.int64)
        self.order.assign(order)
        return order

    def next(self) -> tf.Tensor:
        # a new order at the start of each pass (`tf.cond`: the steps are traced without autograph)
        order = tf.cond(self.position == 0, self._shuffled, lambda: tf.convert_to_tensor(self.order))
        end = tf.minimum(self.position + self.batch, self.count)
        indices = order[self.position : end]
        self.position.assign(tf.where(end >= self.count, tf.constant(0, tf.int64), end))
        return indices


def tiled_indices(rng: tf.random.Generator, count: int, batch: int) -> tf.Tensor:
    """improved-gan's labeled batches: the labeled images in a fresh random order, repeated to fill the
    batch, so each batch holds every labeled image equally often (exactly so when the count divides the
    batch: 100 labels in batches of 100 are all 100 images every step); with more labeled images than the
    batch, a draw without replacement."""
    order = tf.argsort(rng.uniform([count]))
    return tf.gather(order, tf.range(batch) % count)


INIT_IMAGES = 500  # improved-gan's data-dependent initialization batch


def initialize_weight_norm(models: SGANModels, x_unlabeled: np.ndarray, seed: int) -> None:
    """The data-dependent initialization of a weight-normalized discriminator, on `INIT_IMAGES` unlabeled
    images drawn by the run's seed; the moving average starts from the initialized weights."""
    if not any(isinstance(layer, WeightNormDense) for layer in models.discriminator.layers):
        return
    chosen = np.random.default_rng(seed).choice(
        len(x_unlabeled), size=min(INIT_IMAGES, len(x_unlabeled)), replace=False
    )
    initialize_from_data(models.discriminator, tf.constant(x_unlabeled[np.sort(chosen)], tf.float32))
    models.classifier_ema.set_weights(models.classifier.get_weights())


class Trainer:
    """The CNN baselines: supervised updates on the labeled subset only."""

    loss_names: tuple[str, ...] = ("loss_supervised",)

    def __init__(self, config: RunConfig, models: SGANModels, x_labeled, y_labeled, x_unlabeled):
        self.config = config
        self.models = models
        self.rng = tf.random.Generator.from_seed(config.seed)
        self.x_labeled = tf.constant(x_labeled, tf.float32)
        self.y_labeled = tf.constant(y_labeled, tf.int64)
        self.x_unlabeled = tf.constant(x_unlabeled, tf.float32)
        self.passes = None
        if config.labeled_sampling == "passes":
            self.passes = LabeledPasses(len(x_labeled), config.discriminator_batch, self.rng)
        initialize_weight_norm(models, x_unlabeled, config.seed)
        self.supervised_optimizer = make_optimizer(config)
        self.supervised_optimizer.build(models.discriminator.trainable_variables)
        self.average = MovingAverage(models.classifier, models.classifier_ema, config.ema_decay)
        # autograph off: the step has no Python control flow on tensors to convert, and converting it
        # lengthened every run's start (docs/development.md)
        self._run_steps = tf.function(self._steps, autograph=False)
        # one trace per classifier for every batch size (the splits and the last batch of each differ)
        images = [tf.TensorSpec(models.classifier.input_shape, tf.float32)]
        self._predictors = {
            track: tf.function(functools.partial(self._classes, classifier), input_signature=images, autograph=False)
            for track, classifier in zip(TRACKS, (models.classifier, models.classifier_ema), strict=True)
        }

    def _discriminate(self, x: tf.Tensor, training: bool) -> list[tf.Tensor]:
        """[class_logits, aux?] in float32 (losses stay float32 under mixed precision); Keras returns a
        lone output unwrapped, so wrap it back."""
        outputs = tf.nest.flatten(self.models.discriminator(x, training=training))
        return [tf.cast(output, tf.float32) for output in outputs]

    def _sample(self, images: tf.Tensor, n: int) -> tf.Tensor:
        return self.rng.uniform([n], 0, tf.shape(images, out_type=tf.int64)[0], dtype=tf.int64)

    def _labeled_batch(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Labeled images and labels for one supervised loss, drawn as `config.labeled_sampling` says and
        augmented as `config.augment` says."""
        if self.passes is not None:
            idx = self.passes.next()
        elif self.config.labeled_sampling == "tiled":
            idx = tiled_indices(self.rng, len(self.y_labeled), self.config.discriminator_batch)
        else:
            idx = self._sample(self.x_labeled, self.config.discriminator_batch)
        x, y = tf.gather(self.x_labeled, idx), tf.gather(self.y_labeled, idx)
        if self.config.augment == "shift":
            x = shift_images(x, self.rng)
        return x, y

    def _supervised_update(self) -> tf.Tensor:
        x, y = self._labeled_batch()
        variables = self.models.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            loss = supervised_loss(y, self._discriminate(x, training=True)[0])
        _apply(self.supervised_optimizer, tape, loss, variables)
        return loss

    def _step(self) -> list[tf.Tensor]:
        return [self._supervised_update()]

    def state_variables(self) -> dict[str, tf.Variable]:
        """Everything training changes, by a stable name: weights and random-seed state of every network,
        the optimizers' slots and step counts, the moving average and the random generator. Restoring
        these continues training exactly where it was."""
        groups = {
            "discriminator": self.models.discriminator.variables,  # `.variables` includes dropout seeds
            "classifier_ema": self.models.classifier_ema.variables,
            "supervised_optimizer": self.supervised_optimizer.variables,
            "ema_updates": [self.average.updates],
            "rng": [self.rng.state],
        }
        if self.passes is not None:
            groups["labeled_passes"] = [self.passes.order, self.passes.position]
        return {f"{group}/{i}": v for group, variables in groups.items() for i, v in enumerate(variables)}

    def _steps(self, n: tf.Tensor) -> tf.Tensor:
        def step(i: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            total += tf.stack(self._step())
            self.average.update()
            return i + 1, total

        start = (tf.constant(0, tf.int32), tf.zeros([len(self.loss_names)]))
        _, total = tf.while_loop(lambda i, _: i < n, step, start)
        return total / tf.cast(n, tf.float32)

    def train_steps(self, n: int) -> dict[str, float]:
        """Run n training steps; return each loss averaged over them."""
        means = self._run_steps(tf.constant(n, tf.int32)).numpy()
        return dict(zip(self.loss_names, means.tolist(), strict=True))

    @staticmethod
    def _classes(classifier: keras.Model, x: tf.Tensor) -> tf.Tensor:
        return tf.argmax(classifier(x, training=False), axis=-1)

    def predictions(self, x: np.ndarray | tf.Tensor, suffix: str = "") -> np.ndarray:
        """Predicted classes of all of x, in batches, by the raw classifier (suffix "") or by its
        moving average ("_ema")."""
        size, predict = self.config.eval_batch_size, self._predictors[suffix]
        return np.concatenate([predict(x[i : i + size]).numpy() for i in range(0, len(x), size)])

    def accuracy(self, x: np.ndarray | tf.Tensor, y: np.ndarray | tf.Tensor, suffix: str = "") -> float:
        return float(np.mean(self.predictions(x, suffix) == np.asarray(y)))


class SGANTrainer(Trainer):
    """Per step, as in the reference: a supervised update on labeled images, unsupervised updates on
    real then generated images (two optimizer steps, like its two `train_on_batch` calls), then a
    generator update through the discriminator."""

    loss_names = ("loss_supervised", "loss_unsupervised_real", "loss_unsupervised_fake", "loss_generator")

    def __init__(self, config: RunConfig, models: SGANModels, x_labeled, y_labeled, x_unlabeled):
        super().__init__(config, models, x_labeled, y_labeled, x_unlabeled)
        self.unsupervised_optimizer = None
        if config.networks.discriminator_step == "separate":
            self.unsupervised_optimizer = make_optimizer(config)
            self.unsupervised_optimizer.build(models.discriminator.trainable_variables)
        self.generator_optimizer = make_optimizer(config)
        self.generator_optimizer.build(models.generator.trainable_variables)
        self.discriminator_statistics = moving_statistics(models.discriminator)

    def _real_logit(self, x: tf.Tensor, training: bool = True) -> tf.Tensor:
        return real_logit(self.config.variant, self._discriminate(x, training))

    def _unsupervised_update(self, x: tf.Tensor, is_real: bool) -> tf.Tensor:
        variables = self.models.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            loss = unsupervised_loss(self._real_logit(x), is_real)
        _apply(self.unsupervised_optimizer, tape, loss, variables)
        return loss

    def state_variables(self) -> dict[str, tf.Variable]:
        groups = {
            "generator": self.models.generator.variables,
            "unsupervised_optimizer": self.unsupervised_optimizer.variables if self.unsupervised_optimizer else [],
            "generator_optimizer": self.generator_optimizer.variables,
        }
        extra = {f"{group}/{i}": v for group, variables in groups.items() for i, v in enumerate(variables)}
        return {**super().state_variables(), **extra}

    def _features(self, x: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.models.features(x, training=True), tf.float32)

    def _latent(self, n: int) -> tf.Tensor:
        if self.config.networks.latent == "uniform":
            return self.rng.uniform([n, self.config.latent_dim])
        return self.rng.normal([n, self.config.latent_dim])

    def _step(self) -> list[tf.Tensor]:
        half = self.config.discriminator_batch
        loss_sup = self._supervised_update()
        real = tf.gather(self.x_unlabeled, self._sample(self.x_unlabeled, half))
        loss_real = self._unsupervised_update(real, is_real=True)
        fake = self.models.generator(self._latent(half), training=False)
        loss_fake = self._unsupervised_update(fake, is_real=False)
        return [loss_sup, loss_real, loss_fake, self._generator_update(real)]

    def _generator_update(self, real: tf.Tensor) -> tf.Tensor:
        """The discriminator runs in training mode, but its BatchNorm moving statistics are put back
        afterwards: only the generator learns here (see the module docstring)."""
        generator = self.models.generator
        kept = [tf.identity(statistic) for statistic in self.discriminator_statistics]
        with tf.GradientTape() as tape:
            fake = generator(self._latent(self.config.batch_size), training=True)
            if self.config.generator_loss == "feature_matching":
                loss = feature_matching_loss(self._features(real), self._features(fake))
            else:
                loss = generator_loss(self._real_logit(fake))
        _apply(self.generator_optimizer, tape, loss, generator.trainable_variables)
        for statistic, value in zip(self.discriminator_statistics, kept, strict=True):
            statistic.assign(value)
        return loss

    def generate(self, z: np.ndarray) -> np.ndarray:
        return self.models.generator(z, training=False).numpy()


class JointSGANTrainer(SGANTrainer):
    """improved-gan's step: one discriminator update on loss_supervised + (loss_real + loss_fake) / 2 over
    a labeled, an unlabeled and a generated batch (noise on), then a generator update (feature matching in
    its recipe) against a fresh unlabeled batch. Its generator has BatchNorm and, as in its source, always
    runs on batch statistics during training, also for the images the discriminator is trained on.

    The three batches go through the discriminator as one (it has no BatchNorm, and its noise is drawn
    per image, so that is the same function), and so do the two of the generator's update.
    """

    def _step(self) -> list[tf.Tensor]:
        n = self.config.discriminator_batch
        x, y = self._labeled_batch()
        real = tf.gather(self.x_unlabeled, self._sample(self.x_unlabeled, n))
        fake = self.models.generator(self._latent(n), training=True)
        variables = self.models.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self._discriminate(tf.concat([x, real, fake], axis=0), training=True)
            labeled, unlabeled, generated = zip(
                *(tf.split(output, [tf.shape(x)[0], n, n]) for output in outputs), strict=True
            )
            loss_sup = supervised_loss(y, labeled[0])
            loss_real = unsupervised_loss(real_logit(self.config.variant, unlabeled), is_real=True)
            loss_fake = unsupervised_loss(real_logit(self.config.variant, generated), is_real=False)
            loss = loss_sup + 0.5 * (loss_real + loss_fake)
        _apply(self.supervised_optimizer, tape, loss, variables)
        fresh = tf.gather(self.x_unlabeled, self._sample(self.x_unlabeled, self.config.batch_size))
        return [loss_sup, loss_real, loss_fake, self._generator_update(fresh)]

    def _generator_update(self, real: tf.Tensor) -> tf.Tensor:
        if self.config.generator_loss != "feature_matching":
            return super()._generator_update(real)
        generator = self.models.generator
        with tf.GradientTape() as tape:
            fake = generator(self._latent(self.config.batch_size), training=True)
            features = self._features(tf.concat([real, fake], axis=0))
            real_features, fake_features = tf.split(features, [tf.shape(real)[0], tf.shape(fake)[0]])
            loss = feature_matching_loss(real_features, fake_features)
        _apply(self.generator_optimizer, tape, loss, generator.trainable_variables)
        return loss


def make_trainer(config: RunConfig, models: SGANModels, x_labeled, y_labeled, x_unlabeled) -> Trainer:
    if config.method != "sgan":
        cls = Trainer
    else:
        cls = JointSGANTrainer if config.networks.discriminator_step == "joint" else SGANTrainer
    return cls(config, models, x_labeled, y_labeled, x_unlabeled)


Split = tuple[np.ndarray, np.ndarray]


@dataclass
class History:
    """Per-epoch metrics, keyed by metric name, one value per epoch; and per track the epoch that
    counts (the last, or the one with the best validation accuracy)."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    selected: dict[str, int] = field(default_factory=dict)  # track suffix -> epoch (from 1)

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(value)

    def last(self, name: str) -> float:
        return self.metrics[name][-1]

    def chosen(self, name: str, track: str = "") -> float:
        """The metric at the epoch that counts for `track`."""
        return self.metrics[name][self.selected[track] - 1]


EpochHook = Callable[[int, dict[str, float]], None]
SHOWN = ("test_accuracy", "val_accuracy", "labeled_accuracy")  # the figures shown after each epoch


@dataclass
class FitState:
    """Where `fit` is, between epochs: what a checkpoint adds to the trainer's variables."""

    epoch: int = 0  # epochs done
    history: History = field(default_factory=History)
    best: dict[str, tuple[float, int, list[np.ndarray]]] = field(default_factory=dict)  # EpochSelection's


class EpochSelection:
    """Keeps, per track, the weights of the epoch with the best validation accuracy (the first such
    epoch on ties) and puts them back at the end. Only validation figures are read."""

    def __init__(self, trainer: Trainer, best: dict[str, tuple[float, int, list[np.ndarray]]]):
        self.models = {"": trainer.models.discriminator, "_ema": trainer.models.classifier_ema}
        self.best = best  # track -> (score, epoch, weights); shared with FitState so checkpoints hold it

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        for track, model in self.models.items():
            score = metrics[f"val_accuracy{track}"]
            if track not in self.best or score > self.best[track][0]:
                self.best[track] = (score, epoch, model.get_weights())

    def restore(self) -> dict[str, int]:
        for track, model in self.models.items():
            model.set_weights(self.best[track][2])
        return {track: best[1] for track, best in self.best.items()}


def evaluate(trainer: Trainer, splits: dict[str, Split]) -> dict[str, float]:
    """`<split>_accuracy` and `<split>_accuracy_ema` for each split, and the raw classifier's accuracy
    on its own labeled subset (`labeled_accuracy`, a training-set figure, named as such)."""
    metrics = {}
    for name, (x, y) in splits.items():
        for track in TRACKS:
            metrics[f"{name}_accuracy{track}"] = trainer.accuracy(x, y, track)
    metrics["labeled_accuracy"] = trainer.accuracy(trainer.x_labeled, trainer.y_labeled)
    return metrics


def fit(
    trainer: Trainer,
    splits: dict[str, Split],
    on_epoch_end: EpochHook | None = None,
    verbose: bool = True,
    state: FitState | None = None,
    on_checkpoint: Callable[[FitState], None] | None = None,
) -> History:
    """Train for the configured epochs, evaluating every split after each (`test`: the whole test
    split, the reported figure; `val`: the validation split, the only one anything is chosen by).

    With `select_epoch="best_validation"` the networks end with the weights of their best validation
    epoch (per track) and `History.selected` says which; otherwise the last epoch counts.
    `state` (restored from a checkpoint together with the trainer's variables) continues a run after
    its last finished epoch; `on_checkpoint` is called after every epoch with the state to save."""
    config = trainer.config
    state = state or FitState()
    history = state.history
    selection = EpochSelection(trainer, state.best) if config.select_epoch == "best_validation" else None
    if selection is not None and "val" not in splits:
        raise ValueError("select_epoch='best_validation' needs a 'val' split")
    shown = [name for name in SHOWN if name.split("_")[0] in splits or name == "labeled_accuracy"]
    started = time.perf_counter() - history.seconds
    for epoch in range(state.epoch + 1, config.train_epochs + 1):
        if verbose:
            print(f"Epoch {epoch}/{config.train_epochs}", flush=True)
        steps = config.train_steps_per_epoch
        bar = keras.utils.Progbar(steps, stateful_metrics=shown, verbose=1 if verbose else 0)
        done, sums = 0, dict.fromkeys(trainer.loss_names, 0.0)
        while done < steps:
            raise_if_stopped()  # a stop whose exception a library swallowed ends training here
            n = min(STEPS_PER_CALL, steps - done)
            losses = trainer.train_steps(n)
            done += n
            for name, value in losses.items():
                sums[name] += value * n
            if done < steps:
                bar.update(done, values=list(losses.items()))
        history.steps += steps
        metrics = {name: total / steps for name, total in sums.items()}
        metrics.update(evaluate(trainer, splits))
        bar.update(done, values=[*losses.items(), *[(name, metrics[name]) for name in shown]])
        if verbose:  # one plain line per epoch in a trial's log (its sweep follows its events, not this)
            figures = " ".join(f"{name} {metrics[name]:.4f}" for name in shown)
            print(f"epoch {epoch}/{config.train_epochs} done at {time.perf_counter() - started:.1f}s: {figures}")
        history.add(metrics)
        if selection is not None:
            selection.observe(epoch, metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if not np.isfinite(list(metrics.values())).all():
            raise FloatingPointError(f"training diverged at epoch {epoch}: {metrics}")
        state.epoch, history.seconds = epoch, time.perf_counter() - started
        if on_checkpoint is not None:
            on_checkpoint(state)
    history.seconds = time.perf_counter() - started
    history.selected = selection.restore() if selection else dict.fromkeys(TRACKS, config.train_epochs)
    sys.stdout.flush()
    return history
