"""Strategy 2's calibration: each fitted pipeline's logits, out-of-fold on its training images, and its temperature.

classify refits on train + val, so no image the final model did not train on is left for calibration: the
temperature is fitted on out-of-fold logits of the images it is refit on (10 folds, each from a model of the chosen
parameters that did not train on it; a stratified sample of ``--search-size`` of them above that), then carried by
the saved pipeline (:class:`CalibratedPipeline`). Folds as large as possible: a model trained on fewer images is
less sure of itself, and its temperature too soft for the refit (measured on the digits demo's features, the
temperature of the training split's 5 folds left linear_svm's test ECE at 0.169, train + val's 10 folds at 0.118).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from transfer.calibration import fit_temperature, log_probabilities, margins_as_logits, smoothed_votes, softmax

CALIBRATION_FOLDS = 10


def logits(estimator, x) -> np.ndarray:
    """The fitted classifier's scores on ``x`` as logits (n, classes), whose softmax is its uncalibrated probability.

    An MLP's log-probabilities; kNN's vote fractions with one vote added to every class; every other model's
    decision values (a logistic regression's are its logits; an SVM's margins, votes included for SVC).
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    model = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    if isinstance(model, KNeighborsClassifier):
        return smoothed_votes(Pipeline.predict_proba(estimator, x) if isinstance(estimator, Pipeline)
                              else estimator.predict_proba(x), model.n_neighbors)
    if isinstance(model, MLPClassifier):
        return log_probabilities(Pipeline.predict_proba(estimator, x))
    return margins_as_logits(estimator.decision_function(x))


class CalibratedPipeline(Pipeline):
    """A fitted pipeline whose probabilities are ``softmax(logits / temperature)`` (see :func:`logits`).

    Its predictions are the pipeline's own: a temperature changes no argmax.
    """

    def __init__(self, steps, *, temperature=1.0, memory=None, transform_input=None, verbose=False):
        # As every scikit-learn estimator: the parameters kept as given (Pipeline's own differ across versions).
        self.steps, self.memory, self.transform_input, self.verbose = steps, memory, transform_input, verbose
        self.temperature = temperature

    def predict_proba(self, X, **params):  # noqa: N803 - scikit-learn's name
        """Calibrated probabilities, columns in ``classes_`` order."""
        return softmax(logits(self, X) / self.temperature)

    def uncalibrated_proba(self, X):  # noqa: N803
        """The probabilities before calibration: kNN's vote fractions, every other model's ``softmax(logits)``."""
        from sklearn.neighbors import KNeighborsClassifier

        if isinstance(self.steps[-1][1], KNeighborsClassifier):
            return Pipeline.predict_proba(self, X)
        return softmax(logits(self, X))


def calibrated(estimator, temperature: float) -> CalibratedPipeline:
    """The fitted pipeline ``estimator`` carrying ``temperature`` (its fitted steps shared, not copied)."""
    return CalibratedPipeline(estimator.steps, temperature=float(temperature))


def _fold_logits(template, x, y, train, held):
    model = clone(template).fit(x[train], y[train])
    return list(model.classes_), logits(model, x[held])


def out_of_fold_temperature(template, x, y, cv, n_jobs=None) -> tuple[float, int]:
    """The temperature of ``template``'s parameters, from logits each of which a model that did not train on that
    image gave (the folds ``cv``, fitted ``n_jobs`` at a time). Returns ``(temperature, images it was fitted on)``."""
    # scikit-learn's Parallel, not joblib's: it carries the caller's warning filters into the workers, so an
    # iteration cap the grid search already judged is not printed once per fold.
    from sklearn.utils.parallel import Parallel, delayed

    y = np.asarray(y)
    folds = list(cv.split(x, y))
    found = Parallel(n_jobs=n_jobs)(delayed(_fold_logits)(template, x, y, train, held) for train, held in folds)
    every = sorted(set(y.tolist()))
    z, truth = [], []
    for (classes, fold_z), (_, held) in zip(found, folds, strict=True):
        if classes != every:  # a fold that lacks a class gives logits of fewer columns
            continue
        z.append(fold_z)
        truth.append(np.searchsorted(classes, y[held]))
    if not z:
        return 1.0, 0
    z, truth = np.concatenate(z), np.concatenate(truth)
    return fit_temperature(z, truth), len(truth)


def refit_temperature(template, x, y, search_size, seed, n_jobs=None) -> tuple[float, int]:
    """The temperature of the chosen parameters (``template``), out-of-fold on the images refit on (``x``, ``y``),
    or a stratified sample of ``search_size`` of them: :data:`CALIBRATION_FOLDS` folds (fewer where a class has
    fewer images)."""
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from transfer.features._search import search_sample

    rows = search_sample(y, search_size, seed)
    x, y = x[rows], np.asarray(y)[rows]
    folds = min(CALIBRATION_FOLDS, int(pd.Series(y).value_counts().min()))
    return out_of_fold_temperature(template, x, y, StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs)
