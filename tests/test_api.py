import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_every_public_name_resolves_without_tensorflow_until_used():
    code = (
        "import sys, transfer\n"
        "assert 'tensorflow' not in sys.modules\n"
        "missing = [n for n in transfer.__all__ if getattr(transfer, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_no_public_function_shares_its_name_with_a_module():
    """So that `transfer.compare(...)` is a function whatever was imported before: plain re-exports, no tricks."""
    import importlib
    import pkgutil

    import transfer

    modules = {m.name for m in pkgutil.iter_modules(transfer.__path__)}
    assert not modules & set(transfer.__all__)
    for module in modules:
        importlib.import_module(f"transfer.{module}")
    for name in transfer.__all__:
        assert not isinstance(getattr(transfer, name), type(transfer)), name


def _fresh(code: str, **env_changes) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, without the test session's TensorFlow settings (a user's environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)


IMPORT_CHANGES_NOTHING = """
import os, subprocess, sys
import pandas as pd
started = []
def refuse(*args, **kwargs):
    started.append(args)
    raise AssertionError("a process was started")
subprocess.Popen.__init__ = refuse
os.fork = os.posix_spawn = os.posix_spawnp = refuse
before = (list(sys.meta_path), list(sys.path_hooks), dict(os.environ), pd.describe_option(_print_desc=False))
import transfer
after = (list(sys.meta_path), list(sys.path_hooks), dict(os.environ), pd.describe_option(_print_desc=False))
assert before == after, [name for name, b, a in zip(("meta_path", "path_hooks", "environ", "pandas"), before, after)
                         if b != a]
assert not started
print("OK")
"""


def test_importing_transfer_changes_nothing_global_and_starts_no_process():
    out = _fresh(IMPORT_CHANGES_NOTHING)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr[-2000:]
    heavy = {"tensorflow", "keras", "sklearn", "matplotlib", "pandas", "numpy", "PIL"}
    out = _fresh(f"import sys, transfer\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r}))")
    assert out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def _normalised(text: str) -> list[str]:
    """Lines without the timestamps, thread ids and addresses that differ between two runs."""
    return sorted(re.sub(r"\d+", "N", line) for line in text.splitlines() if line.strip())


def test_import_transfer_then_tensorflow_prints_what_tensorflow_alone_prints(tmp_path):
    home = str(tmp_path / "keras")  # a fresh home: no oneDNN answer kept, none to measure at import either
    alone = _fresh("import tensorflow", KERAS_HOME=home)
    both = _fresh("import transfer, tensorflow", KERAS_HOME=home)
    assert alone.returncode == both.returncode == 0, both.stderr[-2000:]
    assert _normalised(both.stdout + both.stderr) == _normalised(alone.stdout + alone.stderr)
    assert not (tmp_path / "keras" / "transfer").exists()  # nothing measured, nothing kept


def test_a_script_calling_the_api_gets_tensorflows_quiet_start(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    code = ("import sys, transfer\n"
            f"predictions, skipped = transfer.predict_imagenet([{str(tmp_path / 'red.png')!r}], top=1, "
            "engine='tensorflow', log=lambda line: None)\n"
            "print(len(predictions), len(skipped))")
    out = _fresh(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "0"]
    startup = [line for line in out.stderr.splitlines()
               if re.search(r"absl|cuInit|cuda|oneDNN|[IWE]\d{4} \d\d:\d\d", line)]
    assert startup == [], out.stderr[-2000:]


def test_tensorflow_imported_first_is_used_as_it_is_and_a_setting_that_could_not_apply_is_said_once(tmp_path):
    code = ("import tensorflow\nfrom transfer.runtime import tensorflow as start\n"
            "assert start() is tensorflow and start() is tensorflow\nprint('OK')")
    out = _fresh(code, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
    assert out.stdout.strip() == "OK", out.stderr[-2000:]
    said = [line for line in out.stderr.splitlines() if line.startswith("transfer:")]
    assert said == ["transfer: TensorFlow was imported before transfer started it, with its oneDNN kernels off; "
                    "they are faster on here: set TF_ENABLE_ONEDNN_OPTS=1 before importing TensorFlow to have it"]


def test_a_non_utf8_file_name_survives_the_api_without_touching_the_callers_pandas_options(tmp_path):
    """pandas 3 keeps strings in Arrow (UTF-8 only) when pyarrow is installed: transfer's own calls keep Python
    strings for their duration, and the caller's option is what it was."""
    import pandas as pd
    from PIL import Image

    import transfer

    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (tmp_path / label).mkdir()
        for i in range(4):
            Image.new("RGB", (8, 8), colour).save(tmp_path / label / f"{i}.png")
    odd = os.fsencode(tmp_path / "red") + b"/caf\xe9.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(odd)
    before = pd.get_option("mode.string_storage")
    split = transfer.make_split(transfer.resolve_source(str(tmp_path)).table, test_fraction=0.3)
    assert os.fsdecode(odd) in set(split["path"])
    assert pd.get_option("mode.string_storage") == before
