"""Small file helpers: the Keras cache directory and atomic writes (a file is whole or absent)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from transfer.errors import TransferError


def keras_home() -> Path:
    """The Keras cache directory, resolved the way Keras resolves it at its import (``KERAS_HOME``, else
    ``~/.keras``, else ``/tmp/.keras`` where home is not writable), without importing Keras."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"
    return Path(base) / ".keras"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


TEMP_PREFIX = ".tmp-"  # .tmp-PID-NAME...: a file being written; the next run removes those of dead processes
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # no space, quota reached, file too large: all "full"


def temp_owner(name: str) -> int | None:
    """The pid of the process writing the temporary file ``name`` (see :func:`atomic_path`), else None."""
    if not name.startswith(TEMP_PREFIX):
        return None
    pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


class DiskFullError(TransferError):
    """The disk filled up while writing ``path``; ``needed`` bytes at least were needed."""

    def __init__(self, message: str, path, needed: int | None):
        super().__init__(message)
        self.path, self.needed = Path(path), needed


def disk_full(folder, path, needed: int | None = None) -> DiskFullError:
    """The one-line error for a full disk: the folder, what was being written, the space needed and free.

    Returns a :class:`DiskFullError` to raise.
    """
    folder = Path(folder)
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        free = None
    need = f"it needed more than {_size(needed)}" if needed else "it needed more space"
    have = f", {_size(free)} free" if free is not None else ""
    return DiskFullError(f"No space left on the disk of {folder} while writing {Path(path).name} ({need}{have}): "
                         "free some space and run the same command again; what finished before is kept, and no "
                         "half-written file was left.", path, needed)


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None, needed: int = 0):
    """Yield a temporary path beside ``path``; move it into place on success.

    A crash or an exception leaves ``path`` as it was (absent or the old
    file) and removes the temporary file, so a half-written file is never
    read later as a valid one.  ``needed``: the file's expected size, if
    known, for the message when the disk fills up.

    Raises:
        TransferError: the disk filled up while writing (naming the folder and the space needed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-{path.name}.",
                               suffix=suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode any new file would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if e.errno in DISK_FULL:
            raise disk_full(path.parent, path, max(written, needed)) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text_atomic(path, text: str):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# File names need not be valid UTF-8 (a disk from an older system): Python holds their undecodable bytes as
# surrogates, and CSV files keep those bytes as they are, so that every path written is read back the same.
CSV_ERRORS = "surrogateescape"


class keeps_file_names(contextlib.ContextDecorator):  # noqa: N801 - used as a decorator, named like one
    """Within it (or the function it decorates), pandas keeps strings as Python objects.

    A file name that is not UTF-8 is a str with surrogates here (and written back as its own bytes); pandas 3
    keeps strings in Arrow, which holds UTF-8 only, whenever pyarrow is installed (Ray Data installs it): the
    public entry points that build tables of file names run with Python string storage, set for their call
    only, so that the caller's own pandas options are never changed.
    """

    def __enter__(self):
        import pandas as pd

        self._context = pd.option_context("mode.string_storage", "python")
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def write_csv(df, path) -> Path:
    """Write a DataFrame as CSV (no index), atomically; paths that are not valid UTF-8 keep their bytes."""
    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8", errors=CSV_ERRORS)
    return path


@keeps_file_names()
def read_csv(path, **options):
    """A CSV written by :func:`write_csv` (paths with bytes that are not UTF-8 come back as they were)."""
    import pandas as pd

    return pd.read_csv(path, encoding="utf-8", encoding_errors=CSV_ERRORS, **options)


def slug(value) -> str:
    """``value`` as a safe file or folder name (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_")
