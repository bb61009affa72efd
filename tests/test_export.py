"""`transfer export`: one file per model that takes images, agrees with the run, and says what it is."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import colour_folder
from transfer import CompareConfig, compare
from transfer.data import decode_image
from transfer.errors import TransferError
from transfer.serving import FORMATS, export_model, load_exported, read_metadata

# The tiny test backbone (tests/_tiny.py): what is tested here is the export, not ImageNet.
pytestmark = pytest.mark.usefixtures("tiny_backbone")
TINY = dict(backbones="tiny", image_size=32, batch_size=8, precision="float32", head_epochs=1, epochs=1,
            augment=False, freeze="none",
            scratch_size=16, scratch_epochs=2, classifiers="logreg,linear_svm,rbf_svm,mlp,knn", search_size=None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = colour_folder(root / "data", n=8, splits=("train", "val", "test"))
    compare(data, root / "run", CompareConfig(**TINY), progress=False, log=lambda *_: None)
    return root / "run"


def out_path(tmp_path, fmt):
    return tmp_path / f"model{FORMATS[fmt]}" if FORMATS[fmt] else tmp_path / "model-savedmodel"


def run_predictions(meta) -> pd.DataFrame:
    preds = pd.read_csv(f"{meta['run']}/predictions.csv", keep_default_na=False)
    return preds[preds["classifier"] == meta["classifier"]] if meta["classifier"] else preds


def check_round_trip(path, meta):
    """The exported file's scores on the run's test images equal the run's own."""
    model, read = load_exported(path)
    assert read == meta
    preds = run_predictions(meta)
    # At the model's input size (as the run's pipeline decodes them), so both see the same pixels.
    images = np.stack([decode_image(p, meta["image_size"], meta["resize"]) for p in preds["path"]])
    scores = model(images)
    assert scores.shape == (len(preds), len(meta["classes"]))
    labels = np.array(meta["classes"])[scores.argmax(1)]
    assert (labels == preds["pred_label"].astype(str).to_numpy()).all(), "class agreement 100 %"
    top = scores.max(1)
    assert top == pytest.approx(preds["score"].to_numpy(), rel=1e-4, abs=1e-4)
    # At their own size (24 px): the model resizes inside.
    native = np.stack([decode_image(p, None) for p in preds["path"]])
    assert native.shape[1] != meta["image_size"]
    # Pillow's resize (the run's) and Keras's (the model's) differ by up to a grey level (see the test below),
    # which moves an unsure prediction: the same class wherever the run's own top two scores are far apart.
    resized = model(native)
    assert resized.shape == scores.shape and np.isfinite(resized).all()
    ranked = np.sort(scores, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 0.5
    assert (np.array(meta["classes"])[resized.argmax(1)] == labels)[clear].all()


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("model", ["tiny fine-tuned (freeze none)", "logreg"])
def test_every_format_predicts_as_the_run(run, tmp_path, fmt, model):
    path = out_path(tmp_path, fmt)
    meta = export_model(run, path, model=model, fmt=fmt, log=lambda *_: None)
    assert meta["classes"] == ["blue", "red"] and meta["format"] == fmt
    check_round_trip(path, meta)


@pytest.mark.parametrize("model", ["linear_svm", "rbf_svm", "mlp", "scratch"])
def test_other_models_export_exactly(run, tmp_path, model):
    path = tmp_path / "model.keras"
    meta = export_model(run, path, model=model, log=lambda *_: None)
    check_round_trip(path, meta)  # the run's calibrated probabilities
    assert meta["outputs"].startswith("probabilities")


@pytest.mark.parametrize("fmt", ["keras", "onnx"])
def test_an_svm_above_the_exact_limit_exports_as_the_run_predicts(tmp_path, monkeypatch, fmt):
    """The Nystroem RBF SVM (and the SGD linear SVM) that a large run fits ship as Keras layers, and the file
    gives the run's own predictions and scores."""
    import dataclasses

    from transfer import ExtractConfig, classify
    from transfer.features import _classifiers as classifiers

    for name in ("linear_svm", "rbf_svm"):
        monkeypatch.setitem(classifiers.CLASSIFIERS, name,
                            dataclasses.replace(classifiers.CLASSIFIERS[name], max_train=10))
    data = colour_folder(tmp_path / "d", n=8, splits=("train", "val", "test"))
    classify(data, tmp_path / "run", ExtractConfig(backbone="tiny", image_size=32), "linear_svm,rbf_svm",
             progress=False,
             log=lambda *_: None)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["solvers"]["rbf_svm"].startswith("Nystroem")
    for name in ("rbf_svm", "linear_svm"):
        path = out_path(tmp_path / name, fmt)
        meta = export_model(tmp_path / "run", path, model=name, fmt=fmt, log=lambda *_: None)
        check_round_trip(path, meta)


def test_the_model_resizes_as_the_run_does(run, tmp_path):
    """Inside the exported model, images of another size come out as the run's decoding makes them."""
    import keras

    meta = export_model(run, tmp_path / "m.keras", model="logreg", log=lambda *_: None)
    model = keras.saving.load_model(tmp_path / "m.keras")
    resize = keras.Model(model.inputs, model.get_layer("resize").output)
    for p in run_predictions(meta)["path"]:
        ours = np.asarray(resize(decode_image(p, None)[None]))[0]
        assert np.abs(ours - decode_image(p, meta["image_size"], meta["resize"])).max() <= 1.0  # Pillow rounds


def test_the_default_is_the_model_the_verdict_recommends(run, tmp_path):
    meta = export_model(run, tmp_path / "m.keras", log=lambda *_: None)
    assert meta["model"] == json.loads((run / "config.json").read_text())["recommended_model"]
    split = pd.read_csv(run / "split.csv")
    assert len(meta["training_data_sha256"]) == 64 and meta["backbone"] in ("tiny", "none")
    assert meta["image_size"] in (32, 16) and (split["split"] == "test").sum() == 16


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", ["logreg", "linear_svm", "mlp", "linear_svm by SGD", "rbf_svm",
                                  "rbf_svm by Nystroem", "linear_svm streamed", "logreg streamed"])
def test_classifiers_fold_into_keras_layers(name, n_classes):
    """Each classifier as Keras layers gives the run's calibrated probabilities (its logits at its temperature),
    binary and multi-class (the SVMs above their exact solvers' limits too: SGD, and a Nystroem map then SGD)."""
    import keras
    from sklearn.pipeline import Pipeline

    from transfer.features import CLASSIFIERS, StreamedSGD
    from transfer.features._calibrated import calibrated
    from transfer.features._svm import record_gamma
    from transfer.serving._graph import classifier_layers

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (90, 12)).astype(np.float32)
    y = np.arange(90) % n_classes
    x[:, 0] += 4 * y
    spec = CLASSIFIERS[name.split()[0]]
    spec = spec.large if " by " in name else spec
    if name.endswith("streamed"):  # classify's above the memory: a cache shard at a time
        loss = "log_loss" if name.startswith("logreg") else "squared_hinge"
        estimator = Pipeline([("streamedsgd", StreamedSGD(loss=loss, C=1.0).fit(x, y))])
    else:
        estimator = spec.make(90).fit(x, y)
    name = spec.name
    record_gamma(estimator, x)  # as a run's refit does
    if name == "rbf_svm" and " by " not in spec.solver:  # each pair of classes decides by support vectors of both
        assert (estimator[-1].n_support_ > 1).all()
    estimator = calibrated(estimator, 0.37)
    inputs = keras.Input((12,))
    scores, what = classifier_layers(inputs, estimator, name)
    folded = keras.Model(inputs, scores).predict_on_batch(x)
    assert folded == pytest.approx(estimator.predict_proba(x), rel=1e-4, abs=1e-4) and "T=0.37" in what
    assert (estimator.classes_[folded.argmax(1)] == estimator.predict(x)).all()


def test_cli_export_then_predict_with_the_file_alone(run, tmp_path):
    path = tmp_path / "moved" / "model.onnx"
    result = CliRunner().invoke(cli.main, ["export", str(run), "--model", "logreg", "--format", "onnx",
                                           "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert f"Try it: transfer predict --model {path}" in result.output
    test = pd.read_csv(run / "split.csv").query("split == 'test'")
    folder = tmp_path / "images"
    folder.mkdir()
    for p in test["path"]:  # copies elsewhere: nothing of the run is needed
        (folder / f"{test.loc[test['path'] == p, 'label'].iloc[0]}-{p.split('/')[-1]}").write_bytes(
            open(p, "rb").read())
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(cli.main, ["predict", "--model", str(path), str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out)
    assert len(preds) == 16 and "16 images classified with" in result.output
    truth = preds["path"].map(lambda p: p.split("/")[-1].split("-")[0])
    assert (preds["pred_label"] == truth).mean() >= 0.9  # red vs blue


@pytest.mark.parametrize("args, message", [
    (["--model", "knn"], "k-nearest neighbours looks up the training features"),
    (["--model", "lgreg"], "--model 'lgreg' is not one of its models in"),
    (["--format", "onnx"], "does not end in .onnx"),
])
def test_export_errors_are_one_line_and_keep_the_old_file(run, tmp_path, args, message):
    out = tmp_path / "model.keras"
    export_model(run, out, model="logreg", log=lambda *_: None)
    earlier = out.read_bytes()
    result = CliRunner().invoke(cli.main, ["export", str(run), "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert out.read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"], "no partial file left"


def test_typos_get_the_close_names(run):
    with pytest.raises(TransferError, match="did you mean 'logreg'"):
        export_model(run, "/tmp/never-written.keras", model="lgreg")


def test_what_export_did_not_write_is_never_replaced(run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    for out, fmt in ((mine, "savedmodel"), (tmp_path / "notes.keras", "keras"), (tmp_path / ".", "savedmodel")):
        if fmt == "keras":
            out.write_text("not a model")
        with pytest.raises(TransferError, match="that `transfer export` did not write"):
            export_model(run, out, model="scratch", fmt=fmt, log=lambda *_: None)
    assert (mine / "thesis.txt").read_text() == "years of work" and (tmp_path / "notes.keras").read_text() == \
        "not a model"
    with pytest.raises(TransferError, match="a savedmodel is a folder"):
        export_model(run, tmp_path / "model.onnx", model="scratch", fmt="savedmodel")
    export_model(run, tmp_path / "sm", model="scratch", fmt="savedmodel", log=lambda *_: None)
    export_model(run, tmp_path / "sm", model="logreg", fmt="savedmodel", log=lambda *_: None)  # an export: replaced
    assert read_metadata(tmp_path / "sm")["classifier"] == "logreg"


def test_a_recommended_knn_falls_back_to_the_best_model_that_exports(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "recommended_model": "tiny features + knn"}))
    said = []
    meta = export_model(copy, tmp_path / "m.keras", log=said.append)
    table = pd.read_csv(copy / "compare.csv", keep_default_na=False)
    assert meta["model"] == table.loc[table["classifier"] != "knn", "model"].iloc[0]
    assert "which cannot be exported" in said[0] and meta["model"] in said[0]


def test_a_folder_of_several_comparisons_names_them(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "repeats" / "repeat-1")
    (tmp_path / "repeats" / "config.json").write_text(json.dumps({"command": "compare", "repeats": 2}))
    with pytest.raises(TransferError, match=r"holds several comparisons \(repeat-1\): export from one of them"):
        export_model(tmp_path / "repeats", tmp_path / "m.keras", log=lambda *_: None)


def test_predict_model_refuses_a_file_export_did_not_write(tmp_path):
    import keras

    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(plain)
    with pytest.raises(TransferError, match="was not written by `transfer export`"):
        read_metadata(plain)
    result = CliRunner().invoke(cli.main, ["predict", "--model", str(tmp_path / "missing.onnx"), str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_a_mixed_precision_run_exports_in_float32(tmp_path):
    """A fine-tuning trained in bfloat16 (where a CPU measures it faster) exports, to ONNX too, in float32."""
    from transfer import FinetuneConfig, finetune

    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val", "test"))
    finetune(data, tmp_path / "run", FinetuneConfig(backbone="tiny", image_size=32, batch_size=8,
                                                    precision="mixed_bfloat16",
                                                    head_epochs=1, epochs=1, augment=False, freeze="0.5"),
             log=lambda *_: None)
    meta = export_model(tmp_path / "run", tmp_path / "m.onnx", fmt="onnx", log=lambda *_: None)
    model, _ = load_exported(tmp_path / "m.onnx")
    preds = run_predictions(meta)
    scores = model(np.stack([decode_image(p, 32, "crop") for p in preds["path"]]))
    assert (np.array(meta["classes"])[scores.argmax(1)] == preds["pred_label"].astype(str)).all()
    assert scores.max(1) == pytest.approx(preds["score"].to_numpy(), abs=0.05)  # the run's own bfloat16 rounding
