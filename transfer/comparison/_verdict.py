"""The verdict of a comparison: one table of every model on the shared images, paired statistics, one line.

Accuracy, macro-F1 and a bootstrap interval per model; McNemar's test of
each model against the best, on the images every model classified; and the
sentence that answers the user's question: which strategy, whether the
difference is real, at what cost.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.comparison._representatives import SIGNIFICANCE, cost_ratio
from transfer.errors import TransferError
from transfer.reports import STRATEGIES

COMPARE_COLUMNS = [
    "role", "strategy", "backbone", "classifier", "solver", "freeze", "model", "eval_split", "n_test", "accuracy",
    "macro_f1", "accuracy_ci_low", "accuracy_ci_high", "train_seconds", "inference_images_per_second",
    "trainable_params", "selection_score", "chosen_by", "p_vs_recommended", "differs_from_recommended",
    "accuracy_without_leaks", "temperature", "ece_before", "ece", "brier", "log_loss", "run_dir",
]
RECOMMENDED, REPRESENTATIVE, INFORMATION = "recommended", "representative", "information"


def _model_name(r) -> str:
    from transfer.backbones import get_backbone

    if r["strategy"] == "scratch":
        return "scratch CNN"
    short = get_backbone(r["backbone"]).name
    if r["strategy"] == "features":
        return f"{short} features + {r['classifier']}"
    return f"{short} fine-tuned (freeze {r['freeze']})"


def _row(res, run: Path) -> dict:
    m = res.metrics()  # the numbers as the sub-run's metrics.csv holds them, whether trained now or reused
    r = {
        "strategy": res.strategy, "backbone": res.backbone if res.strategy != "scratch" else "none",
        "classifier": res.classifier if res.strategy == "features" else "",
        "freeze": str(res.freeze) if res.strategy == "finetune" else "",
        "eval_split": res.eval_split,
        "train_seconds": round(m["fit_seconds"] + m["extract_seconds"], 2),
        "inference_images_per_second": m["inference_images_per_second"],
        "trainable_params": int(res.trainable_params),
        "selection_score": res.selection_score, "selected_on": res.selected_on,
        "run_dir": str(Path(res.run_dir).relative_to(run)),
        **{k: m.get(k, math.nan) for k in ("temperature", "ece_before", "ece", "brier", "log_loss")},
    }
    r["model"] = _model_name(r)
    return r


def combine(results, run: Path, *, n_boot=2000, seed=0):
    """One row per trained model: the scores on the shared images, each strategy's representative, the
    recommended model first and the paired statistics against it.

    Args:
        results: the :class:`~transfer.reports.Result` records of every sub-run.
        run: the compare run folder (``run_dir`` is relative to it).

    Returns:
        ``(table, predictions)``: the compare table, the recommended model first, then the other
        representatives, then every other model (shown for information); and for each row (by ``model``) the
        predictions on the shared evaluation images (``_y_true``: the true labels).
    """
    rows, preds = [], {}
    for res in results:
        r = _row(res, run)
        preds[r["model"]] = pd.DataFrame({"true_label": res.y_true, "pred_label": res.y_pred, "score": res.score,
                                          "score_before": np.nan if res.score_before is None else res.score_before},
                                         index=res.paths)
        rows.append(r)
    if not rows:
        raise TransferError("No model was trained: nothing to compare.")
    # Statistics on the images every model classified (an image one run could not read is left out of all).
    common = sorted(set.intersection(*(set(p.index) for p in preds.values())))
    if not common:
        raise TransferError("The runs share no evaluation image: nothing to compare on.")
    aligned = {k: p.loc[common] for k, p in preds.items()}
    y_true = next(iter(aligned.values()))["true_label"].to_numpy()
    return scored_table(pd.DataFrame(rows), {**aligned, "_y_true": y_true}, n_boot=n_boot, seed=seed)


def scored_table(frame: pd.DataFrame, preds: dict, *, n_boot=2000, seed=0, paired=None):
    """:func:`combine`'s table from one row per model (with ``model``, ``strategy``, ``selection_score``,
    ``selected_on``, ``train_seconds``...) and each model's predictions on the same images."""
    from sklearn.metrics import f1_score

    from transfer.reports import bootstrap_accuracy

    y_true = preds["_y_true"]
    scores = []
    for model in frame["model"]:
        p = preds[model]["pred_label"].to_numpy()
        low, high = bootstrap_accuracy(y_true, p, n_boot=n_boot, seed=seed)
        scores.append({"n_test": len(y_true), "accuracy": float(np.mean(p == y_true)),
                       "macro_f1": float(f1_score(y_true, p, average="macro")), "accuracy_ci_low": low,
                       "accuracy_ci_high": high})
    frame = frame.drop(columns=[c for c in scores[0] if c in frame]).reset_index(drop=True)
    frame = pd.concat([frame, pd.DataFrame(scores)], axis=1)
    return _ordered(frame, preds, paired), preds


def _ordered(frame: pd.DataFrame, preds: dict, paired=None) -> pd.DataFrame:
    """The table in its one order (recommended, other representatives, the rest), with its p-values."""
    from transfer.comparison._representatives import chosen_by, decide

    decision = decide(frame, preds, paired)
    frame = frame.assign(chosen_by=[chosen_by(frame, i) for i in frame.index])
    reps = {decision.recommended["model"]} | {r["model"] for r in decision.representatives.values()}
    frame["role"] = [RECOMMENDED if m == decision.recommended["model"] else REPRESENTATIVE if m in reps
                     else INFORMATION for m in frame["model"]]
    rank = frame["role"].map({RECOMMENDED: 0, REPRESENTATIVE: 1, INFORMATION: 2})
    # Ties by measured time would reorder the table from run to run: by selection score and name instead.
    table = frame.assign(_rank=rank).sort_values(["_rank", "accuracy", "macro_f1", "selection_score", "model"],
                                                 ascending=[True, False, False, False, True], kind="stable")
    table = table.drop(columns="_rank").reset_index(drop=True)
    best = decision.recommended["model"]
    pvalues = [np.nan] + [decision.paired.p(best, m) for m in table["model"].iloc[1:]]
    table["p_vs_recommended"] = pvalues
    table["differs_from_recommended"] = [RECOMMENDED] + [
        "no (within noise)" if p >= SIGNIFICANCE else "yes: more accurate" if acc > table["accuracy"].iloc[0]
        else "yes: less accurate" for p, acc in zip(pvalues[1:], table["accuracy"].iloc[1:], strict=True)]
    for col in ("accuracy", "macro_f1", "accuracy_ci_low", "accuracy_ci_high", "p_vs_recommended",
                "selection_score"):
        table[col] = table[col].astype(float).round(4)
    return table.reindex(columns=COMPARE_COLUMNS)


def recommended_model(table: pd.DataFrame, preds: dict | None = None) -> str:
    """The model the verdict says to use (its ``model`` name): the table's first row, what ``transfer export``
    exports by default."""
    return str(table["model"].iloc[0])


def verdict(table: pd.DataFrame, preds: dict, protocol: str = "", paired=None) -> str:
    """One line: the protocol, the two strategies' representatives against each other (their difference, its
    95 % interval, whether it is real and the smallest difference these images could show), the scratch CNN,
    and the model to use with the rule that chose it.

    Args:
        table: from :func:`combine` (the recommended model first).
        preds: its predictions.
        protocol: how the images were scored, in words (e.g. "On one split (270 test images)").
        paired: the paired statistics (default: McNemar's test on ``preds``; cross-validation gives its own).
    """
    from transfer.comparison._representatives import decide, verdict_parts

    return ("; ".join(verdict_parts(decide(table, preds, paired), preds, protocol)) + ".").replace("..", ".")


def _paired(acc: pd.DataFrame, a: str, b: str, level: float = 0.95):
    """Mean of ``a - b`` over the repeats and its t-interval (the repeats are paired: the same split for both)."""
    from scipy import stats

    d = (acc[a] - acc[b]).to_numpy(float)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def _paired_images(predictions: list, a: str, b: str, level: float = 0.95):
    """Mean of ``a - b`` and its t-interval over the test images, each image's correctness averaged over the
    repeats: for repeats on the same test images, whose spread over repeats shows training noise only."""
    from scipy import stats

    common = sorted(set.intersection(*(set(p[m].index) for p in predictions for m in (a, b))))
    correct = {m: np.mean([(p[m].loc[common, "pred_label"] == p[m].loc[common, "true_label"]).to_numpy(float)
                           for p in predictions], axis=0) for m in (a, b)}
    d = correct[a] - correct[b]
    half = float(stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def _same_test_images(predictions) -> bool:
    if not predictions or any(p is None for p in predictions):
        return False
    sets = [frozenset().union(*(set(f.index) for f in p.values() if isinstance(f, pd.DataFrame)))
            for p in predictions]
    return all(s == sets[0] for s in sets)


def representative_name(strategy: str, unit: str = "repeat") -> str:
    """The name of a strategy's representative over repeats or folds (``unit``), each of which chose its own."""
    return {"features": f"features (each {unit}'s choice)", "finetune": f"fine-tuned (each {unit}'s choice)",
            "scratch": "scratch CNN"}[strategy]


def _with_representatives(tables: list, predictions: list | None):
    """Every repeat's rows, plus per repeat a row for each strategy's representative (under
    :func:`representative_name`, with its predictions): the repeats compare the strategies through these."""
    rows = []
    for k, t in enumerate(tables):
        if "role" not in t:  # a table without roles: each strategy's first row represents it
            t["role"] = np.where(t.duplicated("strategy"), INFORMATION, REPRESENTATIVE)
        reps = t[t["role"] != INFORMATION]
        for _, r in reps.iterrows():
            name = representative_name(r["strategy"])
            if name == r["model"]:
                continue
            rows.append(r.to_frame().T.assign(model=name, chosen=r["model"], role=REPRESENTATIVE))
            if predictions and predictions[k] is not None:
                predictions[k][name] = predictions[k][r["model"]]
        t.loc[t["role"] != INFORMATION, "role"] = REPRESENTATIVE
    every = pd.concat(tables + rows, ignore_index=True)
    every.loc[every["model"] == "scratch CNN", "role"] = REPRESENTATIVE
    return every


def _summary_rows(every: pd.DataFrame, acc: pd.DataFrame, paired) -> pd.DataFrame:
    reps = set(every.loc[every["model"].str.endswith("'s choice)") | (every["model"] == "scratch CNN"), "model"])
    means = acc.mean()
    order = sorted(acc.columns, key=lambda m: (m not in reps, -means[m], m))
    rows = []
    for model in order:
        diff, low, high = paired(order[0], model)
        mine = every[every["model"] == model]
        chosen = mine["chosen"].dropna().value_counts() if "chosen" in mine else pd.Series(dtype=int)
        rows.append({
            "strategy": mine["strategy"].iloc[0], "model": model, "repeats": len(acc),
            "role": "representative" if model in reps else "information",
            "chosen": ", ".join(f"{m} {c}/{len(acc)}" for m, c in chosen.items()),
            "mean_accuracy": acc[model].mean(), "std_accuracy": acc[model].std(ddof=1) if len(acc) > 1 else np.nan,
            "min_accuracy": acc[model].min(), "max_accuracy": acc[model].max(),
            "mean_train_seconds": mine["train_seconds"].astype(float).mean(),
            "diff_vs_best": diff, "diff_ci_low": low, "diff_ci_high": high,
            "differs_from_best": "best" if model == order[0] else ("yes" if low > 0 else "no (within noise)"),
        })
    return pd.DataFrame(rows).round({**{c: 4 for c in ("mean_accuracy", "std_accuracy", "min_accuracy",
                                                         "max_accuracy", "diff_vs_best", "diff_ci_low",
                                                         "diff_ci_high")}, "mean_train_seconds": 2})


def summarise_repeats(tables: list, predictions: list | None = None) -> tuple[pd.DataFrame, str]:
    """The comparison over repeats: per model the mean and spread of the accuracy, the paired difference to the
    best model with its 95 % t-interval, and the verdict between the two strategies' best models.

    When every repeat was scored on the same test images (a source with a fixed test split), the interval is
    over those images, each image's correctness averaged over the repeats: the repeats then vary the training
    only, and an interval over them would call a difference of one image, made in every repeat, certain.
    Otherwise (a new split each repeat) it is over the repeats.

    Args:
        tables: one compare table per repeat, each with a ``repeat`` column.
        predictions: per repeat, ``{model: DataFrame(true_label, pred_label) indexed by path}``
            (:func:`combine`'s second value); without it, the interval is over the repeats.

    Returns:
        ``(summary, verdict)``: ``repeats.csv``, best mean first, and one line.
    """
    every = _with_representatives([t.copy() for t in tables], predictions)
    every["accuracy"] = every["accuracy"].astype(float)
    # Only models of every repeat are compared over the repeats (a cross-validation's pooled choice of one repeat
    # may be a plain model in another, where every fold chose the same).
    acc = every.pivot_table(index="repeat", columns="model", values="accuracy").dropna(axis=1)
    on_images = _same_test_images(predictions)

    def paired(a, b):
        return _paired_images(predictions, a, b) if on_images else _paired(acc, a, b)

    summary = _summary_rows(every, acc, paired)
    reps = summary[summary["role"] == "representative"]
    best_of = {s: reps[reps["strategy"] == s].iloc[0] for s in STRATEGIES if (reps["strategy"] == s).any()}
    n = len(acc)
    if "features" in best_of and "finetune" in best_of:
        a, b = best_of["features"], best_of["finetune"]
        diff, low, high = paired(a["model"], b["model"])
        over = (f"over the {acc.shape[0]} repeats' shared test images" if on_images else f"over {n} splits")
        interval = f"features minus fine-tuned {diff:+.3f}, 95 % interval {low:+.3f} to {high:+.3f} {over}"
        if low > 0 or high < 0:
            win, lose = (a, b) if diff > 0 else (b, a)
            line = (f"{win['model']} (mean {win['mean_accuracy']:.3f}) beats {lose['model']} (mean "
                    f"{lose['mean_accuracy']:.3f}; {interval}): use {win['model']}")
        else:
            cheap, dear = sorted((a, b), key=lambda r: r["mean_train_seconds"])
            line = (f"{cheap['model']} (mean {cheap['mean_accuracy']:.3f}) is within noise of {dear['model']} (mean "
                    f"{dear['mean_accuracy']:.3f}; {interval}) "
                    f"{cost_ratio(cheap['mean_train_seconds'], dear['mean_train_seconds'])}: use {cheap['model']}")
    else:
        top = summary.iloc[0]
        line = f"best over {n} splits: {top['model']} (mean {top['mean_accuracy']:.3f})"
    return summary, line + "."


CURVE_COLUMNS = [
    "train_size", "mean_images_per_class", "min_images_per_class", "n_train", "model", "strategy", "n_test",
    "role", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "p_vs_recommended", "differs_from_recommended",
    "train_seconds",
]


def summarise_train_sizes(tables: list) -> tuple[pd.DataFrame, str]:
    """The learning curve: every model at every training size, and the verdict over the sizes.

    Args:
        tables: one compare table per size, smallest first (``all`` last), each best first, with the
            columns ``train_size``, ``mean_images_per_class``, ``min_images_per_class`` and ``n_train`` added.

    Returns:
        ``(curve, verdict)``: ``learning-curve.csv`` (the columns of :data:`CURVE_COLUMNS` the tables have)
        and one line (see :func:`learning_curve_verdict`).
    """
    every = pd.concat(tables, ignore_index=True)
    curve = every[[c for c in CURVE_COLUMNS if c in every.columns]]
    return curve, learning_curve_verdict(curve)


def _leaders(curve: pd.DataFrame) -> list:
    """Per size, in the curve's order: each strategy's representative (chosen without the test images; with no
    ``role`` column, its most accurate row), the most accurate first."""
    if "role" in curve:
        curve = curve[curve["role"] != INFORMATION]
    return [rows.sort_values("accuracy", ascending=False, kind="stable").drop_duplicates("strategy")
            for _, rows in curve.groupby("train_size", sort=False)]


def _at(best: pd.DataFrame) -> str:
    """Where a size lies on the curve: its training images per class."""
    return f"{best['mean_images_per_class'].iloc[0]:g}"


def _sizes_text(sizes: list) -> str:
    sizes = [str(s) for s in sizes]
    return sizes[0] if len(sizes) == 1 else f"{', '.join(sizes[:-1])} and {sizes[-1]}"


def _noise(leaders: list) -> str:
    """Whether each size's leader is ahead of the next strategy's best model beyond noise ('' without p-values)."""
    if "p_vs_recommended" not in leaders[0] or any(len(best) < 2 for best in leaders):
        return ""
    # A lead is significant where the leader is the recommended model (its p-value empty) and the next
    # strategy's representative differs from it; where it is not recommended, it is within noise of the one that
    # is (the recommendation takes the most accurate when it is ahead beyond noise).
    significant = [bool(np.isnan(best["p_vs_recommended"].iloc[0]))
                   and best["p_vs_recommended"].iloc[1] < SIGNIFICANCE for best in leaders]
    lead = "the lead over the next strategy's best model"
    if all(significant):
        return f"{lead} is significant at every size (McNemar p < {SIGNIFICANCE})"
    if not any(significant):
        return f"{lead} is within noise at every size (McNemar p >= {SIGNIFICANCE})"
    sizes = [best["train_size"].iloc[0] for best in leaders]
    return (f"{lead} is significant (McNemar p < {SIGNIFICANCE}) at sizes "
            f"{_sizes_text([s for s, y in zip(sizes, significant, strict=True) if y])}, within noise at sizes "
            f"{_sizes_text([s for s, y in zip(sizes, significant, strict=True) if not y])}")


def learning_curve_verdict(curve: pd.DataFrame) -> str:
    """One line over the sizes: which strategy leads where, the crossover if the leader changes, and noise.

    The leader of a size is the strategy of its most accurate model; where it changes, the line says
    "below ~N images per class, X; from N on, Y" (N: the first size where Y leads), else "X leads at
    every size".  With ``p_vs_recommended`` it adds whether each lead is beyond noise.
    """
    leaders = _leaders(curve)
    spans: list[list] = []  # consecutive sizes with the same leading strategy
    for best in leaders:
        if spans and spans[-1][0]["strategy"].iloc[0] == best["strategy"].iloc[0]:
            spans[-1].append(best)
        else:
            spans.append([best])

    def named(span):
        return " then ".join(dict.fromkeys(best["model"].iloc[0] for best in span))

    def accuracies(span):
        first, last = span[0], span[-1]
        if len(span) == 1:
            return f"{first['accuracy'].iloc[0]:.3f} at {_at(first)} images per class"
        return f"{first['accuracy'].iloc[0]:.3f} at {_at(first)} to {last['accuracy'].iloc[0]:.3f} at {_at(last)} " \
               "images per class"

    if curve["strategy"].nunique() == 1:
        line = f"only {curve['strategy'].iloc[0]} ran: {named(leaders)} ({accuracies(leaders)})"
    elif len(spans) == 1:
        line = f"{named(leaders)} leads at every size ({accuracies(leaders)})"
    else:
        parts = [f"below ~{_at(spans[1][0])} images per class, {named(spans[0])} ({accuracies(spans[0])})"]
        for span, following in zip(spans[1:-1], spans[2:], strict=False):
            parts.append(f"from {_at(span[0])} to below ~{_at(following[0])}, {named(span)} ({accuracies(span)})")
        parts.append(f"from {_at(spans[-1][0])} on, {named(spans[-1])} ({accuracies(spans[-1])})")
        line = "; ".join(parts)
    noise = _noise(leaders)
    return line + (f"; {noise}" if noise else "") + "."
