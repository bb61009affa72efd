"""The model a cross-validated comparison ships: the recommended strategy's choice, trained on every image.

Cross-validation scores every labelled image, but each fold's models saw only
the other folds' images.  What ``transfer export RUN`` ships is refit on all
of them, with the settings the folds chose, in ``RUN/final/`` (nothing is
scored there: the folds did):

* strategy 2: the classifier the folds chose most often (among those that
  export), its hyper-parameters by the same cross-validated grid search, now
  on every image (``RUN/final/``, a classify run folder);
* fine-tuning: the freeze value the folds chose most often, for the median
  of the folds' kept epochs, without early stopping (no image is left to
  stop on) (``RUN/final/BACKBONE/finetune-FREEZE``);
* the scratch CNN: likewise for the median of its folds' restored epochs
  (``RUN/final/scratch``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd


def refit(source, out: Path, cfg, tables: list, recommended: str, log) -> dict | None:
    """The recommended strategy's choice refit on every image (see the module docstring); what the report records
    of it, or None when that strategy has nothing to refit."""
    if recommended == "features":
        return refit_features(source, out, cfg, tables, log)
    return refit_network(source, out, cfg, tables, recommended, log)
def _most_chosen(tables: list, strategy: str) -> str:
    """The model the folds chose most often for ``strategy`` among those ``transfer export`` ships (any, when the
    folds chose none of those); ties to the simpler (as representatives tie)."""
    from transfer.comparison._representatives import SIMPLER_FIRST, exports
    from transfer.comparison._verdict import INFORMATION

    chosen = pd.concat([t[(t["strategy"] == strategy) & (t["role"] != INFORMATION)] for t in tables])
    shippable = chosen[chosen.apply(exports, axis=1)]
    chosen = shippable if len(shippable) else chosen
    counts = chosen.groupby("model").agg(n=("model", "size"), classifier=("classifier", "first"))
    rank = counts["classifier"].map(lambda c: SIMPLER_FIRST.index(c) if c in SIMPLER_FIRST else len(SIMPLER_FIRST))
    return str(counts.assign(rank=rank).sort_values(["n", "rank"], ascending=[False, True]).index[0])


def refit_features(source, out: Path, cfg, tables: list, log) -> dict | None:
    """Strategy 2's choice refit on every labelled image, in ``out/final`` (a classify run folder: ``transfer
    export``, ``transfer predict --run``): the classifier the folds chose most often, its hyper-parameters chosen by
    the same cross-validated grid search on all the images (no image is scored there: the folds scored them).

    Returns:
        What the report records of it, or None when strategy 2 was not run.
    """
    from transfer.features import extract_features, feature_settings, fit_classifier, save_classifier
    from transfer.reports import publishing, write_config

    if not (pd.concat(tables)["strategy"] == "features").any():
        return None
    model = _most_chosen(tables, "features")
    row = pd.concat(tables).query("model == @model").iloc[0]
    ecfg = cfg.extract_config(row["backbone"])
    feats = extract_features(source.table["path"], ecfg, progress=False, log=log)  # the folds' cached CNN pass
    labels = source.table.set_index("path").loc[feats.paths, "label"].to_numpy()
    fit = fit_classifier(row["classifier"], feats.features, labels, seed=cfg.seed, search_size=cfg.search_size)
    log(f"shipped model: {model} refit on all {len(labels)} labelled images ({fit.best_params}) -> {out / 'final'}")
    with publishing(out / "final") as stage:
        save_classifier(fit.estimator, stage / "classifiers" / f"{fit.name}.skops")
        pd.DataFrame(fit.search).to_csv(stage / "search.csv", index=False)
        split = pd.DataFrame({"path": feats.paths, "label": labels, "split": "train", "source_split": ""})
        split.to_csv(stage / "split.csv", index=False)  # every image trains it; none is scored here
        write_config(stage / "config.json", {
            "command": "classify", "data": source.name, "extract": feature_settings(ecfg), "classifiers": [fit.name],
            "best_classifier": fit.name, "best_params": fit.best_params, "classes": sorted(set(labels)),
            "refit_on": int(len(labels)), "refit_of": model, "scored": "none here: the folds scored every image",
            "temperatures": {fit.name: fit.temperature}, "grids_searched": {fit.name: fit.grid}})
    return {"strategy": "features", "model": model, "run_dir": "final", "classifier": fit.name,
            "images": int(len(labels)), "params": {k: str(v) for k, v in fit.best_params.items()},
            "temperature": fit.temperature}


def _kept_epochs(fold: Path, row) -> int:
    """The epochs a fold's network kept: fine-tuning's best epoch (0 when the head alone was kept), the scratch
    CNN's restored epoch."""
    folder = fold / row["run_dir"]
    if row["strategy"] == "scratch":
        from transfer.scratch import kept_epoch

        return kept_epoch(pd.read_csv(folder / "history.csv"))
    meta = json.loads((folder / "train_state" / "state.json").read_text())
    if meta.get("best_stage") == "finetune" and meta.get("best_checkpoint"):
        return int(str(meta["best_checkpoint"]).rsplit("-", 1)[1])
    return 0 if meta.get("best_stage") == "head" else len(meta.get("history", []))


def refit_network(source, out: Path, cfg, tables: list, strategy: str, log) -> dict:
    """Fine-tuning's or the scratch CNN's choice trained on every image for the median of the folds' kept epochs."""
    from transfer.reports import open_run

    model = _most_chosen(tables, strategy)
    rows = [(i, t[t["model"] == model].iloc[0]) for i, t in enumerate(tables, 1) if (t["model"] == model).any()]
    epochs = int(np.median([_kept_epochs(out / f"fold-{i}", r) for i, r in rows]))
    temperature = _folds_temperature(out, rows)
    rows = [r for _, r in rows]
    split = source.table.assign(split="train", source_split="")[["path", "label", "split", "source_split"]]
    split.attrs["source"] = source.name
    folder = out / "final" / rows[0]["run_dir"]
    log(f"shipped model: {model} trained on all {len(split)} labelled images for {epochs} epochs (the folds' "
        f"median) -> {folder}")
    run = open_run(split, folder, strategy, seed=cfg.seed, scored=False)
    if strategy == "finetune":
        from transfer.finetuning import finetune_run

        fcfg = dataclasses.replace(cfg.finetune_config(rows[0]["backbone"], rows[0]["freeze"]), epochs=epochs,
                                   patience=0)
        finetune_run(run, fcfg, log=log)
    else:
        from transfer.scratch import scratch_run, sized

        scfg = sized(dataclasses.replace(cfg.scratch_config(), epochs=max(epochs, 1), patience=max(epochs, 1)),
                     run.rows("train")["path"], log=lambda _: None)
        scratch_run(run, scfg, log=log)
    # Nothing is left to calibrate on: the folds' temperatures, each fitted inside its fold's training part.
    from transfer.reports import write_config

    config = json.loads((folder / "config.json").read_text())
    write_config(folder / "config.json", {**config, "temperature": temperature,
                                          "temperature_from": "the median of the folds' temperatures"})
    return {"strategy": strategy, "model": model, "run_dir": str(folder.relative_to(out)), "images": len(split),
            "epochs": epochs, "temperature": temperature}


def _folds_temperature(out: Path, rows) -> float:
    """The median of the temperatures the folds' networks were calibrated with (1.0 where none was)."""
    found = []
    for i, row in rows:
        try:
            found.append(float(json.loads((out / f"fold-{i}" / row["run_dir"] / "config.json").read_text())
                               .get("temperature") or 1.0))
        except (OSError, ValueError):
            continue
    return float(np.median(found)) if found else 1.0
