"""``compare`` under k-fold cross-validation: a compare run per fold, one report over every image.

::

    RUN/folds.csv                       each image's fold
    RUN/fold-K/                         a compare run: fold K scored, the rest its train and val
    RUN/compare.csv, RUN/report.html, RUN/config.json, RUN/plots/*.png   pooled over the folds

With ``--repeats N``: ``RUN/repeat-R/`` holds such a cross-validation, on
folds seeded ``seed + R - 1``, and ``RUN/repeats.csv`` the summary, each
image's correctness averaged over the repeats (see
:func:`transfer.comparison._verdict.summarise_repeats`).  Every fold reads the shared
feature cache: the CNN runs once per image.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from transfer.comparison._result import Comparison


def _shipped(table: pd.DataFrame, final: dict | None) -> str:
    """What ``transfer export RUN`` ships, in words (appended to the verdict)."""
    if not final or final["strategy"] != table["strategy"].iloc[0]:
        return ""
    how = ("the folds' most frequent exportable choice, its hyper-parameters cross-validated on all the images"
           if final["strategy"] == "features" else
           f"the folds' most frequent choice, trained for the {final['epochs']} epochs the folds kept (median)")
    return f" Shipped (transfer export): {final['model']}, {how}, refit on all {final['images']} images in " \
           f"{final['run_dir']}/."


def cross_validated(source, out: Path, cfg, protocol, split_options: dict, progress, log, mlflow=None):
    """The k-fold comparison (repeated ``cfg.repeats`` times); returns its :class:`~transfer.comparison.Comparison`.

    ``mlflow``: each fold's comparison is logged there, as each repeat's is without cross-validation."""
    if cfg.repeats == 1:
        return _kfold(source, out, cfg, protocol, split_options, progress, log, mlflow)[0]
    from transfer.comparison._once import _prefixed
    from transfer.comparison._verdict import summarise_repeats
    from transfer.reports import plots, publishing, write_config
    from transfer.runtime import write_csv

    tables, predictions, seconds = [], [], []
    for k in range(1, cfg.repeats + 1):
        once = dataclasses.replace(cfg, seed=cfg.seed + k - 1, repeats=1)
        log(f"repeat {k} of {cfg.repeats} (folds seeded {once.seed}) -> {out / f'repeat-{k}'}")
        start = time.perf_counter()
        done, preds = _kfold(source, out / f"repeat-{k}", once, protocol, split_options, progress,
                             _prefixed(log, f"repeat {k}"), mlflow)
        tables.append(done.table.assign(repeat=k))
        predictions.append(preds)
        seconds.append(time.perf_counter() - start)
    summary, line = summarise_repeats(tables, predictions)
    line += f" One repeat of the {protocol.folds} folds took {min(seconds):.0f}-{max(seconds):.0f} s here."
    with publishing(out) as stage:
        write_csv(pd.concat(tables, ignore_index=True), stage / "repeats-all.csv")
        write_csv(summary, stage / "repeats.csv")
        plots.repeats_png(pd.concat(tables, ignore_index=True), stage / "plots" / "repeats.png")
        write_config(stage / "config.json", {"command": "compare", "data": source.name,
                                             "compare": dataclasses.asdict(cfg), **split_options,
                                             "protocol": dataclasses.asdict(protocol), "repeats": cfg.repeats,
                                             "verdict": line, "repeat_seconds": [round(s, 1) for s in seconds]})
    return Comparison(summary, line, out, "repeats", seconds={f"repeat-{k}": round(s, 1) for k, s in
                                                              enumerate(seconds, 1)},
                      table_file=out / "repeats.csv", plots=(out / "plots" / "repeats.png",))


def _copy_groups(source, cfg, progress, log) -> tuple[list[int] | None, object]:
    """A group per image, copies (exact, or near by strategy 2's features) in one: what keeps them in one fold
    (None when there are none; strategy 2, whose features find near-copies, not compared: exact ones only); and
    the :class:`~transfer.features.Check` (its line says the groups are kept in one fold)."""
    from transfer.data import group_ids
    from transfer.features import check_table

    cfg_features = cfg.extract_config(cfg.backbones[0])
    if "features" not in cfg.strategies:
        cfg_features = dataclasses.replace(cfg_features, weights="none")  # no CNN pass: exact copies only
    found = check_table(source.table.assign(split=None), cfg_features, progress=progress, log=log)
    log(f"data check: {found.line}")
    if found.duplicates.empty:
        return None, found
    found.line += "; each image's copies are kept in one fold, so that no fold scores a copy of its training"
    return group_ids(source.table["path"].tolist(), found.duplicates), found


def _kfold(source, out: Path, cfg, protocol, split_options: dict, progress, log, mlflow=None):
    """One k-fold cross-validation: each fold's compare run, then the pooled report."""
    from transfer.comparison._once import _compare_once, _prefixed
    from transfer.comparison._protocol import fold_splits
    from transfer.reports import open_run

    out.mkdir(parents=True, exist_ok=True)
    groups, checked = _copy_groups(source, cfg, progress, log)
    splits = fold_splits(source.table, protocol.folds, cfg.seed, split_options["val_fraction"], groups)
    tables, preds, seconds = [], [], {}
    for i, split in enumerate(splits, 1):
        split.attrs["source"] = source.name
        counts = split["split"].value_counts()
        log(f"fold {i} of {protocol.folds}: {counts.get('test', 0)} images scored, trained on {counts.get('train', 0)}"
            f" (+{counts.get('val', 0)} val) -> {out / f'fold-{i}'}")
        start = time.perf_counter()
        run = open_run(split, out / f"fold-{i}", "compare", seed=cfg.seed)
        done = _compare_once(run, cfg, progress, _prefixed(log, f"fold {i}"), predictions=preds, mlflow=mlflow,
                             protocol=f"In fold {i} of {protocol.folds} ({counts.get('test', 0)} test images)")
        tables.append(done.table)
        seconds[f"fold-{i}"] = round(time.perf_counter() - start, 1)
    from transfer.comparison._protocol import pooled_table
    from transfer.comparison._refit import refit

    table, pooled, paired = pooled_table(tables, preds, protocol.folds, cfg.seed)
    start = time.perf_counter()
    final = refit(source, out, cfg, tables, str(table["strategy"].iloc[0]), log)
    seconds["refit on every image"] = round(time.perf_counter() - start, 1)
    return _pooled_report(source, out, cfg, protocol, splits, (table, pooled, paired), seconds, (final, checked))


def _pooled_report(source, out: Path, cfg, protocol, splits, pooled_table, seconds, shipped):
    from transfer.comparison._figures import inside_pictures, reliability_plot
    from transfer.comparison._verdict import verdict
    from transfer.reports import plots, publishing, write_config, write_report
    from transfer.runtime import write_csv

    start = time.perf_counter()
    table, pooled, paired = pooled_table
    final, checked = shipped
    line = verdict(table, pooled, protocol.describe(len(pooled["_y_true"])), paired) + _shipped(table, final)
    folds = pd.concat([s.loc[s["split"] == "test", ["path", "label"]].assign(fold=i)
                       for i, s in enumerate(splits, 1)], ignore_index=True)
    classes = sorted(set(folds["label"]))
    roles = (f"every image scored once, out of fold, over {protocol.folds} folds; every choice (classifier, "
             "hyper-parameters, epochs) made inside each fold's own training images")
    with publishing(out) as stage:
        drawn = []
        for strategy in dict.fromkeys(table["strategy"]):
            r = table[table["strategy"] == strategy].iloc[0]
            drawn.append(plots.confusion_matrix_png(
                pooled["_y_true"], pooled[r["model"]]["pred_label"].to_numpy(), classes,
                stage / "plots" / f"confusion-{strategy}.png", title=f"{r['model']}: out-of-fold accuracy "
                                                                     f"{r['accuracy']:.3f}"))
        drawn.append(plots.accuracy_vs_time_png(table, stage / "plots" / "accuracy-vs-time.png"))
        drawn += [p for p in [reliability_plot(table, pooled, stage / "plots" / "reliability.png")] if p is not None]
        drawn_in_fold = json.loads((out / "fold-1" / "config.json").read_text()).get("plot_inputs", {})
        inside_files, inside_said, _ = inside_pictures(out / "fold-1", None, stage, log=lambda *_: None,
                                                       previous=drawn_in_fold.get("inspect"))  # fold 1's, copied
        write_csv(folds, stage / "folds.csv")
        write_csv(table, stage / "compare.csv")
        seconds["report and plots"] = round(time.perf_counter() - start, 1)
        settings = {"command": "compare", "data": source.name, "compare": dataclasses.asdict(cfg),
                    "protocol": dataclasses.asdict(protocol), "eval_split": "test (out of fold)", "roles": roles,
                    "classes": classes, "seed": cfg.seed}
        write_report(stage / "report.html", data=source.name, verdict=line, table=table, plots=drawn,
                     split=folds.assign(split=[f"fold-{f}" for f in folds["fold"]]), classes=classes, roles=roles,
                     seconds=seconds, settings=settings, recommended=str(table["model"].iloc[0]),
                     paired_test="Nadeau & Bengio's corrected resampled t-test of each model's accuracy in each fold "
                                 "against the recommended model's", data_check=checked.line,
                     inside=(inside_files, inside_said))
        write_csv(checked.duplicates, stage / "duplicates.csv")
        write_config(stage / "config.json", {**settings, "verdict": line, "final": final, "duplicates": checked.line,
                                             "recommended_model": str(table["model"].iloc[0]),
                                             "subruns": [f"fold-{i}" for i in range(1, len(splits) + 1)],
                                             "plots": [f"plots/{p.name}" for p in drawn], "seconds": seconds})
    done = Comparison(table, line, out, "kfold", recommended=str(table["model"].iloc[0]), seconds=seconds,
                      roles=roles, table_file=out / "compare.csv", report=out / "report.html",
                      plots=tuple(out / "plots" / p.name for p in drawn))
    return done, pooled

