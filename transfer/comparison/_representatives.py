"""Each strategy's representative, chosen without the scored images, and the one model to recommend.

A strategy with several models (strategy 2's classifiers, several freeze
values or backbones) is represented in the verdict by one of them, chosen by
its ``selection_score``: a number measured before any scored image is seen
(strategy 2: the mean cross-validated accuracy on the training images, the
same folds for every classifier; the networks: validation accuracy of the
epoch kept).  Ties go to the simpler model (:data:`SIMPLER_FIRST` for the
classifiers, then fewer trained parameters).  The scored images then compare
the representatives, and nothing else: the other models' scores are shown
for information.

The model to use: the most accurate representative when it is ahead of every
other beyond noise (McNemar's test at 5 %); otherwise, among the
representatives within noise of the most accurate, the cheapest to train of
those that ``transfer export`` can ship (any of them when none can), in the order
of :data:`COST_ORDER` (:func:`cheapest`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from transfer.reports import STRATEGIES

SIGNIFICANCE = 0.05
# Ties of cross-validated accuracy go to the simpler classifier: linear before kernel before network; kNN, which
# keeps every training image and cannot be exported, last.
SIMPLER_FIRST = ("logreg", "linear_svm", "rbf_svm", "mlp", "knn")
NOT_EXPORTABLE = ("knn",)  # transfer export refuses these (see transfer.serving._export.NOT_FOLDABLE)
# The strategies from the cheapest to train to the dearest, as measured on every set at hand (the docs, "How the
# verdict is made": digits, hymenoptera, a fashion-mnist subset, 60 photos; training seconds, the features' CNN
# pass included): frozen features + a classifier, then the scratch CNN, then fine-tuning.
COST_ORDER = ("features", "scratch", "finetune")


@dataclasses.dataclass
class Decision:
    """The representatives of a comparison and the model it recommends.

    Attributes:
        representatives: ``{strategy: row}``, chosen by selection score.
        top: the most accurate representative on the scored images.
        within: the representatives within noise of ``top`` (``top`` included).
        recommended: the model to use.
        rule: why it is the one, in words.
    """

    representatives: dict
    top: pd.Series
    within: list
    recommended: pd.Series
    rule: str
    paired: object = None


def _tie_rank(row) -> int:
    if row["strategy"] == "features" and row["classifier"] in SIMPLER_FIRST:
        return SIMPLER_FIRST.index(row["classifier"])
    return len(SIMPLER_FIRST)


def representative(rows: pd.DataFrame) -> pd.Series:
    """The row of ``rows`` (one strategy's models) with the highest selection score; ties to the simpler.

    A row marked ``preset`` (cross-validation's pooled representative, chosen fold by fold) is taken as it is."""
    if "preset" in rows and rows["preset"].fillna(False).astype(bool).any():
        return rows[rows["preset"].fillna(False).astype(bool)].iloc[0]
    def key(i):
        r = rows.loc[i]
        score = float(r["selection_score"])
        return (-round(score, 9) if math.isfinite(score) else math.inf, _tie_rank(r), int(r["trainable_params"]),
                str(r["model"]))

    return rows.loc[min(rows.index, key=key)]


def representatives(frame: pd.DataFrame) -> dict:
    """``{strategy: its representative row}`` for every strategy in ``frame``."""
    return {s: representative(frame[frame["strategy"] == s]) for s in STRATEGIES if (frame["strategy"] == s).any()}


def exports(row) -> bool:
    """Whether ``transfer export`` can ship this model."""
    return not (row["strategy"] == "features" and row["classifier"] in NOT_EXPORTABLE)


class McNemar:
    """Paired statistics of two models on one set of scored images: McNemar's test, and the t-interval of the
    difference over the images."""

    name = "McNemar"

    def __init__(self, preds: dict):
        self.preds = preds

    def p(self, a: str, b: str) -> float:
        from transfer.reports import mcnemar_pvalue

        y = self.preds["_y_true"]
        return mcnemar_pvalue(y, self.preds[a]["pred_label"].to_numpy(), self.preds[b]["pred_label"].to_numpy())

    def interval(self, a: str, b: str):
        return paired_difference(self.preds, a, b)[:3]


class CorrectedResampledT:
    """Paired statistics over cross-validation folds (and repeats): Nadeau & Bengio's corrected resampled
    t-test (Machine Learning 52, 2003), whose variance ``(1/J + n_test/n_train) * s^2`` over the J folds' accuracy
    differences counts the training variance that folds sharing their training images hide.

    Args:
        fold_accuracy: ``{model: [accuracy in each fold]}``, the folds in the same order for every model.
        test_over_train: the folds' scored images over their training images (1 / (k - 1) for k folds).
    """

    name = "corrected resampled t-test over the folds"

    def __init__(self, fold_accuracy: dict, test_over_train: float):
        self.acc, self.ratio = fold_accuracy, test_over_train

    def _stats(self, a, b):
        d = np.asarray(self.acc[a], float) - np.asarray(self.acc[b], float)
        var = (1 / len(d) + self.ratio) * (d.var(ddof=1) if len(d) > 1 else math.inf)
        return float(d.mean()), var, len(d)

    def p(self, a: str, b: str) -> float:
        from scipy import stats

        mean, var, j = self._stats(a, b)
        if var == 0:
            return 1.0 if mean == 0 else 0.0
        return float(2 * stats.t.sf(abs(mean) / math.sqrt(var), j - 1)) if math.isfinite(var) else 1.0

    def interval(self, a: str, b: str, level: float = 0.95):
        from scipy import stats

        mean, var, j = self._stats(a, b)
        half = float(stats.t.ppf((1 + level) / 2, j - 1) * math.sqrt(var)) if j > 1 else math.inf
        return mean, mean - half, mean + half


def decide(frame: pd.DataFrame, preds: dict, paired=None) -> Decision:
    """The representatives, the most accurate of them, those within noise of it, and the model to use.

    ``paired``: the paired statistics (default: :class:`McNemar` on ``preds``)."""
    paired = paired or McNemar(preds)
    reps = representatives(frame)
    top = min(reps.values(), key=lambda r: (-float(r["accuracy"]), int(r["trainable_params"]), str(r["model"])))
    within = [r for r in reps.values() if r["model"] == top["model"] or paired.p(top["model"], r["model"])
              >= SIGNIFICANCE]
    shippable = [r for r in within if exports(r)]
    pick = cheapest(shippable or within)
    if len(within) == 1:
        rule = "the most accurate, beyond noise" if len(reps) > 1 else "the only strategy run"
    elif pick["model"] == top["model"]:
        rule = "the most accurate, and the cheapest to train of the models within noise of it"
    else:
        rule = (f"the cheapest to train of the models within noise of the most accurate ({top['model']}, "
                f"{top['accuracy']:.3f})")
    if shippable and len(shippable) < len(within):
        rule += ", among those that export"
    return Decision(reps, top, within, pick, rule, paired)


def cheapest(rows: list):
    """The cheapest to train of ``rows``, by :data:`COST_ORDER`, then the fewest trained parameters, then the name:
    never by the seconds measured in this run, which drift 2-4x on this host and flipped the recommendation
    between two runs of the same command (features at 1.6x the scratch CNN's time in one, 1.4x in the other)."""
    return min(rows, key=lambda r: (COST_ORDER.index(r["strategy"]) if r["strategy"] in COST_ORDER else len(COST_ORDER),
                                    int(r["trainable_params"]), str(r["model"])))


def chosen_by(frame: pd.DataFrame, i) -> str:
    """How row ``i`` of ``frame`` was scored before the test images: its selection score, in words."""
    r = frame.loc[i]
    score = float(r["selection_score"])
    return f"{r['selected_on']}: {score:.3f}" if math.isfinite(score) else str(r["selected_on"] or "")


def paired_difference(preds: dict, a: str, b: str, level: float = 0.95):
    """Accuracy of ``a`` minus ``b`` on the same images, its t-interval over the images, and the smallest
    difference a paired test at 5 % would detect with 80 % power given how often the two disagree.

    The smallest detectable difference is (z_0.975 + z_0.8) * sqrt(p_d / n) (the normal approximation of
    McNemar's test for a small difference, Connor 1987), with ``p_d`` the fraction of images exactly one of
    the two gets right (at least 1/n: two models that never disagreed could still differ).

    Returns:
        ``(difference, low, high, smallest, n)``.
    """
    from scipy import stats

    y = preds["_y_true"]
    d = (preds[a]["pred_label"].to_numpy() == y).astype(float) - (preds[b]["pred_label"].to_numpy() == y)
    n = len(d)
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else math.inf
    discordant = max(float(np.mean(d != 0)), 1 / n)
    smallest = float((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * np.sqrt(discordant / n))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half), smallest, n


def _strategies_part(decision: Decision, preds: dict) -> str:
    reps = decision.representatives
    a, b = sorted((reps["features"], reps["finetune"]), key=lambda r: -float(r["accuracy"]))
    _, _, _, smallest, n = paired_difference(preds, a["model"], b["model"])
    diff, low, high = decision.paired.interval(a["model"], b["model"])
    p = decision.paired.p(a["model"], b["model"])
    numbers = f"difference {diff:+.3f}, 95 % interval {low:+.3f} to {high:+.3f}, {decision.paired.name} p={p:.2g}"
    if p < SIGNIFICANCE:
        return f"{a['model']} ({a['accuracy']:.3f}) beats {b['model']} ({b['accuracy']:.3f}; {numbers})"
    return (f"{a['model']} ({a['accuracy']:.3f}) and {b['model']} ({b['accuracy']:.3f}) are within noise "
            f"({numbers}): with {n} scored images, differences below {smallest:.2f} cannot be told from noise "
            "(more labelled images, or --repeats, would narrow it)")


def _scratch_part(decision: Decision, preds: dict) -> str:
    reps = decision.representatives
    s = reps["scratch"]
    pre = max((r for k, r in reps.items() if k != "scratch"), key=lambda r: float(r["accuracy"]))
    p = decision.paired.p(pre["model"], s["model"])
    gain = float(pre["accuracy"]) - float(s["accuracy"])
    if p < SIGNIFICANCE and gain > 0:
        return f"pretraining bought {gain:+.3f} over the scratch CNN ({s['accuracy']:.3f}, p={p:.2g})"
    if p < SIGNIFICANCE:
        return (f"the scratch CNN ({s['accuracy']:.3f}) beats {pre['model']} ({pre['accuracy']:.3f}, p={p:.2g}): "
                "pretraining did not help here")
    return f"the scratch CNN ({s['accuracy']:.3f}) is within noise of {pre['model']} ({pre['accuracy']:.3f}, p={p:.2g})"


def verdict_parts(decision: Decision, preds: dict, protocol: str = "") -> list[str]:
    """The verdict's clauses: the strategies, the scratch CNN, and the model to use with its rule."""
    reps = decision.representatives
    parts = []
    if "features" in reps and "finetune" in reps:
        parts.append(_strategies_part(decision, preds))
    if "scratch" in reps and len(reps) > 1:
        parts.append(_scratch_part(decision, preds))
    use = decision.recommended
    ratio = cost_ratio(float(use["train_seconds"]), float(decision.top["train_seconds"]), "the most accurate model's")
    cost = "" if use["model"] == decision.top["model"] else f" ({ratio})"
    parts.append(f"use {use['model']} ({use['accuracy']:.3f}): {decision.rule}{cost}")
    if protocol:
        parts[0] = f"{protocol}: {parts[0]}"
    return parts


def cost_ratio(a: float, b: float, whose: str = "its") -> str:
    """Training time ``a`` as a fraction or multiple of ``b`` (``whose`` training time), in words."""
    if not (a > 0 and b > 0):
        return "at an unmeasured cost"
    if a <= b:
        return f"at 1/{b / a:.0f} of {whose} training time" if b / a >= 1.5 else "at about the same training time"
    return f"at {a / b:.0f}x {whose} training time" if a / b >= 1.5 else "at about the same training time"
