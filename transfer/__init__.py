"""transfer: fine-tune an ImageNet CNN, or train classifiers on its frozen features?

The public API, re-exported from the subpackage of each stage::

    data/        source -> split -> images           backbones/   the ImageNet CNNs and their weights
    features/    strategy 2: features -> classifiers finetuning/  strategy 1: new head, frozen layers, training
    scratch      the from-scratch CNN baseline       comparison/  all three on the same images: the verdict
    reports/     run folders, records, plots, HTML   serving/     export and predict
    inspection/  inside the networks: activations, kernels, Grad-CAM
    runtime/     this machine and TensorFlow's start-up

Importing changes nothing global and imports nothing heavy: each name is
imported on first use, and TensorFlow is configured (oneDNN kernels, a
quiet start) when a stage first needs it (:func:`transfer.runtime.tensorflow`).
"""

from __future__ import annotations

from transfer._exports import lazy

__version__ = "0.1.0"

_API = {
    "REGISTRY": "transfer.backbones",
    "Backbone": "transfer.backbones",
    "get_backbone": "transfer.backbones",
    "build_backbone": "transfer.backbones",
    "feature_model": "transfer.backbones",
    "load_state_dict": "transfer.backbones",
    "class_names": "transfer.data",
    "resolve_source": "transfer.data",
    "make_split": "transfer.data",
    "train_subset": "transfer.data",
    "ImageOptions": "transfer.data",
    "load_image": "transfer.data",
    "list_images": "transfer.data",
    "sample_images": "transfer.data",
    "ExtractConfig": "transfer.features",
    "extract": "transfer.features",
    "extract_features": "transfer.features",
    "classify": "transfer.features",
    "check": "transfer.features",
    "fit_streamed": "transfer.features",
    "CLASSIFIERS": "transfer.features",
    "FinetuneConfig": "transfer.finetuning",
    "finetune": "transfer.finetuning",
    "ScratchConfig": "transfer.scratch",
    "train_scratch": "transfer.scratch",
    "Result": "transfer.reports",
    "CompareConfig": "transfer.comparison",
    "Comparison": "transfer.comparison",
    "compare": "transfer.comparison",
    "tsne_plot": "transfer.comparison",
    "conv_kernels_plot": "transfer.comparison",
    "confusion_matrix_png": "transfer.reports",
    "training_curves_png": "transfer.reports",
    "accuracy_vs_time_png": "transfer.reports",
    "tsne_png": "transfer.reports",
    "conv_kernels_png": "transfer.reports",
    "learning_curve_png": "transfer.reports",
    "render_report": "transfer.reports",
    "log_compare": "transfer.reports",
    "inspect_run": "transfer.inspection",
    "inspect_backbone": "transfer.inspection",
    "export_model": "transfer.serving",
    "load_exported": "transfer.serving",
    "read_metadata": "transfer.serving",
    "predict_imagenet": "transfer.serving",
    "predict_run": "transfer.serving",
    "predict_exported": "transfer.serving",
    "TransferError": "transfer.errors",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
