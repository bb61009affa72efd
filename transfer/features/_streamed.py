"""``classify`` when the features do not fit in memory: linear models searched on a sample, refit shard by shard.

The grid search sees a stratified sample of the training images read from the cache (``--search-size``, as in
memory) and cross-validates the estimator that is refit: :class:`~transfer.features._stream.StreamedSGD`, whose
refit then reads the training images' features one cache shard at a time; the evaluation images are scored a
shard at a time too.  Reports are those of an in-memory ``classify``, with ``config.json``'s ``streamed`` set.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from transfer.features._stream import C_GRID, STREAMED, StreamedSGD, cached_chunks

SOLVER = "{loss} by SGD, a cache shard at a time"


def _rows(run, paths, ids, found):
    """Readable images by split: ``{split: (ids, labels)}``, and the unreadable ``{path: reason}``."""
    table = run.split.set_index("path")
    kept = [(p, i) for p, i in zip(paths, ids, strict=True) if i in found.rows]
    skipped = {p: found.skipped[i] for p, i in zip(paths, ids, strict=True) if i not in found.rows}
    where = table.loc[[p for p, _ in kept], ["label", "split"]]
    rows = {}
    for name in ("train", "val", "test"):
        chosen = (where["split"] == name).to_numpy()
        rows[name] = ([i for (_, i), c in zip(kept, chosen, strict=True) if c],
                      where["label"].to_numpy()[chosen], [p for (p, _), c in zip(kept, chosen, strict=True) if c])
    return rows, skipped


def _search(name, store, found, train, search_size, seed, n_jobs=-1):
    """The grid search of ``C`` on a stratified sample of the training images (extended past an edge, as in memory)
    and the temperature from its folds: ``(chosen C, cv_results_ table, grid searched, temperature)``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from transfer.features._calibrated import out_of_fold_temperature
    from transfer.features._search import search, search_sample

    ids, y, _ = train
    rows = search_sample(y, search_size, seed)
    x, y = store.read([ids[r] for r in rows], found), y[rows]
    cv = StratifiedKFold(n_splits=min(5, int(pd.Series(y).value_counts().min())), shuffle=True, random_state=seed)

    def grid_search(points):
        return GridSearchCV(StreamedSGD(loss=STREAMED[name]), points, cv=cv, n_jobs=n_jobs, refit=False).fit(x, y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        table, best, grid = search(grid_search, {"C": C_GRID})
        temperature, _ = out_of_fold_temperature(StreamedSGD(loss=STREAMED[name], C=best["C"]), x, y, cv)
    table["params"] = table["params"].map(str)
    table.insert(0, "classifier", name)
    table.insert(1, "searched_on", len(y))
    return best["C"], table, grid, temperature


def _score(model, found, evaluation):
    """Predictions, calibrated probabilities and the probabilities before calibration of ``model`` on the evaluation
    images, read a shard at a time."""
    ids, y, _ = evaluation
    pred, scores, before = np.empty(len(ids), dtype=object), None, None
    for x, index in cached_chunks(found, ids, np.arange(len(ids))).chunks():
        chunk = model.predict_proba(x)
        if scores is None:
            scores, before = np.empty((len(ids), chunk.shape[1])), np.empty((len(ids), chunk.shape[1]))
        pred[index], scores[index], before[index] = model.predict(x), chunk, model.uncalibrated_proba(x)
    return pred.astype(np.asarray(y).dtype), scores, before


def classify_streamed(run, cfg, names, paths, cached, *, search_size, requested=None, log=print) -> list:
    """Strategy 2 in an opened run folder whose features are too large for memory (see the module's docstring).

    Args:
        run, cfg, names, search_size: as :func:`~transfer.features.classify_run`'s (``names``: those that stream;
            ``requested``: those asked for).
        paths: the images, train, val, test in turn; ``cached``: :func:`~transfer.features._extract.cached`'s
            answer for them.
    """
    from sklearn.pipeline import Pipeline

    from transfer.features._calibrated import calibrated
    from transfer.features._classifiers import grid_edges
    from transfer.features._extract import _key, cnn_timing, feature_settings
    from transfer.features._saving import save_classifier
    from transfer.reports import metrics_table, publishing, write_reports
    from transfer.runtime import write_csv

    store, ids, found, missing = cached
    rows, skipped = _rows(run, paths, ids, found)
    run.check_readable(skipped)
    fit_on = rows["train"]
    if run.eval_split == "test":  # refit on train + val, as in memory
        fit_on = (rows["train"][0] + rows["val"][0], np.concatenate([rows["train"][1], rows["val"][1]]), None)
    seconds, rate = cnn_timing(found, ids)
    with publishing(run.out) as stage:
        results, searches, edges, searched, grids = [], [], {}, {}, {}
        for name in names:
            n = len(rows["train"][0])
            log(f"fitting {name} (grid search on {min(search_size or n, n):,} of {n:,} training images, the refit "
                "a shard at a time)...")
            start = time.perf_counter()
            c, table, grid, temperature = _search(name, store, found, rows["train"], search_size, run.seed)
            searched[name] = round(time.perf_counter() - start, 2)
            model = StreamedSGD(loss=STREAMED[name], C=c, n_jobs=-1)
            model = calibrated(Pipeline([("streamedsgd", model.fit(cached_chunks(found, fit_on[0], fit_on[1])))]),
                               temperature)
            edge = grid_edges(grid, {"C": c})
            if edge:
                edges[name] = edge
                log(f"warning: {name} chose {', '.join(edge)}, still at the edge of its grid after extending it: "
                    "the best value may lie beyond it")
            grids[name] = grid
            results.append(_result(run, cfg, name, model, table, time.perf_counter() - start, rows, fit_on, found,
                                   (seconds, rate, skipped)))
            save_classifier(model, stage / "classifiers" / f"{name}.skops")
            searches.append(table)
        write_csv(pd.concat(searches), stage / "search.csv")
        write_reports(run, results, {
            "extract": feature_settings(cfg), "engine": cfg.engine, "executor": cfg.executor, "classifiers": names,
            "requested_classifiers": list(requested or names),
            "pipelines": {n: ["StreamedSGD", STREAMED[n], str(C_GRID)] for n in names},
            "search_size": search_size, "best_classifier": metrics_table(results)["classifier"].iloc[0],
            "grid_edges": edges, "features_from_cache": not missing, "feature_cache_key": _key(cfg, ids),
            "features_dir": str(store.folder.parent), "search_seconds": searched, "streamed": True,
            "solvers": {n: SOLVER.format(loss=STREAMED[n]) for n in names}, "grids_searched": grids,
            "temperatures": {r.classifier: r.temperature for r in results},
        }, folder=stage)
    return results


def _result(run, cfg, name, model, table, fit_seconds, rows, fit_on, found, cnn):
    from transfer.features._classifiers import fitted_parameter_count
    from transfer.reports import Result

    seconds, rate, skipped = cnn
    evaluation = rows[run.eval_split]
    start = time.perf_counter()
    pred, scores, before = _score(model, found, evaluation)
    per_image = 1 / rate + (time.perf_counter() - start) / max(len(pred), 1)
    chosen = table[table["chosen"]].iloc[0]
    return Result(
        strategy="features", backbone=cfg.backbone, classifier=name, eval_split=run.eval_split,
        paths=evaluation[2], y_true=evaluation[1], y_pred=pred,
        classes=sorted(set().union(*(r[1] for r in rows.values()))), scores=scores, uncalibrated=before,
        temperature=model.temperature, layer=cfg.layer, params={"C": model.steps[-1][1].C}, n_train=len(fit_on[0]),
        fit_seconds=fit_seconds, extract_seconds=seconds, feature_dim=int(model.n_features_in_),
        inference_images_per_second=1 / per_image if per_image > 0 else float("nan"),
        trainable_params=fitted_parameter_count(model), run_dir=run.out, skipped=skipped,
        selection_score=float(chosen["mean_test_score"]),
        selected_on=f"cross-validation on {int(chosen['searched_on'])} training images",
        solver=SOLVER.format(loss=STREAMED[name]))
