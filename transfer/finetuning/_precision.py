"""Choosing the compute precision and the distribution strategy."""

from __future__ import annotations

import time

from transfer.errors import TransferError
from transfer.runtime import keras_module, tensorflow

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


# bfloat16 can pay on a CPU only with AMX's tile units: with AVX512-BF16 alone (an AMD EPYC, Zen 4, 2 cores) a
# training step of Lite0 measured 1.5x slower in mixed bfloat16 than in float32 (1.58 s against 1.05 s), since
# Keras's mixed policy adds casts and TensorFlow's CPU kernels gain little there; only AMX CPUs are measured.
BF16_FLAGS = {"amx_bf16"}


def has_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix units (AMX) that can make mixed bfloat16 training faster."""
    from transfer.runtime import cpu_flags

    return bool(cpu_flags() & BF16_FLAGS)


def _train_step_seconds(policy: str, backbone: str) -> float:
    """Seconds for a few training steps of ``backbone`` (random init, 96 px) under ``policy``."""
    keras = keras_module()
    import numpy as np

    from transfer.backbones import build_backbone, get_backbone

    size = max(96, get_backbone(backbone).min_input_size)
    keras.mixed_precision.set_global_policy(policy)
    try:
        base = build_backbone(backbone, weights=None, image_size=size, pooling="avg")
        inputs = keras.Input((size, size, 3))
        model = keras.Model(inputs, keras.layers.Dense(4, dtype="float32")(base(inputs, training=False)))
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        data = np.random.default_rng(0).uniform(0, 1, (32, size, size, 3)).astype("float32")
        labels = np.zeros(32, "int32")
        model.fit(data, labels, batch_size=16, epochs=1, verbose=0)  # compile
        start = time.perf_counter()
        model.fit(data, labels, batch_size=16, epochs=2, verbose=0)
        return time.perf_counter() - start
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _bf16_is_faster_here(backbone: str, log=print) -> bool:
    """Measured once per machine (:mod:`transfer.runtime`'s store) and backbone, then remembered."""
    from transfer.runtime import remember, remembered, store_path

    known = remembered("precision")
    if backbone not in known:
        log(f"transfer: timing float32 against bfloat16 training steps of {backbone} on this CPU's AMX, once "
            f"(about 10 s; kept in {store_path()})")
        fp32, bf16 = _train_step_seconds("float32", backbone), _train_step_seconds("mixed_bfloat16", backbone)
        known[backbone] = {"float32_s": round(fp32, 4), "mixed_bfloat16_s": round(bf16, 4), "bf16_faster": bf16 < fp32}
        remember("precision", known)
    return bool(known[backbone]["bf16_faster"])


def choose_precision(precision: str = "auto", backbone: str = "efficientnet_lite0", log=print) -> str:
    """Resolve ``auto``: mixed_float16 on a GPU; mixed_bfloat16 on a CPU with
    AMX where it measures faster; otherwise float32.

    The first measurement on a machine says what it does and where the answer is kept, on ``log``.
    """
    if precision not in PRECISIONS:
        raise TransferError(f"precision={precision!r} is not valid. Expected one of: {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    tf = tensorflow()

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if has_bf16() and _bf16_is_faster_here(backbone, log):
        return "mixed_bfloat16"
    return "float32"


def distribution_strategy():
    """MirroredStrategy over several GPUs; the default strategy otherwise."""
    tf = tensorflow()

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
