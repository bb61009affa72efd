"""Duplicates in a data set: exact copies (same pixels), near-copies (the backbone's features) and leaks.

A test or val image with a copy in train scores the model on an image it was trained on; one image under two
labels teaches both; many copies within a split weigh one image many times.  Exact copies are found by a hash of
the decoded pixels, near-copies (resized, re-encoded, cropped, mirrored) by the cosine similarity of the frozen
CNN's features, each image against its most similar others (:func:`nearest_neighbours`, exact and blocked).
"""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pandas as pd

# Cosine similarity of the default backbone's pooled features (efficientnet_lite0, 1,280 per image) from which two
# images are near-copies.  Measured by bench/duplicates.py: one copy of each kind planted of each of N distinct
# images (resized to 50 %, JPEG at quality 70, centre crop 90 %, mirrored), against the pairs of distinct images.
#   hymenoptera photos, 120 a class: at 0.88 it finds resized 97.9 %, JPEG 99.2 %, crop 98.3 %, mirror 100 %, and
#     no pair of distinct images (their most similar: 0.78); at 0.90 crops fall to 95.4 %, at 0.92 to 81 %.
#   fashion-mnist, 100 a class (28 px): at 0.88 JPEG 85 %, crop 91 %, mirror 100 %, resized 0 % (a 14-px copy is
#     another image to the CNN: 0.68 median); 1.5 % of the distinct same-class pairs are above it, and 31 % of the
#     distinct images have one (0.85: 4.1 % and 52 %).  Copies of tiny images of look-alike classes are not told
#     from look-alikes by these features at any threshold: the near-copy check is meant for photos.
NEAR_THRESHOLD = 0.88
NEIGHBOURS = 5  # candidates per image: an image's copies rank first among its neighbours, past a few is noise
EXACT_PAIRS = 10  # exact groups up to this size list every pair; a larger one pairs each member with anchors
DUPLICATE_COLUMNS = ["path", "label", "split", "copy_path", "copy_label", "copy_split", "kind", "similarity",
                     "relation", "label_conflict"]
EVALUATION = ("test", "val")  # the splits that score or choose: a copy of one of theirs in train is a leak
COPY_KINDS = ("resized", "jpeg", "crop", "mirror")  # the near-copies NEAR_THRESHOLD was measured to catch


def plant_copies(path, folder, stem: str) -> dict[str, str]:
    """Write one near-copy of each of :data:`COPY_KINDS` of the image ``path`` into ``folder``: what the
    threshold is measured on (bench/duplicates.py) and tested against (tests/test_duplicates.py).

    The kinds: resized to half its sides, re-encoded as JPEG at quality 70, centre-cropped to 90 % of its
    sides, mirrored left to right.  The lossless ones are saved as PNG, so that only the change itself counts.

    Returns:
        ``{kind: path of the copy}``, named ``STEM-KIND.png`` (``.jpg`` for the JPEG).
    """
    from pathlib import Path

    from PIL import Image, ImageOps

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy()
    w, h = img.size
    dw, dh = round(w * 0.05), round(h * 0.05)
    copies = {"resized": img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC),
              "jpeg": img, "crop": img.crop((dw, dh, w - dw, h - dh)), "mirror": ImageOps.mirror(img)}
    out = {}
    for kind, copy in copies.items():
        out[kind] = str(folder / f"{stem}-{kind}.{'jpg' if kind == 'jpeg' else 'png'}")
        copy.save(out[kind], **({"quality": 70} if kind == "jpeg" else {}))
    return out


def _regular_file(path) -> bool:
    """Whether ``path`` is a regular file (through links): a named pipe or a device would block ``open``."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def pixel_hash(path) -> str | None:
    """A hash of the decoded RGB pixels of one image (shape and bytes), or None if it is not a readable image.

    The pixels, not the file: a PNG and its lossless re-save (another format, other metadata) hash the same.
    EXIF orientation is applied, as the CNN sees the image.
    """
    from PIL import Image, ImageOps

    if not _regular_file(path):
        return None
    try:
        with Image.open(path) as img:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a broken EXIF block: the pixels as stored are still the image
                pass
            pixels = np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - unreadable images are reported by the source's own check, not here
        return None
    digest = hashlib.blake2b(str(pixels.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def exact_groups(paths, workers: int | None = None) -> dict[str, str]:
    """``{path: pixel hash}`` of the readable images among ``paths``: equal hashes are exact copies.

    Unreadable files and anything but regular files are left out (never opened: a named pipe would block).
    Decoding runs in threads: Pillow releases the GIL while it decodes.

    Args:
        paths: image files.
        workers: threads (default: the machine's CPUs).
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = [str(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        hashes = list(pool.map(pixel_hash, paths))
    return {p: h for p, h in zip(paths, hashes, strict=True) if h is not None}


def normalised(features) -> np.ndarray:
    """``features`` as float32 rows of unit length; a row of zeros or with a non-finite value becomes zeros
    (similar to nothing), so one bad row cannot turn every similarity into NaN."""
    x = np.asarray(features, dtype=np.float32)
    x = np.where(np.isfinite(x).all(axis=1, keepdims=True), x, 0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _top(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The columns of the ``k`` largest values of each row of ``sims``, and those values, largest first.

    By ``k`` passes of argmax, each masking what it found: for a small ``k``, twenty times faster than an
    argpartition of a 2048-wide row.  ``sims`` is overwritten.
    """
    rows = np.arange(len(sims))
    cols, values = np.empty((len(sims), k), np.int64), np.empty((len(sims), k), sims.dtype)
    for n in range(k):
        cols[:, n] = sims.argmax(axis=1)
        values[:, n] = sims[rows, cols[:, n]]
        sims[rows, cols[:, n]] = -np.inf
    return cols, values


def _fold(best, tile: np.ndarray, start: int, offset: int, k: int, axis: int = 1):
    """Fold a tile of similarities into the running best ``(index, similarity)``, in place: with ``axis=1`` the
    tile's rows are ``start...`` and its columns ``offset...``; with ``axis=0`` the tile's columns are the rows
    to update (``start...``) and its rows the candidates (``offset...``)."""
    index, similarity = best
    # Only the rows whose best in this tile beats their k-th best so far can change: after the first tiles few
    # do, and a max is cheap along either axis where an argmax across a C array's rows is not.
    peak = tile.max(axis=axis)
    rows = np.flatnonzero(peak > similarity[start:start + len(peak)].min(axis=1))
    if not len(rows):
        return
    sub = tile[rows] if axis == 1 else np.ascontiguousarray(tile[:, rows].T)
    cols, sims = _top(sub, min(k, sub.shape[1]))
    at = rows + start
    both_i = np.concatenate([index[at], cols + offset], axis=1)
    both_s = np.concatenate([similarity[at], sims], axis=1)
    keep = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
    index[at] = np.take_along_axis(both_i, keep, axis=1)
    similarity[at] = np.take_along_axis(both_s, keep, axis=1)


def nearest_neighbours(features, k: int = 1, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar other rows by cosine similarity: exact, by blocked matrix products.

    The rows are L2-normalised, then the similarity matrix is computed one ``block x block`` tile at a time, each
    tile once for both its row block and its column block (the matrix is symmetric: half the products), and only
    a running top ``k`` per row is kept: memory is ``O(block**2 + n*k)`` whatever ``n``.  Time is ``O(n**2 * d)``:
    measured by bench/duplicates.py (2 cores: 10,000 x 1,280 in a few seconds).

    Args:
        features: an ``(n, d)`` array.  A row of zeros or with NaN is similar to nothing (similarity 0).
        k: neighbours per row (at most ``n - 1``).
        block: rows per tile.

    Returns:
        ``(index, similarity)``, both ``(n, k)``, most similar first; ``index`` -1 where ``n - 1 < k``.
    """
    x = normalised(features)
    n = len(x)
    index = np.full((n, k), -1, dtype=np.int64)
    similarity = np.full((n, k), -np.inf, dtype=np.float32)
    kk = min(k, n - 1)
    if kk < 1:
        return index, similarity
    best = (index[:, :kk], similarity[:, :kk])  # views: _fold fills index and similarity in place
    for i in range(0, n, block):
        for j in range(i, n, block):
            tile = x[i:i + block] @ x[j:j + block].T
            if i == j:
                np.fill_diagonal(tile, -np.inf)  # a row is not its own neighbour
            _fold(best, tile, i, j, kk)
            if i != j:
                _fold(best, tile, j, i, kk, axis=0)
    order = np.argsort(-similarity, axis=1, kind="stable")
    index, similarity = np.take_along_axis(index, order, axis=1), np.take_along_axis(similarity, order, axis=1)
    index[~np.isfinite(similarity)] = -1
    return index, np.clip(similarity, -1.0, 1.0, out=similarity, where=np.isfinite(similarity))


def _exact_pairs(hashes: list, splits: list, labels: list) -> dict[tuple[int, int], float]:
    """``{(i, j): 1.0}`` (``i < j``) for the rows whose pixel hashes are equal.

    A group of up to :data:`EXACT_PAIRS` copies lists every pair.  A larger one (a thousand blank images) would
    list a million, so there each member is paired with the group's anchors, the first member of each (split,
    label) in it: every leak and label conflict still shows, and the group stays connected (:func:`group_ids`),
    in ``O(n)`` pairs.
    """
    groups: dict[str, list[int]] = {}
    for row, h in enumerate(hashes):
        if h is not None:
            groups.setdefault(h, []).append(row)
    pairs = {}
    for rows in groups.values():
        if len(rows) <= EXACT_PAIRS:
            pairs.update({(a, b): 1.0 for n, a in enumerate(rows) for b in rows[n + 1:]})
            continue
        anchors = {}
        for row in rows:
            anchors.setdefault((splits[row], labels[row]), row)
        pairs.update({(min(a, r), max(a, r)): 1.0 for a in anchors.values() for r in rows if r != a})
    return pairs


def _near_pairs(features, valid: np.ndarray, threshold: float, k: int) -> dict[tuple[int, int], float]:
    """``{(i, j): cosine}`` (``i < j``, table rows) of the valid rows at or above ``threshold`` among each row's
    ``k`` nearest neighbours."""
    rows = np.flatnonzero(valid)
    if len(rows) < 2:
        return {}
    index, similarity = nearest_neighbours(np.asarray(features)[rows], k=k)
    pairs = {}
    for a, b, s in zip(*np.nonzero(similarity >= threshold), similarity[similarity >= threshold], strict=True):
        i, j = sorted((int(rows[a]), int(rows[index[a, b]])))
        pairs[(i, j)] = max(pairs.get((i, j), -1.0), float(s))
    return pairs


def _split_name(value) -> str | None:
    """A split as text, None for none (NaN, None or empty: a source without splits)."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) or value == "" else str(value)


def relation(split_a, split_b) -> tuple[str, bool]:
    """How two copies sit across the splits, and whether to swap them so the evaluation side comes first.

    Returns:
        ``("leak", swap)`` when one is in test or val and the other in train; ``("within train", False)`` in
        one split (``within unsplit`` for a source without splits); else ``("across test and val", swap)``
        (test, then val, then the rest alphabetically comes first).
    """
    a, b = _split_name(split_a), _split_name(split_b)
    if a == b:
        return f"within {a or 'unsplit'}", False
    if {a, b} & set(EVALUATION) and "train" in (a, b):
        return "leak", a == "train"
    rank = {s: n for n, s in enumerate(EVALUATION)}
    first, second = sorted((a or "unsplit", b or "unsplit"), key=lambda s: (rank.get(s, len(rank)), s))
    return f"across {first} and {second}", first != (a or "unsplit")


def _rows(table: pd.DataFrame, pairs: dict, kinds: dict) -> list[dict]:
    """One output row a pair, the evaluation side of a leak first."""
    paths, labels, splits = (table[c].tolist() for c in ("path", "label", "split"))
    out = []
    for (i, j), sim in sorted(pairs.items()):
        how, swap = relation(splits[i], splits[j])
        a, b = (j, i) if swap else (i, j)
        out.append({"path": paths[a], "label": labels[a], "split": _split_name(splits[a]),
                    "copy_path": paths[b], "copy_label": labels[b], "copy_split": _split_name(splits[b]),
                    "kind": kinds[(i, j)], "similarity": round(min(sim, 1.0), 4), "relation": how,
                    "label_conflict": labels[a] != labels[b]})
    return out


def find_duplicates(table: pd.DataFrame, features=None, threshold: float = NEAR_THRESHOLD, *, hashes=None,
                    k: int = NEIGHBOURS) -> pd.DataFrame:
    """Every pair of exact or near copies among the images of ``table``, each unordered pair once.

    Args:
        table: columns path, label, split (None or NaN where the source has no split yet).
        features: an ``(n, d)`` array aligned with ``table``'s rows (NaN rows for images that could not be read),
            or None to look for exact copies only.
        threshold: the cosine similarity from which two images are near-copies (see :data:`NEAR_THRESHOLD`).
        hashes: ``{path: pixel hash}`` as :func:`exact_groups` returns (default: computed here).
        k: nearest neighbours of each image to look among for near-copies.

    Returns:
        A frame of :data:`DUPLICATE_COLUMNS`: ``kind`` exact or near; ``similarity`` cosine (1.0 for exact);
        ``relation`` ``leak`` (``path`` in test or val, ``copy_path`` in train), ``within SPLIT`` or ``across A and B``;
        ``label_conflict`` whether the two carry different labels.
    """
    table = table.reset_index(drop=True)
    if hashes is None:
        hashes = exact_groups(table["path"])
    row_hashes = [hashes.get(str(p)) for p in table["path"]]
    exact = _exact_pairs(row_hashes, table["split"].map(_split_name).tolist(), table["label"].tolist())
    pairs, kinds = dict(exact), dict.fromkeys(exact, "exact")
    if features is not None and len(table):
        features = np.asarray(features, dtype=np.float32).reshape(len(table), -1)
        valid = np.isfinite(features).all(axis=1)
        for pair, sim in _near_pairs(features, valid, threshold, k).items():
            if pair not in exact:
                pairs[pair], kinds[pair] = sim, "near"
    return pd.DataFrame(_rows(table, pairs, kinds), columns=DUPLICATE_COLUMNS)


def leaked(dups: pd.DataFrame) -> set[str]:
    """The evaluation-side paths (test or val) that have a copy in train."""
    return set(dups.loc[dups["relation"] == "leak", "path"]) if len(dups) else set()


def _plural(n: int, one: str, many: str) -> str:
    """``n`` and the word that goes with it."""
    return f"{n:,} {one if n == 1 else many}"


def summary(dups: pd.DataFrame, table: pd.DataFrame) -> str:
    """What :func:`find_duplicates` found, in one sentence.

    For example: "7 of 153 val images have a copy in train (2 exact, 5 near); 2 images carry two labels;
    15 pairs of copies within train".

    Args:
        dups: :func:`find_duplicates`'s answer.
        table: the images looked at (path, label, split).
    """
    if not len(dups):
        return f"no duplicates found among {len(table):,} images"
    parts = []
    splits = table["split"].map(_split_name)
    leaks = dups[dups["relation"] == "leak"]
    for name in EVALUATION:
        mine = leaks[leaks["split"] == name]
        if len(mine):
            exact = set(mine.loc[mine["kind"] == "exact", "path"])
            near = set(mine["path"]) - exact
            parts.append(f"{mine['path'].nunique():,} of {int((splits == name).sum()):,} {name} images have a copy "
                         f"in train ({len(exact):,} exact, {len(near):,} near)")
    conflicts = int(dups["label_conflict"].sum())
    if conflicts:
        parts.append(_plural(conflicts, "image carries two labels", "images carry two labels"))
    for how, n in dups.loc[dups["relation"] != "leak", "relation"].value_counts(sort=False).items():
        where = "(no split yet)" if how == "within unsplit" else how
        parts.append(f"{_plural(int(n), 'pair', 'pairs')} of copies {where}")
    return "; ".join(parts)


def group_ids(paths, dups: pd.DataFrame) -> list[int]:
    """A group number for each of ``paths``: the connected components of the duplicate graph (union-find).

    Copies of one image share a group, so that folds split by group keep them on one side.  Numbers run from
    0 in the order of ``paths``; a path in no pair has a group of its own.
    """
    paths = [str(p) for p in paths]
    parent = list(range(len(paths)))
    where: dict[str, int] = {}
    for n, p in enumerate(paths):
        parent[n] = where.setdefault(p, n)  # a path listed twice (a manifest, two labels) is one image

    def root(n: int) -> int:
        """The group's representative (the lowest row), shortening the path on the way."""
        while parent[n] != n:
            parent[n] = parent[parent[n]]  # path halving: near-constant time per look-up
            n = parent[n]
        return n

    for a, b in zip(dups["path"].astype(str), dups["copy_path"].astype(str), strict=True) if len(dups) else ():
        if a in where and b in where:
            ra, rb = root(where[a]), root(where[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(n), len(numbers)) for n in range(len(paths))]
