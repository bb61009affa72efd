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
        ScratchConfig(image_size=8)


@pytest.mark.parametrize(("side", "expected"), [(8, 32), (40, 40), (500, 64)])
def test_automatic_size_is_the_images_own_within_32_to_64(tmp_path, side, expected):
    from tests.conftest import solid_image
    from transfer.scratch import sized

    paths = [solid_image(tmp_path / f"{i}.png", (i, 0, 0), size=(side, side * 3 // 4)) for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"not an image")  # skipped, not counted
    lines = []
    cfg = sized(ScratchConfig(), [*paths, tmp_path / "bad.png"], log=lines.append)
    assert cfg.image_size == expected and f"median side is {side} px" in lines[0]
    assert sized(ScratchConfig(image_size=20), paths).image_size == 20  # a given size wins


def test_scratch_run_records_the_size_it_chose(tmp_path):
    data = colour_folder(tmp_path / "d", n=6)
    out = tmp_path / "run"
    train_scratch(data, out, ScratchConfig(epochs=1), log=lambda *_: None)
    recorded = json.loads((out / "config.json").read_text())["scratch"]["image_size"]
    assert recorded == 32  # colour_folder's 24-px images, raised to 32: recorded, so predict --run feeds the same
