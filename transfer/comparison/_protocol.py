"""The scoring protocol of ``compare``: one split, or stratified k-fold cross-validation for small data.

One split scores 15 % of the images: 9 of 60.  Whether two models differ is
then beyond any test: a paired test at 5 % detects, with 80 % power, only
differences above about (z_0.975 + z_0.8) * sqrt(p_d / n) (``n`` scored
images, ``p_d`` the fraction on which exactly one model is right): with
``p_d`` = 0.1, 0.09 at 100 scored images, 0.30 at 9.  So when a split would
score fewer than :data:`MIN_SCORED` images, ``compare`` scores every image
instead: stratified k-fold cross-validation, each fold a compare run of its
own (``RUN/fold-K``: the fold's images scored, the rest split into train and
val, every choice made inside it), one CNN pass for all folds (the feature
cache), and each model's out-of-fold predictions pooled, so that every
labelled image is scored once.  Each strategy is represented by the model its
fold chose (the folds may choose differently: the table says how often each),
and the paired statistics are Nadeau & Bengio's corrected resampled t-test
over the folds (:class:`~transfer.comparison._representatives.CorrectedResampledT`).  A
source's own test split is always honoured (one split).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from transfer.errors import TransferError

PROTOCOLS = ("auto", "kfold", "split")
FOLDS = 5
# Below this many scored images one split cannot separate models a few points apart (module docstring: the
# smallest detectable difference at a 10 % disagreement rate is 0.09 at 100 images and grows as 1/sqrt(n)).
MIN_SCORED = 100


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How ``compare`` scores: ``split`` (one split) or ``kfold`` with ``folds`` folds; ``reason`` in words."""

    name: str
    folds: int = 0
    reason: str = ""

    def describe(self, n_scored: int) -> str:
        if self.name == "kfold":
            return f"Over {self.folds}-fold cross-validation (every one of {n_scored} labelled images scored once)"
        return f"On one split ({n_scored} test images)"


def choose(table: pd.DataFrame, protocol: str, folds: int, test_fraction: float) -> Protocol:
    """The protocol for a source's image table (``path``, ``label``, ``split``)."""
    if table["split"].notna().all():
        why = "the source's own test split is honoured"
        if protocol == "kfold":
            why += " (--protocol kfold is for a source without splits)"
        return Protocol("split", reason=why)
    smallest = int(table["label"].value_counts().min())
    k = min(folds, smallest)
    scored = round(test_fraction * len(table))
    if protocol == "split":
        return Protocol("split", reason="asked for (--protocol split)")
    if k < 2:
        if protocol == "kfold":
            raise TransferError(f"protocol=kfold needs at least 2 images of every class; the smallest class has "
                                f"{smallest}: add images to it, or give protocol=split.")
        return Protocol("split", reason=f"a class has {smallest} image: too few to cross-validate")
    if protocol == "kfold":
        return Protocol("kfold", k, "asked for (--protocol kfold)")
    if scored < MIN_SCORED:
        return Protocol("kfold", k, f"one split would score {scored} of {len(table)} images, fewer than "
                                    f"{MIN_SCORED}: every image is scored instead, once, by {k}-fold cross-validation")
    return Protocol("split", reason=f"it scores {scored} images, at least {MIN_SCORED}")


def fold_splits(table: pd.DataFrame, k: int, seed: int, val_fraction: float, groups=None) -> list[pd.DataFrame]:
    """``k`` split tables: in the i-th, fold i is ``test`` and the rest is ``train`` with a stratified, seeded
    ``val`` carved from it (as :func:`transfer.data.make_split` carves one).

    ``groups``: a group number per row (copies of one image share one, see :func:`transfer.data.group_ids`):
    each group stays in one fold, so that no fold scores a copy of an image it trained on (stratified group
    k-fold); None, or all distinct: plain stratified k-fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from transfer.data import SPLIT_COLUMNS, with_roles

    base = table.reset_index(drop=True)[["path", "label"]].copy()
    grouped = groups is not None and len(set(groups)) < len(base)
    folds = (StratifiedGroupKFold if grouped else StratifiedKFold)(n_splits=k, shuffle=True, random_state=seed)
    splits = []
    for _, test in folds.split(np.zeros(len(base)), base["label"].to_numpy(), groups if grouped else None):
        t = base.assign(split="train", source_split="")
        t.loc[test, "split"] = "test"
        splits.append(with_roles(t, val_fraction, seed)[SPLIT_COLUMNS])
    return splits


def _fewest_trained(counts: pd.Series, k: int, seed: int, val_fraction: float) -> tuple[str, int]:
    """The class with the fewest training images in any of the ``k`` folds, and that number, for images of
    ``counts`` per class (the folds as :func:`fold_splits` makes them, without copy groups)."""
    table = pd.DataFrame({"path": range(int(counts.sum())), "label": np.repeat(counts.index, counts.to_numpy())})
    fewest = (str(counts.index[0]), int(counts.iloc[0]))
    for split in fold_splits(table, k, seed, val_fraction):
        trained = split[split["split"] == "train"]["label"].value_counts().reindex(counts.index, fill_value=0)
        if int(trained.min()) < fewest[1]:
            fewest = (str(trained.idxmin()), int(trained.min()))
    return fewest


def check_folds_train(table: pd.DataFrame, protocol: Protocol, folds: int, seed: int, val_fraction: float) -> None:
    """Refuse, before any image is read, folds that would leave a class fewer than 2 training images: a
    classifier's cross-validated choice needs 2 of each, and the run would fail a fold in, after minutes.
    ``folds``: the folds asked for (``protocol.folds`` is that or the smallest class's size)."""
    counts = table["label"].value_counts()
    label, trained = _fewest_trained(counts, protocol.folds, seed, val_fraction)
    if trained >= 2:
        return
    need = int(counts.min())
    while _fewest_trained(counts.clip(lower=need), min(folds, need), seed, val_fraction)[1] < 2:
        need += 1
    short = ", ".join(f"{c!r} ({n})" for c, n in counts[counts < need].items())
    raise TransferError(
        f"Too few images of class {label!r} ({int(counts[label])}): {protocol.folds}-fold cross-validation, once each "
        f"fold's scored and validation images are held out, trains on {trained} of them, and choosing a model "
        f"needs at least 2 per class. Add images: every class needs {need} or more ({short} have fewer).")


def _pooled_rows(tables: list, preds: list) -> tuple[pd.DataFrame, dict, dict]:
    """Every model's rows pooled over the folds, a row per strategy for the folds' representatives, the
    out-of-fold predictions of each and each one's accuracy per fold."""
    from transfer.comparison._verdict import INFORMATION, representative_name

    rows, pooled, per_fold = [], {}, {}
    models = list(dict.fromkeys(m for t in tables for m in t["model"]))
    for model in models:
        mine = [t[t["model"] == model] for t in tables]
        if any(m.empty for m in mine):
            continue  # a model some fold lacks cannot be pooled (a classifier skipped in a fold)
        rows.append(_pooled_row(pd.concat(mine), model, f"{mine[0]['chosen_by'].iloc[0].split(':')[0]} (each fold)"))
        pooled[model] = pd.concat([p[model] for p in preds])
        per_fold[model] = [float(m["accuracy"].iloc[0]) for m in mine]
    for strategy in dict.fromkeys(s for t in tables for s in t["strategy"]):
        reps = pd.concat([t[(t["strategy"] == strategy) & (t["role"] != INFORMATION)] for t in tables])
        name = representative_name(strategy, "fold")
        if len(reps) != len(tables) or name in pooled:
            continue
        counts = reps["model"].value_counts()
        if len(counts) == 1 and counts.index[0] in pooled:  # every fold chose the same model: it represents
            for row in rows:
                row["preset"] = row["preset"] or row["model"] == counts.index[0]
            continue
        chosen = ", ".join(f"{m} in {c} of {len(tables)} folds" for m, c in counts.items())
        rows.append({**_pooled_row(reps, name, f"each fold's own choice: {chosen}"), "preset": True})
        pooled[name] = pd.concat([p[m] for p, m in zip(preds, reps["model"], strict=True)])
        per_fold[name] = [float(a) for a in reps["accuracy"]]
    return pd.DataFrame(rows), pooled, per_fold


CALIBRATION = ("temperature", "ece_before", "ece", "brier", "log_loss")


def _pooled_calibration(frame: pd.DataFrame, pooled: dict):
    """Each row's ECE before and after scaling over its pooled out-of-fold predictions (a fold's few test images
    alone give a noisy ECE; their mean is biased up), where every prediction kept its probabilities."""
    from transfer.calibration import confidence_error

    for i, model in enumerate(frame["model"]):
        p = pooled[model]
        correct = (p["pred_label"] == p["true_label"]).to_numpy()
        for column, source in (("ece", "score"), ("ece_before", "score_before")):
            if source in p and p[source].notna().all() and len(p):
                frame.loc[frame.index[i], column] = confidence_error(p[source].to_numpy(float), correct)


def _pooled_row(rows: pd.DataFrame, model: str, selected_on: str) -> dict:
    first = rows.iloc[0]
    same = {c: (first[c] if rows[c].nunique() == 1 else "") for c in ("backbone", "classifier", "freeze")}
    return {"strategy": first["strategy"], **same, "model": model, "eval_split": "test (out of fold)",
            "train_seconds": round(float(rows["train_seconds"].mean()), 2),
            "inference_images_per_second": float(rows["inference_images_per_second"].mean()),
            "trainable_params": int(rows["trainable_params"].max()),
            "selection_score": float(pd.to_numeric(rows["selection_score"], errors="coerce").mean()),
            "selected_on": selected_on, "run_dir": "fold-*/" + str(first["run_dir"]), "preset": False,
            # each fold's model calibrated inside its fold: the mean over the folds
            **{c: float(pd.to_numeric(rows[c], errors="coerce").mean()) for c in CALIBRATION if c in rows}}


def pooled_table(tables: list, preds: list, k: int, seed: int = 0):
    """The folds' compare tables and predictions as one table over every image (see the module docstring).

    Returns:
        ``(table, predictions, paired)``: as :func:`transfer.comparison._verdict.combine` returns, and the paired
        statistics the verdict uses.
    """
    from transfer.comparison._representatives import CorrectedResampledT
    from transfer.comparison._verdict import scored_table

    frame, pooled, per_fold = _pooled_rows(tables, preds)
    _pooled_calibration(frame, pooled)
    common = sorted(set.intersection(*(set(p.index) for p in pooled.values())))
    aligned = {m: p.loc[common] for m, p in pooled.items()}
    aligned["_y_true"] = next(iter(aligned.values()))["true_label"].to_numpy()
    paired = CorrectedResampledT(per_fold, 1 / (k - 1) if k > 1 else math.inf)
    table, preds = scored_table(frame, aligned, seed=seed, paired=paired)
    return table, preds, paired
