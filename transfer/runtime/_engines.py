"""Inference engines: a frozen model run forward by TensorFlow, or by a runtime that measures faster here.

The model is exported once through Keras's own ``model.export(format="onnx")``
and kept under ``~/.keras/models/transfer/onnx/KEY.onnx``, KEY a hash of
everything that changes the model (what it is, its weights, its input size)
and of the library versions that make and run it.  Before its first use each
runtime's output is checked against TensorFlow on a batch; ``auto`` then
times every engine on that batch, once per machine, keeps the record beside
the file, and runs the fastest one that agrees.  A runtime that cannot be
had (not installed, an export or a check that fails) leaves the others,
TensorFlow last, saying why.

The runtimes are rows of :data:`RUNTIMES`: adding one is a row (how to
import it, how to load an ONNX file into a function of a batch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import time
import types
import warnings
from pathlib import Path

import numpy as np

from transfer.errors import TransferError
from transfer.runtime._fileio import atomic_path, keras_home, write_text_atomic

TOLERANCE = 1e-4  # the largest output difference allowed, relative to the largest output


def _onnxruntime_loader(module, path: Path):
    options = module.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initialisers are noise here
    # Threads that spin while waiting for work take the CPU the image decoders need between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = module.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino_loader(module, path: Path):
    import threading

    compiled = module.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    # A compiled model's call uses one implicit infer request, which refuses a second call while busy ("Infer
    # Request is busy"); tf.data runs a stateless map step in parallel (its map_parallelization), so stage 2's
    # frozen layers called it from two threads at once. One call at a time: OpenVINO uses every core in each.
    lock = threading.Lock()

    def predict(x):
        with lock:
            return compiled(x)[0]

    return predict


@dataclasses.dataclass(frozen=True)
class Runtime:
    """An engine that runs the ONNX export: its name, the module it needs, and how it loads a file."""

    name: str
    module: str
    load: callable  # (imported module, path) -> predict(batch) -> outputs
    install: str


RUNTIMES = {r.name: r for r in [
    Runtime("onnxruntime", "onnxruntime", _onnxruntime_loader, "pip install -e '.[onnx]'"),
    Runtime("openvino", "openvino", _openvino_loader, "pip install -e '.[openvino]'"),
]}
ENGINES = ("auto", "tensorflow", *RUNTIMES)


def check_engine(engine: str) -> str:
    """Validate an engine name.

    Raises:
        TransferError: not one of :data:`ENGINES`.
    """
    if engine not in ENGINES:
        raise TransferError(f"engine={engine!r} is not valid. Expected one of: {', '.join(ENGINES)}.")
    return engine


@dataclasses.dataclass
class ExportedModel:
    """An exported model run by a runtime, with what the prediction loop asks of a Keras model."""

    engine: str
    predict: callable
    path: Path

    def predict_on_batch(self, x) -> np.ndarray:
        return np.asarray(self.predict(np.ascontiguousarray(x, dtype=np.float32)))

    @property
    def output(self):
        import onnx

        dims = onnx.load(str(self.path), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
        return types.SimpleNamespace(shape=tuple(d.dim_value or None for d in dims))


def available_runtimes() -> dict:
    """The runtimes that import here, with their modules (the exporter, tf2onnx, is needed by all)."""
    from transfer.runtime._tensorflow import tensorflow

    tensorflow()  # tf2onnx imports TensorFlow: transfer starts it first
    found = {}
    for runtime in RUNTIMES.values():
        try:
            importlib.import_module("tf2onnx")
            found[runtime.name] = importlib.import_module(runtime.module)
        except ImportError:
            pass
    return found


def onednn_state() -> str:
    """Whether TensorFlow runs its oneDNN kernels, which changes its rate: the machine's timing is kept per state."""
    from transfer.runtime._onednn import VARIABLE

    return {"1": "oneDNN on", "0": "oneDNN off"}.get(os.environ.get(VARIABLE, ""), "oneDNN default")


def machine_rates() -> dict:
    """``{engine: images/s}`` as timed on this machine (its first model exported), {} before that."""
    from transfer.runtime._machine import remembered

    return remembered("engines").get(onednn_state(), {}).get("rates", {})


def model_key(identity: dict) -> str:
    """The cache key of an exported model: what it is, and the versions of what exports and runs it."""
    import importlib.metadata as md

    versions = {}
    for package in ("tensorflow", "keras", "tf2onnx", "onnx", *(r.module for r in RUNTIMES.values())):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    blob = json.dumps({"model": identity, "versions": versions}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# Timing rounds: the engines take turns, each keeping its best, so that the host's drift hits all alike; a round
# runs the batch until ROUND_SECONDS have passed (one call of a fast engine is noise). The rates differ by 1.7-5x
# between TensorFlow and a runtime on every model timed here (the docs, "What runs the CNN"), so short rounds choose
# as long ones did; timed once per machine, on the first model exported there.
ROUNDS = 3
ROUND_SECONDS = 0.2


def _rate(predict, batch: np.ndarray, seconds: float = ROUND_SECONDS) -> float:
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        predict(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


def _export(model, path: Path, batch: np.ndarray):
    if path.exists():
        return
    model.predict_on_batch(batch[:1])  # Keras exports only a model that has been called
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notes (numpy, protobuf)
        model.export(str(tmp), format="onnx", verbose=False)


def _check(model, path: Path, modules: dict, batch: np.ndarray) -> tuple[dict, dict]:
    """Export ``model`` to ``path`` (when not there) and check each runtime against TensorFlow on ``batch``.

    Returns:
        The export's record (seconds, each runtime's difference or error) and ``{engine: predict}`` of those
        that ran (TensorFlow included), each warmed up on the batch.
    """
    start = time.perf_counter()
    _export(model, path, batch)
    record = {"export_seconds": round(time.perf_counter() - start, 2), "difference": {}, "errors": {}}
    expected = np.asarray(model.predict_on_batch(batch), np.float32)
    scale = max(float(np.abs(expected).max()), 1e-12)
    runners = {"tensorflow": model.predict_on_batch}
    for name, module in modules.items():
        try:
            run = ExportedModel(name, RUNTIMES[name].load(module, path), path)
            record["difference"][name] = float(np.abs(run.predict_on_batch(batch) - expected).max()) / scale
            runners[name] = run.predict_on_batch
        except Exception as e:  # noqa: BLE001 - an op this runtime does not know: the others run the model
            record["errors"][name] = f"{type(e).__name__}: {str(e).strip()[:200]}"
    return record, runners


def _time(runners: dict, batch: np.ndarray, what: str) -> dict:
    """Images/s of each engine on ``batch``, kept as this machine's rates."""
    from transfer.runtime._machine import remember, remembered

    rates = dict.fromkeys(runners, 0.0)
    for _ in range(ROUNDS):  # in turns, not one engine after another: close engines were chosen by the drift
        for name, predict in runners.items():
            rates[name] = max(rates[name], _rate(predict, batch))
    rates = {k: round(v, 1) for k, v in rates.items()}
    known = remembered("engines")
    known[onednn_state()] = {"rates": rates, "model": what}
    remember("engines", known)
    return rates


def _record(path: Path) -> dict:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def _agrees(record: dict, name: str) -> bool:
    return record.get("difference", {}).get(name, float("inf")) <= TOLERANCE


def _choose(record: dict, engine: str, path: Path, modules: dict) -> tuple[str, str]:
    """``(engine, why)`` from a checked export's record; ``("", why)`` when it must be made or timed first."""
    agreeing = [name for name in modules if _agrees(record, name)] if path.exists() else []
    failed = [name for name in modules if name in record.get("errors", {}) or
              (name in record.get("difference", {}) and not _agrees(record, name))]
    if not agreeing and not (failed and len(failed) == len(modules)):
        return "", "no checked export yet"
    if engine != "auto":
        if engine in agreeing:
            return engine, "asked for"
        return "tensorflow", record.get("errors", {}).get(engine) or (
            f"its output differs from TensorFlow's by {record['difference'][engine]:.1e} of the largest "
            f"(more than {TOLERANCE:g})")
    if not agreeing:
        return "tensorflow", f"no runtime agrees with TensorFlow ({', '.join(failed)} checked)"
    timing = machine_rates() or record.get("rates", {})  # a store that could not be written: this check's
    if "tensorflow" not in timing or any(name not in timing for name in agreeing):
        return "", "not timed on this machine yet"
    fair = {name: timing[name] for name in ("tensorflow", *agreeing)}
    best = max(fair, key=fair.get)
    rates = ", ".join(f"{name} {rate:.0f}" for name, rate in sorted(fair.items(), key=lambda kv: -kv[1]))
    return best, f"images/s on this machine: {rates}"


def frozen_model(identity: dict, build, engine: str, sample, log=print):
    """The model ``build()`` makes, run by ``engine`` (``auto``: the fastest here that agrees, measured once).

    Args:
        identity: what the model is (name, weights, layer, input size...): the export's cache key.
        build: makes the Keras model (not called when a checked, faster export is cached).
        engine: one of :data:`ENGINES`.
        sample: makes a preprocessed batch, for the check and the timing.

    Returns:
        The Keras model, or an :class:`ExportedModel` with the same ``predict_on_batch``.

    Raises:
        TransferError: a runtime asked for by name that is not installed, or whose export fails its check.
    """
    check_engine(engine)
    if engine == "tensorflow":
        return build()
    modules = available_runtimes()
    if engine != "auto" and engine not in modules:
        raise TransferError(f"engine={engine!r} needs {RUNTIMES[engine].module} and tf2onnx installed: "
                            f"{RUNTIMES[engine].install}.")
    if not modules:
        return build()  # auto without any runtime installed: TensorFlow, as before
    path = keras_home() / "models" / "transfer" / "onnx" / f"{model_key(identity)}.onnx"
    record = _record(path)
    choice, why = _choose(record, engine, path, modules)
    model = None
    if not choice:
        model = build()
        record = _fresh_record(model, path, modules, sample(), log)
        choice, why = _choose(record, engine, path, modules)
        log(f"engine: {choice} ({why}; the model exported to ONNX and checked once, in {record['seconds']:.0f} s, "
            f"kept in {path.parent})")
    if choice != "tensorflow":
        return ExportedModel(choice, RUNTIMES[choice].load(modules[choice], path), path)
    if engine != "auto":
        raise TransferError(f"engine={engine!r} cannot run this model: {why}; use engine='tensorflow'.")
    return model if model is not None else build()


def _fresh_record(model, path: Path, modules: dict, batch: np.ndarray, log) -> dict:
    """Export and check once, kept beside the export (a failure too, with its reason); the engines are timed
    too when this machine has not timed them yet."""
    start = time.perf_counter()
    try:
        record, runners = _check(model, path, modules, batch)
        if any(name not in machine_rates() for name in runners):
            record["rates"] = _time(runners, batch, path.stem)
    except Exception as e:  # noqa: BLE001 - an op the exporter does not know: TensorFlow runs the model
        record = {"difference": {}, "errors": dict.fromkeys(modules, f"export failed: {type(e).__name__}: "
                                                                      f"{str(e).strip()[:200]}")}
        log(f"engine: the ONNX export failed ({type(e).__name__}): TensorFlow runs the model")
    record["seconds"] = round(time.perf_counter() - start, 1)
    try:
        write_text_atomic(path.with_suffix(".json"), json.dumps(record, indent=1))
    except OSError:
        pass
    return record
