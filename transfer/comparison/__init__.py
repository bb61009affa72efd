"""Both strategies and the scratch CNN on the same images: orchestration, the verdict and its statistics."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "CompareConfig": "_config",
    "DEMO_DATA": "_config",
    "Comparison": "_result",
    "MIN_SCORED": "_protocol",
    "PROTOCOLS": "_protocol",
    "compare": "_compare",
    "conv_kernels_plot": "_figures",
    "representative": "_representatives",
    "tsne_plot": "_figures",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
