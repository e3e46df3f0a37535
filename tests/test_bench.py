"""The benchmark's reference really trains what the classic recipe intends; the CLI prints figures."""

import json
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.bench import (
    ReferenceImprovedGAN,
    ReferenceSGAN,
    check_reference_updates,
    cpu_description,
    describe_features,
    flops_per_step,
    op_times,
)
from pipeline.config import resolve_config
from pipeline.core.models import build_discriminator
from pipeline.data import labeled_subset, load_dataset

from .conftest import cli, refused


def _digits():
    data = load_dataset("digits")
    idx = labeled_subset(data.y_train, 20, 0, excluded=data.validation)
    return data.x_train[idx], data.y_train[idx], data.x_train


@pytest.mark.slow  # the fast tier's budget; the same logic runs there on lighter cases
def test_reference_updates_exactly_what_the_classic_recipe_intends():
    reference = ReferenceSGAN(*_digits(), resolve_config("sgan", dataset="digits", labels=20, profile="paper"))
    check_reference_updates(reference)  # raises ReferenceError if any update moves the wrong weights
    check_reference_updates(reference)


def test_improved_gans_classic_reference_updates_what_its_joint_step_and_feature_matching_intend():
    config = resolve_config(
        "sgan",
        dataset="digits",
        labels=20,
        profile="improved_gan",
        architecture="improved_gan",
        generator_loss="feature_matching",
    )
    reference = ReferenceImprovedGAN(*_digits(), config)
    check_reference_updates(reference)
    assert reference.joint.count_params() == reference.discriminator.count_params()  # one network, three inputs
    assert 4.0e9 < flops_per_step(config) < 4.5e9  # dense layers of 1000-500-250-250-250 and 500-500-784


def test_the_keras3_trap_freezing_before_the_first_call_trains_no_discriminator():
    """The tutorial order (freeze D, build and compile the GAN, then train) leaves D untrainable."""
    x_lab, y_lab, _ = _digits()
    keras.utils.set_random_seed(0)
    _, classifier, _ = build_discriminator("stacked", 10)
    classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    classifier.trainable = False  # what `d_model.trainable = False` does to the shared layers
    before = [w.copy() for w in classifier.get_weights()]
    with pytest.warns(UserWarning, match="does not have any trainable weights"):
        classifier.train_on_batch(x_lab, y_lab)
    assert all(np.array_equal(a, b) for a, b in zip(before, classifier.get_weights(), strict=True))


def test_flop_estimate_is_the_documented_64_gflop_scale():
    assert 55e9 < flops_per_step() < 70e9


@pytest.mark.slow
def test_bench_cli_prints_json_with_the_headline_figures():
    # the smaller of the two architectures, to keep the suite fast; `mlm` runs the same code
    result = cli(
        "bench", "--dataset", "digits", "--architecture", "gans_in_action",
        "--rounds", "1", "--steps", "2", "--ops", "5", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["ours_ms_per_step"] > 0 and figures["reference_ms_per_step"] > 0
    assert figures["speedup"] == pytest.approx(figures["reference_ms_per_step"] / figures["ours_ms_per_step"], rel=1e-6)
    # a sanity bound (units, not speed): under load the peak's matrix products and the steps slow unevenly
    assert 0 < figures["ours_fraction_of_peak"] < 10 and figures["ours_precision"] == "float32"
    assert figures["architecture"] == "gans_in_action"
    # the op profile: the five op types taking most time, most first; convolutions are among them
    op_time = list(figures["op_time_ms"].items())
    assert len(op_time) == 5 and all(ms > 0 for _, ms in op_time)
    assert [ms for _, ms in op_time] == sorted((ms for _, ms in op_time), reverse=True)
    assert any("Conv2D" in op for op, _ in op_time)
    assert set(figures["cpu_features"]) <= {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}


def test_the_bench_names_the_cpu_features_that_decide_its_figures():
    amx = (
        "processor\t: 0\nmodel name\t: Intel Xeon\ncpu family\t: 6\nmodel\t\t: 143\n"
        "flags\t\t: fpu avx2 fma avx512f amx_bf16 amx_tile\n"
    )
    model, features = cpu_description(amx + amx.replace("processor\t: 0", "processor\t: 1"))
    assert model == "Intel Xeon (family 6, model 143)"
    assert features == ["avx2", "fma", "avx512f", "amx_tile", "amx_bf16"]
    assert describe_features(features).endswith("bfloat16 in hardware")
    avx2 = describe_features(cpu_description("model name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n")[1])
    assert avx2 == "avx2, fma; bfloat16 emulated (no AVX512_BF16 or AMX-BF16)"


def test_bench_rejects_bad_settings():
    result = refused("bench", "--rounds", "0")
    assert result.returncode == 2 and "rounds=0 must be a positive integer" in result.stderr
    result = refused("bench", "--ops", "-1")
    assert result.returncode == 2 and "ops=-1 must be 0" in result.stderr


def test_the_profiler_trace_is_read_without_tensorflows_private_modules():
    x = tf.random.normal((128, 128))
    step = tf.function(lambda: tf.nn.relu(x @ x))
    times = op_times(lambda: [step() for _ in range(4)], steps=4, top=10)
    assert "MatMul" in times and "Relu" in times, times
    assert all(ms > 0 for ms in times.values())
    assert not [name for name in sys.modules if name.startswith("tensorflow.tsl.profiler.protobuf")]
