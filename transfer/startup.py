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
this machine's oneDNN setting (:mod:`transfer.onednn`), set just before the
import: ``import transfer`` installs :func:`prepare_tensorflow_import`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import subprocess
import sys

from transfer import onednn

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


class _TensorFlowStart(importlib.abc.MetaPathFinder):
    """At TensorFlow's first import: this machine's oneDNN setting first; then, when ``quiet``, the import with
    its start-up lines filtered and ``announce`` told what TensorFlow runs on."""

    def __init__(self):
        self.quiet, self.announce = False, None

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders locate it
        onednn.apply(log=self.announce or _to_stderr)
        spec = importlib.util.find_spec(name)
        if not self.quiet or spec is None or spec.loader is None:
            return spec
        original, announce = spec.loader.exec_module, self.announce

        def exec_module(module):
            import logging

            with _stderr_filtered():
                original(module)
            # TensorFlow's Python warnings for a CLI user are noise too: "tf.function retracing" after a few
            # predictions on other image counts (each fold of a cross-validation predicts its own).
            logging.getLogger("tensorflow").setLevel(logging.ERROR)
            if announce is not None:
                announce(device_line())

        spec.loader.exec_module = exec_module
        return spec


def _to_stderr(line: str):
    print(line, file=sys.stderr, flush=True)


def _finder() -> _TensorFlowStart | None:
    """The finder waiting for TensorFlow's first import (installed here if not yet); None once it is imported."""
    if "tensorflow" in sys.modules:
        return None
    for finder in sys.meta_path:
        if isinstance(finder, _TensorFlowStart):
            return finder
    finder = _TensorFlowStart()
    sys.meta_path.insert(0, finder)
    return finder


def prepare_tensorflow_import():
    """Set this machine's oneDNN setting (:mod:`transfer.onednn`) at TensorFlow's first import in this process,
    measuring it first if this machine has no answer yet."""
    _finder()


def quiet_tensorflow_import(announce=None):
    """Make the first import of TensorFlow in this process quiet; ``announce`` receives :func:`device_line`
    (and the lines of a oneDNN measurement, if one runs first).

    Does nothing when TensorFlow is already imported.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the log lines TensorFlow itself filters
    finder = _finder()
    if finder is not None:
        finder.quiet, finder.announce = True, announce
