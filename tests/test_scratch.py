import json

import pandas as pd
import pytest

from tests.conftest import colour_folder
from transfer.errors import TransferError
from transfer.scratch import ScratchConfig, build_scratch_model, train_scratch


def test_scratch_cnn_shape():
    model = build_scratch_model(32, 3)
    assert model.output.shape[-1] == 3
    assert [layer.name for layer in model.layers][2:6] == ["conv1", "pool1", "conv2", "pool2"]


def test_scratch_baseline_trains_on_the_run_split(tmp_path):
    data = colour_folder(tmp_path / "d", n=12)
    (data / "train" / "red" / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    table = train_scratch(data, out, ScratchConfig(image_size=24, epochs=15, patience=15, lr=3e-3),
                          log=lambda *_: None)
    row = table.iloc[0]
    assert row["strategy"] == "scratch" and row["eval_split"] == "test" and row["n_test"] == 24
    train = pd.read_csv(out / "split.csv").query("split == 'train'")
    assert row["n_train"] == (~train["path"].str.endswith("empty.png")).sum() and row["accuracy"] >= 0.9
    history = pd.read_csv(out / "history.csv")
    assert history["stage"].eq("scratch").all() and len(history) == row["epochs_run"]
    assert pd.read_csv(out / "skipped.csv")["path"].str.endswith("empty.png").tolist() == [True]
    assert json.loads((out / "config.json").read_text())["command"] == "scratch"
    assert pd.read_csv(out / "split.csv").shape[0] == 49


def test_scratch_options_are_validated():
    with pytest.raises(TransferError, match="image_size=8"):
        ScratchConfig(image_size=8).validated()
