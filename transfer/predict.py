"""ImageNet top-K predictions of a pretrained backbone."""

from __future__ import annotations

import numpy as np
import pandas as pd

from transfer.backbones import get_backbone
from transfer.data import RESIZE_MODES, ImageError, list_images, load_image
from transfer.errors import TransferError

PREDICTION_COLUMNS = ["path", "rank", "class_index", "class_name", "score"]
SKIPPED_COLUMNS = ["path", "reason"]


def _batches(files, size, resize, batch_size, skipped):
    batch, names = [], []
    for f in files:
        try:
            batch.append(load_image(f, size, resize))
            names.append(str(f))
        except ImageError as e:
            skipped.append((str(f), str(e)))
        if len(batch) == batch_size:
            yield names, np.stack(batch)
            batch, names = [], []
    if batch:
        yield names, np.stack(batch)


def predict_imagenet(paths, backbone="efficientnet_lite0", *, top=5, weights="imagenet",
                     resize="plain", batch_size=32):
    """Predict ImageNet classes for image files or folders.

    Args:
        paths: image files and/or folders (searched recursively).
        backbone: registry name.
        top: how many classes to keep per image (1-1000).
        weights: ``"imagenet"`` or a weights file (the model keeps its
            ImageNet classifier, so ``"none"`` makes no sense here).
        resize: ``"plain"`` or ``"crop"`` (see :func:`transfer.data.load_image`).
        batch_size: images per forward pass.

    Returns:
        ``(predictions, skipped)``: DataFrames with columns
        ``path, rank, class_index, class_name, score`` and ``path, reason``.

    Raises:
        TransferError: bad arguments, or weights that cannot be had.
    """
    row = get_backbone(backbone)
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise TransferError(f"top={top!r} is not valid: give an integer from 1 to 1000.")
    if resize not in RESIZE_MODES:
        raise TransferError(f"resize={resize!r} is not valid. Expected one of: {', '.join(RESIZE_MODES)}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TransferError(f"batch_size={batch_size!r} is not valid: give a positive integer.")
    if not paths:
        raise TransferError("No images given: pass image files or folders.")
    files, skipped = list_images(paths)
    rows = []
    if files:
        from transfer.backbones import build_backbone
        from transfer.imagenet import class_names

        model = build_backbone(row, weights=weights, include_top=True)
        names = class_names()
        for batch_paths, x in _batches(files, row.input_size, resize, batch_size, skipped):
            probs = np.asarray(model(row.preprocess_input(x), training=False))
            order = np.argsort(-probs, axis=1)[:, :top]
            for path, p, idx in zip(batch_paths, probs, order, strict=True):
                rows += [(path, r + 1, int(i), names[i], float(p[i])) for r, i in enumerate(idx)]
    return (pd.DataFrame(rows, columns=PREDICTION_COLUMNS),
            pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
