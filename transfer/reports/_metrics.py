"""Scores of one model on the evaluation split."""

from __future__ import annotations

import numpy as np
import pandas as pd


def evaluate(y_true, y_pred, scores=None, classes=None) -> dict:
    """Accuracy, macro-F1 and (with more than 5 classes and per-class scores) top-5 accuracy."""
    from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
    }
    if scores is not None and classes is not None and len(classes) > 5:  # with 5 or fewer, top-5 is always 1
        out["top5_accuracy"] = float(top_k_accuracy_score(y_true, scores, k=5, labels=list(classes)))
    return out


def per_class(y_true, y_pred, labels) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(labels), zero_division=0)
    return pd.DataFrame({"label": list(labels), "precision": p, "recall": r, "f1": f, "support": s.astype(np.int64)})


def bootstrap_accuracy(y_true, y_pred, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval of the accuracy over the evaluation images.

    Returns:
        ``(low, high)``.
    """
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)
    if len(correct) == 0:
        raise ValueError("no predictions to bootstrap")
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(n_boot, len(correct)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def mcnemar_pvalue(y_true, pred_a, pred_b) -> float:
    """McNemar's test of two classifiers on the same images (paired).

    Exact (binomial) when fewer than 25 images are classified correctly by
    exactly one of the two, else the chi-square version with continuity
    correction.  1.0 when they never disagree on correctness.
    """
    from scipy import stats

    y_true, pred_a, pred_b = map(np.asarray, (y_true, pred_a, pred_b))
    a_only = int(np.sum((pred_a == y_true) & (pred_b != y_true)))
    b_only = int(np.sum((pred_a != y_true) & (pred_b == y_true)))
    n = a_only + b_only
    if n == 0:
        return 1.0
    if n < 25:
        return float(stats.binomtest(a_only, n, 0.5).pvalue)
    chi2 = (abs(a_only - b_only) - 1) ** 2 / n
    return float(stats.chi2.sf(chi2, df=1))
