"""Forward-pass speed of every inference engine, and how closely each agrees with TensorFlow, in one run.

For each backbone (headless, global average pooling, random weights: speed does not depend on their values),
on one batch of pre-decoded, preprocessed 224 px noise images: TensorFlow (Keras ``predict_on_batch``, with this
machine's measured oneDNN setting, :mod:`transfer.runtime._onednn`, as the product runs it), each
installed runtime of :data:`transfer.runtime._engines.RUNTIMES` in fp32 on Keras's own ONNX export (ONNX Runtime,
OpenVINO), OpenVINO with its bf16 hint, and the product's default engine (``engine="auto"`` of
:func:`transfer.runtime._engines.frozen_model`, with its one-off export and timing made in a fresh cache folder).
Engines take turns, round after round, and each keeps its best round, so that the host's drift over minutes
hits every engine alike.

    python bench/engines.py [--backbones efficientnet_lite0,mobilenet_v2,resnet50] [--batch 32] [--rounds 3]

Target (issue 13): the default engine at least 1.0x the fastest fp32 engine measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _rate(predict, batch, seconds=2.0):
    """Images per second of ``predict`` on ``batch``: as many calls as fit in ``seconds`` after a warm-up."""
    predict(batch)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 2:
        predict(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


def engines_for(name, batch, folder):
    """``{engine: predict}`` for one backbone, the TensorFlow outputs to compare with, and the default's choice."""
    from transfer import feature_model
    from transfer.runtime._engines import RUNTIMES, available_runtimes, frozen_model

    model = feature_model(name, weights=None, image_size=224, pooling="avg")
    expected = np.asarray(model.predict_on_batch(batch))
    path = Path(folder) / f"{name}.onnx"
    model.export(str(path), format="onnx", verbose=False)
    found = {"tensorflow": model.predict_on_batch}
    for runtime, module in available_runtimes().items():
        found[f"{runtime} fp32"] = RUNTIMES[runtime].load(module, path)
        if runtime == "openvino":  # bf16 where the CPU has it (AMX, AVX512-BF16); the same as fp32 elsewhere
            compiled = module.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
            found["openvino bf16 hint"] = lambda x, compiled=compiled: compiled(x)[0]
    # The product's choice, made as a user's first run makes it: export, check and time in its own cache.
    default = frozen_model({"what": "bench", "backbone": name, "at": time.time()}, lambda: model, "auto",
                           lambda: batch, log=lambda line: None)
    found["default (auto)"] = default.predict_on_batch
    return found, expected, getattr(default, "engine", "tensorflow")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_lite0,mobilenet_v2,resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["KERAS_HOME"] = home  # a fresh engine cache: the default decides as on a first run
        from transfer.runtime import cores, cpu_name
        from transfer.runtime._engines import onednn_state

        print(f"machine: {cpu_name()} x{cores()} {onednn_state()}; batch {args.batch} of 224 px tensors; "
              f"best of {args.rounds} rounds")
        print(f"{'backbone':20} {'engine':20} {'images/s':>9} {'x TF':>6} {'max diff / max':>15}")
        for name in args.backbones.split(","):
            _bench(name, args, home)


def _bench(name, args, folder):
    from transfer import get_backbone

    row = get_backbone(name)
    pixels = np.random.default_rng(0).uniform(0, 255, (args.batch, 224, 224, 3)).astype(np.float32)
    batch = np.asarray(row.preprocess_input(pixels), np.float32)
    found, expected, chosen = engines_for(name, batch, folder)
    best = dict.fromkeys(found, 0.0)
    for _ in range(args.rounds):
        for label, predict in found.items():
            best[label] = max(best[label], _rate(predict, batch))
    scale = max(float(np.abs(expected).max()), 1e-12)
    for label, predict in found.items():
        diff = float(np.abs(np.asarray(predict(batch)) - expected).max()) / scale
        print(f"{name:20} {label:20} {best[label]:9.1f} {best[label] / best['tensorflow']:6.2f} {diff:15.2e}")
    fp32 = max(v for k, v in best.items() if "fp32" in k or k == "tensorflow")
    print(f"{name:20} default chose {chosen}: {best['default (auto)'] / fp32:.2f}x the fastest fp32 engine "
          "(target >= 1.0)")


if __name__ == "__main__":
    main()
