"""transfer: fine-tune an ImageNet CNN, or train classifiers on its frozen features?

The public API, re-exported from the module of each stage.  Names are
imported on first use, so that ``import transfer`` (and the CLI's fast
paths) do not pull in TensorFlow.
"""

from __future__ import annotations

import importlib

import pandas as _pd

# A file name that is not UTF-8 is a str with surrogates here (and written back as its own bytes); pandas 3 keeps
# strings in Arrow, which holds UTF-8 only, whenever pyarrow is installed (Ray Data installs it): Python storage.
_pd.set_option("mode.string_storage", "python")

# TensorFlow, imported later by whichever stage needs it, starts with this machine's measured oneDNN setting.
from transfer.startup import prepare_tensorflow_import as _prepare  # noqa: E402

_prepare()

__version__ = "0.1.0"

_API = {
    # backbones
    "REGISTRY": "transfer.backbones",
    "Backbone": "transfer.backbones",
    "get_backbone": "transfer.backbones",
    "build_backbone": "transfer.backbones",
    "feature_model": "transfer.backbones",
    "load_state_dict": "transfer.torchfile",
    "class_names": "transfer.imagenet",
    # source -> split -> images
    "resolve_source": "transfer.sources",
    "make_split": "transfer.splits",
    "train_subset": "transfer.splits",
    "ImageOptions": "transfer.images",
    "load_image": "transfer.images",
    "list_images": "transfer.images",
    "sample_images": "transfer.images",
    # strategy 2: features -> classifiers
    "ExtractConfig": "transfer.features",
    "extract": "transfer.features",
    "extract_features": "transfer.features",
    "classify": "transfer.classifiers",
    "CLASSIFIERS": "transfer.classifiers",
    # strategy 1 and the baseline
    "FinetuneConfig": "transfer.finetuning",
    "finetune": "transfer.finetuning",
    "ScratchConfig": "transfer.scratch",
    "train_scratch": "transfer.scratch",
    # runs, the comparison and its report
    "Result": "transfer.runs",
    "CompareConfig": "transfer.comparison",
    "compare": "transfer.comparison",
    "tsne_plot": "transfer.compare_plots",
    "conv_kernels_plot": "transfer.compare_plots",
    "confusion_matrix_png": "transfer.plots",
    "training_curves_png": "transfer.plots",
    "accuracy_vs_time_png": "transfer.plots",
    "tsne_png": "transfer.plots",
    "conv_kernels_png": "transfer.plots",
    "learning_curve_png": "transfer.plots",
    "render_report": "transfer.html_report",
    "log_compare": "transfer.tracking",
    # shipping a model, and new images
    "export_model": "transfer.export",
    "load_exported": "transfer.export",
    "read_metadata": "transfer.export",
    "predict_imagenet": "transfer.predict",
    "predict_run": "transfer.predict",
    "predict_exported": "transfer.predict",
    "TransferError": "transfer.errors",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transfer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
