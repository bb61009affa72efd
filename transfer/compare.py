"""``transfer compare``: both strategies and a from-scratch baseline on one split, in one report.

A compare run folder holds one ``split.csv`` that every sub-run copies, one
feature cache shared by strategy 2 and the head stage of strategy 1, a
sub-run folder per trained model family, and the combined report::

    RUN/split.csv                      the one split
    RUN/features/                      feature cache (all backbones)
    RUN/BACKBONE/classify/             strategy 2 (a `classify` run)
    RUN/BACKBONE/finetune-FREEZE/      strategy 1, one per --freeze value
    RUN/scratch/                       the CNN trained from random init
    RUN/compare.csv, RUN/config.json, RUN/plots/*.png
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError

STRATEGIES = ("features", "finetune", "scratch")
COMPARE_COLUMNS = [
    "strategy", "backbone", "classifier", "freeze", "model", "eval_split", "n_test", "test_accuracy",
    "test_macro_f1", "accuracy_ci_low", "accuracy_ci_high", "train_seconds", "inference_images_per_second",
    "trainable_params", "mcnemar_p_vs_best", "differs_from_best", "run_dir",
]
SIGNIFICANCE = 0.05
# The digits demo (`transfer compare` with no arguments, CompareConfig.demo()): 96 px (8-px digits gain
# nothing at 224 px but time), no augmentation (a mirrored digit is another digit) and stage 2 at lr/10
# (digits are far from ImageNet, so the backbone has to move more than fastai's lr/100 lets it).
DEMO_DATA = "digits"
DEMO_OPTIONS = {"image_size": 96, "augment": False, "lr_mult": 10.0}


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Options of ``transfer compare``.

    The feature-extraction options apply to strategy 2 (and to the t-SNE
    plot), the fine-tuning ones to strategy 1; ``image_size``, ``resize``,
    ``batch_size`` and ``weights`` to both, so both see the same pixels.

    Attributes:
        backbones: registry names; every strategy runs for each.
        strategies: any of ``features``, ``finetune``, ``scratch``.
        classifiers: strategy 2's scikit-learn classifiers.
        freeze: strategy 1 runs once per value (``all``, ``none``, a count,
            a fraction or a layer name, as ``transfer finetune --freeze``).
        scratch_size: input size of the from-scratch CNN.
        scratch_epochs: its epoch limit (early stopping on validation loss).
    """

    backbones: tuple[str, ...] = ("efficientnet_lite0",)
    strategies: tuple[str, ...] = STRATEGIES
    classifiers: tuple[str, ...] = ("linear_svm", "rbf_svm", "logreg", "knn", "mlp")
    layer: str = "pooled"
    pooling: str | None = "avg"
    image_size: int | None = None
    resize: str = "crop"
    batch_size: int = 32
    weights: str = "imagenet"
    freeze: tuple[str, ...] = ("none",)
    head_epochs: int = 5
    epochs: int = 10
    lr: float = 1e-3
    lr_mult: float = 100.0
    augment: bool = True
    patience: int = 3
    precision: str = "auto"
    scratch_size: int = 64
    scratch_epochs: int = 30
    seed: int = 0

    @classmethod
    def demo(cls, **options) -> CompareConfig:
        """The settings of the digits demo (``transfer compare`` with no arguments); ``options`` override them."""
        return cls(**{**DEMO_OPTIONS, **options})

    def validated(self) -> CompareConfig:
        """Check every option before any work; comma-separated strings become tuples.

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        from transfer.backbones import get_backbone
        from transfer.classifiers import parse_classifiers

        backbones = tuple(dict.fromkeys(get_backbone(b).name for b in _names(self.backbones)))
        if not backbones:
            raise TransferError("backbones is empty: give at least one registry name (`transfer backbones`).")
        strategies = _names(self.strategies)
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or not strategies:
            raise TransferError(f"Unknown strategy {unknown[0] if unknown else self.strategies!r}. Expected a "
                                f"comma-separated list of: {', '.join(STRATEGIES)}.")
        freeze = tuple(dict.fromkeys(_names(self.freeze)))
        if "finetune" in strategies and not freeze:
            raise TransferError("freeze is empty: give one or more of all, none, a count, a fraction or a layer name.")
        cfg = dataclasses.replace(
            self, backbones=backbones, strategies=tuple(s for s in STRATEGIES if s in strategies),
            classifiers=tuple(parse_classifiers(list(_names(self.classifiers)))) if "features" in strategies
            else tuple(_names(self.classifiers)),
            freeze=freeze)
        for backbone in backbones:  # each sub-config checks its own options (sizes, epochs, rates...)
            if "features" in strategies:
                cfg.extract_config(backbone).validated()
            if "finetune" in strategies:
                for f in freeze:
                    cfg.finetune_config(backbone, f).validated()
        if "scratch" in strategies:
            cfg.scratch_config().validated()
        return cfg

    def extract_config(self, backbone):
        from transfer.features import ExtractConfig

        return ExtractConfig(backbone=backbone, weights=self.weights, layer=self.layer, pooling=self.pooling,
                             image_size=self.image_size, resize=self.resize, batch_size=self.batch_size)

    def finetune_config(self, backbone, freeze):
        from transfer.finetune import FinetuneConfig

        return FinetuneConfig(backbone=backbone, weights=self.weights, image_size=self.image_size,
                              resize=self.resize, batch_size=self.batch_size, freeze=freeze,
                              head_epochs=self.head_epochs, epochs=self.epochs, lr=self.lr, lr_mult=self.lr_mult,
                              augment=self.augment, patience=self.patience, precision=self.precision,
                              seed=self.seed)

    def scratch_config(self):
        from transfer.scratch import ScratchConfig

        return ScratchConfig(image_size=self.scratch_size, resize=self.resize, batch_size=self.batch_size,
                             epochs=self.scratch_epochs, augment=self.augment, seed=self.seed)


def _names(value) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(v).strip() for v in items if str(v).strip())


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_")


@dataclasses.dataclass
class SubRun:
    strategy: str
    backbone: str
    folder: Path


def _share_split(run: Path, folder: Path):
    """Give a sub-run the compare run's split (and refuse one made otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    ours, theirs = run / "split.csv", folder / "split.csv"
    if not theirs.exists():
        shutil.copyfile(ours, theirs)
    elif theirs.read_bytes() != ours.read_bytes():
        raise TransferError(f"{theirs} differs from {ours}: that sub-run was made with another split. Use another "
                            f"--out, or delete {folder} to train it again on this split.")


def _finished(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds a finished sub-run made with ``settings`` (as its config.json records them).

    Its split is the compare run's (checked by ``_share_split``), so its reports can be reused as they are:
    a rerun does not refit, and the report keeps the timings measured when the models were trained.
    """
    import json

    if not all((folder / name).exists() for name in ("config.json", "metrics.csv", "predictions.csv")):
        return False
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return all(saved.get(key) == value for key, value in settings.items())


def _read_subrun(sub: SubRun) -> tuple[pd.DataFrame, pd.DataFrame]:
    # classifier and freeze are names: "0.50" must not become 0.5, nor ".5" and "0.5" the same model
    metrics = pd.read_csv(sub.folder / "metrics.csv", dtype={"classifier": str, "freeze": str})
    preds = pd.read_csv(sub.folder / "predictions.csv", dtype={"true_label": str, "pred_label": str})
    return metrics, preds


def _model_name(r) -> str:
    from transfer.backbones import get_backbone

    if r["strategy"] == "scratch":
        return "scratch CNN"
    short = get_backbone(r["backbone"]).name
    if r["strategy"] == "features":
        return f"{short} features + {r['classifier']}"
    return f"{short} fine-tuned (freeze {r['freeze']})"


def combine(subruns: list[SubRun], run: Path, *, n_boot=2000, seed=0):
    """One row per trained model, with the paired statistics against the best.

    Returns:
        ``(table, predictions)``: the compare table, best first, and for each
        row (by ``model``) the predictions on the shared evaluation images.
    """
    from transfer.evaluate import bootstrap_accuracy, mcnemar_pvalue

    rows, preds = [], {}
    for sub in subruns:
        metrics, pred = _read_subrun(sub)
        for m in metrics.to_dict("records"):
            label = m["classifier"] if sub.strategy == "features" else (
                "finetune" if sub.strategy == "finetune" else "scratch_cnn")
            r = {
                "strategy": sub.strategy, "backbone": m["backbone"] if sub.strategy != "scratch" else "none",
                "classifier": m["classifier"] if sub.strategy == "features" else "",
                "freeze": str(m["freeze"]) if sub.strategy == "finetune" else "",
                "eval_split": m["eval_split"],
                "train_seconds": round(float(m["fit_seconds"]) + float(m["extract_seconds"]), 2),
                "inference_images_per_second": m.get("inference_images_per_second", np.nan),
                "trainable_params": int(m["trainable_params"]),
                "run_dir": str(sub.folder.relative_to(run)),
            }
            r["model"] = _model_name(r)
            p = pred[pred["classifier"] == label].set_index("path")
            preds[r["model"]] = p
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
        r["test_accuracy"] = float(np.mean(p == y_true))
        from sklearn.metrics import f1_score

        r["test_macro_f1"] = float(f1_score(y_true, p, average="macro"))
        r["accuracy_ci_low"], r["accuracy_ci_high"] = bootstrap_accuracy(y_true, p, n_boot=n_boot, seed=seed)
    table = pd.DataFrame(rows).sort_values(["test_accuracy", "test_macro_f1", "train_seconds"],
                                           ascending=[False, False, True], kind="stable").reset_index(drop=True)
    best = aligned[table["model"].iloc[0]]["pred_label"].to_numpy()
    pvalues = [np.nan] + [mcnemar_pvalue(y_true, best, aligned[m]["pred_label"].to_numpy())
                          for m in table["model"].iloc[1:]]
    table["mcnemar_p_vs_best"] = pvalues
    table["differs_from_best"] = ["best"] + ["yes" if p < SIGNIFICANCE else "no (within noise)"
                                             for p in pvalues[1:]]
    for col in ("test_accuracy", "test_macro_f1", "accuracy_ci_low", "accuracy_ci_high"):
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


def verdict(table: pd.DataFrame, preds: dict) -> str:
    """One line: which strategy to use, whether the difference is real, and what it costs."""
    from transfer.evaluate import mcnemar_pvalue

    y_true = preds["_y_true"]
    best_of = {s: table[table["strategy"] == s].iloc[0] for s in STRATEGIES if (table["strategy"] == s).any()}

    def p_between(a, b):
        return mcnemar_pvalue(y_true, preds[a["model"]]["pred_label"].to_numpy(),
                              preds[b["model"]]["pred_label"].to_numpy())

    parts = []
    if "features" in best_of and "finetune" in best_of:
        a, b = sorted((best_of["features"], best_of["finetune"]), key=lambda r: -r["test_accuracy"])
        p = p_between(a, b)
        if p >= SIGNIFICANCE:
            cheap, dear = sorted((a, b), key=lambda r: r["train_seconds"])
            parts.append(f"{cheap['model']} ({cheap['test_accuracy']:.3f}) is within noise of {dear['model']} "
                         f"({dear['test_accuracy']:.3f}, McNemar p={p:.2f}) "
                         f"{_ratio(cheap['train_seconds'], dear['train_seconds'])}: use {cheap['model']}")
        else:
            parts.append(f"{a['model']} ({a['test_accuracy']:.3f}) beats {b['model']} ({b['test_accuracy']:.3f}, "
                         f"McNemar p={p:.3g}) {_ratio(a['train_seconds'], b['train_seconds'])}: use {a['model']}")
    else:
        top = table.iloc[0]
        parts.append(f"best: {top['model']} ({top['test_accuracy']:.3f})")
    if "scratch" in best_of and len(best_of) > 1:
        s = best_of["scratch"]
        pre = max((best_of[k] for k in best_of if k != "scratch"), key=lambda r: r["test_accuracy"])
        p = p_between(pre, s)
        gain = pre["test_accuracy"] - s["test_accuracy"]
        # Against the most accurate pretrained model, named, since it need not be the one recommended above.
        if p < SIGNIFICANCE and gain > 0:
            parts.append(f"pretraining bought {gain:+.3f} over the scratch CNN ({s['test_accuracy']:.3f}, p={p:.3g})")
        elif p < SIGNIFICANCE:
            parts.append(f"but the scratch CNN ({s['test_accuracy']:.3f}) beats {pre['model']} "
                         f"({pre['test_accuracy']:.3f}, p={p:.3g}): pretraining did not help here, use the scratch CNN")
        else:
            parts.append(f"the scratch CNN ({s['test_accuracy']:.3f}) is within noise of {pre['model']} "
                         f"({pre['test_accuracy']:.3f}, p={p:.2f}): pretraining bought nothing significant here")
    return "; ".join(parts) + "."


def _first_conv_kernel(model):
    """The kernel of the first convolution that reads the RGB input, searching nested models."""
    import keras

    stack = [model]
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = np.asarray(layer.kernel)
            if kernel.shape[2] == 3:
                return layer.name, kernel
        stack[0:0] = list(getattr(layer, "layers", []))
    return None, None


def make_plots(run: Path, cfg: CompareConfig, table: pd.DataFrame, preds: dict, subruns, classes, log=print,
               folder=None):
    """Every PNG of the report, into ``folder`` (default ``run/plots``); returns their paths."""
    from transfer import plots

    folder = Path(folder) if folder is not None else run / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    y_true = preds["_y_true"]
    for strategy in STRATEGIES:
        rows = table[table["strategy"] == strategy]
        if len(rows):
            r = rows.iloc[0]
            made.append(plots.confusion_matrix_png(
                y_true, preds[r["model"]]["pred_label"].to_numpy(), classes, folder / f"confusion-{strategy}.png",
                title=f"{r['model']}: {r['eval_split']} accuracy {r['test_accuracy']:.3f}"))
    made.append(plots.accuracy_vs_time_png(table, folder / "accuracy-vs-time.png"))
    for sub in subruns:
        if sub.strategy == "finetune" and (sub.folder / "history.csv").exists():
            history = pd.read_csv(sub.folder / "history.csv")
            if len(history):
                made.append(plots.training_curves_png(
                    history, folder / f"curves-{sub.folder.parent.name}-{sub.folder.name}.png",
                    title=f"{sub.backbone} {sub.folder.name}: head (stage 1) then fine-tuning (stage 2)"))
    for backbone in cfg.backbones:
        if "features" in cfg.strategies:  # the features strategy 2 used, from its cache: no second CNN pass
            png = tsne_plot(run, cfg.extract_config(backbone).validated(), folder / f"tsne-{backbone}.png",
                            seed=cfg.seed)
            if png is None:
                log(f"no t-SNE plot for {backbone}: fewer than 5 readable evaluation images")
            made.append(png)
        tuned = [s for s in subruns if s.strategy == "finetune" and s.backbone == backbone]
        if tuned and cfg.weights == "none":
            log(f"no conv-kernels plot for {backbone}: with --weights none there are no pretrained kernels to "
                "compare with")
        elif tuned:  # the run that trained the most layers shows the most change
            sub = max(tuned, key=lambda s: int(pd.read_csv(s.folder / "layers.csv")["trainable"].sum()))
            try:
                png, name, change = conv_kernels_plot(sub.folder, folder / f"conv-kernels-{backbone}.png")
            except TransferError as e:  # a missing plot must not cost the report of everything trained
                log(f"no conv-kernels plot for {backbone}: {e}")
            else:
                made.append(png)
                log(f"first conv layer {name} of {backbone}: its largest weight change in {sub.folder.name} is "
                    f"{change:.2%} of its largest weight")
    return [m for m in made if m is not None]


def tsne_plot(run_dir, cfg, path, *, features_dir=None, limit=1000, seed=0):
    """t-SNE of a run's evaluation images in pixel space beside the same images in CNN feature space.

    Args:
        run_dir: a run folder with ``split.csv`` (compare, classify, extract or finetune).
        cfg: the :class:`~transfer.features.ExtractConfig` of the features to show.
        path: the PNG to write.
        features_dir: the feature cache (default ``run_dir/features``): a cached
            pass over the whole split is reused, otherwise the CNN runs once.
        limit: at most this many images (a seeded sample; t-SNE is quadratic).

    Returns:
        The PNG's path, or None when fewer than 5 evaluation images are readable.
    """
    from transfer import plots
    from transfer.data import decode_image, evaluation_split
    from transfer.features import extract_features

    run_dir = Path(run_dir)
    split = pd.read_csv(run_dir / "split.csv", dtype=str, keep_default_na=False)
    rows = split[split["split"] == evaluation_split(split)]
    if len(rows) > limit:
        rows = rows.sample(limit, random_state=seed).sort_index()
    # The features of the whole split, as strategy 2 caches them (the same key: no second CNN pass).
    cache = Path(features_dir) if features_dir is not None else run_dir / "features"
    feats = extract_features(split["path"], cfg, cache_dir=cache, progress=False)
    pos = {p: i for i, p in enumerate(feats.paths)}
    rows = rows[rows["path"].isin(pos)]
    if len(rows) < 5:
        return None
    pixels = np.stack([decode_image(p, 32, cfg.resize) for p in rows["path"]]).astype(np.float32) / 255
    features = feats.features[[pos[p] for p in rows["path"]]]
    return plots.tsne_png(pixels, features, rows["label"].to_numpy(), path, seed=seed)


def conv_kernels_plot(run_dir, path):
    """The first conv layer's kernels of a fine-tuning run's backbone: ImageNet (before) and tuned (after).

    Args:
        run_dir: a ``finetune`` run folder (its ``config.json`` and ``model.keras``).
        path: the PNG to write.

    Returns:
        ``(png path, layer name, relative change)``: the change is the largest
        absolute weight change over the largest absolute weight before.
    """
    import json

    import keras

    from transfer import plots
    from transfer.backbones import build_backbone

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())["finetune"]
    if cfg["weights"] == "none":
        raise TransferError(f"{run_dir} was fine-tuned from random weights (weights='none'): there are no "
                            "pretrained kernels to compare with.")
    weights = cfg["weights"]
    _, before = _first_conv_kernel(build_backbone(cfg["backbone"], weights=weights, image_size=cfg["image_size"]))
    name, after = _first_conv_kernel(keras.saving.load_model(run_dir / "model.keras", compile=False))
    if before is None or after is None:
        raise TransferError(f"{cfg['backbone']} has no convolution that reads the RGB input: no kernels to plot.")
    change = float(np.abs(after - before).max() / max(np.abs(before).max(), 1e-12))
    return plots.conv_kernels_png(before, after, path), name, change


def compare(data="digits", out=None, cfg: CompareConfig | None = None, *, val_fraction=0.15, test_fraction=0.15,
            progress=True, log=print):
    """Run strategy 2, strategy 1 and the scratch baseline on one split; write the combined report.

    Args:
        data: as for every command: a folder, a CSV manifest, ``digits`` or ``fashion-mnist``.
        out: the run folder (see the module docstring for its layout).
        cfg: the options; :class:`CompareConfig` defaults when omitted.

    Returns:
        ``(table, verdict)``: the compare table (``compare.csv``), best first,
        and the one-line verdict.
    """
    from transfer.classifiers import classify
    from transfer.data import prepare_split, resolve_source
    from transfer.finetune import finetune
    from transfer.report import check_run_folder, write_config, write_csv
    from transfer.scratch import train_scratch

    cfg = (cfg or CompareConfig()).validated()
    if out is None:
        raise TransferError("out is required: the folder the compare run writes to.")
    run = Path(out)
    check_run_folder(run, "compare")
    source = resolve_source(data)  # a wrong --data fails here, before TensorFlow is loaded
    for backbone in cfg.backbones if "finetune" in cfg.strategies else ():
        from transfer.backbones import build_backbone
        from transfer.finetune import frozen_count

        layers = build_backbone(backbone, weights=None, image_size=cfg.finetune_config(backbone, "none")
                                .validated().image_size).layers
        for f in cfg.freeze:  # every --freeze value, before hours of training run into a typo
            frozen_count(f, layers)
    run.mkdir(parents=True, exist_ok=True)
    split = prepare_split(source, run, val_fraction, test_fraction, cfg.seed)
    classes = sorted(set(split["label"]))
    features_dir = run / "features"
    subruns = []

    def sub(strategy, backbone, folder):
        _share_split(run, folder)
        subruns.append(SubRun(strategy, backbone, folder))
        return folder

    def prefixed(tag):
        return lambda msg: log(f"[{tag}] {msg}")

    for backbone in cfg.backbones:
        if "features" in cfg.strategies:
            folder = sub("features", backbone, run / backbone / "classify")
            extract_cfg = cfg.extract_config(backbone).validated()
            from transfer.features import cache_key

            if _finished(folder, {"extract": dataclasses.asdict(extract_cfg), "classifiers": list(cfg.classifiers),
                                  "seed": cfg.seed,
                                  "feature_cache_key": cache_key(extract_cfg, [str(p) for p in split["path"]])}):
                log(f"strategy 2 (features + classifiers) with {backbone}: reusing {folder} (same settings, "
                    "split and images)")
            else:
                log(f"strategy 2 (features + classifiers) with {backbone} -> {folder}")
                classify(data, folder, extract_cfg, list(cfg.classifiers), seed=cfg.seed,
                         progress=progress, features_dir=features_dir, log=prefixed("features"))
        if "finetune" in cfg.strategies:
            for f in cfg.freeze:
                folder = sub("finetune", backbone, run / backbone / f"finetune-{_slug(f)}")
                log(f"strategy 1 (fine-tuning, freeze {f}) with {backbone} -> {folder}")
                finetune(data, folder, cfg.finetune_config(backbone, f), features_dir=features_dir,
                         log=prefixed(f"finetune {f}"))
    if "scratch" in cfg.strategies:
        folder = sub("scratch", "none", run / "scratch")
        scratch_cfg = cfg.scratch_config().validated()
        if _finished(folder, {"scratch": dataclasses.asdict(scratch_cfg)}):
            log(f"baseline: reusing {folder} (same settings and split)")
        else:
            log(f"baseline: a small CNN from random init -> {folder}")
            train_scratch(data, folder, scratch_cfg, log=prefixed("scratch"))

    table, preds = combine(subruns, run, seed=cfg.seed)
    line = verdict(table, preds)
    # Plots are drawn into a staging folder: a failure while drawing leaves the previous report and plots whole.
    staging = run / ".plots-new"
    shutil.rmtree(staging, ignore_errors=True)
    drawn = make_plots(run, cfg, table, preds, subruns, classes, log=log, folder=staging)
    skipped = [pd.read_csv(s.folder / "skipped.csv", dtype=str) for s in subruns if (s.folder / "skipped.csv").exists()]
    write_csv(pd.concat(skipped).drop_duplicates("path").sort_values("path") if skipped
              else pd.DataFrame(columns=["path", "reason"]), run / "skipped.csv")
    write_csv(table, run / "compare.csv")
    plots_dir = run / "plots"
    plots_dir.mkdir(exist_ok=True)
    made = [plots_dir / png.name for png in drawn]
    for png in drawn:
        os.replace(png, plots_dir / png.name)
    for old in plots_dir.glob("*.png"):  # plots of models an earlier compare here had, this one has not
        if old not in made:
            old.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    write_config(run / "config.json", {
        "command": "compare", "data": str(data), "compare": dataclasses.asdict(cfg), "val_fraction": val_fraction,
        "test_fraction": test_fraction, "split_reused": bool(split.attrs.get("reused", False)),
        "eval_split": table["eval_split"].iloc[0], "classes": classes, "verdict": line,
        "subruns": [str(s.folder.relative_to(run)) for s in subruns],
        "plots": [str(Path(p).relative_to(run)) for p in made],
    })
    return table, line
