"""The split stage: every image gets a role, once per run folder, in ``split.csv``.

The roles: ``train`` fits, ``val`` chooses (hyper-parameters, the epochs kept,
learning-rate plateaus), ``test`` is scored, and nothing is chosen on it.
A source without splits gets a stratified, seeded split into the three.  A
source with its own splits keeps them, except that a source without a test
split has its ``val`` scored (as ``test``) and a ``val`` carved from its
``train`` (stratified, seeded): otherwise the images that pick the best epoch
would also be the ones that score it.  ``source_split`` keeps what the source
called each image.  The file is reused by every later command and every
sub-run in the same folder, so all strategies see exactly the same images.
A learning curve's subsets (:func:`train_subset`) mark the training images
they leave out ``unused``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.runtime import keeps_file_names, read_csv, write_csv

VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
SEED = 0  # of the split, and of everything seeded after it (folds, shuffles, initial weights)
SPLIT_COLUMNS = ["path", "label", "split", "source_split"]
UNUSED = "unused"  # a training image left out of a learning-curve subset: neither trained, chosen nor scored on


@keeps_file_names()
def make_split(table: pd.DataFrame, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION, seed=SEED) -> pd.DataFrame:
    """Give every image a role: ``train`` fits, ``val`` chooses, ``test`` is scored.

    The source's own splits when it has them (its ``val`` scored and a
    ``val`` carved from its ``train`` when it has no ``test``), else a
    stratified, seeded split.

    Returns:
        A copy of ``table`` with ``split`` in ``train``/``val``/``test`` and
        ``source_split`` (the source's name for it, empty when it had none).
    """
    from sklearn.model_selection import train_test_split

    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise TransferError(f"{name}={frac!r} is not valid: give a fraction in [0, 1).")
    if val_fraction + test_fraction >= 1:
        raise TransferError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training images: "
                     "keep their sum below 1.")
    table = table.reset_index(drop=True).copy()
    if table["split"].notna().all():
        if "train" not in set(table["split"]):
            raise TransferError("The source's splits have no 'train' images: add a train/ folder or split column rows.")
        table["source_split"] = table["split"]
        return with_roles(table, val_fraction, seed)
    if table["split"].notna().any():
        raise TransferError("Only some images have a split: give every row of the manifest a split, or none.")
    labels = table["label"].to_numpy()
    split = np.array(["train"] * len(table), dtype=object)
    rest = np.arange(len(table))
    if test_fraction > 0:
        rest, test = train_test_split(rest, test_size=test_fraction, stratify=labels, random_state=seed)
        split[test] = "test"
    if val_fraction > 0:
        _, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest],
                                  random_state=seed)
        split[val] = "val"
    table["split"] = split
    table["source_split"] = ""
    return with_roles(table, val_fraction, seed)  # with test_fraction=0, the val split is scored: carve another


def with_roles(table: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """A source's own splits as roles: its val is scored when it has no test, and val is carved from train."""
    from sklearn.model_selection import train_test_split

    if "test" not in set(table["split"]):
        table.loc[table["split"] == "val", "split"] = "test"
    if "val" not in set(table["split"]) and val_fraction > 0:
        train = np.flatnonzero(table["split"].to_numpy() == "train")
        labels = table["label"].to_numpy()[train]
        counts = pd.Series(labels).value_counts()
        size = max(int(np.ceil(val_fraction * len(train))), len(counts))  # at least one image of each class
        if counts.min() >= 2 and len(train) - size >= len(counts):  # else too few to carve: choices use train
            _, val = train_test_split(train, test_size=size, stratify=labels, random_state=seed)
            table.loc[val, "split"] = "val"
    return table


@keeps_file_names()
def train_subset(split: pd.DataFrame, size, seed=SEED) -> pd.DataFrame:
    """``split`` as a user with ``size`` training images per class would hold it; the rest becomes ``unused``.

    Each class keeps at most ``size`` training images and, in the same
    proportion as the whole split, its validation images: ``size`` times the
    class's validation-to-training ratio, rounded, at least 1.  So at 5 images
    per class the choices (C, k, the epoch kept) are made on as few images as
    such a user would hold out, and no strategy learns from a validation split
    larger than its training split (strategy 2 refits on train + val).  Each
    class's training rows and its validation rows (classes in sorted order)
    are shuffled once by ``numpy.random.default_rng(seed)`` and the first ones
    kept, so the subsets of one split and seed are nested: the one for a
    smaller size is part of the one for a larger.  Test rows are unchanged, so
    every size is scored on the same images; every image stays in the table,
    so a feature cache made for the whole split serves every subset.

    Args:
        split: a split table (see :func:`make_split`).
        size: training images per class (a positive integer), or ``all`` (the split as it is).
        seed: seeds the shuffle.
    """
    out = split.copy()
    if str(size) == "all":
        return out
    rng = np.random.default_rng(seed)
    roles, labels = out["split"].to_numpy(), out["label"].to_numpy()
    left_out = []
    for label in sorted(set(labels[roles == "train"])):
        train = np.flatnonzero((roles == "train") & (labels == label))
        val = np.flatnonzero((roles == "val") & (labels == label))
        n_train = min(int(size), len(train))
        n_val = min(len(val), max(1, round(n_train * len(val) / len(train))))
        left_out.extend(train[rng.permutation(len(train))[n_train:]])
        left_out.extend(val[rng.permutation(len(val))[n_val:]])
    out.loc[out.index[left_out], "split"] = UNUSED
    return out


def roles(split: pd.DataFrame) -> str:
    """Which images were scored and which chose, in words (for reports)."""
    def part(name):
        rows = split[split["split"] == name]
        origin = sorted(set(rows["source_split"]) - {""})
        was = f", the source's {'/'.join(origin)} split" if origin and origin != [name] else ""
        if name == "val" and origin == ["train"]:
            was = ", carved from the source's train split, stratified and seeded"
        return f"{name} ({len(rows)} images{was})"

    chosen = f"chosen on {part('val')}" if (split["split"] == "val").any() else \
        "chosen by cross-validation and training loss on train (no val split)"
    return f"scored on {part(evaluation_split(split))}; {chosen}"


def evaluation_split(table: pd.DataFrame) -> str:
    """The split final numbers come from: ``test``, which nothing is chosen on (see :func:`make_split`).

    Raises:
        TransferError: there are no images to score on.
    """
    if "test" in set(table["split"]):
        return "test"
    raise TransferError("There are no val or test images to score on: set val_fraction/test_fraction above 0 "
                        "or give the source a val/ or test/ split.")


def read_split(path) -> pd.DataFrame:
    """A ``split.csv`` as written by :func:`prepare_split` (every column as text).

    Raises:
        TransferError: the file is not a split file, or one whose scored images also chose (made by an
            earlier version of transfer, which scored on a source's val split and stopped early on it).
    """
    split = read_csv(path, dtype=str, keep_default_na=False)
    if not {"path", "label", "split"} <= set(split.columns) <= set(SPLIT_COLUMNS):
        raise TransferError(f"{path} is not a split file (columns {','.join(SPLIT_COLUMNS)}): remove it or use "
                            "another out folder.")
    if "source_split" not in split.columns:
        if "test" not in set(split["split"]):
            raise TransferError(f"{path} scores on its val split, which also chooses the epochs kept (an earlier "
                                "version made it): delete it to split again, or use another out folder.")
        split["source_split"] = ""
    return split[SPLIT_COLUMNS]


def prepare_split(source, out, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION, seed=SEED) -> pd.DataFrame:
    """The split of a run: ``out/split.csv`` when the run folder has one, else a new one written there.

    Reusing the file means every strategy and every later run in ``out``
    sees exactly the same images in the same splits.

    Args:
        source: a :class:`~transfer.data._sources.DataSource`.

    Returns:
        The split table; ``attrs["reused"]`` says whether it was read from
        ``out/split.csv``, ``attrs["source"]`` names the source.

    Raises:
        TransferError: ``out/split.csv`` lists other images than ``source``.
    """
    path = Path(out) / "split.csv"
    if path.exists():
        split = read_split(path)
        ours = set(zip(source.table["path"], source.table["label"], strict=True))
        theirs = set(zip(split["path"], split["label"], strict=True))
        if ours != theirs:
            raise TransferError(
                f"{path} was made for other images or labels ({len(theirs - ours)} of its (path, label) rows are "
                f"not in {source.name}, {len(ours - theirs)} of {source.name}'s are not in it): use another out "
                "folder, or delete that split.csv to split again."
            )
        evaluation_split(split)
        split.attrs.update(reused=True, source=source.name)  # this call's seed and fractions did not make it
        return split
    try:
        split = make_split(source.table, val_fraction, test_fraction, seed)
    except TransferError:
        raise
    except ValueError as e:
        raise TransferError(f"Cannot make a stratified split of {source.name}: {e}. Add images to the smallest "
                            "classes or lower val_fraction/test_fraction.") from None
    evaluation_split(split)  # before anything is written or computed
    write_csv(split, path)
    split.attrs.update(reused=False, source=source.name)
    return split


def share_split(split: pd.DataFrame, out, scored: bool = True) -> pd.DataFrame:
    """Give the run folder ``out`` a split that was made elsewhere (a sub-run of ``compare``).

    Writes ``out/split.csv``, or checks that the one there holds the same
    rows, so that a sub-run is never scored on another split than its parent.

    Raises:
        TransferError: ``out/split.csv`` holds another split.
    """
    split = split[SPLIT_COLUMNS].astype(str).reset_index(drop=True).copy()
    if scored:  # (a run that scores nothing has no test images)
        evaluation_split(split)
    path = Path(out) / "split.csv"
    if not path.exists():
        write_csv(split, path)
    elif set(map(tuple, read_split(path).values.tolist())) != set(map(tuple, split.values.tolist())):
        raise TransferError(f"{path} holds another split than the one given: that run was made on another split. "
                            f"Use another out folder, or delete {Path(out)} to train it again on this split.")
    return split
