"""Writing a run folder: CSV reports and config.json, each file atomically."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd

from transfer.fileio import atomic_path, write_text_atomic


def write_csv(df: pd.DataFrame, path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return path


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("transfer", "tensorflow", "keras", "scikit-learn", "numpy", "pandas", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def write_config(path, config: dict) -> Path:
    path = Path(path)
    write_text_atomic(path, json.dumps({**config, "versions": versions()}, indent=2, default=str) + "\n")
    return path


def check_run_folder(out, command: str):
    """Refuse to write one command's reports over another command's run.

    Raises:
        TransferError: ``out/config.json`` belongs to another command.
    """
    from transfer.errors import TransferError

    path = Path(out) / "config.json"
    if not path.exists():
        return
    try:
        other = json.loads(path.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        other = None
    if other and other != command:
        raise TransferError(
            f"{out} holds a `{other}` run, whose reports `{command}` would overwrite: give `{command}` its own "
            f"--out (copy {Path(out) / 'split.csv'} into it to use the same split"
            + (f"; --features-dir {Path(out) / 'features'} reuses its features" if command == "finetune" else "")
            + ")."
        )
