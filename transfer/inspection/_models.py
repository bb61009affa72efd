"""Which models of a run ``transfer inspect`` looks inside, and which of their test images it shows."""

from __future__ import annotations

import dataclasses
import json
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


def run_config(folder: Path) -> dict:
    """A run folder's ``config.json``.

    Raises:
        TransferError: the folder holds no finished run.
    """
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
    config = run_config(run)
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


def shown_images(model: Model, n: int = IMAGES) -> pd.DataFrame:
    """Up to ``n`` of the model's evaluation images: the most confident mistakes (at most half), then right ones
    spread over the list (predictions.csv's rows: ``path``, ``true_label``, ``pred_label``, ``score``)."""
    rows = pd.read_csv(model.run_dir / "predictions.csv", keep_default_na=False)
    if model.classifier is not None and "classifier" in rows:
        rows = rows[rows["classifier"] == model.classifier]
    rows = rows[[Path(p).is_file() for p in rows["path"]]].reset_index(drop=True)  # moved since the run: not shown
    wrong = rows[rows["true_label"].astype(str) != rows["pred_label"].astype(str)]
    wrong = wrong.sort_values("score", ascending=False, kind="stable").head(n // 2)
    right = rows.drop(wrong.index)
    right = right[right["true_label"].astype(str) == right["pred_label"].astype(str)]
    take = min(n - len(wrong), len(right))
    picked = right.iloc[np.linspace(0, len(right) - 1, take).round().astype(int)] if take else right.head(0)
    return pd.concat([picked, wrong]).drop_duplicates("path")
