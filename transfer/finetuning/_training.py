"""Resumable training: per-epoch state in the run folder, early stopping, one stage at a time.

Every epoch leaves a complete, atomically written state (``train_state/``):
running the same command again after a kill continues after the last
finished epoch.  The best weights of the whole run (by validation accuracy,
then validation loss: :func:`selection_key`) are kept across stages; early
stopping and the plateau schedule watch the same ranking.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.runtime import atomic_path, keras_module, tensorflow, write_text_atomic

HISTORY_COLUMNS = ["stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


class TrainState:
    """Per-epoch, atomically written training state of one run folder.

    ``state.json`` is the single source of truth: it names the checkpoint of
    each stage's last finished epoch and holds the history rows.  Checkpoints
    are written under new names before ``state.json`` is replaced, so a kill
    at any moment leaves a consistent state: the epoch it names is complete.
    """

    def __init__(self, out: Path, config_hash: str):
        self.out = out
        self.dir = out / "train_state"
        self.history_path = out / "history.csv"
        meta = self.dir / "state.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {"config": config_hash, "stages": {},
                                                                        "history": []}
        if self.meta["config"] != config_hash:
            raise TransferError(
                f"{out} holds a fine-tuning run with other options (see its config.json): use another out folder, "
                f"or delete {self.dir} to start this one there."
            )
        if self.meta["history"]:
            self.write_history()  # a kill may have come between state.json and history.csv
        self.skipped: dict[str, str] = dict(self.meta.get("skipped", {}))

    def stage(self, name) -> dict:
        return dict(self.meta["stages"].get(name, {"epoch": 0, "best": None, "wait": 0, "lr_wait": 0,
                                                    "done": False}))

    def save_weights(self, model, name, optimizer=None):
        arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
        if optimizer is not None:
            arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
        with atomic_path(self.dir / f"{name}.npz", suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    def has(self, name) -> bool:
        return (self.dir / f"{name}.npz").exists()

    def load_weights(self, model, name, optimizer=None):
        with np.load(self.dir / f"{name}.npz") as z:
            model.set_weights([z[f"w{i}"] for i in range(sum(k.startswith("w") for k in z.files))])
            n_opt = sum(k.startswith("o") for k in z.files)
            if optimizer is not None and n_opt:
                optimizer.build(model.trainable_variables)
                if n_opt == len(optimizer.variables):
                    for i, var in enumerate(optimizer.variables):
                        var.assign(z[f"o{i}"])
                else:
                    import warnings

                    warnings.warn(f"The optimizer state in {name}.npz does not fit ({n_opt} variables, "
                                  f"{len(optimizer.variables)} expected): resuming with a fresh optimizer.",
                                  stacklevel=2)

    def commit(self, stage: str, s: dict, checkpoint: str | None, row: dict | None):
        """Record a finished epoch: one atomic replace of state.json, then tidy up."""
        old = self.meta["stages"].get(stage, {}).get("checkpoint")
        self.meta["skipped"] = {**self.meta.get("skipped", {}), **self.skipped}
        if checkpoint:
            s["checkpoint"] = checkpoint
        self.meta["stages"][stage] = s
        if row is not None:
            self.meta["history"] = [r for r in self.meta["history"]
                                    if (r["stage"], r["epoch"]) != (row["stage"], row["epoch"])] + [row]
        write_text_atomic(self.dir / "state.json", json.dumps(self.meta, indent=1))
        if old and old != s.get("checkpoint"):
            (self.dir / f"{old}.npz").unlink(missing_ok=True)
        for f in self.dir.glob("best-*.npz"):  # earlier bests that state.json no longer names
            if f.stem != self.meta.get("best_checkpoint"):
                f.unlink(missing_ok=True)
        self.write_history()

    def write_history(self):
        with atomic_path(self.history_path, suffix=".csv") as tmp:
            pd.DataFrame(self.meta["history"], columns=HISTORY_COLUMNS).to_csv(tmp, index=False)

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.meta["history"], columns=HISTORY_COLUMNS)


def selection_key(accuracy, loss) -> list | None:
    """How a model is ranked for keeping: validation accuracy first (what the user is scored on), validation
    loss between equal accuracies (few validation images tie often); lower is better. Without a validation
    split, the training loss alone."""
    if loss is None or not math.isfinite(loss):
        return None
    if accuracy is None or not math.isfinite(accuracy):
        return [float(loss)]
    return [-round(float(accuracy), 6), float(loss)]


def beats(key, best, on_every_count=False) -> bool:
    """Whether ``key`` (from :func:`selection_key`) ranks strictly above ``best``.

    With ``on_every_count``, ``key`` must be at least as good on validation
    accuracy and on validation loss, and better on one: how a fine-tuning
    epoch has to beat the head it started from.  A few validation images make
    accuracy alone jump by one image's worth; measured on digits at 5 images
    per class, an epoch kept for one more right image (and a worse loss)
    scored 0.06 below the head on the test images.
    """
    if best is None or not isinstance(best, list) or len(best) != len(key):  # nothing kept yet, or another kind
        return True
    if on_every_count:
        return all(k <= b + 1e-6 for k, b in zip(key, best, strict=True)) and beats(key, best)
    if key[:-1] != best[:-1]:
        return key[:-1] < best[:-1]
    return key[-1] < best[-1] - 1e-6


def _epoch_callback(state: TrainState, stage: str, monitor: str, cfg, log, keep):
    keras = keras_module()

    class EpochState(keras.callbacks.Callback):
        """History row, early stopping, plateau LR and a resumable state after every epoch."""

        def __init__(self):
            super().__init__()
            self.s = state.stage(stage)
            self.start = None

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            opt = self.model.optimizer
            lr = float(np.asarray(opt.learning_rate))
            row = {
                "stage": stage, "epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"), "lr": lr,
                "seconds": round(time.perf_counter() - self.start, 3),
            }
            value = logs.get(monitor)
            value = float(value) if value is not None and math.isfinite(value) else None  # NaN never "improves"
            s = self.s
            key = selection_key(logs.get("val_accuracy") if monitor == "val_loss" else None, value)
            # the first epoch of stage 2 to be kept must beat the head on accuracy and loss alike
            against_head = state.meta.get("best_stage") == "head" and stage != "head"
            if key is not None and beats(key, state.meta.get("best"), on_every_count=against_head):
                # The best of the whole run so far (a fine-tuning epoch must beat the head's best),
                # under a new name that state.json adopts in the same commit as this epoch.
                name = f"best-{stage}-{epoch + 1}"
                state.save_weights(keep or self.model, name)
                state.meta["best"], state.meta["best_stage"] = key, stage
                state.meta["best_checkpoint"] = name
            if key is not None and beats(key, s["best"]):  # the stage's own best, by the same ranking
                s["best"], s["wait"], s["lr_wait"] = key, 0, 0
            else:
                s["wait"] += 1
                s["lr_wait"] += 1
                if cfg.schedule == "plateau" and s["lr_wait"] >= max(1, cfg.patience // 2):
                    opt.learning_rate.assign(max(lr * 0.3, 1e-7))
                    s["lr_wait"] = 0
                if cfg.patience and s["wait"] >= cfg.patience:
                    if epoch + 1 < self.params.get("epochs", epoch + 2):  # not when the last epoch just ran
                        watched = "validation accuracy and loss have" if monitor == "val_loss" else "loss has"
                        log(f"early stopping: {watched} not improved for {cfg.patience} epochs")
                    self.model.stop_training = True
            s["epoch"] = epoch + 1
            s["lr"] = float(np.asarray(opt.learning_rate))
            checkpoint = f"{stage}-{epoch + 1}"
            state.save_weights(keep or self.model, checkpoint, optimizer=opt)
            state.commit(stage, s, checkpoint, row)

    return EpochState()


def _optimizer(cfg, lr, epochs, steps, warmup: bool):
    keras = keras_module()

    if cfg.schedule == "cosine" and epochs > 0:
        # Warm-up over the first epoch when the backbone unfreezes (Goyal et al. 2017): Adam's first steps
        # are full-sized whatever the gradient; without it, the first epoch after a linear-probe head fell
        # to 0.85 training accuracy on digits and fashion-mnist here.
        ramp = steps if warmup and epochs > 1 else 0
        lr = keras.optimizers.schedules.CosineDecay(lr / 100 if ramp else lr, max(1, epochs * steps - ramp), alpha=0.01,
                                                    warmup_target=lr if ramp else None, warmup_steps=ramp)
    return keras.optimizers.Adam(lr)


def tensorboard(log_dir):
    """Keras's own TensorBoard callback, writing the epoch curves to ``log_dir`` (``tensorboard --logdir RUN``).

    No graph and no profile: both trace the model again, which costs seconds on a CPU and shows nothing
    the reports do not.
    """
    keras = keras_module()

    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0, update_freq="epoch")


def fit_stage(model, state, stage, train, val, epochs, lr, steps, cfg, class_weight, log, strategy, keep=None) -> int:
    """Train one stage with resume: continue after the last finished epoch of ``stage``.

    Args:
        model: compiled here under ``strategy`` with Adam at ``lr`` (cosine
            decay over ``epochs * steps`` when ``cfg.schedule`` is cosine,
            after one epoch of linear warm-up from ``lr / 100`` in stage ``finetune``).
        state: the run's :class:`TrainState`; every epoch is committed to it.
        train, val: ``tf.data`` batches (``val`` None: monitor the training loss).
        cfg: gives ``schedule`` and ``patience`` (early stopping, plateau).
        keep: the model whose weights the checkpoints hold, when ``model``
            trains a part of it (default: ``model``).

    Returns:
        The number of epochs the stage has run, over every invocation.
    """
    tf = tensorflow()

    s = state.stage(stage)
    monitor = "val_loss" if val is not None else "loss"
    with strategy.scope():  # the optimizer's variables must live where the model's do
        # XLA on a CPU measured 10-30x slower here: only a GPU may use it.
        model.compile(optimizer=_optimizer(cfg, lr, epochs, steps, warmup=stage == "finetune"),
                      loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=bool(tf.config.list_physical_devices("GPU")) and "auto")
    if s["done"] or epochs == 0:
        return s["epoch"]
    initial = 0
    if s["epoch"] > 0:
        with strategy.scope():
            state.load_weights(keep or model, s["checkpoint"], optimizer=model.optimizer)
        if cfg.schedule == "plateau" and "lr" in s:
            model.optimizer.learning_rate.assign(s["lr"])
        initial = s["epoch"]
        log(f"resuming stage {stage} at epoch {initial + 1} of {epochs}")
    if initial < epochs and not (cfg.patience and s["wait"] >= cfg.patience):
        import sys
        import warnings

        with warnings.catch_warnings():
            # Filtering unreadable files leaves the batch count unknown in advance,
            # which Keras reports as running "out of data" at each epoch's end.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            model.fit(train, validation_data=val, epochs=epochs, initial_epoch=initial, class_weight=class_weight,
                      callbacks=[_epoch_callback(state, stage, monitor, cfg, log, keep),
                                 tensorboard(state.out / "logs" / stage)], shuffle=False,
                      verbose=1 if sys.stdout.isatty() else 2)
    s = state.stage(stage)
    s["done"] = True
    state.commit(stage, s, None, None)
    return s["epoch"]


def load_best_or_last(model, state, stage):
    """The stage's best weights when it holds the run's best, else its last epoch's."""
    last = state.stage(stage).get("checkpoint")
    best = state.meta.get("best_checkpoint")
    if state.meta.get("best_stage") == stage and best and state.has(best):
        state.load_weights(model, best)
    elif last and state.has(last):
        state.load_weights(model, last)


def array_batches(x, y, batch_size: int, seed: int, shuffle=True):
    """``tf.data`` batches of in-memory arrays (the head stage on cached features)."""
    tf = tensorflow()

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
