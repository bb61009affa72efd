import urllib.error
import warnings

import numpy as np
import pytest

from tests.conftest import random_batch
from transfer import REGISTRY, build_backbone, feature_model, get_backbone
from transfer.errors import TransferError

KERAS_ROWS = [n for n, r in REGISTRY.items() if r.family == "keras.applications"]
LITE_ROWS = [n for n, r in REGISTRY.items() if r.family == "efficientnet_lite"]


def test_registry_holds_the_required_families():
    expected = {
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vgg16", "vgg19",
        "resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2", "resnet152v2",
        "inception_v3", "inception_resnet_v2", "xception", "mobilenet", "mobilenet_v2",
        "mobilenet_v3_small", "mobilenet_v3_large", "densenet121", "densenet169", "densenet201",
        *(f"efficientnet_b{i}" for i in range(8)),
        *(f"efficientnet_v2_{s}" for s in ("b0", "b1", "b2", "b3", "s")),
        "convnext_tiny", "convnext_small",
    }
    assert expected <= set(REGISTRY)


@pytest.mark.parametrize("name", KERAS_ROWS)
def test_keras_row_matches_the_built_model(name, monkeypatch):
    """Built at a small size: feature size, parameter count and the weights file Keras asks for."""
    import keras
    from keras.src.utils import file_utils

    requested = []

    def fake_get_file(fname=None, origin=None, **kwargs):
        requested.append(fname)
        return "unused"

    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    monkeypatch.setattr(keras.Model, "load_weights", lambda self, *a, **k: None)
    row = REGISTRY[name]
    size = max(32, row.min_input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_backbone(name, image_size=size, pooling="avg")
    assert model.output.shape[-1] == row.feature_size
    assert model.count_params() == row.params
    assert requested == [row.weights_file]
    assert callable(row.preprocess_input.resolve())


@pytest.mark.parametrize("name", LITE_ROWS)
def test_lite_row_matches_the_built_model(name):
    row = REGISTRY[name]
    model = build_backbone(name, weights=None, image_size=64, pooling="avg")
    assert model.output.shape[-1] == row.feature_size
    assert model.count_params() == row.params
    assert row.weights_offline()


def test_unknown_backbone_names_the_close_ones():
    with pytest.raises(TransferError, match=r"Unknown backbone 'resnet5'.*'resnet50'"):
        get_backbone("resnet5")
    assert get_backbone("EfficientNet-Lite0").name == "efficientnet_lite0"


def test_bad_options_are_one_line_errors():
    with pytest.raises(TransferError, match="pooling='mean'"):
        build_backbone("efficientnet_lite0", pooling="mean")
    with pytest.raises(TransferError, match="too small"):
        build_backbone("inception_v3", weights=None, image_size=40)
    with pytest.raises(TransferError, match="neither 'imagenet'"):
        build_backbone("vgg16", weights="/no/such/file.h5")


def test_offline_keras_weights_say_where_to_put_the_file(keras_cache, monkeypatch):
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no internet here")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    assert not REGISTRY["mobilenet_v3_small"].weights_offline()
    with pytest.raises(TransferError) as info:
        build_backbone("mobilenet_v3_small", pooling="avg")
    message = str(info.value)
    assert "\n" not in message
    assert "https://storage.googleapis.com/" in message
    assert str(keras_cache / "models" / REGISTRY["mobilenet_v3_small"].weights_file) in message
    assert "--weights PATH" in message


def test_keras_row_loads_a_local_weights_file(tmp_path):
    source = build_backbone("mobilenet_v3_small", weights=None, image_size=64, pooling="avg")
    path = tmp_path / "mine.weights.h5"
    source.save_weights(path)
    loaded = build_backbone("mobilenet_v3_small", weights=path, image_size=64, pooling="avg")
    x = random_batch(2, 64)
    np.testing.assert_allclose(source.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    with pytest.raises(TransferError, match="does not fit mobilenet_v3_large"):
        build_backbone("mobilenet_v3_large", weights=path, image_size=64)


def test_lite_weights_cache_is_written_reused_and_rebuilt_when_corrupt(keras_cache):
    x = random_batch(2, 64)
    first = build_backbone("efficientnet_lite0", image_size=64, pooling="avg")
    cached = list((keras_cache / "models" / "transfer").glob("*.weights.h5"))
    assert len(cached) == 1
    again = build_backbone("efficientnet_lite0", image_size=64, pooling="avg")
    expected = first.predict(x, verbose=0)
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, rtol=1e-6)
    cached[0].write_bytes(cached[0].read_bytes()[:1000])  # a half-written file
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = build_backbone("efficientnet_lite0", image_size=64, pooling="avg")
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), expected, rtol=1e-6)
    assert not [p for p in cached[0].parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_lite_row_loads_a_pth_or_keras_weights_file(tmp_path):
    from transfer.backbones._lite_weights import package_checkpoint

    x = random_batch(2, 64)
    reference = build_backbone("efficientnet_lite0", image_size=64, pooling="avg")
    from_pth = build_backbone("efficientnet_lite0", weights=package_checkpoint(REGISTRY["efficientnet_lite0"]),
                              image_size=64, pooling="avg")
    np.testing.assert_allclose(from_pth.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-6)
    wrong = package_checkpoint(REGISTRY["efficientnet_lite1"])
    with pytest.raises(TransferError, match="cannot be loaded into efficientnet_lite0"):
        build_backbone("efficientnet_lite0", weights=wrong, image_size=64)


def test_lite_full_model_has_the_state_dict_parameter_count():
    model = build_backbone("efficientnet_lite0", include_top=True)
    assert model.count_params() == 4_694_024
    assert model.output.shape[-1] == 1000


@pytest.mark.parametrize(
    ("layer", "pooling", "dim"),
    [("pooled", "avg", 1280), ("pooled", "max", 1280), ("flatten", None, 2 * 2 * 1280),
     ("block6a_expand_conv", "avg", 672), ("block6a_expand_conv", None, 4 * 4 * 672)],
)
def test_feature_model_exposes_layers(layer, pooling, dim):
    model = feature_model("efficientnet_lite0", layer=layer, pooling=pooling, weights=None, image_size=64)
    assert model.predict(random_batch(2, 64), verbose=0).shape == (2, dim)


def test_feature_model_reaches_vgg_dense_layers():
    model = feature_model("vgg16", layer="fc2", weights=None)
    assert model.output.shape[-1] == 4096


def test_feature_model_unknown_layer_lists_close_names():
    with pytest.raises(TransferError, match="block6a_expand_conv"):
        feature_model("efficientnet_lite0", layer="block6a_expand", weights=None, image_size=64)
