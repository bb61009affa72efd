"""What fine-tuning changed in a backbone: the first convolution's kernels, and how far each block's weights moved."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from transfer.runtime import keras_module


def first_conv(model):
    """``(layer name, kernel)`` of the first convolution that reads the RGB input, searching nested models;
    ``(None, None)`` when there is none. The kernel is ``(height, width, 3, filters)``."""
    keras = keras_module()

    stack = [model]
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = np.asarray(layer.kernel)
            if kernel.shape[2] == 3:
                return layer.name, kernel
        stack[0:0] = list(getattr(layer, "layers", []))
    return None, None


def block_of(layer_name: str) -> str:
    """The block a layer belongs to, by its name: ``block1a_dwconv`` -> ``block1a``, ``conv2_block1_1_conv`` ->
    ``conv2_block1``, ``block_3_expand`` -> ``block_3``, ``stem_conv`` -> ``stem``."""
    found = re.match(r"^(.*?block_?\d+[a-z]?)(?:_|$)", layer_name)
    return found.group(1) if found else layer_name.split("_")[0]


def block_change(before, after, trained: dict | None = None) -> pd.DataFrame:
    """How far each block's weights moved from ``before`` (the pretrained backbone) to ``after`` (the fine-tuned
    one, same architecture): ``||after - before|| / ||before||`` over the block's weights, in layer order.

    Args:
        before, after: Keras models with the same layer names.
        trained: layer name -> whether it trained (``layers.csv``); a block trained if any of its layers did.

    Returns:
        One row per block: ``block``, ``relative_change``, ``trained``, ``layers``.
    """
    rows: dict[str, dict] = {}
    for layer in before.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        tuned = after.get_layer(layer.name).get_weights()
        row = rows.setdefault(block_of(layer.name), {"moved": 0.0, "size": 0.0, "trained": False, "layers": 0})
        for w0, w1 in zip(weights, tuned, strict=True):
            row["moved"] += float(np.sum((np.asarray(w1, np.float64) - w0) ** 2))
            row["size"] += float(np.sum(np.asarray(w0, np.float64) ** 2))
        row["layers"] += 1
        row["trained"] = row["trained"] or bool((trained or {}).get(layer.name, False))
    return pd.DataFrame([{"block": name, "relative_change": np.sqrt(r["moved"] / max(r["size"], 1e-30)),
                          "trained": r["trained"], "layers": r["layers"]} for name, r in rows.items()])
