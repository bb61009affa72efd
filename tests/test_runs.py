"""The run layer: one split per command, one record per model, every report written from records."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import colour_folder
from transfer import ExtractConfig
from transfer.data import _sources as sources
from transfer.errors import TransferError
from transfer.reports import open_run, read_results

TINY = ExtractConfig(image_size=32, batch_size=8)


def quiet(*_):
    pass


def test_compare_reads_and_splits_the_source_once(tmp_path, monkeypatch):
    from transfer import CompareConfig, compare

    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val"))
    reads = []
    real = sources._folder_table
    monkeypatch.setattr(sources, "_folder_table", lambda root, *rest: reads.append(root) or real(root, *rest))
    cfg = CompareConfig(strategies="features,scratch", classifiers="logreg", image_size=32, batch_size=8,
                        scratch_size=16, scratch_epochs=1)
    table, _ = compare(data, tmp_path / "run", cfg, progress=False, log=quiet)
    assert reads == [data.resolve()]  # the sub-runs were handed the split, not the data
    assert len(table) == 2
    for sub in ("efficientnet_lite0/classify", "scratch"):
        assert pd.read_csv(tmp_path / "run" / sub / "split.csv").equals(pd.read_csv(tmp_path / "run" / "split.csv"))


def test_a_sub_run_refuses_a_folder_made_on_another_split(tmp_path):
    data = colour_folder(tmp_path / "data", n=4, splits=("train", "val"))
    split = open_run(data, tmp_path / "run", "classify").split
    open_run(split, tmp_path / "sub", "classify")  # writes sub/split.csv
    moved = split.assign(split=split["split"].map({"train": "val", "val": "train", "test": "test"}))
    with pytest.raises(TransferError, match="holds another split"):
        open_run(moved, tmp_path / "sub", "classify")


def test_records_written_and_read_back_are_the_same(tmp_path):
    from transfer.features import classify_run

    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val"))
    run = open_run(data, tmp_path / "run", "classify")
    made = classify_run(run, TINY, ["logreg", "knn"], progress=False, log=quiet)
    again = read_results(run.out)  # in the report's order, best first
    assert sorted(r.classifier for r in again) == sorted(r.classifier for r in made)
    again = sorted(again, key=lambda r: [m.classifier for m in made].index(r.classifier))
    for a, b in zip(made, again, strict=True):
        assert a.paths == b.paths and list(a.y_pred) == list(b.y_pred) and list(a.y_true) == list(b.y_true)
        assert a.metrics() == {k: v for k, v in b.metrics().items()}
    # one schema: the features rows carry no fine-tuning columns, and the file is exactly the records' rows
    metrics = pd.read_csv(run.out / "metrics.csv")
    assert "freeze" not in metrics.columns and len(metrics) == 2


def test_cli_names_flags_where_the_library_names_arguments(tmp_path):
    message = cli.as_flags("image_size=4 is too small; lower val_fraction or use features_dir=x",
                           cli.main.commands["finetune"])
    assert message == "--image-size 4 is too small; lower --val-fraction or use --features-dir x"
    assert cli.as_flags("head_epochs=0 and epochs=0", cli.main.commands["finetune"]) == "--head-epochs 0 and --epochs 0"
    data = colour_folder(tmp_path / "d", n=3)
    result = CliRunner().invoke(cli.main, ["classify", "--data", str(data), "--out", str(tmp_path / "r"),
                                           "--image-size", "8"])
    assert result.exit_code == 2
    assert result.output == ("Error: --image-size 8 is too small for efficientnet_lite0: give an integer >= 32 "
                             "(its own is 224).\n")
    # a name inside a path is the user's, not an argument
    assert cli.as_flags("runs/lr=0.1/seed=3/image_size/x: lr=0.1", cli.main.commands["finetune"]) == \
        "runs/lr=0.1/seed=3/image_size/x: --lr 0.1"


def test_reports_read_back_keep_text_labels_and_unmeasured_rates(tmp_path):
    from transfer.reports import Result, write_reports

    run = open_run(colour_folder(tmp_path / "data", n=3, splits=("train", "val")), tmp_path / "run", "scratch")
    paths = run.rows(run.eval_split)["path"].tolist()[:2]
    made = Result(strategy="scratch", backbone="none", classifier="scratch_cnn", eval_split=run.eval_split,
                  paths=paths, y_true=["NA", "None"], y_pred=["NA", "NA"], classes=["NA", "None"],
                  scores=np.array([[0.9, 0.1], [0.6, 0.4]]), inference_images_per_second=float("nan"),
                  freeze="none", run_dir=run.out)
    write_reports(run, [made], {})
    (again,) = read_results(run.out)
    assert list(again.y_true) == ["NA", "None"] and list(again.y_pred) == ["NA", "NA"]
    assert np.isnan(again.inference_images_per_second) and again.freeze == "none"
    assert again.metrics()["accuracy"] == 0.5
