"""Experiment tracking: a compare run's models in MLflow, where a team already looks.

One MLflow run per comparison (its settings, verdict, ``report.html``,
``compare.csv`` and ``config.json``) with one nested run per model: the
sub-run's settings and chosen hyper-parameters as parameters, the table's
numbers as metrics (and each epoch's, ``epoch_*``, for the models trained by
gradient descent), its CSV reports as artefacts.  Written through ``MlflowClient``
with an explicit tracking URI, so the caller's own MLflow state is left alone.
Logged after the reports are written: an unreachable server costs nothing
already on disk.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd

from transfer.errors import TransferError

EXPERIMENT = "transfer"
# ``--mlflow`` with no URI: MLflow's own default (MLFLOW_TRACKING_URI if set, else ./mlflow.db with artefacts
# under ./mlruns/).
DEFAULT_URI = "default"
METRICS = ("accuracy", "macro_f1", "accuracy_ci_low", "accuracy_ci_high", "train_seconds",
           "inference_images_per_second", "trainable_params", "p_vs_recommended", "selection_score")
TAGS = ("role", "strategy", "backbone", "classifier", "freeze", "eval_split", "differs_from_recommended", "chosen_by",
        "run_dir")
SUBRUN_ARTIFACTS = ("config.json", "metrics.csv", "per_class.csv", "history.csv", "search.csv", "layers.csv")
MAX_PARAM = 6000  # MLflow's limit on a parameter's value


def check_mlflow(uri):
    """Fail before any training when ``uri`` is given and MLflow is not installed or does not take the URI
    (the store is opened and the experiment made or found: a server is asked once).

    Raises:
        TransferError: naming the extra that installs it, or MLflow's reason.
    """
    if uri is None:
        return
    if importlib.util.find_spec("mlflow") is None:
        raise TransferError("--mlflow needs MLflow, which is not installed: pip install -e '.[mlflow]' "
                            "(or pip install mlflow).")
    try:
        _client(uri)
    except Exception as e:  # noqa: BLE001 - URI, network and store errors all mean "cannot log there"
        raise TransferError(f"--mlflow {uri}: MLflow cannot log there ({_reason(e)}); nothing was run: fix the "
                            "URI or start the server, or leave --mlflow out.") from None


def _reason(e: Exception) -> str:
    """MLflow's message on one line, cut at a word (its lists of URI schemes run long)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: " + (text if len(text) <= 400 else text[:400].rsplit(" ", 1)[0] + " ...")


def _flat(prefix: str, value) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value, default=str)[:MAX_PARAM] if not isinstance(value, str) else value[:MAX_PARAM]}


def _client(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=None if uri in (None, True, DEFAULT_URI) else uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    return client, found.experiment_id if found else client.create_experiment(EXPERIMENT)


def _log(client, run_id, params: dict, metrics: dict, files, artifact_path=None, history=None):
    from mlflow.entities import Metric, Param

    stamp = 0
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()
                              if v is not None and not (isinstance(v, float) and math.isnan(v))])
    for step, row in enumerate((history if history is not None else pd.DataFrame()).to_dict("records")):
        # "epoch_" keeps a training curve apart from the scored numbers of the same name (accuracy, ...).
        values = [Metric(f"epoch_{k}", float(v), stamp, step) for k, v in row.items()
                  if k not in ("stage", "epoch") and isinstance(v, int | float) and not math.isnan(v)]
        client.log_batch(run_id, metrics=values)
    for f in files:
        if Path(f).exists():
            client.log_artifact(run_id, str(f), artifact_path)


def log_compare(uri, out: Path, table: pd.DataFrame, results, verdict: str, recommended: str, log=print) -> str:
    """Log one finished comparison (its report already in ``out``) and its models; returns the MLflow run id.

    Args:
        uri: a tracking URI, or :data:`DEFAULT_URI` for MLflow's own default.
        out: the compare run folder.
        table: the compare table (``compare.csv``), one nested run per row.
        results: the sub-runs' records (their chosen hyper-parameters become parameters).
        verdict: the report's verdict.
        recommended: the model the verdict says to use.

    Raises:
        TransferError: MLflow refused (an unreachable server, a bad URI), in one line; the reports stay.
    """
    try:
        return _log_compare(uri, Path(out), table, results, verdict, recommended, log)
    except TransferError:
        raise
    except Exception as e:  # noqa: BLE001 - network, store and URI errors all mean "not logged"
        raise TransferError(f"MLflow did not take the results ({_reason(e)}); the reports in {out} "
                            "are written: fix --mlflow's URI or the server and run compare again (it reuses every "
                            "sub-run).") from None


def _log_compare(uri, out: Path, table, results, verdict, recommended, log) -> str:
    client, experiment = _client(uri)
    config = json.loads((out / "config.json").read_text())
    parent = client.create_run(experiment, run_name=f"compare {Path(str(config['data'])).name}",
                               tags={"transfer.verdict": verdict[:5000], "transfer.recommended_model": recommended,
                                     "transfer.run_folder": str(out.resolve())})
    pid = parent.info.run_id
    best = table.iloc[0]
    _log(client, pid, _flat("", {k: v for k, v in config.items() if k not in ("plot_inputs", "verdict")}),
         {"best_accuracy": best["accuracy"], "n_test": best["n_test"]},
         [out / "report.html", out / "compare.csv", out / "config.json"])
    params_of = {(r.strategy, r.backbone, r.classifier, str(r.run_dir)): r.params for r in results}
    for row in table.to_dict("records"):
        folder = out / row["run_dir"]
        tags = {f"transfer.{k}": str(row[k]) for k in TAGS if k in row}
        run = client.create_run(experiment, run_name=row["model"],
                                tags={**tags, "mlflow.parentRunId": pid,
                                      "transfer.recommended": str(row["model"] == recommended).lower()})
        sub_config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        chosen = next((p for (s, b, c, d), p in params_of.items()
                       if Path(d).resolve() == folder.resolve() and (s != "features" or c == row["classifier"])), {})
        settings = {k: v for k, v in sub_config.items() if isinstance(v, dict) and k != "versions"}
        history = pd.read_csv(folder / "history.csv") if (folder / "history.csv").exists() else None
        _log(client, run.info.run_id, {**_flat("", settings), **_flat("chosen", chosen or {})},
             {k: row[k] for k in METRICS if k in row and row[k] != ""},
             [folder / name for name in SUBRUN_ARTIFACTS], artifact_path=Path(row["run_dir"]).name, history=history)
        client.set_terminated(run.info.run_id)
    client.set_terminated(pid)
    log(f"MLflow: {len(table)} models logged under run {pid} of experiment {EXPERIMENT!r} "
        f"({client.tracking_uri})")
    return pid
