"""Where a run computes: CPU threads and GPU memory, set before TensorFlow runs anything, and what it saw.

A trial given a share of a machine (a Ray task with `cpus_per_trial`) must use only that share, so the
intra-op thread count comes from `SGAN_INTRA_OP_THREADS` when set; GPUs grow their memory as needed
instead of taking the whole card, so several trials can share one (`gpus_per_trial` below 1). The local
executor gives each of its `max_parallel` trials an equal share of the cores the same way (`pipeline.sweep.local`)."""

from __future__ import annotations

from pipeline.environment import THREADS, value


def configure_device() -> dict[str, str]:
    """Apply the thread count and GPU memory growth; return what to log (`device`, `intra_op_threads`)."""
    import tensorflow as tf  # here: the front door refuses bad input before TensorFlow loads

    threads = int(value(THREADS) or 0)
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return {
        "device": ", ".join(gpu.name for gpu in gpus) or "CPU",
        "intra_op_threads": str(threads) if threads > 0 else "default",
    }
