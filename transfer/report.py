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
