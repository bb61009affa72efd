"""SVMs at any size: LinearSVC's objective by stochastic gradient descent, and an RBF kernel by a Nystroem map.

``LinearSVC`` (liblinear) copies the features in double precision and in a
sparse format of its own (3.7 GiB for 60,000 images), and an exact kernel
``SVC``'s fit grows as n^2.3.  Above their limits a classifier of the same
name runs instead:

* :class:`SGDLinearSVC`: the same loss (squared hinge, L2 penalty) and the
  same ``C``, minimised by SGD on float32 features without a copy:
  ``LinearSVC`` minimises ``1/2 |w|^2 + C * sum(loss)``, which is
  ``alpha/2 |w|^2 + mean(loss)`` with ``alpha = 1 / (C * n)``.  Searched and
  refit as one estimator, ``C`` meaning what it means to ``LinearSVC``.
* :class:`ChunkedNystroem` then :class:`SGDLinearSVC`: the RBF kernel on
  ``n_components`` landmark images (Williams & Seeger, NIPS 2001), the map
  computed a chunk of images at a time into one float32 array.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

CHUNK = 4096  # images mapped at a time: 4,096 x 2,000 float32 kernel values are 33 MB
STEP = 0.06  # SGD's first step times the mean squared norm of the features (see SGDLinearSVC.fit)


class LinearScores:
    """``decision_function`` and ``predict`` of a fitted linear model (``coef_``, ``intercept_``, ``classes_``) on
    :meth:`inputs` of ``X`` (the features as they are; a model holding its own scaler standardises them)."""

    def inputs(self, X):
        return np.asarray(X)

    def decision_function(self, X):
        check_is_fitted(self)
        scores = self.inputs(X) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X):
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]


class SGDLinearSVC(LinearScores, ClassifierMixin, BaseEstimator):
    """A linear SVM with ``LinearSVC``'s loss and ``C``, fitted by SGD on float32 features.

    Args:
        C: as ``LinearSVC``'s: the penalty ``alpha`` of SGD is ``1 / (C * n_samples)``.
        max_iter, tol, n_iter_no_change: SGD's epochs and stopping rule (scikit-learn's "adaptive" rate: the step
            is divided by 5 when the training loss has not improved by ``tol`` for ``n_iter_no_change`` epochs).
        random_state: seeds the shuffling.
        n_jobs: threads for the one-vs-rest problems (the search's workers run one each; the refit all cores).
    """

    def __init__(self, C=1.0, max_iter=200, tol=1e-4, n_iter_no_change=5, random_state=0, n_jobs=None):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import SGDClassifier

        X = np.asarray(X)
        # The step, scaled to the features' squared norm (the gradient's Lipschitz constant grows with it): swept on
        # standardised digits, 0.06 / mean |x|^2 reached LinearSVC's objective and accuracy at every C of the grid,
        # 3x and 10x larger steps fell short at C >= 0.01; scikit-learn's "optimal" rate diverged with this loss.
        step = STEP / max(float(np.mean(np.einsum("ij,ij->i", X, X))), 1e-12)
        sgd = SGDClassifier(loss="squared_hinge", penalty="l2", alpha=1.0 / (self.C * len(X)), max_iter=self.max_iter,
                            tol=self.tol, n_iter_no_change=self.n_iter_no_change, learning_rate="adaptive",
                            eta0=step, random_state=self.random_state, n_jobs=self.n_jobs)
        with warnings.catch_warnings():  # an epoch cap reached at some grid point is what the search judges
            warnings.simplefilter("ignore", ConvergenceWarning)
            sgd.fit(X, y)
        self.classes_, self.coef_, self.intercept_ = sgd.classes_, sgd.coef_, sgd.intercept_
        self.n_features_in_, self.n_iter_ = X.shape[1], sgd.n_iter_
        return self


class ChunkedNystroem(TransformerMixin, BaseEstimator):
    """The RBF kernel against ``n_components`` landmark rows, as features: scikit-learn's ``Nystroem``, its
    map computed :data:`CHUNK` rows at a time into one float32 array (one copy of the mapped features)."""

    def __init__(self, gamma="scale", n_components=2000, random_state=0):
        self.gamma = gamma
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y=None):
        from sklearn.kernel_approximation import Nystroem

        X = np.asarray(X)
        # "scale" as SVC reads it: 1 / (n_features * X.var())
        self.gamma_ = 1.0 / (X.shape[1] * float(X.var())) if self.gamma == "scale" else float(self.gamma)
        exact = Nystroem(kernel="rbf", gamma=self.gamma_, n_components=min(self.n_components, len(X)),
                         random_state=self.random_state).fit(X)
        self.components_ = exact.components_.astype(np.float32)
        self.normalization_ = exact.normalization_.astype(np.float32)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float32)
        out = np.empty((len(X), self.normalization_.shape[0]), np.float32)
        c2 = (self.components_ ** 2).sum(axis=1)
        for start in range(0, len(X), CHUNK):
            part = X[start:start + CHUNK]
            d2 = (part ** 2).sum(axis=1)[:, None] - 2 * part @ self.components_.T + c2[None, :]
            out[start:start + CHUNK] = np.exp(-self.gamma_ * np.maximum(d2, 0)) @ self.normalization_.T
        return out


def record_gamma(estimator, x_fit):
    """An exact SVC fitted with ``gamma="scale"`` gets the number it used as its ``gamma`` (the same predictions):
    ``transfer export`` writes the kernel with it, and scikit-learn keeps it otherwise only in a private attribute.
    "scale" is ``1 / (n_features * X.var())`` of the features the SVC saw, as ``SVC.fit`` computes it."""
    svc = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    if type(svc).__name__ != "SVC" or svc.gamma != "scale":
        return
    seen = np.asarray(estimator[:-1].transform(x_fit), np.float64)
    variance = seen.var()
    svc.gamma = 1.0 / (seen.shape[1] * variance) if variance != 0 else 1.0


def linear_svm_sgd(n_samples):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), SGDLinearSVC())


def rbf_svm_nystroem(n_samples, n_components):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    return make_pipeline(Normalizer(), ChunkedNystroem(n_components=n_components), SGDLinearSVC())
