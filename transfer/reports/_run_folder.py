"""Owning a run folder: writable before any work, one run at a time, reports published whole.

:func:`claim` wraps a whole command: it makes the folder (or finds it),
proves it can be written, and locks it against a second run on the same
folder.  The lock is an ``flock`` on ``.transfer-lock``: the kernel releases it
when its process dies, however it dies, so a killed run's folder is taken
over by the next run, which also clears what the killed one left half-done.
:func:`publishing` writes a set of reports into a staging folder and moves
them into place with ``config.json`` last: a failure while writing (a full
disk, an error, a kill) leaves the previous set whole, and a kill while the
finished set is being moved is completed by the next run on the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from transfer.errors import TransferError
from transfer.runtime import DISK_FULL, DiskFullError, disk_full, temp_owner, write_text_atomic

LOCK_NAME = ".transfer-lock"
STAGING_PREFIX = ".staging-"
COMPLETE = ".complete"  # in a staging folder: the list of its files, written once every one of them is whole
# What a run writes before it has anything worth keeping: a failed run that made the folder and left only
# these behind removes the folder again.
FIRST_FILES = {LOCK_NAME, "split.csv"}

_held: dict[Path, int] = {}  # folders this process holds, with how many nested claims


def _make(out: Path) -> list[Path]:
    """Make ``out`` and its missing parents one level at a time; return those this call made, outermost first.

    A folder another process makes at the same moment is not counted as ours, so it is never removed by us.
    """
    made = []
    for folder in [*reversed(out.parents), out]:
        if folder.is_dir():
            continue
        try:
            folder.mkdir()
            made.append(folder)
        except FileExistsError:
            pass
        except OSError as e:
            raise TransferError(f"Cannot create the run folder {out}: {e.strerror or e}. Give --out a folder you "
                                "can write to.") from None
    if not out.is_dir():
        raise TransferError(f"Cannot create the run folder {out}: it is a file. Give --out a folder.")
    return made


def _alive(pid) -> bool:
    """Whether process ``pid`` (a number, or its text) runs; False for anything that is no pid."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:  # it runs, as another user
        return True
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    return True


def _owner(f) -> dict:
    f.seek(0)
    try:
        owner = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _refuse(out: Path, owner: dict):
    # The file may still name a killed run for an instant after a new one took the lock: name a live pid only.
    pid = owner.get("pid") if _alive(owner.get("pid")) else "?"
    raise TransferError(f"{out} is in use by another transfer run (pid {pid}, `{owner.get('command', '?')}`, "
                        f"started {owner.get('started', '?')}): wait for it to finish, or give this run another "
                        "--out.")


def _lock(out: Path, command: str, log):
    """Lock ``out/.transfer-lock``; returns ``(open file, the earlier owner it names)``."""
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
        owner = _owner(f)
        f.close()
        _refuse(out, owner)
    except OSError as e:  # a file system without locks (some network mounts)
        log(f"warning: {out} cannot be locked ({e.strerror or e}): a second run on it at the same time would not "
            "be stopped")
    before = _owner(f)
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "command": command,
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
        f.close()
        if e.errno in DISK_FULL:
            raise disk_full(out, path) from None
        raise TransferError(f"Cannot write to the run folder {out}: {e.strerror or e}.") from None
    return f, before


def _release(f):
    with contextlib.suppress(OSError):
        f.seek(0)
        f.truncate()  # an empty lock file: the run ended on its own
    f.close()


def _leftovers(out: Path):
    """What a killed run left here: staging folders are finished (when whole) or removed, temporary files removed.

    Only files of processes that no longer run are touched.
    """
    for root, dirs, files in os.walk(out):
        for name in [d for d in dirs if d.startswith(STAGING_PREFIX)]:
            dirs.remove(name)
            stage = Path(root) / name
            if not _alive(name[len(STAGING_PREFIX):]):
                if (stage / COMPLETE).exists():
                    _move_into_place(stage, Path(root))
                shutil.rmtree(stage, ignore_errors=True)
        for name in files:
            pid = temp_owner(name)
            if pid is not None and not _alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))


def _holds_results(out: Path) -> bool:
    return any(p.is_file() and p.name not in FIRST_FILES for p in out.rglob("*"))


def _remove_made(out: Path, made: list[Path]):
    """Remove ``out`` if this run made it and it holds nothing worth keeping; then the empty parents it made."""
    if out not in made or _holds_results(out):
        return
    shutil.rmtree(out, ignore_errors=True)
    for folder in reversed(made[:-1]):
        try:
            folder.rmdir()  # fails, harmlessly, once a folder holds another run's files
        except OSError:
            break


@contextlib.contextmanager
def claim(out, command: str, log=print):
    """Hold the run folder ``out`` for the duration of one run.

    Before any work: the folder is made, shown to be writable, and locked
    against another run.  A lock left by a killed run is taken over, saying
    so, and what that run left half-done is finished or removed.  If the
    run fails and this call made the folder, and nothing worth keeping was
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
    made = _make(out)
    f, before = _lock(out, command, log)  # a refused run removes nothing: the folder may be the other run's
    _held[out] = 1
    try:
        if before.get("pid"):
            log(f"{out}: taking over from an earlier run that did not finish (pid {before['pid']}, "
                f"`{before.get('command', '?')}`); finished steps are reused")
            _leftovers(out)
        yield out
    except BaseException:
        _remove_made(out, made)
        raise
    finally:
        del _held[out]
        _release(f)


@contextlib.contextmanager
def publishing(out):
    """A staging folder for a set of reports; on success they replace those in ``out``, ``config.json`` last.

    Write every file of the set under the yielded folder (sub-folders
    allowed).  A failure while writing (a full disk, an error) removes the
    staging folder and leaves ``out`` as it was.  A sub-folder in the set
    replaces the old one: files of the old one that the new set does not
    have are removed (plots of models no longer run).

    Raises:
        TransferError: the disk filled up (naming the folder and the space the set needed).
    """
    out = Path(out)
    stage = out / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        write_text_atomic(stage / COMPLETE, json.dumps(files))
    except (OSError, DiskFullError) as e:
        full = isinstance(e, DiskFullError) or e.errno in DISK_FULL
        staged = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
        shutil.rmtree(stage, ignore_errors=True)
        if not full:
            raise
        failed = e.path if isinstance(e, DiskFullError) else Path(e.filename or out)
        raise disk_full(out, failed, staged + (getattr(e, "needed", 0) or 0)) from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _move_into_place(stage, out)


def _move_into_place(stage: Path, out: Path):
    """Move a whole staged set into ``out``, ``config.json`` last; may be run again after a kill part-way."""
    files = [Path(f) for f in json.loads((stage / COMPLETE).read_text())]
    last = [f for f in files if str(f) == "config.json"]
    # Without config.json the folder reads as unfinished until the new set is whole.
    if last and (stage / last[0]).exists():
        (out / "config.json").unlink(missing_ok=True)
    for sub in {f.parts[0] for f in files if len(f.parts) > 1}:
        for old in (out / sub).rglob("*") if (out / sub).is_dir() else ():
            if old.is_file() and old.relative_to(out) not in files:
                old.unlink()
    for f in [f for f in files if f not in last] + last:
        if (stage / f).exists():
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / f, out / f)
    shutil.rmtree(stage, ignore_errors=True)
