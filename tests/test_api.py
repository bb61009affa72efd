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
