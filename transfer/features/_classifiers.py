"""Strategy 2, step 2: scikit-learn classifiers on the cached features.

Each classifier is a ``Pipeline`` (normalisation + estimator) with a
parameter grid; ``GridSearchCV`` on the training split picks the parameters.
The normalisation suits the classifier: standardised features for the linear
models and the MLP, unit-length (L2) features for the distance- and
kernel-based kNN and RBF SVM.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
import pandas as pd

from transfer.data import SEED, TEST_FRACTION, VAL_FRACTION
from transfer.errors import TransferError
from transfer.features._saving import save_classifier
from transfer.features._search import MAX_EXTENSIONS, fold_sized, grid_edges, search_sample
from transfer.runtime import keeps_file_names


def _linear_svm(n_samples):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # The dual solver, also where images outnumber features (where dual="auto" takes the primal): measured on 4,000
    # fashion-mnist features, dual took 1.9-17 s over the grid's C, the primal 9-176 s (the docs, "Scaling out").
    return make_pipeline(StandardScaler(), LinearSVC(dual=True, max_iter=5000))


def _rbf_svm(n_samples):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer
    from sklearn.svm import SVC

    # Distances between unit-length features (cosine geometry): the docs, "feature normalisation", measured
    # better than standardised features by cross-validation on all three sets at hand.
    # break_ties: a tie of votes goes to decision_function's argmax, not to the first tied class: the run predicts
    # by the scores export ships (libsvm's first-of-the-tied differed on 3 of the digits demo's 270 test images).
    return make_pipeline(Normalizer(), SVC(kernel="rbf", break_ties=True))


def _from_svm(name, **kwargs):
    """A pipeline maker of ``transfer.features._svm``, imported when first called (it imports scikit-learn)."""

    def make(n_samples):
        from transfer.features import _svm

        return getattr(_svm, name)(n_samples, **kwargs)

    return make


def _logreg(n_samples):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def _knn(n_samples):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    # Cosine neighbours, as kNN evaluations of learned features use (Wu et al. 2018; DINO): measured as for rbf_svm.
    return make_pipeline(Normalizer(), KNeighborsClassifier())


def _mlp(n_samples):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Early stopping holds out 10 % of the training images: with few images
    # that is a handful, too noisy to stop on.
    return make_pipeline(StandardScaler(), MLPClassifier(max_iter=400, early_stopping=n_samples >= 300,
                                                         random_state=0))


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """A classifier: its pipeline, its grid, and what runs in its place above the size its solver suits.

    Attributes:
        max_train: above this many training images the fit outgrows the CNN pass or the memory: ``large`` runs
            instead (the same model by a solver that scales), or, without one, the classifier is skipped.
        solver: what fits it, in words (said in the output and kept in config.json).
    """

    name: str
    make: callable  # n_samples -> an unfitted Pipeline
    grid: dict
    max_train: int | None = None
    why_limit: str = ""
    solver: str = ""
    large: ClassifierSpec | None = None

    def for_size(self, n_train: int) -> ClassifierSpec:
        """The spec that fits ``n_train`` images: this one, or ``large`` above :attr:`max_train`."""
        if self.max_train is not None and n_train > self.max_train and self.large is not None:
            return self.large
        return self


# The grid search sees a stratified sample of at most this many training images; the refit sees all. The docs,
# "Scaling out": on a 7,000-image fashion-mnist split, samples of 2,000 and 5,000 chose the same parameters for four
# classifiers of five (kNN's k differed, test accuracy within 0.003) where 1,000 moved logreg's C (-0.017), and the
# search cost 3-7x less; on all 51,000 training images logreg chose the same C from 1,000 to 10,000.
SEARCH_SIZE = 2000
# Above these sizes a classifier's refit costs more than the CNN pass over the same images, or more memory than
# the rest of the run (the docs, "Scaling out", measured on fashion-mnist features): the RBF SVM's fit grew as n^2.3
# (1.1 s at 2,500 images, 15.4 s at 10,000: ~190 s at 30,000, the CNN's time for them here); LinearSVC's
# liblinear peaked at 3.7 GiB refitting 60,000.
RBF_MAX_TRAIN = 20000
LINEAR_SVM_MAX_TRAIN = 20000
# Landmark images of the RBF kernel's Nystroem map above RBF_MAX_TRAIN (the docs, "Scaling out"). Its grid searches
# gamma="scale" alone: on unit-length features |x - r|^2 <= 4, so the exact grid's 1e-4 and 1e-3 make the kernel
# 1 - gamma |x - r|^2 to within 1e-5, a linear kernel (linear_svm's), and SGD took 2x the epochs on them.
NYSTROEM_COMPONENTS = 2000
_C_LINEAR, C_LOGREG = np.logspace(-4, -1, 4).tolist(), np.logspace(-4, 1, 6).tolist()
_C_RBF, _GAMMA_RBF = np.logspace(-1, 2, 4).tolist(), ["scale", 1e-4, 1e-3]

CLASSIFIERS = {
    spec.name: spec
    for spec in [
        ClassifierSpec("linear_svm", _linear_svm, {"linearsvc__C": _C_LINEAR}, max_train=LINEAR_SVM_MAX_TRAIN,
                       why_limit="liblinear copies the features in double precision and in a sparse format of its "
                       "own: 3.7 GiB of memory for 60,000 images", solver="LinearSVC (liblinear, exact)",
                       large=ClassifierSpec("linear_svm", _from_svm("linear_svm_sgd"), {"sgdlinearsvc__C": _C_LINEAR},
                                            solver="LinearSVC's loss and C by SGD, float32, no copy")),
        ClassifierSpec("rbf_svm", _rbf_svm, {"svc__C": _C_RBF, "svc__gamma": _GAMMA_RBF}, max_train=RBF_MAX_TRAIN,
                       why_limit="a kernel SVM's fit grows with the square of the images", solver="SVC (libsvm, exact)",
                       large=ClassifierSpec("rbf_svm", _from_svm("rbf_svm_nystroem", n_components=NYSTROEM_COMPONENTS),
                                            {"sgdlinearsvc__C": _C_RBF, "chunkednystroem__gamma": ["scale"]},
                                            solver=f"Nystroem, {NYSTROEM_COMPONENTS:,} components, then a linear "
                                                   "SVM by SGD")),
        ClassifierSpec("logreg", _logreg, {"logisticregression__C": C_LOGREG}, solver="LogisticRegression (L-BFGS)"),
        ClassifierSpec("knn", _knn, {"kneighborsclassifier__n_neighbors": [1, 3, 5, 9, 15],
                                     "kneighborsclassifier__weights": ["uniform", "distance"]},
                       solver="KNeighborsClassifier (exact neighbours)"),
        ClassifierSpec("mlp", _mlp, {"mlpclassifier__hidden_layer_sizes": [(256,), (512,)],
                                     "mlpclassifier__alpha": [1e-4, 1e-2, 1.0]}, solver="MLPClassifier (Adam)"),
    ]
}


DEFAULT_CLASSIFIERS = tuple(CLASSIFIERS)


def pipeline_steps(names) -> dict:
    """Each classifier's pipeline steps and grid, in words: a run made by other pipelines is not reused."""
    return {n: [type(step).__name__ for _, step in CLASSIFIERS[n].make(0).steps] + [str(CLASSIFIERS[n].grid)]
            for n in names}


def parse_classifiers(value) -> list[str]:
    """``"linear_svm,logreg"`` or a list -> validated names (``all`` = every one)."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names == ["all"]:
        return list(CLASSIFIERS)
    unknown = [n for n in names if n not in CLASSIFIERS]
    if unknown or not names:
        raise TransferError(
            f"Unknown classifier {unknown[0] if unknown else value!r}. Expected a comma-separated list of: "
            f"{', '.join(CLASSIFIERS)} (or 'all')."
        )
    return names


@dataclasses.dataclass
class FitResult:
    name: str
    estimator: object
    search: pd.DataFrame
    best_params: dict
    fit_seconds: float
    at_edge: list = dataclasses.field(default_factory=list)
    search_seconds: float = float("nan")
    searched_on: int = 0
    cv_score: float = float("nan")  # mean cross-validated accuracy of the chosen parameters (the same folds for all)
    solver: str = ""  # what fitted it (ClassifierSpec.solver): the exact solver, or the one that scales
    grid: dict = dataclasses.field(default_factory=dict)  # every value searched, the grid's extensions included
    temperature: float = 1.0
    calibrated_on: int = 0  # out-of-fold images the temperature was fitted on


def check_search_size(value):
    """Raise a :class:`TransferError` unless ``value`` is None or a whole number of at least 10."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 10):
        raise TransferError(f"search_size={value!r} is not valid: give a whole number of at least 10 (the most "
                            "training images a grid search sees), or none to search on all of them.")


def fit_classifier(name, x_train, y_train, x_refit=None, y_refit=None, seed=0, n_jobs=-1,
                   search_size=SEARCH_SIZE) -> FitResult:
    """Grid-search one classifier on the training features, then refit once.

    Args:
        name: a key of :data:`CLASSIFIERS`.
        x_train, y_train: the training split (the search sees only these).
        x_refit, y_refit: what the best parameters are refit on (train + val
            when a separate test split exists); defaults to the training split.
        seed: seeds the cross-validation folds and the search sample.
        search_size: the search sees a stratified sample of at most this many
            training images (None: all); the refit sees all of them.
    """
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from transfer.features._calibrated import calibrated, refit_temperature
    from transfer.features._search import search
    from transfer.features._svm import SGDLinearSVC, record_gamma

    x_fit, y_fit = (x_train, y_train) if x_refit is None else (x_refit, y_refit)
    spec = CLASSIFIERS[name].for_size(len(y_fit))  # the same estimator is searched and refit
    rows = search_sample(y_train, search_size, seed)
    x_search, y_search = x_train[rows], np.asarray(y_train)[rows]
    smallest = int(pd.Series(y_search).value_counts().min())
    if smallest < 2:
        raise TransferError(f"A class has {smallest} training image(s): cross-validation needs at least 2 per class.")
    cv = StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=seed)
    grid = fold_sized(spec.grid, len(y_search), cv.n_splits)
    start = time.perf_counter()
    template = spec.make(len(y_train))

    def grid_search(points):
        return GridSearchCV(template, points, cv=cv, n_jobs=n_jobs, refit=False).fit(x_search, y_search)

    with warnings.catch_warnings():
        # An iteration cap reached by some grid points (the MLP's, mostly) is what cross-validation judges: the
        # score counts, not the warning, which the workers printed once per fit.
        warnings.simplefilter("ignore", ConvergenceWarning)
        table, best, searched = search(grid_search, grid)
        search_seconds = time.perf_counter() - start
        temperature, calibrated_on = refit_temperature(clone(template).set_params(**best), x_fit, y_fit,
                                                       search_size, seed, n_jobs)
        # The same pipeline as searched (built for the training split's size); SGD's one-vs-rest problems on threads
        # (1.9x on 2 cores, 20,000 images of 2,000 features).
        estimator = clone(template).set_params(**best)
        estimator.set_params(**{f"{step}__n_jobs": n_jobs for step, model in estimator.steps
                                if isinstance(model, SGDLinearSVC)})
        estimator.fit(x_fit, y_fit)
        record_gamma(estimator, x_fit)
    cv_score = float(table.loc[table["chosen"], "mean_test_score"].iloc[0])
    table["params"] = table["params"].map(str)
    table.insert(0, "classifier", name)
    table.insert(1, "searched_on", len(y_search))
    return FitResult(name, calibrated(estimator, temperature), table, best, time.perf_counter() - start,
                     grid_edges(searched, best), search_seconds, len(y_search), cv_score, spec.solver, searched,
                     temperature, calibrated_on)


def class_scores(estimator, x) -> np.ndarray:
    """Per-class scores: probabilities where the estimator has them, else decision values."""
    if hasattr(estimator, "predict_proba"):
        try:
            return estimator.predict_proba(x)
        except AttributeError:
            pass
    scores = estimator.decision_function(x)
    if scores.ndim == 1:  # binary: one margin for the positive class
        scores = np.column_stack([-scores, scores])
    return scores


def fitted_parameter_count(estimator) -> int:
    """Numbers a fitted scikit-learn model learned (for a pipeline, all its steps).

    The float arrays among its public fitted attributes (``coef_``,
    ``intercept_``, ``support_vectors_``, ``dual_coef_``, MLP ``coefs_``,
    a scaler's ``mean_``/``scale_``...), and for k-nearest neighbours the
    training features it keeps: what the model holds to classify.
    """
    steps = [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    total = 0
    for step in steps:
        if hasattr(step, "n_samples_fit_"):  # kNN: the stored training set is the model
            total += int(step.n_samples_fit_) * int(step.n_features_in_)
            continue
        for name, value in vars(step).items():
            if not name.endswith("_") or name.startswith("_"):
                continue
            arrays = value if isinstance(value, list | tuple) else [value]
            for a in arrays:
                if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating):
                    total += int(a.size)
    return total


def suited(names, n_train, log=print) -> list[str]:
    """The classifiers of ``names`` whose fit suits ``n_train`` images; each other one is skipped, saying why.

    Raises:
        TransferError: none of them suits.
    """
    kept = []
    for name in names:
        spec = CLASSIFIERS[name]
        if spec.max_train is None or n_train <= spec.max_train:
            kept.append(name)
        elif spec.large is not None:
            log(f"{name}: {n_train:,} training images is above the {spec.max_train:,} that {spec.solver} suits "
                f"({spec.why_limit}): {spec.large.solver} instead")
            kept.append(name)
        else:
            log(f"{name} skipped: {n_train:,} training images is above its limit of {spec.max_train:,} "
                f"({spec.why_limit}); the others scale")
    if not kept:
        raise TransferError(f"No classifier of {', '.join(names)} suits {n_train:,} training images; choose from "
                            f"{', '.join(n for n, s in CLASSIFIERS.items() if s.max_train is None)} with --classifier.")
    return kept


def classify_run(run, cfg, names, *, features_dir=None, search_size=SEARCH_SIZE, progress=True, log=print) -> list:
    """Strategy 2 in an opened run folder: features (cached or extracted), each classifier tuned and scored.

    Writes the run's reports (see :func:`classify`) and returns one
    :class:`~transfer.reports.Result` per classifier.

    Args:
        run: from :func:`transfer.reports.open_run`.
        cfg: a validated :class:`~transfer.features.ExtractConfig`.
        names: classifier names (see :func:`parse_classifiers`); those that do
            not suit the number of training images are skipped, saying why.
        search_size: see :func:`fit_classifier`.
    """
    from transfer.features._cache import cache_root
    from transfer.features._check import check_features
    from transfer.features._extract import cached, extract_features, feature_settings
    from transfer.features._stream import streamed_classifiers, too_large
    from transfer.features._streamed import classify_streamed
    from transfer.reports import metrics_table, publishing, write_reports
    from transfer.runtime import write_csv

    features_dir = cache_root(features_dir)
    # Train, val, test in turn: each split (and train + val for the refit) is then a view of the one array, no copy.
    # (A learning curve's size leaves some images out of every split: they are not read.)
    order = run.split["split"].map({"train": 0, "val": 1, "test": 2}).dropna().sort_values(kind="stable").index
    paths = [str(p) for p in run.split["path"][order]]
    held = cached(paths, cfg, features_dir, progress, log)
    if too_large(held[2], len(paths), log):
        return classify_streamed(run, cfg, streamed_classifiers(names, log), paths, held, search_size=search_size,
                                 requested=names, log=log)
    feats = dataclasses.replace(extract_features(paths, cfg, cache_dir=features_dir, progress=progress, log=log),
                                from_cache=not held[3])
    run.check_readable(dict(feats.skipped))
    data = _feature_splits(run, feats)
    found = check_features(run.split, feats.paths, feats.features, cfg)
    log(f"data check: {found.line}")
    fitted = suited(names, len(data.y_train if data.y_refit is None else data.y_refit), log)
    # Each classifier goes to the staged set as soon as it is scored, and out of memory (a kNN holds a copy of the
    # features); the set replaces an earlier run's classifiers and reports together, or not at all.
    with publishing(run.out) as stage:
        results, searches, kept = [], [], {"grid_edges": {}, "search_seconds": {}, "solvers": {}, "grids_searched": {}}
        for name in fitted:
            fit = _fit(name, data, run.seed, search_size, log)
            results.append(_scored(fit, data, cfg, feats, run, found.leaked))
            save_classifier(fit.estimator, stage / "classifiers" / f"{name}.skops")
            searches.append(fit.search)
            _record(kept, fit)
            del fit  # before the next search starts
        write_csv(pd.concat(searches), stage / "search.csv")
        write_csv(found.duplicates, stage / "duplicates.csv")
        write_reports(run, results, {**found.settings(), **kept,
            "extract": feature_settings(cfg), "engine": cfg.engine, "executor": cfg.executor, "classifiers": fitted,
            "requested_classifiers": list(names), "pipelines": pipeline_steps(names), "search_size": search_size,
            "best_classifier": metrics_table(results)["classifier"].iloc[0], "features_from_cache": feats.from_cache,
            "feature_cache_key": feats.key, "features_dir": str(features_dir),
            "temperatures": {r.classifier: r.temperature for r in results},
        }, folder=stage)
    return results


def _record(kept: dict, fit: FitResult):
    """What config.json keeps of one classifier's fit: its search's time, solver, grid searched, edges left."""
    kept["search_seconds"][fit.name] = round(fit.search_seconds, 2)
    kept["solvers"][fit.name] = fit.solver
    kept["grids_searched"][fit.name] = {key.split("__")[-1]: values for key, values in fit.grid.items()}
    if fit.at_edge:
        kept["grid_edges"][fit.name] = fit.at_edge


def _fit(name, data, seed, search_size, log) -> FitResult:
    n = len(data.y_train)
    sample = f"a stratified {search_size:,} of {n:,}" if search_size and search_size < n else f"{n:,}"
    log(f"fitting {name} (grid search on {sample} training images)...")
    fit = fit_classifier(name, data.x_train, data.y_train, data.x_refit, data.y_refit, seed=seed,
                         search_size=search_size)
    if fit.at_edge:
        log(f"warning: {name} chose {', '.join(fit.at_edge)}, still at the edge of its grid after extending it "
            f"{MAX_EXTENSIONS} times: the best value may lie beyond it")
    log(f"{name}: temperature {fit.temperature:.3g} (out-of-fold on the {fit.calibrated_on:,} images it is refit on)")
    return fit


@dataclasses.dataclass
class _FeatureSplits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    eval_paths: list
    classes: list
    x_refit: np.ndarray | None = None
    y_refit: np.ndarray | None = None


def _feature_splits(run, feats) -> _FeatureSplits:
    """The run's splits as views of the one feature array, whose readable images come train, val, test in turn
    (each split holds some: see :meth:`~transfer.reports.Run.check_readable`); refit on train + val when test
    scores."""
    table = run.split.set_index("path").loc[feats.paths]
    y, where = table["label"].to_numpy(), table["split"].to_numpy()
    n_train, n_val, n_test = (int((where == s).sum()) for s in ("train", "val", "test"))
    ends = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(y))}
    if len(y) != n_train + n_val + n_test:
        raise TransferError(f"{len(y) - n_train - n_val - n_test} feature rows belong to no split of {run.out}.")
    low, high = ends[run.eval_split]
    x = feats.features
    data = _FeatureSplits(x[:n_train], y[:n_train], x[low:high], y[low:high], list(feats.paths[low:high]),
                          sorted(set(run.split.loc[run.split["path"].isin(set(feats.paths)), "label"])))
    if run.eval_split == "test" and n_val:
        data.x_refit, data.y_refit = x[:n_train + n_val], y[:n_train + n_val]
    return data


def _scored(fit, data: _FeatureSplits, cfg, feats, run, leaked: set):
    from transfer.features._check import accuracy_without
    from transfer.reports import Result

    start = time.perf_counter()
    pred = fit.estimator.predict(data.x_eval)
    # Per image: the CNN pass (steady-state rate of the extraction) plus this classifier.
    per_image = 1 / feats.images_per_second + (time.perf_counter() - start) / len(data.y_eval)
    return Result(
        strategy="features", backbone=cfg.backbone, classifier=fit.name, eval_split=run.eval_split,
        paths=data.eval_paths, y_true=data.y_eval, y_pred=pred, classes=data.classes,
        scores=fit.estimator.predict_proba(data.x_eval), uncalibrated=fit.estimator.uncalibrated_proba(data.x_eval),
        temperature=fit.temperature, layer=cfg.layer, params=fit.best_params,
        n_train=len(data.y_train if data.y_refit is None else data.y_refit), fit_seconds=fit.fit_seconds,
        extract_seconds=feats.seconds, feature_dim=int(feats.features.shape[1]),
        inference_images_per_second=1 / per_image if per_image > 0 else float("nan"),
        trainable_params=fitted_parameter_count(fit.estimator), run_dir=run.out, skipped=dict(feats.skipped),
        selection_score=fit.cv_score, selected_on=f"cross-validation on {fit.searched_on} training images",
        solver=fit.solver or None,
        without_leaks=accuracy_without(data.y_eval, pred, data.eval_paths, leaked) if leaked else None)


@keeps_file_names()
def classify(data, out, cfg=None, classifiers=DEFAULT_CLASSIFIERS, *, val_fraction=VAL_FRACTION,
             test_fraction=TEST_FRACTION, seed=SEED, search_size=SEARCH_SIZE, progress=True, features_dir=None,
             drop_duplicates=False, log=print) -> pd.DataFrame:
    """``transfer classify``: features (cached or extracted), tuned classifiers, reports.

    Writes ``metrics.csv``, ``predictions.csv``, ``per_class.csv``,
    ``search.csv``, ``config.json``, ``split.csv``, ``skipped.csv`` and
    ``classifiers/NAME.skops`` into ``out``; the features go to the feature
    cache ``features_dir`` (default: the shared one, see
    :func:`transfer.features.cache_root`).

    Args:
        data: a folder, a CSV manifest, ``digits`` or ``fashion-mnist`` (see
            :func:`transfer.data.resolve_source`), or a split table.
        classifiers: comma-separated names or a list (``all``: every one).
        search_size: the grid searches see a stratified sample of at most
            this many training images (None: all); each refit sees all.
        drop_duplicates: leave the test images with a copy in train or val out (see
            :func:`transfer.features.drop_leaks`).

    Returns:
        The metrics table, one row per classifier, best first.
    """
    from transfer.backbones import fetch_weights
    from transfer.features._check import drop_leaks
    from transfer.features._extract import ExtractConfig
    from transfer.reports import claim, metrics_table, open_run

    names = parse_classifiers(classifiers)
    check_search_size(search_size)
    cfg = (cfg or ExtractConfig())
    fetch_weights(cfg.backbone, cfg.weights)  # refused before the run folder is made
    with claim(out, "classify", log=log):
        run = open_run(data, out, "classify", val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        if drop_duplicates:
            drop_leaks(run, cfg, features_dir=features_dir, progress=progress, log=log)
        return metrics_table(classify_run(run, cfg, names, features_dir=features_dir, search_size=search_size,
                                          progress=progress, log=log))
