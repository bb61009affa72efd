import numpy as np
import pandas as pd
from PIL import Image

from transfer.reports import plots


def is_png(path, min_size=100):
    with Image.open(path) as img:
        return img.format == "PNG" and min(img.size) >= min_size


def test_confusion_matrix(tmp_path):
    y = np.array(list("aabbcc"))
    p = np.array(list("aabbca"))
    assert is_png(plots.confusion_matrix_png(y, p, list("abc"), tmp_path / "cm.png"))


def test_training_curves(tmp_path):
    history = pd.DataFrame({"stage": ["head"] * 3 + ["finetune"] * 2, "epoch": [1, 2, 3, 1, 2],
                            "loss": [1, 0.8, 0.7, 0.5, 0.4], "accuracy": [0.5, 0.6, 0.7, 0.8, 0.9],
                            "val_loss": [1.1, 0.9, 0.8, 0.6, 0.5], "val_accuracy": [0.5, 0.6, 0.6, 0.8, 0.85]})
    assert is_png(plots.training_curves_png(history, tmp_path / "curves.png", title="x"))


def test_accuracy_vs_time(tmp_path):
    table = pd.DataFrame({"strategy": ["features", "features", "finetune", "scratch"],
                          "classifier": ["logreg", "knn", "", ""], "accuracy": [0.9, 0.85, 0.93, 0.6],
                          "train_seconds": [1.0, 0.5, 120.0, 20.0]})
    assert is_png(plots.accuracy_vs_time_png(table, tmp_path / "acc_time.png"))


def test_tsne_pixels_vs_features(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 20)
    pixels = rng.normal(size=(40, 8, 8, 3))
    feats = rng.normal(size=(40, 16)) + (labels == "a")[:, None] * 5
    assert is_png(plots.tsne_png(pixels, feats, labels, tmp_path / "tsne.png"))


def test_conv_kernels_before_after(tmp_path):
    rng = np.random.default_rng(0)
    before = rng.normal(size=(3, 3, 3, 32))
    path = plots.conv_kernels_png(before, before + 0.1, tmp_path / "kernels.png")
    assert is_png(path) and not list(tmp_path.glob(".*"))  # written atomically, no temp left


def test_accuracy_vs_time_labels_do_not_overlap_and_are_short():
    from transfer.reports.plots import _short_label, _spread

    xs, ys = np.array([5.0, 5.5, 6.0, 200.0]), np.array([0.95, 0.948, 0.94, 0.95])
    heights = _spread(xs, ys, gap=0.01)
    close = np.sort(heights[:3])
    assert np.all(np.diff(close) >= 0.01 - 1e-12)  # the three points near 5 s get separate lines
    assert heights[3] == ys[3] and heights[0] == ys[0]  # a lone point and the top one keep their own height
    # A label that would run over another model's point moves below it.
    heights = _spread(np.array([19.6, 25.5]), np.array([0.959, 0.959]), gap=0.005)
    assert heights[0] <= 0.959 - 0.005 + 1e-12 and heights[1] == 0.959
    row = {"strategy": "features", "backbone": "resnet50", "classifier": "logreg", "model": "resnet50 features"}
    assert _short_label(row, False) == "features + logreg"
    assert _short_label(row, True) == "resnet50 features + logreg"
    assert _short_label({"strategy": "finetune", "freeze": "100", "backbone": "b"}, False) == "fine-tuned, freeze 100"
