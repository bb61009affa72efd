"""compare --mlflow: the comparison and each of its models in a local MLflow store."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import colour_folder
from transfer import CompareConfig, compare
from transfer.errors import TransferError

pytest.importorskip("mlflow")

# The tiny test backbone (tests/_tiny.py): what is tested here is the logging, not ImageNet.
pytestmark = pytest.mark.usefixtures("tiny_backbone")
TINY = dict(backbones="tiny", image_size=32, batch_size=8, precision="float32", head="train", head_epochs=2, epochs=1,
            augment=False, freeze="none", scratch_size=16, scratch_epochs=2, classifiers="logreg,knn")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    data = colour_folder(root / "data", n=6, splits=("train", "val", "test"))
    uri = f"sqlite:///{root}/store/mlflow.db"
    (root / "store").mkdir()
    mp = pytest.MonkeyPatch()
    mp.chdir(root / "store")  # where a SQLite store keeps its artefacts (./mlruns/)
    table, line = compare(data, root / "run", CompareConfig(**TINY), progress=False, mlflow=uri, log=lambda *_: None)
    mp.undo()
    return root, data, uri, table, line


def runs_of(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("transfer")
    return client, client.search_runs([experiment.experiment_id])


def test_each_model_is_a_nested_run_with_its_numbers(logged):
    root, _, uri, table, line = logged
    client, runs = runs_of(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(table) == 4
    parent = parents[0]
    assert parent.data.tags["transfer.verdict"] == line
    assert parent.data.metrics["best_accuracy"] == pytest.approx(table["accuracy"].iloc[0])
    assert json.loads(parent.data.params["compare.freeze"]) == ["none"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"report.html", "compare.csv",
                                                                          "config.json"}
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == set(table["model"])
    for row in table.to_dict("records"):
        run = by_name[row["model"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.metrics["accuracy"] == pytest.approx(row["accuracy"])
        assert run.data.metrics["train_seconds"] == pytest.approx(row["train_seconds"])
        assert run.data.tags["transfer.strategy"] == row["strategy"]
    recommended = json.loads((root / "run" / "config.json").read_text())["recommended_model"]
    assert [r.info.run_name for r in children if r.data.tags["transfer.recommended"] == "true"] == [recommended]


def test_trained_models_log_their_settings_epochs_and_reports(logged):
    _, _, uri, table, _ = logged
    client, runs = runs_of(uri)
    tuned = next(r for r in runs if r.data.tags.get("transfer.strategy") == "finetune")
    assert tuned.data.params["finetune.freeze"] == "none" and tuned.data.params["finetune.epochs"] == "1"
    history = client.get_metric_history(tuned.info.run_id, "epoch_val_accuracy")
    assert [m.step for m in history] == [0, 1, 2], "2 head epochs, then 1 of fine-tuning"
    artefacts = {a.path for a in client.list_artifacts(tuned.info.run_id, "finetune-none")}
    assert {"finetune-none/history.csv", "finetune-none/metrics.csv", "finetune-none/config.json"} <= artefacts
    logreg = next(r for r in runs if r.data.tags.get("transfer.classifier") == "logreg")
    assert "chosen.logisticregression__C" in logreg.data.params  # what the grid search chose
    assert logreg.data.params["extract.backbone"] == "tiny"


def test_cli_mlflow_alone_logs_to_mlflows_default_store(logged, tmp_path, monkeypatch):
    root, data, _, table, _ = logged
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    args = ["compare", "--data", str(data), "--out", str(root / "run"), "--mlflow", "--backbone", "tiny",
            "--image-size", "32", "--batch-size", "8", "--precision", "float32", "--head", "train", "--head-epochs",
            "2", "--epochs", "1",
            "--no-augment", "--freeze", "none", "--scratch-size", "16", "--scratch-epochs", "2",
            "--classifier", "logreg,knn"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "reusing" in result.output and "MLflow: 4 models logged" in result.output
    assert (tmp_path / "mlflow.db").exists()
    _, runs = runs_of(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 1 + len(table)


def test_an_unreachable_server_is_one_line_before_any_work(logged, monkeypatch):
    root, data, _, _, _ = logged
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    before = (root / "run" / "config.json").read_text()
    with pytest.raises(TransferError, match=r"--mlflow http://127.0.0.1:9: MLflow cannot log there .*nothing was run"):
        compare(data, root / "run", CompareConfig(**TINY), progress=False, mlflow="http://127.0.0.1:9",
                log=lambda *_: None)
    assert (root / "run" / "config.json").read_text() == before
    with pytest.raises(TransferError, match=r"cannot log there \(MlflowException: .* \.\.\.\)|cannot log there"):
        compare(data, root / "run", CompareConfig(**TINY), progress=False, mlflow="foo://bar", log=lambda *_: None)


def test_a_failure_while_logging_is_one_line_and_keeps_the_reports(logged, monkeypatch):
    import transfer.reports._tracking

    root, data, uri, _, _ = logged

    def server_gone(*args):
        raise ConnectionError("the server went away\nin the middle")

    monkeypatch.setattr(transfer.reports._tracking, "_log_compare", server_gone)
    monkeypatch.chdir(root / "store")
    with pytest.raises(TransferError, match="MLflow did not take the results") as e:
        compare(data, root / "run", CompareConfig(**TINY), progress=False, mlflow=uri, log=lambda *_: None)
    assert "\n" not in str(e.value) and "the reports in" in str(e.value)
    assert len(pd.read_csv(root / "run" / "compare.csv")) == 4 and (root / "run" / "report.html").exists()


def test_without_mlflow_installed_compare_stops_before_any_work(tmp_path, monkeypatch):
    import transfer.reports._tracking

    monkeypatch.setattr(transfer.reports._tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TransferError, match=r"pip install -e '\.\[mlflow\]'"):
        compare(colour_folder(tmp_path / "d", n=2), tmp_path / "run", CompareConfig(**TINY), mlflow="default")
    assert not (tmp_path / "run").exists()
