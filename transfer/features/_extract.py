"""Strategy 2, step 1: run the frozen backbone once and cache the features.

Images stream through ``tf.data`` (parallel decode, resize, batch, prefetch),
so memory holds a few batches of pixels; only the features grow with the
number of images.  The features go to the shared feature cache
(:mod:`transfer.features._cache`), under a key of everything that changes a
feature, so cached features are reused exactly when they are valid, and only
the images it lacks run through the CNN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import numpy as np

from transfer.backbones import FEATURE_LAYERS, BackboneOptions, check_pooling, get_backbone, weights_identity
from transfer.data import SEED, TEST_FRACTION, VAL_FRACTION, resolve, timed_predict
from transfer.errors import TransferError
from transfer.runtime import keeps_file_names, keras_module

# Bump when decoding or extraction changes the numbers (2: JPEG draft decoding).
CACHE_VERSION = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractConfig(BackboneOptions):
    """What determines the features, besides the images themselves.

    Attributes:
        layer: ``pooled`` (global pooling of the last conv block), ``flatten``
            (that block flattened) or the name of any layer of the backbone.
        pooling: ``avg``, ``max`` or None (flatten conv outputs).
        flip_average: each image's features are the mean of its own and its
            mirror image's (test-time augmentation; twice the CNN time).  Off
            by default: measured, it helps on some sets and hurts on others
            (the docs, strategy 2), and a mirrored digit or letter is another one.
        executor: where the CNN pass runs: ``local``, ``ray`` (a Ray of this
            machine's own) or ``ray:ADDRESS`` (see :mod:`transfer.features._executors`).
        actors, actor_cpus, actor_gpus: with Ray, the actor pool's size
            (None: as many as the cluster's CPUs or GPUs allow) and what each
            actor reserves.
    """

    layer: str = "pooled"
    pooling: str | None = "avg"
    flip_average: bool = False
    executor: str = "local"
    actors: int | None = None
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0

    def __post_init__(self):
        """Checked and resolved at construction (the backbone's size, its registry name, the pooling in effect).

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        from transfer.features._executors import parse_executor

        super().__post_init__()
        check_pooling(self.pooling)
        parse_executor(self.executor)
        if self.actors is not None and (not isinstance(self.actors, int) or self.actors < 1):
            raise TransferError(f"actors={self.actors!r} is not valid: give a positive whole number, or none for as "
                                "many as the cluster's CPUs allow.")
        if self.actor_cpus <= 0 or self.actor_gpus < 0:
            raise TransferError(f"actor_cpus={self.actor_cpus!r}, actor_gpus={self.actor_gpus!r} are not valid: give "
                                "a positive number of CPUs and zero or more GPUs per actor.")
        if not self.layer:
            raise TransferError(f"layer must be one of {', '.join(FEATURE_LAYERS)} or a layer name.")
        if self.layer == "flatten":
            resolve(self, pooling=None)  # has no effect: keep it out of the cache key
        elif self.layer == "pooled" and self.pooling is None:
            resolve(self, pooling="avg")


RUNNERS = ("engine", "executor", "actors", "actor_cpus", "actor_gpus")  # how the CNN runs, not what it computes


def feature_settings(cfg: ExtractConfig) -> dict:
    """What a run records of ``cfg`` to be reused: every option but how the CNN ran (engines agree to 1e-4)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNNERS}


@dataclasses.dataclass
class Features:
    """Features of the readable images, in the order of ``paths``."""

    paths: list[str]
    features: np.ndarray
    skipped: list[tuple[str, str]]
    seconds: float
    key: str
    from_cache: bool
    images_per_second: float = float("nan")  # of the CNN pass alone, after a warm-up batch


def cache_key(cfg: ExtractConfig, paths) -> str:
    """A hash of everything that changes the features of ``paths``, in any order: the settings and each image's
    address in the cache (see :func:`transfer.features._cache.image_id`)."""
    from transfer.features._cache import image_id

    return _key(cfg, [image_id(p) for p in paths])


def _key(cfg, ids) -> str:
    blob = json.dumps({"settings": store_settings(cfg), "images": sorted(ids)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _progress(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5)


def build_extractor(cfg: ExtractConfig):
    """The feature model that ``cfg`` describes."""
    from transfer.backbones import feature_model

    model = feature_model(cfg.backbone, layer=cfg.layer, pooling=cfg.pooling, weights=cfg.weights,
                          image_size=cfg.image_size)
    if not cfg.flip_average:
        return model
    keras = keras_module()

    # Mirroring after preprocessing equals preprocessing the mirror image: every preprocess_input is per pixel.
    inputs = keras.Input(model.inputs[0].shape[1:])
    mirrored = keras.ops.flip(inputs, axis=2)
    return keras.Model(inputs, keras.layers.Average()([model(inputs), model(mirrored)]),
                       name=f"{model.name}_flip_average")


def extractor(cfg: ExtractConfig, log=print):
    """The feature model of ``cfg``, run by ``cfg.engine`` (see :func:`transfer.runtime.frozen_model`)."""
    from transfer.runtime import frozen_model

    row = get_backbone(cfg.backbone)
    weights = weights_identity(cfg.backbone, cfg.weights)
    identity = {"what": "features", "backbone": cfg.backbone, "weights": weights, "layer": cfg.layer,
                "pooling": cfg.pooling, "image_size": cfg.image_size, "flip_average": cfg.flip_average}

    def sample():
        pixels = np.random.default_rng(0).uniform(0, 255, (cfg.batch_size, cfg.image_size, cfg.image_size, 3))
        return np.asarray(row.preprocess_input(pixels.astype(np.float32)), np.float32)

    # Random weights differ at every build: an export of one would stand for another.
    engine = "tensorflow" if weights == "random-init" else cfg.engine
    return frozen_model(identity, lambda: build_extractor(cfg), engine, sample, log)


def run_extraction(cfg: ExtractConfig, paths, progress=True, model=None, log=print, bar=None):
    """Run the backbone over ``paths``; returns ``(kept paths, features, skipped, images_per_second)``.

    ``model`` is the extractor when already built (see :func:`extractor`);
    ``bar`` a progress bar to advance instead of a new one.
    """
    row = get_backbone(cfg.backbone)
    model = model if model is not None else extractor(cfg, log)
    paths = [str(p) for p in paths]
    own = _progress(len(paths), f"extract {row.name}") if progress and bar is None else None
    tick = (bar or own).update if (bar or own) is not None else None
    kept, feats, skipped, rate = timed_predict(model, paths, cfg.image_size, cfg.resize, cfg.batch_size,
                                               row.preprocess_input, on_batch=tick)
    if own is not None:
        own.close()
    return [paths[i] for i in kept], feats, [(p, skipped[p]) for p in paths if p in skipped], rate


def store_settings(cfg: ExtractConfig) -> dict:
    """Everything but the images that changes a feature: the shared cache's folder for ``cfg``.

    Not the engine: an engine is used only where it agrees with TensorFlow to
    1e-4 of the largest feature (checked before its first use).
    """
    return {"version": CACHE_VERSION, "backbone": cfg.backbone,
            "weights": weights_identity(cfg.backbone, cfg.weights), "layer": cfg.layer, "pooling": cfg.pooling,
            "image_size": cfg.image_size, "resize": cfg.resize, "flip_average": cfg.flip_average}


# The local CNN pass runs in a process of its own from this many images to extract (the docs, "Scaling out"):
# TensorFlow keeps what the pass allocated until its process ends (0.75 GiB after 70,000 fashion-mnist images
# here), which the classifier search after it would pay for beside its own memory; a child process gives it back.
# Below this, the child's start (TensorFlow's import and the model's build, ~10 s here) costs more than it saves.
CHILD_PASS_IMAGES = 10_000


def _fill(store, missing, cfg, progress, log):
    """Extract the images ``missing`` (``{id: path}``) shard by shard into ``store``; returns the seconds."""
    from transfer.features._executors import fill_on_ray, parse_executor

    executor = parse_executor(cfg.executor)
    if executor.kind == "ray":
        return fill_on_ray(store, missing, cfg, executor, extractor, actors=cfg.actors, actor_cpus=cfg.actor_cpus,
                           actor_gpus=cfg.actor_gpus, progress=progress, log=log)
    if len(missing) >= CHILD_PASS_IMAGES:
        return _fill_in_child(store, missing, cfg, progress, log)
    return _fill_here(store, missing, cfg, progress, log)


def _fill_here(store, missing, cfg, progress, log):
    from transfer.features._cache import SHARD_ROWS

    start = time.perf_counter()
    model = extractor(cfg, log)
    items = list(missing.items())
    bar = _progress(len(items), f"extract {cfg.backbone}") if progress else None
    try:
        for at in range(0, len(items), SHARD_ROWS):
            chunk = dict(items[at:at + SHARD_ROWS])
            by_path = {p: i for i, p in chunk.items()}
            began = time.perf_counter()
            kept, feats, skipped, rate = run_extraction(cfg, list(chunk.values()), progress=False, model=model,
                                                        log=log, bar=bar)
            store.add([by_path[p] for p in kept], kept, feats, {by_path[p]: (p, why) for p, why in skipped},
                      time.perf_counter() - began, rate)
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - start


def _fill_in_child(store, missing, cfg, progress, log):
    """:func:`_fill_here` in a fresh Python process, which imports only this package (not the caller's script,
    as multiprocessing's spawn would); its progress bar writes to this process's terminal."""
    import os
    import pickle
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="transfer-pass-") as tmp:
        job, answer = Path(tmp) / "job.pickle", Path(tmp) / "answer.pickle"
        job.write_bytes(pickle.dumps((str(store.folder.parent), store.settings, missing, cfg, progress, str(answer))))
        done = subprocess.run([sys.executable, "-c", "from transfer.features._extract import child_pass; child_pass()",
                               str(job)], env=env, stdout=subprocess.DEVNULL)
        if done.returncode or not answer.exists():
            raise TransferError(f"The feature extraction's process ended before it finished (exit status "
                                f"{done.returncode}: out of memory, or killed?): the shards it wrote are kept; run "
                                "the command again to extract the rest.")
        seconds, said, error = pickle.loads(answer.read_bytes())
    for line in said:
        log(line)
    if error:
        raise TransferError(error)
    return seconds


def child_pass():
    """The child process of :func:`_fill_in_child`: the pass, what it said, and a one-line error if it had one."""
    import pickle
    import sys
    from pathlib import Path

    from transfer.features._cache import FeatureStore
    from transfer.runtime import announce_to

    root, settings, missing, cfg, progress, answer = pickle.loads(Path(sys.argv[1]).read_bytes())
    said, seconds, error = [], 0.0, None
    announce_to(said.append)
    try:
        seconds = _fill_here(FeatureStore(root, settings), missing, cfg, progress, said.append)
    except TransferError as e:
        error = str(e)
    Path(answer).write_bytes(pickle.dumps((seconds, said, error)))


@keeps_file_names()
def cached(paths, cfg: ExtractConfig, cache_dir=None, progress=True, log=print):
    """Extract into the feature cache those of ``paths`` it does not hold, reading none of them back.

    Returns:
        ``(store, ids, found, missing)``: the :class:`~transfer.features._cache.FeatureStore`, each path's image
        id, where the cache holds each one (or why it is unreadable), and the ids that were extracted now.
    """
    from transfer.features._cache import FeatureStore, cache_root, image_id

    ids = [image_id(p) for p in paths]
    store = FeatureStore(cache_root(cache_dir), store_settings(cfg))
    found = store.find(ids)
    # In the order of their ids (hashes): each shard holds a mixture of every class, whatever the order of the
    # paths (a folder's are sorted by class), which a fit that reads a shard at a time needs (see _stream.py).
    missing = dict(sorted((i, p) for i, p in zip(ids, paths, strict=True) if not found.has(i)))
    if missing:
        _fill(store, missing, cfg, progress, log)
        found = store.find(ids)
    lost = [p for p, i in zip(paths, ids, strict=True) if not found.has(i)]
    if lost:  # shards removed while this run extracted (a prune, another process): say so, drop nothing silently
        raise TransferError(f"The feature cache {store.folder} lost the features of {len(lost)} image(s) while this "
                            f"run extracted them (e.g. {lost[0]}): was it pruned meanwhile? Run the command again.")
    return store, ids, found, missing


def extract_features(paths, cfg: ExtractConfig, cache_dir=None, progress=True, log=print) -> Features:
    """Features of ``paths``: those the shared cache holds are read, only the others run through the CNN.

    Args:
        paths: image files.
        cfg: backbone, layer, pooling, size and resize mode.
        cache_dir: the feature cache (default: the shared one, see
            :func:`transfer.features.cache_root`).
        progress: show a progress bar with images/s.
        log: where the engine's one-off export and timing are said.
    """
    paths = [str(p) for p in paths]
    store, ids, found, missing = cached(paths, cfg, cache_dir, progress, log)
    kept = [k for k, i in enumerate(ids) if i in found.rows]
    skipped = [(p, found.skipped[i]) for p, i in zip(paths, ids, strict=True) if i in found.skipped]
    feats = store.read([ids[k] for k in kept], found)
    seconds, rate = cnn_timing(found, ids)
    return Features([paths[k] for k in kept], feats, skipped, seconds, _key(cfg, ids), not missing, rate)


def cnn_timing(found, ids) -> tuple[float, float]:
    """The CNN's seconds and images per second for the images ``ids``, whenever they ran: each shard's figures,
    in proportion of its images used."""
    used = {}
    for i in set(ids):
        shard = found.rows.get(i, (None,))[0]
        used[shard] = used.get(shard, 0) + 1
    seconds = sum(found.shards[s][0] * n / max(found.shards[s][1], 1) for s, n in used.items() if s is not None)
    timed = {s: n for s, n in used.items() if s is not None and found.shards[s][2] > 0}
    rate = sum(timed.values()) / sum(n / found.shards[s][2] for s, n in timed.items()) if timed else float("nan")
    return seconds, rate


@keeps_file_names()
def extract(data, out, cfg: ExtractConfig | None = None, *, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION,
            seed=SEED, progress=True, features_dir=None, log=print):
    """``transfer extract``: split the data, compute (or reuse) the features of every image.

    Writes ``split.csv`` and ``skipped.csv``; the features go to the
    feature cache ``features_dir`` (default: the shared one, see
    :func:`transfer.features.cache_root`).

    Returns:
        ``(split, features)``: the split table and the :class:`Features`.
    """
    from transfer.reports import claim, open_run, write_skipped

    cfg = (cfg or ExtractConfig())
    with claim(out, "extract", log=log):
        run = open_run(data, out, None, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        feats = extract_features(run.split["path"], cfg, cache_dir=features_dir, progress=progress, log=log)
        write_skipped(run.skipped_with(dict(feats.skipped)), run.out / "skipped.csv")
    return run.split, feats
