"""Strategy 2's grid search: a choice that does not fall to a grid's edge by a tie, and a grid that grows past an edge.

On few images cross-validated accuracy is flat across much of a grid, and ``GridSearchCV`` breaks its ties by grid
order: the smallest ``C`` (the strongest regularisation, the least confident scores). Here the tied best points
(the same mean accuracy) go to the one nearest the middle of their plateau, in log steps. When the choice lies on
the edge of a log-spaced parameter's grid, the grid is extended that way by its own step, at most
:data:`MAX_EXTENSIONS` times, and every point searched is kept (``search.csv``, ``config.json``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CONTINUOUS = ("C", "alpha", "gamma")  # log-spaced parameters whose best value may lie beyond the grid
MAX_EXTENSIONS = 3


def _numbers(values) -> list:
    return sorted(v for v in values if isinstance(v, int | float) and not isinstance(v, bool))


def _continuous(key: str) -> bool:
    return key.split("__")[-1] in CONTINUOUS


def grid_edges(grid: dict, best_params: dict) -> list[str]:
    """The continuous parameters whose chosen value is the smallest or largest of its grid, in words."""
    edges = []
    for key, values in grid.items():
        numbers = _numbers(values)
        chosen = best_params.get(key)
        if _continuous(key) and len(numbers) >= 3 and chosen in (numbers[0], numbers[-1]):
            edges.append(f"{key.split('__')[-1]}={chosen:g} (grid {numbers[0]:g}-{numbers[-1]:g})")
    return edges


def _position(key: str, value) -> float | None:
    """Where ``value`` lies on its parameter's axis: log for the continuous ones; None when it is not a number."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return math.log(value) if _continuous(key) and value > 0 else float(value)


def choose(table: pd.DataFrame, grid: dict) -> int:
    """The row of ``cv_results_`` to keep: the best mean accuracy; among tied rows, the one nearest the middle of the
    tied values of each numeric parameter (in log steps for the continuous ones), then the first in grid order."""
    scores = table["mean_test_score"].to_numpy()
    tied = np.flatnonzero(np.isclose(scores, np.nanmax(scores), rtol=0, atol=1e-9))
    params = [table["params"].iloc[i] for i in tied]
    middle = {}
    for key in grid:
        spots = [p for p in (_position(key, q.get(key)) for q in params) if p is not None]
        if len(set(spots)) > 1:
            middle[key] = ((min(spots) + max(spots)) / 2, max(spots) - min(spots))

    def off_middle(q):
        spots = {key: _position(key, q.get(key)) for key in middle}
        return sum(abs(spots[k] - mid) / span for k, (mid, span) in middle.items() if spots[k] is not None)

    return int(tied[min(range(len(tied)), key=lambda j: (off_middle(params[j]), j))])


def _extension(grid: dict, best: dict) -> tuple[str, float] | None:
    """The next point past the edge ``best`` lies on: ``(parameter, value)`` one log step of that parameter's own
    grid beyond it; None when ``best`` is on no edge of a continuous parameter."""
    for key, values in grid.items():
        numbers = _numbers(values)
        if not _continuous(key) or len(numbers) < 3 or best.get(key) not in (numbers[0], numbers[-1]):
            continue
        low = best[key] == numbers[0]
        step = numbers[1] / numbers[0] if low else numbers[-1] / numbers[-2]
        return key, float(f"{best[key] / step if low else best[key] * step:.6g}")
    return None


def search(make_search, grid: dict) -> tuple[pd.DataFrame, dict, dict]:
    """Grid-search, then extend past an edge until the choice is inside (at most :data:`MAX_EXTENSIONS` times).

    Args:
        make_search: ``grid -> a fitted GridSearchCV`` over that grid (the same folds every call).
        grid: the first grid.

    Returns:
        ``(cv_results_ of every point searched with a ``chosen`` column, the chosen parameters, the grid
        searched)``.
    """
    table = pd.DataFrame(make_search(grid).cv_results_)
    searched = {k: list(v) for k, v in grid.items()}
    for _ in range(MAX_EXTENSIONS):
        beyond = _extension(searched, table["params"].iloc[choose(table, searched)])
        if beyond is None:
            break
        key, value = beyond
        table = pd.concat([table, pd.DataFrame(make_search({**searched, key: [value]}).cv_results_)],
                          ignore_index=True)
        searched[key] = sorted([*searched[key], value], key=lambda v: (isinstance(v, str), v))
    table["rank_test_score"] = table["mean_test_score"].rank(method="min", ascending=False).astype(int)
    row = choose(table, searched)
    table["chosen"] = np.arange(len(table)) == row
    return table, table["params"].iloc[row], searched


def search_sample(y, search_size, seed=0) -> np.ndarray:
    """Row indices of about ``search_size`` of the labels ``y``: each class in proportion, at least 2 of it where
    it has them (cross-validation needs 2), all rows when there are no more than ``search_size``."""
    y = np.asarray(y)
    if search_size is None or len(y) <= search_size:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    rows = []
    for label in sorted(set(y.tolist())):
        members = np.flatnonzero(y == label)
        take = min(len(members), max(2, round(len(members) * search_size / len(y))))
        rows.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(rows))


def fold_sized(grid: dict, n: int, folds: int) -> dict:
    """``grid`` with kNN's k no larger than the images a cross-validation fold trains on."""
    key = "kneighborsclassifier__n_neighbors"
    if key not in grid:
        return dict(grid)
    fold_train = n - -(-n // folds)
    return {**grid, key: [k for k in grid[key] if k <= fold_train] or [1]}
