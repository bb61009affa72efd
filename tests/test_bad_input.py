"""Odd and hostile input: each kind used correctly (pixels checked), skipped and listed with its reason, or refused
with a one-line error; crafted model files refused without running their payload.

The docs' page "Refused, skipped, guaranteed" (docs/guarantees.md) points here.
"""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from tests.conftest import colour_folder
from transfer.data import ImageError, decode_image, unreadable
from transfer.data._sources import opens_as_image

RED, BLUE = (200, 30, 30), (30, 30, 200)


def _save(img, path, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **options)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Files used correctly: the decoded pixels are checked.
# ---------------------------------------------------------------------------------------------------------------


def _cmyk(path):
    return _save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), path.with_suffix(".jpg"), quality=100)  # red


def _rgba(path):
    img = Image.new("RGBA", (20, 20), (*RED, 255))
    return _save(img, path.with_suffix(".png"))


def _palette_gif(path):
    return _save(Image.new("RGB", (20, 20), RED).convert("P"), path.with_suffix(".gif"))


def _animated_gif(path):
    frames = [Image.new("RGB", (20, 20), c).convert("P") for c in (RED, BLUE)]
    return _save(frames[0], path.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=50)


def _grayscale(path):
    return _save(Image.new("L", (20, 20), 90), path.with_suffix(".png"))


def _one_pixel(path):
    return _save(Image.new("RGB", (1, 1), RED), path.with_suffix(".png"))


def _huge_aspect(path):  # 3000 x 2: a line of pixels, red on the left two thirds
    pixels = np.zeros((2, 3000, 3), np.uint8)
    pixels[:, :2000] = RED
    pixels[:, 2000:] = BLUE
    return _save(Image.fromarray(pixels), path.with_suffix(".png"))


def _png_named_jpg(path):
    return _save(Image.new("RGB", (20, 20), RED), path.with_suffix(".jpg"), format="PNG")


def _exif_rotated(path):
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # left red, right blue; displayed rotated 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(img, path.with_suffix(".jpg"), exif=exif, quality=95)


def _sixteen_bit(path):
    return _save(Image.fromarray(np.full((20, 20), 51400, np.uint16)), path.with_suffix(".png"))  # 200 of 255


def _float_tiff(path):
    return _save(Image.fromarray(np.full((20, 20), 0.2, np.float32)), path.with_suffix(".tif"))  # 51 of 255


def _close(a, b, tol=12):
    return np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= tol


USED = {
    "cmyk jpeg": (_cmyk, "crop", lambda x: _close(x[8, 8], (255, 0, 0))),  # no cyan, full magenta and yellow
    "rgba png": (_rgba, "crop", lambda x: _close(x[8, 8], RED)),
    "palette gif": (_palette_gif, "crop", lambda x: _close(x[8, 8], RED, 20)),
    "animated gif (first frame)": (_animated_gif, "crop", lambda x: _close(x[8, 8], RED, 20)),
    "grayscale": (_grayscale, "crop", lambda x: _close(x[8, 8], (90, 90, 90))),
    "1x1 image": (_one_pixel, "crop", lambda x: _close(x, np.broadcast_to(RED, x.shape))),
    "3000x2 image, plain": (_huge_aspect, "plain", lambda x: _close(x[8, 2], RED) and _close(x[8, 14], BLUE)),
    "3000x2 image, crop": (_huge_aspect, "crop", lambda x: _close(x[8, 8], RED)),  # the centre of the line
    "png named .jpg": (_png_named_jpg, "crop", lambda x: _close(x[8, 8], RED)),
    "exif rotated": (_exif_rotated, "plain", lambda x: _close(x[2, 8], RED, 40) and _close(x[13, 8], BLUE, 40)),
    "16-bit png": (_sixteen_bit, "crop", lambda x: _close(x[8, 8], (200, 200, 200), 1)),
    "32-bit float tiff": (_float_tiff, "crop", lambda x: _close(x[8, 8], (51, 51, 51), 1)),
}


@pytest.mark.parametrize("kind", list(USED))
def test_odd_images_decode_to_the_right_pixels(tmp_path, kind):
    make, resize, check = USED[kind]
    x = decode_image(make(tmp_path / "img"), 16, resize)
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8
    assert check(x), x[8, 8]


# ---------------------------------------------------------------------------------------------------------------
# Files skipped and listed with a reason.
# ---------------------------------------------------------------------------------------------------------------


def _empty(path):
    path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _text_named_jpg(path):
    path = path.with_suffix(".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not an image\n")
    return path


def _truncated_jpeg(path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = path.with_suffix(".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return path


def _bomb(path):
    # A 1-bit PNG of 30,000 x 30,000 pixels: a few kB on disk, 2.7 GB as RGB. Pillow refuses it above twice its
    # MAX_IMAGE_PIXELS (an error) and warns above it (made an error too).
    img = Image.new("1", (30_000, 30_000))
    return _save(img, path.with_suffix(".png"), optimize=True)


def _zero_size(path):
    """A PNG whose header declares 0 x 0 pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def _broken_link(path):
    path = path.with_suffix(".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path.parent / "gone.jpg", path)
    return path


SKIPPED = {
    "zero-length file": (_empty, "empty file (0 bytes)"),
    "text named .jpg": (_text_named_jpg, "not an image"),
    "truncated jpeg": (_truncated_jpeg, "unreadable image"),
    "decompression bomb": (_bomb, "unreadable image"),
    "0x0 image": (_zero_size, "not an image"),
    "broken symbolic link": (_broken_link, "broken symbolic link"),
}


@pytest.mark.parametrize("kind", list(SKIPPED))
def test_unusable_files_give_their_reason(tmp_path, kind):
    make, reason = SKIPPED[kind]
    with pytest.raises(ImageError) as e:
        decode_image(make(tmp_path / "img"), 16)
    assert str(e.value).startswith(reason) and "\n" not in str(e.value)


def test_a_salted_data_folder_uses_every_odd_image_and_lists_every_bad_file(tmp_path):
    """One classify run over two classes plus one file of every kind above, names with spaces, non-ASCII and
    non-UTF-8 bytes included: the usable ones are trained and scored on, the others listed with their reason."""
    data = colour_folder(tmp_path / "data", n=10, splits=("",))
    used = {kind: make(data / "red" / f"odd {i}") for i, (kind, (make, _, _)) in enumerate(USED.items())
            if not kind.startswith("3000x2 image, plain")}
    used["non-ascii name"] = _save(Image.new("RGB", (20, 20), RED), data / "red" / "café ☕ 漢字.png")
    used["non-utf-8 name"] = _save(Image.new("RGB", (20, 20), RED),
                                   data / "red" / os.fsdecode(b"latin-1 caf\xe9.png"))
    bad = {kind: make(data / "blue" / f"bad {i}") for i, (kind, (make, _)) in enumerate(SKIPPED.items())}
    out = tmp_path / "run with spaces"
    result = CliRunner().invoke(cli.main, ["classify", "--data", str(data), "--out", str(out), "-c", "logreg",
                                           "--image-size", "32", "--weights", "none", "--test-fraction", "0.3"])
    assert result.exit_code == 0, result.output
    from transfer.runtime import read_csv

    split = read_csv(out / "split.csv", dtype=str, keep_default_na=False)
    skipped = read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    assert set(split["path"]) >= {str(p) for p in [*used.values(), *bad.values()]}  # every name round-trips
    assert dict(zip(skipped["path"], skipped["reason"], strict=True)).keys() == {str(p) for p in bad.values()}
    reasons = dict(zip(skipped["path"], skipped["reason"], strict=True))
    for kind, path in bad.items():
        assert reasons[str(path)].startswith(SKIPPED[kind][1]), kind
    predictions = read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert not set(predictions["path"]) & {str(p) for p in bad.values()}
    assert "could not be read and were skipped" in result.output


def _special_files(folder):
    """A named pipe, a link to /dev/zero and macOS/hidden files, each with an image extension."""
    os.mkfifo(folder / "pipe.png")
    (folder / "zeros.jpg").symlink_to("/dev/zero")
    _save(Image.new("RGB", (20, 20), RED), folder / "._photo.png")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return {"pipe.png": "not a regular file (a named pipe)",
            "zeros.jpg": "not a regular file (a character device, through a symbolic link)",
            "._photo.png": "a macOS resource-fork file", ".DS_Store": "a hidden file"}


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs POSIX pipes")
def test_pipes_devices_and_resource_forks_are_listed_without_being_read(tmp_path):
    """Neither split.csv nor a blocked read: skipped.csv lists each file with its reason (reading a pipe would
    wait for a writer, /dev/zero would never end)."""
    data = colour_folder(tmp_path / "data", n=10, splits=("",))
    expected = _special_files(data / "red")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, ["classify", "--data", str(data), "--out", str(out), "-c", "logreg",
                                           "--image-size", "32", "--weights", "none", "--test-fraction", "0.3"])
    assert result.exit_code == 0, result.output
    split = pd.read_csv(out / "split.csv")
    skipped = pd.read_csv(out / "skipped.csv")
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in zip(skipped["path"], skipped["reason"], strict=True)}
    assert reasons.keys() == expected.keys() and not set(split["path"]) & set(skipped["path"])
    for name, reason in expected.items():
        assert reasons[name].startswith(reason), name
    assert len(split) == 20


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs POSIX pipes")
def test_predict_and_manifests_never_open_a_pipe(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _special_files(folder)
    _save(Image.new("RGB", (20, 20), RED), folder / "fine.png")
    assert not opens_as_image(folder / "pipe.png")
    with pytest.raises(ImageError, match="named pipe"):
        decode_image(folder / "pipe.png", 8)
    assert unreadable([folder / "pipe.png", folder / "zeros.jpg"]).keys() == {str(folder / "pipe.png"),
                                                                            str(folder / "zeros.jpg")}


def test_non_utf8_names_are_predicted_and_written_losslessly(tmp_path):
    folder = tmp_path / "photos"
    name = folder / os.fsdecode(b"old disk \xff\xfe.jpg")
    _save(Image.new("RGB", (20, 20), RED), name)
    output = tmp_path / "preds.csv"
    result = CliRunner().invoke(cli.main, ["predict", "--output", str(output), str(folder)])
    assert result.exit_code == 0, result.output
    assert os.fsencode(str(name)) in output.read_bytes()  # the name's own bytes, as on disk
    from transfer.runtime import read_csv

    assert read_csv(output)["path"].iloc[0] == str(name)


# ---------------------------------------------------------------------------------------------------------------
# Sources that are refused with one line, or read despite an odd encoding.
# ---------------------------------------------------------------------------------------------------------------


def _one_line_error(args):
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    return result.output


def test_a_class_folder_of_non_image_files_is_named(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("",))
    for i in range(6):
        (data / "notes" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (data / "notes" / f"{i}.txt").write_text("hello")
    out = tmp_path / "run"
    message = _one_line_error(["classify", "--data", str(data), "--out", str(out)])
    assert "notes holds no images (6 other file(s), e.g. 0.txt)" in message
    assert not out.exists()  # a failed run leaves no folder it made


def test_a_class_folder_that_is_a_symlink_loop_is_named(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("",))
    (data / "loop").mkdir()
    os.symlink(data / "loop", data / "loop" / "again")
    message = _one_line_error(["extract", "--data", str(data), "--out", str(tmp_path / "run")])
    assert "loop is empty" in message


def test_a_class_folder_that_is_a_symlink_is_followed(tmp_path):
    from transfer import resolve_source

    data = colour_folder(tmp_path / "data", n=4, splits=("",))
    os.rename(data / "blue", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", data / "blue")
    table = resolve_source(data).table
    assert (table["label"] == "blue").sum() == 4


def test_a_split_whose_images_are_all_unreadable_stops_before_training(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val"))
    for f in (data / "val").rglob("*.png"):
        f.write_bytes(b"")  # every val image empty
    out = tmp_path / "run"
    message = _one_line_error(["finetune", "--data", str(data), "--out", str(out), "--image-size", "32",
                               "--weights", "none", "--epochs", "1", "--head", "train", "--head-epochs", "1"])
    assert "None of the 12 files of the test split is a readable image" in message
    assert "empty file (0 bytes)" in message
    assert not (out / "train_state").exists()  # nothing trained
    assert len(pd.read_csv(out / "skipped.csv")) == 12  # the list the message points to


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "latin-1"])
def test_manifests_in_odd_encodings_are_read(tmp_path, encoding):
    from transfer import resolve_source

    data = colour_folder(tmp_path / "data", n=3, splits=("",))
    name = "é.png" if encoding != "latin-1" else os.fsdecode("é.png".encode("latin-1"))  # the disk's own bytes
    _save(Image.new("RGB", (8, 8), RED), data / "red" / name)
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    text = "path,label\n" + "\n".join(rows) + "\n"
    raw = os.fsencode(text) if encoding == "latin-1" else text.encode(encoding)
    (data / "manifest.csv").write_bytes(raw)
    table = resolve_source(data / "manifest.csv").table
    assert str(data / "red" / name) in set(table["path"]) and len(table) == 7
    assert all(os.path.exists(p) for p in table["path"])


@pytest.mark.parametrize(("content", "message"), [
    (b"", "Cannot read the manifest"),
    (b"file,class\na.png,x\n", "lacks the column(s) ['label', 'path']"),
    (b"path,label\na.png,x\nb.png,x\n", "fewer than two labels"),
    (b'path,label\n"a.png,x\n', "Cannot read the manifest"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "m.csv").write_bytes(content)
    assert message in _one_line_error(["extract", "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path / "r")])


# ---------------------------------------------------------------------------------------------------------------
# Run folders that cannot be written.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["/proc/transfer-run", "/proc/self/status/run"])
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, out, monkeypatch):
    data = colour_folder(tmp_path / "data", n=4, splits=("",))
    import transfer.data

    monkeypatch.setattr(transfer.data, "resolve_source", lambda *a: pytest.fail("work began"))
    message = _one_line_error(["classify", "--data", str(data), "--out", out])
    assert f"the run folder {out}" in message.lower()


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    data = colour_folder(tmp_path / "data", n=4, splits=("",))
    assert "Cannot create the run folder" in _one_line_error(["extract", "--data", str(data), "--out",
                                                              str(tmp_path / "file")])


def test_a_read_only_folder_is_refused(tmp_path, monkeypatch):
    import errno

    data = colour_folder(tmp_path / "data", n=4, splits=("",))
    (tmp_path / "ro").mkdir()
    real_open = open

    def read_only(path, *args, **kwargs):  # root ignores chmod: a read-only mount, as the kernel reports it
        if str(path).startswith(str(tmp_path / "ro")) and args and args[0][0] in "aw":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    message = _one_line_error(["extract", "--data", str(data), "--out", str(tmp_path / "ro")])
    assert "Cannot write to the run folder" in message and "Read-only file system" in message


# ---------------------------------------------------------------------------------------------------------------
# Crafted model files: refused, and their payload never runs.
# ---------------------------------------------------------------------------------------------------------------


def _payloads(marker):
    code = f"open({str(marker)!r}, 'w').write('ran')"
    return {
        "numpy runstring (exec)": ("numpy.testing._private.utils", "runstring", (code, {})),
        "builtins exec": ("builtins", "exec", (code,)),
        "builtins eval": ("builtins", "eval", (code,)),
        "os system": ("os", "system", (f"touch {marker}",)),
        "io open": ("io", "open", (str(marker), "w")),
        "subprocess call": ("subprocess", "call", (["touch", str(marker)],)),
    }


@pytest.fixture
def classify_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    data = colour_folder(tmp_path_factory.mktemp("data"), n=6, splits=("",))
    result = CliRunner().invoke(cli.main, ["classify", "--data", str(data), "--out", str(out), "-c", "logreg",
                                           "--image-size", "32"])
    assert result.exit_code == 0, result.output
    return out, data


def _craft_skops(genuine, path, module, name, args):
    """``genuine`` with its logistic regression's C replaced by a node that calls ``module.name(*args)``."""
    import skops.io as sio

    with zipfile.ZipFile(io.BytesIO(sio.dumps({"x": args}))) as z:
        args_node = json.loads(z.read("schema.json"))["content"]["x"]
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "schema.json":
                schema = json.loads(data)
                model = schema["content"]["content"]["steps"]["content"][-1]["content"][1]["content"]["content"]
                model["C"] = {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
                              "content": args_node}
                data = json.dumps(schema).encode()
            dst.writestr(item, data)
    return path


@pytest.mark.parametrize("payload", list(_payloads("m")))
def test_a_crafted_classifier_file_is_refused_and_runs_nothing(classify_run, tmp_path, payload):
    import skops.io as sio

    out, data = classify_run
    marker = tmp_path / "pwned"
    module, name, args = _payloads(marker)[payload]
    genuine = out / "classifiers" / "logreg.skops"
    crafted = _craft_skops(genuine, tmp_path / "crafted.skops", module, name, args)
    # The payload is real: loaded trusting every type it names, it runs.
    try:
        sio.load(crafted, trusted=sio.get_untrusted_types(file=crafted))
    except Exception:  # noqa: BLE001 - what the call returns is no valid C; the call itself happened
        pass
    assert marker.exists(), "the crafted payload does not run, so this test would prove nothing"
    marker.unlink()
    os.replace(crafted, genuine)
    message = _one_line_error(["predict", "--run", str(out), str(data / "red")])
    assert f"Refusing to load {genuine}: it holds {module}.{name}" in message
    assert not marker.exists()


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("payload", list(_payloads("m")))
@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_a_crafted_weights_file_is_refused_and_runs_nothing(tmp_path, payload, layout):
    import importlib

    from transfer.backbones._torchfile import LEGACY_MAGIC

    marker = tmp_path / "pwned"
    module, name, args = _payloads(marker)[payload]
    func = getattr(importlib.import_module(module), name)
    body = pickle.dumps({"stem.weight": _Reduce(func, args)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "legacy":
        with open(path, "wb") as f:
            for obj in (LEGACY_MAGIC, 1001, {}):
                pickle.dump(obj, f, protocol=2)
            f.write(body)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", body)
    pickle.loads(body)  # the payload is real: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    image = _save(Image.new("RGB", (20, 20), RED), tmp_path / "photo.png")
    message = _one_line_error(["predict", "--weights", str(path), str(image)])
    assert "Refusing to load" in message and f".{name}'" in message  # protocol 2 names some modules as Python 2 did
    assert not marker.exists()


@pytest.mark.parametrize(("size", "why"), [((50_000_000,), "needs more than the 1 values"),  # segfaulted before
                                           ((64,), "needs more than the 1 values")])  # read process memory before
def test_a_weights_file_that_lies_about_sizes_is_a_one_line_error(tmp_path, monkeypatch, size, why):
    from tests.conftest import write_tensor_pth

    path = tmp_path / "lying.pth"
    write_tensor_pth(path, monkeypatch, 0, size, (1,), [1.0])
    monkeypatch.undo()
    image = _save(Image.new("RGB", (20, 20), RED), tmp_path / "photo.png")
    message = _one_line_error(["predict", "--weights", str(path), str(image)])
    assert why in message


def test_a_truncated_or_crafted_keras_model_is_a_one_line_error(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("",))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, ["finetune", "--data", str(data), "--out", str(out), "--image-size", "32",
                                           "--epochs", "1", "--precision", "float32"])
    assert result.exit_code == 0, result.output
    model = out / "model.keras"
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    message = _one_line_error(["predict", "--run", str(out), str(data / "red")])
    assert f"{model} is not a model this run can load" in message
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(model, "w") as dst:
        for item in src.namelist():
            content = src.read(item)
            if item == "config.json":  # the whole model replaced by a call of os.system
                content = json.dumps({"module": "os", "class_name": "system", "config": f"touch {marker}",
                                      "registered_name": "system"}).encode()
            dst.writestr(item, content)
    message = _one_line_error(["predict", "--run", str(out), str(data / "red")])
    assert f"{model} is not a model this run can load" in message
    assert not marker.exists()
