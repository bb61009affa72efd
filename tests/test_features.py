import numpy as np
import pandas as pd
import pytest

from tests.conftest import colour_folder
from transfer import ExtractConfig, extract, extract_features
from transfer.errors import TransferError
from transfer.features import _extract as features

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

    key = features.cache_key(TINY, images)
    st = os.stat(images[0])
    os.utime(images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert features.cache_key(TINY, images) != key


def test_interrupted_write_leaves_no_cache_file(images, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()) == ["settings.json", "used"]


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
        ExtractConfig(resize="stretch")
    with pytest.raises(TransferError, match="Unknown backbone"):
        ExtractConfig(backbone="nope")


def test_a_corrupt_cache_file_is_extracted_again(images, tmp_path):
    first = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    (cache,) = (tmp_path / "cache").rglob("shard-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    again = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert not again.from_cache
    np.testing.assert_allclose(again.features, first.features, rtol=1e-5, atol=1e-5)


def test_missing_weights_file_is_a_one_line_error():
    with pytest.raises(TransferError, match="neither 'imagenet', 'none' nor an existing file"):
        ExtractConfig(weights="~/no/such/weights.h5")


def test_pooling_without_effect_stays_out_of_the_key(images):
    flat_avg = ExtractConfig(layer="flatten", pooling="avg", image_size=32)
    flat_max = ExtractConfig(layer="flatten", pooling="max", image_size=32)
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


def test_only_the_images_the_cache_lacks_run_through_the_cnn(images, tmp_path, monkeypatch):
    first = extract_features(images[:10], TINY, cache_dir=tmp_path / "cache", progress=False)
    ran = []
    real = features.run_extraction

    def counting(cfg, paths, *args, **kwargs):
        ran.append(sorted(paths))
        return real(cfg, paths, *args, **kwargs)

    monkeypatch.setattr(features, "run_extraction", counting)
    every = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert ran == [sorted(images[10:])] and not every.from_cache
    np.testing.assert_array_equal(every.features[:10], first.features)
    assert every.paths == images and every.seconds > 0 and every.images_per_second > 0
    again = extract_features(images[::-1], TINY, cache_dir=tmp_path / "cache", progress=False)  # another order
    assert len(ran) == 1 and again.from_cache and again.paths == images[::-1]
    np.testing.assert_array_equal(again.features, every.features[::-1])


def test_a_killed_extraction_keeps_its_whole_shards_and_the_next_run_extracts_the_rest(images, tmp_path,
                                                                                      monkeypatch):
    from transfer.features import _cache as feature_cache

    monkeypatch.setattr(feature_cache, "SHARD_ROWS", 5)
    ran, real = [], features.run_extraction

    def dies_at_third_shard(cfg, paths, *args, **kwargs):
        ran.append(len(paths))
        if len(ran) == 3:
            raise KeyboardInterrupt
        return real(cfg, paths, *args, **kwargs)

    monkeypatch.setattr(features, "run_extraction", dies_at_third_shard)
    with pytest.raises(KeyboardInterrupt):
        extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").rglob("shard-*.npz"))) == 2
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".tmp")]
    ran.clear()
    monkeypatch.setattr(features, "run_extraction", lambda *a, **k: (ran.append(len(a[1])), real(*a, **k))[1])
    done = extract_features(images, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert ran == [5, 1] and done.features.shape == (16, 1280)  # the 6 images the two whole shards lacked
    whole = extract_features(images, TINY, cache_dir=tmp_path / "fresh", progress=False)
    np.testing.assert_allclose(done.features, whole.features, rtol=1e-5, atol=1e-5)


def test_unreadable_images_are_cached_with_their_reason_and_not_tried_again(tmp_path, bad_files, monkeypatch):
    paths = sorted(str(p) for p in bad_files.iterdir()) + [str(p) for p in colour_folder(tmp_path / "d", n=1)
                                                           .rglob("*.png")]
    first = extract_features(paths, TINY, cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.setattr(features, "run_extraction", lambda *a, **k: pytest.fail("the CNN ran again"))
    again = extract_features(paths, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert again.skipped == first.skipped and len(first.skipped) == 3 and again.from_cache
    assert again.paths == first.paths and len(again.paths) == len(paths) - 3


def test_cache_list_and_prune(images, tmp_path):
    from click.testing import CliRunner

    import cli

    root = tmp_path / "cache"
    extract_features(images, TINY, cache_dir=root, progress=False)
    extract_features(images[:3], dataclasses_replace(TINY, pooling="max"), cache_dir=root, progress=False)
    listed = CliRunner().invoke(cli.main, ["cache", "list", "--dir", str(root)])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert len([line for line in lines if "efficientnet_lite0" in line]) == 2
    assert any(" avg " in line and " 16 " in line for line in lines)
    from transfer.features import cached_settings

    table = cached_settings(root)
    max_key = table.loc[table["pooling"] == "max", "key"].iloc[0]
    pruned = CliRunner().invoke(cli.main, ["cache", "prune", "--dir", str(root), "--key", max_key])
    assert pruned.exit_code == 0 and max_key in pruned.output
    assert list(cached_settings(root)["pooling"]) == ["avg"]
    bad = CliRunner().invoke(cli.main, ["cache", "prune", "--dir", str(root), "--key", "nope"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "holds no key 'nope'" in bad.output
    nothing = CliRunner().invoke(cli.main, ["cache", "prune", "--dir", str(root)])
    assert nothing.exit_code == 2 and "Say what to prune" in nothing.output
    old = CliRunner().invoke(cli.main, ["cache", "prune", "--dir", str(root), "--older-than", "0"])
    assert old.exit_code == 0 and "1 removed" in old.output and cached_settings(root).empty


def dataclasses_replace(cfg, **change):
    import dataclasses

    return dataclasses.replace(cfg, **change)


def test_a_large_pass_runs_in_a_process_of_its_own_with_the_same_features(images, tmp_path, monkeypatch):
    """From CHILD_PASS_IMAGES images the CNN pass runs in a child process, whose memory goes when it ends."""
    paths = images
    here = extract_features(paths, TINY, cache_dir=tmp_path / "here", progress=False, log=lambda *_: None)
    monkeypatch.setattr(features, "CHILD_PASS_IMAGES", len(paths))
    lines = []
    child = extract_features(paths, TINY, cache_dir=tmp_path / "child", progress=False, log=lines.append)
    # TensorFlow is imported in this process already: only a fresh process says which device it found.
    assert any(line.startswith("TensorFlow ") for line in lines)
    assert child.paths == here.paths
    np.testing.assert_allclose(child.features, here.features, rtol=1e-5, atol=1e-6)
    again = extract_features(paths, TINY, cache_dir=tmp_path / "child", progress=False, log=lines.append)
    assert again.from_cache
