import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import ROOT, cached_images, colour_folder
from transfer import FinetuneConfig, finetune
from transfer.errors import TransferError
from transfer.features import _extract as features
from transfer.finetuning._model import PROBE_CS, frozen_count

TINY = dict(image_size=32, batch_size=8, precision="float32")
# The tiny test backbone (tests/_tiny.py, with the fixture tiny_backbone) where EfficientNet's layers are not the point
ON_TINY = dict(TINY, backbone="tiny")


class Named:
    def __init__(self, name):
        self.name = name


class InputLayer(Named):
    pass


LAYERS = [InputLayer("input_layer")] + [Named(n) for n in ["stem_conv", "stem_bn", "block1a_dwconv",
                                                            "block6a_expand_conv", "block6a_bn", "top_conv"]]


@pytest.mark.parametrize(("freeze", "count"), [
    ("all", 7), ("none", 0), ("0", 0), ("3", 4), ("6", 7), ("0.5", 4), ("block6a", 4), ("block6a_bn", 5),
    ("top_conv", 6),
])
def test_freeze_values(freeze, count):
    assert frozen_count(freeze, LAYERS) == count


def test_freeze_errors_name_the_count_and_the_nearest_names():
    with pytest.raises(TransferError, match="has 6 layers"):
        frozen_count("500", LAYERS)
    with pytest.raises(TransferError, match="nearest: block6a_expand_conv"):
        frozen_count("block6x_expand_conv", LAYERS)
    with pytest.raises(TransferError, match="fraction"):
        frozen_count("1.5", LAYERS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    data = colour_folder(root / "data", n=8, splits=("train", "val"))
    cfg = FinetuneConfig(freeze="block6a", head="train", head_epochs=10, epochs=2, lr=0.01, augment=False,
                         patience=0, **TINY)
    table = finetune(data, root / "run", cfg, log=lambda *_: None)
    return data, root / "run", table


def test_finetune_writes_its_reports(run):
    _, out, table = run
    for name in ("model.keras", "history.csv", "metrics.csv", "predictions.csv", "per_class.csv", "layers.csv",
                 "config.json", "split.csv", "skipped.csv"):
        assert (out / name).exists(), name
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["strategy"].tolist() == ["finetune"]
    assert {"trainable_params", "frozen_params", "freeze", "epochs_run", "accuracy",
            "macro_f1"} <= set(metrics.columns)
    assert metrics["freeze"].iloc[0] == "block6a" and metrics["epochs_run"].iloc[0] == 12
    assert metrics["accuracy"].iloc[0] >= 0.9  # red vs blue
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
                                     "seconds"]
    assert history[["stage", "epoch"]].values.tolist() == [["head", e] for e in range(1, 11)] + [
        ["finetune", 1], ["finetune", 2]]
    assert history["lr"].iloc[10] <= 0.01 / 10 + 1e-9  # stage 2 at lr / lr_mult
    layers = pd.read_csv(out / "layers.csv")
    first_trainable = layers[layers["trainable"]].iloc[0]["name"]
    assert first_trainable == "block6a_expand_conv"
    assert not layers[layers["type"] == "BatchNormalization"]["trainable"].any()
    config = json.loads((out / "config.json").read_text())
    assert config["head_on_cached_features"] is True and config["precision"] == "float32"
    assert config["probe_C"] is None  # the head was trained (the default)
    assert list(cached_images(pd.read_csv(out / "split.csv")["path"]).values()) == [len(pd.read_csv(out / "split.csv"))]


def epoch_scalars(folder, tag="epoch_loss"):
    """The steps of one scalar in a TensorBoard log folder (read as TensorBoard reads it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [e.step for e in events.Tensors(tag)] if tag in events.Tags()["tensors"] else []


def test_tensorboard_logs_each_stage_and_epoch(run):
    _, out, _ = run
    assert epoch_scalars(out / "logs" / "head" / "train") == list(range(10))
    # Each stage in a folder of its own, epochs counted as history.csv counts them (0-based here).
    assert epoch_scalars(out / "logs" / "finetune" / "train") == [0, 1]
    assert epoch_scalars(out / "logs" / "finetune" / "validation", "epoch_accuracy") == [0, 1]


def test_frozen_layers_are_unchanged_and_trainable_ones_changed(run):
    import keras

    from transfer import build_backbone
    from transfer.finetuning._model import build_model

    _, out, _ = run
    # The weights at the end of stage 2 (model.keras holds the best epoch, which may be stage 1's).
    cfg = FinetuneConfig(weights="none", **TINY)
    model, tuned = build_model(cfg, 2)
    with np.load(out / "train_state" / "finetune-2.npz") as z:
        model.set_weights([z[f"w{i}"] for i in range(len(model.weights))])
    original = build_backbone("efficientnet_lite0", image_size=32)
    layers = pd.read_csv(out / "layers.csv").set_index("name")
    checked = {"frozen": 0, "trainable": 0, "bn": 0}
    for layer in original.layers:
        if not layer.weights:
            continue
        before = [np.asarray(w) for w in layer.weights]
        after = [np.asarray(w) for w in tuned.get_layer(layer.name).weights]
        if isinstance(layer, keras.layers.BatchNormalization):
            # gamma, beta and the moving statistics all stay as pretrained
            assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), layer.name
            checked["bn"] += 1
        elif layers.loc[layer.name, "trainable"]:
            assert not np.array_equal(before[0], after[0]), layer.name
            checked["trainable"] += 1
        else:
            assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), layer.name
            checked["frozen"] += 1
    assert min(checked.values()) > 5


def test_predict_run_with_a_finetuned_model(run, tmp_path):
    data, out, _ = run
    result = CliRunner().invoke(cli.main, ["predict", "--run", str(out), "-o", str(tmp_path / "p.csv"),
                                           str(data / "val"), str(tmp_path / "missing.png")])
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(tmp_path / "p.csv").set_index("path")
    assert set(preds["classifier"]) == {"finetune"}
    # The same model and preprocessing as the run's own evaluation: the same labels and scores.
    evaluated = pd.read_csv(out / "predictions.csv").set_index("path")
    assert (preds.loc[evaluated.index, "pred_label"] == evaluated["pred_label"]).all()
    np.testing.assert_allclose(preds.loc[evaluated.index, "score"], evaluated["score"], rtol=1e-4)
    assert pd.read_csv(tmp_path / "p.skipped.csv")["reason"].tolist() == ["no such file or folder"]
    result = CliRunner().invoke(cli.main, ["predict", "--run", str(out), "--classifier", "knn", str(data)])
    assert result.exit_code == 2 and "drop --classifier knn" in result.output


def test_head_stage_reuses_features_from_extract(tmp_path, monkeypatch):
    from transfer import ExtractConfig, extract

    data = colour_folder(tmp_path / "d", n=4)
    extract(data, tmp_path / "run", ExtractConfig(image_size=32, batch_size=8), progress=False)

    def no_cnn(*args, **kwargs):
        raise AssertionError("stage 1 ran the CNN although strategy 2 had cached the features")

    monkeypatch.setattr(features, "run_extraction", no_cnn)
    for head, epochs_run in (("train", 2), ("probe", 0)):
        cfg = FinetuneConfig(freeze="all", head=head, head_epochs=2, epochs=0, augment=False, **TINY)
        table = finetune(data, tmp_path / f"run-{head}", cfg, log=lambda *_: None)
        assert table["epochs_run"].iloc[0] == epochs_run


def test_unknown_freeze_name_is_one_line(tmp_path):
    data = colour_folder(tmp_path / "d", n=3)
    result = CliRunner().invoke(cli.main, ["finetune", "--data", str(data), "--out", str(tmp_path / "r"),
                                           "--image-size", "32", "--precision", "float32",
                                           "--freeze", "block6x_expand_conv"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: --freeze 'block6x_expand_conv'") and "block6a_expand_conv" in result.output
    assert result.output.count("\n") == 1


@pytest.mark.slow  # EfficientNet-Lite0 fine-tuned in a process killed mid-stage: an end-to-end run
def test_resume_after_kill_continues_at_the_next_epoch(tmp_path):
    data = colour_folder(tmp_path / "d", n=24)
    out = tmp_path / "run"
    cmd = [sys.executable, "cli.py", "finetune", "--data", str(data), "--out", str(out), "--image-size", "48",
           "--batch-size", "8", "--precision", "float32", "--head", "train", "--head-epochs", "1", "--epochs", "6",
           "--patience", "0",
           "--no-augment", "--freeze", "block5a"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    history = out / "history.csv"
    deadline = time.time() + 300
    finished = 0
    while time.time() < deadline and proc.poll() is None:
        if history.exists():
            try:
                finished = int((pd.read_csv(history)["stage"] == "finetune").sum())
            except (pd.errors.EmptyDataError, OSError):
                finished = 0
            if finished >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run was not killed in time"
    state = json.loads((out / "train_state" / "state.json").read_text())
    done_before = state["stages"]["finetune"]["epoch"]  # the last epoch whose state was complete
    assert 2 <= done_before < 6
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming stage finetune at epoch {done_before + 1} of 6" in again.stdout
    assert "stage 1 finished in an earlier run: its head is reused" in again.stdout
    assert "stage 1: head only" not in again.stdout  # the stage it skips is not announced as if it ran
    final = pd.read_csv(history)
    assert final[final["stage"] == "finetune"]["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert final[final["stage"] == "head"]["epoch"].tolist() == [1]
    assert (out / "model.keras").exists()


def test_augment_plateau_class_weight_and_hidden_head(tmp_path, tiny_backbone):
    """The other code paths: head through the frozen backbone, plateau schedule, class weights, hidden layer."""
    data = tmp_path / "d"
    colour_folder(data, n=10, splits=("train",))
    colour_folder(tmp_path / "v", n=4, splits=("val",))
    (tmp_path / "v" / "val").rename(data / "val")
    for f in sorted((data / "train" / "blue").iterdir())[:7]:  # 10 red vs 3 blue
        f.unlink()
    cfg = FinetuneConfig(freeze="0.9", head_epochs=2, epochs=2, augment=True, schedule="plateau", patience=1,
                         class_weight="balanced", hidden=16, **ON_TINY)
    table = finetune(data, tmp_path / "run", cfg, log=lambda *_: None)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["head_on_cached_features"] is False
    assert not cached_images(pd.read_csv(tmp_path / "run" / "split.csv")["path"])  # augmentation: no feature cache
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert table["n_train"].iloc[0] == (split["split"] == "train").sum() == 11  # 2 of the 13 carved for val
    assert table["freeze"].iloc[0] == "0.9"
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["stage"].iloc[0] == "head" and len(history) >= 2


def test_precision_auto(monkeypatch):
    import tensorflow as tf

    import transfer.runtime
    from transfer.finetuning import _precision as precision

    def never(backbone, log):
        raise AssertionError("measured")

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(precision, "_bf16_is_faster_here", never)
    monkeypatch.setattr(transfer.runtime, "cpu_flags", lambda: set())
    assert precision.choose_precision("auto") == "float32"
    monkeypatch.setattr(transfer.runtime, "cpu_flags", lambda: {"avx512_bf16", "avx512f"})  # no AMX: no timing
    assert precision.choose_precision("auto") == "float32"
    monkeypatch.setattr(transfer.runtime, "cpu_flags", lambda: {"amx_bf16", "avx512_bf16"})
    monkeypatch.setattr(precision, "_bf16_is_faster_here", lambda backbone, log: False)
    assert precision.choose_precision("auto") == "float32"
    monkeypatch.setattr(precision, "_bf16_is_faster_here", lambda backbone, log: True)
    assert precision.choose_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    assert precision.choose_precision("auto") == "mixed_float16"
    assert precision.choose_precision("float32") == "float32"
    with pytest.raises(TransferError, match="precision='half'"):
        precision.choose_precision("half")


def test_precision_auto_says_what_it_measures_once_and_where_it_keeps_it(monkeypatch, tmp_path):
    from transfer.finetuning import _precision as precision

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "_train_step_seconds", lambda policy, backbone: 2.0 if policy == "float32" else 3.0)
    lines = []
    assert precision._bf16_is_faster_here("efficientnet_lite0", lines.append) is False
    assert len(lines) == 1 and "timing float32 against bfloat16" in lines[0]
    assert str(tmp_path / "transfer" / "machine.json") in lines[0]
    again = []
    assert precision._bf16_is_faster_here("efficientnet_lite0", again.append) is False and again == []  # cached


def test_finetune_and_classify_do_not_share_a_run_folder(run, tmp_path):
    from transfer import classify

    data, out, _ = run
    with pytest.raises(TransferError, match="holds a `finetune` run"):
        classify(data, out, None, "logreg", progress=False, log=lambda *_: None)


def test_random_weights_never_train_the_head_on_cached_features(tmp_path):
    data = colour_folder(tmp_path / "d", n=4)
    cfg = FinetuneConfig(weights="none", freeze="all", head_epochs=1, epochs=0, augment=False, **TINY)
    finetune(data, tmp_path / "run", cfg, log=lambda *_: None)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["head_on_cached_features"] is False


def test_the_head_starts_as_the_linear_probe_and_is_kept_when_fine_tuning_cannot_beat_it(tmp_path, tiny_backbone):
    import keras

    from transfer import ExtractConfig, extract_features
    from transfer.finetuning._model import fit_probe

    data = colour_folder(tmp_path / "d", n=8, splits=("train", "val"))
    probe_only = finetune(data, tmp_path / "probe", FinetuneConfig(freeze="all", head="probe", epochs=0,
                                                                   augment=False, **ON_TINY), log=lambda *_: None)
    split = pd.read_csv(tmp_path / "probe" / "split.csv")
    feats = extract_features(split["path"], ExtractConfig(backbone="tiny", image_size=32, batch_size=8),
                             progress=False)
    pos = {p: i for i, p in enumerate(feats.paths)}
    index = {"blue": 0, "red": 1}

    def xy(name):
        rows = split[split["split"] == name]
        return feats.features[[pos[p] for p in rows["path"]]], rows["label"].map(index).to_numpy()

    expected = fit_probe(*xy("train"), *xy("val"), 2)
    assert json.loads((tmp_path / "probe" / "config.json").read_text())["probe_C"] == expected["C"] in PROBE_CS
    model = keras.saving.load_model(tmp_path / "probe" / "model.keras", compile=False)
    kernel, bias = model.get_layer("head_output").get_weights()
    np.testing.assert_allclose(kernel, expected["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected["bias"], rtol=1e-5, atol=1e-6)
    # A stage 2 that wrecks the backbone (a huge learning rate) never beats the probe on val: the probe is kept.
    lines = []
    wrecked = finetune(data, tmp_path / "wrecked", FinetuneConfig(freeze="none", head="probe", epochs=1, lr=50.0,
                                                                  lr_mult=1.0, augment=False, **ON_TINY),
                       log=lines.append)
    assert any("keeping the stage 1 model" in line for line in lines)
    assert wrecked["accuracy"].iloc[0] == probe_only["accuracy"].iloc[0]


def test_the_model_kept_is_ranked_by_validation_accuracy_then_loss():
    from transfer.finetuning._training import beats, selection_key

    assert beats(selection_key(0.9, 0.5), selection_key(0.8, 0.1))  # more accurate wins despite a higher loss
    assert beats(selection_key(0.8, 0.2), selection_key(0.8, 0.3))  # equal accuracy: the lower loss
    assert not beats(selection_key(0.8, 0.3), selection_key(0.8, 0.3))
    assert selection_key(0.9, float("nan")) is None  # a diverged epoch is never kept
    assert beats(selection_key(None, 0.1), selection_key(None, 0.2))  # no validation split: training loss
    assert beats(selection_key(0.5, 9.0), None)
    # against the head it started from, a fine-tuning epoch must be no worse on either count
    head = selection_key(0.60, 0.99)
    assert not beats(selection_key(0.70, 1.00), head, on_every_count=True)  # one more image right, a worse loss
    assert not beats(selection_key(0.50, 0.50), head, on_every_count=True)
    assert beats(selection_key(0.60, 0.90), head, on_every_count=True)
    assert beats(selection_key(0.70, 0.99), head, on_every_count=True)
    assert not beats(selection_key(0.60, 0.99), head, on_every_count=True)


def test_the_probe_chooses_its_regularisation_on_train_alone():
    from transfer.finetuning._model import fit_probe

    rng = np.random.default_rng(0)
    x, x_val = rng.normal(size=(60, 16)), rng.normal(size=(20, 16))
    y, y_val = (x[:, 0] > 0).astype(int), (x_val[:, 0] > 0).astype(int)
    right = fit_probe(x, y, x_val, y_val, 2, log=lambda *_: None)
    wrong = fit_probe(x, y, x_val, 1 - y_val, 2, log=lambda *_: None)  # the validation labels play no part in C
    assert right["C"] == wrong["C"]
    np.testing.assert_array_equal(right["kernel"], wrong["kernel"])
    assert right["val_accuracy"] > 0.8 and right["val_accuracy"] + wrong["val_accuracy"] == pytest.approx(1.0)


def test_checking_all_none_or_a_fraction_builds_no_model(monkeypatch):
    import transfer.backbones as backbones
    from transfer.finetuning import check_freeze

    def built(*args, **kwargs):
        raise AssertionError("built")

    monkeypatch.setattr(backbones, "build_backbone", built)
    check_freeze("efficientnet_lite0", 224, ["all", "none", "0.5", "0.25"])  # valid for every backbone
    with pytest.raises(AssertionError, match="built"):  # a name or a count needs the real layers
        check_freeze("efficientnet_lite0", 224, ["0.5", "block6a"])


@pytest.mark.parametrize(("backbone", "freeze", "engine", "runs_them"), [
    ("tiny", "0.5", "tensorflow", "tensorflow"), ("tiny", "0.5", "onnxruntime", "onnxruntime"),
    # 41 layers cut EfficientNet-Lite0 across block3b's residual branch: two outputs, not exported
    ("efficientnet_lite0", "41", "onnxruntime", "tensorflow"),
])
def test_stage2_on_the_frozen_layers_outputs_trains_as_on_the_images(tmp_path, monkeypatch, tiny_backbone, backbone,
                                                                     freeze, engine, runs_them):
    """Without augmentation stage 2 runs the frozen layers once; the training is the one the images give, whether
    TensorFlow runs them inside the model or an engine runs them on each batch."""
    from transfer.finetuning import _frozen as frozen_layers

    data = colour_folder(tmp_path / "d", n=12)
    cfg = FinetuneConfig(freeze=freeze, epochs=2, augment=False, patience=0, dropout=0.0, engine=engine,
                         **dict(TINY, backbone=backbone))
    kept = finetune(data, tmp_path / "kept", cfg, log=lambda *_: None)
    monkeypatch.setattr(frozen_layers, "PREFIX_CACHE_BYTES", 0)  # too little memory: through the frozen layers
    lines = []
    redone = finetune(data, tmp_path / "redone", cfg, log=lines.append)
    assert any("runs the frozen layers every epoch" in line for line in lines)
    assert any(f"frozen layers run by {engine} on each training batch" in line for line in lines) == (
        runs_them != "tensorflow")
    configs = [json.loads((tmp_path / run / "config.json").read_text()) for run in ("kept", "redone")]
    assert [c["stage2_on_frozen_outputs"] for c in configs] == [True, False]
    assert [c["stage2_frozen_layers_engine"] for c in configs] == [runs_them, runs_them]
    histories = [pd.read_csv(tmp_path / run / "history.csv") for run in ("kept", "redone")]
    assert len(histories[0]) == 2
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-3)
    np.testing.assert_allclose(histories[0]["val_loss"], histories[1]["val_loss"], rtol=1e-3)
    assert kept["accuracy"].iloc[0] == redone["accuracy"].iloc[0]


def test_stage2_with_augmentation_runs_the_frozen_layers_by_the_engine_on_each_batch(tmp_path, tiny_backbone):
    data = colour_folder(tmp_path / "d", n=12)
    cfg = FinetuneConfig(epochs=2, patience=0, engine="onnxruntime", **ON_TINY)
    lines = []
    result = finetune(data, tmp_path / "run", cfg, log=lines.append)
    assert any("stage 2: the frozen layers run by onnxruntime on each training batch (validation: computed once)"
               in line for line in lines)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["stage2_frozen_layers_engine"] == "onnxruntime" and not config["stage2_on_frozen_outputs"]
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 2
    assert result["accuracy"].iloc[0] >= 0.9  # red against blue, through the engine's outputs as through TensorFlow's


def test_frozen_layers_stay_in_inference_mode_while_stage_2_trains():
    """Keras 3 passes fit's training=True through backbone(x, training=False): the frozen part must not drop."""
    import keras

    from transfer.finetuning._model import build_model, set_trainable, split_frozen

    cfg = FinetuneConfig(weights="none", **TINY)
    model, backbone = build_model(cfg, 3)
    n = frozen_count("0.5", backbone.layers)
    set_trainable(backbone, n, False)
    dropping = [layer.name for layer in backbone.layers[:n] if isinstance(layer, keras.layers.Dropout)]
    assert dropping  # EfficientNet-Lite has drop-connect layers among the frozen ones
    prefix, rest, trained = split_frozen(model, backbone, n)
    frozen_part = keras.Model(trained.input, trained.layers[1](trained.input))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(frozen_part(x, training=True)), np.asarray(prefix(x)))
    assert [id(v) for v in trained.trainable_variables] == [id(v) for v in model.trainable_variables]
