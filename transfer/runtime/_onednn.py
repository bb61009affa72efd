"""Whether TensorFlow runs its oneDNN kernels on this CPU: on for x86-64, by a rule every measurement gave.

TensorFlow's x86 builds turn their oneDNN (MKL) kernels on by default only on
CPUs with AVX-512 VNNI, AVX-512 BF16 or AMX; elsewhere they stay off, and the
setting (``TF_ENABLE_ONEDNN_OPTS``) is read once, when TensorFlow is imported.
:func:`measure` times Lite0's forward pass in two fresh processes, one with
the kernels on and one with them off, in turns (this host's speed drifts over
minutes, not between two passes a second apart).  It was measured at every
first use until it always gave the same answer, on: a 2-core AMD EPYC
without AVX-512 (a fine-tuning step 1.4x, the forward pass 1.3-2x faster
with oneDNN) and a 2-core AMD EPYC with AVX-512 (forward pass 0.25 s against
0.37 s, 1.5x).  A measurement costs about 10 s of a first run, so the rule
stands in its place: on for x86-64, TensorFlow's own default elsewhere (ARM
builds choose their own kernels); ``python bench/onednn.py`` measures a new
machine.  :func:`apply` sets it before TensorFlow's first import; a
``TF_ENABLE_ONEDNN_OPTS`` the user set is left as it is.
"""

from __future__ import annotations

import os
import platform
import select
import subprocess
import sys
import time
from pathlib import Path

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
ROUNDS = 4  # timed turns of each setting; the fastest of each is compared
STARTUP_SECONDS = 120  # a child that has not built its model by then is given up on

# The child: Lite0's forward pass (random weights, 224 px, a batch of 16); after one traced pass, one timed pass
# per line read, its seconds written back. A forward pass, not a training step: its trace takes seconds where a
# training step's takes tens of them, and here both moved the same way (the docs, "How long compare takes").
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
    package_root = str(Path(__file__).resolve().parents[2])
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


def choice() -> str | None:
    """``"1"`` (on) on x86-64; None elsewhere: TensorFlow's own default stands."""
    return "1" if platform.machine().lower() in ("x86_64", "amd64") else None


def apply() -> str | None:
    """Set ``TF_ENABLE_ONEDNN_OPTS`` to :func:`choice` before TensorFlow is imported.

    Does nothing when TensorFlow is already imported (the setting is read at import) or the variable is set
    (the user's choice). Returns the value in effect for the next import, None for TensorFlow's default.
    """
    if "tensorflow" in sys.modules or VARIABLE in os.environ:
        return os.environ.get(VARIABLE)
    value = choice()
    if value is not None:
        os.environ[VARIABLE] = value
    return value
