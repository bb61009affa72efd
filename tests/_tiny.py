"""A tiny CNN as a backbone registry row, for tests where ImageNet features are not the point: four 3x3 'valid'
convolutions (no padding, so a blank image's maps are constant across space), BatchNorm, ReLU, two poolings;
a few thousand parameters, random weights (or a weights file saved from it)."""

from __future__ import annotations

from transfer.backbones import Backbone
from transfer.backbones._registry import LazyFn

# Its "ImageNet" weights: a file the tests make once per session (:func:`pretrained_weights_file`), found where a
# keras.applications class finds its cached file; None until then (a backbone whose weights cannot be had).
IMAGENET = None


def tiny_net(include_top=False, weights=None, input_shape=None, pooling=None):
    """Built as a keras.applications class is: ``weights`` None, ``"imagenet"`` or a weights file."""
    from transfer.runtime import keras_module

    keras = keras_module()
    layers = keras.layers
    inputs = keras.Input(input_shape or (32, 32, 3), name="input_layer")
    x = inputs
    for name, width, pool in (("stem", 8, False), ("block1", 16, True), ("block2", 24, True), ("top", 32, False)):
        x = layers.Conv2D(width, 3, padding="valid", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        x = layers.Activation("relu", name=f"{name}_activation")(x)
        if pool:
            x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    body = keras.Model(inputs, x, name="tiny")
    if weights == "imagenet":
        if IMAGENET is None:  # the message Keras gives for a weights file it cannot download
            raise OSError("URL fetch failure on https://example.invalid/tiny.weights.h5: None -- offline (tests)")
        body.load_weights(IMAGENET)
    elif weights not in (None, "none"):
        body.load_weights(weights)
    if include_top:  # a 1000-way classifier (random, seeded) in place of ImageNet's, so `transfer predict` runs
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        head = layers.Dense(1000, activation="softmax", name="predictions",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=0))
        return keras.Model(inputs, head(x), name="tiny")
    if pooling in ("avg", "max"):
        pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
        x = pool(name=f"{pooling}_pool")(x)
    model = keras.Model(inputs, x, name="tiny")
    return model


def preprocess_input(x):
    return x / 127.5 - 1.0


ROW = Backbone(name="tiny", family="keras.applications", builder=LazyFn("tests._tiny", "tiny_net"),
               preprocess_input=LazyFn("tests._tiny", "preprocess_input"), input_size=32, feature_size=32,
               params=0, weights_source="random, or a weights file (tests only)", weights_file="tiny.weights.h5",
               min_input_size=16)


def weights_file(path, size: int = 48, seed: int = 0):
    """A weights file for the tiny backbone at ``size``, from a seeded random start: a run can be rebuilt from it."""
    from transfer.runtime import keras_module

    keras = keras_module()
    keras.utils.set_random_seed(seed)
    tiny_net(input_shape=(size, size, 3)).save_weights(path)
    return path


SOURCE_COLOURS = ((220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 40), (235, 235, 235), (15, 15, 15))


def source_images(n: int, size: int, seed: int = 0):
    """A stand-in for ImageNet, for the tiny backbone: one square of one of six colours at a random place on grey
    noise, labelled by its colour: ``(images uint8 (n, size, size, 3), labels)``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(110, 20, (n, size, size, 3)), 0, 255)
    labels = rng.integers(len(SOURCE_COLOURS), size=n)
    for image, label in zip(images, labels, strict=True):
        r, c = rng.integers(0, size - 10, size=2)
        image[r:r + 10, c:c + 10] = SOURCE_COLOURS[label]
    return images.astype(np.uint8), labels


def pretrained_weights_file(path, size: int = 48, seed: int = 0, n: int = 600, epochs: int = 6):
    """A weights file for the tiny backbone pretrained on :func:`source_images` (every colour detected anywhere):
    what ImageNet is to a real backbone, in a few seconds."""
    from transfer.runtime import keras_module

    keras = keras_module()
    keras.utils.set_random_seed(seed)
    images, labels = source_images(n, size, seed)
    body = tiny_net(input_shape=(size, size, 3), pooling="avg")
    model = keras.Sequential([body, keras.layers.Dense(len(SOURCE_COLOURS), activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(preprocess_input(images.astype("float32")), labels, batch_size=32, epochs=epochs, verbose=0)
    body.save_weights(path)
    return path


def run_cli(imagenet: str, argv: list[str]) -> None:
    """The CLI in a fresh process with the tiny row registered and its "ImageNet" weights at ``imagenet``:
    ``python -c "from tests import _tiny; _tiny.run_cli(WEIGHTS, ARGS)"``, as a user's ``transfer ARGS``."""
    import dataclasses

    import cli
    from transfer.backbones import REGISTRY

    global IMAGENET
    IMAGENET = imagenet
    REGISTRY["tiny"] = dataclasses.replace(ROW, weights_file=str(imagenet))
    cli.main(argv)


if __name__ == "__main__":  # python -m tests._tiny ARGS...: `transfer ARGS` with the tiny row, for tests' processes
    import os
    import sys

    run_cli(os.environ["TRANSFER_TINY_IMAGENET"], sys.argv[1:])
