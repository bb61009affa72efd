"""Duplicates: exact copies by pixels, near-copies by features, leaks across splits, label conflicts, groups."""

import os
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transfer.data._duplicates import (
    COPY_KINDS,
    DUPLICATE_COLUMNS,
    NEAR_THRESHOLD,
    exact_groups,
    find_duplicates,
    group_ids,
    leaked,
    nearest_neighbours,
    normalised,
    pixel_hash,
    plant_copies,
    relation,
    summary,
)


def noise(path, seed, size=(32, 24), mode="RGB", **save):
    """A random-noise image: distinct from any other seed's."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, **save)
    return str(path)


def frame(rows):
    """A table (path, label, split) of ``(path, label, split)`` tuples."""
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def orthogonal(n, d=16):
    """``n`` features, each similar to no other (rows of the identity)."""
    return np.eye(n, d, dtype=np.float32)


def test_exact_copies_are_found_by_pixels_whatever_the_format(tmp_path):
    png = noise(tmp_path / "a.png", 0)
    with Image.open(png) as img:
        img.save(tmp_path / "a.bmp")
        img.save(tmp_path / "a.tiff")
        img.save(tmp_path / "a-smaller.png", optimize=True, compress_level=9)
        img.save(tmp_path / "a.jpg", quality=95)  # lossy: other pixels
    other = noise(tmp_path / "b.png", 1)
    (tmp_path / "text.png").write_text("not an image")
    paths = [png, *(str(tmp_path / n) for n in ("a.bmp", "a.tiff", "a-smaller.png", "a.jpg")), other,
             str(tmp_path / "text.png"), str(tmp_path / "missing.png")]
    hashes = exact_groups(paths)
    assert set(hashes) == set(paths[:6])  # the unreadable and the missing are left out
    assert len({hashes[p] for p in paths[:4]}) == 1
    assert hashes[str(tmp_path / "a.jpg")] != hashes[png] != hashes[other]


def test_an_image_and_its_grey_and_rgba_saves_differ_only_where_the_pixels_do(tmp_path):
    grey = tmp_path / "g.png"
    Image.new("L", (8, 8), 100).save(grey)
    Image.new("RGB", (8, 8), (100, 100, 100)).save(tmp_path / "g-rgb.png")
    Image.new("RGB", (8, 9), (100, 100, 100)).save(tmp_path / "g-taller.png")
    assert pixel_hash(grey) == pixel_hash(tmp_path / "g-rgb.png") != pixel_hash(tmp_path / "g-taller.png")


def test_a_named_pipe_is_never_opened(tmp_path):
    fifo = tmp_path / "data" / "pipe.png"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    good = noise(tmp_path / "data" / "ok.png", 0)
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(exact_groups([str(fifo), good])), daemon=True)
    worker.start()
    worker.join(timeout=30)
    blocked = worker.is_alive()
    if blocked:  # a reader is stuck in open(): a writer that comes and goes releases it, so the run can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=30)
    assert not blocked, "exact_groups opened a named pipe"
    assert list(answer) == [good] and pixel_hash(fifo) is None


def test_a_test_image_with_a_copy_in_train_is_a_leak_the_test_side_first(tmp_path):
    train = noise(tmp_path / "train" / "ant" / "1.png", 0)
    with Image.open(train) as img:
        img.save(tmp_path / "1.bmp")
    test = str(tmp_path / "1.bmp")
    near = noise(tmp_path / "val" / "ant" / "2.png", 2)
    table = frame([(train, "ant", "train"), (test, "ant", "test"), (near, "ant", "val")])
    features = orthogonal(3)
    features[2] = features[0] + 0.1 * features[1]  # 0.995 of the train image: a near-copy, not the same pixels
    dups = find_duplicates(table, features)
    assert list(dups.columns) == DUPLICATE_COLUMNS and len(dups) == 2
    exact, nearly = dups.set_index("kind").loc["exact"], dups.set_index("kind").loc["near"]
    assert (exact["path"], exact["copy_path"], exact["split"], exact["copy_split"]) == (test, train, "test", "train")
    assert exact["relation"] == "leak" and exact["similarity"] == 1.0 and not exact["label_conflict"]
    assert (nearly["path"], nearly["copy_path"], nearly["relation"]) == (near, train, "leak")
    assert nearly["similarity"] == pytest.approx(0.995, abs=1e-3)
    assert leaked(dups) == {test, near}


def test_one_image_under_two_labels_is_a_label_conflict_within_its_split(tmp_path):
    a = noise(tmp_path / "ant" / "x.png", 0)
    b = noise(tmp_path / "bee" / "x.png", 0)
    c = noise(tmp_path / "bee" / "y.png", 1)
    dups = find_duplicates(frame([(a, "ant", "train"), (b, "bee", "train"), (c, "bee", "train")]), orthogonal(3))
    assert len(dups) == 1
    row = dups.iloc[0]
    assert (row["path"], row["copy_path"], row["label"], row["copy_label"]) == (a, b, "ant", "bee")
    assert row["label_conflict"] and row["relation"] == "within train" and row["kind"] == "exact"
    assert leaked(dups) == set()


def test_near_copies_within_a_split_each_pair_once_and_unreadable_rows_left_out(tmp_path):
    paths = [noise(tmp_path / f"{n}.png", n) for n in range(5)]
    features = orthogonal(5)
    features[1] = features[0] * 3 + 0.05 * features[4]  # the length does not count, the direction does
    features[3] = np.nan  # an image that could not be read: no features
    features[2] = features[0] + 0.8 * features[2]  # 0.78: below the threshold
    dups = find_duplicates(frame([(p, "ant", "train") for p in paths]), features)
    assert len(dups) == 1
    row = dups.iloc[0]
    assert (row["path"], row["copy_path"], row["kind"], row["relation"]) == (paths[0], paths[1], "near", "within train")
    assert row["similarity"] > NEAR_THRESHOLD
    assert find_duplicates(frame([(p, "ant", "train") for p in paths]), features, threshold=0.7)["kind"].size == 3


def test_relations_across_splits_and_without_one():
    assert relation("train", "test") == ("leak", True)
    assert relation("val", "train") == ("leak", False)
    assert relation("val", "test") == ("across test and val", True)
    assert relation("test", "unused") == ("across test and unused", False)
    assert relation(None, float("nan")) == ("within unsplit", False)
    assert relation("", "train") == ("across train and unsplit", True)


def test_a_large_group_of_copies_pairs_with_anchors_and_keeps_every_leak_and_conflict(tmp_path):
    rows = [(noise(tmp_path / f"{n}.png", 7), "ant" if n % 3 else "bee", "test" if n % 4 == 0 else "train")
            for n in range(30)]
    dups = find_duplicates(frame(rows), None)
    assert 0 < len(dups) < 30 * 29 // 2  # not every pair: 435 would grow as the square
    assert not dups.duplicated(["path", "copy_path"]).any()
    assert leaked(dups) == {p for p, _, split in rows if split == "test"}
    assert dups["label_conflict"].any() and set(group_ids([r[0] for r in rows], dups)) == {0}


def test_group_ids_are_the_connected_components_of_the_copies():
    dups = pd.DataFrame({"path": ["a", "c", "f", "x"], "copy_path": ["b", "b", "e", "y"]})
    assert group_ids(["a", "b", "c", "d", "e", "f"], dups) == [0, 0, 0, 1, 2, 2]
    assert group_ids(["a", "b", "a"], pd.DataFrame(columns=DUPLICATE_COLUMNS)) == [0, 1, 0]  # one file listed twice


@pytest.mark.parametrize(("n", "k", "block"), [(1, 1, 4), (2, 3, 4), (7, 3, 3), (300, 5, 64), (300, 1, 2048)])
def test_nearest_neighbours_equal_brute_force(n, k, block):
    x = np.random.default_rng(n).normal(size=(n, 20)).astype(np.float32)
    index, similarity = nearest_neighbours(x, k=k, block=block)
    assert index.shape == similarity.shape == (n, k)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    kk = min(k, n - 1)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
    np.testing.assert_array_equal(index[:, :kk], expected)
    np.testing.assert_allclose(similarity[:, :kk], np.take_along_axis(sims, expected, axis=1), atol=1e-5)
    assert (index[:, kk:] == -1).all() and np.isneginf(similarity[:, kk:]).all()


def test_nearest_neighbours_of_zero_and_nan_rows_are_similar_to_nothing():
    x = np.array([[1, 0], [2, 0.1], [0, 0], [np.nan, 1]], dtype=np.float32)
    index, similarity = nearest_neighbours(x)
    assert index[:2, 0].tolist() == [1, 0] and similarity[0, 0] > 0.99
    assert (similarity[2:, 0] == 0).all() and np.isfinite(normalised(x)).all()


def test_summary_says_what_leaks_and_what_repeats(tmp_path):
    train, test, val = (noise(tmp_path / f"{n}.png", n) for n in range(3))
    rows = [(train, "ant", "train"), (test, "ant", "test"), (val, "ant", "val"),
            (noise(tmp_path / "t2.png", 0), "ant", "test"), (noise(tmp_path / "bee.png", 9), "bee", "train"),
            (noise(tmp_path / "ant.png", 9), "ant", "train"), (noise(tmp_path / "lone.png", 5), "bee", "test")]
    features = orthogonal(7)
    features[1] = features[0] + 0.1 * features[1]
    dups = find_duplicates(frame(rows), features)
    assert summary(dups, frame(rows)) == ("2 of 3 test images have a copy in train (1 exact, 1 near); "
                                          "1 image carries two labels; 1 pair of copies within train")
    assert summary(dups.iloc[:0], frame(rows)) == "no duplicates found among 7 images"
    unsplit = frame([(p, label, None) for p, label, _ in rows])
    assert summary(find_duplicates(unsplit, None), unsplit) == ("1 image carries two labels; "
                                                                "2 pairs of copies (no split yet)")


def test_planted_copies_are_one_of_each_kind(tmp_path):
    copies = plant_copies(noise(tmp_path / "a.png", 0, size=(40, 20)), tmp_path / "copies", "a")
    assert list(copies) == list(COPY_KINDS)
    sizes = {kind: Image.open(path).size for kind, path in copies.items()}
    assert sizes == {"resized": (20, 10), "jpeg": (40, 20), "crop": (36, 18), "mirror": (40, 20)}
    assert Image.open(copies["jpeg"]).format == "JPEG"


# The product's claim, on real photos with the real backbone: at NEAR_THRESHOLD every kind of planted copy is
# found (bench/duplicates.py, 120 hymenoptera photos a class: resized 97.9 %, JPEG 99.2 %, crop 98.3 %, mirror
# 100 %; asserted here at 95 % of 20 a class) and no pair of distinct photos is taken for copies (bench: 0 of
# 14,280 same-class pairs, the most similar 0.78; asserted at most 1 %).
@pytest.mark.slow
def test_planted_copies_of_photos_are_found_and_distinct_photos_are_not(hymenoptera, tmp_path):
    from transfer.data import resolve_source
    from transfer.features import ExtractConfig, extract_features

    originals = resolve_source(hymenoptera).table.groupby("label").sample(n=20, random_state=1)
    rows, planted = [(p, label, "train") for p, label in zip(originals["path"], originals["label"], strict=True)], []
    for n, (path, label) in enumerate(zip(originals["path"], originals["label"], strict=True)):
        for kind, copy in plant_copies(path, tmp_path / "copies", f"{n:03d}").items():
            rows.append((copy, label, "test"))
            planted.append((copy, path, kind))
    table = frame(rows)
    feats = extract_features(table["path"], ExtractConfig(), cache_dir=tmp_path / "cache", progress=False)
    assert not feats.skipped
    features = pd.DataFrame(feats.features, index=feats.paths).loc[table["path"]].to_numpy()
    dups = find_duplicates(table, features)
    pairs = set(zip(dups["path"], dups["copy_path"], strict=True))
    found = pd.DataFrame(planted, columns=["copy", "original", "kind"]).assign(
        found=[(copy, original) in pairs for copy, original, _ in planted]).groupby("kind")["found"].mean()
    print(found.to_string())
    assert (found >= 0.95).all(), found
    distinct = dups[(dups["split"] == "train") & (dups["copy_split"] == "train")]
    same_class_pairs = sum(n * (n - 1) // 2 for n in originals["label"].value_counts())
    assert len(distinct) / same_class_pairs <= 0.01, distinct
    family = {copy: original for copy, original, _ in planted} | {p: p for p in originals["path"]}
    strangers = [a for a, b in pairs if family[a] != family[b]]  # a copy of one photo taken for another's
    assert len(strangers) <= 0.01 * len(table) ** 2 / 2 / 5, strangers


# --- the check inside classify and compare, --drop-duplicates, k-fold groups ---------------------------------------

def _leaky_folder(root):
    """Red and blue noise images in train/val/test, two train images copied (same pixels) into test."""
    import shutil

    from tests.conftest import colour_folder

    data = colour_folder(root, n=8, splits=("train", "val", "test"))
    shutil.copy(data / "train" / "red" / "0.png", data / "test" / "red" / "copy-of-train-0.png")
    shutil.copy(data / "train" / "blue" / "3.png", data / "test" / "blue" / "copy-of-train-3.png")
    return data


def test_classify_finds_the_leaks_and_scores_without_them(tmp_path):
    from click.testing import CliRunner

    import cli

    data = _leaky_folder(tmp_path / "d")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, ["classify", "--data", str(data), "--out", str(out), "-c", "logreg",
                                           "--image-size", "32", "--weights", "none"])
    assert result.exit_code == 0, result.output
    assert "data check: 2 of 18 test images have a copy in train (2 exact" in result.output
    dups = pd.read_csv(out / "duplicates.csv")
    assert set(dups["relation"]) == {"leak"} and set(dups["path"].str.rsplit("/", n=1).str[-1]) == {
        "copy-of-train-0.png", "copy-of-train-3.png"}
    metrics = pd.read_csv(out / "metrics.csv")
    predictions = pd.read_csv(out / "predictions.csv")
    kept = ~predictions["path"].str.contains("copy-of-train")
    assert metrics["accuracy_without_leaks"].iloc[0] == pytest.approx(
        (predictions["true_label"] == predictions["pred_label"])[kept].mean())


def test_drop_duplicates_leaves_the_test_copies_out_and_lists_them(tmp_path):
    from click.testing import CliRunner

    import cli

    data = _leaky_folder(tmp_path / "d")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, ["classify", "--data", str(data), "--out", str(out), "-c", "logreg",
                                           "--image-size", "32", "--weights", "none", "--drop-duplicates"])
    assert result.exit_code == 0, result.output
    assert "--drop-duplicates: 2 test image(s) with a copy in train or val left out" in result.output
    split = pd.read_csv(out / "split.csv")
    dropped = split[split["split"] == "dropped"]["path"].str.rsplit("/", n=1).str[-1]
    assert sorted(dropped) == ["copy-of-train-0.png", "copy-of-train-3.png"]
    assert not pd.read_csv(out / "predictions.csv")["path"].str.contains("copy-of-train").any()
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["reason"].str.contains("--drop-duplicates").sum() == 2
    assert (split["path"].str.contains("train/red/0.png")).any()  # the training copy stays
    assert pd.read_csv(out / "metrics.csv")["n_test"].iloc[0] == 16


def test_k_fold_keeps_the_copies_of_an_image_in_one_fold():
    from transfer.comparison._protocol import fold_splits

    table = pd.DataFrame({"path": [f"/d/{c}/{i}.png" for c in "ab" for i in range(10)],
                          "label": [c for c in "ab" for _ in range(10)]})
    dups = pd.DataFrame([{"path": "/d/a/0.png", "copy_path": "/d/a/1.png"}, {"path": "/d/a/1.png",
                                                                             "copy_path": "/d/a/2.png"},
                         {"path": "/d/b/5.png", "copy_path": "/d/b/9.png"}])
    groups = group_ids(table["path"].tolist(), dups.assign(label="", split="", copy_label="", copy_split="",
                                                           kind="exact", similarity=1.0, relation="",
                                                           label_conflict=False))
    for split in fold_splits(table, 5, 0, 0.15, groups):
        tested = set(split.loc[split["split"] == "test", "path"])
        for members in ({"/d/a/0.png", "/d/a/1.png", "/d/a/2.png"}, {"/d/b/5.png", "/d/b/9.png"}):
            assert len(members & tested) in (0, len(members))
    plain = fold_splits(table, 5, 0, 0.15)
    assert [len(s) for s in plain] == [20] * 5


def test_transfer_check_lists_copies_and_two_labels_without_a_cnn_pass_for_exact_ones(tmp_path, monkeypatch):
    """A folder without splits: an exact copy within a class and one under the other class's name; with random
    weights only exact copies are looked for, and no feature is computed for them."""
    import shutil

    from click.testing import CliRunner

    import cli
    from tests.conftest import colour_folder
    from transfer.features import _extract

    data = colour_folder(tmp_path / "d", n=6, splits=("",))
    shutil.copy(data / "red" / "0.png", data / "red" / "again.png")
    shutil.copy(data / "red" / "1.png", data / "blue" / "mislabelled.png")
    monkeypatch.setattr(_extract, "extract_features", lambda *a, **k: pytest.fail("a CNN pass for exact copies"))
    out = tmp_path / "check"
    result = CliRunner().invoke(cli.main, ["check", "--data", str(data), "--out", str(out), "--weights", "none"])
    assert result.exit_code == 0, result.output
    assert "1 image carries two labels" in result.output and "exact copies only: random backbone weights" in \
        result.output
    dups = pd.read_csv(out / "duplicates.csv")
    assert len(dups) == 2 and dups["label_conflict"].sum() == 1 and set(dups["kind"]) == {"exact"}


def test_compare_says_what_the_check_found_and_scores_every_model_without_the_leaks(tmp_path):
    from transfer.comparison import CompareConfig, compare

    data = _leaky_folder(tmp_path / "d")
    cfg = CompareConfig(strategies="features,scratch", classifiers="logreg", image_size=32, batch_size=8,
                        scratch_size=16, scratch_epochs=1, weights="none")
    done = compare(data, tmp_path / "run", cfg, progress=False, log=lambda *_: None)
    table = pd.read_csv(tmp_path / "run" / "compare.csv")
    assert table["accuracy_without_leaks"].notna().all() and set(table["strategy"]) == {"features", "scratch"}
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Data check:" in page and "2 of 18 test images have a copy in train" in page
    assert "accuracy without leaked test images" in page
    assert len(pd.read_csv(tmp_path / "run" / "duplicates.csv")) == 2 and done.table is not None
