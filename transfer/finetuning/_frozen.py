"""Stage 2's frozen layers: what fine-tuning trains on when the first layers of the backbone stay frozen.

The frozen layers run in inference mode and change no weight, so stage 2
need not run them inside the trained model: it trains the layers after them
(``rest``) on their outputs.  Without augmentation those outputs are the same
every epoch and are computed once; with it, every epoch sees new images, and
the frozen layers run on each batch as it comes, by the engine that runs
frozen models fastest here (:func:`transfer.runtime.frozen_model`: ONNX
Runtime where it agrees with TensorFlow and measures faster).  Where no
engine beats TensorFlow (or the cut has more than one output, or the model
runs in mixed precision), they run inside the trained model as before.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from transfer.backbones import get_backbone
from transfer.runtime import tensorflow

# The frozen layers' outputs for the training and validation images are kept in memory up to this much
# (the docs, "How long compare takes"): at freeze 0.5 those layers were 63 % (96 px) and 75 % (224 px) of
# Lite0's forward pass here, and an epoch on their kept outputs ran 1.45x (digits, 96 px) and 1.57x
# (hymenoptera, 224 px) faster than on the images, same run.
PREFIX_CACHE_BYTES = 1024 * 2**20


def stage2_inputs(job, model, backbone, n_frozen: int):
    """What stage 2 trains and on what.

    Args:
        job: the fine-tuning's shared state (its config, run, train state, batches, log).

    Returns:
        ``(model to fit, train batches, val batches, once, engine)``: ``once`` when the frozen layers' outputs
        were computed once; ``engine`` what ran the frozen layers (``tensorflow``: inside the model that
        trains, ``model`` itself or the frozen part in inference mode before ``rest``, unless ``once``).
    """
    from transfer.finetuning._model import split_frozen

    cfg, state = job.cfg, job.state
    with job.strategy.scope():
        parts = None if state.stage("finetune")["done"] else split_frozen(model, backbone, n_frozen)
    if parts is None:
        return model, job.train, job.val, False, "tensorflow"
    prefix, rest, trained = parts
    frames = [job.run.rows(name) for name in ("train", "val")]
    per_image = sum(int(np.prod(t.shape[1:])) * (2 if str(t.dtype).endswith("16") else 4) for t in prefix.outputs)
    need = per_image * sum(len(f) for f in frames)
    runner = engine_for(prefix, cfg, job.say)
    if not cfg.augment and need <= PREFIX_CACHE_BYTES:
        start = time.perf_counter()
        train, val = (_kept_outputs(job, runner or prefix, f, shuffle=i == 0) for i, f in enumerate(frames))
        _add_prefix_seconds(state, time.perf_counter() - start)
        job.say(f"stage 2 on the frozen layers' outputs, computed once ({need / 2**20:.0f} MiB, "
                f"{time.perf_counter() - start:.0f} s): no augmentation, so every epoch would compute the same")
        return rest, train, val, True, runner.engine if runner else "tensorflow"
    if not cfg.augment:
        job.say(f"stage 2 runs the frozen layers every epoch: their outputs for the training and validation "
                f"images would take {need / 2**30:.1f} GiB, more than {PREFIX_CACHE_BYTES / 2**30:g}")
    if runner is None:
        return trained, job.train, job.val, False, "tensorflow"
    start = time.perf_counter()
    val_need = per_image * len(frames[1])
    val = (_kept_outputs(job, runner, frames[1], shuffle=False) if val_need <= PREFIX_CACHE_BYTES
           else _through(job.val, runner, prefix))
    _add_prefix_seconds(state, time.perf_counter() - start)
    job.say(f"stage 2: the frozen layers run by {runner.engine} on each training batch (validation: "
            f"{'computed once' if val_need <= PREFIX_CACHE_BYTES else 'each epoch'}), the rest trains in TensorFlow")
    return rest, _through(job.train, runner, prefix), val, False, runner.engine


def _add_prefix_seconds(state, seconds: float):
    s = state.stage("finetune")
    s["prefix_seconds"] = round(s.get("prefix_seconds", 0.0) + seconds, 3)
    state.commit("finetune", s, None, None)


def engine_for(prefix, cfg, log=print):
    """The frozen layers ``prefix`` as an exported model run by ``cfg.engine`` (``auto``: the engine that measures
    fastest here and agrees with TensorFlow); None where TensorFlow runs them (it measured fastest, they have more
    than one output, run in mixed precision, or have random weights, which an export would not stand for)."""
    from transfer.runtime import ExportedModel, frozen_model

    if (len(prefix.outputs) > 1 or str(prefix.outputs[0].dtype) != "float32" or cfg.weights == "none"
            or cfg.engine == "tensorflow"):
        return None
    digest = hashlib.sha256()
    for weight in prefix.weights:  # what the layers compute: the export is kept under it
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    identity = {"what": "frozen layers", "backbone": cfg.backbone, "image_size": cfg.image_size,
                "layers": [layer.name for layer in prefix.layers], "weights": digest.hexdigest()}
    row = get_backbone(cfg.backbone)

    def sample():
        pixels = np.random.default_rng(0).uniform(0, 255, (cfg.batch_size, cfg.image_size, cfg.image_size, 3))
        return np.asarray(row.preprocess_input(pixels.astype(np.float32)), np.float32)

    runner = frozen_model(identity, lambda: prefix, cfg.engine, sample, log)
    return runner if isinstance(runner, ExportedModel) else None


def _through(batches, runner, prefix):
    """``(images, labels)`` batches as ``(frozen layers' outputs, labels)``, each computed by ``runner`` as it
    comes (a tf.data step, so the next batch's pass overlaps the current training step)."""
    tf = tensorflow()

    if batches is None:
        return None
    shape = tuple(prefix.outputs[0].shape[1:])

    def frozen(x, y):
        out = tf.numpy_function(runner.predict_on_batch, [x], tf.float32, stateful=False)
        out.set_shape((None, *shape))
        return out, y

    return batches.map(tf.autograph.experimental.do_not_convert(frozen)).prefetch(1)


def _kept_outputs(job, prefix, frame, shuffle: bool):
    """``prefix`` run once over the images of ``frame``; batches of its outputs as the images' batches would come
    (the same seeded shuffle of the same rows, unreadable ones left out). None for no rows."""
    tf = tensorflow()

    parts, labels = [], []
    for x, y in job.batches(frame) if len(frame) else []:
        n, x = len(y), np.asarray(x)
        if n < job.cfg.batch_size:  # one input shape: a short last batch would cost a retrace
            x = np.concatenate([x, np.zeros((job.cfg.batch_size - n, *x.shape[1:]), x.dtype)])
        out = prefix.predict_on_batch(x)
        parts.append([np.asarray(o)[:n] for o in (out if isinstance(out, list | tuple) else [out])])
        labels.append(np.asarray(y))
    if not parts:
        return None
    outputs = [tf.constant(np.concatenate([p[i] for p in parts])) for i in range(len(parts[0]))]
    y = tf.constant(np.concatenate(labels))
    readable = ~frame["path"].isin(job.state.skipped).to_numpy()
    ok, row = tf.constant(readable), tf.constant(np.cumsum(readable) - 1)
    ds = tf.data.Dataset.range(len(frame))
    if shuffle:  # as images.training_batches shuffles the files
        ds = ds.shuffle(len(frame), seed=job.cfg.seed, reshuffle_each_iteration=True)
    ds = ds.filter(lambda i: tf.gather(ok, i))

    def pick(i):
        r = tf.gather(row, i)
        x = tuple(tf.gather(o, r) for o in outputs)
        return (x if len(x) > 1 else x[0]), tf.gather(y, r)

    return ds.map(pick).batch(job.cfg.batch_size).prefetch(tf.data.AUTOTUNE)
