"""``transfer compare``: both strategies and a from-scratch baseline on one split, in one report.

A compare run folder holds one ``split.csv`` that every sub-run shares, a
sub-run folder per trained model family, and the combined report; strategy 2
and the head stage of strategy 1 read the backbone's features from the shared
feature cache (:mod:`transfer.feature_cache`), where a CNN pass is made once::

    RUN/split.csv                      the one split
    RUN/BACKBONE/classify/             strategy 2 (a `classify` run)
    RUN/BACKBONE/finetune-FREEZE/      strategy 1, one per freeze value
    RUN/scratch/                       the CNN trained from random init
    RUN/compare.csv, RUN/report.html, RUN/config.json, RUN/plots/*.png

With ``--repeats N``, each repeat is such a folder ``RUN/repeat-K``; with
``--train-sizes``, each size is one, ``RUN/size-N`` (on ``RUN/split.csv`` cut
to N training images per class), beside ``RUN/learning-curve.csv``.

The source is read and split once; the sub-runs receive the split itself
and return :class:`~transfer.runs.Result` records, which
:mod:`transfer.verdict` combines.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from transfer.backbones import DEFAULT_BACKBONE
from transfer.classifiers import DEFAULT_CLASSIFIERS, SEARCH_SIZE
from transfer.cross_validation import FOLDS, PROTOCOLS
from transfer.errors import TransferError
from transfer.features import ExtractConfig
from transfer.finetuning import FinetuneConfig
from transfer.runs import STRATEGIES
from transfer.scratch import ScratchConfig
from transfer.splits import TEST_FRACTION, VAL_FRACTION

CONFIGS = {"features": ExtractConfig, "finetune": FinetuneConfig, "scratch": ScratchConfig}
# The digits demo (`transfer compare` with no arguments, CompareConfig.demo()): 96 px (8-px digits gain
# nothing at 224 px but time) and no augmentation (a mirrored digit is another digit).
DEMO_DATA = "digits"
DEMO_OPTIONS = {"image_size": 96, "augment": False}


def _feeds(name: str, *strategies: str, default=dataclasses.MISSING):
    """A compare option that is ``name`` of the configs of ``strategies``, with the first one's default
    unless compare has its own."""
    return dataclasses.field(default=getattr(CONFIGS[strategies[0]], name) if default is dataclasses.MISSING
                             else default, metadata={"strategies": strategies, "name": name})


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Options of ``transfer compare``.

    Each option passes on to the strategies' own configs (see
    :meth:`config_for`) and takes its default from there: the image options
    and ``weights`` to both strategies, so both see the same pixels.

    Attributes:
        backbones: registry names; every strategy runs for each.
        strategies: any of ``features``, ``finetune``, ``scratch``.
        classifiers: strategy 2's scikit-learn classifiers.
        search_size: their grid searches see a stratified sample of at most
            this many training images (None: all); each refit sees all.
        freeze: strategy 1 runs once per value (``all``, ``none``, a count,
            a fraction or a layer name, as ``transfer finetune --freeze``).
        scratch_size: input size of the from-scratch CNN (None: the images' own, within 32-64 px).
        scratch_epochs: its epoch limit (early stopping on validation loss).
        repeats: run the whole comparison this many times, on splits (and
            training seeds) ``seed``, ``seed + 1``, ...; the report is then the
            mean, spread and paired differences over the repeats.
        train_sizes: a learning curve when not empty: the whole comparison
            once per size, on nested, seeded subsets of the one split's
            training images with at most that many per class (``all``: every
            one), scored on the same test images (see :func:`compare`).  A
            comma-separated string or a tuple of positive integers and
            ``all``; sizes of at least 2 with the ``features`` strategy (its
            cross-validation needs 2 images per class).  Not with ``repeats``
            above 1: a learning curve runs on one split.
        protocol: ``auto`` (default): stratified k-fold cross-validation when one split would score fewer
            than :data:`~transfer.cross_validation.MIN_SCORED` images, else one split; ``kfold`` or ``split``
            to force either (a source's own test split is always honoured; a learning curve runs on one split).
        folds: k of k-fold (at most the smallest class's image count).
    """

    backbones: tuple[str, ...] = (DEFAULT_BACKBONE,)
    strategies: tuple[str, ...] = STRATEGIES
    classifiers: tuple[str, ...] = DEFAULT_CLASSIFIERS
    search_size: int | None = SEARCH_SIZE
    layer: str = _feeds("layer", "features")
    pooling: str | None = _feeds("pooling", "features")
    flip_average: bool = _feeds("flip_average", "features")
    image_size: int | None = _feeds("image_size", "features", "finetune")
    resize: str = _feeds("resize", "features", "finetune", "scratch")
    batch_size: int = _feeds("batch_size", "features", "finetune", "scratch")
    weights: str = _feeds("weights", "features", "finetune")
    engine: str = _feeds("engine", "features", "finetune")
    executor: str = _feeds("executor", "features")
    actors: int | None = _feeds("actors", "features")
    actor_cpus: float = _feeds("actor_cpus", "features")
    actor_gpus: float = _feeds("actor_gpus", "features")
    freeze: tuple[str, ...] = (FinetuneConfig.freeze,)
    head: str = _feeds("head", "finetune")
    head_epochs: int = _feeds("head_epochs", "finetune")
    epochs: int = _feeds("epochs", "finetune")
    lr: float = _feeds("lr", "finetune")
    lr_mult: float = _feeds("lr_mult", "finetune")
    augment: bool = _feeds("augment", "finetune", "scratch")
    patience: int = _feeds("patience", "finetune")
    precision: str = _feeds("precision", "finetune")
    scratch_size: int | None = _feeds("image_size", "scratch")
    scratch_epochs: int = _feeds("epochs", "scratch")
    seed: int = _feeds("seed", "finetune", "scratch")
    repeats: int = 1
    train_sizes: tuple[str, ...] = ()
    protocol: str = "auto"
    folds: int = FOLDS

    @classmethod
    def demo(cls, **options) -> CompareConfig:
        """The settings of the digits demo (``transfer compare`` with no arguments); ``options`` override them."""
        return cls(**{**DEMO_OPTIONS, **options})

    def config_for(self, strategy: str, **fixed):
        """The config of one strategy (``features``, ``finetune`` or ``scratch``) that these options make."""
        given = {f.metadata["name"]: getattr(self, f.name) for f in dataclasses.fields(self)
                 if strategy in f.metadata.get("strategies", ())}
        return CONFIGS[strategy](**{**given, **fixed})

    def extract_config(self, backbone) -> ExtractConfig:
        return self.config_for("features", backbone=backbone)

    def finetune_config(self, backbone, freeze) -> FinetuneConfig:
        return self.config_for("finetune", backbone=backbone, freeze=freeze)

    def scratch_config(self) -> ScratchConfig:
        return self.config_for("scratch")

    def validated(self) -> CompareConfig:
        """Check every option before any work; comma-separated strings become tuples.

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        from transfer.backbones import get_backbone
        from transfer.classifiers import check_search_size, parse_classifiers

        backbones = tuple(dict.fromkeys(get_backbone(b).name for b in _names(self.backbones)))
        if not backbones:
            raise TransferError("backbones is empty: give at least one registry name (`transfer backbones`).")
        strategies = _names(self.strategies)
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or not strategies:
            raise TransferError(f"Unknown strategy {unknown[0] if unknown else self.strategies!r}. Expected a "
                                f"comma-separated list of: {', '.join(STRATEGIES)}.")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise TransferError(f"repeats={self.repeats!r} is not valid: give a positive integer.")
        check_search_size(self.search_size)
        if self.protocol not in PROTOCOLS:
            raise TransferError(f"protocol={self.protocol!r} is not valid. Expected one of: {', '.join(PROTOCOLS)}.")
        if not isinstance(self.folds, int) or isinstance(self.folds, bool) or self.folds < 2:
            raise TransferError(f"folds={self.folds!r} is not valid: give a whole number of at least 2.")
        train_sizes = _train_sizes(self.train_sizes, minimum=2 if "features" in strategies else 1)
        if train_sizes and self.repeats > 1:
            raise TransferError(f"repeats={self.repeats} and train_sizes={','.join(train_sizes)} cannot be combined: "
                                "give one or the other (a learning curve runs on one split).")
        freeze = tuple(dict.fromkeys(_names(self.freeze)))
        if "finetune" in strategies and not freeze:
            raise TransferError("freeze is empty: give one or more of all, none, a count, a fraction or a layer name.")
        classifiers = _names(self.classifiers)
        cfg = dataclasses.replace(
            self, backbones=backbones, strategies=tuple(s for s in STRATEGIES if s in strategies), freeze=freeze,
            train_sizes=train_sizes,
            classifiers=tuple(parse_classifiers(list(classifiers))) if "features" in strategies else classifiers)
        for backbone in backbones:  # each sub-config checks its own options (sizes, epochs, rates...)
            if "features" in strategies:
                cfg.extract_config(backbone).validated()
            for f in freeze if "finetune" in strategies else ():
                cfg.finetune_config(backbone, f).validated()
        if "scratch" in strategies:
            cfg.scratch_config().validated()
        return cfg


def _names(value) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(v).strip() for v in items if str(v).strip())


def _train_sizes(value, minimum: int) -> tuple[str, ...]:
    """``train_sizes`` as sorted, distinct sizes (``all`` last), e.g. ``("5", "10", "all")``."""
    items = tuple(v.lower() for v in _names((value,) if isinstance(value, int) else value))
    bad = [v for v in items if v != "all" and not (v.isascii() and v.isdigit() and int(v) >= minimum)]
    if bad:
        given = value if isinstance(value, str) else ",".join(items)
        why = " (features' cross-validation needs 2 per class)" if minimum == 2 else ""
        raise TransferError(f"train_sizes={given!r} is not valid ({bad[0]!r}): give images per class, comma-"
                            f"separated: whole numbers of at least {minimum}{why} or all (e.g. 5,10,25,all).")
    sizes = sorted({int(v) for v in items if v != "all"})
    return tuple(str(n) for n in sizes) + (("all",) if "all" in items else ())


def _prefixed(log, tag):
    return lambda msg: log(f"[{tag}] {msg}")


def _features(run, cfg: CompareConfig, backbone: str, features_dir: Path, progress, log) -> list:
    """Strategy 2 with ``backbone``, or its finished sub-run when the settings, split and images are the same."""
    from transfer.classifiers import classify_run, pipeline_steps
    from transfer.features import cache_key, feature_settings
    from transfer.runs import finished_with, open_run, read_results

    folder = run.out / backbone / "classify"
    sub = open_run(run.split, folder, "classify", seed=cfg.seed)
    ecfg = cfg.extract_config(backbone).validated()
    if finished_with(folder, {"extract": feature_settings(ecfg), "requested_classifiers": list(cfg.classifiers),
                              "pipelines": pipeline_steps(cfg.classifiers), "search_size": cfg.search_size,
                              "seed": cfg.seed, "feature_cache_key": cache_key(ecfg, list(run.split["path"]))}):
        log(f"strategy 2 (features + classifiers) with {backbone}: reusing {folder} (same settings, split and images)")
        return read_results(folder)
    log(f"strategy 2 (features + classifiers) with {backbone} -> {folder}")
    return classify_run(sub, ecfg, cfg.classifiers, features_dir=features_dir, search_size=cfg.search_size,
                        progress=progress, log=_prefixed(log, "features"))


def _finetuned(run, cfg: CompareConfig, backbone: str, freeze: str, features_dir: Path, log):
    """Strategy 1 with ``backbone`` and one ``freeze`` value (a finished run resumes to its evaluation)."""
    from transfer.fileio import slug
    from transfer.finetuning import finetune_run, finetune_settings
    from transfer.runs import finished_with, open_run, read_results

    folder = run.out / backbone / f"finetune-{slug(freeze)}"
    sub = open_run(run.split, folder, "finetune", seed=cfg.seed)
    fcfg = cfg.finetune_config(backbone, freeze).validated()
    if finished_with(folder, {"finetune": finetune_settings(fcfg)}):  # and open_run checked its split
        log(f"strategy 1 (fine-tuning, freeze {freeze}) with {backbone}: reusing {folder} (same settings and split)")
        return read_results(folder)[0]
    log(f"strategy 1 (fine-tuning, freeze {freeze}) with {backbone} -> {folder}")
    return finetune_run(sub, fcfg, features_dir=features_dir, log=_prefixed(log, f"finetune {freeze}"))


def _scratch(run, cfg: CompareConfig, log):
    """The from-scratch baseline, or its finished sub-run when the settings and split are the same."""
    from transfer.runs import finished_with, open_run, read_results
    from transfer.scratch import scratch_run, sized

    folder = run.out / "scratch"
    sub = open_run(run.split, folder, "scratch", seed=cfg.seed)
    said = []  # the size it chose, said only if it trains (once, after the line that says it does)
    scfg = sized(cfg.scratch_config().validated(), sub.rows("train")["path"], log=said.append)
    if finished_with(folder, {"scratch": dataclasses.asdict(scfg)}):
        log(f"baseline: reusing {folder} (same settings and split)")
        return read_results(folder)[0]
    log(f"baseline: a small CNN from random init -> {folder}")
    for line in said:
        _prefixed(log, "scratch")(line)
    return scratch_run(sub, scfg, log=_prefixed(log, "scratch"))


def _previous_report(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_report(run, cfg: CompareConfig, results, features_dir: Path, log, seconds: dict, protocol: str = ""):
    """compare.csv, report.html, skipped.csv, the plots and config.json; returns ``(table, verdict, predictions)``.

    ``seconds``: the time each sub-run took here, recorded with the report's own in ``config.json``.
    """
    from transfer.compare_plots import make_plots
    from transfer.fileio import write_csv
    from transfer.html_report import write_report
    from transfer.runfolder import publishing
    from transfer.runs import write_config, write_skipped
    from transfer.verdict import combine, recommended_model, verdict

    start = time.perf_counter()
    table, preds = combine(results, run.out, seed=cfg.seed)
    line = verdict(table, preds, protocol=protocol or f"On one split ({len(preds['_y_true'])} "
                                                      f"{table['eval_split'].iloc[0]} images)")
    skipped = {}
    for r in results:  # the first sub-run's reason for a file it could not read
        for path, reason in r.skipped.items():
            skipped.setdefault(path, reason)
    # Plots of models an earlier compare here had and this one has not are removed with the old set.
    with publishing(run.out) as stage:
        drawn, inputs = make_plots(run.out, table, preds, results, cfg, run.classes, stage / "plots", features_dir,
                                   log=log, previous=_previous_report(run.out).get("plot_inputs"))
        write_skipped(skipped, stage / "skipped.csv")
        write_csv(table, stage / "compare.csv")
        seconds["report and plots"] = round(time.perf_counter() - start, 1)
        settings = {**run.settings(), "compare": dataclasses.asdict(cfg), "eval_split": table["eval_split"].iloc[0]}
        use = recommended_model(table, preds)
        write_report(stage / "report.html", data=run.data, verdict=line, table=table, plots=drawn, split=run.split,
                     classes=run.classes, roles=run.roles, seconds=seconds, settings=settings, recommended=use)
        write_config(stage / "config.json", {
            **settings, "verdict": line, "recommended_model": use,
            "machine_choices": _machine_choices(results, run.out),
            "subruns": list(dict.fromkeys(str(Path(r.run_dir).relative_to(run.out)) for r in results)),
            "plots": [f"plots/{p.name}" for p in drawn], "plot_inputs": inputs, "seconds": seconds,
        })
    return table, line, preds


def _machine_choices(results, out: Path) -> dict:
    """The choices made by timing on this machine (kept per machine, so a re-run makes the same): TensorFlow's
    oneDNN kernels and, per fine-tuning, its precision and the engine of its frozen layers."""
    import os

    choices = {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
    for r in results:
        if r.strategy == "finetune":
            sub = json.loads((Path(r.run_dir) / "config.json").read_text())
            choices[str(Path(r.run_dir).relative_to(out))] = {
                k: sub.get(k) for k in ("precision", "stage2_frozen_layers_engine")}
    return choices


def _compare_once(run, cfg: CompareConfig, features_dir: Path, progress, log, predictions: list | None = None,
                  mlflow=None, protocol: str = ""):
    """Every strategy on the opened run's one split; the report written; returns ``(table, verdict)``.

    ``predictions``, when given, receives each model's predictions on the evaluation images (for the paired
    statistics over repeats).  ``mlflow``: a tracking URI the finished comparison is logged to (see
    :mod:`transfer.tracking`).
    """
    results, seconds = [], {}

    def timed(label, step, *args):
        start = time.perf_counter()
        done = step(run, cfg, *args)
        seconds[label] = round(time.perf_counter() - start, 1)
        return done

    for backbone in cfg.backbones:
        if "features" in cfg.strategies:
            results += timed(f"{backbone} features", _features, backbone, features_dir, progress, log)
        for f in cfg.freeze if "finetune" in cfg.strategies else ():
            results.append(timed(f"{backbone} finetune-{f}", _finetuned, backbone, f, features_dir, log))
    if "scratch" in cfg.strategies:
        results.append(timed("scratch", _scratch, log))
    table, line, preds = _write_report(run, cfg, results, features_dir, log, seconds, protocol)
    if predictions is not None:
        predictions.append(preds)
    if mlflow is not None:
        from transfer.tracking import log_compare
        from transfer.verdict import recommended_model

        log_compare(mlflow, run.out, table, results, line, recommended_model(table, preds), log=log)
    return table, line


def _repeated(source, out: Path, cfg: CompareConfig, split_options: dict, progress, log, mlflow=None):
    """``cfg.repeats`` comparisons, repeat k on the split seeded ``cfg.seed + k - 1``; the summary of all."""
    import time

    from transfer import plots
    from transfer.fileio import write_csv
    from transfer.runfolder import publishing
    from transfer.runs import open_run, write_config
    from transfer.verdict import summarise_repeats

    tables, seconds, predictions = [], [], []
    for k in range(1, cfg.repeats + 1):
        once = dataclasses.replace(cfg, seed=cfg.seed + k - 1, repeats=1)
        log(f"repeat {k} of {cfg.repeats} (seed {once.seed}) -> {out / f'repeat-{k}'}")
        start = time.perf_counter()
        run = open_run(source, out / f"repeat-{k}", "compare", seed=once.seed, **split_options)
        table, _ = _compare_once(run, once, None, progress, _prefixed(log, f"repeat {k}"), predictions, mlflow)
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
    return summary, line


def _subsets(run, cfg: CompareConfig, log) -> dict:
    """``{size: split}``: the run's split cut to each of ``cfg.train_sizes`` (see :func:`train_subset`).

    A size that leaves the same training images as a larger one (it is at least every class's count) is left
    out, and said so: it would train the same models again.
    """
    from transfer.splits import train_subset

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
    import time

    from transfer import plots
    from transfer.fileio import write_csv
    from transfer.runfolder import publishing
    from transfer.runs import open_run, write_config
    from transfer.verdict import summarise_train_sizes

    run = open_run(source, out, "compare", seed=cfg.seed, **split_options)
    once = dataclasses.replace(cfg, train_sizes=())
    tables, seconds = [], {}
    for size, subset in _subsets(run, cfg, log).items():
        counts = subset.loc[subset["split"] == "train", "label"].value_counts()
        log(f"train size {size}: {counts.sum()} training images ({counts.min()}-{counts.max()} per class) -> "
            f"{out / f'size-{size}'}")
        start = time.perf_counter()
        sub = open_run(subset, out / f"size-{size}", "compare", seed=cfg.seed)
        table, _ = _compare_once(sub, once, None, progress, _prefixed(log, f"size {size}"), mlflow=mlflow)
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
    return curve, line


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
    (nested, seeded subsets; see :func:`transfer.splits.train_subset`), its
    validation images cut in proportion and its test images unchanged: each size is a compare run folder
    ``out/size-N`` (``out/size-all``), sharing one feature cache.  Writes
    ``out/learning-curve.csv`` and ``out/plots/learning-curve.png``.

    Args:
        data: as for every command: a folder, a CSV manifest, ``digits`` or ``fashion-mnist``.
        out: the run folder (see the module docstring for its layout).
        cfg: the options; :class:`CompareConfig` defaults when omitted.
        mlflow: log each finished comparison and its models to MLflow at this tracking URI
            (``transfer.tracking.DEFAULT_URI``: MLflow's own default, ./mlflow.db and ./mlruns/); None: not.

    Returns:
        ``(table, verdict)``: the compare table (``compare.csv``), best first,
        and the one-line verdict; with repeats, the per-model summary
        (``repeats.csv``: mean, spread, paired difference to the best and its
        interval) and the verdict over all repeats; with train sizes, the
        learning curve (``learning-curve.csv``: every model at every size)
        and the verdict over the sizes (the crossover, if any).
    """
    from transfer.runfolder import claim
    from transfer.runs import check_run_folder
    from transfer.tracking import check_mlflow

    cfg = (cfg or CompareConfig()).validated()
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
    from transfer.cross_validation import choose
    from transfer.finetune_model import check_freeze
    from transfer.runs import open_run
    from transfer.sources import resolve_source

    source = resolve_source(data)  # a wrong data fails here, before TensorFlow is loaded
    for backbone in cfg.backbones if "finetune" in cfg.strategies else ():
        # every freeze value, before hours of training run into a typo
        check_freeze(backbone, cfg.finetune_config(backbone, "none").validated().image_size, cfg.freeze)
    if cfg.train_sizes:
        return _learning_curve(source, out, cfg, split_options, progress, log, mlflow)
    protocol = choose(source.table, cfg.protocol, cfg.folds, split_options["test_fraction"])
    log(f"protocol: {'one split' if protocol.name == 'split' else f'{protocol.folds}-fold cross-validation'} "
        f"({protocol.reason})")
    if protocol.name == "kfold":
        from transfer.cross_validation_run import cross_validated

        return cross_validated(source, out, cfg, protocol, split_options, progress, log, mlflow)
    if cfg.repeats > 1:
        return _repeated(source, out, cfg, split_options, progress, log, mlflow)
    run = open_run(source, out, "compare", seed=cfg.seed, **split_options)
    return _compare_once(run, cfg, None, progress, log, mlflow=mlflow)
