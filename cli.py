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


def _write_csv_atomic(df, path: Path):
    from transfer.fileio import atomic_path

    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


@main.command()
@_backbone_option
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' or the path to a weights file with the ImageNet classifier.")
@click.option("--top", "-k", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Classes to show per image.")
@click.option("--resize", type=click.Choice(["plain", "crop"]), default="plain", show_default=True,
              help="plain: stretch to the input size; crop: keep aspect, centre-crop.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the predictions to this CSV (path,rank,class_index,class_name,score).")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def predict(backbone, weights, top, resize, batch_size, output, paths):
    """ImageNet top-K classes for image files or folders.

    With no PATHS, predicts two photos that ship with scikit-learn.
    """
    row = get_backbone(backbone)  # fail fast, before TensorFlow is imported
    if output is not None and output.suffix.lower() != ".csv":
        raise TransferError(f"--output {output} must end in .csv.")
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
    click.echo(f"{n_images} images predicted with {row.name}, {len(skipped)} skipped.")
    if n_images == 0:  # before writing, so an earlier CSV is not replaced by an empty one
        raise TransferError(f"none of the {len(skipped)} inputs could be read as an image (reasons above).")
    if output is not None:
        _write_csv_atomic(preds, output)
        click.echo(f"Predictions written to {output}")
        if len(skipped):
            skipped_path = output.with_name(output.stem + ".skipped.csv")
            _write_csv_atomic(skipped, skipped_path)
            click.echo(f"Skipped files listed in {skipped_path}")


if __name__ == "__main__":
    sys.exit(main())
