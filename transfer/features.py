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
import time
from pathlib import Path

import numpy as np

from transfer.backbones import FEATURE_LAYERS, BackboneOptions, check_pooling, get_backbone, weights_identity
from transfer.errors import TransferError
from transfer.fileio import atomic_path
from transfer.images import timed_predict
from transfer.splits import SEED, TEST_FRACTION, VAL_FRACTION

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
            (README, strategy 2), and a mirrored digit or letter is another one.
    """

    layer: str = "pooled"
    pooling: str | None = "avg"
    flip_average: bool = False

    def validated(self) -> ExtractConfig:
        """A copy with every option checked and resolved (the backbone's size, its registry name).

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        check_pooling(self.pooling)
        if not self.layer:
            raise TransferError(f"layer must be one of {', '.join(FEATURE_LAYERS)} or a layer name.")
        cfg = self.checked_backbone()
        pooling = self.pooling
        if self.layer == "flatten":
            pooling = None  # has no effect: keep it out of the cache key
        elif self.layer == "pooled" and pooling is None:
            pooling = "avg"
        return dataclasses.replace(cfg, pooling=pooling)


def feature_settings(cfg: ExtractConfig) -> dict:
    """What a run records of ``cfg`` to be reused: every option but the engine (engines agree to 1e-4)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "engine"}


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
    """A hash of everything that changes the features of ``paths``."""
    files = []
    for p in paths:
        try:
            st = Path(p).stat()
            files.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([str(p), -1, -1])
    blob = json.dumps({
        "version": CACHE_VERSION, "backbone": cfg.backbone, "weights": weights_identity(cfg.backbone, cfg.weights),
        "layer": cfg.layer, "pooling": cfg.pooling, "image_size": cfg.image_size, "resize": cfg.resize,
        "files": files,
        # only when on, so that the caches made before the option existed stay valid
        **({"flip_average": True} if cfg.flip_average else {}),
    }, sort_keys=True)
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
    import keras

    # Mirroring after preprocessing equals preprocessing the mirror image: every preprocess_input is per pixel.
    inputs = keras.Input(model.inputs[0].shape[1:])
    mirrored = keras.ops.flip(inputs, axis=2)
    return keras.Model(inputs, keras.layers.Average()([model(inputs), model(mirrored)]),
                       name=f"{model.name}_flip_average")


def extractor(cfg: ExtractConfig, log=print):
    """The feature model of ``cfg``, run by ``cfg.engine`` (see :func:`transfer.engines.frozen_model`)."""
    from transfer.engines import frozen_model

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


def run_extraction(cfg: ExtractConfig, paths, progress=True, model=None, log=print):
    """Run the backbone over ``paths``; returns ``(kept paths, features, skipped, images_per_second)``.

    ``model`` is the extractor when already built (see :func:`extractor`).
    """
    row = get_backbone(cfg.backbone)
    model = model if model is not None else extractor(cfg, log)
    paths = [str(p) for p in paths]
    bar = _progress(len(paths), f"extract {row.name}") if progress else None
    kept, feats, skipped, rate = timed_predict(model, paths, cfg.image_size, cfg.resize, cfg.batch_size,
                                               row.preprocess_input, on_batch=bar.update if bar else None)
    if bar is not None:
        bar.close()
    return [paths[i] for i in kept], feats, [(p, skipped[p]) for p in paths if p in skipped], rate


def extract_features(paths, cfg: ExtractConfig, cache_dir=None, progress=True, log=print) -> Features:
    """Features of ``paths``, from the cache when its key matches, else by running the CNN.

    The engine is not part of the key: engines are used only where they agree
    with TensorFlow to 1e-4 of the largest feature.

    Args:
        paths: image files.
        cfg: backbone, layer, pooling, size and resize mode.
        cache_dir: folder of cached feature files (none: no caching).
        progress: show a progress bar with images/s.
        log: where the engine's one-off export and timing are said.
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
    kept, feats, skipped, rate = run_extraction(cfg, paths, progress=progress, log=log)
    seconds = time.perf_counter() - start
    if cache is not None:
        with atomic_path(cache, suffix=".npz", needed=feats.nbytes) as tmp, open(tmp, "wb") as f:
            np.savez(f, paths=np.array(kept, dtype=str), features=feats,
                     skipped=np.array(skipped, dtype=str).reshape(-1, 2), seconds=seconds,
                     images_per_second=rate, config=json.dumps(dataclasses.asdict(cfg)))
    return Features(kept, feats, skipped, seconds, key, False, rate)


def extract(data, out, cfg: ExtractConfig | None = None, *, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION,
            seed=SEED, progress=True, features_dir=None, log=print):
    """``transfer extract``: split the data, compute (or reuse) the features of every image.

    Writes ``split.csv``, ``skipped.csv`` and the feature cache under
    ``features_dir`` (default ``out/features/``).

    Returns:
        ``(split, features)``: the split table and the :class:`Features`.
    """
    from transfer.runfolder import claim
    from transfer.runs import open_run, write_skipped

    cfg = (cfg or ExtractConfig()).validated()
    with claim(out, "extract", log=log):
        run = open_run(data, out, None, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        feats = extract_features(run.split["path"], cfg, cache_dir=features_dir or run.out / "features",
                                 progress=progress, log=log)
        write_skipped(feats.skipped, run.out / "skipped.csv")
    return run.split, feats
