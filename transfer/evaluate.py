"""Scores of one model on the evaluation split."""

from __future__ import annotations

import numpy as np
import pandas as pd


def evaluate(y_true, y_pred, scores=None, classes=None) -> dict:
    """Accuracy, macro-F1 and (with >= 5 classes and per-class scores) top-5 accuracy."""
    from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

    out = {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_macro_f1": float(f1_score(y_true, y_pred, average="macro")),
    }
    if scores is not None and classes is not None and len(classes) >= 5:
        out["test_top5_accuracy"] = float(top_k_accuracy_score(y_true, scores, k=5, labels=list(classes)))
    return out


def per_class(y_true, y_pred, labels) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(labels), zero_division=0)
    return pd.DataFrame({"label": list(labels), "precision": p, "recall": r, "f1": f, "support": s.astype(np.int64)})
