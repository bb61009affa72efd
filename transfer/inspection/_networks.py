"""The CNNs of a run, each as the parts ``transfer inspect`` needs: its convolutional body, the body cut at its
last map, and the rest from that map to the class scores.

Strategy 2's classifier is folded into Keras layers on the frozen backbone, as ``transfer export`` folds it
(:func:`transfer.serving.classifier_logits`), so the gradient flows through the same network whichever engine ran
inference; kNN has no gradient.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from transfer.errors import TransferError
from transfer.inspection._layers import head_after, last_map_layer, nested_network
from transfer.inspection._models import Model, run_config
from transfer.runtime import keras_module


@dataclasses.dataclass(frozen=True)
class Network:
    """One CNN to look inside.

    Attributes:
        name: as the run's reports name it.
        kind: ``pretrained``, ``finetune``, ``features`` or ``scratch``.
        body: the convolutional part (a Keras model from the network's input), whose layers' maps are drawn.
        head: from the body's last map to the class scores before the softmax; None without a classifier.
        classes: the class names, by score index.
        image_size, resize: how an image becomes the network's input (see :class:`transfer.data.ImageOptions`).
        preprocess: float RGB pixels in [0, 255] -> the body's input (None: the body takes them as they are).
        note: what was used instead of what was asked, in words ("" when nothing).
    """

    name: str
    kind: str
    body: object
    head: object
    classes: tuple
    image_size: int
    resize: str
    preprocess: object = None
    note: str = ""

    def pixels(self, paths) -> np.ndarray:
        """The images at ``paths`` as the network sees them before preprocessing: uint8 ``(n, size, size, 3)``."""
        from transfer.data import decode_image

        return np.stack([decode_image(p, self.image_size, self.resize) for p in paths])

    def inputs(self, pixels) -> np.ndarray:
        """``pixels`` (uint8) -> the body's float32 input."""
        x = np.asarray(pixels, np.float32)
        return np.asarray(self.preprocess(x.copy()), np.float32) if self.preprocess is not None else x


def pretrained(backbone: str, *, weights="imagenet", image_size=None, resize: str = "crop") -> Network:
    """``backbone`` as the registry builds it (headless, its last block's map as output)."""
    from transfer.backbones import build_backbone, get_backbone

    row = get_backbone(backbone)
    body = build_backbone(row, weights=weights, image_size=image_size, pooling=None)
    return Network(f"{row.name} ({'random' if weights in (None, 'none') else weights} weights)", "pretrained",
                   body, None, (), int(body.input.shape[1]), resize, row.preprocess_input)


def fine_tuned(run_dir, config: dict, name: str) -> Network:
    """A finetune run's model: its backbone, and the new head as the rest."""
    from transfer.backbones import get_backbone

    model = _saved_model(run_dir)
    body = nested_network(model)
    cfg = config["finetune"]
    return Network(name, "finetune", body, head_after(model, body), tuple(config["classes"]), cfg["image_size"],
                   cfg["resize"], get_backbone(cfg["backbone"]).preprocess_input)


def scratch(run_dir, config: dict, name: str) -> Network:
    """A scratch run's CNN: its layers up to the last map, and the dense layers after."""
    keras = keras_module()

    model = _saved_model(run_dir)
    last = last_map_layer(model)
    body = keras.Model(model.input, last.output, name=f"{model.name}_body")
    cfg = config["scratch"]
    return Network(name, "scratch", body, head_after(model, last), tuple(config["classes"]), cfg["image_size"],
                   cfg["resize"])


def features(run_dir, config: dict, name: str, classifier: str) -> Network:
    """A classify run's classifier on its frozen backbone: the backbone up to the feature layer's map, then the
    pooling and the classifier folded into Keras layers."""
    from transfer.backbones import build_backbone, get_backbone
    from transfer.features import ExtractConfig, load_classifier
    from transfer.serving import classifier_logits

    keras = keras_module()
    cfg = ExtractConfig(**config["extract"])
    if str(cfg.weights).lower() in ("none", "random"):
        raise TransferError(f"{run_dir} used random backbone weights (weights='none'), which are not saved: "
                            "there is no network to look inside.")
    base = build_backbone(cfg.backbone, weights=cfg.weights, image_size=cfg.image_size, pooling=None)
    body = base if cfg.layer in ("pooled", "flatten") else keras.Model(base.input, base.get_layer(cfg.layer).output)
    if len(body.output.shape) != 4:
        raise TransferError(f"{name} reads the layer {cfg.layer!r}, which has no spatial map: Grad-CAM needs one.")
    estimator = load_classifier(Path(run_dir) / "classifiers" / f"{classifier}.skops")
    x = inputs = keras.Input(body.output.shape[1:], name="feature_map")
    if cfg.pooling == "max":
        x = keras.layers.GlobalMaxPooling2D()(x)
    elif cfg.pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        x = keras.layers.Flatten()(x)
    head = keras.Model(inputs, classifier_logits(x, estimator, classifier), name=f"{classifier}_head")
    return Network(name, "features", body, head, tuple(str(c) for c in estimator.classes_), cfg.image_size,
                   cfg.resize, get_backbone(cfg.backbone).preprocess_input)


def network(model: Model):
    """``model`` as a :class:`~transfer.inspection.Network`."""
    config = run_config(model.run_dir)
    if model.kind == "features":
        return features(model.run_dir, config, model.name, model.classifier)
    if model.kind == "finetune":
        return fine_tuned(model.run_dir, config, model.name)
    return scratch(model.run_dir, config, model.name)


def _saved_model(run_dir):
    from transfer.finetuning import load_saved_model

    path = Path(run_dir) / "model.keras"
    if not path.exists():
        raise TransferError(f"{run_dir} has no model.keras: the run did not finish; run it again to resume.")
    return load_saved_model(path)
