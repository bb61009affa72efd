"""The SVMs' solvers that scale against the exact ones, on the same images: fashion-mnist, Lite0's pooled features.

A stratified subset of Debian's dataset-fashion-mnist (its own train/test split kept, in proportion) runs through
the frozen CNN once (the shared feature cache); then for ``linear_svm`` and ``rbf_svm`` the grid search and refit
of the exact solver (LinearSVC, SVC) and of the one that runs above the exact limit (LinearSVC's loss by SGD;
a Nystroem map then that SGD), both on the same training images, each scored on the same test images: accuracy,
McNemar's p between the two, agreement, search and refit seconds, and the largest resident memory of this process.

    python bench/svm.py [--images 7000] [--classifiers linear_svm,rbf_svm]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _subset(n: int, seed: int = 0):
    from transfer.data import resolve_source

    table = resolve_source("fashion-mnist").table
    share = n / len(table)
    return table.groupby(["split", "label"]).sample(frac=share, random_state=seed).reset_index(drop=True)


def _fit(name, x, y, train, test, large: bool):
    from transfer.features import _classifiers as classifiers

    spec = classifiers.CLASSIFIERS[name]
    if large:
        classifiers.CLASSIFIERS[name] = dataclasses.replace(spec, max_train=0)
    try:
        fit = classifiers.fit_classifier(name, x[train], y[train], seed=0)
    finally:
        classifiers.CLASSIFIERS[name] = spec
    return fit, fit.estimator.predict(x[test])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=7000)
    parser.add_argument("--classifiers", default="linear_svm,rbf_svm")
    args = parser.parse_args()
    from transfer import ExtractConfig, extract_features
    from transfer.reports import mcnemar_pvalue

    table = _subset(args.images)
    start = time.perf_counter()
    feats = extract_features(list(table["path"]), ExtractConfig(), progress=False, log=lambda line: None)
    print(f"{len(table):,} fashion-mnist images, features in {time.perf_counter() - start:.0f} s "
          f"({feats.features.shape[1]} per image)")
    rows = table.set_index("path").loc[feats.paths]
    y, where = rows["label"].to_numpy(), rows["split"].to_numpy()
    train, test = np.flatnonzero(where == "train"), np.flatnonzero(where == "test")
    print(f"train {len(train):,}, test {len(test):,}")
    for name in args.classifiers.split(","):
        (exact, a), (large, b) = (_fit(name, feats.features, y, train, test, flag) for flag in (False, True))
        for fit, pred in ((exact, a), (large, b)):
            print(f"{name:10} {fit.solver:55} accuracy {(pred == y[test]).mean():.4f}  "
                  f"search {fit.search_seconds:6.1f} s  search+refit {fit.fit_seconds:6.1f} s  chose {fit.best_params}")
        print(f"{name:10} agreement {(a == b).mean():.4f}, McNemar p = {mcnemar_pvalue(y[test], a, b):.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak resident memory of this process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
