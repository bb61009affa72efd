"""Strategy 1: fine-tune the pretrained CNN with a new head, in two stages.

As the Keras transfer-learning guide and fastai's ``fine_tune`` do it: the
head alone on a frozen backbone (on the cached features of strategy 2 when
augmentation is off, so it takes seconds), then the backbone unfrozen down
to ``freeze`` at ``lr / lr_mult``.  The model and what trains are in
:mod:`transfer.finetuning._model`; the resumable epoch loop in
:mod:`transfer.finetuning._training`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.backbones import BackboneOptions, get_backbone
from transfer.data import TEST_FRACTION, VAL_FRACTION
from transfer.errors import TransferError
from transfer.finetuning._config import FinetuneConfig, finetune_settings
from transfer.runtime import keeps_file_names, keras_module


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _config_hash(cfg, split, precision) -> str:
    options = finetune_settings(cfg)
    blob = json.dumps({"cfg": options, "precision": precision,
                       "split": sorted(map(tuple, split.values.tolist()))},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass
class _Training:
    """What both stages of one fine-tuning share."""

    run: object
    cfg: FinetuneConfig
    state: object
    strategy: object
    features_dir: Path
    log: object
    say: object  # log, or silent when the run already finished (no lines for stages that will not train)
    class_weight: dict | None = None
    train: object = None
    val: object = None
    steps: int = 0

    @property
    def probes(self) -> bool:
        """Whether stage 1 is a linear probe (it needs pretrained weights and no hidden layer)."""
        return self.cfg.head == "probe" and self.cfg.weights != "none" and not self.cfg.hidden

    @property
    def head_on_features(self) -> bool:
        """Whether a trained head (not a probe) trains on the cached features: without augmentation, and with
        pretrained weights (random init is not reproducible, so cached features would come from another net)."""
        return not self.cfg.augment and self.cfg.weights != "none"

    @property
    def extracts_features(self) -> bool:
        """Whether stage 1 runs the feature pass (which also finds the unreadable files)."""
        return self.probes or bool(self.cfg.head_epochs and self.head_on_features)

    @property
    def index_of(self) -> dict:
        return {c: i for i, c in enumerate(self.run.classes)}

    def batches(self, rows, **kw):
        from transfer.data import training_batches

        return training_batches(rows["path"], rows["label"].map(self.index_of), self.cfg,
                                get_backbone(self.cfg.backbone).preprocess_input, self.state.skipped,
                                seed=self.cfg.seed, **kw)

    def fit(self, model, stage, train, val, epochs, lr, keep=None) -> int:
        from transfer.finetuning._training import fit_stage

        return fit_stage(model, self.state, stage, train, val, epochs, lr, self.steps, self.cfg, self.class_weight,
                         self.log, self.strategy, keep=keep)


def _balanced_weights(y) -> dict:
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def _prepare(job: _Training):
    """The model, the training batches and the class weights; says whether the run already finished."""
    from transfer.finetuning._model import build_model

    cfg, run, state = job.cfg, job.run, job.state
    if not job.extracts_features:  # no feature pass finds the unreadable files before training
        from transfer.data import unreadable

        state.skipped.update(unreadable(run.split["path"]))
        run.check_readable(state.skipped)
    with job.strategy.scope():
        model, backbone = build_model(cfg, len(run.classes))
    train_rows, val_rows = run.rows("train"), run.rows("val")
    if cfg.class_weight == "balanced":
        job.class_weight = _balanced_weights(train_rows["label"].map(job.index_of).to_numpy("int32"))
    job.steps = math.ceil(len(train_rows) / cfg.batch_size)
    job.train = job.batches(train_rows, shuffle=True, augment=cfg.augment)
    job.val = job.batches(val_rows) if len(val_rows) else None
    finished = bool(state.meta["stages"]) and all(state.stage(st)["done"] for st in ("head", "finetune")
                                                  if (job.probes or cfg.head_epochs if st == "head" else cfg.epochs))
    if finished:
        job.log(f"{run.out} holds this run, finished: evaluating its best model without training")
        job.say = lambda msg: None
    return model, backbone


def _cached_features(job: _Training):
    """Strategy 2's features of the run's images (one CNN pass, cached and shared)."""
    from transfer.features import ExtractConfig, extract_features

    ecfg = ExtractConfig(**{f.name: getattr(job.cfg, f.name) for f in dataclasses.fields(BackboneOptions)})
    feats = extract_features(job.run.split["path"], ecfg, cache_dir=job.features_dir, log=job.log)
    job.state.skipped.update(feats.skipped)
    job.run.check_readable(job.state.skipped)  # before anything trains
    pos = {p: i for i, p in enumerate(feats.paths)}

    def xy(name):
        frame = job.run.rows(name)
        frame = frame[frame["path"].isin(pos)]
        return feats.features[[pos[p] for p in frame["path"]]], frame["label"].map(job.index_of).to_numpy("int32")

    return feats, xy


def _probe_head(job: _Training, model) -> dict:
    """Stage 1 as a linear probe: the head starts where strategy 2's logistic regression ends."""
    import time

    from transfer.finetuning._model import fit_probe
    from transfer.finetuning._training import selection_key

    state = job.state
    s = state.stage("head")
    done = s["done"] and state.has("after-head")
    job.say(f"stage 1 finished in an earlier run: its linear probe head (C={s.get('C')}) is reused" if done else
            f"stage 1: the head as a linear probe of the backbone's features (cached in {job.features_dir})")
    feats, xy = _cached_features(job)
    info = {"epochs": 0, "on_features": True, "extract_seconds": feats.seconds, "feature_key": feats.key}
    if done:
        state.load_weights(model, "after-head")
        return {**info, "probe_C": s.get("C")}
    start = time.perf_counter()
    probe = fit_probe(*xy("train"), *xy("val"), len(job.run.classes), log=job.log)
    model.get_layer("head_output").set_weights([probe["kernel"], probe["bias"]])
    state.save_weights(model, "after-head")
    if probe["val_loss"] is not None:  # what a fine-tuning epoch has to beat to be kept
        state.meta.update(best=selection_key(probe["val_accuracy"], probe["val_loss"]), best_stage="head",
                          best_checkpoint="after-head")
    s.update(done=True, C=probe["C"], best=probe["val_loss"], val_accuracy=probe["val_accuracy"],
             seconds=round(time.perf_counter() - start, 3))
    state.commit("head", s, None, None)
    job.say(f"linear probe: C={probe['C']:g} (cross-validated on train)" + (
        f"; on validation: accuracy {probe['val_accuracy']:.4f}, loss {probe['val_loss']:.4f}"
        if probe["val_loss"] is not None else ""))
    return {**info, "probe_C": probe["C"]}


def _head_on_features(job: _Training):
    """Stage 1 trained on the cached features of strategy 2: a head that trains in seconds."""
    keras = keras_module()

    from transfer.finetuning._model import head_layers
    from transfer.finetuning._training import array_batches, load_best_or_last

    cfg, run = job.cfg, job.run
    feats, xy = _cached_features(job)

    def batches(name, shuffle=True):
        return array_batches(*xy(name), cfg.batch_size, cfg.seed, shuffle=shuffle)

    # Extracting (or not, when cached) draws different random numbers: reseed so the head starts the same.
    keras.utils.set_random_seed(cfg.seed)
    with job.strategy.scope():
        inputs = keras.Input((feats.features.shape[1],), name="features")
        x = inputs
        for layer in head_layers(cfg, len(run.classes)):
            x = layer(x)
        head = keras.Model(inputs, x, name="head")
    val = batches("val", shuffle=False) if len(run.rows("val")) else None
    epochs = job.fit(head, "head", batches("train"), val, cfg.head_epochs, cfg.lr)
    load_best_or_last(head, job.state, "head")
    return head, epochs, feats


def _train_head(job: _Training, model, backbone) -> dict:
    """Stage 1: the head alone: a linear probe, or trained on cached features or through the frozen backbone."""
    from transfer.finetuning._training import load_best_or_last

    cfg = job.cfg
    backbone.trainable = False
    on_features = job.head_on_features
    if job.probes:
        info = _probe_head(job, model)
    else:
        if cfg.head == "probe":
            job.log("the head is trained, not probed: a linear probe needs pretrained weights and no hidden layer")
        info = {"epochs": 0, "on_features": on_features, "extract_seconds": 0.0, "feature_key": None}
    trained = info.get("probe_C") is None and cfg.head_epochs
    if trained:
        how = (f"on the backbone's features (cached in {job.features_dir})" if on_features
               else "through the frozen backbone")
        job.say("stage 1 finished in an earlier run: its head is reused" if job.state.stage("head")["done"]
                else f"stage 1: head only, {_count(cfg.head_epochs, 'epoch')} {how}")
    if trained and on_features:
        head, info["epochs"], feats = _head_on_features(job)
        info["extract_seconds"], info["feature_key"] = feats.seconds, feats.key
        for layer in head.layers[1:]:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    elif trained:
        info["epochs"] = job.fit(model, "head", job.train, job.val, cfg.head_epochs, cfg.lr)
        load_best_or_last(model, job.state, "head")
    if not job.state.has("after-head"):
        job.state.save_weights(model, "after-head")
    return info


def _train_backbone(job: _Training, model, backbone):
    """Stage 2: unfreeze down to ``freeze``, recompile at ``lr / lr_mult``; keep the best model of both stages."""
    from transfer.finetuning._frozen import stage2_inputs
    from transfer.finetuning._model import frozen_count, layer_table, param_counts, set_trainable
    from transfer.finetuning._training import load_best_or_last

    cfg, state = job.cfg, job.state
    n_frozen = frozen_count(cfg.freeze, backbone.layers)
    set_trainable(backbone, n_frozen, cfg.train_bn)
    layers = layer_table(backbone)
    trainable, frozen = param_counts(model)
    first = layers[layers["trainable"]]
    where = (f"layers {first['index'].min()}-{first['index'].max()} of {len(layers)} "
             f"({first['name'].iloc[0]} ... {first['name'].iloc[-1]})") if len(first) else "none"
    job.say(f"stage 2: backbone trainable: {where}; {trainable:,} trainable / {frozen:,} frozen parameters "
            f"(BatchNorm {'training' if cfg.train_bn else 'frozen, inference mode'})")
    if cfg.train_bn and cfg.batch_size < 32:
        job.log(f"warning: BatchNorm trains on batches of {cfg.batch_size}: small batches make its statistics "
                "noisy; consider leaving train_bn off")
    epochs, once, engine = 0, False, "tensorflow"
    if cfg.epochs and n_frozen < len(backbone.layers):
        fitted, train, val, once, engine = stage2_inputs(job, model, backbone, n_frozen)
        epochs = job.fit(fitted, "finetune", train, val, cfg.epochs, cfg.lr / cfg.lr_mult, keep=model)
    if state.meta.get("best_stage") == "finetune" or state.meta.get("best") is None:
        load_best_or_last(model, state, "finetune")
    else:  # no fine-tuning epoch beat the head alone: keep the model as it was after stage 1
        state.load_weights(model, "after-head")
        if epochs:
            job.log("no fine-tuning epoch beat the head alone on validation accuracy and loss alike: keeping the "
                    "stage 1 model")
    return {"epochs": epochs, "n_frozen": n_frozen, "layers": layers, "trainable": trainable, "frozen": frozen,
            "on_frozen_outputs": once, "frozen_engine": engine}


def _scored(job: _Training, model, head: dict, body: dict):
    """The kept model on the evaluation split, as a result record."""
    from transfer.calibration import network_temperature, scaled
    from transfer.data import timed_predict
    from transfer.reports import Result

    cfg, run = job.cfg, job.run
    rows = run.rows(run.eval_split)
    paths = rows["path"].tolist()
    kept, probs, skipped, rate = timed_predict(model, paths, cfg.image_size, cfg.resize, cfg.batch_size,
                                               get_backbone(cfg.backbone).preprocess_input)
    if not kept:
        raise TransferError(f"No readable image in the {run.eval_split} split: nothing to evaluate on.")
    job.state.skipped.update(skipped)
    history = job.state.history()
    temperature, n_val = network_temperature(
        lambda val: timed_predict(model, val, cfg.image_size, cfg.resize, cfg.batch_size,
                                  get_backbone(cfg.backbone).preprocess_input)[:2], run.rows("val"), run.classes)
    job.log(f"temperature {temperature:.3g} (fitted on {n_val} validation images)")
    return Result(
        strategy="finetune", backbone=cfg.backbone, classifier="finetune", eval_split=run.eval_split,
        paths=[paths[i] for i in kept], y_true=rows["label"].to_numpy()[kept],
        y_pred=np.array(run.classes)[probs.argmax(1)], classes=run.classes, scores=scaled(probs, temperature),
        uncalibrated=probs, temperature=temperature, layer="pooled",
        params={"lr": cfg.lr, "lr_mult": cfg.lr_mult, "dropout": cfg.dropout, "hidden": cfg.hidden},
        n_train=int((~run.rows("train")["path"].isin(job.state.skipped)).sum()),
        # Training time of all epochs, whichever invocations ran them (resumes included).
        # (and the pass of stage 2's frozen layers, when their outputs were computed once)
        fit_seconds=float(history["seconds"].sum()) + float(job.state.stage("head").get("seconds", 0.0))
        + float(job.state.stage("finetune").get("prefix_seconds", 0.0)),
        extract_seconds=head["extract_seconds"],
        feature_dim=int(model.get_layer("head_pool").output.shape[-1]), inference_images_per_second=rate,
        trainable_params=body["trainable"], frozen_params=body["frozen"], freeze=cfg.freeze,
        epochs_run=len(history), run_dir=run.out, skipped=job.state.skipped, **_selection(job.state.meta.get("best")))


def _selection(best) -> dict:
    """The kept model's validation accuracy (its :func:`~transfer.finetuning._training.selection_key`), NaN without a
    validation split."""
    if isinstance(best, list) and len(best) == 2:
        return {"selection_score": -float(best[0]), "selected_on": "validation accuracy of the kept epoch"}
    return {"selection_score": math.nan, "selected_on": "no validation split"}


def _write(job: _Training, model, result, precision: str, head: dict, body: dict):
    from transfer.reports import publishing
    from transfer.runtime import write_csv

    cfg, run = job.cfg, job.run
    with publishing(run.out) as stage:  # the model and its reports replace the old ones together
        model.save(stage / "model.keras")
        write_csv(body["layers"], stage / "layers.csv")
        _write_reports(job, result, precision, head, body, stage)
    job.log(f"{cfg.backbone} fine-tuned (freeze {cfg.freeze}): {run.eval_split} accuracy "
            f"{result.metrics()['accuracy']:.3f}, {result.fit_seconds:.0f} s of training "
            f"({head['epochs']} head + {_count(body['epochs'], 'fine-tuning epoch')}, {precision}); "
            f"{_count(len(job.state.skipped), 'file')} skipped")


def _write_reports(job: _Training, result, precision: str, head: dict, body: dict, folder):
    from transfer.reports import write_reports

    cfg, run = job.cfg, job.run
    write_reports(run, [result], {
        "finetune": finetune_settings(cfg), "engine": cfg.engine, "precision": precision,
        "temperature": result.temperature,
        "head_on_cached_features": bool(head["on_features"] and (job.probes or cfg.head_epochs)),
        "probe_C": head.get("probe_C"),
        "kept": {"finetune": "the best fine-tuning epoch", "head": "the stage 1 model (no fine-tuning epoch beat "
                 "it on validation)"}.get(job.state.meta.get("best_stage"), "the last epoch"),
        "frozen_layers": body["n_frozen"], "stage2_on_frozen_outputs": body["on_frozen_outputs"],
        "stage2_frozen_layers_engine": body["frozen_engine"],
        "head_epochs_run": head["epochs"], "finetune_epochs_run": body["epochs"],
        "features_dir": str(job.features_dir) if head["on_features"] else None,
        "feature_cache_key": head["feature_key"],
    }, folder=folder)


def finetune_run(run, cfg: FinetuneConfig, *, features_dir=None, log=print):
    """Strategy 1 in an opened run folder: two stages, resumable, scored on the evaluation split.

    Writes the run's reports (see :func:`finetune`) and returns its
    :class:`~transfer.reports.Result`; in a run that scores nothing (``run.scored`` False), only the model and its
    ``config.json``, and returns None.

    Args:
        run: from :func:`transfer.reports.open_run`.
        cfg: a validated :class:`FinetuneConfig`.
        features_dir: the feature cache stage 1 uses (default: the shared one).
    """
    keras = keras_module()

    from transfer.features import cache_root
    from transfer.finetuning._precision import choose_precision, distribution_strategy
    from transfer.finetuning._training import TrainState

    precision = choose_precision(cfg.precision, cfg.backbone, log=log)
    state = TrainState(run.out, _config_hash(cfg, run.split, precision))
    keras.utils.set_random_seed(cfg.seed)  # after the precision measurement, which draws random numbers
    keras.mixed_precision.set_global_policy(precision)
    job = _Training(run, cfg, state, distribution_strategy(), cache_root(features_dir), log, log)
    try:
        model, backbone = _prepare(job)
        head = _train_head(job, model, backbone)
        body = _train_backbone(job, model, backbone)
        result = _scored(job, model, head, body) if run.scored else None
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if result is None:  # trained on every image, scored elsewhere: the model and what made it
        _write_unscored(job, model, precision, head, body)
        return None
    _write(job, model, result, precision, head, body)
    return result


def _write_unscored(job: _Training, model, precision: str, head: dict, body: dict):
    from transfer.reports import publishing, write_config
    from transfer.runtime import write_csv

    cfg, run = job.cfg, job.run
    with publishing(run.out) as stage:
        model.save(stage / "model.keras")
        write_csv(body["layers"], stage / "layers.csv")
        write_config(stage / "config.json", {
            **run.settings(), "finetune": finetune_settings(cfg), "engine": cfg.engine, "precision": precision,
            "probe_C": head.get("probe_C"), "frozen_layers": body["n_frozen"], "finetune_epochs_run": body["epochs"]})
    job.log(f"{cfg.backbone} fine-tuned (freeze {cfg.freeze}) on all {len(run.rows('train'))} images: "
            f"{body['epochs']} fine-tuning epochs, nothing scored here")


@keeps_file_names()
def finetune(data, out, cfg: FinetuneConfig | None = None, *, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION,
             features_dir=None, log=print) -> pd.DataFrame:
    """``transfer finetune``: two-stage fine-tuning, evaluated on the run's evaluation split.

    Writes ``model.keras`` (the best model), ``history.csv``, ``metrics.csv``,
    ``predictions.csv``, ``per_class.csv``, ``layers.csv``, ``config.json``,
    ``split.csv`` and ``skipped.csv`` into ``out``.  Running the same call
    again after an interruption resumes after the last finished epoch.

    Args:
        data: a folder, a CSV manifest, ``digits`` or ``fashion-mnist`` (see
            :func:`transfer.data.resolve_source`), or a split table.
        features_dir: the feature cache where stage 1 finds (or leaves) the
            backbone's features (default: the shared one, see
            :func:`transfer.features.cache_root`).

    Returns:
        The one-row metrics table.
    """
    from transfer.backbones import fetch_weights
    from transfer.finetuning._model import check_freeze
    from transfer.reports import claim, metrics_table, open_run

    cfg = (cfg or FinetuneConfig())
    # freeze is checked on a random-init backbone before any data or weights are touched.
    check_freeze(cfg.backbone, cfg.image_size, [cfg.freeze])
    fetch_weights(cfg.backbone, cfg.weights)  # refused before the run folder is made
    with claim(out, "finetune", log=log):
        run = open_run(data, out, "finetune", val_fraction=val_fraction, test_fraction=test_fraction, seed=cfg.seed)
        return metrics_table([finetune_run(run, cfg, features_dir=features_dir, log=log)])
