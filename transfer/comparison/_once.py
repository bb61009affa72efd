"""One comparison on one opened split: every strategy's sub-run (or its finished one reused), then the report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from transfer.comparison._config import CompareConfig
from transfer.comparison._result import Comparison


def _prefixed(log, tag):
    return lambda msg: log(f"[{tag}] {msg}")


def _features(run, cfg: CompareConfig, backbone: str, progress, log) -> list:
    """Strategy 2 with ``backbone``, or its finished sub-run when the settings, split and images are the same."""
    from transfer.features import cache_key, classify_run, feature_settings, pipeline_steps
    from transfer.reports import finished_with, open_run, read_results

    folder = run.out / backbone / "classify"
    sub = open_run(run.split, folder, "classify", seed=cfg.seed)
    ecfg = cfg.extract_config(backbone)
    if finished_with(folder, {"extract": feature_settings(ecfg), "requested_classifiers": list(cfg.classifiers),
                              "pipelines": pipeline_steps(cfg.classifiers), "search_size": cfg.search_size,
                              "seed": cfg.seed, "feature_cache_key": cache_key(ecfg, list(run.split["path"]))}):
        log(f"strategy 2 (features + classifiers) with {backbone}: reusing {folder} (same settings, split and images)")
        return read_results(folder)
    log(f"strategy 2 (features + classifiers) with {backbone} -> {folder}")
    return classify_run(sub, ecfg, cfg.classifiers, search_size=cfg.search_size,
                        progress=progress, log=_prefixed(log, "features"))


def _finetuned(run, cfg: CompareConfig, backbone: str, freeze: str, log):
    """Strategy 1 with ``backbone`` and one ``freeze`` value (a finished run resumes to its evaluation)."""
    from transfer.finetuning import finetune_run, finetune_settings
    from transfer.reports import finished_with, open_run, read_results
    from transfer.runtime import slug

    folder = run.out / backbone / f"finetune-{slug(freeze)}"
    sub = open_run(run.split, folder, "finetune", seed=cfg.seed)
    fcfg = cfg.finetune_config(backbone, freeze)
    if finished_with(folder, {"finetune": finetune_settings(fcfg)}):  # and open_run checked its split
        log(f"strategy 1 (fine-tuning, freeze {freeze}) with {backbone}: reusing {folder} (same settings and split)")
        return read_results(folder)[0]
    log(f"strategy 1 (fine-tuning, freeze {freeze}) with {backbone} -> {folder}")
    return finetune_run(sub, fcfg, log=_prefixed(log, f"finetune {freeze}"))


def _scratch(run, cfg: CompareConfig, log):
    """The from-scratch baseline, or its finished sub-run when the settings and split are the same."""
    from transfer.reports import finished_with, open_run, read_results
    from transfer.scratch import scratch_run, sized

    folder = run.out / "scratch"
    sub = open_run(run.split, folder, "scratch", seed=cfg.seed)
    said = []  # the size it chose, said only if it trains (once, after the line that says it does)
    scfg = sized(cfg.scratch_config(), sub.rows("train")["path"], log=said.append)
    if finished_with(folder, {"scratch": dataclasses.asdict(scfg)}):
        log(f"baseline: reusing {folder} (same settings and split)")
        return read_results(folder)[0]
    log(f"baseline: a small CNN from random init -> {folder}")
    for line in said:
        _prefixed(log, "scratch")(line)
    return scratch_run(sub, scfg, log=_prefixed(log, "scratch"))


def _previous_report(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_report(run, cfg: CompareConfig, results, log, seconds: dict, protocol: str = ""):
    """compare.csv, report.html, skipped.csv, the plots and config.json; returns the
    :class:`~transfer.comparison.Comparison` and the models' predictions on the evaluation images.

    ``seconds``: the time each sub-run took here, recorded with the report's own in ``config.json``.
    """
    from transfer.comparison._figures import inside_pictures, make_plots
    from transfer.comparison._verdict import combine, recommended_model, verdict
    from transfer.reports import publishing, write_config, write_report, write_skipped
    from transfer.runtime import write_csv

    start = time.perf_counter()
    table, preds = combine(results, run.out, seed=cfg.seed)
    line = verdict(table, preds, protocol=protocol or f"On one split ({len(preds['_y_true'])} "
                                                      f"{table['eval_split'].iloc[0]} images)")
    check, duplicates = _data_check(results, table, preds, log)
    skipped = dict(run.unused)
    for r in results:  # the first sub-run's reason for a file it could not read
        for path, reason in r.skipped.items():
            skipped.setdefault(path, reason)
    # Plots of models an earlier compare here had and this one has not are removed with the old set.
    with publishing(run.out) as stage:
        previous = _previous_report(run.out).get("plot_inputs") or {}
        drawn, inputs = make_plots(run.out, table, preds, results, cfg, run.classes, stage / "plots",
                                   log=log, previous=previous)
        inside_files, inside_said, inputs["inspect"] = inside_pictures(run.out, table, stage, log,
                                                                       previous.get("inspect"))
        write_skipped(skipped, stage / "skipped.csv")
        if duplicates is not None:
            write_csv(duplicates, stage / "duplicates.csv")
        write_csv(table, stage / "compare.csv")
        seconds["report and plots"] = round(time.perf_counter() - start, 1)
        settings = {**run.settings(), "compare": dataclasses.asdict(cfg), "eval_split": table["eval_split"].iloc[0]}
        use = recommended_model(table, preds)
        write_report(stage / "report.html", data=run.data, verdict=line, table=table, plots=drawn, split=run.split,
                     classes=run.classes, roles=run.roles, seconds=seconds, settings=settings, recommended=use,
                     data_check=check, inside=(inside_files, inside_said))
        write_config(stage / "config.json", {
            **settings, "verdict": line, "recommended_model": use, "duplicates": check,
            "machine_choices": _machine_choices(results, run.out),
            "subruns": list(dict.fromkeys(str(Path(r.run_dir).relative_to(run.out)) for r in results)),
            "plots": [f"plots/{p.name}" for p in drawn], "plot_inputs": inputs, "seconds": seconds,
        })
    done = Comparison(table, line, run.out, "split", recommended=use, seconds=seconds, roles=run.roles,
                      skipped=len(skipped), table_file=run.out / "compare.csv", report=run.out / "report.html",
                      plots=tuple(run.out / "plots" / p.name for p in drawn))
    return done, preds


def _data_check(results, table, preds: dict, log):
    """What the features sub-run's check for copies found: ``(one line, its duplicates.csv)`` (``("", None)``
    without one); each model's accuracy without the test images that have a copy in train or val is filled into
    ``table``'s ``accuracy_without_leaks``."""
    from transfer.features import accuracy_without, leaked_test_images
    from transfer.runtime import read_csv

    checked = [Path(r.run_dir) for r in results if r.strategy == "features"]
    if not checked or not (checked[0] / "duplicates.csv").exists():
        return "", None
    line = str(json.loads((checked[0] / "config.json").read_text()).get("duplicates", ""))
    duplicates = read_csv(checked[0] / "duplicates.csv", dtype=str, keep_default_na=False)
    leaked = leaked_test_images(duplicates)
    if leaked:
        table["accuracy_without_leaks"] = [accuracy_without(preds[m]["true_label"], preds[m]["pred_label"],
                                                            preds[m].index, leaked) for m in table["model"]]
    log(f"data check: {line}")
    return line, duplicates


def _machine_choices(results, out: Path) -> dict:
    """The choices made by timing on this machine (kept per machine, so a re-run makes the same): TensorFlow's
    oneDNN kernels and, per fine-tuning, its precision and the engine of its frozen layers."""
    import os

    choices = {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
    for r in results:
        if r.strategy == "finetune":
            sub = json.loads((Path(r.run_dir) / "config.json").read_text())
            choices[str(Path(r.run_dir).relative_to(out))] = {
                k: sub.get(k) for k in ("precision", "stage2_frozen_layers_engine")}
    return choices


def _compare_once(run, cfg: CompareConfig, progress, log, predictions: list | None = None,
                  mlflow=None, protocol: str = ""):
    """Every strategy on the opened run's one split; the report written; returns its
    :class:`~transfer.comparison.Comparison`.

    ``predictions``, when given, receives each model's predictions on the evaluation images (for the paired
    statistics over repeats).  ``mlflow``: a tracking URI the finished comparison is logged to (see
    :mod:`transfer.reports._tracking`).
    """
    results, seconds = [], {}
    if cfg.drop_duplicates and "features" in cfg.strategies:
        from transfer.features import drop_leaks

        drop_leaks(run, cfg.extract_config(cfg.backbones[0]), progress=progress, log=log)

    def timed(label, step, *args):
        start = time.perf_counter()
        done = step(run, cfg, *args)
        seconds[label] = round(time.perf_counter() - start, 1)
        return done

    for backbone in cfg.backbones:
        if "features" in cfg.strategies:
            results += timed(f"{backbone} features", _features, backbone, progress, log)
        for f in cfg.freeze if "finetune" in cfg.strategies else ():
            results.append(timed(f"{backbone} finetune-{f}", _finetuned, backbone, f, log))
    if "scratch" in cfg.strategies:
        results.append(timed("scratch", _scratch, log))
    done, preds = _write_report(run, cfg, results, log, seconds, protocol)
    if predictions is not None:
        predictions.append(preds)
    if mlflow is not None:
        from transfer.reports import log_compare

        log_compare(mlflow, run.out, done.table, results, done.verdict, done.recommended, log=log)
    return done
