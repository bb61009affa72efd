"""Choosing the compute precision and the distribution strategy."""

from __future__ import annotations

import json
import time

from transfer import machine
from transfer.errors import TransferError
from transfer.fileio import keras_home, write_text_atomic

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


BF16_FLAGS = {"amx_bf16", "avx512_bf16"}


def has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AMX or AVX512-BF16)."""
    return bool(machine.cpu_flags() & BF16_FLAGS)


def _train_step_seconds(policy: str, backbone: str) -> float:
    """Seconds for a few training steps of ``backbone`` (random init, 96 px) under ``policy``."""
    import keras
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
    """Measured once per CPU model, TensorFlow version and backbone, then remembered."""
    import tensorflow as tf

    path = keras_home() / "transfer" / "precision.json"
    key = f"{machine.cpu_name()} | tensorflow {tf.__version__} | {backbone}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        log(f"precision auto: timing float32 against bfloat16 training steps of {backbone} on this CPU, once "
            f"(about a minute); the answer is kept in {path}")
        fp32, bf16 = _train_step_seconds("float32", backbone), _train_step_seconds("mixed_bfloat16", backbone)
        known[key] = {"float32_s": round(fp32, 4), "mixed_bfloat16_s": round(bf16, 4), "bf16_faster": bf16 < fp32}
        log(f"precision auto: float32 {fp32:.1f} s, bfloat16 {bf16:.1f} s: "
            f"{'mixed_bfloat16' if bf16 < fp32 else 'float32'}")
        try:
            write_text_atomic(path, json.dumps(known, indent=1))
        except OSError:
            pass
    return bool(known[key]["bf16_faster"])


def choose_precision(precision: str = "auto", backbone: str = "efficientnet_lite0", log=print) -> str:
    """Resolve ``auto``: mixed_float16 on a GPU; mixed_bfloat16 on a CPU with
    bfloat16 instructions where it measures faster; otherwise float32.

    The first measurement on a machine says what it does and where the answer is kept, on ``log``.
    """
    if precision not in PRECISIONS:
        raise TransferError(f"precision={precision!r} is not valid. Expected one of: {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if has_bf16() and _bf16_is_faster_here(backbone, log):
        return "mixed_bfloat16"
    return "float32"


def distribution_strategy():
    """MirroredStrategy over several GPUs; the default strategy otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
