"""The verdict of a comparison: one table of every model on the shared images, paired statistics, one line.

Accuracy, macro-F1 and a bootstrap interval per model; McNemar's test of
each model against the best, on the images every model classified; and the
sentence that answers the user's question: which strategy, whether the
difference is real, at what cost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.runs import STRATEGIES

COMPARE_COLUMNS = [
    "strategy", "backbone", "classifier", "freeze", "model", "eval_split", "n_test", "accuracy",
    "macro_f1", "accuracy_ci_low", "accuracy_ci_high", "train_seconds", "inference_images_per_second",
    "trainable_params", "mcnemar_p_vs_best", "differs_from_best", "run_dir",
]
SIGNIFICANCE = 0.05


def _model_name(r) -> str:
    from transfer.backbones import get_backbone

    if r["strategy"] == "scratch":
        return "scratch CNN"
    short = get_backbone(r["backbone"]).name
    if r["strategy"] == "features":
        return f"{short} features + {r['classifier']}"
    return f"{short} fine-tuned (freeze {r['freeze']})"


def combine(results, run: Path, *, n_boot=2000, seed=0):
    """One row per trained model, with the paired statistics against the best.

    Args:
        results: the :class:`~transfer.runs.Result` records of every sub-run.
        run: the compare run folder (``run_dir`` is relative to it).

    Returns:
        ``(table, predictions)``: the compare table, best first, and for each
        row (by ``model``) the predictions on the shared evaluation images.
    """
    from transfer.evaluate import bootstrap_accuracy, mcnemar_pvalue

    rows, preds = [], {}
    for res in results:
        m = res.metrics()  # the numbers as the sub-run's metrics.csv holds them, whether trained now or reused
        r = {
            "strategy": res.strategy, "backbone": res.backbone if res.strategy != "scratch" else "none",
            "classifier": res.classifier if res.strategy == "features" else "",
            "freeze": str(res.freeze) if res.strategy == "finetune" else "",
            "eval_split": res.eval_split,
            "train_seconds": round(m["fit_seconds"] + m["extract_seconds"], 2),
            "inference_images_per_second": m["inference_images_per_second"],
            "trainable_params": int(res.trainable_params),
            "run_dir": str(Path(res.run_dir).relative_to(run)),
        }
        r["model"] = _model_name(r)
        preds[r["model"]] = pd.DataFrame({"true_label": res.y_true, "pred_label": res.y_pred}, index=res.paths)
        rows.append(r)
    if not rows:
        raise TransferError("No model was trained: nothing to compare.")
    # Statistics on the images every model classified (an image one run could not read is left out of all).
    common = sorted(set.intersection(*(set(p.index) for p in preds.values())))
    if not common:
        raise TransferError("The runs share no evaluation image: nothing to compare on.")
    aligned = {k: p.loc[common] for k, p in preds.items()}
    y_true = next(iter(aligned.values()))["true_label"].to_numpy()
    for r in rows:
        p = aligned[r["model"]]["pred_label"].to_numpy()
        r["n_test"] = len(common)
        r["accuracy"] = float(np.mean(p == y_true))
        from sklearn.metrics import f1_score

        r["macro_f1"] = float(f1_score(y_true, p, average="macro"))
        r["accuracy_ci_low"], r["accuracy_ci_high"] = bootstrap_accuracy(y_true, p, n_boot=n_boot, seed=seed)
    table = pd.DataFrame(rows).sort_values(["accuracy", "macro_f1", "train_seconds"],
                                           ascending=[False, False, True], kind="stable").reset_index(drop=True)
    best = aligned[table["model"].iloc[0]]["pred_label"].to_numpy()
    pvalues = [np.nan] + [mcnemar_pvalue(y_true, best, aligned[m]["pred_label"].to_numpy())
                          for m in table["model"].iloc[1:]]
    table["mcnemar_p_vs_best"] = pvalues
    table["differs_from_best"] = ["best"] + ["yes" if p < SIGNIFICANCE else "no (within noise)"
                                             for p in pvalues[1:]]
    for col in ("accuracy", "macro_f1", "accuracy_ci_low", "accuracy_ci_high"):
        table[col] = table[col].round(4)
    table["mcnemar_p_vs_best"] = table["mcnemar_p_vs_best"].round(4)
    return table[COMPARE_COLUMNS], {**aligned, "_y_true": y_true}


def _ratio(a: float, b: float) -> str:
    """``a`` as a fraction or multiple of ``b``, in words."""
    if not (a > 0 and b > 0):
        return "at an unmeasured cost"
    if a <= b:
        return f"at 1/{b / a:.0f} of its training time" if b / a >= 1.5 else "at about the same training time"
    return f"at {a / b:.0f}x its training time" if a / b >= 1.5 else "at about the same training time"


def _best_of(table: pd.DataFrame) -> dict:
    return {s: table[table["strategy"] == s].iloc[0] for s in STRATEGIES if (table["strategy"] == s).any()}


def _p_between(preds: dict, a, b) -> float:
    from transfer.evaluate import mcnemar_pvalue

    return mcnemar_pvalue(preds["_y_true"], preds[a["model"]]["pred_label"].to_numpy(),
                          preds[b["model"]]["pred_label"].to_numpy())


def _strategy_choice(table: pd.DataFrame, preds: dict):
    """``(more accurate, less accurate, p, chosen)`` of the two strategies' best rows: the cheaper one when the
    difference is within noise; None when the table lacks a strategy."""
    best_of = _best_of(table)
    if "features" not in best_of or "finetune" not in best_of:
        return None
    a, b = sorted((best_of["features"], best_of["finetune"]), key=lambda r: -r["accuracy"])
    p = _p_between(preds, a, b)
    chosen = min((a, b), key=lambda r: r["train_seconds"]) if p >= SIGNIFICANCE else a
    return a, b, p, chosen


def recommended_model(table: pd.DataFrame, preds: dict) -> str:
    """The model the verdict says to use (its ``model`` name in the table): what ``transfer export`` exports."""
    choice = _strategy_choice(table, preds)
    pick = choice[3] if choice else table.iloc[0]
    best_of = _best_of(table)
    if "scratch" in best_of and len(best_of) > 1:
        s = best_of["scratch"]
        pre = max((best_of[k] for k in best_of if k != "scratch"), key=lambda r: r["accuracy"])
        if _p_between(preds, pre, s) < SIGNIFICANCE and s["accuracy"] > pre["accuracy"]:
            pick = s
    return str(pick["model"])


def verdict(table: pd.DataFrame, preds: dict) -> str:
    """One line: which strategy to use, whether the difference is real, and what it costs."""
    best_of = _best_of(table)
    parts = []
    choice = _strategy_choice(table, preds)
    if choice:
        a, b, p, chosen = choice
        if p >= SIGNIFICANCE:
            cheap, dear = (a, b) if chosen is a else (b, a)
            parts.append(f"{cheap['model']} ({cheap['accuracy']:.3f}) is within noise of {dear['model']} "
                         f"({dear['accuracy']:.3f}, McNemar p={p:.2f}) "
                         f"{_ratio(cheap['train_seconds'], dear['train_seconds'])}: use {cheap['model']}")
        else:
            parts.append(f"{a['model']} ({a['accuracy']:.3f}) beats {b['model']} ({b['accuracy']:.3f}, "
                         f"McNemar p={p:.3g}) {_ratio(a['train_seconds'], b['train_seconds'])}: use {a['model']}")
    else:
        top = table.iloc[0]
        parts.append(f"best: {top['model']} ({top['accuracy']:.3f})")
    if "scratch" in best_of and len(best_of) > 1:
        s = best_of["scratch"]
        pre = max((best_of[k] for k in best_of if k != "scratch"), key=lambda r: r["accuracy"])
        p = _p_between(preds, pre, s)
        gain = pre["accuracy"] - s["accuracy"]
        # Against the most accurate pretrained model, named, since it need not be the one recommended above.
        if p < SIGNIFICANCE and gain > 0:
            parts.append(f"pretraining bought {gain:+.3f} over the scratch CNN ({s['accuracy']:.3f}, p={p:.3g})")
        elif p < SIGNIFICANCE:
            parts.append(f"but the scratch CNN ({s['accuracy']:.3f}) beats {pre['model']} "
                         f"({pre['accuracy']:.3f}, p={p:.3g}): pretraining did not help here, use the scratch CNN")
        else:
            parts.append(f"the scratch CNN ({s['accuracy']:.3f}) is within noise of {pre['model']} "
                         f"({pre['accuracy']:.3f}, p={p:.2f}): pretraining bought nothing significant here")
    return "; ".join(parts) + "."


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


def _summary_rows(every: pd.DataFrame, acc: pd.DataFrame, paired) -> pd.DataFrame:
    order = acc.mean().sort_values(ascending=False, kind="stable").index
    rows = []
    for model in order:
        diff, low, high = paired(order[0], model)
        rows.append({
            "strategy": every.loc[every["model"] == model, "strategy"].iloc[0], "model": model, "repeats": len(acc),
            "mean_accuracy": acc[model].mean(), "std_accuracy": acc[model].std(ddof=1) if len(acc) > 1 else np.nan,
            "min_accuracy": acc[model].min(), "max_accuracy": acc[model].max(),
            "mean_train_seconds": every.loc[every["model"] == model, "train_seconds"].mean(),
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
    every = pd.concat(tables, ignore_index=True)
    acc = every.pivot_table(index="repeat", columns="model", values="accuracy")
    on_images = _same_test_images(predictions)

    def paired(a, b):
        return _paired_images(predictions, a, b) if on_images else _paired(acc, a, b)

    summary = _summary_rows(every, acc, paired)
    best_of = {s: summary[summary["strategy"] == s].iloc[0] for s in STRATEGIES if (summary["strategy"] == s).any()}
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
                    f"{_ratio(cheap['mean_train_seconds'], dear['mean_train_seconds'])}: use {cheap['model']}")
    else:
        top = summary.iloc[0]
        line = f"best over {n} splits: {top['model']} (mean {top['mean_accuracy']:.3f})"
    return summary, line + "."


CURVE_COLUMNS = [
    "train_size", "mean_images_per_class", "min_images_per_class", "n_train", "model", "strategy", "n_test",
    "accuracy", "accuracy_ci_low", "accuracy_ci_high", "mcnemar_p_vs_best", "differs_from_best", "train_seconds",
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
    """Per size, in the curve's order: the best row of each strategy, the most accurate first."""
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
    if "mcnemar_p_vs_best" not in leaders[0] or any(len(best) < 2 for best in leaders):
        return ""
    # The leader is that size's best model, so the next strategy's best row holds its p-value against it.
    significant = [best["mcnemar_p_vs_best"].iloc[1] < SIGNIFICANCE for best in leaders]
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
    every size".  With ``mcnemar_p_vs_best`` it adds whether each lead is beyond noise.
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
