"""Re-decide a finished compare run under this version's rules, without training anything.

    python bench/rescore.py RUN [RUN ...]

Reads each sub-run's records (``read_results``) and the scores its choices were made by, as written before the
scored images were seen: strategy 2's mean cross-validated accuracy of each classifier's chosen parameters
(``search.csv``), a fine-tuning's kept epoch's validation accuracy (``train_state/state.json``), the scratch CNN's
validation accuracy at its lowest validation loss (``history.csv``); then prints the table and the verdict this
version writes for the same models. For the before/after of a verdict rule on the same trained models: the
training's own run-to-run noise is then out of the comparison.
"""

import json
import sys
from pathlib import Path

import pandas as pd

from transfer.comparison._verdict import combine, verdict
from transfer.reports import read_results


def _scores(folder: Path, results):
    for r in results:
        if r.strategy == "features":
            search = pd.read_csv(folder / "search.csv")
            r.selection_score = float(search.loc[search["classifier"] == r.classifier, "mean_test_score"].max())
            r.selected_on = "cross-validation on train"
        elif r.strategy == "finetune":
            best = json.loads((folder / "train_state" / "state.json").read_text()).get("best")
            r.selection_score = -float(best[0]) if isinstance(best, list) and len(best) == 2 else float("nan")
            r.selected_on = "validation accuracy of the kept epoch"
        else:
            h = pd.read_csv(folder / "history.csv")
            r.selection_score = float(h.loc[h["val_loss"].idxmin(), "val_accuracy"])
            r.selected_on = "validation accuracy of the kept epoch"
    return results


def main(runs):
    for run in map(Path, runs):
        config = json.loads((run / "config.json").read_text())
        results = []
        for sub in config["subruns"]:
            results += _scores(run / sub, read_results(run / sub))
        table, preds = combine(results, run)
        cols = ["role", "model", "accuracy", "selection_score", "train_seconds", "p_vs_recommended",
                "differs_from_recommended"]
        print(f"== {run}\n{table[cols].to_string(index=False)}")
        print("before:", config["verdict"])
        print("after: ", verdict(table, preds, f"On one split ({len(preds['_y_true'])} test images)"))


if __name__ == "__main__":
    main(sys.argv[1:])
