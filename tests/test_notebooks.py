"""The notebooks run top to bottom on small settings, so that they cannot rot (with the end-to-end runs, `pytest -m
slow`), and the committed copies carry a whole run with its plots (the fast suite)."""

import importlib.util

import pandas as pd
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("nbclient", "nbformat", "ipykernel")),
    reason="nbclient, nbformat and ipykernel are needed (pip install -e .[test])")

# Appended to each notebook's `parameters` cell: tiny inputs, one epoch, fewer classifiers.
SMALL = {
    "01-quickstart.ipynb": 'OPTIONS = {"image_size": 32, "batch_size": 64, "head_epochs": 1, "epochs": 1, '
                           '"classifiers": "logreg", "scratch_size": 16, "scratch_epochs": 1, '
                           '"precision": "float32"}',
    "02-features-and-svm.ipynb": 'IMAGE_SIZE = 32\nCLASSIFIERS = "logreg,knn"',
    "03-fine-tuning.ipynb": 'FREEZE = ["all", "none"]\nOPTIONS = {"image_size": 32, "batch_size": 64, '
                            '"augment": False, "head_epochs": 1, "epochs": 1, "precision": "float32"}',
}


def test_every_notebook_is_tested_and_has_a_parameters_cell():
    import nbformat

    names = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert names == sorted(SMALL)
    for name in names:
        book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name


# The plots each committed notebook shows (saved with its outputs by `python notebooks/execute.py`), at least.
SAVED_PLOTS = {"01-quickstart.ipynb": 5, "02-features-and-svm.ipynb": 1, "03-fine-tuning.ipynb": 8}


@pytest.mark.parametrize("name", sorted(SAVED_PLOTS))
def test_the_committed_notebooks_show_a_whole_run_with_its_plots(name):
    """A viewer that does not execute notebooks (GitHub, nbviewer) shows what they found: every code cell ran,
    in order, none raised, and the plots are there."""
    import nbformat

    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert _images(book) >= SAVED_PLOTS[name]


def run_notebook(name, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    out = tmp_path / "out"
    cell.source += f"\n# test overrides\nOUT = {str(out)!r}\n{SMALL[name]}\n"
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    return book, out


def _images(book):
    return sum("image/png" in o.get("data", {}) for c in book.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow  # a kernel through the whole public API, as a reader runs it: end to end
def test_quickstart_notebook(tmp_path):
    book, out = run_notebook("01-quickstart.ipynb", tmp_path)
    table = pd.read_csv(out / "compare.csv")
    assert set(table["strategy"]) == {"features", "finetune", "scratch"}
    # The per-class cell shows the best model's classes (whichever strategy won), not an empty table.
    cell = next(c for c in book.cells if c.cell_type == "code" and "per_class.csv" in c.source)
    shown = next(o["data"]["text/plain"] for o in cell.outputs if "text/plain" in o.get("data", {}))
    assert all(f"\n{i} " in shown for i in range(10)) and "support" in shown
    assert _images(book) == len(list((out / "plots").glob("*.png"))) >= 5


@pytest.mark.slow  # a kernel through the whole public API, as a reader runs it: end to end
def test_features_notebook(tmp_path):
    book, out = run_notebook("02-features-and-svm.ipynb", tmp_path)
    for layer in ("pooled", "flatten", "block6a_expand_activation"):
        metrics = pd.read_csv(out / layer / "metrics.csv")
        assert sorted(metrics["classifier"]) == ["knn", "logreg"]
        assert (metrics["layer"] == layer).all()
    assert (out / "tsne.png").stat().st_size > 0 and _images(book) == 1


@pytest.mark.slow  # a kernel through the whole public API, as a reader runs it: end to end
def test_fine_tuning_notebook(tmp_path):
    book, out = run_notebook("03-fine-tuning.ipynb", tmp_path)
    runs = ["freeze-all", "freeze-none", "freeze-none-train-bn"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("freeze-")) == runs
    bn = {}
    for run in runs:
        layers = pd.read_csv(out / run / "layers.csv")
        bn[run] = int(layers.loc[layers["type"] == "BatchNormalization", "trainable"].sum())
    assert bn["freeze-all"] == bn["freeze-none"] == 0 < bn["freeze-none-train-bn"]
    inspected = [r for r in runs if (out / r / "inspect" / "gradcam.csv").is_file()]
    assert inspected in (["freeze-none"], ["freeze-none-train-bn"])
    # the curves of each run, the stem's kernels, and inside the network: kernels, block change (none where no block
    # moved: the fine-tuning kept its stage-1 model), Grad-CAM, activations
    inside = ["kernels.png", "block-change.png", "gradcam-finetune.png", "activations-finetune.png"]
    drawn = [n for n in inside if (out / inspected[0] / "inspect" / n).is_file()]
    assert set(inside) - set(drawn) <= {"block-change.png"}
    assert _images(book) == len(runs) + 1 + len(drawn)
