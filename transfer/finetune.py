"""Strategy 1: fine-tune the pretrained CNN with a new head.

Two stages, as the Keras transfer-learning guide and fastai's ``fine_tune``
do it: the head alone on a frozen backbone (on the cached features of
strategy 2 when augmentation is off, so it takes seconds), then the backbone
unfrozen down to ``freeze`` at ``lr / lr_mult``.  BatchNorm layers stay
frozen and in inference mode (``backbone(x, training=False)``) unless
``train_bn``.  Every epoch leaves a resumable state in the run folder, so
running the same command again after a kill continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.backbones import get_backbone
from transfer.data import ImageError, check_resize, decode_image
from transfer.errors import TransferError
from transfer.fileio import atomic_path, write_text_atomic

SCHEDULES = ("cosine", "plateau", "constant")
HISTORY_COLUMNS = ["stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Options of ``transfer finetune`` (names after fastai's ``fine_tune``).

    Attributes:
        freeze: what stays frozen in stage 2: ``all`` (head only), ``none``,
            a number of backbone layers counted from the input, a fraction
            (``0.7``), or a layer / block name: that layer and everything
            after it train (``block6a`` or ``block6a_expand_conv``).
        head_epochs: stage 1 epochs (head only) at ``lr``.
        epochs: stage 2 epochs at ``lr / lr_mult``.
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int | None = None
    resize: str = "crop"
    batch_size: int = 32
    freeze: str = "none"
    head_epochs: int = 5
    epochs: int = 10
    lr: float = 1e-3
    lr_mult: float = 100.0
    dropout: float = 0.2
    hidden: int = 0
    augment: bool = True
    class_weight: str | None = None
    patience: int = 3
    schedule: str = "cosine"
    precision: str = "auto"
    train_bn: bool = False
    seed: int = 0

    def validated(self) -> FinetuneConfig:
        row = get_backbone(self.backbone)
        size = self.image_size or row.input_size
        if size < row.min_input_size:
            raise TransferError(f"image_size={size} is too small for {row.name}: it needs >= {row.min_input_size}.")
        check_resize(self.resize)
        for name in ("batch_size",):
            if getattr(self, name) < 1:
                raise TransferError(f"{name}={getattr(self, name)} is not valid: give a positive integer.")
        for name in ("head_epochs", "epochs", "hidden", "patience"):
            if getattr(self, name) < 0:
                raise TransferError(f"{name}={getattr(self, name)} is not valid: give 0 or more.")
        if self.head_epochs + self.epochs == 0:
            raise TransferError("head_epochs and epochs are both 0: nothing would be trained.")
        if not (0 < self.lr < math.inf and 0 < self.lr_mult < math.inf):
            raise TransferError(f"lr={self.lr} and lr_mult={self.lr_mult} must both be positive.")
        if not 0 <= self.dropout < 1:
            raise TransferError(f"dropout={self.dropout} is not valid: give a fraction in [0, 1).")
        if self.class_weight not in (None, "none", "balanced"):
            raise TransferError(f"class_weight={self.class_weight!r} is not valid. Expected 'balanced' or none.")
        if self.schedule not in SCHEDULES:
            raise TransferError(f"schedule={self.schedule!r} is not valid. Expected one of: {', '.join(SCHEDULES)}.")
        from transfer.backbones import _check_weights
        from transfer.precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise TransferError(f"precision={self.precision!r} is not valid. Expected one of: {', '.join(PRECISIONS)}.")
        weights = _check_weights(self.weights)
        return dataclasses.replace(self, backbone=row.name, image_size=size, freeze=str(self.freeze),
                                   weights=str(weights) if weights is not None else "none",
                                   class_weight=None if self.class_weight == "none" else self.class_weight)


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
                raise TransferError(f"--freeze {value}: the backbone has {n} layers after its input layer; give 0 "
                                    f"to {n}, a fraction, a layer name, 'all' or 'none'.")
            return int(number) + offset if number else 0
        if not 0 <= number <= 1:
            raise TransferError(f"--freeze {value}: a fraction must lie in [0, 1].")
        return int(round(number * n)) + offset if number else 0
    for i, name in enumerate(names):
        if name == value or name.startswith(value + "_"):
            return i
    prefixes = sorted({nm.split("_")[0] for nm in names} | set(names))
    close = difflib.get_close_matches(value, prefixes, n=5, cutoff=0.5)
    raise TransferError(f"--freeze {value!r}: the backbone has no such layer or block"
                        + (f"; nearest: {', '.join(close)}" if close else "")
                        + ". Give a layer name, a block prefix, a number, a fraction, 'all' or 'none'.")


def _is_bn(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def build_model(cfg: FinetuneConfig, n_classes: int):
    """Backbone (pretrained, headless) + pooling, dropout, [hidden dense], softmax."""
    import keras

    from transfer.backbones import build_backbone

    backbone = build_backbone(cfg.backbone, weights=cfg.weights, image_size=cfg.image_size, pooling=None)
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    # training=False keeps BatchNorm on its ImageNet statistics even while
    # the backbone's other weights train: the known trap of Keras fine-tuning.
    x = backbone(inputs) if cfg.train_bn else backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    head = _head_layers(cfg, n_classes)
    for layer in head:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{cfg.backbone}_finetune"), backbone


def _head_layers(cfg, n_classes):
    import keras

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


def layer_table(backbone) -> pd.DataFrame:
    return pd.DataFrame([
        {"index": i, "name": layer.name, "type": type(layer).__name__, "trainable": bool(layer.trainable),
         "params": int(sum(np.prod(w.shape) for w in layer.weights))}
        for i, layer in enumerate(backbone.layers)
    ])


def _param_counts(model):
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return trainable, frozen


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _augmenter(seed):
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, seed=seed),
        keras.layers.RandomZoom(0.1, seed=seed),
        keras.layers.RandomContrast(0.1, seed=seed),
    ], name="augment")


def image_batches(paths, labels, cfg, *, shuffle=False, augment=False, skipped=None, preprocess=None):
    """``tf.data`` of ``(images, labels)`` batches, preprocessed for the backbone; unreadable files dropped.

    ``cfg`` gives ``image_size``, ``resize``, ``batch_size`` and ``seed``;
    ``preprocess`` defaults to ``cfg.backbone``'s.
    """
    import tensorflow as tf

    preprocess_input = preprocess or get_backbone(cfg.backbone).preprocess_input
    size = cfg.image_size
    paths = [str(p) for p in paths]
    skipped = {} if skipped is None else skipped

    def decode(i):
        i = int(i)
        try:
            return decode_image(paths[i], size, cfg.resize), np.bool_(True)
        except ImageError as e:
            skipped[paths[i]] = str(e)
            return np.zeros((size, size, 3), np.uint8), np.bool_(False)

    def load(i):
        img, ok = tf.numpy_function(decode, [i], [tf.uint8, tf.bool], stateful=False)
        img.set_shape((size, size, 3))
        ok.set_shape(())
        return img, tf.gather(label_tensor, i), ok

    label_tensor = tf.constant(np.asarray(labels, dtype=np.int32))
    ds = tf.data.Dataset.range(len(paths))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)

    def readable(img, y, ok):
        return ok

    def to_float(img, y, ok):
        return tf.cast(img, tf.float32), y

    # A backbone's preprocess_input may import lazily: AutoGraph cannot read importlib's source and would warn.
    @tf.autograph.experimental.do_not_convert
    def preprocess_batch(x, y):
        return preprocess_input(x), y

    ds = ds.filter(readable).map(to_float)
    ds = ds.batch(cfg.batch_size)
    if augment:
        aug = _augmenter(cfg.seed)

        @tf.autograph.experimental.do_not_convert  # Keras layers are graph-ready
        def augmented(x, y):
            return aug(x, training=True), y

        ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(preprocess_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# Resumable training
# ---------------------------------------------------------------------------


class RunState:
    """Per-epoch, atomically written training state of one run folder.

    ``state.json`` is the single source of truth: it names the checkpoint of
    each stage's last finished epoch and holds the history rows.  Checkpoints
    are written under new names before ``state.json`` is replaced, so a kill
    at any moment leaves a consistent state: the epoch it names is complete.
    """

    def __init__(self, out: Path, config_hash: str):
        self.dir = out / "train_state"
        self.history_path = out / "history.csv"
        meta = self.dir / "state.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {"config": config_hash, "stages": {},
                                                                        "history": []}
        if self.meta["config"] != config_hash:
            raise TransferError(
                f"{out} holds a fine-tuning run with other options (see its config.json): use another --out, "
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


def _make_callback(state: RunState, stage: str, monitor: str, cfg, log):
    import keras

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
            best = state.meta.get("best")
            if value is not None and (best is None or value < best - 1e-6):
                # The best of the whole run so far (a fine-tuning epoch must beat the head's best),
                # under a new name that state.json adopts in the same commit as this epoch.
                name = f"best-{stage}-{epoch + 1}"
                state.save_weights(self.model, name)
                state.meta["best"], state.meta["best_stage"] = value, stage
                state.meta["best_checkpoint"] = name
            if value is not None and (s["best"] is None or value < s["best"] - 1e-6):
                s["best"], s["wait"], s["lr_wait"] = float(value), 0, 0
            else:
                s["wait"] += 1
                s["lr_wait"] += 1
                if cfg.schedule == "plateau" and s["lr_wait"] >= max(1, cfg.patience // 2):
                    opt.learning_rate.assign(max(lr * 0.3, 1e-7))
                    s["lr_wait"] = 0
                if cfg.patience and s["wait"] >= cfg.patience:
                    if epoch + 1 < self.params.get("epochs", epoch + 2):  # not when the last epoch just ran
                        log(f"early stopping: {monitor} has not improved for {cfg.patience} epochs")
                    self.model.stop_training = True
            s["epoch"] = epoch + 1
            s["lr"] = float(np.asarray(opt.learning_rate))
            checkpoint = f"{stage}-{epoch + 1}"
            state.save_weights(self.model, checkpoint, optimizer=opt)
            state.commit(stage, s, checkpoint, row)

    return EpochState()


def _optimizer(cfg, lr, epochs, steps):
    import keras

    if cfg.schedule == "cosine" and epochs > 0:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.01)
    return keras.optimizers.Adam(lr)


def _fit_stage(model, state, stage, train, val, epochs, lr, steps, cfg, class_weight, log, strategy):
    """One stage with resume: continue after the last finished epoch of ``stage``."""
    import tensorflow as tf

    s = state.stage(stage)
    monitor = "val_loss" if val is not None else "loss"
    with strategy.scope():  # the optimizer's variables must live where the model's do
        # XLA on a CPU measured 10-30x slower here: only a GPU may use it.
        model.compile(optimizer=_optimizer(cfg, lr, epochs, steps), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=bool(tf.config.list_physical_devices("GPU")) and "auto")
    if s["done"] or epochs == 0:
        return s["epoch"]
    initial = 0
    if s["epoch"] > 0:
        with strategy.scope():
            state.load_weights(model, s["checkpoint"], optimizer=model.optimizer)
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
                      callbacks=[_make_callback(state, stage, monitor, cfg, log)], shuffle=False,
                      verbose=1 if sys.stdout.isatty() else 2)
    s = state.stage(stage)
    s["done"] = True
    state.commit(stage, s, None, None)
    return s["epoch"]


def _head_on_features(cfg, split, index_of, classes, state, class_weight, features_dir, log, strategy):
    """Stage 1 on the cached features of strategy 2: a head that trains in seconds."""
    import keras

    from transfer.features import ExtractConfig, extract_features

    ecfg = ExtractConfig(backbone=cfg.backbone, weights=cfg.weights, layer="pooled", pooling="avg",
                         image_size=cfg.image_size, resize=cfg.resize, batch_size=cfg.batch_size)
    feats = extract_features(split["path"], ecfg, cache_dir=features_dir)
    pos = {p: i for i, p in enumerate(feats.paths)}

    def xy(frame):
        frame = frame[frame["path"].isin(pos)]
        return feats.features[[pos[p] for p in frame["path"]]], frame["label"].map(index_of).to_numpy("int32")

    x_train, y_train = xy(split[split["split"] == "train"])
    val_rows = split[split["split"] == "val"]
    val = xy(val_rows) if len(val_rows) else None
    # Extracting (or not, when cached) draws different random numbers: reseed so the head starts the same.
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        inputs = keras.Input((feats.features.shape[1],), name="features")
        x = inputs
        for layer in _head_layers(cfg, len(classes)):
            x = layer(x)
        head = keras.Model(inputs, x, name="head")
    steps = math.ceil(len(y_train) / cfg.batch_size)
    train = _array_batches(x_train, y_train, cfg)
    val_ds = _array_batches(*val, cfg, shuffle=False) if val is not None else None
    epochs = _fit_stage(head, state, "head", train, val_ds, cfg.head_epochs, cfg.lr, steps, cfg, class_weight, log,
                        strategy)
    _load_best_or_last(head, state, "head")
    return head, epochs, feats


def _load_best_or_last(model, state, stage):
    """The stage's best weights when it holds the run's best, else its last epoch's."""
    last = state.stage(stage).get("checkpoint")
    best = state.meta.get("best_checkpoint")
    if state.meta.get("best_stage") == stage and best and state.has(best):
        state.load_weights(model, best)
    elif last and state.has(last):
        state.load_weights(model, last)


def _array_batches(x, y, cfg, shuffle=True):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=cfg.seed, reshuffle_each_iteration=True)
    return ds.batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)


def _config_hash(cfg, split, precision) -> str:
    blob = json.dumps({"cfg": dataclasses.asdict(cfg), "precision": precision,
                       "split": sorted(map(tuple, split.values.tolist()))},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finetune(data, out, cfg: FinetuneConfig | None = None, *, val_fraction=0.15, test_fraction=0.15,
             features_dir=None, log=print):
    """``transfer finetune``: two-stage fine-tuning, evaluated on the run's evaluation split.

    Writes ``model.keras`` (the best model), ``history.csv``, ``metrics.csv``,
    ``predictions.csv``, ``per_class.csv``, ``layers.csv``, ``config.json``,
    ``split.csv`` and ``skipped.csv`` into ``out``.  Running the same call
    again after an interruption resumes after the last finished epoch.
    ``features_dir`` is where stage 1 finds (or leaves) cached features:
    default ``out/features``; give a ``classify`` run's ``features`` folder
    to reuse its CNN pass.

    Returns:
        The one-row metrics table.
    """
    import keras

    from transfer.backbones import build_backbone
    from transfer.data import evaluation_split, prepare_split, resolve_source
    from transfer.evaluate import evaluate, per_class
    from transfer.features import timed_predict
    from transfer.precision import choose_precision, distribution_strategy
    from transfer.report import check_run_folder, write_config, write_csv

    cfg = (cfg or FinetuneConfig()).validated()
    out = Path(out)
    check_run_folder(out, "finetune")
    # --freeze is checked on a random-init backbone before any data or weights are touched.
    frozen_count(cfg.freeze, build_backbone(cfg.backbone, weights=None, image_size=cfg.image_size).layers)
    source = resolve_source(data)
    out.mkdir(parents=True, exist_ok=True)
    split = prepare_split(source, out, val_fraction, test_fraction, cfg.seed)
    eval_split = evaluation_split(split)
    classes = sorted(set(split["label"]))
    index_of = {c: i for i, c in enumerate(classes)}
    precision = choose_precision(cfg.precision, cfg.backbone)
    state = RunState(out, _config_hash(cfg, split, precision))
    keras.utils.set_random_seed(cfg.seed)  # after the precision measurement, which draws random numbers
    keras.mixed_precision.set_global_policy(precision)
    strategy = distribution_strategy()
    features_dir = Path(features_dir) if features_dir is not None else out / "features"
    try:
        with strategy.scope():
            model, backbone = build_model(cfg, len(classes))
        n_frozen = frozen_count(cfg.freeze, backbone.layers)
        train_rows = split[split["split"] == "train"]
        val_rows = split[split["split"] == "val"]
        eval_rows = split[split["split"] == eval_split]
        y_train = train_rows["label"].map(index_of).to_numpy("int32")
        class_weight = None
        if cfg.class_weight == "balanced":
            from sklearn.utils.class_weight import compute_class_weight

            present = np.unique(y_train)
            weights = compute_class_weight("balanced", classes=present, y=y_train)
            class_weight = {int(c): float(w) for c, w in zip(present, weights, strict=True)}
        steps = math.ceil(len(train_rows) / cfg.batch_size)
        skipped = state.skipped  # filled while images decode; kept in state.json across resumes

        def batches(rows, **kw):
            return image_batches(rows["path"], rows["label"].map(index_of), cfg, **kw)

        train = batches(train_rows, shuffle=True, augment=cfg.augment, skipped=skipped)
        val = batches(val_rows, skipped=skipped) if len(val_rows) else None

        finished = bool(state.meta["stages"]) and all(state.stage(st)["done"] for st in ("head", "finetune")
                                                      if (cfg.head_epochs if st == "head" else cfg.epochs))
        if finished:
            log(f"{out} holds this run, finished: evaluating its best model without training")
        say = (lambda msg: None) if finished else log  # no "stage 1: ..." lines for stages that will not train
        # Stage 1: the head alone.
        backbone.trainable = False
        head_epochs = 0
        # The cached features must come from this very backbone: random init is not reproducible.
        head_from_features = not cfg.augment and cfg.weights != "none"
        extract_seconds = 0.0
        feature_key = None
        if cfg.head_epochs:
            if head_from_features:
                say(f"stage 1: head only, {_count(cfg.head_epochs, 'epoch')} on the backbone's features "
                    f"(cached in {features_dir})")
                head, head_epochs, feats = _head_on_features(cfg, split, index_of, classes, state, class_weight,
                                                             features_dir, log, strategy)
                skipped.update(feats.skipped)
                extract_seconds, feature_key = feats.seconds, feats.key
                for layer in head.layers[1:]:
                    model.get_layer(layer.name).set_weights(layer.get_weights())
            else:
                say(f"stage 1: head only, {_count(cfg.head_epochs, 'epoch')} through the frozen backbone")
                head_epochs = _fit_stage(model, state, "head", train, val, cfg.head_epochs, cfg.lr, steps, cfg,
                                         class_weight, log, strategy)
                _load_best_or_last(model, state, "head")
        if not state.has("after-head"):
            state.save_weights(model, "after-head")

        # Stage 2: unfreeze down to --freeze, recompile at the lower rate.
        set_trainable(backbone, n_frozen, cfg.train_bn)
        layers = layer_table(backbone)
        trainable, frozen = _param_counts(model)
        first = layers[layers["trainable"]]
        where = (f"layers {first['index'].min()}-{first['index'].max()} of {len(layers)} "
                 f"({first['name'].iloc[0]} ... {first['name'].iloc[-1]})") if len(first) else "none"
        say(f"stage 2: backbone trainable: {where}; {trainable:,} trainable / {frozen:,} frozen parameters "
            f"(BatchNorm {'training' if cfg.train_bn else 'frozen, inference mode'})")
        if cfg.train_bn and cfg.batch_size < 32:
            log(f"warning: BatchNorm trains on batches of {cfg.batch_size}: small batches make its statistics "
                "noisy; consider leaving --train-bn off")
        stage2_epochs = 0
        if cfg.epochs and n_frozen < len(backbone.layers):
            stage2_epochs = _fit_stage(model, state, "finetune", train, val, cfg.epochs, cfg.lr / cfg.lr_mult,
                                       steps, cfg, class_weight, log, strategy)
        if state.meta.get("best_stage") == "finetune" or state.meta.get("best") is None:
            _load_best_or_last(model, state, "finetune")
        else:  # no fine-tuning epoch beat the head alone: keep the model as it was after stage 1
            state.load_weights(model, "after-head")
            if stage2_epochs:
                log("no fine-tuning epoch beat the head alone on validation loss: keeping the stage 1 model")
        # Training time of all epochs, whichever invocations ran them (resumes included).
        train_seconds = float(state.history()["seconds"].sum())

        # Evaluation on the evaluation split, with the best weights.
        row = get_backbone(cfg.backbone)
        eval_paths = eval_rows["path"].tolist()
        kept, probs, eval_skipped, rate = timed_predict(model, eval_paths, cfg.image_size, cfg.resize,
                                                        cfg.batch_size, row.preprocess_input)
        if not kept:
            raise TransferError(f"No readable image in the {eval_split} split: nothing to evaluate on.")
        y_true = eval_rows["label"].to_numpy()[kept]
        y_pred = np.array(classes)[probs.argmax(1)]
    finally:
        keras.mixed_precision.set_global_policy("float32")

    skipped.update({eval_paths[i]: reason for i, reason in eval_skipped.items()})
    skipped_rows = sorted(skipped.items())
    history = state.history()
    metrics = pd.DataFrame([{
        "strategy": "finetune", "backbone": cfg.backbone, "layer": "pooled", "classifier": "softmax head",
        "best_params": json.dumps({"lr": cfg.lr, "lr_mult": cfg.lr_mult, "dropout": cfg.dropout,
                                   "hidden": cfg.hidden}),
        "eval_split": eval_split, "n_train": int((~train_rows["path"].isin(skipped)).sum()), "n_test": len(kept),
        **evaluate(y_true, y_pred, probs, classes),
        "fit_seconds": round(train_seconds, 3), "extract_seconds": round(extract_seconds, 3),
        "feature_dim": int(model.get_layer("head_pool").output.shape[-1]),
        "inference_images_per_second": round(rate, 2), "trainable_params": trainable, "frozen_params": frozen,
        "freeze": cfg.freeze, "epochs_run": int(len(history)),
    }])
    with atomic_path(out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    write_csv(metrics, out / "metrics.csv")
    write_csv(pd.DataFrame({"classifier": "finetune", "path": [eval_paths[i] for i in kept], "true_label": y_true,
                            "pred_label": y_pred, "score": probs.max(1)}), out / "predictions.csv")
    per_cls = per_class(y_true, y_pred, classes).assign(classifier="finetune")
    write_csv(per_cls[["classifier", "label", "precision", "recall", "f1", "support"]], out / "per_class.csv")
    write_csv(layers, out / "layers.csv")
    write_csv(pd.DataFrame(skipped_rows, columns=["path", "reason"]), out / "skipped.csv")
    write_config(out / "config.json", {
        "command": "finetune", "data": str(data), "finetune": dataclasses.asdict(cfg), "precision": precision,
        "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": cfg.seed,
        "split_reused": bool(split.attrs.get("reused", False)), "eval_split": eval_split, "classes": classes,
        "head_on_cached_features": bool(head_from_features and cfg.head_epochs),
        "frozen_layers": n_frozen, "head_epochs_run": head_epochs, "finetune_epochs_run": stage2_epochs,
        "features_dir": str(features_dir) if head_from_features else None,
        "feature_cache_key": feature_key, "n_skipped": len(skipped_rows),
    })
    log(f"{cfg.backbone} fine-tuned (freeze {cfg.freeze}): {eval_split} accuracy "
        f"{metrics['test_accuracy'].iloc[0]:.3f}, {train_seconds:.0f} s of training "
        f"({head_epochs} head + {_count(stage2_epochs, 'fine-tuning epoch')}, {precision}); "
        f"{_count(len(skipped_rows), 'file')} skipped")
    return metrics
