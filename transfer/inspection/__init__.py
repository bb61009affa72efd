"""Inside the networks: activation maps, first-layer kernels, how far fine-tuning moved each block, and Grad-CAM
of the models that ship (``transfer inspect``)."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "IMAGES": "_models",
    "Inspection": "_inspect",
    "LayerMaps": "_activations",
    "Model": "_models",
    "Network": "_networks",
    "activation_maps": "_activations",
    "block_change": "_kernels",
    "draw_models": "_drawing",
    "first_conv": "_kernels",
    "grad_cam": "_gradcam",
    "heat_share": "_gradcam",
    "inspect_backbone": "_inspect",
    "inspect_run": "_inspect",
    "models_of": "_models",
    "network": "_networks",
    "pretrained": "_networks",
    "receptive_fields": "_layers",
    "stage_layers": "_layers",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
