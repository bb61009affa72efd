"""``transfer check``, and the same check inside every ``classify``: copies in the data, from the features at hand.

Exact copies by a hash of the pixels; near-copies by the cosine similarity of the frozen features that strategy 2
computes anyway (:mod:`transfer.data._duplicates`). A test image with a copy in train or val (classify refits on
both) is a leak: the run says how many, writes ``duplicates.csv``, and scores every model with and without them.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

# Below this median side (in pixels) near-copies are not looked for, exact copies only: measured by
# bench/duplicates.py on fashion-mnist (28 px), the features of a half-size copy are no nearer its original (median
# cosine 0.68) than distinct garments of its class are to each other (0.68; 31 % of them have a neighbour above the
# threshold), so no threshold tells copies from look-alikes; on photos (hymenoptera, 130 px and up) 0.88 found
# >= 97.9 % of each kind with no distinct pair above it.
NEAR_MIN_SIDE = 64
DROPPED = "dropped"  # split.csv's split of a test image --drop-duplicates left out
DROPPED_REASON = "a copy of a train or val image: left out of the test split by --drop-duplicates (duplicates.csv)"


@dataclasses.dataclass
class Check:
    """What a data check found.

    Attributes:
        duplicates: one row per pair (:data:`transfer.data._duplicates.DUPLICATE_COLUMNS`).
        leaked: the test images with a copy (exact or near) in train or val.
        line: what it found, in one sentence.
        near: whether near-copies were looked for (not below :data:`NEAR_MIN_SIDE` pixels).
        seconds: hashing and the neighbour search (the CNN pass not included).
    """

    duplicates: pd.DataFrame
    leaked: set
    line: str
    near: bool
    seconds: float

    def settings(self) -> dict:
        """What ``config.json`` records of the check."""
        return {"duplicates": self.line, "duplicate_pairs": len(self.duplicates),
                "leaked_test_images": len(self.leaked), "near_copies_checked": self.near,
                "check_seconds": round(self.seconds, 2)}


def leaked_test_images(dups: pd.DataFrame) -> set[str]:
    """The test images of ``dups`` with a copy in train or val (classify refits on train + val)."""
    found = set()
    for a, sa, b, sb in zip(dups["path"], dups["split"], dups["copy_path"], dups["copy_split"], strict=True):
        if sa == "test" and sb in ("train", "val"):
            found.add(str(a))
        elif sb == "test" and sa in ("train", "val"):
            found.add(str(b))
    return found


def check_features(table: pd.DataFrame, paths, features, cfg, image_sides=None) -> Check:
    """Duplicates among the images of ``table`` (path, label, split), near-copies from ``features`` (rows of
    ``paths``; images without a row are checked for exact copies only).

    Args:
        cfg: the :class:`~transfer.features.ExtractConfig` that made the features: with random weights
            (``weights='none'``) their similarities mean nothing, and only exact copies are looked for.
        image_sides: the images' median side in pixels (default: measured on a sample of their headers); below
            :data:`NEAR_MIN_SIDE` near-copies are not looked for.
    """
    from transfer.data import find_duplicates, median_side, summary

    start = time.perf_counter()
    table = table[["path", "label", "split"]].reset_index(drop=True)
    side = image_sides if image_sides is not None else median_side(table["path"])
    random = str(cfg.weights).lower() in ("none", "random")
    near = not random and (side is None or side >= NEAR_MIN_SIDE)
    aligned = None
    if near and features is not None and len(paths):
        where = {str(p): i for i, p in enumerate(paths)}
        aligned = np.full((len(table), features.shape[1]), np.nan, np.float32)
        rows = [(i, where[p]) for i, p in enumerate(table["path"].astype(str)) if p in where]
        if rows:
            aligned[[i for i, _ in rows]] = features[[j for _, j in rows]]
    dups = find_duplicates(table, aligned)
    why = ("random backbone weights" if random else
           f"images of {side} px are below the {NEAR_MIN_SIDE} px near-copies are measured on")
    line = summary(dups, table) + ("" if near else f" (exact copies only: {why})")
    return Check(dups, leaked_test_images(dups), line, near, time.perf_counter() - start)


def accuracy_without(y_true, y_pred, paths, leaked: set) -> float:
    """Accuracy on the images of ``paths`` not in ``leaked`` (NaN when none is left)."""
    keep = np.array([str(p) not in leaked for p in paths], bool)
    if not keep.any():
        return float("nan")
    return float((np.asarray(y_true, dtype=object)[keep] == np.asarray(y_pred, dtype=object)[keep]).mean())


def check_table(table, cfg, *, features_dir=None, progress=True, log=print) -> Check:
    """:func:`check_features` on the images of ``table`` (path, label, split), their features read from the feature
    cache or extracted into it (no CNN pass where only exact copies are looked for)."""
    from transfer.data import median_side
    from transfer.features._extract import extract_features

    side = median_side(table["path"])
    paths, features = [], None
    if str(cfg.weights).lower() not in ("none", "random") and (side is None or side >= NEAR_MIN_SIDE):
        feats = extract_features(table["path"].tolist(), cfg, cache_dir=features_dir, progress=progress, log=log)
        paths, features = feats.paths, feats.features
    return check_features(table, paths, features, cfg, image_sides=side)


def check(data, out, cfg=None, *, features_dir=None, progress=True, log=print) -> Check:
    """``transfer check DATA``: exact copies, near-copies and images under two labels, within and across the
    source's splits (or among all images when it has none); writes ``out/duplicates.csv``.

    Args:
        data: a folder, a CSV manifest, ``digits`` or ``fashion-mnist`` (see :func:`transfer.data.resolve_source`).
        out: the folder for ``duplicates.csv`` (made if needed).
        cfg: the :class:`~transfer.features.ExtractConfig` of the features (default: the default backbone's);
            they go to the shared feature cache, which ``classify`` and ``compare`` then reuse.

    Returns:
        The :class:`Check`.
    """
    from pathlib import Path

    from transfer.backbones import fetch_weights
    from transfer.data import resolve_source
    from transfer.features._extract import ExtractConfig
    from transfer.runtime import write_csv

    cfg = cfg or ExtractConfig()
    source = resolve_source(data)
    fetch_weights(cfg.backbone, cfg.weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = source.table.assign(split=source.table["split"].where(source.table["split"].notna(), None))
    found = check_table(table, cfg, features_dir=features_dir, progress=progress, log=log)
    write_csv(found.duplicates, out / "duplicates.csv")
    log(f"{found.line} ({found.seconds:.1f} s beside the CNN pass) -> {out / 'duplicates.csv'}")
    return found


def drop_leaks(run, cfg, *, features_dir=None, progress=True, log=print) -> Check:
    """``--drop-duplicates``: each test image with a copy in train or val leaves the test split (``split.csv``
    marks it ``dropped``; ``skipped.csv`` lists it); the training images are kept."""
    from transfer.runtime import write_csv

    scored = run.split[run.split["split"].isin(["train", "val", "test"])]
    found = check_table(scored, cfg, features_dir=features_dir, progress=progress, log=log)
    where = run.split["path"].astype(str).isin(found.leaked) & (run.split["split"] == "test")
    if where.any():
        run.split.loc[where, "split"] = DROPPED
        write_csv(run.split, run.out / "split.csv")
    run.unused.update(dict.fromkeys(map(str, run.split.loc[run.split["split"] == DROPPED, "path"]), DROPPED_REASON))
    log(f"--drop-duplicates: {int(where.sum())} test image(s) with a copy in train or val left out of the test "
        "split (listed in skipped.csv)")
    return found
