"""The feature cache that every run shares: features of each image, stored in shards.

One folder per feature setting (backbone, weights, layer, pooling, size,
resize, flip averaging) under the cache root; each image is addressed by its
resolved path, size and modification time, so another run folder, another
split or a learning curve on the same files finds its features, and an edited
or replaced file is extracted again.  A shard holds up to :data:`SHARD_ROWS`
images and is written whole (a temporary file, then a rename): a run that dies
leaves complete shards only, and the next one extracts just what is missing.
An image that could not be read is stored with its reason, so that every run
skips it the same way without trying again.

Layout::

    ROOT/                         $TRANSFER_CACHE, else ~/.cache/transfer/features
      SETTINGS-KEY/
        settings.json             what made these features
        used                      touched at each use (for `transfer cache prune --older-than`)
        shard-HASH.npz            ids, paths, features, skipped ids / paths / reasons, seconds, images/s
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.runtime import atomic_path, write_text_atomic

SHARD_ROWS = 4096  # 4096 x 1280 float32 = 21 MB a shard: a killed run loses at most a minute or so of CNN work


def cache_root(features_dir=None) -> Path:
    """The feature cache folder: ``features_dir`` when given, else ``$TRANSFER_CACHE``, else the user cache."""
    if features_dir is not None:
        return Path(features_dir)
    if os.environ.get("TRANSFER_CACHE"):
        return Path(os.environ["TRANSFER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transfer" / "features"


def image_id(path) -> str:
    """An image's address in the cache: its resolved path, size and modification time, hashed."""
    try:
        st = os.stat(path)
        # The name's own bytes: a name that is not UTF-8 (a surrogate in Python) is an address too.
        blob = os.fsencode(os.path.realpath(path)) + f"\0{st.st_size}\0{st.st_mtime_ns}".encode()
    except OSError:  # absent or unreadable: extracted (and skipped with its reason) like any other
        blob = os.fsencode(os.path.abspath(path)) + b"\0missing"
    return hashlib.sha1(blob).hexdigest()[:20]


@dataclasses.dataclass
class Found:
    """What the cache holds of some images: rows by image id, and the ids it knows to be unreadable."""

    rows: dict  # id -> (shard path, row)
    skipped: dict  # id -> reason
    shards: dict  # shard path -> (seconds, images, images_per_second)

    def has(self, i) -> bool:
        return i in self.rows or i in self.skipped


class FeatureStore:
    """The shards of one feature setting (see the module's docstring)."""

    def __init__(self, root, settings: dict):
        self.settings = dict(settings)
        key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root) / key

    def find(self, ids) -> Found:
        """Where the cache holds the images ``ids``; an unreadable shard is removed (its images extract again)."""
        wanted, found = set(ids), Found({}, {}, {})
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    held, gone = z["ids"], z["skipped_ids"]
                    info = (float(z["seconds"]), len(held) + len(gone), float(z["images_per_second"]))
                    reasons = z["skipped_reasons"]
            except (zipfile.BadZipFile, EOFError, KeyError, ValueError):  # a damaged shard: its images extract again
                shard.unlink(missing_ok=True)
                continue
            for row, i in enumerate(held.tolist()):
                if i in wanted and i not in found.rows:
                    found.rows[i] = (shard, row)
            for i, reason in zip(gone.tolist(), reasons.tolist(), strict=True):
                if i in wanted:
                    found.skipped.setdefault(i, reason)
            found.shards[shard] = info
        if self.folder.exists():
            (self.folder / "used").touch()
        return found

    def read(self, ids, found: Found) -> np.ndarray:
        """The features of ``ids`` (all held by ``found``), in their order, reading each shard once."""
        by_shard = {}
        for out_row, i in enumerate(ids):
            shard, row = found.rows[i]
            by_shard.setdefault(shard, ([], []))
            by_shard[shard][0].append(out_row)
            by_shard[shard][1].append(row)
        out = None
        for shard, (out_rows, rows) in by_shard.items():
            with np.load(shard, allow_pickle=False) as z:
                feats = z["features"]
            if out is None:
                out = np.empty((len(ids), feats.shape[1]), feats.dtype)
            out[out_rows] = feats[rows]
        return out if out is not None else np.empty((0, 0), np.float32)

    def add(self, ids, paths, features, skipped: dict, seconds: float, rate: float) -> Path:
        """Write one shard: the features of ``ids`` (``paths`` kept for people) and the unreadable ``skipped``.

        Args:
            skipped: ``{id: (path, reason)}`` of the images that could not be read.
        """
        if not (self.folder / "settings.json").exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.folder / "settings.json", json.dumps(self.settings, indent=2, sort_keys=True))
            (self.folder / "used").touch()
        gone = sorted(skipped)
        name = hashlib.sha1("\0".join(list(ids) + gone).encode()).hexdigest()[:16]
        shard = self.folder / f"shard-{name}.npz"
        features = np.asarray(features, np.float32)
        features = features.reshape(len(ids), features.shape[-1] if features.ndim == 2 else 0)
        with atomic_path(shard, suffix=".npz", needed=features.nbytes) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=np.array(ids, dtype=str), paths=np.array(paths, dtype=str), features=features,
                     skipped_ids=np.array(gone, dtype=str),
                     skipped_paths=np.array([skipped[i][0] for i in gone], dtype=str),
                     skipped_reasons=np.array([skipped[i][1] for i in gone], dtype=str),
                     seconds=seconds, images_per_second=rate)
        return shard


def cached_settings(root=None) -> pd.DataFrame:
    """``transfer cache list``: one row per feature setting in the cache, most recently used first."""
    root = cache_root(root)
    rows = []
    for folder in sorted(p for p in root.glob("*") if (p / "settings.json").exists()):
        settings = json.loads((folder / "settings.json").read_text())
        shards = list(folder.glob("shard-*.npz"))
        images = 0
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as z:
                    images += len(z["ids"]) + len(z["skipped_ids"])
            except Exception:  # noqa: BLE001 - a damaged shard counts for nothing; the next run replaces it
                continue
        used = (folder / "used").stat().st_mtime if (folder / "used").exists() else folder.stat().st_mtime
        rows.append({"key": folder.name, **{k: settings.get(k) for k in ("backbone", "layer", "pooling",
                                                                          "image_size", "resize")},
                     "images": images, "shards": len(shards),
                     "megabytes": round(sum(s.stat().st_size for s in shards) / 1e6, 1),
                     "last_used": time.strftime("%Y-%m-%d %H:%M", time.localtime(used)), "_used": used})
    table = pd.DataFrame(rows, columns=["key", "backbone", "layer", "pooling", "image_size", "resize", "images",
                                        "shards", "megabytes", "last_used", "_used"])
    return table.sort_values("_used", ascending=False).drop(columns="_used").reset_index(drop=True)


def prune(root=None, *, keys=(), older_than_days=None, everything=False) -> pd.DataFrame:
    """``transfer cache prune``: remove the settings ``keys``, those unused for ``older_than_days``, or all.

    Returns:
        The rows of :func:`cached_settings` that were removed.

    Raises:
        TransferError: nothing chosen, or a key that the cache does not hold.
    """
    table = cached_settings(root)
    if not keys and older_than_days is None and not everything:
        raise TransferError("Say what to prune: --key KEY (from `transfer cache list`), --older-than DAYS or --all.")
    unknown = [k for k in keys if k not in set(table["key"])]
    if unknown:
        raise TransferError(f"The feature cache {cache_root(root)} holds no key {unknown[0]!r}; "
                            f"`transfer cache list` shows the keys it holds.")
    chosen = table["key"].isin(keys).to_numpy() | everything
    if older_than_days is not None:
        cutoff = time.time() - older_than_days * 86400
        used = [(cache_root(root) / k / "used") for k in table["key"]]
        chosen |= np.array([(u if u.exists() else u.parent).stat().st_mtime < cutoff for u in used], bool)
    removed = table[chosen]
    for key in removed["key"]:
        shutil.rmtree(cache_root(root) / key)
    return removed.reset_index(drop=True)
