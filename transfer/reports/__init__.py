"""Run folders and the result record every strategy writes; the CSV reports, plots, HTML page and tracking."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "DEFAULT_URI": "_tracking",
    "Result": "_records",
    "STRATEGIES": "_records",
    "accuracy_vs_time_png": "plots",
    "bootstrap_accuracy": "_metrics",
    "check_mlflow": "_tracking",
    "check_run_folder": "_records",
    "claim": "_run_folder",
    "confusion_matrix_png": "plots",
    "conv_kernels_png": "plots",
    "finished_with": "_records",
    "learning_curve_png": "plots",
    "log_compare": "_tracking",
    "mcnemar_pvalue": "_metrics",
    "metrics_table": "_records",
    "open_run": "_records",
    "publishing": "_run_folder",
    "read_results": "_records",
    "render_report": "_html",
    "training_curves_png": "plots",
    "tsne_png": "plots",
    "write_config": "_records",
    "write_report": "_html",
    "write_reports": "_records",
    "write_skipped": "_records",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
