"""The plots of a compare report, drawn from its records and its sub-runs' artefacts.

Which models and files each plot shows is decided here; how a plot is
drawn is :mod:`transfer.reports.plots`.  ``tsne_plot`` and ``conv_kernels_plot``
also serve any single run folder (notebooks use them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.reports import STRATEGIES

TSNE_VERSION = 2  # bump when the t-SNE plot is drawn otherwise (2: PCA to 50 dimensions first), so it is redrawn

class _Previous:
    """The plots of the report being replaced: one whose inputs are unchanged is copied, not drawn again.

    ``inputs`` maps a PNG's name to what it was drawn from (``key``) and what drawing it said; the new report
    records its own in ``config.json`` (``plot_inputs``), for the next run.
    """

    def __init__(self, old_folder: Path, old_inputs: dict, folder: Path):
        self.old_folder, self.old_inputs, self.folder, self.inputs = old_folder, old_inputs, folder, {}

    def get(self, name: str, key: str):
        """``(path, what drawing it said)`` of the previous plot drawn from ``key``, copied; else ``(None, None)``."""
        import shutil

        self.inputs[name] = {"key": key}
        old = self.old_inputs.get(name, {})
        if old.get("key") != key or not (self.old_folder / name).is_file():
            return None, None
        shutil.copy2(self.old_folder / name, self.folder / name)
        self.inputs[name] = old
        return self.folder / name, old

    def said(self, name: str, **facts):
        self.inputs[name].update(facts)


def make_plots(run: Path, table: pd.DataFrame, preds: dict, results, cfg, classes, folder,
               log=print, previous: dict | None = None):
    """Every PNG of a compare report, into ``folder``; returns their paths and what each was drawn from.

    Args:
        run: the compare run folder (its split, feature cache and current plots).
        table, preds: from :func:`transfer.comparison._verdict.combine`.
        results: the records of every sub-run.
        cfg: the validated :class:`~transfer.comparison.CompareConfig`.
        previous: the ``plot_inputs`` of the report being replaced: the t-SNE plots (the slow ones) are copied
            from ``run/plots`` when drawn from the same inputs.

    Returns:
        ``(paths, inputs)``: ``inputs`` for the new report's ``plot_inputs``.
    """
    from transfer.reports import plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reuse = _Previous(Path(run) / "plots", previous or {}, folder)
    y_true = preds["_y_true"]
    made = []
    for strategy in STRATEGIES:
        rows = table[table["strategy"] == strategy]
        if len(rows):
            r = rows.iloc[0]
            made.append(plots.confusion_matrix_png(
                y_true, preds[r["model"]]["pred_label"].to_numpy(), classes, folder / f"confusion-{strategy}.png",
                title=f"{r['model']}: {r['eval_split']} accuracy {r['accuracy']:.3f}"))
    made.append(plots.accuracy_vs_time_png(table, folder / "accuracy-vs-time.png"))
    made.append(reliability_plot(table, preds, folder / "reliability.png"))
    tuned = [r for r in results if r.strategy == "finetune"]
    for res in tuned:  # a run whose stages had nothing to train has no history
        path = Path(res.run_dir) / "history.csv"
        history = pd.read_csv(path) if path.exists() else pd.DataFrame()
        if len(history):
            name = Path(res.run_dir).name
            made.append(plots.training_curves_png(
                history, folder / f"curves-{res.backbone}-{name}.png",
                title=f"{res.backbone} {name}: head (stage 1) then fine-tuning (stage 2)"))
    for backbone in cfg.backbones:
        if "features" in cfg.strategies:
            made.append(_tsne(run, cfg, backbone, reuse, log))
    return [m for m in made if m is not None], reuse.inputs


def inside_pictures(folder: Path, table: pd.DataFrame | None, stage: Path, log=print,
                    previous: dict | None = None) -> tuple[list, list, dict]:
    """``transfer inspect``'s pictures of the models in ``folder`` (a comparison, its ``table``; None: read from
    it) into ``stage/inspect``; copied from ``folder/inspect`` when ``previous`` (what the report being replaced
    drew them from) shows the same models. A model that cannot be looked inside costs only its own pictures.

    Returns:
        ``(files, lines said, inputs)``: ``inputs`` for the new report's ``plot_inputs``.
    """
    from transfer.inspection import IMAGES, draw_models, models_of

    target = Path(stage) / "inspect"
    try:
        _, models = models_of(folder, table, log=log)
        key = f"{IMAGES}|" + "|".join(_stamp(m.run_dir / name) for m in models for name in
                                      ("model.keras", "predictions.csv", f"classifiers/{m.classifier}.skops"))
        files, said = _reused_inside(Path(folder) / "inspect", target, previous or {}, key)
        if files is None:
            files, said = draw_models(models, target, images=IMAGES)
    except TransferError as e:
        return [], [f"no pictures of inside the networks: {e}"], {}
    for line in said:
        log(line)
    return files, said, {"key": key, "files": [Path(f).name for f in files], "said": list(said)}


def _stamp(path: Path) -> str:
    stat = path.stat() if path.is_file() else None
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{path}:-"


def _reused_inside(old: Path, target: Path, previous: dict, key: str):
    """The previous report's inside pictures copied into ``target`` when drawn from ``key``: ``(files, said)``;
    ``(None, None)`` when they must be drawn."""
    import shutil

    names = previous.get("files") or []
    if previous.get("key") != key or not names or not all((old / n).is_file() for n in names):
        return None, None
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(old / name, target / name)
    return [target / n for n in names], list(previous.get("said", []))


def reliability_plot(table: pd.DataFrame, preds: dict, path):
    """The reliability diagram of each strategy's representative (the first row of each strategy), from the
    probability each gave its predictions; None when no row has scores."""
    from transfer.calibration import confidence_error
    from transfer.reports import plots

    models = []
    for strategy in dict.fromkeys(table["strategy"]):
        r = table[table["strategy"] == strategy].iloc[0]
        rows = preds[r["model"]]
        if "score" not in rows or rows["score"].isna().any():
            continue
        confidence = rows["score"].to_numpy(float)
        correct = (rows["pred_label"] == rows["true_label"]).to_numpy()
        models.append((r["model"], confidence, correct, float(r.get("ece_before", np.nan)),
                       confidence_error(confidence, correct)))
    return plots.reliability_png(models, path) if models else None


def _tsne(run, cfg, backbone, reuse: _Previous, log):
    import json

    from transfer.data import read_split
    from transfer.features import cache_key

    name, ecfg = f"tsne-{backbone}.png", cfg.extract_config(backbone)
    split = read_split(Path(run) / "split.csv")
    key = json.dumps({"features": cache_key(ecfg, list(split["path"])), "seed": cfg.seed, "drawing": TSNE_VERSION})
    png, _ = reuse.get(name, key)
    if png is not None:
        return png
    # The features strategy 2 used, from its cache: no second CNN pass.
    png = tsne_plot(run, ecfg, reuse.folder / name, seed=cfg.seed)
    if png is None:
        log(f"no t-SNE plot for {backbone}: fewer than 5 readable evaluation images")
    return png


def tsne_plot(run_dir, cfg, path, *, features_dir=None, limit=1000, seed=0):
    """t-SNE of a run's evaluation images in pixel space beside the same images in CNN feature space.

    Args:
        run_dir: a run folder with ``split.csv`` (compare, classify, extract or finetune).
        cfg: the :class:`~transfer.features.ExtractConfig` of the features to show.
        path: the PNG to write.
        features_dir: the feature cache (default: the shared one): features
            it holds are reused, the CNN runs only over the others.
        limit: at most this many images (a seeded sample; t-SNE is quadratic).

    Returns:
        The PNG's path, or None when fewer than 5 evaluation images are readable.
    """
    from transfer.data import decode_image, evaluation_split, read_split
    from transfer.features import extract_features
    from transfer.reports import plots

    run_dir = Path(run_dir)
    split = read_split(run_dir / "split.csv")
    rows = split[split["split"] == evaluation_split(split)]
    if len(rows) > limit:
        rows = rows.sample(limit, random_state=seed).sort_index()
    # The features of the whole split, as strategy 2 caches them (the same key: no second CNN pass).
    feats = extract_features(split["path"], cfg, cache_dir=features_dir, progress=False)
    pos = {p: i for i, p in enumerate(feats.paths)}
    rows = rows[rows["path"].isin(pos)]
    if len(rows) < 5:
        return None
    pixels = np.stack([decode_image(p, 32, cfg.resize) for p in rows["path"]]).astype(np.float32) / 255
    features = feats.features[[pos[p] for p in rows["path"]]]
    return plots.tsne_png(pixels, features, rows["label"].to_numpy(), path, seed=seed)


def _check_stem_trained(run_dir: Path, freeze: str):
    """Raise when the run kept its first conv layer frozen: its kernels did not change, nothing to draw."""
    from transfer.runtime import read_csv

    if not (run_dir / "layers.csv").exists():
        return
    layers = read_csv(run_dir / "layers.csv")
    convs = layers[layers["type"] == "Conv2D"]
    if len(convs) and not bool(convs.iloc[0]["trainable"]):
        raise TransferError(f"its first conv layer {convs.iloc[0]['name']} stayed frozen in {run_dir.name} "
                            f"(--freeze {freeze}); --freeze none trains it")


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

    from transfer.backbones import build_backbone
    from transfer.finetuning import load_saved_model
    from transfer.inspection import first_conv
    from transfer.reports import plots

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())["finetune"]
    _check_stem_trained(run_dir, cfg["freeze"])
    if cfg["weights"] == "none":
        raise TransferError(f"{run_dir} was fine-tuned from random weights (weights='none'): there are no "
                            "pretrained kernels to compare with.")
    weights = cfg["weights"]
    _, before = first_conv(build_backbone(cfg["backbone"], weights=weights, image_size=cfg["image_size"]))
    name, after = first_conv(load_saved_model(run_dir / "model.keras"))
    if before is None or after is None:
        raise TransferError(f"{cfg['backbone']} has no convolution that reads the RGB input: no kernels to plot.")
    change = float(np.abs(after - before).max() / max(np.abs(before).max(), 1e-12))
    return plots.conv_kernels_png(before, after, path), name, change
