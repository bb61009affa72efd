"""Linear classifiers fitted a shard at a time: features that do not fit in memory, read from the feature cache.

:class:`StreamedSGD` minimises the linear SVM's objective (``loss="squared_hinge"``: LinearSVC's loss and ``C``,
as :class:`~transfer.features._svm.SGDLinearSVC` in memory) or the logistic loss (``loss="log_loss"``) by
``SGDClassifier.partial_fit`` over chunks of rows: the features are standardised by a first pass
(``StandardScaler.partial_fit``), then each epoch visits the chunks in a new order, its rows shuffled, and the
step is divided by 5 when the epoch's training loss stops falling, as scikit-learn's "adaptive" rate does in
memory.  Memory: one chunk (a cache shard holds 4,096 images: 21 MB of 1,280 float32 features) and the model.

``loss="log_loss"`` is logistic regression's objective, not ``LogisticRegression``'s solver: one-vs-rest binary
problems (not a multinomial softmax) fitted by SGD (not L-BFGS to convergence); bench/stream.py measures the
difference on the same images.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transfer.features._svm import STEP, LinearScores
from transfer.runtime import keeps_file_names

ARRAY_CHUNK = 4096  # rows of an in-memory array taken at a time, as many as a cache shard holds


class ArrayChunks:
    """An in-memory ``(X, y)`` as the chunks :class:`StreamedSGD` reads (the grid search's sample, tests)."""

    def __init__(self, x, y, chunk=ARRAY_CHUNK):
        self.x, self.y, self.chunk = np.asarray(x), np.asarray(y), chunk

    def __len__(self):
        return len(self.y)

    def labels(self) -> np.ndarray:
        return self.y

    def chunks(self, seed=None):
        """Chunks of the rows in order, or (``seed``) of all of them shuffled."""
        if seed is None:
            for start in range(0, len(self.y), self.chunk):
                yield self.x[start:start + self.chunk], self.y[start:start + self.chunk]
            return
        order = np.random.default_rng(seed).permutation(len(self.y))
        for start in range(0, len(self.y), self.chunk):
            yield self.x[order[start:start + self.chunk]], self.y[order[start:start + self.chunk]]


MIX = 4  # shards read and shuffled together: a cache written in class order still gives chunks of mixed classes


class ShardChunks:
    """Rows of the feature cache with their labels, a few cache shards at a time (see :func:`cached_chunks`).

    Without ``seed`` each chunk is one shard's rows, in order; with it, :data:`MIX` shards at a time are read in
    a shuffled order, their rows shuffled together and given as chunks of one shard's size.  (Shards written
    since the cache extracts in hash order hold every class; older ones may hold one class each, which SGD,
    shard by shard, would follow: measured on fashion-mnist's 60,000 training images, 0.890 against 0.908.)
    """

    def __init__(self, by_shard: dict, y):
        self.by_shard, self.y = by_shard, np.asarray(y)  # shard -> (rows in the shard, indices into y)

    def __len__(self):
        return len(self.y)

    def labels(self) -> np.ndarray:
        return self.y

    def _read(self, shard):
        rows, index = self.by_shard[shard]
        with np.load(shard, allow_pickle=False) as z:
            return z["features"][rows], self.y[index]

    def chunks(self, seed=None):
        shards = list(self.by_shard)
        if seed is None:
            yield from (self._read(shard) for shard in shards)
            return
        rng = np.random.default_rng(seed)
        shards = [shards[i] for i in rng.permutation(len(shards))]
        for start in range(0, len(shards), MIX):
            parts = [self._read(shard) for shard in shards[start:start + MIX]]
            x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            order, size = rng.permutation(len(y)), max(len(y) // len(parts), 1)
            for at in range(0, len(y), size):
                yield x[order[at:at + size]], y[order[at:at + size]]


def cached_chunks(found, ids, labels) -> ShardChunks:
    """The images ``ids``, all held by the cache (``found``: see ``FeatureStore.find``), with their ``labels``."""
    by_shard: dict = {}
    for index, i in enumerate(ids):
        shard, row = found.rows[i]
        by_shard.setdefault(shard, ([], []))
        by_shard[shard][0].append(row)
        by_shard[shard][1].append(index)
    return ShardChunks(by_shard, labels)


LOSSES = ("squared_hinge", "log_loss")


@keeps_file_names()
def fit_streamed(paths, labels, cfg=None, *, loss="squared_hinge", C=1.0, cache_dir=None, progress=True,
                 log=print) -> StreamedSGD:
    """A linear SVM (or logistic model) on the frozen features of ``paths``, fitted a cache shard at a time.

    For training sets whose features do not fit in memory: the images the cache lacks are extracted into it
    first (as :func:`~transfer.features.extract_features` does), then no more than one shard of features is in
    memory at once.

    Args:
        paths: the training images.
        labels: their labels, one per path.
        cfg: an :class:`~transfer.features.ExtractConfig` (default: the default one).
        loss: ``squared_hinge`` (a linear SVM, LinearSVC's loss) or ``log_loss`` (a logistic model by SGD).
        C: the inverse of the L2 penalty, as LinearSVC's and LogisticRegression's.
        cache_dir: the feature cache (default: the shared one).

    Returns:
        The fitted :class:`StreamedSGD`; its ``skipped_`` lists ``(path, reason)`` for images it could not read.

    Raises:
        TransferError: an unknown ``loss``, a ``C`` that is not positive, or labels that do not match the paths.
    """
    from transfer.errors import TransferError
    from transfer.features._extract import ExtractConfig, cached

    if loss not in LOSSES:
        raise TransferError(f"loss={loss!r} is not one of {', '.join(LOSSES)}: give squared_hinge for a linear SVM "
                            "or log_loss for a logistic model.")
    if not isinstance(C, int | float) or isinstance(C, bool) or not C > 0:
        raise TransferError(f"C={C!r} is not valid: give a positive number (the inverse of the L2 penalty).")
    paths, labels = [str(p) for p in paths], np.asarray(labels)
    if len(paths) != len(labels):
        raise TransferError(f"{len(paths)} paths but {len(labels)} labels: give one label per image.")
    store, ids, found, _ = cached(paths, cfg or ExtractConfig(), cache_dir, progress, log)
    kept = [k for k, i in enumerate(ids) if i in found.rows]
    model = StreamedSGD(loss=loss, C=C, n_jobs=-1).fit(cached_chunks(found, [ids[k] for k in kept], labels[kept]))
    model.skipped_ = [(paths[k], found.skipped[ids[k]]) for k, i in enumerate(ids) if i not in found.rows]
    return model


class StreamedSGD(LinearScores, ClassifierMixin, BaseEstimator):
    """A linear SVM or logistic model fitted by ``partial_fit`` over chunks of standardised features.

    Args:
        loss: ``squared_hinge`` (LinearSVC's) or ``log_loss``.
        C: as LinearSVC's and LogisticRegression's: the L2 penalty is ``alpha = 1 / (C * n_samples)``.
        max_iter, tol, n_iter_no_change: epochs and the adaptive rate's rule (see the module's docstring).
        random_state: seeds the order of chunks and rows.
        n_jobs: threads for the one-vs-rest problems.
    """

    def __init__(self, loss="squared_hinge", C=1.0, max_iter=200, tol=1e-4, n_iter_no_change=5, random_state=0,
                 n_jobs=None):
        self.loss = loss
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y=None):
        """Fit on ``X, y`` (arrays) or on ``X`` alone, a source of chunks (:class:`ShardChunks`)."""
        from sklearn.linear_model import SGDClassifier
        from sklearn.preprocessing import StandardScaler

        source = X if hasattr(X, "chunks") else ArrayChunks(X, y)
        self.classes_ = np.unique(source.labels())
        self.scaler_ = StandardScaler()
        for x, _ in source.chunks():
            self.scaler_.partial_fit(x)
        # Standardised features: the mean squared norm is the number of features that vary (SGDLinearSVC's rule).
        width = max(int((self.scaler_.var_ > 0).sum()), 1)
        sgd = SGDClassifier(loss=self.loss, penalty="l2", alpha=1.0 / (self.C * len(source)),
                            learning_rate="constant", eta0=STEP / width, random_state=self.random_state,
                            n_jobs=self.n_jobs)
        self.n_iter_ = self._epochs(sgd, source)
        self.coef_, self.intercept_ = sgd.coef_, sgd.intercept_
        self.n_features_in_ = len(self.scaler_.mean_)
        return self

    def _epochs(self, sgd, source) -> int:
        rng = np.random.default_rng(self.random_state)
        best, stale = np.inf, 0
        for epoch in range(1, self.max_iter + 1):
            total = 0.0
            for x, y in source.chunks(seed=int(rng.integers(2 ** 31))):
                x = self.scaler_.transform(x)  # the source shuffled the rows
                if hasattr(sgd, "coef_"):  # the loss before this chunk's update: progressive, as SGD's own
                    total += self._loss(sgd, x, y)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sgd.partial_fit(x, y, classes=self.classes_)
            if epoch == 1:
                continue
            # scikit-learn's rule per one-vs-rest problem; the loss here is their sum
            if total > best - self.tol * len(source) * max(len(self.classes_) - (len(self.classes_) == 2), 1):
                stale += 1
            else:
                stale = 0
            best = min(best, total)
            if stale >= self.n_iter_no_change:
                if sgd.eta0 <= 1e-6:
                    break
                sgd.eta0, stale = sgd.eta0 / 5, 0
        return epoch

    def _loss(self, sgd, x, y) -> float:
        """The summed one-vs-rest loss of ``sgd`` on a chunk."""
        scores = sgd.decision_function(x)
        if scores.ndim == 1:
            scores, signs = scores[:, None], np.where(y == self.classes_[1], 1.0, -1.0)[:, None]
        else:
            signs = np.where(y[:, None] == self.classes_[None, :], 1.0, -1.0)
        margins = signs * scores
        if self.loss == "log_loss":
            return float(np.logaddexp(0, -margins).sum())
        return float((np.maximum(0, 1 - margins) ** 2).sum())

    def inputs(self, X):
        check_is_fitted(self)
        return self.scaler_.transform(np.asarray(X))

    def predict_proba(self, X):
        """For ``log_loss``: each one-vs-rest probability, normalised to sum to 1 (SGDClassifier's own rule)."""
        if self.loss != "log_loss":
            raise AttributeError("a linear SVM has no probabilities")
        scores = np.atleast_2d(self.decision_function(X).T).T
        if scores.shape[1] == 1:
            p = 1 / (1 + np.exp(-scores[:, 0]))
            return np.column_stack([1 - p, p])
        p = 1 / (1 + np.exp(-scores))
        return p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)


# classify streams when the features to hold, times this, exceed the memory available: bench/stream.py measured the
# in-memory fits (SGD linear SVM, LogisticRegression) at 2.25x the features' own size on 60,000 images (the array, a
# standardised copy, the solver's), and the Nystroem map adds 1.56x (2,000 float32 per image against 1,280).
STREAM_FACTOR = 4
STREAMED = {"linear_svm": "squared_hinge", "logreg": "log_loss"}  # the classifiers that can fit a shard at a time
C_GRID = np.logspace(-4, 1, 6).tolist()  # logreg's grid (C_LOGREG), for both


def too_large(found, n_images: int, log=print) -> bool:
    """Whether the features of ``n_images`` (held by the cache: ``found``) outgrow this machine's memory when
    fitted in memory, saying so when they do."""
    from transfer.runtime import available_memory

    if not found.rows:
        return False
    shard = next(iter(found.rows.values()))[0]
    with np.load(shard, allow_pickle=False) as z:
        width = z["features"].shape[1]
    need, have = n_images * width * 4 * STREAM_FACTOR, available_memory()
    if need <= have:
        return False
    log(f"the features of {n_images:,} images ({n_images * width * 4 / 2 ** 30:.1f} GiB) need about "
        f"{need / 2 ** 30:.1f} GiB to fit in memory, and {have / 2 ** 30:.1f} GiB is available: the classifiers "
        "fit a cache shard at a time")
    return True


def streamed_classifiers(names, log=print) -> list[str]:
    """The classifiers of ``names`` that can stream; each other one is skipped, saying why.

    Raises:
        TransferError: none of them can.
    """
    from transfer.errors import TransferError

    for name in names:
        if name not in STREAMED:
            log(f"{name} skipped: it needs every training image's features in memory at once; "
                f"{', '.join(STREAMED)} fit a shard at a time")
    kept = [n for n in names if n in STREAMED]
    if not kept:
        raise TransferError(f"None of {', '.join(names)} can fit features larger than memory: choose from "
                            f"{', '.join(STREAMED)} with --classifier, or run on a machine with more memory.")
    return kept
