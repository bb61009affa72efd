"""Faults: a kill -9 in the middle of each stage, a full disk, two runs on one folder.

What a user relies on afterwards: the run folder is usable (the same command finishes it), earlier results
are whole, no half-written file is left, and a second run on a busy folder refuses with one line.
(A kill -9 during fine-tuning resumes at the next epoch: tests/test_finetune.py.)
"""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import ROOT, cached_images, colour_folder

PAUSE = """
import os, sys, time
import transfer.{module} as module
real, calls = module.{function}, []
def paused(*args, **kwargs):
    calls.append(args)
    if {condition}:
        print("PAUSED HERE", flush=True)
        time.sleep(600)
    return real(*args, **kwargs)
module.{function} = paused
from tests import _tiny
_tiny.run_cli(os.environ["TRANSFER_TINY_IMAGENET"], sys.argv[1:])
"""


def _kill_at(args, module, function, condition, timeout=300):
    """Run the CLI with ``module.function`` pausing when ``condition`` holds, and kill -9 it there.

    The pause makes the kill land at that very point, whatever the machine's speed. Returns the output.
    """
    script = PAUSE.format(module=module, function=function, condition=condition)
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(4096), b"")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and b"PAUSED HERE" not in b"".join(chunks):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    output = b"".join(chunks).decode(errors="replace")
    assert "PAUSED HERE" in output, f"the run never reached the point of the kill:\n{output[-2000:]}"
    return output


def _leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.startswith((".tmp-", ".staging-"))]


@pytest.fixture
def tiny_processes(tiny_backbone, tiny_imagenet, monkeypatch):
    """The CLI's processes these tests start, and this one, on the tiny test backbone (tests/_tiny.py)."""
    monkeypatch.setenv("TRANSFER_TINY_IMAGENET", str(tiny_imagenet))


def _transfer(*args):
    """``transfer ARGS --backbone tiny`` as a process of its own (with :func:`tiny_processes`)."""
    return [sys.executable, "-m", "tests._tiny", *map(str, args), "--backbone", "tiny"]


def test_a_kill_during_extraction_leaves_no_cache_and_the_run_finishes_after(tmp_path, tiny_processes):
    data = colour_folder(tmp_path / "data", n=40, splits=("",))
    out = tmp_path / "run"
    args = ["extract", "--data", data, "--out", out, "--image-size", "64", "--batch-size", "8", "--backbone", "tiny"]
    _kill_at(args, "data._images", "forward", "len(calls) == 4")  # the warm-up batch, then the third of ten batches
    assert not cached_images(data.rglob("*.png"))  # no cache of a part of the images (one shard holds all 80)
    again = subprocess.run(_transfer(*args), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "taking over from an earlier run that did not finish" in again.stdout + again.stderr
    assert "80 images -> 32 features each" in again.stdout
    assert _leftovers(out) == []


def test_a_kill_during_classification_keeps_the_earlier_results_whole(tmp_path, tiny_processes):
    data = colour_folder(tmp_path / "data", n=30, splits=("",))
    out = tmp_path / "run"
    first = CliRunner().invoke(cli.main, ["classify", "--data", str(data), "--out", str(out), "-c", "logreg",
                                          "--image-size", "32", "--backbone", "tiny"])
    assert first.exit_code == 0, first.output
    before = {name: (out / name).read_bytes() for name in ("config.json", "metrics.csv", "predictions.csv")}
    args = ["classify", "--data", data, "--out", out, "-c", "logreg,mlp", "--image-size", "32", "--backbone", "tiny"]
    _kill_at(args, "features._classifiers", "fit_classifier", "args[0] == 'mlp'")  # logreg fitted, mlp not yet
    assert {name: (out / name).read_bytes() for name in before} == before  # the earlier run, whole
    assert sorted(p.name for p in (out / "classifiers").iterdir()) == ["logreg.skops"]
    red = sorted((data / "red").iterdir())[:2]
    predicted = CliRunner().invoke(cli.main, ["predict", "--run", str(out), *map(str, red)])
    assert predicted.exit_code == 0 and "2 images classified" in predicted.output
    again = subprocess.run(_transfer(*args), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert set(pd.read_csv(out / "metrics.csv")["classifier"]) == {"logreg", "mlp"}
    assert _leftovers(out) == []


def _disk_fills_up_on(name, monkeypatch):
    """Writing a file called ``name`` fails half-way with ENOSPC, as a full disk makes it."""
    real = pd.DataFrame.to_csv

    def to_csv(self, path, *args, **kwargs):
        if Path(path).name == name or f"-{name}." in Path(path).name:  # the file, or its temporary name
            with open(path, "w") as f:
                f.write("half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)


def test_a_full_disk_leaves_the_earlier_results_whole(tmp_path, monkeypatch):
    data = colour_folder(tmp_path / "data", n=10, splits=("",))
    out = tmp_path / "run"
    args = ["classify", "--data", str(data), "--out", str(out), "--image-size", "32"]
    assert CliRunner().invoke(cli.main, [*args, "-c", "logreg"]).exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and "features" not in p.parts}
    _disk_fills_up_on("predictions.csv", monkeypatch)
    result = CliRunner().invoke(cli.main, [*args, "-c", "logreg,knn"])
    assert result.exit_code == 2 and result.output.count("Error") == 1
    error = result.output.splitlines()[-1]
    assert error.startswith(f"Error: No space left on the disk of {out} while writing predictions.csv")
    assert "it needed more than" in error and "what finished before is kept" in error
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and "features" not in p.parts}
    assert after == before  # every report and classifier as it was; no half file, no knn.skops
    assert _leftovers(out) == []


def test_a_full_disk_while_caching_features_names_the_space(tmp_path, monkeypatch):
    data = colour_folder(tmp_path / "data", n=10, splits=("",))
    real = np.savez

    def savez(file, **arrays):
        file.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez)
    result = CliRunner().invoke(cli.main, ["extract", "--data", str(data), "--out", str(tmp_path / "run"),
                                           "--image-size", "32"])
    monkeypatch.setattr(np, "savez", real)
    assert result.exit_code == 2 and result.output.count("Error") == 1, result.output
    error = result.output.splitlines()[-1]
    assert error.startswith("Error: No space left on the disk of") and "shard-" in error
    assert "it needed more than 102.4 kB" in error  # 20 images x 1280 float32 features
    assert _leftovers(tmp_path / "run") == []


HOLD = """
import sys, time
from transfer.reports import claim
with claim(sys.argv[1], "classify"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_busy_folder_refuses_and_a_killed_ones_lock_is_taken_over(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("",))
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        args = ["classify", "--data", str(data), "--out", str(out), "-c", "logreg", "--image-size", "32"]
        busy = CliRunner().invoke(cli.main, args)
        assert busy.exit_code == 2 and busy.output.count("\n") == 1, busy.output
        assert f"{out} is in use by another transfer run (pid {holder.pid}, `classify`" in busy.output
        assert not (out / "split.csv").exists()  # the refused run did nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    taken = CliRunner().invoke(cli.main, args)
    assert taken.exit_code == 0, taken.output
    assert f"taking over from an earlier run that did not finish (pid {holder.pid}" in taken.output


@pytest.mark.parametrize("command", ["extract", "classify"])
def test_two_runs_started_together_one_refuses(tmp_path, command, tiny_processes):
    data = colour_folder(tmp_path / "data", n=40, splits=("",))
    out = tmp_path / "run"
    cmd = _transfer(command, "--data", data, "--out", out, "--image-size", "64")
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    refused = next(r for r in results if r[2] == 2)
    assert "is in use by another transfer run" in refused[1] and refused[1].count("Error:") == 1


def test_a_failed_run_removes_only_the_folder_it_made_and_never_another_runs_files(tmp_path):
    from transfer.reports import claim

    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError), claim(runs / "a", "classify"):
        (runs / "a" / "split.csv").write_text("path,label,split\n")
        (runs / "b").mkdir()  # another run made its folder beside this one meanwhile, and finished
        (runs / "b" / "metrics.csv").write_text("accuracy\n1.0\n")
        raise RuntimeError("this run fails")
    assert not (runs / "a").exists() and (runs / "b" / "metrics.csv").exists()
    with pytest.raises(RuntimeError), claim(runs / "c", "finetune"):
        (runs / "c" / "train_state").mkdir()
        (runs / "c" / "train_state" / "state.json").write_text("{}")  # worth keeping: a resume starts from it
        raise RuntimeError("killed by Ctrl-C")
    assert (runs / "c" / "train_state" / "state.json").exists()


DEAD_PID = 2**22 + 12345  # above Linux's largest pid: no process has it


def test_taking_over_a_killed_run_finishes_its_whole_staged_reports_and_drops_its_half_written_files(tmp_path):
    import json

    from transfer.reports._run_folder import LOCK_NAME, claim

    out = tmp_path / "run"
    (out / "plots").mkdir(parents=True)
    for name, text in {"config.json": "old", "metrics.csv": "old", "plots/gone.png": "old"}.items():
        (out / name).write_text(text)
    whole = out / "sub" / f".staging-{DEAD_PID}"  # a sub-run's set, killed while being moved into place
    (whole / "plots").mkdir(parents=True)
    for name in ("config.json", "plots/new.png"):
        (whole / name).write_text("new")
    (whole / ".complete").write_text(json.dumps(["config.json", "metrics.csv", "plots/new.png"]))
    (out / "sub" / "metrics.csv").write_text("new")  # moved before the kill
    half = out / f".staging-{DEAD_PID + 1}"  # killed while still writing its set
    half.mkdir()
    (half / "metrics.csv").write_text("half")
    (out / f".tmp-{DEAD_PID}-metrics.csv.abc.csv").write_text("half")
    mine = out / f".tmp-{os.getpid()}-keep.csv.abc.csv"  # a live process's file is left alone
    mine.write_text("being written")
    (out / LOCK_NAME).write_text(json.dumps({"pid": DEAD_PID, "command": "compare"}))
    said = []
    with claim(out, "compare", log=said.append):
        pass
    assert said and "taking over from an earlier run that did not finish" in said[0]
    assert (out / "sub" / "config.json").read_text() == "new" and (out / "sub" / "plots" / "new.png").exists()
    assert (out / "metrics.csv").read_text() == "old" and (out / "config.json").read_text() == "old"
    assert not whole.exists() and not half.exists() and mine.exists()
    assert not (out / f".tmp-{DEAD_PID}-metrics.csv.abc.csv").exists()
