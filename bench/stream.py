"""Linear models fitted a cache shard at a time against the same fitted in memory: fashion-mnist, Lite0's features.

A stratified subset of Debian's dataset-fashion-mnist (its own train/test split kept, in proportion) runs through
the frozen CNN once into a feature cache (``--cache``: reuse one, e.g. bench/scale.py's ``--out DIR/cache-70000``).
``C`` is chosen as ``classify`` chooses it (a grid search on a stratified 2,000 of the training images), then on
all the training images, each scored on the same test images:

* the linear SVM: LinearSVC's loss by SGD in memory (``SGDLinearSVC``, classify's above 20,000 images) against
  ``StreamedSGD(loss="squared_hinge")`` over the cache's shards;
* the logistic model: ``LogisticRegression`` (L-BFGS, multinomial; classify's ``logreg``) against
  ``StreamedSGD(loss="log_loss")`` over the shards (one-vs-rest by SGD: another estimator of the same objective).

Reported: test accuracy, agreement and McNemar's p of each pair; fit seconds, epochs, seconds per epoch per
100,000 images; the features' size in memory and the peak of Python-tracked memory (numpy's arrays) during each
fit (tracemalloc), which is what grows with the images when fitting in memory and stays flat when streaming.

    python bench/stream.py [--images 70000] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _subset(n: int):
    from transfer.data import resolve_source

    table = resolve_source("fashion-mnist").table
    table = table.assign(split=table["split"].fillna("train"))
    return table.groupby(["split", "label"]).sample(frac=min(1.0, n / len(table)), random_state=0)


def _measured(estimator, *data):
    """``(fitted, seconds, peak MiB tracked)`` of ``estimator.fit(*data)``."""
    tracemalloc.start()
    start = time.perf_counter()
    model = estimator.fit(*data)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return model, seconds, peak


def _chosen_c(estimator, key, x, y) -> float:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from transfer.features._classifiers import search_sample

    rows = search_sample(y, 2000)
    grid = {key: np.logspace(-4, 1, 6).tolist()}
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return GridSearchCV(estimator, grid, cv=cv, n_jobs=-1, refit=False).fit(x[rows], y[rows]).best_params_[key]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=70000)
    parser.add_argument("--cache", type=Path, help="a feature cache to reuse (default: the shared one)")
    parser.add_argument("--classifiers", default="linear_svm,logreg")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transfer import ExtractConfig
    from transfer.features import StreamedSGD, extract_features
    from transfer.features._extract import cached
    from transfer.features._stream import cached_chunks
    from transfer.features._svm import SGDLinearSVC
    from transfer.reports import mcnemar_pvalue

    table = _subset(args.images)
    cfg = ExtractConfig()
    feats = extract_features(list(table["path"]), cfg, cache_dir=args.cache, progress=False, log=lambda _: None)
    rows = table.set_index("path").loc[feats.paths]
    y, where = rows["label"].to_numpy(), rows["split"].to_numpy()
    train, test = np.flatnonzero(where == "train"), np.flatnonzero(where == "test")
    x_train, x_test = feats.features[train], feats.features[test]
    del feats
    print(f"{len(train):,} training and {len(test):,} test images; training features in memory: "
          f"{x_train.nbytes / 2 ** 20:.0f} MiB")
    _, ids, found, _ = cached([str(p) for p in rows.index[train]], cfg, args.cache, False, lambda _: None)
    source = cached_chunks(found, ids, y[train])
    print(f"the cache holds them in {len(source.by_shard)} shards")
    pairs = [("linear_svm", make_pipeline(StandardScaler(), SGDLinearSVC(n_jobs=-1)), "sgdlinearsvc__C",
              "squared_hinge"),
             ("logreg", make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
              "logisticregression__C", "log_loss")]
    for name, in_memory, key, loss in [p for p in pairs if p[0] in args.classifiers.split(",")]:
        c = _chosen_c(in_memory, key, x_train, y[train])
        memory, m_s, m_peak = _measured(in_memory.set_params(**{key: c}), x_train, y[train])
        stream, s_s, s_peak = _measured(StreamedSGD(loss=loss, C=c, n_jobs=-1), source)
        a, b = memory.predict(x_test), stream.predict(x_test)
        per_epoch = s_s / stream.n_iter_ / len(train) * 1e5
        print(f"{name}: C={c:g}")
        print(f"  in memory ({type(memory[-1]).__name__}): accuracy {(a == y[test]).mean():.4f}, fit {m_s:.1f} s, "
              f"peak tracked {m_peak:.0f} MiB")
        print(f"  streamed ({loss}, {stream.n_iter_} epochs): accuracy {(b == y[test]).mean():.4f}, fit {s_s:.1f} s "
              f"({per_epoch:.1f} s an epoch per 100,000 images, {s_s / len(train) * 1e5:.0f} s per 100,000 "
              f"images), peak tracked {s_peak:.0f} MiB")
        print(f"  agreement {(a == b).mean():.4f}, McNemar p = {mcnemar_pvalue(y[test], a, b):.3f}")


if __name__ == "__main__":
    main()
