"""Which layers of a CNN to look at, what each one sees, and the network cut at its last convolutional map.

Everything here reads Keras's public graph: ``model.layers`` in order, each layer's ``input`` and ``output``
tensors, and its ``get_config()``; a nested model (a fine-tuned model's backbone) is split by its own layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from transfer.runtime import keras_module


def _window(layer) -> tuple[int, int, float]:
    """``(kernel extent, stride, padding before)`` of ``layer`` along one axis, in its input's positions: 1, 1, 0
    for a layer that works position by position."""
    config = layer.get_config()
    if type(layer).__name__ == "ZeroPadding2D":
        return 1, 1, float(np.ravel(config["padding"])[0])
    size = config.get("kernel_size", config.get("pool_size"))
    if size is None:  # normalisation, activations, adds: no window (global pooling ends the maps)
        return 1, 1, 0.0
    size = size[0] if isinstance(size, (list, tuple)) else size
    strides = config.get("strides") or size
    stride = strides[0] if isinstance(strides, (list, tuple)) else strides
    dilation = config.get("dilation_rate", 1)
    dilation = dilation[0] if isinstance(dilation, (list, tuple)) else dilation
    extent = dilation * (size - 1) + 1
    if config.get("padding") != "same":
        return extent, stride, 0.0
    side = layer.input.shape[1] or 0  # TensorFlow's "same": the total padding split, the smaller half first
    total = max(extent - (stride if side % stride == 0 else side % stride), 0)
    return extent, stride, float(total // 2)


def _inputs(layer) -> list:
    return layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]


@dataclasses.dataclass(frozen=True)
class Field:
    """Where a layer's map lies on its input image, along one axis (Araujo et al. 2019, "Computing receptive
    fields of convolutional neural networks").

    Attributes:
        size: the receptive field of one position, in input pixels.
        jump: input pixels between neighbouring positions (the product of the strides).
        start: the input pixel at the centre of the first position's field (negative where padding lies under it).
    """

    size: int
    jump: int
    start: float


def fields(model) -> dict[str, Field]:
    """Each layer's :class:`Field`, by layer name; where paths merge (a residual add) the widest counts."""
    seen = {id(t): Field(1, 1, 0.0) for t in model.inputs}
    found = {}
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        before = max((seen.get(id(t), Field(1, 1, 0.0)) for t in _inputs(layer)), key=lambda f: f.size)
        kernel, stride, pad = _window(layer)
        field = Field(before.size + (kernel - 1) * before.jump, before.jump * stride,
                      before.start + ((kernel - 1) / 2 - pad) * before.jump)
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for t in outputs:
            seen[id(t)] = field
        found[layer.name] = field
    return found


def receptive_fields(model) -> dict[str, int]:
    """Each layer's theoretical receptive field in input pixels (one side), by layer name: a ``k``-wide window with
    stride ``s`` adds ``(k - 1)`` times the product of the strides before it."""
    return {name: field.size for name, field in fields(model).items()}


def _is_conv(layer) -> bool:
    keras = keras_module()

    return isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))


def spatial_layers(model) -> list:
    """The layers of ``model`` whose output is one image-shaped map ``(batch, height, width, channels)``."""
    return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"
            and not isinstance(layer.output, (list, tuple)) and len(layer.output.shape) == 4]


def stage_layers(model) -> list[str]:
    """One layer per stage, from the stem to the last convolutional block: the stem's last layer (after the first
    convolution, before the next convolution or pooling), then the last layer before each downsampling (where the
    product of the strides changes) and the last spatial layer."""
    layers = spatial_layers(model)
    convs = [i for i, layer in enumerate(layers) if _is_conv(layer)]
    if not convs:
        return []
    stem = convs[0]
    while (stem + 1 < len(layers) and not _is_conv(layers[stem + 1])
           and "Pooling" not in type(layers[stem + 1]).__name__):
        stem += 1
    jumps = fields(model)
    names = [layers[stem].name]
    for here, after in zip(layers[convs[0]:], [*layers[convs[0] + 1:], None], strict=True):
        if (after is None or jumps[after.name].jump != jumps[here.name].jump) and here.name not in names:
            names.append(here.name)
    return names


def last_map_layer(model):
    """The last layer of ``model`` with a spatial output: where Grad-CAM reads its feature maps."""
    layers = spatial_layers(model)
    return layers[-1] if layers else None


def nested_network(model):
    """The nested model inside ``model`` whose output is spatial (a fine-tuned model's backbone), or None."""
    keras = keras_module()

    for layer in model.layers:
        if isinstance(layer, keras.Model) and len(layer.output.shape) == 4:
            return layer
    return None


def dense_logits(layer, x, name: str = "logits"):
    """``layer`` (a Dense layer ending in a softmax) applied to ``x`` without its activation: the class scores
    Grad-CAM differentiates (Selvaraju et al. 2017 use the score before the softmax)."""
    keras = keras_module()

    kernel, bias = layer.get_weights()
    dense = keras.layers.Dense(kernel.shape[1], name=name, dtype="float32")
    y = dense(keras.ops.cast(x, "float32"))
    dense.set_weights([kernel, bias])
    return y


def head_after(model, layer):
    """The layers of ``model`` after ``layer`` as a model from ``layer``'s output to the class scores (logits).

    ``model`` is a chain at its top level (the scratch CNN; a fine-tuned model around its backbone); its last layer
    is a Dense softmax, rebuilt without the softmax.
    """
    keras = keras_module()

    after = model.layers[model.layers.index(layer) + 1:]
    shape = layer.output.shape[1:]
    x = inputs = keras.Input(shape, name="feature_map")
    for step in after[:-1]:
        x = step(x, training=False) if "Dropout" in type(step).__name__ else step(x)
    return keras.Model(inputs, dense_logits(after[-1], x), name=f"{model.name}_head")
