"""TensorFlow's start-up, quietly: its C++ start-up lines dropped, one line of ours in their place.

Importing TensorFlow writes lines of its own to the process's stderr before
any Python setting can stop them (absl's "before InitializeLog" notice,
CUDA probing on machines without a GPU, oneDNN notes), twice per process
with some builds, and before a one-line error.  The command line installs
:func:`quiet_tensorflow_import` before anything imports TensorFlow: the
import then runs with its stderr (the file descriptor) through a filter that
drops lines of that kind and passes on any other line as it comes, and
``announce`` gets one line saying what the user needs: the TensorFlow
version and whether a GPU was found.

Whoever imports TensorFlow through this package (the CLI, the API) also gets
this machine's oneDNN setting (:mod:`transfer.runtime._onednn`), set just before the
import: ``import transfer`` installs :func:`prepare_tensorflow_import`.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading

from transfer.runtime import _onednn as onednn

# absl's notice, and log lines in absl's format ("I0000 00:00:1795.98 2578 cudart_stub.cc:31] ..."): info,
# warnings and errors of the start-up (CUDA, cuDNN and cuBLAS factories, oneDNN, TF-TRT); fatal ones are kept.
NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]"
                   r"|.*oneDNN custom operations are on|.*This TensorFlow binary is optimized to use")


# Run as a separate process, so that a line TensorFlow writes just before aborting its import (a CPU without the
# instructions it was built for) still reaches the user: the filter sees the end of its input when the process dies.
_FILTER = """import re, sys
noise = re.compile(sys.argv[1])
for raw in sys.stdin.buffer:
    line = raw.decode(errors="replace")
    if line.strip() and not noise.match(line):
        sys.stderr.write(line)
        sys.stderr.flush()
"""


@contextlib.contextmanager
def _stderr_filtered():
    """File descriptor 2 (where C++ code writes) through a filter that passes on every line but :data:`NOISE`."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        filtering = subprocess.Popen([sys.executable, "-S", "-E", "-c", _FILTER, NOISE.pattern],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=saved)
    except OSError:  # no second interpreter to be had: the lines stay as they are
        os.close(saved)
        yield
        return
    os.dup2(filtering.stdin.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        filtering.stdin.close()
        filtering.wait(timeout=30)


def device_line() -> str:
    """What TensorFlow will run on, in one line."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"TensorFlow {tf.__version__}: no GPU found, running on the CPU ({os.cpu_count()} cores)."
    names = ", ".join(g.name for g in gpus)
    return f"TensorFlow {tf.__version__}: {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} found ({names})."


class _Start:
    """Whether transfer has started TensorFlow in this process, and who hears its one line about it."""

    started = False
    announce = None  # a callable of one line, or None: said nowhere
    lock = threading.Lock()  # one start, whichever thread asks first


def announce_to(callback) -> None:
    """Say :func:`device_line` to ``callback`` when transfer starts TensorFlow (``None``: say nothing). The command
    line passes its own echo."""
    _Start.announce = callback


def _to_stderr(line: str):
    print(line, file=sys.stderr, flush=True)


def _start():
    """Import TensorFlow with this machine's oneDNN setting, its start-up lines filtered, its Python warnings
    for the user's attention only (a CLI user sees "tf.function retracing" as noise: each fold of a
    cross-validation predicts its own image counts)."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the log lines TensorFlow itself filters
    onednn.apply()
    with _stderr_filtered():
        import tensorflow  # noqa: F401 - imported here, with the settings above, for every later import
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if _Start.announce is not None:
        _Start.announce(device_line())


def _came_first():
    """TensorFlow was imported by someone else before transfer needed it: say once which setting could not apply."""
    wanted = onednn.choice()
    if wanted is not None and os.environ.get(onednn.VARIABLE, wanted) != wanted:
        state = "on" if wanted == "1" else "off"
        (_Start.announce or _to_stderr)(
            f"transfer: TensorFlow was imported before transfer started it, with its oneDNN kernels "
            f"{'off' if wanted == '1' else 'on'}; they are faster {state} here: set "
            f"{onednn.VARIABLE}={wanted} before importing TensorFlow to have it")


def tensorflow():
    """TensorFlow, started with transfer's settings the first time transfer needs it in this process.

    Every stage gets TensorFlow (and Keras, :func:`keras_module`) from here, so that ``import transfer`` does
    nothing and a user's own ``import tensorflow`` is left alone. If TensorFlow was imported before, it is
    used as it is, and a oneDNN setting that could not apply is said once.
    """
    with _Start.lock:
        if not _Start.started:
            if "tensorflow" in sys.modules:
                _came_first()
            else:
                _start()
            _Start.started = True  # not before: a failed import is tried (and fails the same way) again
    return sys.modules["tensorflow"]


def keras_module():
    """Keras, after :func:`tensorflow` (importing Keras imports TensorFlow: it must start with transfer's settings)."""
    tensorflow()
    import keras

    return keras
