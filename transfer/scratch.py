"""The no-pretraining baseline: a small CNN in the LeNet-5 spirit, trained from random
initialisation on the same split, so that a report can show what pretraining bought."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from transfer.data import SEED, TEST_FRACTION, VAL_FRACTION, ImageOptions
from transfer.errors import TransferError
from transfer.runtime import keeps_file_names, keras_module

MIN_SIZE = 16  # two 2x poolings leave a 4x4 map
# The automatic input size: the images' own, within these bounds. Below 32 px (LeNet-5's input) the two poolings
# leave too small a map; above 64 px this small network gains little and each step costs the square of the side
# (the docs, "The scratch CNN's input size": 32 against 64 px on digits and a fashion-mnist subset).
AUTO_SIZES = (32, 64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScratchConfig(ImageOptions):
    """Options of the from-scratch baseline.

    Attributes:
        image_size: input height = width; None (default): the training images' own median longer side, raised
            to 32 px or lowered to 64 px (upsampling adds pixels, not information, at a cost that grows with
            the square of the side).
        epochs: at most this many epochs; early stopping on validation loss
            with ``patience`` restores the best weights.
    """

    image_size: int | None = None
    epochs: int = 30
    lr: float = 1e-3
    patience: int = 5
    augment: bool = False
    seed: int = SEED

    def __post_init__(self):
        """Checked at construction (``image_size`` None stays: :func:`sized` resolves it on the data).

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        super().__post_init__()
        self.image_size_for(MIN_SIZE, default_size=AUTO_SIZES[0], what="the scratch CNN")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise TransferError(f"epochs={self.epochs} is not valid: give a positive integer.")
        if not self.lr > 0:
            raise TransferError(f"lr={self.lr} is not valid: give a positive number.")


def sized(cfg: ScratchConfig, train_paths, log=print) -> ScratchConfig:
    """``cfg`` with ``image_size`` resolved: as given, or the training images' own size within :data:`AUTO_SIZES`."""
    from transfer.data import median_side

    if cfg.image_size is not None:
        return cfg
    side = median_side(train_paths)
    size = AUTO_SIZES[1] if side is None else min(max(side, AUTO_SIZES[0]), AUTO_SIZES[1])
    log(f"scratch CNN input: {size} px (the training images' median side is {side} px; automatic sizes lie "
        f"within {AUTO_SIZES[0]}-{AUTO_SIZES[1]} px)")
    return dataclasses.replace(cfg, image_size=size)


def build_scratch_model(image_size: int, n_classes: int):
    """Conv-pool, conv-pool, dense, softmax: LeNet-5 with ReLU and max pooling."""
    keras = keras_module()
    layers = keras_module().layers

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


def _fit(run, cfg: ScratchConfig, skipped: dict):
    """Train on the run's train split, early stopping on val; returns ``(model, history)``."""
    import warnings

    keras = keras_module()

    from transfer.data import training_batches, unreadable
    from transfer.finetuning import tensorboard

    skipped.update(unreadable(run.split["path"]))
    run.check_readable(skipped)  # before anything trains
    index_of = {c: i for i, c in enumerate(run.classes)}

    def batches(frame, **kw):
        return training_batches(frame["path"], frame["label"].map(index_of), cfg, _identity, skipped, seed=cfg.seed,
                                **kw)

    keras.utils.set_random_seed(cfg.seed)
    model = build_scratch_model(cfg.image_size, len(run.classes))
    model.compile(keras.optimizers.Adam(cfg.lr), "sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)
    val = batches(run.rows("val")) if len(run.rows("val")) else None
    timings = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            timings.append(round(time.perf_counter() - self.start, 3))

    stop = keras.callbacks.EarlyStopping("val_loss" if val is not None else "loss", patience=cfg.patience,
                                         restore_best_weights=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        fit = model.fit(batches(run.rows("train"), shuffle=True, augment=cfg.augment), validation_data=val,
                        epochs=cfg.epochs, verbose=2, shuffle=False,
                        callbacks=[Timer(), stop, tensorboard(run.out / "logs" / "scratch")])
    history = pd.DataFrame(fit.history)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    history.insert(0, "stage", "scratch")
    history["seconds"] = timings
    return model, history


def _write_unscored(run, cfg: ScratchConfig, model, history, log):
    from transfer.reports import publishing, write_config
    from transfer.runtime import write_csv

    with publishing(run.out) as stage:
        model.save(stage / "model.keras")
        write_csv(history, stage / "history.csv")
        write_config(stage / "config.json", {**run.settings(), "scratch": dataclasses.asdict(cfg)})
    log(f"scratch CNN on all {len(run.rows('train'))} images: {len(history)} epochs, nothing scored here")


def kept_epoch(history: pd.DataFrame) -> int:
    """The epoch early stopping restored (the lowest validation loss), counted from 1."""
    return int(history["val_loss"].idxmin()) + 1 if "val_loss" in history and history["val_loss"].notna().any() \
        else len(history)


def _selection(history: pd.DataFrame) -> dict:
    """The validation accuracy of the epoch early stopping restored (the lowest validation loss)."""
    if "val_loss" not in history or history["val_loss"].isna().all():
        return {"selection_score": float("nan"), "selected_on": "no validation split"}
    best = history.loc[history["val_loss"].idxmin()]
    return {"selection_score": float(best["val_accuracy"]), "selected_on": "validation accuracy of the kept epoch"}


def scratch_run(run, cfg: ScratchConfig, log=print):
    """The scratch CNN in an opened run folder: trained, scored, reports written.

    Returns:
        Its :class:`~transfer.reports.Result`; None in a run that scores nothing (``run.scored`` False: only the
        model, its history and ``config.json`` are written).
    """
    from transfer.calibration import network_temperature, scaled
    from transfer.data import timed_predict
    from transfer.reports import Result, publishing, write_reports
    from transfer.runtime import write_csv

    skipped: dict[str, str] = {}
    cfg = sized(cfg, run.rows("train")["path"], log)
    model, history = _fit(run, cfg, skipped)
    if not run.scored:  # trained on every image, scored elsewhere: the model and what made it
        return _write_unscored(run, cfg, model, history, log)
    rows = run.rows(run.eval_split)
    paths = rows["path"].tolist()
    kept, probs, bad, rate = timed_predict(model, paths, cfg.image_size, cfg.resize, cfg.batch_size, _identity)
    if not kept:
        raise TransferError(f"No readable image in the {run.eval_split} split: nothing to evaluate on.")
    skipped.update(bad)
    temperature, n_val = network_temperature(
        lambda val: timed_predict(model, val, cfg.image_size, cfg.resize, cfg.batch_size, _identity)[:2],
        run.rows("val"), run.classes)
    result = Result(
        strategy="scratch", backbone="none", classifier="scratch_cnn", eval_split=run.eval_split,
        paths=[paths[i] for i in kept], y_true=rows["label"].to_numpy()[kept],
        y_pred=np.array(run.classes)[probs.argmax(1)], classes=run.classes, scores=scaled(probs, temperature),
        uncalibrated=probs, temperature=temperature,
        params={"lr": cfg.lr, "image_size": cfg.image_size},
        n_train=int((~run.rows("train")["path"].isin(skipped)).sum()), fit_seconds=float(history["seconds"].sum()),
        feature_dim=int(model.get_layer("fc").units), inference_images_per_second=rate,
        trainable_params=int(sum(np.prod(w.shape) for w in model.trainable_weights)), frozen_params=0,
        freeze="none", epochs_run=len(history), run_dir=run.out, skipped=skipped, **_selection(history))
    with publishing(run.out) as stage:  # the model and its reports replace the old ones together
        model.save(stage / "model.keras")
        write_csv(history, stage / "history.csv")
        write_reports(run, [result], {"scratch": dataclasses.asdict(cfg), "temperature": temperature}, folder=stage)
    log(f"scratch CNN: {run.eval_split} accuracy {result.metrics()['accuracy']:.3f}, "
        f"{result.fit_seconds:.0f} s of training ({len(history)} epochs); temperature {temperature:.3g} (fitted on "
        f"{n_val} validation images)")
    return result


@keeps_file_names()
def train_scratch(data, out, cfg: ScratchConfig | None = None, *, val_fraction=VAL_FRACTION,
                  test_fraction=TEST_FRACTION, log=print) -> pd.DataFrame:
    """Train the scratch CNN on the run's split and evaluate it like the other strategies.

    Writes ``model.keras``, ``history.csv``, ``metrics.csv`` (``strategy=scratch``),
    ``predictions.csv``, ``per_class.csv``, ``config.json``, ``split.csv`` and
    ``skipped.csv`` into ``out``.

    Args:
        data: a folder, a CSV manifest, ``digits`` or ``fashion-mnist`` (see
            :func:`transfer.data.resolve_source`), or a split table.

    Returns:
        The one-row metrics table.
    """
    from transfer.reports import claim, metrics_table, open_run

    cfg = (cfg or ScratchConfig())
    with claim(out, "scratch", log=log):
        run = open_run(data, out, "scratch", val_fraction=val_fraction, test_fraction=test_fraction, seed=cfg.seed)
        return metrics_table([scratch_run(run, cfg, log=log)])
