import csv
import io
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import ROOT, solid_image
from transfer import REGISTRY
from transfer.serving._predict import PREDICTION_COLUMNS


def run_in_fresh_python(args):
    """Invoke the CLI in a new interpreter and report which heavy modules it imported."""
    script = f"""
import sys
from click.testing import CliRunner
import cli
result = CliRunner().invoke(cli.main, {args!r})
print("EXIT", result.exit_code)
print("TF", "tensorflow" in sys.modules, "KERAS", "keras" in sys.modules)
print(result.output)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("args", [["--help"], ["backbones"], ["backbones", "--csv"], ["predict", "--help"],
                                  ["predict", "--backbone", "resnet5", "x.jpg"], ["classify", "--help"],
                                  ["classify", "--data", "digits", "--out", "r", "--classifier", "svm"],
                                  ["extract", "--data", "digits", "--out", "r", "--backbone", "vgg"]])
def test_fast_paths_do_not_import_tensorflow(args):
    out = run_in_fresh_python(args)
    assert "TF False KERAS False" in out


def test_backbones_table_and_csv():
    runner = CliRunner()
    table = runner.invoke(cli.main, ["backbones"])
    assert table.exit_code == 0
    assert "efficientnet_lite0" in table.output and "3,413,024" in table.output
    result = runner.invoke(cli.main, ["backbones", "--csv"])
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["name"] for r in rows] == list(REGISTRY)
    lite0 = rows[0]
    assert lite0["input_size"] == "224" and lite0["feature_size"] == "1280"
    assert lite0["params"] == "3413024" and lite0["weights_offline"] == "yes"


def test_python_cli_py_works_the_same():
    out = subprocess.run([sys.executable, "cli.py", "backbones", "--csv"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0
    assert out.stdout.splitlines()[1].startswith("efficientnet_lite0,224,1280,")


def test_unknown_backbone_is_one_line():
    result = CliRunner().invoke(cli.main, ["predict", "--backbone", "resnet5", "x.jpg"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Unknown backbone 'resnet5'")
    assert "Traceback" not in result.output


def test_predict_skips_bad_files_and_predicts_the_rest(tmp_path, bad_files):
    good = solid_image(tmp_path / "imgs" / "red.png", (220, 20, 20))
    gray = solid_image(tmp_path / "imgs" / "gray.png", 128, mode="L")
    palette = solid_image(tmp_path / "imgs" / "pal.gif", 3, mode="P")
    out = tmp_path / "preds.csv"
    args = ["predict", "--top", "3", "--output", str(out), str(tmp_path / "imgs"), str(tmp_path / "missing.jpg"),
            *(str(p) for p in sorted(bad_files.iterdir()))]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out)
    assert list(preds.columns) == PREDICTION_COLUMNS
    assert set(preds["path"]) == {str(gray), str(palette), str(good)}
    assert all(ranks == [1, 2, 3] for ranks in preds.groupby("path")["rank"].apply(list))
    assert preds["score"].between(0, 1).all()
    skipped = pd.read_csv(tmp_path / "preds.skipped.csv")
    reasons = dict(zip(skipped["path"].map(lambda p: p.rsplit("/", 1)[-1]), skipped["reason"], strict=True))
    assert reasons == {
        "missing.jpg": "no such file or folder",
        "empty.png": "empty file (0 bytes)",
        "text.jpg": "not an image (no image format recognised)",
        "truncated.jpg": reasons["truncated.jpg"],
    }
    assert reasons["truncated.jpg"].startswith("unreadable image")
    assert "3 images predicted" in result.output and "4 skipped" in result.output


def test_predict_with_nothing_readable_fails_and_keeps_old_output(tmp_path, bad_files):
    out = tmp_path / "preds.csv"
    out.write_text("precious\n")
    result = CliRunner().invoke(cli.main, ["predict", "-o", str(out), str(bad_files / "empty.png")])
    assert result.exit_code == 2
    assert "Error: none of the 1 inputs could be read" in result.output
    assert out.read_text() == "precious\n"


def test_predict_defaults_to_the_sample_photos(tmp_path):
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(cli.main, ["predict", "-o", str(out)])
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out)
    flower = preds[preds["path"].str.endswith("flower.jpg")]
    assert "daisy" in set(flower["class_name"])
    assert len(preds) == 10


def test_tensorflow_start_up_lines_become_one_line_of_ours():
    out = subprocess.run([sys.executable, "cli.py", "predict", "--top", "1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    noise = [line for line in out.stderr.splitlines() if any(word in line for word in (
        "absl", "cudart", "cuda", "oneDNN", "I0000", "W0000", "E0000"))]
    assert noise == []
    ours = [line for line in out.stderr.splitlines() if line.startswith("TensorFlow ")]
    assert len(ours) == 1, out.stderr
    assert re.fullmatch(r"TensorFlow \S+: (no GPU found, running on the CPU \(\d+ cores\)|\d+ GPUs? found \(.+\))\.",
                        ours[0]), ours[0]


def test_an_error_after_tensorflow_loads_is_still_one_line(tmp_path):
    weights = tmp_path / "junk.pth"
    weights.write_bytes(b"not a checkpoint")
    out = subprocess.run([sys.executable, "cli.py", "predict", "--weights", str(weights)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if not line.startswith("TensorFlow ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr


FAKE_TENSORFLOW = '''
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1795988952.985765    2507 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n")
os.write(2, b"a line the user needs\\n")
if os.environ.get("FAKE_ABORT"):
    os.write(2, b"F0000 00:00:1.0 1 cpu_check.cc:9] This CPU lacks AVX, which this TensorFlow needs\\n")
    os.abort()
__version__ = "0.fake"
class config:
    @staticmethod
    def list_physical_devices(kind):
        return []
'''


@pytest.mark.parametrize("abort", [False, True])
def test_start_up_noise_is_dropped_and_every_other_line_kept_even_when_the_import_aborts(tmp_path, abort):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from transfer.runtime import announce_to, tensorflow; "
              "announce_to(lambda line: print(line, file=sys.stderr)); tensorflow()")
    env = {**os.environ, "FAKE_ABORT": "1" if abort else ""}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=60)
    lines = out.stderr.splitlines()
    assert "a line the user needs" in lines
    assert not [line for line in lines if "absl" in line or "cudart" in line]
    if abort:
        assert out.returncode != 0 and any("This CPU lacks AVX" in line for line in lines)
    else:
        assert out.returncode == 0
        assert lines[-1] == f"TensorFlow 0.fake: no GPU found, running on the CPU ({os.cpu_count()} cores)."
