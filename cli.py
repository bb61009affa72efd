"""The `transfer` command line: parse, call the `transfer` API, say where results went.

Kept thin and fast: TensorFlow is imported only by commands that build a model.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import click

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) is noise for a CLI user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from transfer import __version__  # noqa: E402
from transfer.backbones import DEFAULT_BACKBONE, REGISTRY, get_backbone  # noqa: E402
from transfer.errors import TransferError  # noqa: E402


class _Group(click.Group):
    """Turns TransferError into a one-line message instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TransferError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="transfer")
def main():
    """Fine-tune a pretrained ImageNet CNN, or train classifiers on its frozen features?"""


def _backbone_option(f):
    return click.option(
        "--backbone", "-b", default=DEFAULT_BACKBONE, show_default=True,
        help="Registry name; `transfer backbones` lists them.",
    )(f)


@main.command()
@click.option("--csv", "as_csv", is_flag=True, help="Write CSV to stdout instead of a table.")
def backbones(as_csv):
    """List the backbones: input size, feature size, parameters, offline weights."""
    header = ["name", "input_size", "feature_size", "params", "weights_offline", "weights_source"]
    rows = [[r.name, r.input_size, r.feature_size, r.params,
             "yes" if r.weights_offline() else "no", r.weights_source] for r in REGISTRY.values()]
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows([header, *rows])
        click.echo(out.getvalue(), nl=False)
        return
    shown = [[name, f"{size}", f"{feat}", f"{params:,}", off, src] for name, size, feat, params, off, src in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown, strict=True)]
    for line in [header, *shown]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _check_writable(path: Path | None):
    """Fail before any work when an output file cannot be written."""
    if path is None:
        return
    if path.suffix.lower() != ".csv":
        raise TransferError(f"--output {path} must end in .csv.")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise TransferError(f"--output {path} cannot be written: {parent} is not a writable folder.")
    if path.is_dir():
        raise TransferError(f"--output {path} is a folder: give a file name ending in .csv.")


def _write_csv_atomic(df, path: Path):
    from transfer.fileio import atomic_path

    try:
        with atomic_path(path, suffix=".csv") as tmp:
            df.to_csv(tmp, index=False)
    except OSError as e:
        raise TransferError(f"Cannot write {path}: {e.strerror or e}.") from None


@main.command()
@_backbone_option
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' or the path to a weights file with the ImageNet classifier "
                   "(a Keras .h5/.weights.h5, or a .pth for efficientnet_lite*).")
@click.option("--top", "-k", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Classes to show per image.")
@click.option("--resize", type=click.Choice(["plain", "crop"]), default="plain", show_default=True,
              help="plain: stretch to the input size; crop: keep aspect, centre-crop.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the predictions to this CSV (path,rank,class_index,class_name,score).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Classify with this run's backbone + fitted classifier instead of ImageNet classes.")
@click.option("--classifier", help="With --run: which fitted classifier (default: the run's best).")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def predict(backbone, weights, top, resize, batch_size, output, run_dir, classifier, paths):
    """ImageNet top-K classes for image files or folders.

    With no PATHS, predicts two photos that ship with scikit-learn.
    With --run RUN_DIR, predicts the classes of a `transfer classify` run.
    """
    row = get_backbone(backbone)  # fail fast, before TensorFlow is imported
    _check_writable(output)
    if run_dir is not None:
        return _predict_run(run_dir, classifier, batch_size, output, paths)
    if not paths:
        from transfer.data import sample_images

        paths = sample_images()
        click.echo(f"No PATHS given: predicting the sample photos of scikit-learn ({len(paths)} images).")

    from transfer.predict import predict_imagenet

    preds, skipped = predict_imagenet(list(paths), row.name, top=top, weights=weights,
                                      resize=resize, batch_size=batch_size)
    for path, group in preds.groupby("path", sort=False):
        click.echo(path)
        for r in group.itertuples():
            click.echo(f"  {r.rank:>3}  {r.score:6.3f}  {r.class_name} ({r.class_index})")
    for r in skipped.itertuples():
        click.echo(f"skipped {r.path}: {r.reason}", err=True)
    n_images = preds["path"].nunique()
    click.echo(f"{_count(n_images, 'image')} predicted with {row.name}, {len(skipped)} skipped.")
    if n_images == 0:  # before writing, so an earlier CSV is not replaced by an empty one
        raise TransferError(f"none of the {len(skipped)} inputs could be read as an image (reasons above).")
    _write_outputs(preds, skipped, output)


def _report_skipped(skipped):
    for r in skipped.itertuples():
        click.echo(f"skipped {r.path}: {r.reason}", err=True)


def _predict_run(run_dir, classifier, batch_size, output, paths):
    from transfer.predict import predict_run

    preds, skipped = predict_run(run_dir, list(paths), classifier=classifier, batch_size=batch_size)
    for r in preds.itertuples():
        click.echo(f"{r.pred_label}  {r.score:7.3f}  {r.path}")
    _report_skipped(skipped)
    used = preds["classifier"].iloc[0] if len(preds) else "-"
    click.echo(f"{_count(len(preds), 'image')} classified with {run_dir} ({used}), {len(skipped)} skipped.")
    if not len(preds):
        raise TransferError(f"none of the {len(skipped)} inputs could be read as an image (reasons above).")
    _write_outputs(preds, skipped, output)


def _write_outputs(preds, skipped, output):
    """The predictions CSV and, always beside it, the skipped files (so no stale list survives)."""
    if output is None:
        return
    _write_csv_atomic(preds, output)
    skipped_path = output.with_name(output.stem + ".skipped.csv")
    _write_csv_atomic(skipped, skipped_path)
    click.echo(f"Predictions written to {output}; skipped files ({len(skipped)}) to {skipped_path}")


def _report_skipped_count(out: Path):
    skipped = out / "skipped.csv"
    if skipped.exists():
        n = max(0, len(skipped.read_text().splitlines()) - 1)
        if n:
            click.echo(f"{_count(n, 'file')} could not be read and were skipped: see {skipped}")


def _pixels_and_split_options(f):
    """Options every training command shares: how images become pixels, and the split."""
    options = [
        click.option("--resize", type=click.Choice(["crop", "plain"]), default="crop", show_default=True,
                     help="crop: keep aspect, centre-crop; plain: stretch."),
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True),
        click.option("--weights", default="imagenet", show_default=True,
                     help="'imagenet', 'none' or a weights file."),
        click.option("--val-fraction", type=float, default=0.15, show_default=True,
                     help="Validation share when the data has no splits of its own."),
        click.option("--test-fraction", type=float, default=0.15, show_default=True,
                     help="Test share when the data has no splits of its own."),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _extract_options(f):
    options = [
        _backbone_option,
        click.option("--data", "-d", required=True,
                     help="A folder (one sub-folder per class, optionally under train/ val/ test/), a CSV "
                          "manifest (path,label[,split]), or a built-in: digits, fashion-mnist."),
        click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Run folder for features, reports and models."),
        click.option("--layer", default="pooled", show_default=True,
                     help="pooled, flatten (the last conv block flattened) or a layer name (e.g. fc1)."),
        click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default="avg", show_default=True,
                     help="Pooling of conv outputs ('none' flattens them)."),
        click.option("--image-size", type=click.IntRange(8), help="Input size (default: the backbone's)."),
        _pixels_and_split_options,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _extract_config(backbone, layer, pooling, image_size, resize, batch_size, weights):
    from transfer.features import ExtractConfig

    get_backbone(backbone)
    return ExtractConfig(backbone=backbone, weights=weights, layer=layer,
                         pooling=None if pooling == "none" else pooling, image_size=image_size,
                         resize=resize, batch_size=batch_size).validated()


@main.command()
@_extract_options
def extract(backbone, data, out, layer, pooling, image_size, resize, batch_size, weights, val_fraction,
            test_fraction, seed):
    """Run the frozen backbone once over every image and cache the features."""
    from transfer.features import extract as run_extract

    cfg = _extract_config(backbone, layer, pooling, image_size, resize, batch_size, weights)
    split, feats = run_extract(data, out, cfg, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    how = "reused from the cache" if feats.from_cache else f"extracted in {feats.seconds:.1f} s"
    click.echo(f"{len(feats.paths)} images -> {feats.features.shape[1]} features each ({how}); "
               f"{len(feats.skipped)} skipped.")
    click.echo(f"Split: {out / 'split.csv'}  Skipped: {out / 'skipped.csv'}  Features: {out / 'features'}")


@main.command()
@_extract_options
@click.option("--classifier", "-c", "classifiers", default="linear_svm,rbf_svm,logreg,knn,mlp", show_default=True,
              help="Comma-separated: linear_svm, rbf_svm, logreg, knn, mlp (or 'all').")
def classify(backbone, data, out, layer, pooling, image_size, resize, batch_size, weights, val_fraction,
             test_fraction, seed, classifiers):
    """Train scikit-learn classifiers on the frozen features and evaluate them."""
    from transfer.classifiers import classify as run_classify
    from transfer.classifiers import parse_classifiers

    parse_classifiers(classifiers)  # fail before any extraction
    cfg = _extract_config(backbone, layer, pooling, image_size, resize, batch_size, weights)
    table = run_classify(data, out, cfg, classifiers, val_fraction=val_fraction, test_fraction=test_fraction,
                         seed=seed, log=click.echo)
    cols = ["classifier", "test_accuracy", "test_macro_f1", "fit_seconds", "best_params"]
    click.echo(table[cols].to_string(index=False))
    click.echo(f"Evaluated on the {table['eval_split'].iloc[0]} split ({table['n_test'].iloc[0]} images).")
    _report_skipped_count(out)
    click.echo(f"Reports in {out}: metrics.csv predictions.csv per_class.csv search.csv config.json "
               "split.csv skipped.csv")


@main.command()
@_backbone_option
@click.option("--data", "-d", required=True, help="As for classify: a folder, a CSV manifest, digits or fashion-mnist.")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (its own: an extract run's folder shares its split and features).")
@click.option("--freeze", default="none", show_default=True,
              help="Frozen in stage 2: all (head only), none, a layer count from the input, a fraction (0.7), or a "
                   "layer/block name from which on everything trains (block6a).")
@click.option("--head-epochs", type=click.IntRange(0), default=5, show_default=True,
              help="Stage 1: head only, at --lr.")
@click.option("--epochs", type=click.IntRange(0), default=10, show_default=True,
              help="Stage 2: unfrozen down to --freeze, at --lr / --lr-mult.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lr-mult", type=float, default=100.0, show_default=True,
              help="Stage 2 trains at --lr / --lr-mult (fastai's default: 100).")
@click.option("--dropout", type=float, default=0.2, show_default=True)
@click.option("--hidden", type=click.IntRange(0), default=0, show_default=True,
              help="Units of a hidden dense layer in the head (0: none).")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Flip, rotation, zoom, contrast. Off: stage 1 trains on the cached features.")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--patience", type=click.IntRange(0), default=3, show_default=True,
              help="Early stopping on validation loss (best weights restored); 0: off.")
@click.option("--schedule", type=click.Choice(["cosine", "plateau", "constant"]), default="cosine",
              show_default=True, help="Learning-rate schedule of each stage.")
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_float16", "mixed_bfloat16"]),
              default="auto", show_default=True)
@click.option("--train-bn", is_flag=True, help="Let BatchNorm layers train (in training mode).")
@click.option("--image-size", type=click.IntRange(8), help="Input size (default: the backbone's).")
@_pixels_and_split_options
@click.option("--features-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache for stage 1 (default: OUT/features); a classify run's features/ reuses its CNN pass.")
def finetune(backbone, data, out, freeze, head_epochs, epochs, lr, lr_mult, dropout, hidden, augment, class_weight,
             patience, schedule, precision, train_bn, image_size, resize, batch_size, weights, val_fraction,
             test_fraction, seed, features_dir):
    """Fine-tune the backbone with a new head (strategy 1); resumes when run again after a kill."""
    get_backbone(backbone)
    from transfer.finetune import FinetuneConfig
    from transfer.finetune import finetune as run_finetune

    cfg = FinetuneConfig(backbone=backbone, weights=weights, image_size=image_size, resize=resize,
                         batch_size=batch_size, freeze=freeze, head_epochs=head_epochs, epochs=epochs, lr=lr,
                         lr_mult=lr_mult, dropout=dropout, hidden=hidden, augment=augment,
                         class_weight=class_weight, patience=patience, schedule=schedule, precision=precision,
                         train_bn=train_bn, seed=seed).validated()
    table = run_finetune(data, out, cfg, val_fraction=val_fraction, test_fraction=test_fraction,
                         features_dir=features_dir, log=click.echo)
    r = table.iloc[0]
    _report_skipped_count(out)
    click.echo(f"Reports in {out}: model.keras history.csv metrics.csv predictions.csv per_class.csv layers.csv "
               f"config.json split.csv skipped.csv ({r['eval_split']} accuracy {r['test_accuracy']:.3f})")


def _default_out(data) -> Path:
    name = Path(str(data)).stem if str(data) not in ("digits", "fashion-mnist") else str(data)
    from transfer.compare import _slug

    return Path("runs") / f"compare-{_slug(name) or 'data'}"


@main.command()
@click.option("--data", "-d", help="As for classify: a folder, a CSV manifest, digits or fashion-mnist. Not given: "
                                   "the digits demo (--data digits --image-size 96 --no-augment --lr-mult 10).")
@click.option("--backbone", "-b", default=DEFAULT_BACKBONE, show_default=True,
              help="One or more registry names, comma-separated: every strategy runs for each.")
@click.option("--out", "-o", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (default: runs/compare-NAME, NAME from --data).")
@click.option("--strategies", default="features,finetune,scratch", show_default=True,
              help="Comma-separated: features (strategy 2), finetune (strategy 1), scratch (baseline).")
@click.option("--classifier", "-c", "classifiers", default="linear_svm,rbf_svm,logreg,knn,mlp", show_default=True,
              help="Strategy 2's classifiers, comma-separated (or 'all').")
@click.option("--layer", default="pooled", show_default=True,
              help="Strategy 2's feature layer: pooled, flatten or a layer name.")
@click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default="avg", show_default=True)
@click.option("--freeze", default="none", show_default=True,
              help="Strategy 1 runs once per value, comma-separated: all, none, a count, a fraction, a layer name "
                   "(e.g. all,100,none).")
@click.option("--head-epochs", type=click.IntRange(0), default=5, show_default=True)
@click.option("--epochs", type=click.IntRange(0), default=10, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lr-mult", type=float, default=100.0, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Augmentation for fine-tuning and the scratch CNN.")
@click.option("--patience", type=click.IntRange(0), default=3, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_float16", "mixed_bfloat16"]),
              default="auto", show_default=True, help="Fine-tuning precision, as for finetune.")
@click.option("--scratch-size", type=click.IntRange(16), default=64, show_default=True,
              help="Input size of the from-scratch CNN.")
@click.option("--scratch-epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--image-size", type=click.IntRange(8), help="Input size of the backbone (default: its own).")
@_pixels_and_split_options
def compare(data, backbone, out, strategies, classifiers, layer, pooling, freeze, head_epochs, epochs, lr, lr_mult,
            augment, patience, precision, scratch_size, scratch_epochs, image_size, resize, batch_size, weights,
            val_fraction, test_fraction, seed):
    """Run both strategies and a from-scratch CNN on one split; write compare.csv and plots."""
    from transfer.compare import DEMO_DATA, DEMO_OPTIONS, CompareConfig

    demo = data is None
    if demo:  # options given on the command line still win over the demo's
        data = DEMO_DATA
        ctx = click.get_current_context()
        chosen = {k: v for k, v in DEMO_OPTIONS.items()
                  if ctx.get_parameter_source(k) in (None, click.core.ParameterSource.DEFAULT)}
        image_size = chosen.get("image_size", image_size)
        augment = chosen.get("augment", augment)
        lr_mult = chosen.get("lr_mult", lr_mult)
    out = out or _default_out(data)
    cfg = CompareConfig(backbones=backbone, strategies=strategies, classifiers=classifiers, layer=layer,
                        pooling=None if pooling == "none" else pooling, image_size=image_size, resize=resize,
                        batch_size=batch_size, weights=weights, freeze=freeze, head_epochs=head_epochs,
                        epochs=epochs, lr=lr, lr_mult=lr_mult, augment=augment, patience=patience, precision=precision,
                        scratch_size=scratch_size, scratch_epochs=scratch_epochs, seed=seed).validated()
    if demo:
        click.echo(f"No --data given: the digits demo, as `transfer compare --data digits --image-size {image_size} "
                   f"--{'' if augment else 'no-'}augment --lr-mult {lr_mult:g}`.")
    from transfer.compare import compare as run_compare

    table, line = run_compare(data, out, cfg, val_fraction=val_fraction, test_fraction=test_fraction,
                              log=click.echo)
    shown = table.assign(ci95=[f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(table["accuracy_ci_low"],
                                                                      table["accuracy_ci_high"], strict=True)])
    cols = ["model", "test_accuracy", "ci95", "train_seconds", "inference_images_per_second", "trainable_params",
            "mcnemar_p_vs_best", "differs_from_best"]
    click.echo("")
    click.echo(f"{table['eval_split'].iloc[0]} split, {table['n_test'].iloc[0]} images, best first:")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        click.echo(shown[cols].rename(columns={"inference_images_per_second": "images/s",
                                               "mcnemar_p_vs_best": "p_vs_best"}).to_string(index=False))
    click.echo(f"Verdict: {line}")
    _report_skipped_count(out)
    click.echo(f"Report: {out / 'compare.csv'}")
    click.echo(f"Plots:  {out / 'plots'}/ ({', '.join(sorted(p.name for p in (out / 'plots').glob('*.png')))})")


if __name__ == "__main__":
    sys.exit(main())
