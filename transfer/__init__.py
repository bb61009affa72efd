"""transfer: fine-tune an ImageNet CNN, or train classifiers on its frozen features?

The public API is imported lazily so that ``import transfer`` (and the CLI's
fast paths) do not pull in TensorFlow.
"""

from __future__ import annotations

import importlib

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
    "ScratchConfig": "transfer.scratch",
    "train_scratch": "transfer.scratch",
    "CompareConfig": "transfer.compare",
    "compare": "transfer.compare",
    "tsne_plot": "transfer.compare",
    "conv_kernels_plot": "transfer.compare",
    "load_state_dict": "transfer.torchfile",
    "TransferError": "transfer.errors",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'transfer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
