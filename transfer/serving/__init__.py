"""Shipping a model: exported files, and predictions on new images."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "FORMATS": "_export",
    "FOLDABLE": "_graph",
    "choose": "_export",
    "classifier_logits": "_graph",
    "export_model": "_export",
    "load_exported": "_export",
    "predict_exported": "_predict",
    "predict_imagenet": "_predict",
    "predict_run": "_predict",
    "read_metadata": "_export",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
