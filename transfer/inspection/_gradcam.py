"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: visual explanations from deep networks via gradient-based
localization"): where in an image the evidence for a class lies, by the network's last convolutional map.

Each channel of the map is weighted by the mean gradient of the class score (before the softmax) over the map's
positions; their weighted sum, kept where positive, is the heat, brought to the image's size.
"""

from __future__ import annotations

import numpy as np

from transfer.inspection._layers import Field, fields
from transfer.runtime import tensorflow


def grad_cam(network, pixels, classes=None, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The Grad-CAM heat of ``network`` on ``pixels`` for ``classes`` (default: each image's predicted class).

    Args:
        network: a :class:`~transfer.inspection.Network` with a head.
        pixels: uint8 images ``(n, size, size, 3)`` at the network's size (:meth:`Network.pixels`).
        classes: a class index per image, or None.
        batch: images per forward and backward pass.

    Returns:
        ``(heat, probabilities)``: ``heat`` ``(n, size, size)`` in [0, 1] (each image's largest value 1; all 0 where
        no position adds evidence), ``probabilities`` ``(n, classes)`` by the softmax of the scores.
    """
    heats, probs = [], []
    for at in range(0, len(pixels), batch):
        chunk = pixels[at:at + batch]
        wanted = None if classes is None else np.asarray(classes[at:at + batch])
        heat, p = _batch(network, network.inputs(chunk), wanted)
        heats.append(heat)
        probs.append(p)
    return np.concatenate(heats), np.concatenate(probs)


def _batch(network, x, wanted):
    tf = tensorflow()

    maps = tf.cast(network.body(x, training=False), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(maps)
        scores = tf.cast(network.head(maps, training=False), tf.float32)
        # Centred (each minus their mean), which leaves the softmax as it is: a binary classifier folded as the
        # logits (0, margin) then gives both classes their half of the margin, not class 0 a constant.
        scores = scores - tf.reduce_mean(scores, axis=1, keepdims=True)
        if wanted is None:
            wanted = np.argmax(scores.numpy(), axis=1)
        chosen = tf.gather(scores, wanted, axis=1, batch_dims=1)
    gradients = tape.gradient(chosen, maps)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # one weight per channel
    heat = aligned(tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1)).numpy(), output_field(network.body),
                   x.shape[1])
    top = heat.reshape(len(heat), -1).max(axis=1)
    heat = np.where(top[:, None, None] > 0, heat / np.maximum(top, 1e-12)[:, None, None], 0.0)
    return np.clip(heat, 0, 1), tf.nn.softmax(scores).numpy()


def heat_share(heat: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """The share of each image's heat inside ``box`` (row slice, column slice): 1 = all of it."""
    total = heat.reshape(len(heat), -1).sum(axis=1)
    inside = heat[:, box[0], box[1]].reshape(len(heat), -1).sum(axis=1)
    return np.where(total > 0, inside / np.maximum(total, 1e-12), 0.0)


def output_field(body) -> Field:
    """Where ``body``'s output map lies on its input (:class:`~transfer.inspection._layers.Field`)."""
    last = next(layer for layer in reversed(body.layers) if layer.output is body.output)
    return fields(body)[last.name]


def aligned(heat: np.ndarray, field: Field, size: int) -> np.ndarray:
    """Maps ``(n, h, w)`` brought to ``(n, size, size)`` image pixels, each position at the centre of its field
    (bilinear between centres, the edge value beyond them): a resize that stretched the map over the whole image
    would shift it by up to half a field where the network pads less than its windows (``valid`` convolutions)."""
    def axis(m):
        u = np.clip((np.arange(size) - field.start) / field.jump, 0, m - 1)
        low = np.floor(u).astype(int)
        return low, np.minimum(low + 1, m - 1), u - low

    r0, r1, fr = axis(heat.shape[1])
    rows = heat[:, r0] * (1 - fr)[None, :, None] + heat[:, r1] * fr[None, :, None]
    c0, c1, fc = axis(heat.shape[2])
    return rows[:, :, c0] * (1 - fc)[None, None, :] + rows[:, :, c1] * fc[None, None, :]
