"""Which layers of a CNN to look at, what each one sees, and the network cut at its last convolutional map.

Everything here reads Keras's public graph: ``model.layers`` in order, each layer's ``input`` and ``output``
tensors, and its ``get_config()``; a nested model (a fine-tuned model's backbone) is split by its own layers.
"""

from __future__ import annotations

from transfer.runtime import keras_module


def _window(layer) -> tuple[int, int]:
    """``(kernel extent, stride)`` of ``layer`` along one axis: 1, 1 for a layer that works pixel by pixel."""
    config = layer.get_config()
    size = config.get("kernel_size", config.get("pool_size"))
    if size is None:  # padding, normalisation, activations, adds: no window (global pooling ends the maps)
        return 1, 1
    size = size[0] if isinstance(size, (list, tuple)) else size
    strides = config.get("strides") or size
    stride = strides[0] if isinstance(strides, (list, tuple)) else strides
    dilation = config.get("dilation_rate", 1)
    dilation = dilation[0] if isinstance(dilation, (list, tuple)) else dilation
    return dilation * (size - 1) + 1, stride


def _inputs(layer) -> list:
    return layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]


def receptive_fields(model) -> dict[str, int]:
    """Each layer's theoretical receptive field in input pixels (one side), by layer name.

    Along every path from the input a ``k``-wide window with stride ``s`` adds ``(k - 1)`` times the product of the
    strides before it (Araujo et al. 2019, "Computing receptive fields of convolutional neural networks"); where
    paths merge (a residual add) the widest counts.
    """
    seen = {id(t): (1, 1) for t in model.inputs}
    fields = {}
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        size, jump = max((seen.get(id(t), (1, 1)) for t in _inputs(layer)), key=lambda f: f[0])
        kernel, stride = _window(layer)
        size, jump = size + (kernel - 1) * jump, jump * stride
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for t in outputs:
            seen[id(t)] = (size, jump)
        fields[layer.name] = size
    return fields


def _is_conv(layer) -> bool:
    keras = keras_module()

    return isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))


def spatial_layers(model) -> list:
    """The layers of ``model`` whose output is one image-shaped map ``(batch, height, width, channels)``."""
    return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"
            and not isinstance(layer.output, (list, tuple)) and len(layer.output.shape) == 4]


def stage_layers(model) -> list[str]:
    """One layer per stage, from the stem to the last convolutional block: the stem's last layer (after the first
    convolution, at its resolution, before the next convolution or pooling), then the last layer at each
    resolution the network passes through."""
    layers = spatial_layers(model)
    convs = [i for i, layer in enumerate(layers) if _is_conv(layer)]
    if not convs:
        return []
    first = convs[0]
    side = layers[first].output.shape[1]
    stem = first
    while (stem + 1 < len(layers) and layers[stem + 1].output.shape[1] == side and not _is_conv(layers[stem + 1])
           and "Pooling" not in type(layers[stem + 1]).__name__):
        stem += 1
    names = [layers[stem].name]
    for i, layer in enumerate(layers[first:], start=first):
        last_at_side = i + 1 == len(layers) or layers[i + 1].output.shape[1] != layer.output.shape[1]
        if last_at_side and layer.name not in names:
            names.append(layer.name)
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
