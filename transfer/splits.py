"""The split stage: every image gets ``train``, ``val`` or ``test``, once per run folder, in ``split.csv``.

The source's own splits are kept; otherwise a stratified, seeded split is
made.  The file is reused by every later command and every sub-run in the
same folder, so all strategies see exactly the same images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.fileio import write_csv

VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
SEED = 0  # of the split, and of everything seeded after it (folds, shuffles, initial weights)
SPLIT_COLUMNS = ["path", "label", "split"]


def make_split(table: pd.DataFrame, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION, seed=SEED) -> pd.DataFrame:
    """Give every image a split: the source's own when it has one, else a stratified, seeded split.

    Returns:
        A copy of ``table`` with ``split`` in ``train``/``val``/``test``.
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
        return table
    if table["split"].notna().any():
        raise TransferError("Only some images have a split: give every row of the manifest a split, or none.")
    idx = np.arange(len(table))
    labels = table["label"].to_numpy()
    split = np.array(["train"] * len(table), dtype=object)
    rest = idx
    if test_fraction > 0:
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
        split[test] = "test"
    if val_fraction > 0:
        _, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest],
                                  random_state=seed)
        split[val] = "val"
    table["split"] = split
    return table


def evaluation_split(table: pd.DataFrame) -> str:
    """The split final numbers come from: ``test`` when there is one, else ``val``."""
    splits = set(table["split"])
    if "test" in splits:
        return "test"
    if "val" in splits:
        return "val"
    raise TransferError("There are no val or test images to evaluate on: set val_fraction/test_fraction above 0 "
                        "or give the source a val/ or test/ split.")


def read_split(path) -> pd.DataFrame:
    """A ``split.csv`` as written by :func:`prepare_split` (every column as text).

    Raises:
        TransferError: the file is not a split file.
    """
    split = pd.read_csv(path, dtype=str, keep_default_na=False)
    if set(split.columns) != set(SPLIT_COLUMNS):
        raise TransferError(f"{path} is not a split file (columns path,label,split): remove it or use another out.")
    return split


def prepare_split(source, out, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION, seed=SEED) -> pd.DataFrame:
    """The split of a run: ``out/split.csv`` when the run folder has one, else a new one written there.

    Reusing the file means every strategy and every later run in ``out``
    sees exactly the same images in the same splits.

    Args:
        source: a :class:`~transfer.sources.DataSource`.

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


def share_split(split: pd.DataFrame, out) -> pd.DataFrame:
    """Give the run folder ``out`` a split that was made elsewhere (a sub-run of ``compare``).

    Writes ``out/split.csv``, or checks that the one there holds the same
    rows, so that a sub-run is never scored on another split than its parent.

    Raises:
        TransferError: ``out/split.csv`` holds another split.
    """
    split = split[SPLIT_COLUMNS].astype(str).reset_index(drop=True).copy()
    evaluation_split(split)
    path = Path(out) / "split.csv"
    if not path.exists():
        write_csv(split, path)
    elif set(map(tuple, read_split(path).values.tolist())) != set(map(tuple, split.values.tolist())):
        raise TransferError(f"{path} holds another split than the one given: that run was made on another split. "
                            f"Use another out folder, or delete {Path(out)} to train it again on this split.")
    return split
