"""transfer: fine-tune an ImageNet CNN, or train classifiers on its frozen features?

The public API is imported lazily so that ``import transfer`` (and the CLI's
fast paths) do not pull in TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_API = {
    "REGISTRY": "transfer.backbones",
    "Backbone": "transfer.backbones",
    "get_backbone": "transfer.backbones",
    "build_backbone": "transfer.backbones",
    "feature_model": "transfer.backbones",
    "predict_imagenet": "transfer.predict",
    "load_image": "transfer.data",
    "list_images": "transfer.data",
    "sample_images": "transfer.data",
    "class_names": "transfer.imagenet",
    "ExtractConfig": "transfer.features",
    "extract": "transfer.features",
    "extract_features": "transfer.features",
    "classify": "transfer.classifiers",
    "CLASSIFIERS": "transfer.classifiers",
    "resolve_source": "transfer.data",
    "make_split": "transfer.data",
    "predict_run": "transfer.predict",
    "FinetuneConfig": "transfer.finetune",
    "finetune": "transfer.finetune",
    "ScratchConfig": "transfer.scratch",
    "train_scratch": "transfer.scratch",
    "CompareConfig": "transfer.compare",
    "compare": "transfer.compare",
    "tsne_plot": "transfer.compare",
    "conv_kernels_plot": "transfer.compare",
    "confusion_matrix_png": "transfer.plots",
    "training_curves_png": "transfer.plots",
    "accuracy_vs_time_png": "transfer.plots",
    "tsne_png": "transfer.plots",
    "conv_kernels_png": "transfer.plots",
    "load_state_dict": "transfer.torchfile",
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


# `transfer.compare` and `transfer.finetune` are both a function of the API and the module that
# holds it. Importing the module makes Python set the package attribute to the module, which would
# turn `transfer.compare(...)` into "module is not callable" depending on import order; keep the
# function (the module stays reachable through `from transfer.compare import ...`).
_SHADOWED = {name for name, module in _API.items() if module == f"{__name__}.{name}"}


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
