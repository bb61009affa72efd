"""What ``compare`` returns: one record of the comparison, from which the command line prints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A finished comparison.

    Unpacks as ``table, verdict = compare(...)``.

    Attributes:
        table: the report's table: ``compare.csv`` (one split or the folds pooled), ``repeats.csv`` (the
            summary over repeats) or ``learning-curve.csv`` (every model at every training size).
        verdict: the one-paragraph answer.
        out: the run folder.
        protocol: how the images were scored: ``split``, ``kfold``, ``repeats`` or ``train_sizes``.
        recommended: the model the verdict recommends (``transfer export`` ships it); empty where the table
            is a summary (repeats, learning curve).
        seconds: seconds per phase here (a sub-run, a fold, a repeat, a size, the report).
        roles: the images per role (train, validation, test) of the split, in words.
        skipped: how many files could not be read (listed in ``skipped.csv``).
        table_file, report: the table's CSV and ``report.html`` (None where the run writes none).
        plots: the PNG files drawn.
    """

    table: pd.DataFrame
    verdict: str
    out: Path
    protocol: str
    recommended: str = ""
    seconds: dict = dataclasses.field(default_factory=dict)
    roles: str = ""
    skipped: int = 0
    table_file: Path | None = None
    report: Path | None = None
    plots: tuple[Path, ...] = ()

    def __iter__(self):
        return iter((self.table, self.verdict))
