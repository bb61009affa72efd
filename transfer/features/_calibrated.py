"""Strategy 2's calibration: each fitted pipeline's logits, out-of-fold on its training images, and its temperature.

classify refits on train + val, so no image the final model did not train on is left for calibration: the
temperature is fitted on out-of-fold logits of the images the grid search cross-validated (each from a model of the
chosen parameters that did not train on it), then carried by the saved pipeline (:class:`CalibratedPipeline`).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from transfer.calibration import fit_temperature, log_probabilities, margins_as_logits, smoothed_votes, softmax


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


def out_of_fold_temperature(template, x, y, cv) -> tuple[float, int]:
    """The temperature of ``template``'s parameters, from logits each of which a model that did not train on that
    image gave (the folds ``cv`` of the grid search). Returns ``(temperature, images it was fitted on)``."""
    y = np.asarray(y)
    z, truth = [], []
    for train, held in cv.split(x, y):
        model = clone(template).fit(x[train], y[train])
        classes = list(model.classes_)
        if len(classes) < len(set(y.tolist())):  # a fold that lacks a class gives logits of fewer columns
            continue
        z.append(logits(model, x[held]))
        truth.append(np.searchsorted(classes, y[held]))
    if not z:
        return 1.0, 0
    z, truth = np.concatenate(z), np.concatenate(truth)
    return fit_temperature(z, truth), len(truth)
