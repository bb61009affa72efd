"""The near-duplicate threshold, measured: planted copies against distinct images of the same class; and timings.

N distinct images of each class of a real set get one planted copy of each kind (resized to 50 %, JPEG at
quality 70, centre crop 90 %, mirrored: transfer.data._duplicates.plant_copies) in a temporary folder; all of them
run through the default backbone (efficientnet_lite0, ImageNet weights, pooled: 1,280 features).  For a sweep of
thresholds on the cosine similarity it reports: the share of each kind's copies at or above it against their
original (recall); the false-positive rate, the share of pairs of distinct images of one class at or above it
(and of two classes); and the share of distinct images whose most similar other distinct image is at or above it
(images a check would flag).  Then find_duplicates itself at NEAR_THRESHOLD (copies in test, originals in train):
the share of each kind found as a leak.  Then the timings: nearest_neighbours on random float32 features
(k=1, and k=5 as find_duplicates uses) at each --rows, beside the same matrix products alone, extrapolated to
1M rows (time grows as n**2); and exact_groups per 1,000 of this set's images.

    python bench/duplicates.py [--data hymenoptera|fashion|FOLDER] [--per-class 40] [--rows 10000,70000]
                               [--no-timing | --no-sweep]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
THRESHOLDS = (0.80, 0.85, 0.88, 0.89, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


def _originals(data: str, per_class: int, seed: int = 0) -> pd.DataFrame:
    """``per_class`` images of each class (path, label), seeded."""
    from transfer.data import resolve_source

    source = {"hymenoptera": HYMENOPTERA, "fashion": "fashion-mnist"}.get(data, data)
    table = resolve_source(source).table
    return (table.groupby("label").sample(n=per_class, random_state=seed)
            .reset_index(drop=True)[["path", "label"]])


def _plant(originals: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The planted copies: path, label, kind, original (the row of the image copied)."""
    from transfer.data._duplicates import plant_copies

    rows = []
    for n, (path, label) in enumerate(zip(originals["path"], originals["label"], strict=True)):
        for kind, copy in plant_copies(path, folder, f"{n:05d}").items():
            rows.append({"path": copy, "label": label, "kind": kind, "original": n})
    return pd.DataFrame(rows)


def _features(paths: list[str], cache: Path) -> np.ndarray:
    """The default backbone's features of ``paths``, in that order (NaN rows for the unreadable)."""
    from transfer.features import ExtractConfig, extract_features

    start = time.perf_counter()
    feats = extract_features(paths, ExtractConfig(), cache_dir=cache, progress=False, log=lambda line: None)
    where = {p: n for n, p in enumerate(feats.paths)}
    out = np.full((len(paths), feats.features.shape[1]), np.nan, np.float32)
    for n, p in enumerate(paths):
        if p in where:
            out[n] = feats.features[where[p]]
    print(f"features of {len(paths):,} images in {time.perf_counter() - start:.0f} s "
          f"({feats.features.shape[1]} each, {len(feats.skipped)} unreadable)")
    return out


def _sweep(x_orig, labels, x_copy, copies) -> pd.DataFrame:
    """Per threshold: recall of each kind, false-positive rates of distinct pairs, share of distinct flagged."""
    from transfer.data._duplicates import normalised

    a, c = normalised(x_orig), normalised(x_copy)
    planted = np.einsum("ij,ij->i", c, a[copies["original"].to_numpy()])
    sims = a @ a.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    same = labels[:, None] == labels[None, :]
    distinct_same, distinct_other = sims[upper & same], sims[upper & ~same]
    np.fill_diagonal(sims, -np.inf)
    top = sims.max(axis=1)
    rows = []
    for t in THRESHOLDS:
        row = {"threshold": t}
        for kind, group in copies.groupby("kind", sort=False):
            row[kind] = (planted[group.index] >= t).mean()
        row |= {"fp same-class pairs": (distinct_same >= t).mean(),
                "fp other-class pairs": (distinct_other >= t).mean(), "distinct flagged": (top >= t).mean()}
        rows.append(row)
    for kind, group in copies.groupby("kind", sort=False):
        mine = planted[group.index]
        print(f"  {kind:8} similarity to its original: min {mine.min():.3f}, 5th percentile "
              f"{np.percentile(mine, 5):.3f}, median {np.median(mine):.3f}")
    print(f"  distinct same-class pairs: median {np.median(distinct_same):.3f}, 99th percentile "
          f"{np.percentile(distinct_same, 99):.3f}, max {distinct_same.max():.3f}")
    return pd.DataFrame(rows)


def _end_to_end(originals, copies, features, threshold) -> str:
    """find_duplicates on originals (train) and copies (test): the share of each kind found as a leak."""
    from transfer.data._duplicates import find_duplicates, summary

    table = pd.concat([originals.assign(split="train"), copies[["path", "label"]].assign(split="test")],
                      ignore_index=True)
    start = time.perf_counter()
    dups = find_duplicates(table, features, threshold)
    seconds = time.perf_counter() - start
    found = set(zip(dups["path"], dups["copy_path"], strict=True))
    expected = [(p, originals["path"][o]) for p, o in zip(copies["path"], copies["original"], strict=True)]
    hits = copies.assign(found=[pair in found for pair in expected]).groupby("kind", sort=False)["found"].mean()
    print(f"find_duplicates at {threshold}: {len(table):,} images in {seconds:.1f} s; {summary(dups, table)}")
    return ", ".join(f"{kind} {share:.1%}" for kind, share in hits.items())


def _timings(rows: list[int], paths: list[str]):
    """nearest_neighbours on random features at each size (and extrapolated to 1M), exact_groups per 1,000."""
    from transfer.data._duplicates import exact_groups, nearest_neighbours

    rng = np.random.default_rng(0)
    for n in rows:
        x = rng.standard_normal((n, 1280), dtype=np.float32)
        start = time.perf_counter()
        for i in range(0, n, 2048):  # the floor: the same tiles' matrix products alone, nothing kept
            for j in range(i, n, 2048):
                x[i:i + 2048] @ x[j:j + 2048].T
        seconds = time.perf_counter() - start
        print(f"the products alone {n:>7,} x 1,280:  {seconds:7.1f} s "
              f"(1M rows at this rate, as n**2: {seconds * (1e6 / n) ** 2 / 3600:.1f} h)")
        for k in (1, 5):
            start = time.perf_counter()
            nearest_neighbours(x, k=k)
            seconds = time.perf_counter() - start
            print(f"nearest_neighbours {n:>7,} x 1,280, k={k}: {seconds:7.1f} s "
                  f"(1M rows at this rate, as n**2: {seconds * (1e6 / n) ** 2 / 3600:.1f} h)")
        del x
    start = time.perf_counter()
    hashed = exact_groups(paths)
    seconds = time.perf_counter() - start
    print(f"exact_groups: {len(paths):,} images in {seconds:.2f} s = {1000 * seconds / len(paths):.2f} s per 1,000 "
          f"({len(hashed):,} readable)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hymenoptera", help="hymenoptera, fashion or a folder of class folders")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--rows", default="10000,70000", help="sizes to time nearest_neighbours at")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--no-sweep", action="store_true", help="the timings alone (exact_groups on 100 a class)")
    args = parser.parse_args()
    from transfer.data._duplicates import NEAR_THRESHOLD

    originals = _originals(args.data, args.per_class)
    if args.no_sweep:
        _timings([int(r) for r in args.rows.split(",") if r], list(originals["path"]))
        return
    with tempfile.TemporaryDirectory(prefix="transfer-dups-") as tmp:
        copies = _plant(originals, Path(tmp) / "copies")
        paths = list(originals["path"]) + list(copies["path"])
        x = _features(paths, Path(tmp) / "cache")
        n = len(originals)
        print(f"{args.data}: {n} distinct images ({args.per_class} a class, {originals['label'].nunique()} classes), "
              f"{len(copies)} planted copies")
        table = _sweep(x[:n], originals["label"].to_numpy(), x[n:], copies)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"found as leaks: {_end_to_end(originals, copies, x, NEAR_THRESHOLD)}")
        if not args.no_timing:
            _timings([int(r) for r in args.rows.split(",") if r], paths)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak resident memory of this process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
