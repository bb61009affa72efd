"""Inference engines: the export is checked, cached and chosen by measurement; anything missing or wrong falls
back to TensorFlow, saying why; features agree whichever engine ran."""

import json

import numpy as np
import pytest

from tests.conftest import colour_folder
from transfer.errors import TransferError
from transfer.runtime import _engines as engines
from transfer.runtime._engines import RUNTIMES, ExportedModel, frozen_model


def _tiny_model():
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def _batch():
    return np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)


class Builds:
    """A model factory that counts its calls."""

    def __init__(self):
        self.model, self.calls = _tiny_model(), 0

    def __call__(self):
        self.calls += 1
        return self.model


def _rates(monkeypatch, **rates):
    """Make the timing say ``rates`` (images/s by engine), so that the choice does not depend on the host."""
    def rate(predict, batch, seconds=0.5):
        owner = getattr(predict, "__self__", None)
        name = owner.engine if isinstance(owner, ExportedModel) else "tensorflow"
        return rates[name]

    monkeypatch.setattr(engines, "_rate", rate)


@pytest.mark.parametrize("fastest", ["onnxruntime", "openvino", "tensorflow"])
def test_auto_runs_the_fastest_engine_that_agrees_and_remembers_it(keras_cache, monkeypatch, fastest):
    _rates(monkeypatch, **{name: (300.0 if name == fastest else 100.0) for name in ("tensorflow", *RUNTIMES)})
    build, said = Builds(), []
    model = frozen_model({"tiny": fastest}, build, "auto", _batch, log=said.append)
    assert getattr(model, "engine", "tensorflow") == fastest
    assert np.allclose(model.predict_on_batch(_batch()), build.model.predict_on_batch(_batch()), atol=1e-5)
    assert len(said) == 1 and said[0].startswith(f"engine: {fastest} (images/s on this machine: {fastest} 300,")
    record = json.loads(next((keras_cache / "models" / "transfer" / "onnx").glob("*.json")).read_text())
    assert set(record["difference"]) == set(RUNTIMES) and max(record["difference"].values()) < 1e-4
    store = json.loads((keras_cache / "transfer" / "machine.json").read_text())
    assert [topic["engines"][engines.onednn_state()]["rates"][fastest] for topic in store.values()] == [300.0]
    again, said = Builds(), []
    model = frozen_model({"tiny": fastest}, again, "auto", _batch, log=said.append)
    assert said == [] and getattr(model, "engine", "tensorflow") == fastest  # measured once, on this machine
    assert again.calls == (1 if fastest == "tensorflow" else 0)  # a runtime needs no Keras model at all


def test_a_second_model_on_the_same_machine_is_checked_but_not_timed_again(keras_cache, monkeypatch):
    _rates(monkeypatch, tensorflow=100.0, onnxruntime=300.0, openvino=200.0)
    frozen_model({"tiny": "first"}, Builds(), "auto", _batch, log=lambda line: None)

    def never(*args, **kwargs):
        raise AssertionError("timed again")

    monkeypatch.setattr(engines, "_rate", never)
    said = []
    model = frozen_model({"tiny": "second"}, Builds(), "auto", _batch, log=said.append)
    assert model.engine == "onnxruntime" and len(said) == 1 and "checked once" in said[0]
    assert len(list((keras_cache / "models" / "transfer" / "onnx").glob("*.onnx"))) == 2


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_a_runtime_asked_for_by_name_runs(keras_cache, name):
    model = frozen_model({"tiny": "named"}, Builds(), name, _batch, log=lambda line: None)
    assert isinstance(model, ExportedModel) and model.engine == name
    assert model.output.shape[-1] == 4


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_a_runtime_takes_calls_from_several_threads_at_once(keras_cache, name):
    """tf.data runs stage 2's frozen-layer step on parallel threads: an engine must not refuse a second call."""
    from concurrent.futures import ThreadPoolExecutor

    model = frozen_model({"tiny": "threads"}, Builds(), name, _batch, log=lambda line: None)
    batches = [np.random.default_rng(i).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32) for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(model.predict_on_batch, batches))
    for batch, out in zip(batches, outs, strict=True):
        assert np.allclose(out, model.predict_on_batch(batch), atol=1e-6)


def test_without_any_runtime_auto_is_tensorflow_and_a_named_one_says_how_to_install_it(keras_cache, monkeypatch):
    monkeypatch.setattr(engines, "available_runtimes", lambda: {})
    build = Builds()
    assert frozen_model({"tiny": 1}, build, "auto", _batch) is build.model
    with pytest.raises(TransferError, match=r"engine='onnxruntime' needs onnxruntime and tf2onnx installed: pip "
                                            r"install -e '\.\[onnx\]'"):
        frozen_model({"tiny": 1}, build, "onnxruntime", _batch)


def test_a_runtime_that_disagrees_with_tensorflow_is_never_used(keras_cache, monkeypatch):
    real = RUNTIMES["onnxruntime"]
    wrong = engines.Runtime(real.name, real.module, lambda module, path: (lambda x: real.load(module, path)(x) + 1),
                            real.install)
    monkeypatch.setitem(RUNTIMES, "onnxruntime", wrong)
    _rates(monkeypatch, tensorflow=1.0, onnxruntime=1000.0, openvino=2.0)
    said = []
    model = frozen_model({"tiny": "wrong"}, Builds(), "auto", _batch, log=said.append)
    assert model.engine == "openvino" and "onnxruntime" not in said[-1]  # the fast one was wrong: not a candidate
    with pytest.raises(TransferError, match="engine='onnxruntime' cannot run this model: its output differs from "
                                            "TensorFlow's by"):
        frozen_model({"tiny": "wrong"}, Builds(), "onnxruntime", _batch)


def test_an_export_that_fails_falls_back_to_tensorflow_once_and_for_all(keras_cache, monkeypatch):
    build, said = Builds(), []
    monkeypatch.setattr(type(build.model), "export", lambda *a, **k: (_ for _ in ()).throw(ValueError("no op")))
    assert frozen_model({"tiny": "fails"}, build, "auto", _batch, log=said.append) is build.model
    assert any("the ONNX export failed (ValueError)" in line for line in said)
    said.clear()
    assert frozen_model({"tiny": "fails"}, build, "auto", _batch, log=said.append) is build.model
    assert said == []  # not tried again for the same model and versions


def test_features_agree_whichever_engine_ran(tmp_path):
    from transfer import ExtractConfig, extract_features

    data = colour_folder(tmp_path / "data", n=5, splits=("",))
    paths = sorted(str(p) for p in data.rglob("*.png"))
    out = {}
    for engine in ("tensorflow", *RUNTIMES):
        cfg = ExtractConfig(image_size=32, engine=engine)
        out[engine] = extract_features(paths, cfg, progress=False, log=lambda line: None).features
    scale = np.abs(out["tensorflow"]).max()
    for engine in RUNTIMES:
        assert np.abs(out[engine] - out["tensorflow"]).max() <= 1e-4 * scale, engine


def test_an_unknown_engine_is_a_one_line_error():
    from transfer import ExtractConfig

    with pytest.raises(TransferError, match=r"engine='tensorrt' is not valid\. Expected one of: auto, tensorflow, "
                                            r"onnxruntime, openvino\."):
        ExtractConfig(engine="tensorrt")
