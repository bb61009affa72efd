"""Strategy 2: the frozen backbone's features, extracted once and cached, and the classifiers trained on them."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "CLASSIFIERS": "_classifiers",
    "Check": "_check",
    "DEFAULT_CLASSIFIERS": "_classifiers",
    "ExtractConfig": "_extract",
    "SEARCH_SIZE": "_classifiers",
    "build_extractor": "_extract",
    "cache_key": "_extract",
    "check": "_check",
    "check_features": "_check",
    "check_table": "_check",
    "drop_leaks": "_check",
    "accuracy_without": "_check",
    "leaked_test_images": "_check",
    "cache_root": "_cache",
    "cached_settings": "_cache",
    "check_search_size": "_classifiers",
    "class_scores": "_classifiers",
    "classify": "_classifiers",
    "classify_run": "_classifiers",
    "extract": "_extract",
    "extract_features": "_extract",
    "feature_settings": "_extract",
    "StreamedSGD": "_stream",
    "fit_classifier": "_classifiers",
    "fit_streamed": "_stream",
    "load_classifier": "_saving",
    "parse_classifiers": "_classifiers",
    "pipeline_steps": "_classifiers",
    "prune": "_cache",
    "save_classifier": "_saving",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
