"""``transfer export``: a run's chosen model as one file that takes images and returns class scores.

The exported model takes uint8 RGB images of any size, ``(n, h, w, 3)``, and
does inside what the run did outside: the resize (``plain`` or ``crop``, as
Keras's ``Resizing`` layer), the backbone's preprocessing (an affine map per
pixel, written as a fixed 1x1 convolution), the network, and for strategy 2
the scikit-learn classifier: a linear one (logistic regression, linear SVM)
and the MLP are folded, with their scaler, into Keras ``Dense`` layers, so the
file needs no scikit-learn.  kNN and the RBF SVM have no exact Keras
equivalent and are refused, saying so.

What the model is travels inside the file (``transfer.json``: classes, input
size, resize, preprocessing, backbone, what the outputs are, a hash of the
training images), read back by :func:`read_metadata` and
``transfer predict --model FILE``:

- ``keras``: a member of the ``.keras`` zip, beside Keras's own;
- ``savedmodel``: ``assets.extra/transfer.json`` in the folder (TF Serving's place for such files);
- ``onnx``: the model's ``metadata_props``;
- ``tflite``: a metadata buffer of the flatbuffer, as TFLite's own metadata is stored.
"""

from __future__ import annotations

import difflib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.runtime import keras_module, tensorflow
from transfer.serving._graph import NOT_FOLDABLE, Chosen, build_export_model

FORMATS = {"keras": ".keras", "savedmodel": "", "onnx": ".onnx", "tflite": ".tflite"}
METADATA = "transfer.json"


def _config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise TransferError(f"{folder} is not a transfer run folder (no readable config.json): give the --out folder "
                            "of compare, finetune, classify or scratch.") from None


def choose(run_dir, model: str | None = None, log=print) -> Chosen:
    """The model of ``run_dir`` to export: ``model`` if given, else the one the run recommends.

    A compare run's default is the model its verdict says to use (the most
    accurate exportable one when that is kNN or the RBF SVM); ``model`` may
    be a ``compare.csv`` model name, a sub-run folder (``scratch``,
    ``efficientnet_lite0/finetune-0.5``) or a classifier name.  A classify run
    takes a classifier name (default: its best); finetune and scratch runs have one model.

    Raises:
        TransferError: not a run folder, or no such model, listing the ones there are.
    """
    run = Path(run_dir)
    config = _config(run)
    command = config.get("command")
    if command == "compare":
        return _from_compare(run, config, model, log)
    if command == "classify":
        name = model or config["best_classifier"]
        if name not in config["classifiers"]:
            raise TransferError(f"{run} has no classifier {name!r}. Expected one of: "
                                f"{', '.join(config['classifiers'])}.")
        return Chosen(run, "features", f"{config['extract']['backbone']} features + {name}", config, name)
    if command in ("finetune", "scratch"):
        if model:
            raise TransferError(f"{run} is a {command} run with one model: drop --model {model}.")
        tuned = config.get("finetune", {})
        name = f"{tuned.get('backbone')} fine-tuned (freeze {tuned.get('freeze')})" if tuned else "scratch CNN"
        return Chosen(run, command, name, config)
    raise TransferError(f"{run} holds a {command!r} run, which has no model to export: give the --out folder of "
                        "compare, finetune, classify or scratch.")


def _from_compare(run: Path, config: dict, model: str | None, log=print) -> Chosen:
    if (config.get("protocol") or {}).get("name") == "kfold":
        return _from_cross_validation(run, config, model, log)
    if not (run / "compare.csv").exists():  # --repeats or --train-sizes: one comparison per sub-folder
        inner = sorted(p.parent.name for p in run.glob("*/compare.csv"))
        raise TransferError(f"{run} holds several comparisons ({', '.join(inner) or 'none finished'}): export from "
                            f"one of them, e.g. {run / (inner[0] if inner else 'repeat-1')}.")
    table = pd.read_csv(run / "compare.csv", keep_default_na=False)
    if model is None:
        row = _default_row(table, config.get("recommended_model") or table["model"].iloc[0], log)
    else:
        rows = table[(table["model"] == model) | (table["run_dir"] == model) | (table["classifier"] == model)
                     | (table["run_dir"].map(lambda d: Path(d).name) == model)]
        if len(rows) != 1:
            names = list(table["model"]) + [c for c in table["classifier"] if c] + sorted(set(table["run_dir"]))
            close = difflib.get_close_matches(model, names, n=3, cutoff=0.5)
            why = "matches several models" if len(rows) else "is not one of its models"
            raise TransferError(f"--model {model!r} {why} in {run / 'compare.csv'}"
                                + (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ".")
                                + " Give a model name, a classifier or a sub-run folder: "
                                + ", ".join(repr(m) for m in table["model"]) + ".")
        row = rows.iloc[0]
    folder = run / row["run_dir"]
    return Chosen(folder, row["strategy"], row["model"], _config(folder), row["classifier"] or None)


def _from_cross_validation(run: Path, config: dict, model: str | None, log=print) -> Chosen:
    """A k-fold comparison's model: the recommended strategy's choice refit on every image (see
    :mod:`transfer.comparison._refit`); a run without that refit (made before it existed): that strategy's model
    in the first fold, trained on the other folds' images."""
    folds = config["protocol"]["folds"]
    if model:
        raise TransferError(f"{run} was scored by {folds}-fold cross-validation, whose rows pool one model per fold: "
                            f"to export another model than the recommended one, name it in one fold, e.g. transfer "
                            f"export {run / 'fold-1'} --model {model}.")
    table = pd.read_csv(run / "compare.csv", keep_default_na=False)
    use = table.iloc[0]
    final = config.get("final") or {}
    if final.get("strategy", "features") == use["strategy"] and final.get("run_dir"):
        folder = run / final["run_dir"]
        return Chosen(folder, use["strategy"], final["model"], _config(folder), final.get("classifier"))
    fold = run / "fold-1"
    rows = pd.read_csv(fold / "compare.csv", keep_default_na=False)
    rows = rows[(rows["strategy"] == use["strategy"]) & (rows["role"] != "information")]
    log(f"{use['model']} is not refit on every image: exporting fold 1's, trained on the other folds' images "
        f"({(folds - 1) / folds:.0%} of them)")
    return _from_compare(fold, _config(fold), str(rows["model"].iloc[0]), log)


def _default_row(table: pd.DataFrame, recommended: str, log):
    """The verdict's model, or, when it has no Keras equivalent (kNN, RBF SVM), the one that would represent its
    strategy among those that have: chosen, like the verdict's, by selection score before the test images (a
    compare.csv without that column: its next row that exports)."""
    row = table[table["model"] == recommended].iloc[0]
    if row["classifier"] not in NOT_FOLDABLE:
        return row
    usable = table[~table["classifier"].isin(list(NOT_FOLDABLE))]
    if not len(usable):
        raise TransferError(f"the run recommends {recommended}, and none of its models can be exported: "
                            f"{NOT_FOLDABLE[row['classifier']]}. Run compare with another classifier or fine-tuning.")
    same = usable[usable["strategy"] == row["strategy"]]
    if len(same) and "selection_score" in same:
        from transfer.comparison import representative

        pick = representative(same.assign(selection_score=pd.to_numeric(same["selection_score"], errors="coerce")))
    else:
        pick = usable.iloc[0]
    log(f"the run recommends {recommended}, which cannot be exported ({NOT_FOLDABLE[row['classifier']]}): "
        f"exporting {pick['model']}, chosen as its strategy's models are, before the test images "
        "(--model chooses another)")
    return pick


# ---------------------------------------------------------------------------
# Building the Keras model.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Writing each format, with the metadata inside.
# ---------------------------------------------------------------------------


def _write_keras(model, meta, path: Path):
    model.save(path)
    with zipfile.ZipFile(path, "a") as z:  # Keras reads only its own members
        z.writestr(METADATA, json.dumps(meta, indent=2))


def _write_savedmodel(model, meta, path: Path):
    model.export(str(path), format="tf_saved_model", verbose=False)
    (path / "assets.extra").mkdir(exist_ok=True)
    (path / "assets.extra" / METADATA).write_text(json.dumps(meta, indent=2))


def _write_onnx(model, meta, path: Path):
    import warnings

    import onnx

    model(np.zeros((1, meta["image_size"], meta["image_size"], 3), np.uint8))  # Keras exports only a called model
    with warnings.catch_warnings():  # Keras's tf2onnx shim asks numpy for np.object
        warnings.simplefilter("ignore", FutureWarning)
        model.export(str(path), format="onnx", verbose=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA, json.dumps(meta)
    onnx.save(proto, str(path))


def _write_tflite(model, meta, path: Path):
    import tempfile

    tf = tensorflow()
    from tensorflow.lite.tools import flatbuffer_utils

    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        flat = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
    path.write_bytes(flat)
    tree = flatbuffer_utils.read_model(str(path))
    from tensorflow.lite.python import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA, len(tree.buffers) - 1
    tree.metadata = [*(tree.metadata or []), entry]
    flatbuffer_utils.write_model(tree, str(path))


WRITERS = {"keras": _write_keras, "savedmodel": _write_savedmodel, "onnx": _write_onnx, "tflite": _write_tflite}
NEEDS = {"onnx": ("tf2onnx", "onnx"), "savedmodel": (), "keras": (), "tflite": ()}


def check_format(fmt: str, out) -> Path:
    """Validate ``fmt`` and ``out`` before any model is built; returns ``out`` as a Path.

    Raises:
        TransferError: unknown format, a file name that does not suit it, or a missing optional package.
    """
    import importlib.util

    if fmt not in FORMATS:
        raise TransferError(f"format={fmt!r} is not valid. Expected one of: {', '.join(FORMATS)}.")
    out = Path(out).absolute()
    suffix = FORMATS[fmt]
    if suffix and out.suffix != suffix:
        raise TransferError(f"--out {out} does not end in {suffix}, which the {fmt} format needs: e.g. "
                            f"--out {out.parent / (out.stem + suffix)}.")
    if not suffix and out.suffix and out.suffix in FORMATS.values():
        raise TransferError(f"--out {out} ends in {out.suffix}, but a savedmodel is a folder: give a folder name "
                            f"such as {out.with_suffix('')}-savedmodel.")
    _check_replaceable(out, fmt)
    missing = [m for m in NEEDS[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise TransferError(f"the {fmt} format needs {', '.join(missing)}: pip install -e '.[onnx]'.")
    return out


def _check_replaceable(out: Path, fmt: str):
    """Only an earlier export of the same format may be replaced: never a folder or file of the user's."""
    if not out.exists() and not out.is_symlink():
        return
    try:
        earlier = format_of(out) == fmt and read_metadata(out).get("transfer_export") is not None
    except (TransferError, ValueError):
        earlier = False
    if not earlier:
        what = "a folder" if out.is_dir() else "a file"
        raise TransferError(f"--out {out} is {what} that `transfer export` did not write as {fmt}: it is kept; "
                            "give a new path (an earlier export of the same format is replaced).")


def export_model(run_dir, out, *, model: str | None = None, fmt: str = "keras", log=print) -> dict:
    """Export the chosen model of a run (see :func:`choose`) as one file (a folder for ``savedmodel``).

    The file is written beside ``out`` and moved into place when complete: a
    failure leaves any earlier ``out`` as it was.

    Args:
        run_dir: a compare, finetune, classify or scratch run folder.
        out: the file to write (``.keras``, ``.onnx``, ``.tflite``; a folder for ``savedmodel``).
        model: which model (default: the run's recommended or best one).
        fmt: ``keras``, ``savedmodel``, ``onnx`` or ``tflite``.

    Returns:
        The metadata written into the file.

    Raises:
        TransferError: bad arguments, a model that cannot be exported (saying why), or a run without its model.
    """
    out = check_format(fmt, out)
    chosen = choose(run_dir, model, log)
    keras_model, meta = build_export_model(chosen, antialias=fmt in ("keras", "savedmodel"))
    meta = {**meta, "format": fmt}
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")  # Keras and ONNX go by the suffix
    _remove(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        WRITERS[fmt](keras_model, meta, tmp)
        _remove(out)
        tmp.rename(out)
    finally:
        _remove(tmp)
    log(f"exported {chosen.name} from {chosen.run_dir} as {fmt}: {out}")
    return meta


def _remove(path: Path):
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ---------------------------------------------------------------------------
# Reading an exported file back.
# ---------------------------------------------------------------------------


def format_of(path) -> str:
    """The export format of ``path``, from its name (a folder is a SavedModel)."""
    path = Path(path)
    if path.is_dir():
        return "savedmodel"
    for fmt, suffix in FORMATS.items():
        if suffix and path.suffix == suffix:
            return fmt
    raise TransferError(f"{path} is not an exported model: expected a .keras, .onnx or .tflite file or a SavedModel "
                        "folder, as `transfer export` writes.")


def read_metadata(path) -> dict:
    """The ``transfer.json`` that :func:`export_model` wrote into ``path``.

    Raises:
        TransferError: the file is missing, unreadable, or was not written by ``transfer export``.
    """
    path = Path(path)
    if not path.exists():
        raise TransferError(f"{path} does not exist: give a file that `transfer export` wrote.")
    fmt = format_of(path)
    try:
        text = _metadata_text(path, fmt)
    except Exception as e:  # noqa: BLE001 - zip, protobuf and flatbuffer errors all mean "not our file"
        raise TransferError(f"{path} cannot be read as a {fmt} model ({type(e).__name__}): export it again.") from None
    if text is None:
        raise TransferError(f"{path} has no {METADATA} (classes, input size...): it was not written by "
                            "`transfer export`; export the run's model with it.")
    return json.loads(text)


def _metadata_text(path: Path, fmt: str) -> str | None:
    if fmt == "keras":
        with zipfile.ZipFile(path) as z:
            return z.read(METADATA).decode() if METADATA in z.namelist() else None
    if fmt == "savedmodel":
        file = path / "assets.extra" / METADATA
        return file.read_text() if file.exists() else None
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return props.get(METADATA)
    from tensorflow.lite.tools import flatbuffer_utils

    tree = flatbuffer_utils.read_model(str(path))
    for entry in tree.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == METADATA:
            return bytes(tree.buffers[entry.buffer].data).decode()
    return None


def load_exported(path):
    """A function ``uint8 images (n, h, w, 3) -> scores (n, classes)`` running the exported model at ``path``,
    and its metadata: ``(function, metadata)``."""
    path = Path(path)
    meta = read_metadata(path)
    fmt = format_of(path)
    if fmt == "keras":
        keras = keras_module()

        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        return (lambda x: np.asarray(model.predict_on_batch(x), np.float32)), meta
    if fmt == "savedmodel":
        tf = tensorflow()

        loaded = tf.saved_model.load(str(path))  # held by the closure: its variables die with it
        return (lambda x: np.asarray(loaded.serve(tf.constant(x)), np.float32)), meta
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda x: np.asarray(session.run(None, {name: x})[0], np.float32)), meta
    import warnings

    tf = tensorflow()

    with warnings.catch_warnings():  # its deprecation note points at a package (ai-edge-litert) not installed here
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))

    def run(x):
        entry = interpreter.get_input_details()[0]
        if tuple(entry["shape"]) != x.shape:
            interpreter.resize_tensor_input(entry["index"], x.shape)
            interpreter.allocate_tensors()
        interpreter.set_tensor(entry["index"], x)
        interpreter.invoke()
        return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), np.float32)

    interpreter.allocate_tensors()
    return run, meta
