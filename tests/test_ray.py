"""The Ray executor: the same features and reports as the local path, and a lost actor costs nothing."""

import builtins
import os
import signal

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import colour_folder
from transfer import ExtractConfig, classify, extract_features
from transfer.features import _cache as feature_cache

TINY = ExtractConfig(image_size=32, batch_size=8)
TIMES = ["fit_seconds", "extract_seconds", "inference_images_per_second"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_makes_the_local_features_and_the_same_reports(local_ray, tmp_path):
    data = colour_folder(tmp_path / "d", n=12, splits=("train", "val"))
    said = []
    runs = {}
    for executor in ("local", "ray"):
        cfg = ExtractConfig(image_size=32, batch_size=8, executor=executor)
        runs[executor] = classify(data, tmp_path / executor, cfg, "logreg,knn", progress=False,
                                  features_dir=tmp_path / f"cache-{executor}", log=said.append)
    assert any(line.startswith("extracting 48 images on Ray: 2 actor(s)") for line in said)
    paths = sorted(str(p) for p in data.rglob("*.png"))
    local, on_ray = (extract_features(paths, TINY, cache_dir=tmp_path / f"cache-{e}", progress=False)
                     for e in ("local", "ray"))
    assert on_ray.from_cache and on_ray.paths == local.paths
    np.testing.assert_allclose(on_ray.features, local.features, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(runs["ray"].drop(columns=TIMES), runs["local"].drop(columns=TIMES))
    for report in ("predictions.csv", "per_class.csv", "split.csv", "skipped.csv"):
        assert (tmp_path / "ray" / report).read_bytes() == (tmp_path / "local" / report).read_bytes(), report
    from transfer import predict_run

    new = colour_folder(tmp_path / "new", n=3)  # images no run has seen: predict extracts them on Ray
    on_ray, _ = predict_run(tmp_path / "ray", [new], executor="ray", log=lambda *_: None)
    here, _ = predict_run(tmp_path / "local", [new], log=lambda *_: None)
    pd.testing.assert_frame_equal(on_ray.drop(columns="score"), here.drop(columns="score"))
    np.testing.assert_allclose(on_ray["score"], here["score"], rtol=1e-4)


def test_an_actor_killed_mid_run_is_replaced_and_the_features_are_complete(local_ray, tmp_path, monkeypatch):
    import psutil

    paths = sorted(str(p) for p in colour_folder(tmp_path / "d", n=160).rglob("*.png"))
    cfg = ExtractConfig(image_size=96, batch_size=8)
    monkeypatch.setattr(feature_cache, "SHARD_ROWS", 16)
    killed, real_add = [], feature_cache.FeatureStore.add

    def add_then_kill(self, *args, **kwargs):  # after the first shard is written: a worker is lost
        if not killed:  # Ray names an actor's process after its class: ray::MapWorker(MapBatches(Extractor))
            actors = [p for p in psutil.process_iter(["cmdline"]) if "Extractor" in " ".join(p.info["cmdline"] or [])]
            os.kill(actors[0].pid, signal.SIGKILL)
            killed.append(actors[0].pid)
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(feature_cache.FeatureStore, "add", add_then_kill)
    on_ray = extract_features(paths, cfg.__class__(**{**cfg.__dict__, "executor": "ray"}),
                              cache_dir=tmp_path / "ray", progress=False, log=lambda *_: None)
    assert killed
    local = extract_features(paths, cfg, cache_dir=tmp_path / "local", progress=False)
    assert on_ray.paths == local.paths == paths and not on_ray.skipped
    np.testing.assert_allclose(on_ray.features, local.features, rtol=1e-5, atol=1e-6)


def test_ray_not_installed_is_one_line_naming_the_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    data = colour_folder(tmp_path / "d", n=2)
    result = CliRunner().invoke(cli.main, ["extract", "--data", str(data), "--out", str(tmp_path / "run"),
                                           "--image-size", "32", "--executor", "ray"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--executor ray needs Ray Data, which is not installed: pip install -e '.[ray]'" in result.output
    assert not (tmp_path / "run" / "skipped.csv").exists()


@pytest.mark.parametrize("value", ["spark", "local:x"])
def test_an_unknown_executor_is_one_line(tmp_path, value):
    result = CliRunner().invoke(cli.main, ["extract", "--data", str(colour_folder(tmp_path / "d", n=2)),
                                           "--executor", value])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert f"--executor {value!r} is not valid: give local, ray" in result.output


def test_grid_searches_run_on_ray_through_joblib(local_ray):
    import joblib
    from ray.util.joblib import register_ray

    from transfer.features import fit_classifier

    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b"], 30)
    x = rng.normal(size=(60, 8)) + (y == "b")[:, None] * 2.0
    register_ray()
    with joblib.parallel_config(backend="ray"):  # what the docs tell a user with a cluster to write
        on_ray = fit_classifier("logreg", x, y)
    here = fit_classifier("logreg", x, y)
    assert on_ray.best_params == here.best_params
    np.testing.assert_allclose(on_ray.search["mean_test_score"], here.search["mean_test_score"])
