"""Whether TensorFlow runs its oneDNN kernels on this CPU: measured once per machine, then set before import.

TensorFlow's x86 builds turn their oneDNN (MKL) kernels on by default only on
CPUs with AVX-512 VNNI, AVX-512 BF16 or AMX; elsewhere they stay off, and the
setting (``TF_ENABLE_ONEDNN_OPTS``) is read once, when TensorFlow is imported.
On a 2-core AMD EPYC without AVX-512 they made a fine-tuning step of
EfficientNet-Lite0 1.4x and its forward pass 1.3-2x faster (README, "How long
compare takes").  Rather than assume either way, :func:`measure` times Lite0's
forward pass in two fresh processes, one with the kernels on and one with
them off, in turns (this host's speed drifts over minutes, not between two
passes a second apart); the faster is kept per CPU, core count and
TensorFlow version in ``~/.keras/transfer/onednn.json``.
:func:`apply` sets the kept answer before TensorFlow's first import; a
``TF_ENABLE_ONEDNN_OPTS`` the user set is left as it is.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from transfer.fileio import keras_home, write_text_atomic

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
ROUNDS = 4  # timed turns of each setting; the fastest of each is compared
STARTUP_SECONDS = 120  # a child that has not built its model by then is given up on

# The child: Lite0's forward pass (random weights, 224 px, a batch of 16); after one traced pass, one timed pass
# per line read, its seconds written back. A forward pass, not a training step: its trace takes seconds where a
# training step's takes tens of them, and here both moved the same way (README, "How long compare takes").
_CHILD = """
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
from transfer.backbones import build_backbone
model = build_backbone("efficientnet_lite0", weights=None, image_size=224, pooling="avg")
x = np.random.default_rng(0).uniform(-1, 1, (16, 224, 224, 3)).astype("float32")
model.predict_on_batch(x)
print("ready", flush=True)
for _ in sys.stdin:
    start = time.perf_counter()
    model.predict_on_batch(x)
    print(time.perf_counter() - start, flush=True)
"""


def record_path() -> Path:
    """Where the measured answers are kept."""
    return keras_home() / "transfer" / "onednn.json"


def machine_key() -> str:
    """This CPU, the cores this process may use and the TensorFlow version: what the answer depends on."""
    import importlib.metadata as md

    from transfer.machine import cores, cpu_name

    try:
        version = md.version("tensorflow")
    except md.PackageNotFoundError:
        version = "none"
    return f"{cpu_name()} x{cores()} | tensorflow {version}"


def _known() -> dict:
    try:
        return json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}


def _line(child, deadline: float) -> str:
    """The child's next line, or an error when it ends or says nothing before ``deadline``."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([child.stdout], [], [], left)[0]:
            raise TimeoutError("no answer in time")
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"it ended (exit status {child.wait()})")
        if line.strip():
            return line.strip()


def measure(rounds: int = ROUNDS) -> dict:
    """Seconds of the child's round with the kernels off and on, the fastest of ``rounds`` turns each.

    Returns:
        ``{"off_s": ..., "on_s": ..., "on": bool}``.

    Raises:
        RuntimeError, TimeoutError, OSError: a child that failed to start or to answer.
    """
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    children = {}
    try:
        for value in ("0", "1"):
            children[value] = subprocess.Popen(
                [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, env={**os.environ, VARIABLE: value, "PYTHONPATH": path})
        deadline = time.monotonic() + STARTUP_SECONDS
        for child in children.values():
            if _line(child, deadline) != "ready":
                raise RuntimeError("it did not build its model")
        best = {value: float("inf") for value in children}
        for _ in range(rounds):
            for value, child in children.items():  # in turns: both see the same minutes of this host
                child.stdin.write("go\n")
                child.stdin.flush()
                best[value] = min(best[value], float(_line(child, time.monotonic() + STARTUP_SECONDS)))
    finally:
        for child in children.values():
            child.kill()
            child.wait()
    return {"off_s": round(best["0"], 4), "on_s": round(best["1"], 4), "on": best["1"] < best["0"]}


def choice(log=print, measure_if_unknown: bool = True) -> str | None:
    """``"1"`` (on) or ``"0"`` (off) for this machine; measured and kept at its first use here.

    None when it is not known and is not to be measured, or the measurement failed (TensorFlow's own
    default then stands; the failure is said on ``log`` and not kept, so the next run tries again).
    """
    key = machine_key()
    known = _known()
    if key not in known and measure_if_unknown:
        log(f"TensorFlow: timing its oneDNN kernels on and off on this CPU, once (about 10 s); the answer is kept "
            f"in {record_path()}")
        try:
            known[key] = measure()
        except (OSError, RuntimeError, TimeoutError, ValueError) as e:
            log(f"TensorFlow: the oneDNN timing failed ({e}): TensorFlow's default stands")
            return None
        answer = known[key]
        log(f"TensorFlow: Lite0's forward pass took {answer['on_s']:.2f} s with oneDNN, "
            f"{answer['off_s']:.2f} s without: oneDNN {'on' if answer['on'] else 'off'}")
        try:
            write_text_atomic(record_path(), json.dumps(known, indent=1))
        except OSError:
            pass
    if key not in known:
        return None
    return "1" if known[key]["on"] else "0"


def apply(log=print, measure_if_unknown: bool = True) -> str | None:
    """Set ``TF_ENABLE_ONEDNN_OPTS`` to this machine's answer before TensorFlow is imported.

    Does nothing when TensorFlow is already imported (the setting is read at import) or the variable is set
    (the user's choice). Returns the value in effect for the next import, None for TensorFlow's default.
    """
    if "tensorflow" in sys.modules or VARIABLE in os.environ:
        return os.environ.get(VARIABLE)
    value = choice(log, measure_if_unknown)
    if value is not None:
        os.environ[VARIABLE] = value
    return value
