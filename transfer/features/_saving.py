"""Fitted classifiers on disk: skops files, loaded trusting only the types a transfer run saves."""

from __future__ import annotations

from transfer.errors import TransferError


def save_classifier(estimator, path):
    """Save with skops, a format that does not run code on load."""
    import skops.io as sio

    from transfer.runtime import atomic_path

    with atomic_path(path, suffix=".skops") as tmp:
        sio.dump(estimator, tmp)


# The types beyond skops' own safe list that the pipelines of CLASSIFIERS save (kNN's search trees and distance,
# the MLP's optimizer), written out: a prefix such as "numpy." would trust functions that run code
# (numpy.testing's runstring execs a string).
SAVED_TYPES = frozenset({
    "sklearn.metrics._dist_metrics.EuclideanDistance32", "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._ball_tree.BallTree", "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "transfer.features._calibrated.CalibratedPipeline", "transfer.features._stream.StreamedSGD",
    "transfer.features._svm.ChunkedNystroem",
    "transfer.features._svm.SGDLinearSVC",
})


def load_classifier(path):
    """Load a classifier saved by :func:`save_classifier`, trusting only the types a transfer run saves.

    Raises:
        TransferError: the file holds any other type (it did not come from transfer), before anything is built.
    """
    import skops.io as sio

    try:
        found = sio.get_untrusted_types(file=path)
    except Exception as e:  # noqa: BLE001 - not a zip, no schema, bad JSON...: all mean the same to the user
        raise TransferError(f"{path} is not a classifier file transfer wrote ({type(e).__name__}: {e}); train the "
                            "run again to make it.") from None
    foreign = sorted(set(found) - SAVED_TYPES)
    if foreign:
        raise TransferError(f"Refusing to load {path}: it holds {foreign[0]}, a type a transfer run never saves "
                            "(the file may be crafted to run code); train the run again to make it.")
    return sio.load(path, trusted=list(found))
