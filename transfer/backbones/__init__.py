"""The ImageNet backbones: the registry, EfficientNet-Lite, its ported weights and the .pth reader."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "Backbone": "_registry",
    "BackboneOptions": "_registry",
    "DEFAULT_BACKBONE": "_registry",
    "FEATURE_LAYERS": "_registry",
    "REGISTRY": "_registry",
    "build_backbone": "_registry",
    "check_pooling": "_registry",
    "feature_model": "_registry",
    "fetch_weights": "_registry",
    "get_backbone": "_registry",
    "load_state_dict": "_torchfile",
    "weights_identity": "_registry",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
