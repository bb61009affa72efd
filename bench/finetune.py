"""Fine-tuning cost on this machine: training images/s per freeze depth and precision, in one run.

For each backbone and input size, the product's fine-tuning model (``transfer.finetuning._model.build_model``: the
backbone with BatchNorm in inference mode, pooling, dropout, softmax) is set to each ``--freeze`` value with the
product's ``set_trainable``, compiled as stage 2 compiles it (Adam, no XLA), and timed on training steps over one
fixed batch of noise (speed does not depend on the pixel values). Depths take turns, round after round, and each
keeps its best round, so that the host's drift over minutes hits every depth alike. Precisions other than
float32 are timed only where the CPU has bfloat16 instructions (AMX / AVX512-BF16), as ``--precision auto`` does.

    python bench/finetune.py [--backbones efficientnet_lite0] [--sizes 96,224]
                             [--freeze none,0.25,0.5,0.75,block6a,all] [--batch 32] [--rounds 3]

Prints one row per backbone, size, precision and depth: trainable parameters, images/s, and the ratio to
``--freeze none`` in the same run (how much cheaper an epoch of that depth is).

``--stage2`` times instead stage 2 with augmentation as the product runs it, against the whole model's training
step, in turns, with ImageNet weights: the frozen layers run by the engine ``--engine auto`` picks here
(``transfer.finetuning._frozen.engine_for``) and the layers after them trained in TensorFlow, per depth.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def train_steps(backbone, size, freeze, precision, batch):
    """A compiled model of one depth and a function that runs one training step on ``batch``."""
    import keras

    from transfer import FinetuneConfig
    from transfer.finetuning._model import build_model, frozen_count, param_counts, set_trainable

    keras.mixed_precision.set_global_policy(precision)
    cfg = FinetuneConfig(backbone=backbone, image_size=size, weights=None, freeze=freeze)
    model, body = build_model(cfg, n_classes=10)
    set_trainable(body, frozen_count(freeze, body.layers), train_bn=False)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", jit_compile=False)
    keras.mixed_precision.set_global_policy("float32")
    x, y = batch
    return (lambda: model.train_on_batch(x, y)), param_counts(model)[0]


def rate(step, images, seconds):
    """Images/s of ``step`` after one warm-up step: as many steps as fit in ``seconds``, at least two."""
    step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2:
        step()
        n += 1
    return n * images / (time.perf_counter() - start)


def stage2_steps(backbone, size, freeze, batch):
    """Two training steps of one depth on ``batch``: the whole model's, and the product's split (the frozen
    layers by the engine chosen here, the rest in TensorFlow); and the engine's name."""
    import keras

    from transfer import FinetuneConfig
    from transfer.finetuning._frozen import engine_for
    from transfer.finetuning._model import build_model, frozen_count, set_trainable, split_frozen

    cfg = FinetuneConfig(backbone=backbone, image_size=size, freeze=freeze, precision="float32")
    model, body = build_model(cfg, n_classes=10)
    set_trainable(body, frozen_count(freeze, body.layers), train_bn=False)
    prefix, rest, trained = split_frozen(model, body, frozen_count(freeze, body.layers))
    runner = engine_for(prefix, cfg, log=lambda line: print(f"# {line}", flush=True))
    for m in (trained, rest):
        m.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", jit_compile=False)
    x, y = batch
    split = (lambda: rest.train_on_batch(runner.predict_on_batch(x), y)) if runner else None
    return {"whole model": lambda: trained.train_on_batch(x, y), "split": split}, getattr(runner, "engine", None)


def stage2(args, rng):
    print("backbone,size,freeze,engine,whole_model_images_per_s,split_images_per_s,split_vs_whole")
    for backbone in args.backbones.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            batch = (rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32"),
                     rng.integers(0, 10, args.batch))
            for d in (d for d in args.freeze.split(",") if d not in ("none", "all")):
                steps, engine = stage2_steps(backbone, size, d, batch)
                best = {name: 0.0 for name, step in steps.items() if step}
                for _ in range(args.rounds):
                    for name in best:
                        best[name] = max(best[name], rate(steps[name], args.batch, args.seconds))
                split = best.get("split", float("nan"))
                print(f"{backbone},{size},{d},{engine or 'tensorflow (no faster engine)'},"
                      f"{best['whole model']:.1f},{split:.1f},{split / best['whole model']:.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--sizes", default="96,224")
    parser.add_argument("--freeze", default="none,0.25,0.5,0.75,block6a,all")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--stage2", action="store_true", help="stage 2 split (engine + TensorFlow) against whole")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.stage2:
        return stage2(args, rng)

    from transfer.finetuning._precision import has_bf16

    precisions = ["float32"] + (["mixed_bfloat16"] if has_bf16() else [])
    depths = args.freeze.split(",")
    print("backbone,size,precision,freeze,trainable_params,images_per_s,vs_none")
    for backbone in args.backbones.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            batch = (rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32"),
                     rng.integers(0, 10, args.batch))
            for precision in precisions:
                steps = {d: train_steps(backbone, size, d, precision, batch) for d in depths}
                best = dict.fromkeys(depths, 0.0)
                for _ in range(args.rounds):
                    for d in depths:
                        best[d] = max(best[d], rate(steps[d][0], args.batch, args.seconds))
                base = best.get("none") or max(best.values())
                for d in depths:
                    print(f"{backbone},{size},{precision},{d},{steps[d][1]},{best[d]:.1f},{best[d] / base:.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
