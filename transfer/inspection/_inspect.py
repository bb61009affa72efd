"""``transfer inspect``: inside the networks of a run, as PNG files under ``RUN/inspect/``.

For each model that ships (the fine-tuned model, strategy 2's representative, the scratch CNN): Grad-CAM on test
images, some right and the most confident wrong ones; one image's activations through each network; the first
convolution's kernels pretrained, fine-tuned and from scratch, and how far fine-tuning moved each block.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError

IMAGES = 8  # Grad-CAM images per model: half of them (at most) the most confident mistakes


@dataclasses.dataclass(frozen=True)
class Model:
    """A model of a run to look inside: its name in the reports, kind, sub-run folder and (features) classifier."""

    name: str
    kind: str
    run_dir: Path
    classifier: str | None = None


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What ``transfer inspect`` wrote.

    Attributes:
        folder: where (``RUN/inspect`` by default).
        files: the PNG and CSV files, in the order a reader should see them.
        said: what it says about them (a frozen stem, a classifier used in kNN's place), one line each.
        images: test images shown per model.
        seconds: how long it took.
    """

    folder: Path
    files: tuple
    said: tuple
    images: int
    seconds: float

    def __str__(self) -> str:
        lines = list(self.said) + [f"wrote {len(self.files)} files in {self.seconds:.1f} s to {self.folder}:"]
        return "\n".join(lines + [f"  {Path(f).name}" for f in self.files])


def _config(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        raise TransferError(f"{folder} is not a finished transfer run folder (no readable config.json): give the "
                            "--out folder of compare, finetune, classify or scratch.") from None


def models_of(run_dir, table: pd.DataFrame | None = None, log=print) -> tuple[Path, list[Model]]:
    """The models of ``run_dir`` to look inside: ``(folder holding them, models)``.

    A compare run's representative of each strategy (``table``: its compare.csv rows, best first; default: read
    from the folder); k-fold: those of fold 1, trained on the other folds; finetune, scratch: its model; classify:
    its best classifier. kNN has no gradient: the most accurate other classifier stands in, and is said so.
    """
    run = Path(run_dir)
    if table is not None:
        return run, [_representative(run, table[table["strategy"] == s], log) for s in dict.fromkeys(table["strategy"])]
    config = _config(run)
    command = config.get("command")
    if command == "compare" and (config.get("protocol") or {}).get("name") == "kfold":
        log(f"{run} was scored by cross-validation: looking inside fold 1's models (trained on the other folds)")
        return models_of(run / "fold-1", log=log)
    if command == "compare":
        if not (run / "compare.csv").exists():
            raise TransferError(f"{run} holds several comparisons (--repeats or --train-sizes): inspect one of them, "
                                f"e.g. {run / 'repeat-1'}.")
        return models_of(run, pd.read_csv(run / "compare.csv", keep_default_na=False), log)
    if command == "classify":
        name = config["best_classifier"]
        if name == "knn":
            name = _best_differentiable(run / "metrics.csv", log)
        return run, [Model(f"{config['extract']['backbone']} features + {name}", "features", run, name)]
    if command in ("finetune", "scratch"):
        tuned = config.get("finetune", {})
        name = f"{tuned.get('backbone')} fine-tuned (freeze {tuned.get('freeze')})" if tuned else "scratch CNN"
        return run, [Model(name, command, run)]
    raise TransferError(f"{run} holds a {command!r} run, which has no trained network to look inside: give the --out "
                        "folder of compare, finetune, classify or scratch.")


def _representative(run: Path, rows: pd.DataFrame, log) -> Model:
    row = rows.iloc[0]
    classifier = str(row.get("classifier") or "") or None
    if classifier == "knn":
        others = rows[rows["classifier"] != "knn"]
        if not len(others):
            raise TransferError("the features strategy ran kNN alone, which has no gradient: compare with another "
                                "classifier to see where strategy 2 looks.")
        row, classifier = others.iloc[0], str(others.iloc[0]["classifier"])
        log(f"kNN has no gradient: Grad-CAM shows {row['model']}, the most accurate other classifier")
    return Model(str(row["model"]), str(row["strategy"]), run / str(row["run_dir"]), classifier)


def _best_differentiable(metrics: Path, log) -> str:
    table = pd.read_csv(metrics).sort_values("accuracy", ascending=False, kind="stable")
    others = table[table["classifier"] != "knn"]
    if not len(others):
        raise TransferError("this run fitted kNN alone, which has no gradient: classify with another classifier "
                            "to see where it looks.")
    name = str(others["classifier"].iloc[0])
    log(f"kNN has no gradient: Grad-CAM shows {name}, the most accurate other classifier")
    return name


def network(model: Model):
    """``model`` as a :class:`~transfer.inspection.Network`."""
    from transfer.inspection import _networks

    config = _config(model.run_dir)
    if model.kind == "features":
        return _networks.features(model.run_dir, config, model.name, model.classifier)
    if model.kind == "finetune":
        return _networks.fine_tuned(model.run_dir, config, model.name)
    return _networks.scratch(model.run_dir, config, model.name)


def shown_images(model: Model, n: int = IMAGES) -> pd.DataFrame:
    """Up to ``n`` of the model's evaluation images: the most confident mistakes (at most half), then right ones
    spread over the list (predictions.csv's rows: ``path``, ``true_label``, ``pred_label``, ``score``)."""
    rows = pd.read_csv(model.run_dir / "predictions.csv", keep_default_na=False)
    if model.classifier is not None and "classifier" in rows:
        rows = rows[rows["classifier"] == model.classifier]
    rows = rows.reset_index(drop=True)
    wrong = rows[rows["true_label"].astype(str) != rows["pred_label"].astype(str)]
    wrong = wrong.sort_values("score", ascending=False, kind="stable").head(n // 2)
    right = rows.drop(wrong.index)
    right = right[right["true_label"].astype(str) == right["pred_label"].astype(str)]
    take = min(n - len(wrong), len(right))
    picked = right.iloc[np.linspace(0, len(right) - 1, take).round().astype(int)] if take else right.head(0)
    return pd.concat([picked, wrong]).drop_duplicates("path")


def inspect_run(run_dir, out=None, *, images: int = IMAGES, layers=None, log=print) -> Inspection:
    """Look inside the networks of a run: Grad-CAM, activation maps, kernels (see the module's docstring).

    Args:
        run_dir: the ``--out`` folder of compare, finetune, classify or scratch.
        out: where the files go (default ``RUN/inspect``); replaced as a whole only when every file is written.
        images: test images per model for Grad-CAM.
        layers: layers for the activation maps (None: one per stage).
        log: where progress lines go.

    Raises:
        TransferError: not a finished run folder, or nothing in it to look inside.
    """
    from transfer.inspection._drawing import draw_models
    from transfer.reports import publishing

    if not isinstance(images, int) or isinstance(images, bool) or images < 1:
        raise TransferError(f"images={images!r} is not valid: give a positive whole number of test images per model.")
    start = time.perf_counter()
    run = Path(run_dir)
    folder, models = models_of(run, log=log)
    target = Path(out) if out is not None else run / "inspect"
    with publishing(target.parent) as stage:
        files, said = draw_models(models, stage / target.name, images=images, layers=layers)
    files = [target / Path(f).name for f in files]
    return Inspection(target, tuple(files), tuple(said), images, round(time.perf_counter() - start, 1))


def inspect_backbone(backbone: str, paths, out, *, weights="imagenet", image_size=None, resize: str = "crop",
                     layers=None, log=print) -> Inspection:
    """Activation maps of the images at ``paths`` through a pretrained backbone, one PNG per image into ``out``.

    Raises:
        TransferError: an unknown backbone or layer, or an image that cannot be read (before any is drawn).
    """
    from transfer.data import decode_image
    from transfer.inspection._activations import activation_maps, check_layers
    from transfer.inspection._networks import pretrained
    from transfer.reports import publishing
    from transfer.reports.plots import activations_png

    start = time.perf_counter()
    paths = [Path(p) for p in paths]
    if not paths:
        raise TransferError("no images given: name one or more image files to pass through the backbone.")
    net = pretrained(backbone, weights=weights, image_size=image_size, resize=resize)
    names = check_layers(net.body, layers)
    pixels = np.stack([decode_image(p, net.image_size, resize) for p in paths])
    maps = activation_maps(net, pixels, names)
    target = Path(out)
    files = []
    with publishing(target.parent) as stage:
        for i, path in enumerate(paths):
            png = stage / target.name / f"activations-{path.stem}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            activations_png(pixels[i], [(m.layer, m.maps[i], m.field) for m in maps], png,
                            title=f"{net.name}: {path.name}")
            files.append(target / png.name)
    return Inspection(target, tuple(files), (), len(paths), round(time.perf_counter() - start, 1))
