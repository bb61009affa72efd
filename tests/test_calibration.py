"""Calibrated probabilities (temperature scaling) and grids that find their optimum."""

import itertools

import numpy as np
import pandas as pd
import pytest

from transfer.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    scaled,
    softmax,
)


def _drawn(n=4000, classes=4, seed=0):
    """Logits and labels drawn from their softmax: probabilities that are calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, classes))
    p = softmax(z)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return z, y


@pytest.mark.parametrize("factor", [4.0, 0.25], ids=["over-confident", "under-confident"])
def test_a_model_made_over_or_under_confident_has_a_lower_ece_after_scaling(factor):
    z, y = _drawn()
    fit_z, fit_y, test_z, test_y = z[:2000] * factor, y[:2000], z[2000:] * factor, y[2000:]
    t = fit_temperature(fit_z, fit_y)
    assert t == pytest.approx(factor, rel=0.15)  # the factor it was distorted by
    before, after = softmax(test_z), softmax(test_z / t)
    assert expected_calibration_error(after, test_y) < expected_calibration_error(before, test_y) / 2
    assert log_loss(after, test_y) < log_loss(before, test_y)
    assert brier_score(after, test_y) < brier_score(before, test_y)
    assert (after.argmax(1) == before.argmax(1)).all()  # no prediction changes


def test_a_calibration_set_without_an_error_is_not_pushed_to_certainty():
    """Every image right: the likelihood keeps rising as T falls; T stops where the mean confidence is Laplace's
    (correct + 1) / (n + 2)."""
    z = np.array([[2.0, 0.0], [0.0, 1.5], [1.0, 0.0], [0.0, 3.0]] * 5)
    y = np.array([0, 1, 0, 1] * 5)
    t = fit_temperature(z, y)
    assert softmax(z / t).max(axis=1).mean() == pytest.approx(21 / 22, abs=1e-6)


def test_ece_of_known_bins():
    probs = np.array([[0.9, 0.1]] * 10 + [[0.3, 0.7]] * 10)
    y = np.array([0] * 9 + [1] + [1] * 5 + [0] * 5)  # bin 0.9: 90 % right (gap 0); bin 0.7: 50 % right (gap 0.2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.1)
    assert brier_score(np.eye(2)[y], y) == 0 and log_loss(np.eye(2)[y], y) == pytest.approx(0, abs=1e-12)


def test_a_network_s_probabilities_keep_their_order_and_sum_to_one():
    p = softmax(np.random.default_rng(1).normal(0, 3, (50, 5)))
    for t in (0.3, 1.0, 4.0):
        q = scaled(p, t)
        assert np.allclose(q.sum(1), 1) and (q.argmax(1) == p.argmax(1)).all()
    assert np.allclose(scaled(p, 1.0), p)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), np.array([str(t) for t in d.target])


@pytest.mark.parametrize("name", ["linear_svm", "rbf_svm", "knn"])
def test_a_classifier_s_scores_become_probabilities_that_mean_what_they_say(digits, name):
    """Decision values and vote fractions, scaled by the temperature of out-of-fold scores on the training images
    alone: a lower ECE and log-loss on unseen images, the same predictions, no probability of 0 (kNN smoothed)."""
    from transfer.calibration import calibration_metrics
    from transfer.features._classifiers import fit_classifier

    x, y = digits
    fit = fit_classifier(name, x[:500], y[:500])
    test_x, test_y = x[1000:], np.searchsorted(fit.estimator.classes_, y[1000:])
    after = fit.estimator.predict_proba(test_x)
    measured = calibration_metrics(fit.estimator.uncalibrated_proba(test_x), after, test_y)
    assert measured["log_loss"] < measured["log_loss_before"]
    assert measured["ece"] < measured["ece_before"] or name == "knn"  # kNN's votes: its log-loss is the gain
    assert (fit.estimator.classes_[after.argmax(1)] == fit.estimator.predict(test_x)).all()
    assert (after > 0).all() and fit.calibrated_on == 500


class _Searched:
    def __init__(self, grid, score):
        keys = list(grid)
        rows = [dict(zip(keys, v, strict=True)) for v in itertools.product(*grid.values())]
        self.cv_results_ = {"params": rows, "mean_test_score": [score(r) for r in rows]}


def test_a_grid_extension_finds_an_optimum_planted_beyond_the_first_grid():
    from transfer.features._search import grid_edges, search

    grid = {"logisticregression__C": np.logspace(-4, 1, 6).tolist(), "other": ["a", "b"]}
    calls = []

    def make(points):
        calls.append(points)
        return _Searched(points, lambda r: -abs(np.log10(r["logisticregression__C"]) - 3))

    table, best, searched = search(make, grid)
    assert best["logisticregression__C"] == pytest.approx(1000) and not grid_edges(searched, best)
    assert searched["logisticregression__C"][-3:] == [100.0, 1000.0, 10000.0] and len(calls) == 4
    assert table["chosen"].sum() == 1 and len(table) == 2 * 9


def test_an_optimum_beyond_three_extensions_stays_at_the_edge_and_says_so():
    from transfer.features._search import grid_edges, search

    _, best, searched = search(lambda g: _Searched(g, lambda r: r["C"]), {"C": [0.1, 1.0, 10.0]})
    assert best["C"] == pytest.approx(1e4) and grid_edges(searched, best) == ["C=10000 (grid 0.1-10000)"]


def test_a_flat_plateau_chooses_its_middle_not_the_grid_order():
    """On few images accuracy ties across much of a grid: the middle of the tied values, not the smallest C."""
    from transfer.features._search import choose

    grid = {"svc__C": [0.1, 1.0, 10.0, 100.0], "svc__gamma": ["scale", 1e-4]}
    rows = [dict(svc__C=c, svc__gamma=g) for c in grid["svc__C"] for g in grid["svc__gamma"]]
    table = pd.DataFrame({"params": rows, "mean_test_score": [0.5 if r["svc__C"] == 0.1 else 0.9 for r in rows]})
    assert table["params"].iloc[choose(table, grid)] == {"svc__C": 10.0, "svc__gamma": "scale"}


def test_the_calibration_folds_print_no_warning_the_caller_silenced():
    """A classifier whose grid points hit their iteration cap is judged by its score; its calibration folds run in
    worker processes, which must not print that warning once per fold beside the run's own lines."""
    import subprocess
    import sys

    script = """
import warnings
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from transfer.features._calibrated import out_of_fold_temperature
x, y = np.random.default_rng(0).normal(size=(60, 32)), np.repeat([0, 1, 2], 20)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    model = make_pipeline(MLPClassifier(max_iter=3, random_state=0))
    out_of_fold_temperature(model, x, y, StratifiedKFold(4), n_jobs=2)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ConvergenceWarning" not in done.stderr, done.stderr
