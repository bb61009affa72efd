"""Calibration: one temperature per model, fitted on images it did not train on, and how well scores mean what they say.

Every model's scores become logits ``z`` (a network's log-probabilities, a linear model's or an SVM's decision
values, kNN's smoothed vote fractions) and its probabilities ``softmax(z / T)``: temperature scaling (Guo et al.
2017, "On calibration of modern neural networks"), one parameter, which leaves every prediction as it was. ``T`` is
fitted by the likelihood of held-out images: a network's validation images, a classifier's out-of-fold decision
values on its training folds.

The measures, before (``T = 1``) and after: expected calibration error over 15 equal-width confidence bins (Guo et
al.'s), the Brier score (squared error summed over the classes, mean over the images) and the log-loss.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
# Probabilities are clipped here before a logarithm: a float32 softmax underflows to 0 far from its top class.
TINY = 1e-30
# Where the likelihood has no optimum inside: a calibration set classified without an error pushes T towards 0
# (certainty). Then T stops where the mean confidence equals Laplace's rule of succession, (correct + 1) / (n + 2):
# the accuracy those images support, not 1.
T_RANGE = (1e-2, 1e2)


def softmax(z) -> np.ndarray:
    """Row-wise softmax of logits ``z`` (n, classes), stable for any scale."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_probabilities(p) -> np.ndarray:
    """Probabilities as logits: their logarithms, clipped at :data:`TINY` (softmax gives ``p`` back)."""
    return np.log(np.maximum(np.asarray(p, np.float64), TINY))


def margins_as_logits(d) -> np.ndarray:
    """A binary model's one margin ``d`` (the positive class's) as the logits ``(-d/2, d/2)``: their softmax is the
    logistic ``1 / (1 + exp(-d))``, as a binary logistic regression gives it."""
    d = np.asarray(d, np.float64)
    return np.column_stack([-d / 2, d / 2]) if d.ndim == 1 else d


def smoothed_votes(p, k: int) -> np.ndarray:
    """kNN's vote fractions ``p`` of ``k`` neighbours with one vote added to every class (Laplace), so that no class
    has probability 0, as logits."""
    p = np.asarray(p, np.float64)
    return np.log((p * k + 1) / (k + p.shape[1]))


def _nll(z, y, t) -> float:
    z = np.asarray(z, np.float64) / t
    top = z.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_sum - z[np.arange(len(y)), y]))


def fit_temperature(logits, y) -> float:
    """The temperature that maximises the likelihood of the labels ``y`` (class indices) under ``softmax(logits/T)``.

    1.0 when there is nothing to fit (no image, or a single class among ``y`` and the logits agree on it).
    Where no error leaves the likelihood without an interior optimum, the :data:`T_RANGE` comment's rule applies.
    """
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(logits, np.float64), np.asarray(y, int)
    if len(y) == 0 or not np.isfinite(z).all() or np.ptp(z, axis=1).max() == 0:
        return 1.0
    low, high = np.log(T_RANGE)
    found = minimize_scalar(lambda s: _nll(z, y, np.exp(s)), bounds=(low, high), method="bounded",
                            options={"xatol": 1e-4})
    t = float(np.exp(found.x))
    correct = int((z.argmax(axis=1) == y).sum())
    supported = (correct + 1) / (len(y) + 2)
    if softmax(z / t).max(axis=1).mean() > supported and correct == len(y):
        t = _temperature_for_confidence(z, supported, t)
    return t


def _temperature_for_confidence(z, confidence: float, low: float) -> float:
    """The temperature (above ``low``) at which the mean top probability of ``softmax(z / T)`` is ``confidence``
    (it falls as T grows), by bisection on log T."""
    a, b = np.log(low), np.log(T_RANGE[1])
    for _ in range(60):
        mid = (a + b) / 2
        if softmax(z / np.exp(mid)).max(axis=1).mean() > confidence:
            a = mid
        else:
            b = mid
    return float(np.exp(b))


def expected_calibration_error(probs, y, bins: int = ECE_BINS) -> float:
    """Top-label ECE: over equal-width bins of the top probability, the image-weighted mean gap between each bin's
    accuracy and its mean confidence."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, int)
    return confidence_error(probs.max(axis=1), probs.argmax(axis=1) == y, bins)


def confidence_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """:func:`expected_calibration_error` from each prediction's probability and whether it is right."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).sum()
            for b in range(bins) if (which == b).any()]
    return float(np.sum(gaps) / len(correct)) if len(correct) else float("nan")


def brier_score(probs, y) -> float:
    """Squared error of the probabilities against the one-hot labels, summed over the classes, mean over images."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, int)
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def log_loss(probs, y, eps: float = 1e-15) -> float:
    """Mean negative log-probability of the true class, clipped at ``eps`` (as scikit-learn's log_loss)."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, int)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], eps, 1)).mean())


def calibration_metrics(before, after, y) -> dict:
    """ECE, Brier score and log-loss of the probabilities ``before`` and ``after`` temperature scaling."""
    return {"ece_before": expected_calibration_error(before, y), "ece": expected_calibration_error(after, y),
            "brier_before": brier_score(before, y), "brier": brier_score(after, y),
            "log_loss_before": log_loss(before, y), "log_loss": log_loss(after, y)}


def reliability(confidence, correct, bins: int = ECE_BINS):
    """A reliability diagram's bins: ``(bin centres, accuracy, mean confidence, count)``, for the non-empty bins."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    kept = [b for b in range(bins) if (which == b).any()]
    centres = (np.array(kept) + 0.5) / bins
    return (centres, np.array([correct[which == b].mean() for b in kept]),
            np.array([confidence[which == b].mean() for b in kept]), np.array([(which == b).sum() for b in kept]))


def scaled(probs, temperature: float) -> np.ndarray:
    """A network's probabilities at ``temperature``: ``softmax(log p / T)`` (its logits, shifted, divided by T)."""
    return softmax(log_probabilities(probs) / temperature)


def network_temperature(predict, rows, classes) -> tuple[float, int]:
    """A trained network's temperature, fitted on the images of ``rows`` (its validation split: path, label).

    Args:
        predict: ``paths -> (indices of the readable ones, their probabilities)``.
        classes: the run's classes, in the order of the probabilities' columns.

    Returns:
        ``(temperature, images it was fitted on)``; ``(1.0, 0)`` without a readable one.
    """
    if rows is None or len(rows) == 0:
        return 1.0, 0
    kept, probs = predict(rows["path"].tolist())
    if len(kept) == 0:
        return 1.0, 0
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in rows["label"].to_numpy()[list(kept)]])
    return fit_temperature(log_probabilities(probs), y), len(y)
