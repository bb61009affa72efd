"""The exported model's graph: uint8 images in; the run's preprocessing, network and classifier as Keras layers."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.calibration import TINY
from transfer.errors import TransferError
from transfer.runtime import keras_module

# Classifiers folded exactly into Keras layers, and why the others are not.
METADATA_VERSION = 1
FOLDABLE = ("logreg", "linear_svm", "rbf_svm", "mlp")


NOT_FOLDABLE = {
    "knn": "k-nearest neighbours looks up the training features themselves, which have no Keras layer",
}


@dataclasses.dataclass(frozen=True)
class Chosen:
    """The model of a run that :func:`export_model` exports.

    Attributes:
        run_dir: the (sub-)run folder holding it.
        kind: ``finetune``, ``scratch`` or ``features``.
        name: its name in the run's reports (``compare.csv``'s ``model``).
        config: that run's ``config.json``.
        classifier: for ``features``, the scikit-learn classifier's name.
    """

    run_dir: Path
    kind: str
    name: str
    config: dict
    classifier: str | None = None


def _affine(preprocess) -> tuple[np.ndarray, np.ndarray]:
    """``preprocess`` (float RGB in [0, 255] -> the network's input) as ``x @ w + b`` per pixel.

    Raises:
        TransferError: it is not affine per pixel (a new backbone's preprocessing that needs a layer of its own).
    """
    basis = np.concatenate([np.zeros((1, 3)), 255 * np.eye(3)]).astype(np.float32)[None, :, None, :]
    out = np.asarray(preprocess(basis.copy()), np.float64)[0, :, 0, :]
    b, w = out[0], (out[1:] - out[0]) / 255
    probe = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)).astype(np.float32)
    if not np.allclose(np.asarray(preprocess(probe.copy()), np.float64), probe @ w + b, atol=1e-4):
        raise TransferError("this backbone's preprocessing is not a per-pixel affine map, which export writes as a "
                            "1x1 convolution: it cannot be exported yet.")
    return w.astype(np.float32), b.astype(np.float32)


def _image_input(size: int, resize: str, preprocess, antialias: bool):
    """uint8 images of any size -> the network's input at ``size``: ``(input tensor, output tensor)``.

    ``antialias``: Pillow's bilinear resize, which the runs use, filters when it shrinks; TensorFlow's antialiased
    resize is its closest match (mean difference 1.5 grey levels on hymenoptera's photos, 7 without), but its
    op (ScaleAndTranslate) exists in neither ONNX nor TFLite.
    """
    keras = keras_module()

    images = keras.Input((None, None, 3), dtype="uint8", name="images")
    # Resizing passes an image already at the size through unchanged, uint8 and all: cast first.
    x = keras.layers.Rescaling(1.0, name="to_float", dtype="float32")(images)
    x = keras.layers.Resizing(size, size, interpolation="bilinear", crop_to_aspect_ratio=resize == "crop",
                              antialias=antialias, name="resize", dtype="float32")(x)
    # The runs' pixels are Pillow's, rounded to uint8 after resizing: on the fashion sample's 28 px images
    # upscaled to 224, rounding here took the largest probability difference to the run's from 0.25 to 0.064.
    x = keras.ops.clip(keras.ops.round(x), 0, 255)
    if preprocess is not None:
        w, b = _affine(preprocess)
        conv = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False)
        x = conv(x)
        conv.set_weights([w[None, None], b])
    return images, x


def _dense(x, w, b, activation, name):
    keras = keras_module()

    layer = keras.layers.Dense(w.shape[1], activation=activation, name=name)
    y = layer(x)
    layer.set_weights([np.asarray(w, np.float32), np.asarray(b, np.float32)])
    return y


def classifier_layers(x, estimator, name: str):
    """The fitted pipeline ``estimator`` as Keras layers on features ``x``, giving the run's own probabilities.

    Its logits (see :func:`transfer.features._calibrated.logits`: a scaler + linear model or MLP as Dense layers, an
    RBF SVM as :func:`_kernel_layers`), divided by the run's temperature, then a softmax.

    Returns:
        ``(probabilities tensor, what they are)``.
    """
    keras = keras_module()

    z = classifier_logits(x, estimator, name)
    temperature = float(getattr(estimator, "temperature", 1.0))
    z = keras.layers.Rescaling(1.0 / temperature, name="temperature")(z)
    return keras.layers.Softmax(name="probabilities")(z), (f"probabilities (temperature-scaled, T={temperature:.4g})"
                                                            if temperature != 1.0 else "probabilities")


def classifier_logits(x, estimator, name: str):
    """The fitted pipeline ``estimator``'s logits on features ``x`` as Keras layers, before its temperature: what
    :func:`classifier_layers` turns into probabilities, and what Grad-CAM differentiates (``transfer inspect``)."""
    return _kernel_layers(x, estimator) if name == "rbf_svm" else _linear_logits(x, estimator, name)


def _binary(w, b):
    """A binary model's one margin ``z`` as the logits ``(0, z)``: softmax gives the logistic of ``z`` (the run's
    ``(-z/2, z/2)``, shifted)."""
    w, b = np.asarray(w, np.float64), np.atleast_1d(np.asarray(b, np.float64))
    if w.shape[1] != 1:
        return w, b
    return np.hstack([np.zeros_like(w), w]), np.hstack([np.zeros_like(b), b])


def _linear_logits(x, estimator, name: str):
    """A scaler + MLP or linear model's logits: Dense layers on the raw features, the scaler folded in."""
    steps = [step for _, step in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    if len(steps) == 1:  # fitted a cache shard at a time: its scaler inside it
        steps = [steps[0].scaler_, steps[0]]
    scaler, model = steps[0], steps[-1]
    mean = getattr(scaler, "mean_", None)
    scale = getattr(scaler, "scale_", None)
    mean = np.zeros(x.shape[-1]) if mean is None else mean
    scale = np.ones(x.shape[-1]) if scale is None else scale

    def fold(w, b):  # a Dense layer on standardised features -> one on the raw features
        w = np.asarray(w, np.float64) / scale[:, None]
        return w, np.asarray(b, np.float64) - mean @ w

    if name == "mlp":
        ws, bs = model.coefs_, model.intercepts_
        w, b = fold(ws[0], bs[0])
        for i, (w_next, b_next) in enumerate(zip(ws[1:], bs[1:], strict=True)):
            x = _dense(x, w, b, model.activation, f"mlp_hidden_{i + 1}")
            w, b = w_next, b_next
        return _dense(x, *_binary(w, b), None, "classifier")
    return _dense(x, *fold(*_binary(np.atleast_2d(model.coef_).T, model.intercept_)), None, "classifier")


def _kernel_layers(x, estimator):
    """``Normalizer`` then an exact ``SVC``, or then a Nystroem map and a linear SVM, as Keras layers: their logits.

    Both are the RBF kernel against fixed rows (the support vectors; the landmark images) followed by linear maps:
    the Nystroem map's normalisation and the linear SVM fold into one Dense layer; the SVC's dual coefficients
    give each pair of classes its decision, then its one-vs-one vote (:func:`_one_vs_one`).
    """
    keras = keras_module()

    x = keras.layers.UnitNormalization(name="unit_length")(x)  # Normalizer: each row to unit length
    model = estimator.steps[-1][1]
    if hasattr(model, "support_vectors_"):
        return _one_vs_one(_rbf(x, model.support_vectors_, _svc_gamma(model)), model)
    mapping = estimator.steps[1][1]
    kernel = _rbf(x, mapping.components_, mapping.gamma_)
    coef, intercept = _binary(np.atleast_2d(model.coef_).T, model.intercept_)
    w = np.asarray(mapping.normalization_, np.float64).T @ coef
    return _dense(kernel, w, intercept, None, "classifier")


def _svc_gamma(model) -> float:
    """The ``gamma`` an SVC was fitted with: a number (a run records the one that ``"scale"`` resolved to).

    Raises:
        TransferError: a classifier saved before runs recorded it.
    """
    gamma = model.get_params()["gamma"]
    if isinstance(gamma, str):
        raise TransferError(f"This RBF SVM was saved with gamma={gamma!r} unresolved (by an earlier transfer): "
                            "classify again to export it.")
    return float(gamma)


def _rbf(x, rows, gamma: float):
    """``exp(-gamma |x - r|^2)`` for each of ``rows``: the squared distance as ``|x|^2 - 2 x.r + |r|^2``, one
    Dense layer and a sum, clipped at 0 against rounding."""
    keras = keras_module()

    rows = np.asarray(rows, np.float64)
    cross = _dense(x, -2 * rows.T, (rows ** 2).sum(axis=1), None, "distance")
    squared = keras.ops.maximum(cross + keras.ops.sum(keras.ops.square(x), axis=-1, keepdims=True), 0.0)
    return keras.ops.exp(-gamma * squared)


def _one_vs_one(kernel, svc):
    """An SVC's scores from its kernel values: each pair of classes ``(i, j)`` decides by its support vectors'
    dual coefficients; as scikit-learn's ``decision_function``, each class's score is its votes plus its summed
    decisions squashed below 1/3, which breaks a tie of votes without overturning one."""
    keras = keras_module()

    n, dual = len(svc.classes_), np.asarray(svc.dual_coef_, np.float64)
    if n == 2:  # scikit-learn's binary coefficients give the positive class's margin
        return _dense(kernel, *_binary(dual[0][:, None], svc.intercept_), None, "classifier")
    ends = np.cumsum(svc.n_support_)
    rows = [np.arange(end - count, end) for end, count in zip(ends, svc.n_support_, strict=True)]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    w, first, second = np.zeros((len(dual[0]), len(pairs))), np.zeros((len(pairs), n)), np.zeros((len(pairs), n))
    for p, (i, j) in enumerate(pairs):
        w[rows[i], p], w[rows[j], p] = dual[j - 1, rows[i]], dual[i, rows[j]]
        first[p, i], second[p, j] = 1, 1
    decisions = _dense(kernel, w, svc.intercept_, None, "one_vs_one")  # > 0: i wins the pair
    wins = keras.ops.cast(keras.ops.greater_equal(decisions, 0.0), "float32")
    votes = _dense(wins, first - second, second.sum(axis=0), None, "votes")
    summed = _dense(decisions, first - second, np.zeros(n), None, "confidences")
    return keras.ops.add(votes, summed / (3 * (keras.ops.abs(summed) + 1)))


def _without_dropout(model):
    """``model`` with every dropout layer's rate at 0: an exported model only infers, and an exporter that
    traces the training branch as well (tf2onnx) would otherwise meet random ops it cannot convert."""
    keras = keras_module()

    for layer in _every_layer(model):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def _every_layer(model) -> list:
    """The layers of ``model`` and of the models nested in it, depth first (by Keras's public ``layers``)."""
    found, stack = [], list(reversed(model.layers))
    while stack:
        layer = stack.pop()
        found.append(layer)
        stack.extend(reversed(getattr(layer, "layers", [])))
    return found


def _in_float32(model):
    """``model`` with every layer computing in float32: a run trained in mixed precision (bfloat16 where the CPU
    measured faster with it) exports in full precision, which ONNX export requires; the weights are float32
    variables either way."""
    keras = keras_module()

    if all(layer.dtype_policy.name == "float32" for layer in _every_layer(model)):
        return model

    def in_float32(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    clone = keras.models.clone_model(model, clone_function=in_float32, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def _features_model(chosen: Chosen, antialias: bool):
    keras = keras_module()

    from transfer.backbones import get_backbone
    from transfer.features import ExtractConfig, build_extractor, load_classifier

    name = chosen.classifier
    if name in NOT_FOLDABLE:
        raise TransferError(f"{chosen.name} cannot be exported: {NOT_FOLDABLE[name]}. Export a fine-tuned model or "
                            f"one of {', '.join(FOLDABLE)} (--model).")
    cfg = ExtractConfig(**chosen.config["extract"])
    if str(cfg.weights).lower() in ("none", "random"):
        raise TransferError(f"{chosen.run_dir} used random backbone weights (weights='none'), which are not saved: "
                            "classify again with imagenet or a weights file to export it.")
    estimator = load_classifier(chosen.run_dir / "classifiers" / f"{name}.skops")
    images, x = _image_input(cfg.image_size, cfg.resize, get_backbone(cfg.backbone).preprocess_input, antialias)
    features = _without_dropout(build_extractor(cfg))(x)
    scores, what = classifier_layers(features, estimator, name)
    return keras.Model(images, scores, name="transfer_export"), {
        "classes": [str(c) for c in estimator.classes_], "outputs": what, "image_size": cfg.image_size,
        "resize": cfg.resize, "backbone": cfg.backbone, "weights": str(cfg.weights)}


def _trained_model(chosen: Chosen, antialias: bool):
    keras = keras_module()

    from transfer.backbones import get_backbone
    from transfer.finetuning import load_saved_model

    if not (chosen.run_dir / "model.keras").exists():
        raise TransferError(f"{chosen.run_dir} has no model.keras: the run did not finish; run it again to resume.")
    cfg = chosen.config[chosen.kind]
    backbone = cfg.get("backbone", "none")
    preprocess = get_backbone(backbone).preprocess_input if chosen.kind == "finetune" else None
    images, x = _image_input(cfg["image_size"], cfg["resize"], preprocess, antialias)
    network = _without_dropout(_in_float32(load_saved_model(chosen.run_dir / "model.keras")))
    temperature = float(chosen.config.get("temperature") or 1.0)
    # The run's calibrated probabilities: softmax(log p / T), p clipped as transfer.calibration clips it.
    z = keras.ops.log(keras.ops.maximum(network(x), TINY))
    probs = keras.layers.Softmax(name="probabilities")(keras.layers.Rescaling(1.0 / temperature, name="temperature")(z))
    return keras.Model(images, probs, name="transfer_export"), {
        "classes": list(chosen.config["classes"]), "image_size": cfg["image_size"],
        "outputs": f"probabilities (temperature-scaled, T={temperature:.4g})" if temperature != 1.0
        else "probabilities",
        "resize": cfg["resize"], "backbone": backbone, "weights": str(cfg.get("weights", "none"))}


def _training_hash(run_dir: Path) -> str:
    """SHA-256 of the training and validation rows (path and label) of the run's split: which data made it."""
    split = pd.read_csv(run_dir / "split.csv", keep_default_na=False)
    rows = split[split["split"].isin(["train", "val"])][["path", "label", "split"]].sort_values(["path"])
    return hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()


def build_export_model(chosen: Chosen, antialias: bool = True):
    """The self-contained Keras model of ``chosen`` and its metadata: ``(model, metadata)``.

    ``antialias``: resize as Pillow does when shrinking (see :func:`_image_input`); off for ONNX and TFLite.
    """
    build = _features_model if chosen.kind == "features" else _trained_model
    model, facts = build(chosen, antialias)
    # Frozen: BatchNorm then always normalises with its moving statistics, whatever mode an exporter traces
    # (measured: SavedModel's trace of a fresh backbone used batch statistics without this).
    model.trainable = False
    from transfer import __version__

    meta = {"transfer_export": METADATA_VERSION, "model": chosen.name, "kind": chosen.kind,
            "classifier": chosen.classifier, **facts, "input": "uint8 RGB images (n, height, width, 3), any size",
            "preprocessing": "inside the model: resize (bilinear" + (", antialiased" if antialias else "")
                             + (", centre crop" if facts["resize"] == "crop" else "") + "), then the backbone's own",
            "training_data_sha256": _training_hash(chosen.run_dir), "run": str(chosen.run_dir.resolve()),
            "transfer_version": __version__}
    return model, meta
