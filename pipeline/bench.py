"""`python -m pipeline bench`: milliseconds per SGAN training step, this project's trainer against the
classic Keras implementation, on the same architecture, batch and machine.

The reference is the tutorial recipe: `train_on_batch` on a compiled supervised model, a compiled
unsupervised model and a composite GAN model, with `predict` for the fakes. Made correct under Keras 3:
a compiled model's train function captures its trainable variables when first traced, so the
supervised and unsupervised models are traced while the discriminator is trainable and the composite
only after it is frozen. `check_reference_updates` asserts that each call moves exactly what it should.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import NUM_CLASSES, resolve_config
from pipeline.data import labeled_subset, load_dataset
from pipeline.models import build_discriminator, build_generator, build_models
from pipeline.training import make_trainer


def _z_over_z_plus_one(logits):
    """The reference's custom activation, as written there: D(x) = Z / (Z + 1)."""
    z = keras.ops.sum(keras.ops.exp(logits), axis=-1, keepdims=True)
    return z / (z + 1.0)


class ReferenceSGAN:
    """The classic three-model SGAN, one `step()` = the reference's per-batch body."""

    def __init__(self, x_labeled, y_labeled, x_pool, latent_dim: int = 100, seed: int = 0):
        keras.utils.set_random_seed(seed)
        discriminator, classifier, _ = build_discriminator("stacked", NUM_CLASSES)
        self.generator = build_generator(latent_dim, portable=True)  # the stock layers, as written there
        logits = discriminator.get_layer("class_logits").output
        self.d_model = keras.Model(discriminator.input, keras.layers.Lambda(_z_over_z_plus_one)(logits))
        self.c_model = classifier
        self.c_model.compile(optimizer=_adam(), loss="sparse_categorical_crossentropy")
        self.d_model.compile(optimizer=_adam(), loss="binary_crossentropy")
        self.gan_model = keras.Model(self.generator.input, self.d_model(self.generator.output))
        self.gan_model.compile(optimizer=_adam(), loss="binary_crossentropy")
        self.x_labeled, self.y_labeled, self.x_pool = x_labeled, y_labeled, x_pool
        self.latent_dim = latent_dim
        self.rng = np.random.default_rng(seed)
        self._trace()

    def _trace(self) -> None:
        """First calls fix each model's trainable variables (see the module docstring)."""
        self.d_model.trainable = True
        self._supervised()
        self._unsupervised()
        self.d_model.trainable = False
        self._generator()

    def _supervised(self):
        idx = self.rng.integers(0, len(self.x_labeled), 50)
        return self.c_model.train_on_batch(self.x_labeled[idx], self.y_labeled[idx])

    def _unsupervised(self):
        real = self.x_pool[self.rng.integers(0, len(self.x_pool), 50)]
        loss_real = self.d_model.train_on_batch(real, np.ones((50, 1), np.float32))
        fake = self.generator.predict(self.rng.standard_normal((50, self.latent_dim)).astype(np.float32), verbose=0)
        return loss_real, self.d_model.train_on_batch(fake, np.zeros((50, 1), np.float32))

    def _generator(self):
        z = self.rng.standard_normal((100, self.latent_dim)).astype(np.float32)
        return self.gan_model.train_on_batch(z, np.ones((100, 1), np.float32))

    def step(self) -> None:
        self._supervised()
        self._unsupervised()
        self._generator()


def _adam() -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(learning_rate=2e-4, beta_1=0.5)


def _snapshot(model: keras.Model) -> list[np.ndarray]:
    return [w.copy() for w in model.get_weights()]


def _all_changed(before, model) -> bool:
    return all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def _none_changed(before, model) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def check_reference_updates(ref: ReferenceSGAN) -> None:
    """Each reference call must update exactly the weights the reference intends."""
    d, g = ref.c_model, ref.generator
    d0, g0 = _snapshot(d), _snapshot(g)
    ref._supervised()
    assert _all_changed(d0, d) and _none_changed(g0, g), "supervised update must move D only"
    d0 = _snapshot(d)
    ref._unsupervised()
    assert _all_changed(d0, d) and _none_changed(g0, g), "unsupervised updates must move D only"
    d0 = _snapshot(d)
    ref._generator()
    assert _all_changed(g0, g) and _none_changed(d0, d), "generator update must move G only"


def flops_per_step(latent_dim: int = 100) -> float:
    """Multiply-adds x 2 of the reference step; a backward pass costs ~2 forward passes, and the
    generator update needs D's input gradients only (~1 forward pass more)."""
    d_macs = sum(out * out * 9 * cin * 128 for out, cin in [(14, 1), (7, 128), (4, 128)]) + 4 * 4 * 128 * NUM_CLASSES
    g_macs = latent_dim * 7 * 7 * 128 + 7 * 7 * 16 * 128 * 128 + 14 * 14 * 16 * 128 * 128 + 28 * 28 * 49 * 128
    d_fwd, g_fwd = 2.0 * d_macs, 2.0 * g_macs
    discriminator_updates = 3 * d_fwd * (50 + 50 + 50)
    fakes = g_fwd * 50
    generator_update = 3 * g_fwd * 100 + 2 * d_fwd * 100
    return discriminator_updates + fakes + generator_update


def measured_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """Best fp32 rate of a large matrix product through TensorFlow: the practical ceiling here."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


@dataclass
class BenchResult:
    ours_ms_per_step: float
    reference_ms_per_step: float
    speedup: float
    ours_images_per_second: float
    reference_images_per_second: float
    flop_per_step: float
    ours_gflops: float
    peak_gflops: float
    peak_source: str
    ours_fraction_of_peak: float
    ours_precision: str
    rounds: int
    steps_per_round: int
    dataset: str
    machine: str
    tensorflow_version: str
    keras_version: str
    intra_op_threads: int
    inter_op_threads: int


def run_bench(
    dataset: str = "mnist", rounds: int = 5, steps: int = 10, precision: str = "float32", warmup: int = 3
) -> BenchResult:
    data = load_dataset(dataset)
    idx = labeled_subset(data.y_train, 100, 0, data.num_classes, data.validation)
    x_lab, y_lab = data.x_train[idx], data.y_train[idx]
    config = resolve_config("sgan", dataset, 100, 0, "smoke", precision=precision)
    models = build_models("sgan", "stacked", NUM_CLASSES, 100, 0, precision)
    ours = make_trainer(config, models, x_lab, y_lab, data.x_train)
    reference = ReferenceSGAN(x_lab, y_lab, data.x_train)
    check_reference_updates(reference)
    ours.train_steps(warmup)
    for _ in range(warmup):
        reference.step()
    ours_times, ref_times = [], []
    for _ in range(rounds):  # interleaved, so drifts in machine load hit both alike
        start = time.perf_counter()
        ours.train_steps(steps)
        ours_times.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        for _ in range(steps):
            reference.step()
        ref_times.append((time.perf_counter() - start) / steps)
    check_reference_updates(reference)
    ours_s, ref_s = statistics.median(ours_times), statistics.median(ref_times)
    flop = flops_per_step()
    peak = measured_peak_flops()
    images = 100 + 50 + 50 + 100  # labeled, real, fake and generator-update images per step
    return BenchResult(
        ours_ms_per_step=ours_s * 1e3,
        reference_ms_per_step=ref_s * 1e3,
        speedup=ref_s / ours_s,
        ours_images_per_second=images / ours_s,
        reference_images_per_second=images / ref_s,
        flop_per_step=flop,
        ours_gflops=flop / ours_s / 1e9,
        peak_gflops=peak / 1e9,
        peak_source="best of 10 fp32 2048x2048 matrix products through TensorFlow on this machine",
        ours_fraction_of_peak=flop / ours_s / peak,
        ours_precision=precision,
        rounds=rounds,
        steps_per_round=steps,
        dataset=dataset,
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
    )


def format_result(result: BenchResult, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(result))
    r = result
    return "\n".join(
        [
            f"SGAN training step, batch 100 ({r.dataset}), median of {r.rounds} interleaved rounds of "
            f"{r.steps_per_round} steps",
            f"  ours       {r.ours_ms_per_step:8.1f} ms/step  {r.ours_images_per_second:7.0f} images/s"
            f"  ({r.ours_precision})",
            f"  reference  {r.reference_ms_per_step:8.1f} ms/step  {r.reference_images_per_second:7.0f} images/s"
            "  (float32)",
            f"  speedup    {r.speedup:8.2f}x",
            f"  work       {r.flop_per_step / 1e9:8.1f} GFLOP/step; ours {r.ours_gflops:.0f} GFLOP/s = "
            f"{r.ours_fraction_of_peak:.0%} of {r.peak_gflops:.0f} GFLOP/s fp32 peak ({r.peak_source})",
            f"  machine    {r.machine}; TensorFlow {r.tensorflow_version}, Keras {r.keras_version}; "
            f"threads intra {r.intra_op_threads}, inter {r.inter_op_threads} (0 = TensorFlow's default)",
        ]
    )
