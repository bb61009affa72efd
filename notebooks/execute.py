"""Run the notebooks top to bottom with their own settings and save them with their outputs.

    python notebooks/execute.py                 # all three (about 15 minutes on 2 CPU cores)
    python notebooks/execute.py 03-fine-tuning  # one

Each runs in this folder (its runs go to notebooks/runs/, which git ignores) with a fresh kernel; a notebook that
raises is not saved, so the committed copy always shows a whole run. The tests execute the same notebooks on small
settings (tests/test_notebooks.py) and check that the committed copies carry their plots.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> float:
    """Execute ``path`` in place; return the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(book, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.perf_counter() - start
    book.metadata["transfer"] = {"executed_seconds": round(seconds)}
    nbformat.write(book, path)
    return seconds


def main(names: list[str]) -> None:
    paths = [HERE / f"{n.removesuffix('.ipynb')}.ipynb" for n in names] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        if not path.is_file():
            sys.exit(f"Error: no notebook {path.name} in {HERE}; the notebooks are "
                     f"{', '.join(p.stem for p in sorted(HERE.glob('*.ipynb')))}.")
    for path in paths:
        print(f"{path.name}: executed in {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
