import numpy as np
import pandas as pd
import pytest

from tests.conftest import colour_folder
from transfer import features
from transfer.errors import TransferError
from transfer.features import ExtractConfig, extract, extract_features

TINY = ExtractConfig(image_size=32, batch_size=8)


@pytest.fixture
def images(tmp_path):
    return sorted(str(p) for p in colour_folder(tmp_path / "d", n=4).rglob("*.png"))


def test_features_are_cached_and_reused(images, tmp_path, monkeypatch):
    first = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert first.features.shape == (16, 1280) and not first.from_cache
    assert first.paths == images

    def no_cnn(*args, **kwargs):
        raise AssertionError("the CNN ran although the cache was valid")

    monkeypatch.setattr(features, "run_extraction", no_cnn)
    again = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert again.from_cache
    np.testing.assert_array_equal(again.features, first.features)
    assert again.paths == first.paths


@pytest.mark.parametrize("change", [
    dict(pooling="max"), dict(layer="flatten"), dict(image_size=40), dict(resize="plain"), dict(weights="none"),
    dict(flip_average=True),
])
def test_a_different_key_never_reuses(images, tmp_path, change):
    import dataclasses

    first = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    other = extract_features(images, dataclasses.replace(TINY, **change), cache_dir=tmp_path / "cache", progress=False)
    assert not other.from_cache and other.key != first.key


def test_a_changed_file_changes_the_key(images):
    import os

    key = features.cache_key(TINY.validated(), images)
    st = os.stat(images[0])
    os.utime(images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert features.cache_key(TINY.validated(), images) != key


def test_interrupted_write_leaves_no_cache_file(images, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_salted_folder_lists_exactly_the_bad_files(tmp_path, bad_files):
    root = colour_folder(tmp_path / "d", n=4, splits=("train", "val"))
    for f in bad_files.iterdir():
        (root / "train" / "red" / f.name).write_bytes(f.read_bytes())
    split, feats = extract(root, tmp_path / "run", TINY, progress=False)
    skipped = pd.read_csv(tmp_path / "run" / "skipped.csv")
    assert sorted(p.rsplit("/", 1)[-1] for p in skipped["path"]) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert len(feats.paths) == 16 and len(split) == 19


def test_palette_gif_goes_through(tmp_path):
    from tests.conftest import solid_image

    gif = solid_image(tmp_path / "x.gif", 7, mode="P")
    feats = extract_features([gif], TINY, progress=False)
    assert feats.features.shape == (1, 1280) and not feats.skipped


def test_bad_extract_options_fail_before_any_work():
    with pytest.raises(TransferError, match="resize='stretch'"):
        ExtractConfig(resize="stretch").validated()
    with pytest.raises(TransferError, match="Unknown backbone"):
        ExtractConfig(backbone="nope").validated()


def test_a_corrupt_cache_file_is_extracted_again(images, tmp_path):
    first = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    (cache,) = (tmp_path / "cache").iterdir()
    cache.write_bytes(cache.read_bytes()[:100])
    again = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert not again.from_cache
    np.testing.assert_allclose(again.features, first.features, rtol=1e-5, atol=1e-5)


def test_missing_weights_file_is_a_one_line_error():
    with pytest.raises(TransferError, match="neither 'imagenet', 'none' nor an existing file"):
        ExtractConfig(weights="~/no/such/weights.h5").validated()


def test_pooling_without_effect_stays_out_of_the_key(images):
    flat_avg = ExtractConfig(layer="flatten", pooling="avg", image_size=32).validated()
    flat_max = ExtractConfig(layer="flatten", pooling="max", image_size=32).validated()
    assert features.cache_key(flat_avg, images) == features.cache_key(flat_max, images)


def test_flip_averaged_features_are_the_mean_of_an_image_and_its_mirror(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    Image.fromarray(pixels[:, ::-1]).save(tmp_path / "mirror.png")
    paths = [str(tmp_path / "image.png"), str(tmp_path / "mirror.png")]
    plain = extract_features(paths, TINY, progress=False).features
    both = extract_features(paths, ExtractConfig(image_size=32, batch_size=8, flip_average=True), progress=False)
    np.testing.assert_allclose(both.features[0], plain.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(both.features[1], both.features[0], rtol=1e-4, atol=1e-5)  # mirrors look alike
    assert not np.allclose(plain[0], plain[1], rtol=1e-3)  # while their own features differ
