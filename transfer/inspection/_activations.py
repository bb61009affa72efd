"""What one image computes as it passes through a CNN: each chosen layer's output maps."""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np

from transfer.errors import TransferError
from transfer.inspection._layers import receptive_fields, spatial_layers, stage_layers
from transfer.runtime import keras_module


@dataclasses.dataclass(frozen=True)
class LayerMaps:
    """One layer's output on some images.

    Attributes:
        layer: its name.
        maps: ``(images, height, width, channels)``, float32.
        field: its receptive field in input pixels (one side).
    """

    layer: str
    maps: np.ndarray
    field: int

    def most_active(self, image: int, k: int) -> np.ndarray:
        """The ``k`` channels with the largest mean activation on image ``image``, largest first."""
        mean = self.maps[image].mean(axis=(0, 1))
        return np.argsort(-mean, kind="stable")[:k]

    @property
    def shape(self) -> tuple:
        """The layer's output shape for one image: ``(height, width, channels)``."""
        return tuple(int(n) for n in self.maps.shape[1:])


def check_layers(body, layers) -> list[str]:
    """``layers`` if every one is a spatial layer of ``body``; None or empty: one per stage.

    Raises:
        TransferError: a name that is not one, with the close matches.
    """
    if not layers:
        return stage_layers(body)
    names = [layer.name for layer in spatial_layers(body)]
    for name in layers:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
            raise TransferError(f"--layer {name!r} is not a layer of {body.name} with a spatial output"
                                + (f"; close matches: {', '.join(close)}" if close else "")
                                + f". It has {len(names)}, from {names[0]!r} to {names[-1]!r}; leave --layer out "
                                  "for one per stage.")
    return list(layers)


def activation_maps(network, pixels, layers=None) -> list[LayerMaps]:
    """The output maps of ``layers`` of ``network``'s body on ``pixels`` (uint8, the network's size).

    Args:
        network: a :class:`~transfer.inspection.Network`.
        pixels: ``(n, size, size, 3)`` uint8 images.
        layers: layer names; None: one per stage, from the stem to the last convolutional block.
    """
    keras = keras_module()

    body = network.body
    names = check_layers(body, layers)
    probe = keras.Model(body.input, [body.get_layer(n).output for n in names], name="activations")
    outputs = probe(network.inputs(pixels), training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    fields = receptive_fields(body)
    return [LayerMaps(n, np.asarray(keras.ops.convert_to_numpy(o), np.float32), fields[n])
            for n, o in zip(names, outputs, strict=True)]
