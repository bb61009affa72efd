"""Predictions for new images: ImageNet top-K of a backbone, or the classes of a finished run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from transfer.backbones import DEFAULT_BACKBONE, get_backbone
from transfer.data import ImageOptions, class_names, list_images, predict_images
from transfer.errors import TransferError
from transfer.runtime import keeps_file_names

PREDICTION_COLUMNS = ["path", "rank", "class_index", "class_name", "score"]
SKIPPED_COLUMNS = ["path", "reason"]


@keeps_file_names()
def predict_imagenet(paths, backbone=DEFAULT_BACKBONE, *, top=5, weights="imagenet",
                     resize="plain", batch_size=32, engine="auto", log=print):
    """Predict ImageNet classes for image files or folders.

    Args:
        paths: image files and/or folders (searched recursively).
        backbone: registry name.
        top: how many classes to keep per image (1-1000).
        weights: ``"imagenet"`` or a weights file (the model keeps its
            ImageNet classifier, so ``"none"`` makes no sense here).
        resize: ``"plain"`` or ``"crop"`` (see :func:`transfer.data.decode_image`).
        batch_size: images per forward pass.
        engine: what runs the model (see :func:`transfer.runtime.frozen_model`); ``log`` hears its one-off export.

    Returns:
        ``(predictions, skipped)``: DataFrames with columns
        ``path, rank, class_index, class_name, score`` and ``path, reason``.

    Raises:
        TransferError: bad arguments, or weights that cannot be had.
    """
    row = get_backbone(backbone)
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise TransferError(f"top={top!r} is not valid: give an integer from 1 to 1000.")
    options = ImageOptions(image_size=row.input_size, resize=resize, batch_size=batch_size)
    options.image_size_for(row.min_input_size, what=row.name)
    if not paths:
        raise TransferError("No images given: pass image files or folders.")
    if str(weights).lower() in ("none", "random"):
        raise TransferError("weights='none' gives a random network whose ImageNet classes mean nothing: "
                            "use 'imagenet' or a weights file with the ImageNet classifier.")
    files, skipped = list_images(paths)

    def build():  # only once an image has decoded: input with nothing readable stays fast
        from transfer.backbones import build_backbone, weights_identity
        from transfer.runtime import frozen_model

        identity = {"what": "imagenet", "backbone": row.name, "weights": weights_identity(row.name, weights)}
        return frozen_model(identity, lambda: build_backbone(row, weights=weights, include_top=True), engine,
                            lambda: _noise(row, row.input_size, batch_size), log)

    kept, probs, bad = predict_images(build, files, row.input_size, resize, batch_size, row.preprocess_input)
    skipped += list(bad.items())
    names = class_names() if kept else ()
    order = np.argsort(-probs, axis=1)[:, :top]
    rows = [(str(files[k]), r + 1, int(i), names[i], float(p[i]))
            for k, p, idx in zip(kept, probs, order, strict=True) for r, i in enumerate(idx)]
    return (pd.DataFrame(rows, columns=PREDICTION_COLUMNS),
            pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))


RUN_PREDICTION_COLUMNS = ["path", "pred_label", "score", "classifier"]


def _noise(row, size: int, n: int) -> np.ndarray:
    """A seeded batch of noise images, preprocessed for ``row``'s model: what engines are checked and timed on."""
    pixels = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    return np.asarray(row.preprocess_input(pixels), np.float32)


@keeps_file_names()
def predict_run(run_dir, paths, classifier=None, batch_size=None, engine="auto", executor="local", log=print):
    """Classify new images with a run's backbone + fitted classifier.

    Args:
        run_dir: the ``--out`` folder of ``transfer classify``.
        paths: image files and/or folders.
        classifier: which fitted classifier; default: the run's best.
        engine: what runs the CNN forward (see :func:`transfer.runtime.frozen_model`).
        executor: where a classify run's CNN pass runs (``local``, ``ray``, ``ray:ADDRESS``); the features
            go to the shared feature cache, so predicting the same files again runs no CNN.

    Returns:
        ``(predictions, skipped)`` with columns ``path, pred_label, score, classifier``
        and ``path, reason``.
    """
    import dataclasses
    import json
    from pathlib import Path

    from transfer.features import ExtractConfig, class_scores, extract_features, load_classifier

    run = Path(run_dir)
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        raise TransferError(f"{run} is not a transfer run folder (no readable config.json): give the out "
                            "folder of `transfer classify` or `transfer finetune`.") from None
    if config.get("command") == "finetune":
        if classifier:
            raise TransferError(f"{run} is a fine-tuning run with one model: drop classifier={classifier}.")
        return _predict_finetuned(run, config, paths, batch_size, engine, log)
    if config.get("command") != "classify":
        raise TransferError(f"{run} holds a {config.get('command')!r} run; run_dir must be the out folder "
                            "of classify or finetune.")
    name, model_file = _fitted_classifier(run, config, classifier)
    if not paths:
        raise TransferError("No images given: pass image files or folders.")
    estimator = load_classifier(model_file)
    cfg = dataclasses.replace(ExtractConfig(**config["extract"]), engine=engine, executor=executor)
    if batch_size:
        cfg = dataclasses.replace(cfg, batch_size=batch_size)
    files, skipped = list_images(paths)
    rows = []
    if files:
        found = extract_features(files, cfg, progress=False, log=log)
        kept, feats = found.paths, found.features
        skipped += found.skipped
        if kept:
            pred = estimator.predict(feats)
            scores = class_scores(estimator, feats)
            order = list(estimator.classes_)
            top = scores[np.arange(len(pred)), [order.index(p) for p in pred]]
            rows = list(zip(kept, pred, top.astype(float), [name] * len(kept), strict=True))
    return (pd.DataFrame(rows, columns=RUN_PREDICTION_COLUMNS), pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))


def _fitted_classifier(run, config: dict, classifier):
    """``(name, file)`` of the classify run's fitted ``classifier`` (default: its best), refused with the reason
    when the run cannot give features for new images."""
    name = classifier or config["best_classifier"]
    model_file = run / "classifiers" / f"{name}.skops"
    # Only the classifiers of the run config.json describes: files left by an
    # earlier run in the same folder may expect other features.
    if name not in config["classifiers"] or not model_file.exists():
        fitted = [c for c in config["classifiers"] if (run / "classifiers" / f"{c}.skops").exists()]
        raise TransferError(f"{run} has no fitted classifier {name!r}. Expected one of: {', '.join(fitted)}.")
    if str(config["extract"]["weights"]).lower() in ("none", "random"):
        raise TransferError(f"{run} used random backbone weights (weights='none'), which are not saved, so its "
                            "features cannot be recomputed: classify again with imagenet or a weights file.")
    return name, model_file


def _predict_finetuned(run, config, paths, batch_size=None, engine="auto", log=print):
    from transfer.calibration import scaled
    from transfer.finetuning import load_saved_model
    from transfer.runtime import frozen_model

    if not paths:
        raise TransferError("No images given: pass image files or folders.")
    model_file = run / "model.keras"
    if not model_file.exists():
        raise TransferError(f"{run} has no model.keras: the fine-tuning did not finish; run it again to resume.")
    cfg = config["finetune"]
    row = get_backbone(cfg["backbone"])
    st = model_file.stat()
    identity = {"what": "model.keras", "path": str(model_file.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    model = frozen_model(identity, lambda: load_saved_model(model_file), engine,
                         lambda: _noise(row, cfg["image_size"], batch_size or cfg["batch_size"]), log)
    classes = np.array(config["classes"])
    bs = batch_size or cfg["batch_size"]
    files, skipped = list_images(paths)
    kept, probs, bad = predict_images(model, files, cfg["image_size"], cfg["resize"], bs, row.preprocess_input)
    probs = scaled(probs, float(config.get("temperature") or 1.0))  # the run's calibrated probabilities
    rows = [(str(files[i]), classes[p.argmax()], float(p.max()), "finetune") for i, p in zip(kept, probs, strict=True)]
    skipped += list(bad.items())
    return (pd.DataFrame(rows, columns=RUN_PREDICTION_COLUMNS), pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))


@keeps_file_names()
def predict_exported(model_file, paths, batch_size=32, log=print):
    """Classify images with a file that ``transfer export`` wrote, and nothing else of the run.

    The file says its classes, and resizes and preprocesses inside: each image
    goes in as decoded, at its own size (images of one size share a batch).

    Args:
        model_file: a ``.keras``, ``.onnx`` or ``.tflite`` file, or a SavedModel folder.
        paths: image files and/or folders.

    Returns:
        ``(predictions, skipped)`` with columns ``path, pred_label, score, classifier``
        (``classifier``: the exported model's name) and ``path, reason``.
    """
    from transfer.data import ImageError, decode_image
    from transfer.serving._export import load_exported

    if not paths:
        raise TransferError("No images given: pass image files or folders.")
    run, meta = load_exported(model_file)
    log(f"{model_file}: {meta['model']} ({len(meta['classes'])} classes, {meta['outputs']})")
    classes = np.array(meta["classes"])
    files, skipped = list_images(paths)
    found, pending = {}, {}  # pending: shape -> [(index, image)], run when batch_size of one shape are in

    def flush(shape):
        items = pending.pop(shape)
        scores = run(np.stack([img for _, img in items]))
        found.update({i: s for (i, _), s in zip(items, scores, strict=True)})

    for i, f in enumerate(files):
        try:
            img = decode_image(f, None)
        except ImageError as e:
            skipped.append((str(f), str(e)))
            continue
        pending.setdefault(img.shape, []).append((i, img))
        if len(pending[img.shape]) >= batch_size:
            flush(img.shape)
        elif sum(map(len, pending.values())) >= 4 * batch_size:  # photos of many sizes: bounded memory
            flush(max(pending, key=lambda shape: len(pending[shape])))
    for shape in list(pending):
        flush(shape)
    rows = [(str(files[i]), classes[s.argmax()], float(s.max()), meta["model"]) for i, s in sorted(found.items())]
    return (pd.DataFrame(rows, columns=RUN_PREDICTION_COLUMNS), pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
