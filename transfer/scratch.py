"""The no-pretraining baseline: a small CNN in the LeNet-5 spirit, trained from random
initialisation on the same split, so that a report can show what pretraining bought."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.data import check_resize
from transfer.errors import TransferError


@dataclasses.dataclass(frozen=True)
class ScratchConfig:
    """Options of the from-scratch baseline.

    Attributes:
        image_size: input height = width (small: the network is small).
        epochs: at most this many epochs; early stopping on validation loss
            with ``patience`` restores the best weights.
    """

    image_size: int = 32
    resize: str = "crop"
    batch_size: int = 32
    epochs: int = 30
    lr: float = 1e-3
    patience: int = 5
    augment: bool = False
    seed: int = 0

    def validated(self) -> ScratchConfig:
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise TransferError(f"image_size={self.image_size!r} is too small for the scratch CNN: give >= 16.")
        check_resize(self.resize)
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise TransferError(f"{name}={getattr(self, name)} is not valid: give a positive integer.")
        if not self.lr > 0:
            raise TransferError(f"lr={self.lr} is not valid: give a positive number.")
        return self


def build_scratch_model(image_size: int, n_classes: int):
    """Conv-pool, conv-pool, dense, softmax: LeNet-5 with ReLU and max pooling."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def _identity(x):
    return x


def train_scratch(data, out, cfg: ScratchConfig | None = None, *, val_fraction=0.15, test_fraction=0.15,
                  log=print):
    """Train the scratch CNN on the run's split and evaluate it like the other strategies.

    Writes ``model.keras``, ``history.csv``, ``metrics.csv`` (``strategy=scratch``),
    ``predictions.csv``, ``per_class.csv``, ``config.json``, ``split.csv`` and
    ``skipped.csv`` into ``out``.

    Returns:
        The one-row metrics table.
    """
    import keras

    from transfer.data import evaluation_split, prepare_split, resolve_source
    from transfer.evaluate import evaluate, per_class
    from transfer.features import timed_predict
    from transfer.fileio import atomic_path
    from transfer.finetune import image_batches
    from transfer.report import check_run_folder, write_config, write_csv

    cfg = (cfg or ScratchConfig()).validated()
    out = Path(out)
    check_run_folder(out, "scratch")
    source = resolve_source(data)
    out.mkdir(parents=True, exist_ok=True)
    split = prepare_split(source, out, val_fraction, test_fraction, cfg.seed)
    eval_split = evaluation_split(split)
    classes = sorted(set(split["label"]))
    index_of = {c: i for i, c in enumerate(classes)}
    rows = {s: split[split["split"] == s] for s in ("train", "val", "test")}
    skipped: dict[str, str] = {}

    def batches(frame, **kw):
        return image_batches(frame["path"], frame["label"].map(index_of), cfg, preprocess=_identity,
                             skipped=skipped, **kw)

    keras.utils.set_random_seed(cfg.seed)
    model = build_scratch_model(cfg.image_size, len(classes))
    model.compile(keras.optimizers.Adam(cfg.lr), "sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)
    val = batches(rows["val"]) if len(rows["val"]) else None
    monitor = "val_loss" if val is not None else "loss"
    timings = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            timings.append(round(time.perf_counter() - self.start, 3))

    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        fit = model.fit(batches(rows["train"], shuffle=True, augment=cfg.augment), validation_data=val,
                        epochs=cfg.epochs, verbose=2, shuffle=False,
                        callbacks=[Timer(), keras.callbacks.EarlyStopping(monitor, patience=cfg.patience,
                                                                          restore_best_weights=True)])
    history = pd.DataFrame(fit.history)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    history.insert(0, "stage", "scratch")
    history["seconds"] = timings
    train_seconds = float(sum(timings))

    eval_paths = rows[eval_split]["path"].tolist()
    kept, probs, bad, rate = timed_predict(model, eval_paths, cfg.image_size, cfg.resize, cfg.batch_size, _identity)
    if not kept:
        raise TransferError(f"No readable image in the {eval_split} split: nothing to evaluate on.")
    skipped.update({eval_paths[i]: reason for i, reason in bad.items()})
    y_true = rows[eval_split]["label"].to_numpy()[kept]
    y_pred = np.array(classes)[probs.argmax(1)]
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    metrics = pd.DataFrame([{
        "strategy": "scratch", "backbone": "none", "layer": "", "classifier": "scratch_cnn",
        "best_params": json.dumps({"lr": cfg.lr, "image_size": cfg.image_size}), "eval_split": eval_split,
        "n_train": int((~rows["train"]["path"].isin(skipped)).sum()), "n_test": len(kept),
        **evaluate(y_true, y_pred, probs, classes),
        "fit_seconds": round(train_seconds, 3), "extract_seconds": 0.0, "feature_dim": 128,
        "inference_images_per_second": round(rate, 2), "trainable_params": trainable, "frozen_params": 0,
        "freeze": "none", "epochs_run": len(history),
    }])
    with atomic_path(out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    write_csv(metrics, out / "metrics.csv")
    write_csv(history, out / "history.csv")
    write_csv(pd.DataFrame({"classifier": "scratch_cnn", "path": [eval_paths[i] for i in kept],
                            "true_label": y_true, "pred_label": y_pred, "score": probs.max(1)}),
              out / "predictions.csv")
    per_cls = per_class(y_true, y_pred, classes).assign(classifier="scratch_cnn")
    write_csv(per_cls[["classifier", "label", "precision", "recall", "f1", "support"]], out / "per_class.csv")
    write_csv(pd.DataFrame(sorted(skipped.items()), columns=["path", "reason"]), out / "skipped.csv")
    write_config(out / "config.json", {
        "command": "scratch", "data": str(data), "scratch": dataclasses.asdict(cfg), "val_fraction": val_fraction,
        "test_fraction": test_fraction, "seed": cfg.seed, "split_reused": bool(split.attrs.get("reused", False)),
        "eval_split": eval_split, "classes": classes, "n_skipped": len(skipped),
    })
    log(f"scratch CNN: {eval_split} accuracy {metrics['test_accuracy'].iloc[0]:.3f}, {train_seconds:.0f} s of "
        f"training ({len(history)} epochs)")
    return metrics
