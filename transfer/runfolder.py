"""Owning a run folder: writable before any work, one run at a time, reports published whole.

:func:`claim` wraps a whole command: it makes the folder (or finds it),
proves it can be written, and locks it against a second run on the same
folder.  The lock is an ``flock`` on ``.transfer-lock``: the kernel releases it
when its process dies, however it dies, so a killed run's folder is taken
over by the next run.  :func:`publishing` writes a set of reports into a
staging folder and moves them into place with ``config.json`` last, so a
failure (a full disk, a kill) leaves the previous reports whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from pathlib import Path

from transfer.errors import TransferError
from transfer.fileio import TEMP_PREFIX, DiskFullError, disk_full

LOCK_NAME = ".transfer-lock"
STAGING_PREFIX = ".staging-"
# What a run writes before it has anything worth keeping: a failed run that made the folder and left only
# these behind removes the folder again.
FIRST_FILES = {LOCK_NAME, "split.csv"}

_held: dict[Path, int] = {}  # folders this process holds, with how many nested claims


def _made_folders(out: Path) -> list[Path]:
    """Make ``out``; return the folders that did not exist before, outermost first."""
    missing = [p for p in [out, *out.parents] if not p.exists()][::-1]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TransferError(f"Cannot create the run folder {out}: {e.strerror or e}. Give --out a folder you "
                            "can write to.") from None
    if not out.is_dir():
        raise TransferError(f"The run folder {out} is not a folder: give --out a folder.")
    return missing


def _lock(out: Path, command: str, log):
    """Open and lock ``out/.transfer-lock``; returns the open file (the lock lives as long as it)."""
    path = out / LOCK_NAME
    try:
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
    except OSError as e:
        raise TransferError(f"Cannot write to the run folder {out}: {e.strerror or e}. Give --out a folder you "
                            "can write to.") from None
    try:
        import fcntl

        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no flock (Windows): no guard against a second run
        pass
    except BlockingIOError:
        f.seek(0)
        owner = _owner(f.read())
        f.close()
        raise TransferError(f"{out} is in use by another transfer run (pid {owner.get('pid', '?')}, "
                            f"`{owner.get('command', '?')}`, started {owner.get('started', '?')}): wait for it to "
                            "finish, or give this run another --out.") from None
    f.seek(0)
    before = _owner(f.read())
    if before.get("pid"):
        log(f"{out}: taking over from an earlier run that did not finish (pid {before['pid']}, "
            f"`{before.get('command', '?')}`); finished steps are reused")
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "command": command,
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
        f.close()
        if e.errno == errno.ENOSPC:
            raise disk_full(out, path) from None
        raise TransferError(f"Cannot write to the run folder {out}: {e.strerror or e}.") from None
    return f


def _owner(text: str) -> dict:
    try:
        owner = json.loads(text or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _release(f):
    with contextlib.suppress(OSError):
        f.seek(0)
        f.truncate()  # an empty lock file: the run ended on its own
    f.close()


def _leftovers(out: Path):
    """Remove what a killed run left half-written here: temporary files and staging folders."""
    for p in out.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.rglob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            p.unlink()


def _holds_results(out: Path) -> bool:
    return any(p.name not in FIRST_FILES for p in out.iterdir())


@contextlib.contextmanager
def claim(out, command: str, log=print):
    """Hold the run folder ``out`` for the duration of one run.

    Before any work: the folder is made, shown to be writable, and locked
    against another run (a lock left by a killed run is taken over, saying
    so); half-written leftovers of a killed run are removed.  If the run
    fails and this call made the folder, and nothing worth keeping was
    written (no features, checkpoints or reports), the folder is removed.
    Nested claims of the same folder in one process are allowed.

    Raises:
        TransferError: the folder cannot be made or written, or another run holds it.
    """
    out = Path(out).absolute()
    if out in _held:
        _held[out] += 1
        try:
            yield out
        finally:
            _held[out] -= 1
        return
    made = _made_folders(out)
    try:
        f = _lock(out, command, log)
    except BaseException:
        _remove_made(made)
        raise
    _held[out] = 1
    try:
        _leftovers(out)
        yield out
    except BaseException:
        if made and not _holds_results(out):
            _remove_made(made)
        raise
    finally:
        del _held[out]
        _release(f)


def _remove_made(made: list[Path]):
    if made:
        shutil.rmtree(made[0], ignore_errors=True)


@contextlib.contextmanager
def publishing(out):
    """A staging folder for a set of reports; on success they replace those in ``out``, ``config.json`` last.

    Write every file of the set under the yielded folder (sub-folders
    allowed).  A failure while writing (a full disk, an error) removes the
    staging folder and leaves ``out`` as it was.  Sub-folders listed in the
    set replace the old ones file by file; files of an old sub-folder that
    the new set does not have are removed (plots of models no longer run).

    Raises:
        TransferError: the disk filled up (naming the folder and the space the set needed).
    """
    out = Path(out)
    stage = out / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
    except (OSError, DiskFullError) as e:
        full = isinstance(e, DiskFullError) or e.errno == errno.ENOSPC
        if not full:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        staged = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
        shutil.rmtree(stage, ignore_errors=True)
        failed = e.path if isinstance(e, DiskFullError) else Path(e.filename or out)
        raise disk_full(out, failed, staged + (getattr(e, "needed", 0) or 0)) from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _move_into_place(stage, out)


def _move_into_place(stage: Path, out: Path):
    files = sorted(p.relative_to(stage) for p in stage.rglob("*") if p.is_file())
    last = [f for f in files if str(f) == "config.json"]
    # Without config.json the folder reads as unfinished until the new set is whole: a kill between the
    # moves below never leaves old settings beside new results.
    if last:
        (out / "config.json").unlink(missing_ok=True)
    for sub in {f.parts[0] for f in files if len(f.parts) > 1}:
        new = {f for f in files if f.parts[0] == sub}
        for old in (out / sub).rglob("*") if (out / sub).is_dir() else ():
            if old.is_file() and old.relative_to(out) not in new:
                old.unlink()
    for f in [f for f in files if f not in last] + last:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / f, out / f)
    shutil.rmtree(stage, ignore_errors=True)
