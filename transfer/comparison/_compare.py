"""``transfer compare``: both strategies and a from-scratch baseline on one split, in one report.

A compare run folder holds one ``split.csv`` that every sub-run shares, a
sub-run folder per trained model family, and the combined report; strategy 2
and the head stage of strategy 1 read the backbone's features from the shared
feature cache (:mod:`transfer.features._cache`), where a CNN pass is made once::

    RUN/split.csv                      the one split
    RUN/BACKBONE/classify/             strategy 2 (a `classify` run)
    RUN/BACKBONE/finetune-FREEZE/      strategy 1, one per freeze value
    RUN/scratch/                       the CNN trained from random init
    RUN/compare.csv, RUN/report.html, RUN/config.json, RUN/plots/*.png

With ``--repeats N``, each repeat is such a folder ``RUN/repeat-K``; with
``--train-sizes``, each size is one, ``RUN/size-N`` (on ``RUN/split.csv`` cut
to N training images per class), beside ``RUN/learning-curve.csv``.

The source is read and split once; the sub-runs receive the split itself
and return :class:`~transfer.reports.Result` records, which
:mod:`transfer.comparison._verdict` combines.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from transfer.comparison._config import DEMO_DATA, CompareConfig
from transfer.comparison._once import _compare_once, _prefixed
from transfer.comparison._result import Comparison
from transfer.data import TEST_FRACTION, VAL_FRACTION
from transfer.errors import TransferError
from transfer.runtime import keeps_file_names


def _repeated(source, out: Path, cfg: CompareConfig, split_options: dict, progress, log, mlflow=None):
    """``cfg.repeats`` comparisons, repeat k on the split seeded ``cfg.seed + k - 1``; the summary of all."""

    from transfer.comparison._verdict import summarise_repeats
    from transfer.reports import open_run, plots, publishing, write_config
    from transfer.runtime import write_csv

    tables, seconds, predictions = [], [], []
    for k in range(1, cfg.repeats + 1):
        once = dataclasses.replace(cfg, seed=cfg.seed + k - 1, repeats=1)
        log(f"repeat {k} of {cfg.repeats} (seed {once.seed}) -> {out / f'repeat-{k}'}")
        start = time.perf_counter()
        run = open_run(source, out / f"repeat-{k}", "compare", seed=once.seed, **split_options)
        table = _compare_once(run, once, progress, _prefixed(log, f"repeat {k}"), predictions, mlflow).table
        tables.append(table.assign(repeat=k))
        seconds.append(time.perf_counter() - start)
    summary, line = summarise_repeats(tables, predictions)
    every = pd.concat(tables, ignore_index=True)
    line += f" One repeat took {min(seconds):.0f}-{max(seconds):.0f} s here."
    with publishing(out) as stage:
        write_csv(every, stage / "repeats-all.csv")
        write_csv(summary, stage / "repeats.csv")
        plots.repeats_png(every, stage / "plots" / "repeats.png")
        write_config(stage / "config.json", {"command": "compare", "data": source.name,
                                             "compare": dataclasses.asdict(cfg), **split_options,
                                             "repeats": cfg.repeats, "verdict": line,
                                             "repeat_seconds": [round(s, 1) for s in seconds]})
    return Comparison(summary, line, out, "repeats", seconds={f"repeat-{k}": round(s, 1) for k, s in
                                                              enumerate(seconds, 1)},
                      table_file=out / "repeats.csv", plots=(out / "plots" / "repeats.png",))


def _subsets(run, cfg: CompareConfig, log) -> dict:
    """``{size: split}``: the run's split cut to each of ``cfg.train_sizes`` (see :func:`train_subset`).

    A size that leaves the same training images as a larger one (it is at least every class's count) is left
    out, and said so: it would train the same models again.
    """
    from transfer.data import train_subset

    counts = run.rows("train")["label"].value_counts().sort_index()
    largest = max((int(s) for s in cfg.train_sizes if s != "all"), default=0)
    if (counts < largest).any():
        log(f"training images per class: {', '.join(f'{c} {k}' for c, k in counts.items())}; a size above a "
            "class's count takes all of that class")
    subsets, seen = {}, {}
    for size in reversed(cfg.train_sizes):  # the largest first, so that a size equal to a larger one goes
        subset = train_subset(run.split, size, cfg.seed)
        subset.attrs["source"] = run.data
        images = frozenset(subset.loc[subset["split"] == "train", "path"])
        if images in seen:
            log(f"train size {size} takes the same {len(images)} training images as size {seen[images]}: left out")
            continue
        seen[images] = size
        subsets[size] = subset
    return dict(reversed(subsets.items()))


def _learning_curve(source, out: Path, cfg: CompareConfig, split_options: dict, progress, log, mlflow=None):
    """One comparison per training size, on nested subsets of one split's training images; the curve of all."""

    from transfer.comparison._verdict import summarise_train_sizes
    from transfer.reports import open_run, plots, publishing, write_config
    from transfer.runtime import write_csv

    run = open_run(source, out, "compare", seed=cfg.seed, **split_options)
    once = dataclasses.replace(cfg, train_sizes=())
    tables, seconds = [], {}
    for size, subset in _subsets(run, cfg, log).items():
        counts = subset.loc[subset["split"] == "train", "label"].value_counts()
        log(f"train size {size}: {counts.sum()} training images ({counts.min()}-{counts.max()} per class) -> "
            f"{out / f'size-{size}'}")
        start = time.perf_counter()
        sub = open_run(subset, out / f"size-{size}", "compare", seed=cfg.seed)
        table = _compare_once(sub, once, progress, _prefixed(log, f"size {size}"), mlflow=mlflow).table
        tables.append(table.assign(train_size=size, mean_images_per_class=round(float(counts.mean()), 1),
                                   min_images_per_class=int(counts.min()), n_train=int(counts.sum())))
        seconds[size] = round(time.perf_counter() - start, 1)
    curve, line = summarise_train_sizes(tables)
    with publishing(out) as stage:
        write_csv(curve, stage / "learning-curve.csv")
        plots.learning_curve_png(curve, stage / "plots" / "learning-curve.png")
        write_config(stage / "config.json", {**run.settings(), "compare": dataclasses.asdict(cfg),
                                             "train_sizes_run": list(seconds), "verdict": line,
                                             "size_seconds": seconds})
    return Comparison(curve, line, out, "train_sizes", seconds={f"size-{k}": v for k, v in seconds.items()},
                      roles=run.roles, table_file=out / "learning-curve.csv",
                      plots=(out / "plots" / "learning-curve.png",))


@keeps_file_names()
def compare(data=DEMO_DATA, out=None, cfg: CompareConfig | None = None, *, val_fraction=VAL_FRACTION,
            test_fraction=TEST_FRACTION, progress=True, mlflow=None, log=print) -> tuple[pd.DataFrame, str]:
    """Run strategy 2, strategy 1 and the scratch baseline on one split; write the combined report.

    With ``cfg.repeats`` above 1, the whole comparison runs once per seed
    (``seed``, ``seed + 1``, ...): on a new stratified split each time for a
    source without splits, on the source's own splits with another carved
    validation split and other training seeds otherwise; each repeat is a
    compare run folder ``out/repeat-K``, sharing one feature cache.

    With ``cfg.train_sizes``, a learning curve: the source is split once
    (``out/split.csv``), and the whole comparison runs once per size on that
    split with its training images cut to at most that many per class
    (nested, seeded subsets; see :func:`transfer.data.train_subset`), its
    validation images cut in proportion and its test images unchanged: each size is a compare run folder
    ``out/size-N`` (``out/size-all``), sharing one feature cache.  Writes
    ``out/learning-curve.csv`` and ``out/plots/learning-curve.png``.

    Args:
        data: as for every command: a folder, a CSV manifest, ``digits`` or ``fashion-mnist``.
        out: the run folder (see the module docstring for its layout).
        cfg: the options; :class:`CompareConfig` defaults when omitted.
        mlflow: log each finished comparison and its models to MLflow at this tracking URI
            (``transfer.reports.DEFAULT_URI``: MLflow's own default, ./mlflow.db and ./mlruns/); None: not.

    Returns:
        ``(table, verdict)``: the compare table (``compare.csv``), best first,
        and the one-line verdict; with repeats, the per-model summary
        (``repeats.csv``: mean, spread, paired difference to the best and its
        interval) and the verdict over all repeats; with train sizes, the
        learning curve (``learning-curve.csv``: every model at every size)
        and the verdict over the sizes (the crossover, if any).
    """
    from transfer.reports import check_mlflow, check_run_folder, claim

    cfg = (cfg or CompareConfig())
    check_mlflow(mlflow)
    if out is None:
        raise TransferError("out is required: the folder the compare run writes to.")
    out = Path(out)
    check_run_folder(out, "compare")
    with claim(out, "compare", log=log):
        return _compare_in(data, out, cfg, {"val_fraction": val_fraction, "test_fraction": test_fraction},
                           progress, log, mlflow)


def _compare_in(data, out: Path, cfg: CompareConfig, split_options: dict, progress, log, mlflow=None):
    """:func:`compare` in its claimed run folder."""
    from transfer.comparison._protocol import choose
    from transfer.data import resolve_source
    from transfer.finetuning import check_freeze
    from transfer.reports import open_run

    source = resolve_source(data)  # a wrong data fails here, before TensorFlow is loaded
    for backbone in cfg.backbones if "finetune" in cfg.strategies else ():
        # every freeze value, before hours of training run into a typo
        check_freeze(backbone, cfg.finetune_config(backbone, "none").image_size, cfg.freeze)
    if cfg.train_sizes:
        return _learning_curve(source, out, cfg, split_options, progress, log, mlflow)
    protocol = choose(source.table, cfg.protocol, cfg.folds, split_options["test_fraction"])
    log(f"protocol: {'one split' if protocol.name == 'split' else f'{protocol.folds}-fold cross-validation'} "
        f"({protocol.reason})")
    if protocol.name == "kfold":
        from transfer.comparison._kfold import cross_validated
        from transfer.comparison._protocol import check_folds_train

        check_folds_train(source.table, protocol, cfg.folds, cfg.seed, split_options["val_fraction"])

        return cross_validated(source, out, cfg, protocol, split_options, progress, log, mlflow)
    if cfg.repeats > 1:
        return _repeated(source, out, cfg, split_options, progress, log, mlflow)
    run = open_run(source, out, "compare", seed=cfg.seed, **split_options)
    return _compare_once(run, cfg, progress, log, mlflow=mlflow)
