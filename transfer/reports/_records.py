"""Run folders and results: opening a run, one result record, every report written from it.

Each strategy (``classify``, ``finetune``, ``train_scratch``) opens its run
folder with :func:`open_run`, returns :class:`Result` records and hands them
to :func:`write_reports`, which writes ``metrics.csv``, ``predictions.csv``,
``per_class.csv``, ``skipped.csv`` and, last, ``config.json`` in one schema.
``compare`` combines the records; it reads a run's files back
(:func:`read_results`) only to reuse a sub-run that already finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.data import SEED, TEST_FRACTION, VAL_FRACTION, evaluation_split
from transfer.errors import TransferError
from transfer.runtime import read_csv, write_csv, write_text_atomic

STRATEGIES = ("features", "finetune", "scratch")
# score: the calibrated probability of the predicted class; score_before: before temperature scaling (empty for a
# model that has none)
PREDICTION_COLUMNS = ["classifier", "path", "true_label", "pred_label", "score", "score_before"]
PER_CLASS_COLUMNS = ["classifier", "label", "precision", "recall", "f1", "support"]
SKIPPED_COLUMNS = ["path", "reason"]
# The version of what a finished run's reports hold; a run written by another is trained again, not reused
# (2: each model's selection score, by which compare chooses a strategy's representative).
RESULT_SCHEMA = 3  # 3: calibrated probabilities (temperature, ECE, Brier score, log-loss before and after)
CALIBRATION_COLUMNS = ("temperature", "ece_before", "ece", "brier_before", "brier", "log_loss_before", "log_loss")


@dataclasses.dataclass
class Run:
    """An opened run folder: where the reports go and the split every model in it is trained and scored on."""

    out: Path
    command: str | None
    data: str
    split: pd.DataFrame
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    seed: int = SEED
    scored: bool = True  # False: a model trained on every labelled image, which other runs scored (k-fold's refit)
    unused: dict = dataclasses.field(default_factory=dict)  # files under a class folder left out, with the reason

    def skipped_with(self, skipped: dict) -> dict:
        """``skipped`` and the files the source left out (pipes, resource forks, ...): what skipped.csv lists."""
        return {**self.unused, **skipped}

    @property
    def eval_split(self) -> str:
        """The split the numbers come from (``test``; ``none`` in a run that scores nothing)."""
        return evaluation_split(self.split) if self.scored else "none"

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.split["label"]))

    @property
    def roles(self) -> str:
        """Which images were scored and which chose, in words."""
        from transfer.data import roles

        if not self.scored:
            return (f"trained on every labelled image ({len(self.rows('train'))}), nothing scored here (the "
                    "cross-validation's folds scored them)")
        return roles(self.split)

    def rows(self, name: str) -> pd.DataFrame:
        """The split's rows of ``train``, ``val`` or ``test``."""
        return self.split[self.split["split"] == name]

    def check_readable(self, skipped: dict):
        """Refuse to train when a split has no readable image, or the training split lacks a class.

        Called before any training, with the files found unreadable so far.
        The message points to the full list, written as ``skipped.csv`` or, in
        a folder holding a finished run, as ``skipped-refused.csv`` (that run's
        own list stays as it was).

        Raises:
            TransferError: naming the split, an example file and its reason.
        """
        for name in dict.fromkeys(("train", "val", self.eval_split)):
            rows = self.rows(name)
            readable = rows[~rows["path"].isin(skipped)]
            if len(rows) and readable.empty:
                example = rows["path"].iloc[0]
                raise TransferError(f"None of the {len(rows)} files of the {name} split is a readable image (e.g. "
                                    f"{example}: {skipped[example]}; every reason is in {self._refused(skipped)}): "
                                    "fix or replace those files.")
            if name == "train" and set(readable["label"]) != set(self.classes):
                missing = sorted(set(self.classes) - set(readable["label"]))
                raise TransferError(f"The training split has no readable image of class(es) {missing} (see "
                                    f"{self._refused(skipped)}): every class needs training images.")

    def _refused(self, skipped: dict) -> Path:
        finished = (self.out / "config.json").exists()
        return write_skipped(self.skipped_with(skipped),
                             self.out / ("skipped-refused.csv" if finished else "skipped.csv"))

    def settings(self) -> dict:
        """What ``config.json`` records of every run, whatever the strategy."""
        return {"command": self.command, "data": self.data, "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction, "seed": self.seed,
                "split_reused": bool(self.split.attrs.get("reused", False)), "eval_split": self.eval_split,
                "roles": self.roles, "classes": self.classes}


def check_run_folder(out, command: str):
    """Refuse to write one command's reports over another command's run.

    Raises:
        TransferError: ``out/config.json`` belongs to another command.
    """
    path = Path(out) / "config.json"
    if not path.exists():
        return
    try:
        other = json.loads(path.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        other = None
    if other and other != command:
        raise TransferError(
            f"{out} holds a `{other}` run, whose reports `{command}` would overwrite: give `{command}` its own out "
            f"folder (copy {Path(out) / 'split.csv'} into it to use the same split"
            + ")."
        )


def open_run(data, out, command: str | None, *, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION,
             seed=SEED, scored=True) -> Run:
    """Open (or create) a run folder and give it its split, before any model is built.

    Args:
        data: what ``--data`` names (a folder, a CSV manifest, ``digits``,
            ``fashion-mnist``), a :class:`~transfer.data._sources.DataSource`, or
            a split table made by another run (a sub-run of ``compare``):
            then the source is not read again.
        out: the run folder.
        command: the command that owns the folder (its reports are refused
            in another command's folder); None for ``extract``, which writes
            no reports.
        val_fraction, test_fraction, seed: how to split a source that has no
            splits of its own (an existing ``out/split.csv`` is reused).
        scored: False for a split table without test images, whose models are scored elsewhere (the refit
            of a cross-validation on every image).

    Raises:
        TransferError: another command's folder, a bad source or split.
    """
    from transfer.data import prepare_split, resolve_source, share_split

    out = Path(out)
    if command is not None:
        check_run_folder(out, command)
    if isinstance(data, pd.DataFrame):
        name = data.attrs.get("source", "a split table")
        out.mkdir(parents=True, exist_ok=True)
        unused = dict(data.attrs.get("unused", {}))
        split = share_split(data, out, scored=scored)
        split.attrs.update(reused=True, source=name, unused=unused)
    else:
        source = resolve_source(data)
        name = source.name
        out.mkdir(parents=True, exist_ok=True)
        split = prepare_split(source, out, val_fraction, test_fraction, seed)
        unused = dict(source.unused)
        split.attrs["unused"] = unused  # for the sub-runs that are given this split
    return Run(out, command, name, split, val_fraction, test_fraction, seed, scored, unused)


@dataclasses.dataclass
class Result:
    """One trained model scored on its run's evaluation split: what every strategy returns.

    Attributes:
        strategy: ``features``, ``finetune`` or ``scratch``.
        backbone: the registry name (``none`` for the scratch CNN).
        classifier: the model's name within its run (``logreg``, ...,
            ``finetune``, ``scratch_cnn``); the ``classifier`` column of the
            predictions and per-class reports.
        paths, y_true, y_pred: the scored images and their true and predicted labels.
        classes: every class of the run, sorted.
        scores: per-class scores (columns in ``classes`` order), when kept.
        score: each prediction's own score (filled from ``scores`` when None).
        params: the chosen hyper-parameters.
        fit_seconds, extract_seconds: training time, and the CNN feature pass it used.
        frozen_params, freeze, epochs_run: for models trained by gradient
            descent (None leaves the columns out of a features run's report).
        run_dir: the run folder the model and its reports are in.
        skipped: ``{path: reason}`` of the files that run could not read.
        selection_score: the score this model was chosen by among its strategy's models, measured without the
            scored images (strategy 2: mean cross-validated accuracy on the training images, the same folds for
            every classifier; the networks: accuracy on the validation split of the epoch kept); NaN: none.
        selected_on: that score in words.
        solver: for strategy 2, what fitted the classifier (the exact solver, or the one that scales; None leaves
            the column out).
        uncalibrated: the probabilities before temperature scaling (``softmax`` of the logits), when ``scores``
            are the calibrated ones; with ``temperature`` they give the calibration columns of the reports.
        temperature: the model's fitted temperature (see :mod:`transfer.calibration`); None: not calibrated.
    """

    strategy: str
    backbone: str
    classifier: str
    eval_split: str
    paths: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    classes: list[str]
    scores: np.ndarray | None = None
    score: np.ndarray | None = None
    layer: str = ""
    params: dict = dataclasses.field(default_factory=dict)
    n_train: int = 0
    fit_seconds: float = 0.0
    extract_seconds: float = 0.0
    feature_dim: int = 0
    inference_images_per_second: float = math.nan
    trainable_params: int = 0
    frozen_params: int | None = None
    freeze: str | None = None
    epochs_run: int | None = None
    run_dir: Path | None = None
    skipped: dict = dataclasses.field(default_factory=dict)
    selection_score: float = math.nan
    selected_on: str = ""
    solver: str | None = None
    uncalibrated: np.ndarray | None = None
    temperature: float | None = None
    measured: dict = dataclasses.field(default_factory=dict)  # calibration columns as read back from metrics.csv
    without_leaks: float | None = None  # accuracy without the test images that have a copy in train or val
    score_before: np.ndarray | None = None  # each prediction's own probability before calibration

    def __post_init__(self):
        self.y_true, self.y_pred = np.asarray(self.y_true, dtype=object), np.asarray(self.y_pred, dtype=object)
        if self.score is None and self.scores is not None:
            column = {c: i for i, c in enumerate(self.classes)}
            self.score = self.scores[np.arange(len(self.y_pred)), [column[p] for p in self.y_pred]]
        if self.score_before is None and self.uncalibrated is not None:
            column = {c: i for i, c in enumerate(self.classes)}
            self.score_before = self.uncalibrated[np.arange(len(self.y_pred)), [column[p] for p in self.y_pred]]

    @property
    def n_test(self) -> int:
        return len(self.paths)

    @property
    def train_seconds(self) -> float:
        """What this model cost to train, the CNN pass of its features included."""
        return self.fit_seconds + self.extract_seconds

    def metrics(self) -> dict:
        """This model's row of ``metrics.csv``."""
        from transfer.reports._metrics import evaluate

        row = {
            "strategy": self.strategy, "backbone": self.backbone, "layer": self.layer,
            "classifier": self.classifier, "best_params": json.dumps(self.params, default=str),
            "eval_split": self.eval_split, "n_train": self.n_train, "n_test": self.n_test,
            **evaluate(self.y_true, self.y_pred, self.scores, self.classes),
            "fit_seconds": round(self.fit_seconds, 3), "extract_seconds": round(self.extract_seconds, 3),
            "feature_dim": self.feature_dim,
            "inference_images_per_second": round(self.inference_images_per_second, 2),
            "trainable_params": self.trainable_params,
            "selection_score": round(self.selection_score, 6), "selected_on": self.selected_on,
        }
        optional = {"frozen_params": self.frozen_params, "freeze": self.freeze, "epochs_run": self.epochs_run,
                    "solver": self.solver, "accuracy_without_leaks": self.without_leaks}
        return {**row, **self.calibration(), **{k: v for k, v in optional.items() if v is not None}}

    def calibration(self) -> dict:
        """The temperature, and ECE / Brier score / log-loss before and after it (empty for an uncalibrated model)."""
        from transfer.calibration import calibration_metrics

        if self.temperature is None or self.scores is None or self.uncalibrated is None:
            return dict(self.measured)
        column = {c: i for i, c in enumerate(self.classes)}
        y = np.array([column[t] for t in self.y_true])
        measured = calibration_metrics(self.uncalibrated, self.scores, y)
        # 4 decimals: what a person reads, and stable across runs whose scores differ by float rounding alone
        return {"temperature": round(float(self.temperature), 4), **{k: round(v, 4) for k, v in measured.items()}}

    def predictions(self) -> pd.DataFrame:
        return pd.DataFrame({"classifier": self.classifier, "path": self.paths, "true_label": self.y_true,
                             "pred_label": self.y_pred, "score": self.score,
                             "score_before": np.nan if self.score_before is None else self.score_before})[
            PREDICTION_COLUMNS]

    def per_class(self) -> pd.DataFrame:
        from transfer.reports._metrics import per_class

        return per_class(self.y_true, self.y_pred, self.classes).assign(classifier=self.classifier)[
            PER_CLASS_COLUMNS]


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("transfer", "tensorflow", "keras", "scikit-learn", "numpy", "pandas", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def write_config(path, config: dict) -> Path:
    """``config.json``: the settings of a run and the package versions, atomically."""
    path = Path(path)
    write_text_atomic(path, json.dumps({**config, "versions": versions()}, indent=2, default=str) + "\n")
    return path


def write_skipped(skipped, path) -> Path:
    """``skipped.csv`` from ``{path: reason}`` or ``(path, reason)`` pairs, sorted by path."""
    items = skipped.items() if isinstance(skipped, dict) else skipped
    return write_csv(pd.DataFrame(sorted(items), columns=SKIPPED_COLUMNS), path)


def metrics_table(results: list[Result]) -> pd.DataFrame:
    """The ``metrics.csv`` table of ``results``, best first."""
    return pd.DataFrame([r.metrics() for r in results]).sort_values("accuracy", ascending=False,
                                                                   kind="stable")


def write_reports(run: Run, results: list[Result], config: dict, folder=None) -> pd.DataFrame:
    """Every report of a run, from its records; ``config.json`` last, so that it marks a finished run.

    Args:
        config: what the strategy adds to :meth:`Run.settings`.
        folder: where to write them (default ``run.out``; a strategy gives the staging folder of
            :func:`transfer.reports.publishing`, so that its model and reports replace the old ones together).

    Returns:
        The metrics table, best first.
    """
    folder = Path(folder) if folder is not None else run.out
    table = metrics_table(results)
    write_csv(table, folder / "metrics.csv")
    write_csv(pd.concat([r.predictions() for r in results]), folder / "predictions.csv")
    write_csv(pd.concat([r.per_class() for r in results]), folder / "per_class.csv")
    skipped = run.skipped_with({path: reason for r in results for path, reason in r.skipped.items()})
    write_skipped(skipped, folder / "skipped.csv")
    write_config(folder / "config.json", {**run.settings(), **config, "n_skipped": len(skipped),
                                          "result_schema": RESULT_SCHEMA})
    return table


def finished_with(folder, settings: dict) -> bool:
    """Whether ``folder`` holds a finished run made with ``settings`` (as its ``config.json`` records them)."""
    folder = Path(folder)
    if not all((folder / name).exists() for name in ("config.json", "metrics.csv", "predictions.csv")):
        return False
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    settings = {**settings, "result_schema": RESULT_SCHEMA}
    return all(saved.get(key) == value for key, value in settings.items())


def _number_or_none(value):
    """An optional number column as read back: a float, or None where the row has none (empty, NaN)."""
    try:
        return None if value is None or value == "" or math.isnan(float(value)) else float(value)
    except (TypeError, ValueError):
        return None


def _count_or_none(value):
    """An optional count column as read back: a number, or None where the row has none (empty, NaN)."""
    try:
        return None if value is None or value == "" or math.isnan(float(value)) else int(float(value))
    except (TypeError, ValueError):
        return None


def read_results(folder) -> list[Result]:
    """The records of a finished run, read back from its reports (to reuse it without training again)."""
    folder = Path(folder)
    classes = [str(c) for c in json.loads((folder / "config.json").read_text())["classes"]]
    skipped = read_csv(folder / "skipped.csv", dtype=str, keep_default_na=False) \
        if (folder / "skipped.csv").exists() else pd.DataFrame(columns=SKIPPED_COLUMNS)
    # Names stay text ("0.50" must not become 0.5, a label "NA" must not become missing); an empty number
    # (an unmeasured rate) is NaN.
    metrics = read_csv(folder / "metrics.csv", dtype={"classifier": str, "freeze": str, "layer": str, "solver": str},
                          keep_default_na=False, na_values={"inference_images_per_second": [""],
                                                            "selection_score": [""]})
    preds = read_csv(folder / "predictions.csv", dtype=str, keep_default_na=False)
    preds["score"] = pd.to_numeric(preds["score"], errors="coerce")
    preds["score_before"] = pd.to_numeric(preds.get("score_before", np.nan), errors="coerce")
    results = []
    for m in metrics.to_dict("records"):
        p = preds[preds["classifier"] == m["classifier"]]
        results.append(Result(
            strategy=m["strategy"], backbone=m["backbone"], classifier=m["classifier"], eval_split=m["eval_split"],
            paths=p["path"].tolist(), y_true=p["true_label"].to_numpy(), y_pred=p["pred_label"].to_numpy(),
            classes=classes, score=p["score"].to_numpy(), score_before=p["score_before"].to_numpy(),
            layer=m["layer"], params=json.loads(m["best_params"]),
            n_train=int(m["n_train"]), fit_seconds=float(m["fit_seconds"]),
            extract_seconds=float(m["extract_seconds"]), feature_dim=int(m["feature_dim"]),
            inference_images_per_second=float(m["inference_images_per_second"]),
            trainable_params=int(m["trainable_params"]), freeze=m.get("freeze") or None,
            frozen_params=_count_or_none(m.get("frozen_params")), epochs_run=_count_or_none(m.get("epochs_run")),
            run_dir=folder, skipped=dict(zip(skipped["path"], skipped["reason"], strict=True)),
            selection_score=float(m.get("selection_score", math.nan)), selected_on=str(m.get("selected_on", "")),
            solver=m.get("solver") or None,
            measured={k: float(m[k]) for k in CALIBRATION_COLUMNS if m.get(k) not in (None, "")},
            without_leaks=_number_or_none(m.get("accuracy_without_leaks"))))
    return results
