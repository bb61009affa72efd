"""Strategy 1, the model: a pretrained backbone, a new head, and which layers train.

``freeze`` (all, none, a count, a fraction or a layer / block name) says how
many backbone layers stay frozen in stage 2; BatchNorm layers stay frozen
and in inference mode unless ``train_bn``.
"""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.runtime import keras_module


def frozen_count(freeze: str, layers) -> int:
    """How many backbone layers (from the input) stay frozen in stage 2.

    Raises:
        TransferError: a number beyond the layer count, or a name no layer has
            (the message lists the nearest names).
    """
    names = [layer.name for layer in layers]
    # Counts and fractions are of the real layers: the InputLayer is always "frozen".
    offset = 1 if layers and type(layers[0]).__name__ == "InputLayer" else 0
    n = len(names) - offset
    value = str(freeze).strip()
    if value.lower() == "all":
        return n + offset
    if value.lower() == "none":
        return 0
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if number.is_integer() and "." not in value:
            if not 0 <= number <= n:
                raise TransferError(f"freeze={value!r}: the backbone has {n} layers after its input layer; give 0 "
                                    f"to {n}, a fraction, a layer name, 'all' or 'none'.")
            return int(number) + offset if number else 0
        if not 0 <= number <= 1:
            raise TransferError(f"freeze={value!r}: a fraction must lie in [0, 1].")
        return int(round(number * n)) + offset if number else 0
    for i, name in enumerate(names):
        if name == value or name.startswith(value + "_"):
            return i
    prefixes = sorted({nm.split("_")[0] for nm in names} | set(names))
    close = difflib.get_close_matches(value, prefixes, n=5, cutoff=0.5)
    raise TransferError(f"freeze={value!r}: the backbone has no such layer or block"
                        + (f"; nearest: {', '.join(close)}" if close else "")
                        + ". Give a layer name, a block prefix, a number, a fraction, 'all' or 'none'.")


def _is_bn(layer) -> bool:
    keras = keras_module()

    return isinstance(layer, keras.layers.BatchNormalization)


def build_model(cfg, n_classes: int):
    """Backbone (pretrained, headless) + pooling, dropout, [hidden dense], softmax."""
    keras = keras_module()

    from transfer.backbones import build_backbone

    backbone = build_backbone(cfg.backbone, weights=cfg.weights, image_size=cfg.image_size, pooling=None)
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    # training=False keeps BatchNorm on its ImageNet statistics even while
    # the backbone's other weights train: the known trap of Keras fine-tuning.
    x = backbone(inputs) if cfg.train_bn else backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    head = head_layers(cfg, n_classes)
    for layer in head:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{cfg.backbone}_finetune"), backbone


def head_layers(cfg, n_classes: int) -> list:
    """The new head after pooling: dropout, an optional hidden dense layer, a float32 softmax."""
    keras = keras_module()

    layers = [keras.layers.Dropout(cfg.dropout, name="head_dropout")]
    if cfg.hidden:
        layers.append(keras.layers.Dense(cfg.hidden, activation="relu", name="head_hidden"))
    layers.append(keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head_output"))
    return layers


def set_trainable(backbone, n_frozen: int, train_bn: bool):
    """Freeze the first ``n_frozen`` backbone layers; BatchNorm stays frozen unless ``train_bn``."""
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= n_frozen and (train_bn or not _is_bn(layer))


def split_frozen(model, backbone, n_frozen: int):
    """``model`` cut where its frozen backbone layers end, for stage 2; the parts share ``model``'s layers.

    Returns ``(prefix, rest, trained)``: ``prefix`` maps images to the
    frozen layers' outputs that trainable layers read (more than one where
    the cut crosses a residual branch); ``rest`` maps those to the class
    probabilities; ``trained`` is ``rest`` after ``prefix`` on images, what
    stage 2 trains when it cannot keep the prefix's outputs.  The frozen
    layers run in inference mode: Keras 3 passes ``fit``'s ``training=True``
    through ``backbone(x, training=False)`` to every layer inside, which
    left EfficientNet's drop-connect layers dropping at random in the frozen
    blocks too.  None when nothing is frozen, or the parts would train other
    variables than ``model`` (its checkpoints must fit ``model``).
    """
    keras = keras_module()

    produced = {id(layer.output) for layer in backbone.layers[:n_frozen]}
    cut = []
    for layer in backbone.layers[n_frozen:]:
        for tensor in layer.input if isinstance(layer.input, list) else [layer.input]:
            if id(tensor) in produced and all(tensor is not t for t in cut):
                cut.append(tensor)
    if n_frozen <= 1 or not cut:
        return None
    prefix = keras.Model(backbone.input, cut, name="frozen_prefix")
    upper = keras.Model(cut, backbone.output, name="trainable_backbone")
    inputs = [keras.Input(t.shape[1:], dtype=t.dtype, name=f"prefix_{i}") for i, t in enumerate(cut)]
    x = upper(inputs if len(inputs) > 1 else inputs[0], training=False)
    for layer in model.layers[model.layers.index(backbone) + 1:]:
        x = layer(x)
    rest = keras.Model(inputs, x, name=f"{model.name}_after_prefix")
    image = keras.Input(model.input.shape[1:], dtype=model.input.dtype, name="image")
    trained = keras.Model(image, rest(_inference_only(prefix)(image)), name=f"{model.name}_stage2")
    if [id(v) for v in trained.trainable_variables] != [id(v) for v in model.trainable_variables]:
        return None
    return prefix, rest, trained


def _inference_only(part):
    """``part`` as a layer that runs it with ``training=False`` whatever its caller's mode (its call takes no
    ``training`` argument, so Keras has none to pass on)."""
    keras = keras_module()

    class InferenceOnly(keras.layers.Layer):
        def __init__(self):
            super().__init__(name=f"{part.name}_inference")
            self.part = part

        def call(self, x):
            return self.part(x, training=False)

    return InferenceOnly()


def layer_table(backbone) -> pd.DataFrame:
    """One row per backbone layer: index, name, type, trainable, parameters (``layers.csv``)."""
    return pd.DataFrame([
        {"index": i, "name": layer.name, "type": type(layer).__name__, "trainable": bool(layer.trainable),
         "params": int(sum(np.prod(w.shape) for w in layer.weights))}
        for i, layer in enumerate(backbone.layers)
    ])


def param_counts(model) -> tuple[int, int]:
    """``(trainable, frozen)`` parameter counts of ``model`` as it is set now."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return trainable, frozen


def check_freeze(backbone: str, image_size: int, values) -> None:
    """Check ``freeze`` values against the backbone's real layers, before any data or weights are touched.

    The layers come from a random-init build (about half a second): no
    weights are loaded or downloaded for the check.

    Raises:
        TransferError: the first value that fits no layer (see :func:`frozen_count`).
    """
    from transfer.backbones import build_backbone

    named = [v for v in values if not _fits_any_backbone(v)]
    if not named:
        return  # no model to build: a compare that reuses everything stays fast
    layers = build_backbone(backbone, weights=None, image_size=image_size).layers
    for value in named:
        frozen_count(value, layers)


def check_freeze_value(value) -> None:
    """Refuse a ``freeze`` value that fits no backbone (a fraction outside [0, 1], a negative count, nothing),
    without building one: names and counts are checked against the layers by :func:`check_freeze`.

    Raises:
        TransferError: naming the value and what is allowed.
    """
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if not text or (number is not None and not (0 <= number <= 1 or (number.is_integer() and "." not in text
                                                                      and number > 0))):
        raise TransferError(f"freeze={value!r} is not valid: give 'all', 'none', a number of layers (a whole "
                            "number), a fraction in [0, 1] or a layer or block name (e.g. block6a).")


def _fits_any_backbone(value) -> bool:
    """``all``, ``none`` or a fraction in [0, 1]: valid whatever the layers."""
    text = str(value).strip().lower()
    if text in ("all", "none"):
        return True
    try:
        return "." in text and 0 <= float(text) <= 1
    except ValueError:
        return False


PROBE_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))


def fit_probe(x_train, y_train, x_val, y_val, n_classes: int, log=print) -> dict:
    """A linear probe of cached features, as the new head's starting weights (LP-FT, Kumar et al., ICLR 2022).

    A multinomial logistic regression on standardised features, fitted to
    convergence, its ``C`` (of :data:`PROBE_CS`) chosen by 5-fold
    cross-validated log-loss on ``train``, as strategy 2 chooses its own: so
    the validation split stays an unbiased judge between the probe and the
    fine-tuning epochs that follow.  The standardisation is folded into the
    weights, so they act on the raw features as the head's dense layer does.

    Args:
        y_train, y_val: class indices in ``0..n_classes-1``.

    Returns:
        ``kernel`` (features x classes), ``bias``, the chosen ``C``, and on
        the validation split ``val_loss`` and ``val_accuracy`` (None without one).
    """
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(y_train, minlength=n_classes)
    if (counts == 0).any():
        raise TransferError(f"The training split lacks {int((counts == 0).sum())} of the {n_classes} "
                            "classes: every class needs training images.")
    scaler = StandardScaler().fit(x_train)
    folds = StratifiedKFold(int(min(5, max(2, counts.min()))), shuffle=True, random_state=0)
    with warnings.catch_warnings():  # scikit-learn 1.9 announces new defaults that change nothing here
        warnings.simplefilter("ignore", FutureWarning)
        # scikit-learn's own tolerance: 1e-6 took 4x the time (75 s on digits) for the same C and loss.
        cv = LogisticRegressionCV(Cs=list(PROBE_CS), cv=folds, scoring="neg_log_loss", max_iter=2000,
                                  n_jobs=-1).fit(scaler.transform(x_train), y_train)
    chosen = float(np.ravel(cv.C_)[0])
    if chosen in (PROBE_CS[0], PROBE_CS[-1]):
        log(f"warning: the linear probe's C={chosen:g} is at the edge of its grid ({PROBE_CS[0]:g}-{PROBE_CS[-1]:g})")
    val_loss = val_accuracy = None
    if x_val is not None and len(x_val):
        proba = cv.predict_proba(scaler.transform(x_val))
        val_loss = float(log_loss(y_val, proba, labels=list(range(n_classes))))
        val_accuracy = float(np.mean(proba.argmax(1) == y_val))
    coef = cv.coef_ / scaler.scale_  # on raw features: w . (x - mean) / scale
    bias = cv.intercept_ - coef @ scaler.mean_
    if n_classes == 2:  # one logit for class 1: the same softmax from logits (-z/2, z/2)
        coef, bias = np.vstack([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    return {"kernel": coef.T.astype(np.float32), "bias": bias.astype(np.float32), "C": chosen,
            "val_loss": val_loss, "val_accuracy": val_accuracy}


def load_saved_model(path):
    """A ``model.keras`` that a fine-tuning or scratch run saved, loaded in Keras's safe mode (no lambdas).

    Raises:
        TransferError: the file is missing, truncated, or not a Keras model that loads safely, in one line.
    """
    keras = keras_module()

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, JSON, deserialisation and safe-mode errors all mean one thing here
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise TransferError(f"{path} is not a model this run can load ({type(e).__name__}: {reason}): if it was "
                            "damaged or replaced, train the run again to make it.") from None
