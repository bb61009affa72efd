"""TensorFlow's oneDNN kernels: on or off by a measurement kept per machine, set before TensorFlow's import."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from transfer import onednn


@pytest.fixture
def record(tmp_path, monkeypatch):
    path = tmp_path / "onednn.json"
    monkeypatch.setattr(onednn, "record_path", lambda: path)
    return path


def _never():
    raise AssertionError("measured")


def test_the_kept_answer_is_used_without_measuring(record, monkeypatch):
    monkeypatch.setattr(onednn, "measure", _never)
    record.write_text(json.dumps({onednn.machine_key(): {"off_s": 0.2, "on_s": 0.3, "on": False}}))
    assert onednn.choice(log=_never) == "0"
    record.write_text(json.dumps({onednn.machine_key(): {"off_s": 0.3, "on_s": 0.2, "on": True}}))
    assert onednn.choice(log=_never) == "1"
    record.write_text(json.dumps({"another CPU x2 | tensorflow 2.21.0": {"on": True}}))
    assert onednn.choice(log=_never, measure_if_unknown=False) is None


def test_the_first_use_on_a_machine_measures_says_so_and_keeps_the_answer(record, monkeypatch):
    calls = []
    monkeypatch.setattr(onednn, "measure", lambda: calls.append(1) or {"off_s": 0.25, "on_s": 0.18, "on": True})
    lines = []
    assert onednn.choice(log=lines.append) == "1"
    assert lines[0].startswith("TensorFlow: timing its oneDNN kernels on and off on this CPU, once")
    assert str(record) in lines[0]
    assert "0.18 s with oneDNN, 0.25 s without: oneDNN on" in lines[1]
    assert json.loads(record.read_text())[onednn.machine_key()]["on"] is True
    assert onednn.choice(log=_never) == "1" and calls == [1]  # kept: not measured again


def test_a_failed_measurement_leaves_tensorflows_default_and_keeps_nothing(record, monkeypatch):
    def fails():
        raise RuntimeError("it ended (exit status 1)")

    monkeypatch.setattr(onednn, "measure", fails)
    lines = []
    assert onednn.choice(log=lines.append) is None
    assert lines[-1] == ("TensorFlow: the oneDNN timing failed (it ended (exit status 1)): TensorFlow's default "
                         "stands")
    assert not record.exists()  # the next run tries again


def test_a_users_setting_and_an_imported_tensorflow_are_left_alone(record, monkeypatch):
    monkeypatch.setattr(onednn, "measure", _never)
    assert "tensorflow" in sys.modules  # conftest imported it: the setting can no longer change
    monkeypatch.delenv(onednn.VARIABLE, raising=False)
    assert onednn.apply(log=_never) is None
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setenv(onednn.VARIABLE, "0")  # the user's choice
    assert onednn.apply(log=_never) == "0"


def test_a_fresh_process_imports_tensorflow_with_the_kept_answer(tmp_path):
    """``import transfer`` first: TensorFlow, imported later by a stage, starts with this machine's answer."""
    keep = tmp_path / "keras" / "transfer" / "onednn.json"
    keep.parent.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != onednn.VARIABLE}
    env["KERAS_HOME"] = str(tmp_path / "keras")
    code = "import os, transfer, tensorflow\nprint('SET', os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    for on, expected in ((False, "0"), (True, "1")):
        keep.write_text(json.dumps({onednn.machine_key(): {"off_s": 0.2, "on_s": 0.2, "on": on}}))
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"SET {expected}" in out.stdout
        assert "timing" not in out.stderr


@pytest.mark.slow
def test_the_measurement_times_both_settings_in_fresh_processes():
    answer = onednn.measure(rounds=1)
    assert answer["off_s"] > 0 and answer["on_s"] > 0
    assert answer["on"] == (answer["on_s"] < answer["off_s"])
