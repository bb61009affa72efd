import subprocess
import sys

import pytest

from tests.conftest import ROOT

ORDERS = {
    "function first": "f = transfer.{name}; import transfer.{name}",
    "module first": "import transfer.{name}; from transfer.{name} import {name} as g",
}


@pytest.mark.parametrize("name", ["compare", "finetune"])
@pytest.mark.parametrize("order", sorted(ORDERS))
def test_api_functions_named_like_their_module_stay_callable(name, order):
    code = (
        "import transfer\n"
        + ORDERS[order].format(name=name).replace("; ", "\n")
        + f"\nassert callable(transfer.{name}), transfer.{name}\n"
        + f"assert transfer.{name}.__module__ == 'transfer.{name}'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_every_public_name_resolves_without_tensorflow_until_used():
    code = (
        "import sys, transfer\n"
        "assert 'tensorflow' not in sys.modules\n"
        "missing = [n for n in transfer.__all__ if getattr(transfer, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
