import numpy as np
import pytest

from transfer.reports._metrics import bootstrap_accuracy, evaluate, mcnemar_pvalue


def test_bootstrap_interval_brackets_the_accuracy_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    small_true = rng.integers(0, 2, 100)
    small_pred = np.where(rng.random(100) < 0.8, small_true, 1 - small_true)
    low, high = bootstrap_accuracy(small_true, small_pred)
    acc = (small_true == small_pred).mean()
    assert low < acc < high
    big_true = np.tile(small_true, 10)
    big_pred = np.tile(small_pred, 10)
    big_low, big_high = bootstrap_accuracy(big_true, big_pred)
    assert (big_high - big_low) < (high - low) / 2
    assert bootstrap_accuracy(small_true, small_pred) == (low, high)  # seeded


def test_mcnemar_exact_and_chi_square():
    y = np.zeros(100, int)
    a = np.zeros(100, int)
    b = np.zeros(100, int)
    assert mcnemar_pvalue(y, a, b) == 1.0  # never disagree
    b[:10] = 1  # 10 images right for a only -> exact binomial, two-sided 2 * 0.5**10
    assert mcnemar_pvalue(y, a, b) == pytest.approx(2 * 0.5**10)
    b[:40] = 1
    a[40:45] = 1  # 40 vs 5 discordant: chi2 = (35 - 1)^2 / 45
    from scipy import stats

    assert mcnemar_pvalue(y, a, b) == pytest.approx(stats.chi2.sf(34**2 / 45, 1))
    assert mcnemar_pvalue(y, b, a) == mcnemar_pvalue(y, a, b)


def test_evaluate_top5_only_with_more_than_five_classes():
    y = np.array(["a", "b"])
    assert "top5_accuracy" not in evaluate(y, y, np.eye(2), ["a", "b"])
    five = list("abcde")  # top-5 of 5 classes is always right: no column rather than a meaningless 1.0
    assert "top5_accuracy" not in evaluate(np.array(five), np.array(five), np.eye(5), five)
    classes = list("abcdef")
    scores = np.eye(6)
    out = evaluate(np.array(classes), np.array(classes), scores, classes)
    assert out["top5_accuracy"] == 1.0 and out["accuracy"] == 1.0
