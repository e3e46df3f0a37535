"""`python -m pipeline bench`: milliseconds per SGAN training step, this project's trainer against the
classic Keras implementation, on the same architecture, batch and machine.

The reference is the tutorial recipe: `train_on_batch` on a compiled supervised model, a compiled
unsupervised model and a composite GAN model, with `predict` for the fakes, for each architecture with
its own protocol's batches and optimizer (`mlm`: the paper profile; `gans_in_action`: that book's, whose
code is this same recipe); for `improved_gan` its joint step and feature matching written the same way
(`ReferenceImprovedGAN`). Made correct under Keras 3:
a compiled model's train function captures its trainable variables when first traced, so the
supervised and unsupervised models are traced while the discriminator is trainable and the composite
only after it is frozen. `check_reference_updates` checks that each call moves exactly what it should.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import NUM_CLASSES, RunConfig, resolve_config
from pipeline.core.layers import WeightNormDense
from pipeline.core.models import build_discriminator, build_generator, build_models
from pipeline.core.profile_trace import op_durations
from pipeline.core.training import make_optimizer, make_trainer
from pipeline.data import labeled_subset, load_dataset

# each architecture's own batches and optimizer, and its generator loss
PROTOCOL_OF = {"mlm": "paper", "gans_in_action": "gans_in_action", "improved_gan": "improved_gan"}
GENERATOR_LOSS_OF = {"improved_gan": "feature_matching"}
# the instruction sets that decide a step's speed here: fp32 vectors, and bf16 in hardware (else emulated)
SPEED_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_description(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """(CPU model name, which of SPEED_FEATURES it has), from /proc/cpuinfo where there is one: a figure
    means little without the instruction sets it ran on (bf16 is fast only with AMX-BF16 or AVX512_BF16)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.platform(), []
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or platform.platform()
    if "cpu family" in fields and "model" in fields:  # the name alone hides the generation ("AMD EPYC")
        model += f" (family {fields['cpu family']}, model {fields['model']})"
    return model, [f for f in SPEED_FEATURES if f in flags]


def describe_features(features: list[str]) -> str:
    bf16 = "in hardware" if {"amx_bf16", "avx512_bf16"} & set(features) else "emulated (no AVX512_BF16 or AMX-BF16)"
    return f"{', '.join(features) or 'none of ' + ', '.join(SPEED_FEATURES)}; bfloat16 {bf16}"


def _z_over_z_plus_one(logits):
    """The reference's custom activation, as written there: D(x) = Z / (Z + 1)."""
    z = keras.ops.sum(keras.ops.exp(logits), axis=-1, keepdims=True)
    return z / (z + 1.0)


class ReferenceSGAN:
    """The classic three-model SGAN, one `step()` = the reference's per-batch body."""

    def __init__(self, x_labeled, y_labeled, x_pool, config: RunConfig):
        keras.utils.set_random_seed(config.seed)
        discriminator, classifier, _ = build_discriminator("stacked", NUM_CLASSES, config.architecture)
        # the stock layers, as written there
        self.generator = build_generator(config.latent_dim, portable=True, architecture=config.architecture)
        logits = discriminator.get_layer("class_logits").output
        self.d_model = keras.Model(discriminator.input, keras.layers.Lambda(_z_over_z_plus_one)(logits))
        self.c_model = classifier
        self.c_model.compile(optimizer=make_optimizer(config), loss="sparse_categorical_crossentropy")
        self.d_model.compile(optimizer=make_optimizer(config), loss="binary_crossentropy")
        self.gan_model = keras.Model(self.generator.input, self.d_model(self.generator.output))
        self.gan_model.compile(optimizer=make_optimizer(config), loss="binary_crossentropy")
        self.x_labeled, self.y_labeled, self.x_pool = x_labeled, y_labeled, x_pool
        self.latent_dim, self.half, self.batch = config.latent_dim, config.discriminator_batch, config.batch_size
        self.rng = np.random.default_rng(config.seed)
        self._trace()

    def _trace(self) -> None:
        """First calls fix each model's trainable variables (see the module docstring)."""
        self.d_model.trainable = True
        self._supervised()
        self._unsupervised()
        self.d_model.trainable = False
        self._generator()

    def _supervised(self):
        idx = self.rng.integers(0, len(self.x_labeled), self.half)
        return self.c_model.train_on_batch(self.x_labeled[idx], self.y_labeled[idx])

    def _unsupervised(self):
        real = self.x_pool[self.rng.integers(0, len(self.x_pool), self.half)]
        loss_real = self.d_model.train_on_batch(real, np.ones((self.half, 1), np.float32))
        latent = self.rng.standard_normal((self.half, self.latent_dim)).astype(np.float32)
        fake = self.generator.predict(latent, verbose=0)
        return loss_real, self.d_model.train_on_batch(fake, np.zeros((self.half, 1), np.float32))

    def _generator(self):
        z = self.rng.standard_normal((self.batch, self.latent_dim)).astype(np.float32)
        return self.gan_model.train_on_batch(z, np.ones((self.batch, 1), np.float32))

    @property
    def discriminator(self) -> keras.Model:
        return self.c_model  # the classifier holds every discriminator weight the updates move

    def discriminator_updates(self) -> list[Callable[[], object]]:
        return [self._supervised, self._unsupervised]

    def step(self) -> None:
        self._supervised()
        self._unsupervised()
        self._generator()


def _snapshot(model: keras.Model) -> list[np.ndarray]:
    return [w.copy() for w in model.get_weights()]


def _all_changed(before, model) -> bool:
    """Every weight moved but the fixed scales of weight-normalized layers (set once, from data)."""
    fixed = {
        id(layer.scale) for layer in model.layers if isinstance(layer, WeightNormDense) and not layer.trainable_scale
    }
    pairs = zip(before, model.weights, strict=True)
    return all(not np.array_equal(a, np.asarray(w)) for a, w in pairs if id(w) not in fixed)


def _none_changed(before, model) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


class ReferenceImprovedGAN:
    """improved-gan's step in the classic Keras style: one compiled three-input model whose
    `train_on_batch` is the joint discriminator update (cross-entropy on the labeled batch, binary
    cross-entropy of Z/(Z+1) on the unlabeled and generated ones, weighted 1, 1/2, 1/2), and one compiled
    model from noise to the discriminator's features, frozen, whose loss is feature matching against the
    features `predict` gives for a real batch."""

    def __init__(self, x_labeled, y_labeled, x_pool, config: RunConfig):
        keras.utils.set_random_seed(config.seed)
        discriminator, _, features = build_discriminator("stacked", NUM_CLASSES, config.architecture)
        self.generator = build_generator(config.latent_dim, portable=True, architecture=config.architecture)
        self.discriminator, self.features = discriminator, features
        inputs = [keras.Input(discriminator.input_shape[1:], name=name) for name in ("labeled", "real", "fake")]
        logits = [keras.tree.flatten(discriminator(x))[0] for x in inputs]
        outputs = [keras.layers.Softmax()(logits[0])]
        outputs += [keras.layers.Lambda(_z_over_z_plus_one)(x) for x in logits[1:]]
        self.joint = keras.Model(inputs, outputs)
        losses = ["sparse_categorical_crossentropy", "binary_crossentropy", "binary_crossentropy"]
        self.joint.compile(optimizer=make_optimizer(config), loss=losses, loss_weights=[1.0, 0.5, 0.5])
        self.matching = keras.Model(self.generator.input, features(self.generator.output))
        self.matching.compile(optimizer=make_optimizer(config), loss=_feature_matching)
        self.x_labeled, self.y_labeled, self.x_pool = x_labeled, y_labeled, x_pool
        self.latent_dim, self.half, self.batch = config.latent_dim, config.discriminator_batch, config.batch_size
        self.rng = np.random.default_rng(config.seed)
        discriminator.trainable = True
        self._discriminator()
        discriminator.trainable = False
        self._generator()

    def _latent(self, n: int) -> np.ndarray:
        return self.rng.random((n, self.latent_dim), dtype=np.float32)

    def _discriminator(self):
        labeled = self.rng.integers(0, len(self.x_labeled), self.half)
        real = self.x_pool[self.rng.integers(0, len(self.x_pool), self.half)]
        fake = self.generator.predict(self._latent(self.half), verbose=0)
        targets = [self.y_labeled[labeled], np.ones((self.half, 1), np.float32), np.zeros((self.half, 1), np.float32)]
        return self.joint.train_on_batch([self.x_labeled[labeled], real, fake], targets)

    def _generator(self):
        real = self.x_pool[self.rng.integers(0, len(self.x_pool), self.batch)]
        target = self.features.predict(real, verbose=0)
        return self.matching.train_on_batch(self._latent(self.batch), target)

    def discriminator_updates(self) -> list[Callable[[], object]]:
        return [self._discriminator]

    def step(self) -> None:
        self._discriminator()
        self._generator()


def _feature_matching(real_features, fake_features):
    """Feature matching as a Keras loss: the batch means' squared distance, the same for every sample."""
    real_mean = keras.ops.mean(real_features, axis=0)
    distance = keras.ops.mean(keras.ops.square(real_mean - keras.ops.mean(fake_features, axis=0)))
    return keras.ops.ones_like(fake_features[:, 0]) * distance


class ReferenceError(RuntimeError):
    """The classic-Keras reference trained something it should not have (or nothing): its times mean nothing."""


def check_reference_updates(ref: ReferenceSGAN | ReferenceImprovedGAN) -> None:
    """Each reference call must update exactly the weights the reference intends; raises ReferenceError."""
    d, g = ref.discriminator, ref.generator
    for update in ref.discriminator_updates():
        d0, g0 = _snapshot(d), _snapshot(g)
        update()
        if not (_all_changed(d0, d) and _none_changed(g0, g)):
            raise ReferenceError(f"{update.__name__} must move every weight of the discriminator and none of G")
    d0, g0 = _snapshot(d), _snapshot(g)
    ref._generator()
    if not (_all_changed(g0, g) and _none_changed(d0, d)):
        raise ReferenceError("the generator update must move every weight of the generator and none of D")


def forward_macs(model: keras.Model) -> int:
    """Multiply-adds of one image through the model's convolutions and dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):  # each input pixel spreads a kernel
            _, h, w, cin = layer.input.shape
            total += h * w * int(np.prod(layer.kernel_size)) * cin * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):  # each output pixel gathers one
            _, h, w, cout = layer.output.shape
            total += h * w * int(np.prod(layer.kernel_size)) * layer.input.shape[-1] * cout
        elif isinstance(layer, keras.layers.Dense | WeightNormDense):
            total += layer.input.shape[-1] * layer.units
    return total


def flops_per_step(config: RunConfig | None = None) -> float:
    """Multiply-adds x 2 of the reference step; a backward pass costs ~2 forward passes, and the
    generator update needs D's input gradients only (~1 forward pass more)."""
    config = config or resolve_config("sgan", profile="paper")
    discriminator = build_discriminator("stacked", NUM_CLASSES, config.architecture)[0]
    generator = build_generator(config.latent_dim, portable=True, architecture=config.architecture)
    d_fwd, g_fwd = 2.0 * forward_macs(discriminator), 2.0 * forward_macs(generator)
    half, batch = config.discriminator_batch, config.batch_size
    discriminator_updates = 3 * d_fwd * 3 * half
    fakes = g_fwd * half
    generator_update = 3 * g_fwd * batch + 2 * d_fwd * batch
    if config.generator_loss == "feature_matching":  # the real batch's features as well
        generator_update += d_fwd * batch
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
    architecture: str
    batch: str
    machine: str
    cpu_features: list[str]
    tensorflow_version: str
    keras_version: str
    intra_op_threads: int
    inter_op_threads: int
    op_time_ms: dict[str, float] = field(default_factory=dict)  # `--ops`: op type -> ms per step of ours


def op_times(run: Callable[[], object], steps: int, top: int) -> dict[str, float]:
    """Milliseconds per step spent in the `top` TensorFlow op types taking most time while `run()` executes
    `steps` steps, read from TensorFlow's profiler trace (its XSpace protobuf): which kernels the step's
    time goes to. Summed over ops, which run concurrently on the inter-op threads, so the total exceeds
    the wall time."""
    with tempfile.TemporaryDirectory(prefix="sgan-bench-ops-") as folder:
        tf.profiler.experimental.start(folder)
        try:
            run()
        finally:
            tf.profiler.experimental.stop()
        trace = next(Path(folder).rglob("*.xplane.pb")).read_bytes()
    picoseconds: collections.Counter[str] = collections.Counter()
    for name, duration in op_durations(trace):  # "scope/op_name:OpType" for TF ops
        op_name, _, op_type = name.rpartition(":")
        if op_name and "::" not in name and not name.startswith("__") and op_type.isidentifier():
            picoseconds[op_type] += duration
    return {op: ps / steps / 1e9 for op, ps in picoseconds.most_common(top)}


def run_bench(
    dataset: str = "mnist",
    rounds: int = 5,
    steps: int = 10,
    precision: str = "float32",
    warmup: int = 3,
    architecture: str = "mlm",
    ops: int = 0,
) -> BenchResult:
    """`ops` > 0: also profile `steps` of our steps and keep the `ops` op types that take the most time."""
    data = load_dataset(dataset)
    idx = labeled_subset(data.y_train, 100, 0, data.num_classes, data.validation)
    x_lab, y_lab = data.x_train[idx], data.y_train[idx]
    profile = PROTOCOL_OF[architecture]
    generator_loss = GENERATOR_LOSS_OF.get(architecture, "non_saturating")
    config = resolve_config(
        "sgan",
        dataset=dataset,
        labels=100,
        seed=0,
        profile=profile,
        precision=precision,
        architecture=architecture,
        generator_loss=generator_loss,
    )
    models = build_models("sgan", "stacked", NUM_CLASSES, config.latent_dim, 0, precision, architecture)
    ours = make_trainer(config, models, x_lab, y_lab, data.x_train)
    classic = ReferenceImprovedGAN if config.networks.discriminator_step == "joint" else ReferenceSGAN
    reference = classic(x_lab, y_lab, data.x_train, replace(config, precision="float32"))
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
    op_time = op_times(lambda: ours.train_steps(steps), steps, ops) if ops else {}
    ours_s, ref_s = statistics.median(ours_times), statistics.median(ref_times)
    flop = flops_per_step(config)
    peak = measured_peak_flops()
    images = 3 * config.discriminator_batch + config.batch_size  # labeled, real, fake; generator update
    model, features = cpu_description()
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
        architecture=architecture,
        batch=f"{config.discriminator_batch} labeled, real and generated; {config.batch_size} for the generator",
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {model}",
        cpu_features=features,
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        op_time_ms=op_time,
    )


def format_result(result: BenchResult, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(result))
    r = result
    return "\n".join(
        [
            f"SGAN training step, {r.architecture} networks, batch {r.batch} ({r.dataset}), median of "
            f"{r.rounds} interleaved rounds of {r.steps_per_round} steps",
            f"  ours       {r.ours_ms_per_step:8.1f} ms/step  {r.ours_images_per_second:7.0f} images/s"
            f"  ({r.ours_precision})",
            f"  reference  {r.reference_ms_per_step:8.1f} ms/step  {r.reference_images_per_second:7.0f} images/s"
            "  (float32)",
            f"  speedup    {r.speedup:8.2f}x",
            f"  work       {r.flop_per_step / 1e9:8.1f} GFLOP/step; ours {r.ours_gflops:.0f} GFLOP/s = "
            f"{r.ours_fraction_of_peak:.0%} of {r.peak_gflops:.0f} GFLOP/s fp32 peak ({r.peak_source})",
            f"  machine    {r.machine}; TensorFlow {r.tensorflow_version}, Keras {r.keras_version}; "
            f"threads intra {r.intra_op_threads}, inter {r.inter_op_threads} (0 = TensorFlow's default)",
            f"  cpu        {describe_features(r.cpu_features)}",
            *(
                [f"  op time per step of ours (summed over ops running concurrently), top {len(r.op_time_ms)}:"]
                if r.op_time_ms
                else []
            ),
            *(f"    {ms:8.1f} ms  {op}" for op, ms in r.op_time_ms.items()),
        ]
    )
