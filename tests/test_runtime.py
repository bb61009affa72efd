"""This machine and TensorFlow's start: one store of what was measured once, the oneDNN choice set before
TensorFlow's import, and a library whose import does nothing."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from transfer.runtime import _machine as machine
from transfer.runtime import _onednn as onednn


@pytest.fixture
def record(tmp_path, monkeypatch):
    path = tmp_path / "machine.json"
    monkeypatch.setattr(machine, "store_path", lambda: path)
    return path


def _never(*args):
    raise AssertionError("measured")


def test_onednn_is_on_for_x86_and_left_to_tensorflow_elsewhere(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert onednn.choice() == "1"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert onednn.choice() is None


def test_one_store_keeps_every_topic_of_a_machine_apart_from_other_machines(record, monkeypatch):
    machine.remember("engines", {"oneDNN on": {"rates": {"tensorflow": 50.0}}})
    machine.remember("precision", {"efficientnet_lite0": {"bf16_faster": False}})
    monkeypatch.setattr(machine, "cores", lambda: 64)  # another machine: nothing known
    assert machine.remembered("engines") == {}
    machine.remember("engines", {"oneDNN on": {"rates": {"tensorflow": 500.0}}})
    monkeypatch.undo()
    monkeypatch.setattr(machine, "store_path", lambda: record)
    assert machine.remembered("engines") == {"oneDNN on": {"rates": {"tensorflow": 50.0}}}
    assert machine.remembered("precision") == {"efficientnet_lite0": {"bf16_faster": False}}
    assert len(json.loads(record.read_text())) == 2


def test_a_users_setting_and_an_imported_tensorflow_are_left_alone(monkeypatch):
    assert "tensorflow" in sys.modules  # conftest imported it: the setting can no longer change
    monkeypatch.delenv(onednn.VARIABLE, raising=False)
    assert onednn.apply() is None and onednn.VARIABLE not in os.environ
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setenv(onednn.VARIABLE, "0")  # the user's choice
    assert onednn.apply() == "0"


def test_a_fresh_process_imports_tensorflow_with_the_rules_setting(tmp_path):
    """TensorFlow, started by a stage when it first needs it, starts with oneDNN set; nothing is measured."""
    env = {k: v for k, v in os.environ.items() if k != onednn.VARIABLE}
    env["KERAS_HOME"] = str(tmp_path / "keras")
    code = ("import os\nfrom transfer.runtime import tensorflow\ntensorflow()\n"
            "print('SET', os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"SET {onednn.choice()}" in out.stdout
    assert not (tmp_path / "keras" / "transfer").exists()


@pytest.mark.slow
def test_the_measurement_times_both_settings_in_fresh_processes():
    answer = onednn.measure(rounds=1)
    assert answer["off_s"] > 0 and answer["on_s"] > 0
    assert answer["on"] == (answer["on_s"] < answer["off_s"])
