"""The `transfer` command line: parse, build a config, call the `transfer` API, say where results went.

Kept thin and fast: TensorFlow is imported only by commands that build a model.  Every default is read
from the dataclass (or function) that holds it; library errors name arguments (``image_size=4``), and
the group below turns them into this command's flags (``--image-size 4``).
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import os
import re
import sys
from pathlib import Path

import click

from transfer import __version__
from transfer.backbones import DEFAULT_BACKBONE, REGISTRY, BackboneOptions, get_backbone
from transfer.comparison import DEMO_DATA, MIN_SCORED, PROTOCOLS, CompareConfig
from transfer.data import RESIZE_MODES, SEED, TEST_FRACTION, VAL_FRACTION, ImageOptions
from transfer.errors import TransferError
from transfer.features import (
    CLASSIFIERS,
    DEFAULT_CLASSIFIERS,
    SEARCH_SIZE,
    ExtractConfig,
)
from transfer.finetuning import (
    HEADS,
    PRECISIONS,
    SCHEDULES,
    FinetuneConfig,
)
from transfer.inspection import IMAGES
from transfer.reports import DEFAULT_URI as TRACKING_DEFAULT
from transfer.runtime import ENGINES, announce_to, keeps_file_names
from transfer.serving import FORMATS as EXPORT_FORMATS
from transfer.serving import predict_imagenet


def as_flags(message: str, command: click.Command | None) -> str:
    """A library message with ``name=value`` (and bare ``two_words`` names) written as ``command``'s flags."""
    start = r"(?:^|(?<=[\s(`'\"]))"  # a name that starts a word, never one inside a path (runs/lr=0.1/...)
    for param in command.params if command is not None else ():
        if isinstance(param, click.Option):
            flag = max(param.opts, key=len)
            message = re.sub(rf"{start}{param.name}=", f"{flag} ", message)
            if "_" in param.name:
                message = re.sub(rf"{start}{param.name}(?![\w/=-])", flag, message)
    return message


def os_error_line(e: OSError) -> str:
    """A system error as one line: what failed, on which file, and what to do."""
    from transfer.runtime import DISK_FULL, disk_full

    if e.errno in DISK_FULL:
        return str(disk_full(Path(e.filename).parent if e.filename else Path.cwd(), e.filename or "a file"))
    if e.filename:
        return f"{e.strerror or e}: {e.filename}. Check that it exists and that you may read (or write) it."
    return f"{e.strerror or e} ({type(e).__name__})."


class _Group(click.Group):
    """Turns TransferError (and file-system errors) into a one-line message instead of a traceback."""

    def invoke(self, ctx):
        for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is shown, not a crash
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        # TensorFlow's C++ start-up lines are noise for a CLI user: one line of ours says what it runs on instead.
        announce_to(lambda line: click.echo(line, err=True))
        try:
            with keeps_file_names():
                return super().invoke(ctx)
        except TransferError as e:
            name = ctx.invoked_subcommand
            click.echo(f"Error: {as_flags(str(e), self.get_command(ctx, name) if name else None)}", err=True)
            ctx.exit(2)
        except BrokenPipeError:  # the reader went away (`| head`): nothing to say, nobody to say it to
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the interpreter's own flush at exit
            ctx.exit(1)
        except OSError as e:
            click.echo(f"Error: {os_error_line(e)}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="transfer")
def main():
    """Fine-tune a pretrained ImageNet CNN, or train classifiers on its frozen features?"""


def _options(*options):
    """Apply click options in the order they are listed."""
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def _config(cls, params: dict):
    """``cls`` from the command's parameters that are fields of it."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names})


def _given(ctx: click.Context, params: dict) -> dict:
    """The parameters the user gave (not left at their defaults)."""
    return {k: v for k, v in params.items()
            if ctx.get_parameter_source(k) not in (None, click.core.ParameterSource.DEFAULT)}


def _default_of(function, name):
    """The default of ``function``'s argument ``name``: written there once, shown in ``--help``."""
    return inspect.signature(function).parameters[name].default


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _none_word(ctx, param, value):
    return None if value == "none" else value


BACKBONE = click.option("--backbone", "-b", default=DEFAULT_BACKBONE, show_default=True,
                        help="Registry name; `transfer backbones` lists them.")
DATA = click.option("--data", "-d", required=True,
                    help="A folder (one sub-folder per class, optionally under train/ val/ test/), a CSV manifest "
                         "(path,label[,split]), or a built-in: digits, fashion-mnist.")
IMAGE_SIZE = click.option("--image-size", type=click.IntRange(8), help="Input size (default: the backbone's).")
RESIZE = click.option("--resize", type=click.Choice(RESIZE_MODES), default=ImageOptions.resize, show_default=True,
                      help="crop: keep aspect, centre-crop; plain: stretch.")
BATCH_SIZE = click.option("--batch-size", type=click.IntRange(1), default=ImageOptions.batch_size, show_default=True)
WEIGHTS = click.option("--weights", default=BackboneOptions.weights, show_default=True,
                       help="'imagenet', 'none' or a weights file.")
ENGINE = click.option("--engine", type=click.Choice(ENGINES), default=BackboneOptions.engine, show_default=True,
                      help="What runs the frozen CNN forward: auto (ONNX Runtime where installed, checked against "
                           "TensorFlow and faster here, measured once), tensorflow or onnxruntime.")


def _search_size(ctx, param, value):
    if value is None or str(value).lower() == "all":
        return None
    try:
        return click.IntRange(10).convert(value, param, ctx)
    except click.BadParameter:
        raise click.BadParameter(f"{value!r} is not a whole number of at least 10, or all.") from None


SEARCH = click.option("--search-size", default=str(SEARCH_SIZE), show_default=True, callback=_search_size,
                      help="The classifiers' grid searches see a stratified sample of at most this many training "
                           "images (all: every one); each refit sees all.")
DROP_DUPLICATES = click.option(
    "--drop-duplicates", is_flag=True,
    help="Leave each test image that has a copy (exact, or near by the backbone's features) in train or val out of "
         "the test split, before training (the training copies are kept; skipped.csv lists them).")
SPLIT = _options(
    click.option("--val-fraction", type=float, default=VAL_FRACTION, show_default=True,
                 help="Validation share when the data has no splits of its own."),
    click.option("--test-fraction", type=float, default=TEST_FRACTION, show_default=True,
                 help="Test share when the data has no splits of its own."),
    click.option("--seed", type=int, default=SEED, show_default=True),
)
PRECISION = click.option("--precision", type=click.Choice(PRECISIONS), default=FinetuneConfig.precision,
                         show_default=True,
                         help="auto: mixed_float16 on a GPU, bf16 on a CPU where it measures faster.")
FEATURE_OPTIONS = _options(
    click.option("--layer", default=ExtractConfig.layer, show_default=True,
                 help="pooled, flatten (the last conv block flattened) or a layer name (e.g. fc1)."),
    click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default=ExtractConfig.pooling,
                 show_default=True, callback=_none_word, help="Pooling of conv outputs ('none' flattens them)."),
    click.option("--flip-average/--no-flip-average", default=ExtractConfig.flip_average, show_default=True,
                 help="Average each image's features with its mirror image's (twice the CNN time)."),
)
EXECUTOR = _options(
    click.option("--executor", default=ExtractConfig.executor, show_default=True,
                 help="Where the CNN pass runs: local, ray (a Ray of this machine's own) or ray:ADDRESS (a running "
                      "cluster, e.g. ray:auto). Ray needs pip install -e '.[ray]'."),
    click.option("--actors", type=click.IntRange(1), default=ExtractConfig.actors,
                 help="With Ray: the actor pool's size (default: as many as the cluster's CPUs or GPUs allow)."),
    click.option("--actor-cpus", type=click.FloatRange(0, min_open=True), default=ExtractConfig.actor_cpus,
                 show_default=True, help="With Ray: CPUs each actor reserves."),
    click.option("--actor-gpus", type=click.FloatRange(0), default=ExtractConfig.actor_gpus, show_default=True,
                 help="With Ray: GPUs each actor reserves (e.g. 1, or 0.5 to share one between two)."),
)
FINETUNE_OPTIONS = _options(
    click.option("--head", type=click.Choice(HEADS), default=FinetuneConfig.head, show_default=True,
                 help="Stage 1: probe (a logistic regression on the cached features, its C cross-validated on "
                      "train, becomes the head: LP-FT) or train (--head-epochs at --lr)."),
    click.option("--head-epochs", type=click.IntRange(0), default=FinetuneConfig.head_epochs, show_default=True,
                 help="Stage 1 with --head train: head only, at --lr."),
    click.option("--epochs", type=click.IntRange(0), default=FinetuneConfig.epochs, show_default=True,
                 help="Stage 2: unfrozen down to --freeze, at --lr / --lr-mult."),
    click.option("--lr", type=float, default=FinetuneConfig.lr, show_default=True),
    click.option("--lr-mult", type=float, default=FinetuneConfig.lr_mult, show_default=True,
                 help="Stage 2 trains at --lr / --lr-mult, after one epoch of warm-up."),
    click.option("--augment/--no-augment", default=FinetuneConfig.augment, show_default=True,
                 help="Flip, rotation, zoom, contrast. Off: stage 1 trains on the cached features."),
    click.option("--patience", type=click.IntRange(0), default=FinetuneConfig.patience, show_default=True,
                 help="Early stopping when validation accuracy (then loss) stops improving; 0: off. The epoch kept is "
                      "the best by the same ranking."),
    PRECISION,
)


@main.group()
def cache():
    """The feature cache every run shares: list it, prune it."""


CACHE_DIR = click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path),
                         help="The cache folder (default: $TRANSFER_CACHE, else ~/.cache/transfer/features).")


@cache.command("list")
@CACHE_DIR
def cache_list(root):
    """One line per feature setting: images, size on disk, last use."""
    from transfer.features import cache_root, cached_settings

    table = cached_settings(root)
    click.echo(table.to_string(index=False) if len(table) else "(empty)")
    click.echo(f"Cache: {cache_root(root)} ({table['megabytes'].sum():,.1f} MB)")


@cache.command("prune")
@CACHE_DIR
@click.option("--key", "keys", multiple=True, help="A key from `transfer cache list` (repeatable).")
@click.option("--older-than", type=click.FloatRange(0), help="Remove the settings unused for this many days.")
@click.option("--all", "everything", is_flag=True, help="Remove every cached feature.")
def cache_prune(root, keys, older_than, everything):
    """Remove cached features (the next run that needs them extracts them again)."""
    from transfer.features import prune

    removed = prune(root, keys=keys, older_than_days=older_than, everything=everything)
    for row in removed.itertuples():
        click.echo(f"removed {row.key}: {row.backbone} {row.layer}, {row.images} images, {row.megabytes} MB")
    click.echo(f"{len(removed)} removed, {removed['megabytes'].sum():,.1f} MB freed.")


@main.command()
@click.option("--csv", "as_csv", is_flag=True, help="Write CSV to stdout instead of a table.")
def backbones(as_csv):
    """List the backbones: input size, feature size, parameters, offline weights."""
    header = ["name", "input_size", "feature_size", "params", "weights_offline", "weights_source"]
    rows = [[r.name, r.input_size, r.feature_size, r.params,
             "yes" if r.weights_offline() else "no", r.weights_source] for r in REGISTRY.values()]
    if as_csv:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *rows])
        return click.echo(out.getvalue(), nl=False)
    shown = [[name, f"{size}", f"{feat}", f"{params:,}", off, src] for name, size, feat, params, off, src in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown, strict=True)]
    for line in [header, *shown]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


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


def _write_outputs(preds, skipped, output):
    """The predictions CSV and, always beside it, the skipped files (so no stale list survives)."""
    from transfer.runtime import write_csv

    if output is None:
        return
    skipped_path = output.with_name(output.stem + ".skipped.csv")
    for df, path in ((preds, output), (skipped, skipped_path)):
        try:
            write_csv(df, path)
        except OSError as e:
            raise TransferError(f"Cannot write {path}: {e.strerror or e}.") from None
    click.echo(f"Predictions written to {output}; skipped files ({len(skipped)}) to {skipped_path}")


def _echo_predictions(preds, run_dir):
    if run_dir is not None:
        for r in preds.itertuples():
            click.echo(f"{r.pred_label}  {r.score:7.3f}  {r.path}")
        return
    for path, group in preds.groupby("path", sort=False):
        click.echo(path)
        for r in group.itertuples():
            click.echo(f"  {r.rank:>3}  {r.score:6.3f}  {r.class_name} ({r.class_index})")


@main.command()
@BACKBONE
@click.option("--weights", default=_default_of(predict_imagenet, "weights"), show_default=True,
              help="'imagenet' or the path to a weights file with the ImageNet classifier "
                   "(a Keras .h5/.weights.h5, or a .pth for efficientnet_lite*).")
@click.option("--top", "-k", type=click.IntRange(1, 1000), default=_default_of(predict_imagenet, "top"),
              show_default=True, help="Classes to show per image.")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default=_default_of(predict_imagenet, "resize"),
              show_default=True,
              help="plain: stretch to the input size (as ImageNet models are evaluated); crop: keep aspect.")
@BATCH_SIZE
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the predictions to this CSV (path,rank,class_index,class_name,score; with --run or --model: "
                   "path,pred_label,score,classifier).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Classify with this run's model (classify: backbone + fitted classifier; finetune).")
@click.option("--classifier", help="With --run: which fitted classifier (default: the run's best).")
@click.option("--model", "model_file", type=click.Path(path_type=Path),
              help="Classify with a file that `transfer export` wrote (.keras, .onnx, .tflite or a SavedModel "
                   "folder): it carries its classes and preprocessing, no run folder needed.")
@ENGINE
@click.option("--executor", default=ExtractConfig.executor, show_default=True,
              help="With --run of a classify run: where the CNN pass runs (local, ray, ray:ADDRESS), as for classify.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def predict(backbone, weights, top, resize, batch_size, output, run_dir, classifier, model_file, engine, executor,
            paths):
    """ImageNet top-K classes for image files or folders (no PATHS: two photos that ship with scikit-learn).

    With --run RUN_DIR, predicts the classes of a `transfer classify` or `transfer finetune` run; with
    --model FILE, those of an exported model.
    """
    from transfer.data import sample_images

    row = get_backbone(backbone)  # fail fast, before TensorFlow is imported
    _check_writable(output)
    if model_file is not None:
        if run_dir is not None:
            raise TransferError("--run and --model both given: give one (a run folder, or a file it exported).")
        from transfer.serving import predict_exported

        run_dir = model_file  # printed as a run's predictions are
        preds, skipped = predict_exported(model_file, list(paths), batch_size=batch_size, log=click.echo)
        return _finish_predict(preds, skipped, output, f"classified with {model_file}", run_dir)
    if run_dir is None and not paths:
        paths = sample_images()
        click.echo(f"No PATHS given: predicting the sample photos of scikit-learn ({len(paths)} images).")
    from transfer.serving import predict_run

    preds, skipped = (predict_run(run_dir, list(paths), classifier=classifier, batch_size=batch_size, engine=engine,
                                  executor=executor, log=click.echo) if run_dir
                      else predict_imagenet(list(paths), row.name, top=top, weights=weights, resize=resize,
                                            batch_size=batch_size, engine=engine, log=click.echo))
    n = len(preds) if run_dir else preds["path"].nunique()
    how = f"classified with {run_dir} ({preds['classifier'].iloc[0] if n else '-'})" if run_dir else \
        f"predicted with {row.name}"
    _finish_predict(preds, skipped, output, how, run_dir)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model", help="Which model of the run (a compare.csv model name, a sub-run folder such as "
              "scratch, or a classifier name; default: the one the verdict says to use, or the run's best).")
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), default="keras", show_default=True,
              help="keras (.keras), savedmodel (a folder), onnx (.onnx, needs .[onnx]) or tflite (.tflite).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="The file (a folder for savedmodel) to write.")
def export(run_dir, model, fmt, out):
    """One self-contained model of a run: uint8 images of any size in, class scores out (no scikit-learn)."""
    from transfer.serving import export_model

    meta = export_model(run_dir, out, model=model, fmt=fmt, log=click.echo)
    click.echo(f"Input: {meta['input']}; output: {meta['outputs']} of {len(meta['classes'])} classes "
               f"({', '.join(meta['classes'][:10])}{', ...' if len(meta['classes']) > 10 else ''}).")
    click.echo(f"Try it: transfer predict --model {out} IMAGES")


@main.command("inspect")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--backbone", "-b", help="Instead of a run: pass IMAGE files through this pretrained backbone "
              "(activation maps only).")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="An image whose activation maps to draw (repeat for more): through --backbone, or through each "
                   "network of RUN_DIR (default there: the first test image shown).")
@WEIGHTS
@IMAGE_SIZE
@click.option("--layer", "layers", multiple=True, help="A layer whose maps to draw (repeat; default: one per stage, "
              "from the stem to the last convolutional block).")
@click.option("--images", "n_images", type=click.IntRange(1), default=IMAGES, show_default=True,
              help="Test images per model for Grad-CAM: some right, and the most confident mistakes.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Where the PNG files go (default: RUN/inspect; needed with --backbone).")
def inspect_command(run_dir, backbone, images, weights, image_size, layers, n_images, out):
    """Inside the networks of a run: Grad-CAM of each model that ships on test images, one image's activation maps
    per stage, the first layer's kernels and how far fine-tuning moved each block (PNG files)."""
    from transfer.inspection import inspect_backbone, inspect_run

    if (run_dir is None) == (backbone is None):
        raise click.UsageError("give either RUN_DIR (a run of compare, finetune, classify or scratch) or --backbone "
                               "NAME with --image files.")
    if backbone is not None:
        if out is None or not images:
            raise click.UsageError("--backbone needs --image FILE (one or more) and --out FOLDER.")
        done = inspect_backbone(backbone, images, out, weights=weights, image_size=image_size, layers=layers or None)
    else:
        done = inspect_run(run_dir, out, images=n_images, layers=layers or None, through=images, log=click.echo)
    click.echo(str(done))


def _finish_predict(preds, skipped, output, how, run_dir):
    _echo_predictions(preds, run_dir)
    for r in skipped.itertuples():
        click.echo(f"skipped {r.path}: {r.reason}", err=True)
    n = len(preds) if run_dir else preds["path"].nunique()
    click.echo(f"{_count(n, 'image')} {how}, {len(skipped)} skipped.")
    if n == 0:  # before writing, so an earlier CSV is not replaced by an empty one
        raise TransferError(f"none of the {len(skipped)} inputs could be read as an image (reasons above).")
    _write_outputs(preds, skipped, output)


def _run_folder(out, command: str, data) -> Path:
    """``--out``, or ``runs/COMMAND-NAME`` with NAME from ``--data`` when it was not given."""
    from transfer.runtime import slug

    return Path(out) if out else Path("runs") / f"{command}-{slug(Path(str(data)).stem) or 'data'}"


def _report_skipped_count(out: Path):
    skipped = out / "skipped.csv"
    if skipped.exists():
        n = max(0, len(skipped.read_text().splitlines()) - 1)
        if n:
            click.echo(f"{_count(n, 'file')} could not be read and were skipped: see {skipped}")


EXTRACT_OPTIONS = _options(
    BACKBONE, DATA,
    click.option("--out", "-o", "out", type=click.Path(path_type=Path),
                 help="Run folder for features, reports and models (default: runs/COMMAND-NAME, NAME from --data)."),
    FEATURE_OPTIONS, IMAGE_SIZE, RESIZE, BATCH_SIZE, WEIGHTS, ENGINE, EXECUTOR, SPLIT,
)


@main.command()
@EXTRACT_OPTIONS
def extract(data, out, val_fraction, test_fraction, seed, **options):
    """Run the frozen backbone once over every image and cache the features."""
    from transfer.features import cache_root
    from transfer.features import extract as run_extract

    cfg = _config(ExtractConfig, options)
    out = _run_folder(out, "extract", data)
    split, feats = run_extract(data, out, cfg, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                               log=click.echo)
    how = "reused from the cache" if feats.from_cache else f"extracted in {feats.seconds:.1f} s"
    click.echo(f"{len(feats.paths)} images -> {feats.features.shape[1]} features each ({how}); "
               f"{len(feats.skipped)} skipped.")
    click.echo(f"Split: {out / 'split.csv'}  Skipped: {out / 'skipped.csv'}  Features: {cache_root()} "
               "(the shared feature cache: transfer cache list)")


@main.command()
@BACKBONE
@DATA
@click.option("--out", "-o", "out", type=click.Path(path_type=Path),
              help="Folder for duplicates.csv (default: runs/check-NAME, NAME from --data).")
@FEATURE_OPTIONS
@IMAGE_SIZE
@RESIZE
@BATCH_SIZE
@WEIGHTS
@ENGINE
def check(data, out, **options):
    """Look for copies in the data: exact (same pixels) and near (the backbone's features), within and across
    its splits, and images under two labels. classify and compare run the same check on their split."""
    from transfer.features import check as run_check

    cfg = _config(ExtractConfig, options)
    out = _run_folder(out, "check", data)
    found = run_check(data, out, cfg, log=click.echo)
    if len(found.duplicates):
        click.echo(f"{out / 'duplicates.csv'} lists each of the {len(found.duplicates)} pairs (path, copy_path, kind, "
                   "similarity, relation, label_conflict); classify and compare --drop-duplicates leave the test "
                   "side of each leak out.")


@main.command()
@EXTRACT_OPTIONS
@click.option("--classifier", "-c", "classifiers", default=",".join(DEFAULT_CLASSIFIERS), show_default=True,
              help=f"Comma-separated: {', '.join(CLASSIFIERS)} (or 'all').")
@SEARCH
@DROP_DUPLICATES
def classify(data, out, classifiers, search_size, drop_duplicates, val_fraction, test_fraction, seed, **options):
    """Train scikit-learn classifiers on the frozen features and evaluate them."""
    from transfer.features import classify as run_classify
    from transfer.features import parse_classifiers

    parse_classifiers(classifiers)  # fail before any extraction
    cfg = _config(ExtractConfig, options)
    out = _run_folder(out, "classify", data)
    table = run_classify(data, out, cfg, classifiers, val_fraction=val_fraction, test_fraction=test_fraction,
                         seed=seed, search_size=search_size, drop_duplicates=drop_duplicates, log=click.echo)
    click.echo(table[["classifier", "accuracy", "macro_f1", "fit_seconds", "best_params"]]
               .to_string(index=False))
    click.echo(f"Evaluated on the {table['eval_split'].iloc[0]} split ({table['n_test'].iloc[0]} images).")
    click.echo(f"Images: {json.loads((out / 'config.json').read_text())['roles']}.")
    _report_skipped_count(out)
    click.echo(f"Reports in {out}: metrics.csv predictions.csv per_class.csv search.csv config.json split.csv "
               "skipped.csv, classifiers/ (for predict --run)")


@main.command()
@BACKBONE
@click.option("--data", "-d", required=True, help="As for classify: a folder, a CSV manifest, digits or fashion-mnist.")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path),
              help="Run folder (its own: an extract run's folder shares its split and features; default: "
                   "runs/finetune-NAME, NAME from --data).")
@click.option("--freeze", default=FinetuneConfig.freeze, show_default=True,
              help="Frozen in stage 2: all (head only), none, a layer count from the input, a fraction (0.5: the "
                   "first half of the layers), or a layer/block name from which on everything trains (block6a).")
@FINETUNE_OPTIONS
@click.option("--dropout", type=float, default=FinetuneConfig.dropout, show_default=True)
@click.option("--hidden", type=click.IntRange(0), default=FinetuneConfig.hidden, show_default=True,
              help="Units of a hidden dense layer in the head (0: none).")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default=FinetuneConfig.class_weight or "none",
              show_default=True,
              callback=_none_word)
@click.option("--schedule", type=click.Choice(SCHEDULES), default=FinetuneConfig.schedule, show_default=True,
              help="Learning-rate schedule of each stage.")
@click.option("--train-bn", is_flag=True, help="Let BatchNorm layers train (in training mode).")
@IMAGE_SIZE
@RESIZE
@BATCH_SIZE
@WEIGHTS
@ENGINE
@SPLIT
@click.option("--features-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache for stage 1 (default: the shared one, $TRANSFER_CACHE or ~/.cache/transfer/features, "
                   "where a classify run on the same images left its CNN pass).")
def finetune(data, out, val_fraction, test_fraction, features_dir, **options):
    """Fine-tune the backbone with a new head (strategy 1); resumes when run again after a kill."""
    from transfer.finetuning import finetune as run_finetune

    cfg = _config(FinetuneConfig, options)
    out = _run_folder(out, "finetune", data)
    r = run_finetune(data, out, cfg, val_fraction=val_fraction, test_fraction=test_fraction,
                     features_dir=features_dir, log=click.echo).iloc[0]
    _report_skipped_count(out)
    click.echo(f"Reports in {out}: model.keras history.csv metrics.csv predictions.csv per_class.csv layers.csv "
               f"config.json split.csv skipped.csv ({r['eval_split']} accuracy {r['accuracy']:.3f})")


def _echo_compare(result):
    import pandas as pd

    table = result.table
    shown = table.assign(ci95=[f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(table["accuracy_ci_low"],
                                                                      table["accuracy_ci_high"], strict=True)])
    cols = ["role", "model", "accuracy", "ci95", "train_seconds", "inference_images_per_second", "selection_score",
            "p_vs_recommended", "differs_from_recommended"]
    click.echo(f"\n{table['eval_split'].iloc[0]} images scored: {table['n_test'].iloc[0]}; the recommended model "
               "first, then each strategy's representative (chosen before the test images, by selection_score), then "
               "the rest for information:")
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        click.echo(shown[cols].rename(columns={"inference_images_per_second": "images/s",
                                               "selection_score": "selection", "p_vs_recommended": "p_vs_rec",
                                               "differs_from_recommended": "differs"}).to_string(index=False))
    click.echo(f"Verdict: {result.verdict}")
    click.echo(f"Images: {result.roles}.")
    click.echo("Time here: " + ", ".join(f"{phase} {s:.0f} s" for phase, s in result.seconds.items()) +
               " (sub-runs reused from an earlier run take the time of reading them back).")
    if result.skipped:
        click.echo(f"{_count(result.skipped, 'file')} could not be read and were skipped: see "
                   f"{result.out / 'skipped.csv'}")
    click.echo(f"Report: {result.report} (open it in a browser); the table: {result.table_file}")
    click.echo(f"Plots:  {result.out / 'plots'}/ ({', '.join(sorted(p.name for p in result.plots))})")
    inside = sorted(p.name for p in (result.out / "inspect").glob("*.png"))
    if inside:
        click.echo(f"Inside the networks: {result.out / 'inspect'}/ ({', '.join(inside)}); report.html shows "
                   "Grad-CAM and the kernels")


def _echo_repeats(result):
    import pandas as pd

    summary, out = result.table, result.out
    cols = ["model", "mean_accuracy", "std_accuracy", "min_accuracy", "max_accuracy", "mean_train_seconds",
            "diff_vs_best", "diff_ci_low", "diff_ci_high", "differs_from_best"]
    click.echo(f"\nover {summary['repeats'].iloc[0]} repeats, best mean first:")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        click.echo(summary[cols].to_string(index=False))
    click.echo(f"Verdict: {result.verdict}")
    click.echo(f"Report: {out / 'repeats.csv'} (every repeat's rows: {out / 'repeats-all.csv'}; each repeat's own "
               f"report in {out}/repeat-K/)")
    click.echo(f"Plot:   {out / 'plots' / 'repeats.png'}")


def _echo_learning_curve(result):
    import pandas as pd

    curve, out = result.table, result.out
    cols = ["train_size", "mean_images_per_class", "n_train", "model", "accuracy", "accuracy_ci_low",
            "accuracy_ci_high", "train_seconds", "role", "differs_from_recommended"]
    click.echo(f"\nlearning curve, every size scored on the same {curve['n_test'].iloc[0]} test images:")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        click.echo(curve[cols].rename(columns={"mean_images_per_class": "per_class"}).to_string(index=False))
    click.echo(f"Verdict: {result.verdict}")
    click.echo(f"Images: {result.roles} in the whole split; each size keeps "
               f"its training images and, in proportion, its validation images (see {out}/size-N/split.csv).")
    click.echo(f"Report: {out / 'learning-curve.csv'} (each size's own report in {out}/size-N/)")
    click.echo(f"Plot:   {out / 'plots' / 'learning-curve.png'}")


@main.command()
@click.option("--data", "-d", help="As for classify: a folder, a CSV manifest, digits or fashion-mnist. Not given: "
                                   "the digits demo (--data digits --image-size 96 --no-augment).")
@click.option("--backbone", "-b", "backbones", default=DEFAULT_BACKBONE, show_default=True,
              help="One or more registry names, comma-separated: every strategy runs for each.")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path),
              help="Run folder (default: runs/compare-NAME, NAME from --data).")
@click.option("--strategies", default=",".join(CompareConfig.strategies), show_default=True,
              help="Comma-separated: features (strategy 2), finetune (strategy 1), scratch (baseline).")
@click.option("--classifier", "-c", "classifiers", default=",".join(CompareConfig.classifiers), show_default=True,
              help="Strategy 2's classifiers, comma-separated (or 'all').")
@SEARCH
@FEATURE_OPTIONS
@EXECUTOR
@click.option("--freeze", default=FinetuneConfig.freeze, show_default=True,
              help="Strategy 1 runs once per value, comma-separated: all, none, a count, a fraction, a layer name "
                   "(e.g. all,100,none).")
@FINETUNE_OPTIONS
@click.option("--scratch-size", type=click.IntRange(16), default=CompareConfig.scratch_size,
              help="Input size of the from-scratch CNN (default: the images' own, within 32-64 px).")
@click.option("--scratch-epochs", type=click.IntRange(1), default=CompareConfig.scratch_epochs, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=CompareConfig.repeats, show_default=True,
              help="Run the whole comparison N times, on splits seeded --seed, --seed+1, ...: mean, spread and "
                   "paired differences (for small data, where one split decides little).")
@click.option("--train-sizes", default=",".join(CompareConfig.train_sizes),
              help="Learning curve: the comparison on nested, seeded subsets of the training split with at most this "
                   "many images per class, comma-separated (e.g. 5,10,25,all), all scored on the same test images: "
                   "learning-curve.csv, plots/learning-curve.png and the crossover. Not with --repeats.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=CompareConfig.protocol, show_default=True,
              help="How images are scored: auto (k-fold cross-validation when one split would score fewer than "
                   f"{MIN_SCORED} images, else one split), kfold or split. A source's own test split is honoured.")
@click.option("--folds", type=click.IntRange(2), default=CompareConfig.folds, show_default=True,
              help="k of the k-fold protocol (at most the smallest class's image count).")
@IMAGE_SIZE
@RESIZE
@BATCH_SIZE
@WEIGHTS
@ENGINE
@SPLIT
@DROP_DUPLICATES
@click.option("--mlflow", "mlflow", is_flag=False, flag_value=TRACKING_DEFAULT, default=None, metavar="[URI]",
              help="Also log the comparison and every model (parameters, metrics, reports) to MLflow: at URI, or "
                   "alone for MLflow's default (./mlflow.db, artefacts in ./mlruns/). Needs .[mlflow].")
def compare(data, out, val_fraction, test_fraction, mlflow, **options):
    """Run both strategies and a from-scratch CNN on one split; write report.html, compare.csv and plots."""
    from transfer.comparison import compare as run_compare

    given = _given(click.get_current_context(), options)  # the rest: the dataclass's defaults (or the demo's)
    cfg = (CompareConfig(**given) if data else CompareConfig.demo(**given))
    if not data:
        data = DEMO_DATA
        click.echo(f"No --data given: the digits demo, as `transfer compare --data digits --image-size "
                   f"{cfg.image_size} --{'' if cfg.augment else 'no-'}augment`.")
    out = _run_folder(out, "compare", data)
    result = run_compare(data, out, cfg, val_fraction=val_fraction, test_fraction=test_fraction, mlflow=mlflow,
                         log=click.echo)
    {"train_sizes": _echo_learning_curve, "repeats": _echo_repeats}.get(result.protocol, _echo_compare)(result)


if __name__ == "__main__":
    sys.exit(main())
