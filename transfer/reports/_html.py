"""``report.html``: one self-contained page per comparison, for a person to read.

Written beside ``compare.csv`` from the same table, verdict and plots (the
plots embedded as data URIs, so the file can be mailed or archived alone; no
network, and no script needed to read it).  The page's layout is the Jinja2
template ``templates/report.html.j2``.
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pandas as pd

from transfer.reports.plots import caption
from transfer.runtime import write_text_atomic

# The table's columns on the page (compare.csv has them all): headings as a reader names them.
COLUMNS = {"role": "role", "model": "model", "accuracy": "accuracy", "ci95": "95 % interval", "macro_f1": "macro F1",
           "chosen_by": "chosen by (before the test images)",
           "p_vs_recommended": "p vs recommended", "differs_from_recommended": "differs from recommended",
           "train_seconds": "training s", "inference_images_per_second": "images/s",
           "trainable_params": "trained parameters", "calibration": "ECE, scaled (before)",
           "accuracy_without_leaks": "accuracy without leaked test images"}


def _cell(value) -> dict:
    if isinstance(value, float):
        return {"text": "" if pd.isna(value) else f"{value:.4g}", "num": True}
    if isinstance(value, int):
        return {"text": str(value), "num": True}
    return {"text": "" if value is None else str(value), "num": False}


def _calibration(row: dict) -> str:
    """A model's expected calibration error after temperature scaling, and before it, in one cell."""
    after, before = row.get("ece"), row.get("ece_before")
    if after is None or pd.isna(after):
        return ""
    return f"{after:.3f} ({before:.3f})" if before is not None and not pd.isna(before) else f"{after:.3f}"


def _table(table: pd.DataFrame, recommended: str | None) -> dict:
    shown = table.assign(ci95=[f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(table["accuracy_ci_low"],
                                                                      table["accuracy_ci_high"], strict=True)],
                         calibration=[_calibration(r) for r in table.to_dict("records")])
    columns = [c for c in COLUMNS if c in shown and (c != "accuracy_without_leaks" or shown[c].notna().any())]
    shown = shown[columns]
    rows = [[_cell(v.item() if hasattr(v, "item") else v) for v in row] for row in shown.itertuples(index=False)]
    return {"columns": [COLUMNS[c] for c in columns], "rows": rows,
            "recommended": [m == recommended for m in shown["model"]]}


def _split(split: pd.DataFrame, classes) -> dict:
    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
    columns = [s for s in ("train", "val", "test") if s in counts] + sorted(set(counts) - {"train", "val", "test"})
    counts = counts.reindex(index=list(classes), columns=columns, fill_value=0)
    rows = [(str(name), [int(n) for n in counts.loc[name]]) for name in counts.index]
    rows.append(("all", [int(n) for n in counts.sum()]))
    return {"columns": columns, "rows": rows}


SHOWN_INSIDE = ("gradcam-", "kernels", "block-change")  # on the page; the rest is named, in RUN/inspect/


def _inside(files, said) -> dict:
    names = [Path(f).name for f in files]
    shown = [Path(f) for f in files if Path(f).name.startswith(SHOWN_INSIDE) and Path(f).suffix == ".png"]
    pictures = [{"name": p.name, "caption": caption(p.name),
                 "data": base64.b64encode(p.read_bytes()).decode("ascii")} for p in shown]
    return {"said": list(said), "pictures": pictures,
            "others": [n for n in names if n not in {p.name for p in shown}]}


def _settings(settings: dict) -> list[tuple[str, str]]:
    flat = []
    for key, value in settings.items():
        if isinstance(value, dict):
            flat += [(f"{key}.{k}", json.dumps(v, default=str)) for k, v in value.items()]
        else:
            flat.append((key, json.dumps(value, default=str)))
    return flat


def render_report(*, data: str, verdict: str, table: pd.DataFrame, plots, split: pd.DataFrame, classes,
                  roles: str, seconds: dict, settings: dict, recommended: str | None = None, data_check: str = "",
                  inside: tuple = ((), ()),
                  paired_test: str = "McNemar's paired test of each model's errors against the recommended model's on "
                                     "the same images") -> str:
    """The HTML text of a compare report.

    Args:
        data: what was compared (the ``--data`` given).
        verdict: the one-line verdict, shown first.
        table: the compare table (``compare.csv``'s rows, best first).
        plots: PNG files, embedded in this order with their captions.
        split: the run's split (``path, label, split`` rows).
        classes: class names by label index.
        roles: which split scored and which chose.
        recommended: the model the verdict says to use (its row is marked).
        paired_test: what the table's p-values are, in words.
        seconds: phase -> seconds.
        settings: the options of the run, as ``config.json`` records them.
        data_check: what the check for copies found, in one sentence (shown under the verdict).
        inside: ``(files, lines)`` of ``transfer inspect`` (under ``inspect/``): Grad-CAM and the kernels' and
            blocks' pictures are shown, the others named.
    """
    import jinja2

    from transfer import __version__

    env = jinja2.Environment(loader=jinja2.PackageLoader("transfer.reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    longest = max(seconds.values(), default=0) or 1
    return env.get_template("report.html.j2").render(
        data=data, verdict=verdict, table=_table(table, recommended), eval_split=str(table["eval_split"].iloc[0]),
        plots=[{"name": Path(p).name, "caption": caption(p),
                "data": base64.b64encode(Path(p).read_bytes()).decode("ascii")} for p in plots],
        split=_split(split, list(classes)), classes=list(classes), roles=roles,
        seconds=[(k, float(v), round(12 * float(v) / longest, 2)) for k, v in seconds.items()],
        settings=_settings(settings), version=__version__, inside=_inside(*inside),
        activations_caption=caption("activations-"), paired_test=paired_test, data_check=data_check,
        written=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))


def write_report(path, **parts) -> Path:
    """``report.html`` at ``path`` (atomically), from the parts :func:`render_report` takes."""
    path = Path(path)
    write_text_atomic(path, render_report(**parts))
    return path
