import gzip
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import solid_image
from transfer import load_image, resolve_source
from transfer.data import _sources as sources
from transfer.data import evaluation_split, make_split, prepare_split
from transfer.errors import TransferError


def tree(root, splits=("train", "val"), classes=("red", "blue"), n=3):
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}
    for s in splits:
        for c in classes:
            for i in range(n):
                solid_image(root / s / c / f"{i}.png", colours[c])
    return root


def test_folder_with_train_and_val(tmp_path):
    src = resolve_source(tree(tmp_path / "d"))
    assert src.kind == "folder"
    assert sorted(src.table.groupby(["split", "label"]).size().items()) == [
        (("train", "blue"), 3), (("train", "red"), 3), (("val", "blue"), 3), (("val", "red"), 3)]
    split = make_split(src.table)
    # The source's val is scored; what chooses (val) is carved from its train, so nothing scored also chose.
    assert evaluation_split(split) == "test"
    assert (split.loc[split["source_split"] == "val", "split"] == "test").all()
    carved = split[split["split"] == "val"]
    assert len(carved) == 2 and set(carved["source_split"]) == {"train"} and set(carved["label"]) == {"red", "blue"}


def test_folder_without_splits_gets_a_stratified_seeded_split(tmp_path):
    root = tmp_path / "d"
    for c in ("red", "blue"):
        for i in range(20):
            solid_image(root / c / f"{i}.png", (i, 0, 0))
    table = resolve_source(root).table
    a = make_split(table, 0.2, 0.25, seed=1)
    b = make_split(table, 0.2, 0.25, seed=1)
    pd.testing.assert_frame_equal(a, b)
    counts = a.groupby(["split", "label"]).size()
    assert counts["test"].tolist() == [5, 5] and counts["val"].tolist() == [4, 4]
    assert evaluation_split(a) == "test"
    assert not make_split(table, 0.2, 0.25, seed=2).equals(a)


def test_split_is_written_and_reused(tmp_path):
    src = resolve_source(tree(tmp_path / "d", splits=("train", "val", "test")))
    first = prepare_split(src, tmp_path / "run")
    written = pd.read_csv(tmp_path / "run" / "split.csv")
    assert list(written.columns) == ["path", "label", "split", "source_split"] and len(written) == 18
    again = prepare_split(src, tmp_path / "run")
    assert set(again["path"]) == set(first["path"])
    other = resolve_source(tree(tmp_path / "other"))
    with pytest.raises(TransferError, match="was made for other images"):
        prepare_split(other, tmp_path / "run")


def test_a_split_made_without_source_splits_is_reused_whatever_the_seed(tmp_path):
    root = tmp_path / "d"
    for c in ("red", "blue"):
        for i in range(10):
            solid_image(root / c / f"{i}.png", (i, 0, 0))
    src = resolve_source(root)
    first = prepare_split(src, tmp_path / "run", seed=0)
    again = prepare_split(src, tmp_path / "run", seed=99, val_fraction=0.3)
    pd.testing.assert_frame_equal(first.sort_values("path").reset_index(drop=True),
                                  again.sort_values("path").reset_index(drop=True), check_dtype=False)


def test_relabelled_images_do_not_reuse_the_split(tmp_path):
    tree(tmp_path / "imgs", splits=("x",))
    rows = [(f"imgs/x/{c}/{i}.png", c) for c in ("red", "blue") for i in range(3)]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(manifest, index=False)
    prepare_split(resolve_source(manifest), tmp_path / "run", val_fraction=0.3, test_fraction=0)
    relabelled = [(p, "red" if label == "blue" else "blue") for p, label in rows]
    pd.DataFrame(relabelled, columns=["path", "label"]).to_csv(manifest, index=False)
    with pytest.raises(TransferError, match="other images or labels"):
        prepare_split(resolve_source(manifest), tmp_path / "run")


def test_no_evaluation_split_fails_before_writing(tmp_path):
    src = resolve_source(tree(tmp_path / "d", splits=("x",)) / "x")
    with pytest.raises(TransferError, match="no val or test images"):
        prepare_split(src, tmp_path / "run", val_fraction=0, test_fraction=0)
    assert not (tmp_path / "run" / "split.csv").exists()
    only_train = resolve_source(tree(tmp_path / "t", splits=("train",)))
    with pytest.raises(TransferError, match="no val or test images"):
        prepare_split(only_train, tmp_path / "run2")


def test_manifest_with_duplicate_rows_is_refused(tmp_path):
    tree(tmp_path / "imgs", splits=("x",))
    rows = [(f"imgs/x/{c}/{i}.png", c) for c in ("red", "blue") for i in range(3)]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows + rows[:2], columns=["path", "label"]).to_csv(manifest, index=False)
    with pytest.raises(TransferError, match="lists 2 image"):
        resolve_source(manifest)


def test_csv_manifest(tmp_path):
    tree(tmp_path / "imgs", splits=("x",))
    rows = [(f"imgs/x/{c}/{i}.png", c) for c in ("red", "blue") for i in range(3)]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(manifest, index=False)
    table = resolve_source(manifest).table
    assert all((tmp_path / "imgs").as_posix() in p for p in table["path"])
    assert table["split"].isna().all()
    pd.DataFrame(rows, columns=["file", "label"]).to_csv(manifest, index=False)
    with pytest.raises(TransferError, match=r"lacks the column\(s\) \['path'\]"):
        resolve_source(manifest)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: (tree(r), (r / "train" / "green").mkdir(), (r / "val" / "green").mkdir()), "is empty"),
        (lambda r: tree(r, classes=("red",)), "single class"),
        (lambda r: (tree(r, splits=("train",)), tree(r, splits=("val",), classes=("red", "green"))),
         "differ from those of"),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    root = tmp_path / "d"
    make(root)
    with pytest.raises(TransferError, match=message) as info:
        resolve_source(root)
    assert "\n" not in str(info.value)


def test_unknown_source():
    with pytest.raises(TransferError, match="not a folder, a .csv manifest or a built-in"):
        resolve_source("no/such/place")


def test_digits_builtin(keras_cache):
    table = resolve_source("digits").table
    assert len(table) == 1797 and table["label"].nunique() == 10
    img = Image.open(table["path"].iloc[0])
    assert img.size == (8, 8)


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_the_debian_files(tmp_path, keras_cache, monkeypatch):
    folder = tmp_path / "fm"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", folder)
    table = resolve_source("fashion-mnist").table
    assert table.groupby("split").size().to_dict() == {"test": 10, "train": 20}
    assert set(table["label"]) == set(sources.FASHION_MNIST_CLASSES)


def test_fashion_mnist_missing_names_both_ways(tmp_path, keras_cache, monkeypatch):
    import keras

    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")

    def offline():
        raise Exception("URL fetch failure on https://example/train-labels: None -- no network")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(TransferError, match="apt-get install dataset-fashion-mnist"):
        resolve_source("fashion-mnist")


def test_load_image_respects_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path, 16, resize="plain")
    top, bottom = out[2, 8], out[13, 8]
    assert top[0] > 200 and top[2] < 60  # after rotating: red on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode,colour", [("L", 128), ("P", 5), ("RGBA", (10, 200, 10, 255)), ("CMYK", (0, 0, 0, 0))])
def test_load_image_makes_rgb(tmp_path, mode, colour):
    path = solid_image(tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}", colour, mode=mode)
    out = load_image(path, 12, resize="crop")
    assert out.shape == (12, 12, 3) and out.dtype == np.float32


def test_atomic_files_get_the_usual_mode(tmp_path):
    import os

    from transfer.runtime import write_text_atomic

    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "x.json", "{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("name", "pixels", "expected"), [
    ("16-bit.png", np.full((8, 8), 32896, np.uint16), 128),  # half of 65535: mid-grey, not white
    ("16-bit-white.png", np.full((8, 8), 65535, np.uint16), 255),
    ("16-bit.tif", np.full((8, 8), 16448, np.uint16), 64),
    ("float.tif", np.full((8, 8), 0.5, np.float32), 128),  # floats in [0, 1]
    ("float-wide.tif", np.tile(np.linspace(-1000.0, 1000.0, 8, dtype=np.float32), (8, 1)), None),  # stretched
])
def test_high_bit_depth_images_keep_their_grey_levels(tmp_path, name, pixels, expected):
    from PIL import Image

    from transfer.data import decode_image

    Image.fromarray(pixels).save(tmp_path / name)
    out = decode_image(tmp_path / name, 8)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    if expected is None:
        assert out[:, 0].max() == 0 and out[:, -1].min() == 255 and (np.diff(out[0, :, 0].astype(int)) > 0).all()
    else:
        assert np.abs(out.astype(int) - expected).max() <= 1


def test_training_batches_decode_once_and_shuffle_as_without_keeping_them(tmp_path, monkeypatch):
    """Decoded images kept in memory across epochs give the batches, order and skip list decoding each epoch does."""
    from transfer.data import ImageOptions, training_batches
    from transfer.data import _images as images

    paths = [solid_image(tmp_path / f"{i}.png", (i * 20, 0, 0)) for i in range(9)]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths.insert(4, tmp_path / "broken.png")
    labels = list(range(len(paths)))
    opts = ImageOptions(image_size=8, batch_size=4)

    decodes = []
    real_decode = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda *a: decodes.append(a[0]) or real_decode(*a))

    def epochs():
        skipped = {}
        decodes.clear()
        ds = training_batches(paths, labels, opts, lambda x: x, skipped, shuffle=True, seed=3)
        return [np.concatenate([y.numpy() for _, y in ds]) for _ in range(2)], skipped, len(decodes)

    kept, kept_skipped, kept_decodes = epochs()
    monkeypatch.setattr(images, "DECODED_CACHE_BYTES", 0)
    decoded, decoded_skipped, decoded_decodes = epochs()
    assert (kept_decodes, decoded_decodes) == (len(paths), 2 * len(paths))
    assert [e.tolist() for e in kept] == [e.tolist() for e in decoded]
    assert kept[0].tolist() != kept[1].tolist()  # reshuffled each epoch
    assert sorted(kept[0].tolist()) == [i for i in labels if i != 4]
    assert list(kept_skipped) == list(decoded_skipped) == [str(tmp_path / "broken.png")]
