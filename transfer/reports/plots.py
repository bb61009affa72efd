"""PNG plots of a comparison (matplotlib, no display needed).

Each function takes plain data (arrays, DataFrames) and a path, writes the
PNG atomically and returns the path, so notebooks and the CLI draw the same
figures from the same reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transfer.runtime import atomic_path

# How to read each plot, one line, by the start of its file name (report.html prints it under the plot).
CAPTIONS = {
    "confusion-": "rows are the true classes, columns the predicted ones: this strategy's representative "
                  "(chosen before the test images); off-diagonal cells are its mistakes.",
    "accuracy-vs-time": "each model's accuracy against its training time (log scale), coloured by strategy: up and "
                        "to the left is better; the table's p-values say which gaps are more than noise.",
    "curves-": "training and validation loss and accuracy per epoch of the stages trained by gradient descent (a "
               "dotted line where the head stage ends and fine-tuning starts; a head fitted as the linear probe "
               "has no epochs): a validation curve that turns up while training keeps falling is over-fitting.",
    "tsne-": "t-SNE maps of the raw pixels (left) and of the frozen features (right), coloured by class: "
             "clusters that separate better on the right are what pretraining gives a classifier on the features.",
    "conv-kernels-": "the first convolution's kernels before and after fine-tuning: little change means the early "
                     "layers kept their ImageNet filters.",
    "gradcam-": "Grad-CAM: where in each test image the evidence for the predicted class lies (red: most), by the "
                "last convolutional map's channels weighted by the class score's gradient; a model right for the "
                "wrong reason looks at the background. Titles: true -> predicted (probability); red titles are "
                "mistakes, the most confident ones.",
    "activations-": "one image through the network: a row per stage (layer name, output size, receptive field: the "
                    "yellow square on the image is what one position of that layer sees), its most active "
                    "channels: edges and colours early, parts of objects late.",
    "kernels": "the first convolution's kernels as colour tiles (mid-grey 0): pretrained; where fine-tuning trained "
               "the stem, the fine-tuned ones on the same scale and their difference; the scratch CNN's on its own "
               "scale.",
    "block-change": "how far fine-tuning moved each block's weights, relative to their pretrained size: frozen "
                    "blocks (grey) stay at 0.",
    "reliability": "reliability of each strategy's representative after temperature scaling: its test images "
                   "binned by the probability it gave its prediction (15 bins), each point the share of them it got "
                   "right; on the diagonal a score of 0.8 is right 8 times in 10 (ECE: the mean gap, before and "
                   "after scaling).",
}


def caption(name: str) -> str:
    """The one-line reading guide of the compare plot file ``name`` (empty for a plot without one)."""
    return next((text for start, text in CAPTIONS.items() if Path(name).name.startswith(start)), "")


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kwargs)


def _save(plt, fig, path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def confusion_matrix_png(y_true, y_pred, labels, path, title="") -> Path:
    """Counts of true (rows) vs predicted (columns) labels, with the counts written in."""
    from sklearn.metrics import confusion_matrix

    labels = list(labels)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    import textwrap

    width = 1.2 + 0.45 * len(labels)
    plt, (fig, ax) = _figure(figsize=(width, 1.0 + 0.45 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 6 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # Wrapped to the figure's width (about 13 characters an inch at 9 pt): with 2 classes a model's name is wider.
    title = title or f"accuracy {np.trace(cm) / max(cm.sum(), 1):.3f}"
    ax.set_title(textwrap.fill(title, max(24, int(13 * width))), fontsize=9)
    for (i, j), n in np.ndenumerate(cm):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="white" if n > cm.max() / 2 else "black")
    return _save(plt, fig, path)


def training_curves_png(history: pd.DataFrame, path, title="") -> Path:
    """Loss and accuracy per epoch, the stages one after the other (columns of ``history.csv``)."""
    history = history.reset_index(drop=True)
    x = np.arange(1, len(history) + 1)
    plt, (fig, axes) = _figure(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(x, history[metric], label=f"train {metric}")
        if f"val_{metric}" in history and history[f"val_{metric}"].notna().any():
            ax.plot(x, history[f"val_{metric}"], label=f"val {metric}")
        for boundary in np.flatnonzero(history["stage"].ne(history["stage"].shift()).to_numpy())[1:]:
            ax.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch (all stages)")
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def _short_label(row: dict, several_backbones: bool) -> str:
    strategy = row.get("strategy", "")
    if strategy == "features" and row.get("classifier"):
        name = f"features + {row['classifier']}"
    elif strategy == "finetune" and row.get("freeze"):
        name = f"fine-tuned, freeze {row['freeze']}"
    elif strategy == "scratch":
        return "scratch CNN"
    else:
        name = str(row.get("model") or row.get("classifier") or strategy)
    return f"{row['backbone']} {name}" if several_backbones and row.get("backbone") else name


def _spread(xs, ys, gap, near=0.7, shift=1.12):
    """Label heights: each point's own, moved down where it would overlap an earlier label or another point.

    Labels start at ``x * shift`` and are taken to reach ``near`` decades to the right (log-x axis).
    """
    lx, ys = np.log10(np.asarray(xs, dtype=float)), np.asarray(ys, dtype=float)
    heights = ys.copy()
    placed: list[tuple[float, float]] = []
    for i in np.argsort(-ys, kind="stable"):
        y = heights[i]
        for _ in range(2 * len(ys) + 1):
            clash = [h for x, h in placed if abs(lx[i] - x) < near and abs(y - h) < gap]
            clash += [ys[j] for j in range(len(ys)) if j != i and np.log10(shift) <= lx[j] - lx[i] < near
                      and abs(y - ys[j]) < gap / 2]
            if not clash:
                break
            y = min(clash) - gap
        heights[i] = y
        placed.append((float(lx[i]), float(y)))
    return heights


def accuracy_vs_time_png(table: pd.DataFrame, path, time_column="train_seconds") -> Path:
    """One point per trained model: accuracy against training time (log scale), coloured by strategy."""
    plt, (fig, ax) = _figure(figsize=(7.5, 4.5))
    rows = table[table[time_column] > 0].reset_index(drop=True)
    several = "backbone" in rows and rows.loc[rows["strategy"] != "scratch", "backbone"].nunique() > 1
    order = ["features", "finetune", "scratch"]  # fixed colours: the same strategy looks the same in every run
    for strategy in order + sorted(set(rows["strategy"]) - set(order)):
        group = rows[rows["strategy"] == strategy]
        if len(group):
            colour = f"C{order.index(strategy)}" if strategy in order else None
            ax.scatter(group[time_column], group["accuracy"], label=strategy, s=30, color=colour)
    if len(rows):
        xs, ys = rows[time_column].to_numpy(float), rows["accuracy"].to_numpy(float)
        span = max(ys.max() - ys.min(), 0.02)
        heights = _spread(xs, ys, gap=0.055 * span)
        for r, x, y, h in zip(rows.to_dict("records"), xs, ys, heights, strict=True):
            moved = abs(h - y) > 1e-12
            ax.annotate(_short_label(r, several), (x, y), xytext=(x * 1.12, h), fontsize=7, va="center",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if moved else None)
        ax.set_xlim(xs.min() / 1.5, xs.max() * 6)  # room on the right for the last labels
        ax.set_ylim(min(ys.min(), heights.min()) - 0.05 * span, ys.max() + 0.08 * span)
    ax.set_xscale("log")
    ax.set_xlabel(f"{time_column.replace('_', ' ')} (log scale)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="lower right")
    return _save(plt, fig, path)


def tsne_png(pixels, features, labels, path, seed=0) -> Path:
    """t-SNE of the same images in pixel space and in CNN feature space, side by side."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    labels = np.asarray(labels)
    n = len(labels)
    perplexity = float(min(30, max(2, (n - 1) // 3)))
    plt, (fig, axes) = _figure(1, 2, figsize=(11, 4.5))
    for ax, data, title in ((axes[0], pixels, "pixels"), (axes[1], features, "CNN features")):
        flat = np.asarray(data, dtype=np.float32).reshape(n, -1)
        # PCA to 50 dimensions first, as scikit-learn's t-SNE documentation advises: the neighbourhoods stay,
        # the distances cost a fraction (3,072 pixel values, 1,280 features).
        flat = PCA(n_components=min(50, n, flat.shape[1]), random_state=seed).fit_transform(flat)
        emb = TSNE(perplexity=perplexity, random_state=seed, init="pca").fit_transform(flat)
        for label in sorted(set(labels)):
            mask = labels == label
            ax.scatter(emb[mask, 0], emb[mask, 1], s=8, label=str(label))
        ax.set_title(f"t-SNE of {title}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    # Beside the plot, not on it: a legend inside would cover points.
    axes[1].legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
                   ncol=1 if len(set(labels)) <= 20 else 2)
    return _save(plt, fig, path)


def conv_kernels_png(before, after, path, max_kernels=32) -> Path:
    """The first conv layer's kernels (kh, kw, 3, n) before and after fine-tuning, as RGB tiles."""
    before, after = np.asarray(before), np.asarray(after)
    n = min(before.shape[-1], max_kernels)
    cols = min(n, 8)
    rows = int(np.ceil(n / cols))
    plt, (fig, axes) = _figure(2 * rows, cols, figsize=(cols * 0.9, 2 * rows * 0.95))
    axes = np.asarray(axes).reshape(2 * rows, cols)
    scale = max(np.abs(before[..., :n]).max(), np.abs(after[..., :n]).max(), 1e-12)
    for block, (kernels, name) in enumerate(((before, "before"), (after, "after"))):
        for k in range(rows * cols):
            ax = axes[block * rows + k // cols, k % cols]
            ax.axis("off")
            if k < n:
                ax.imshow(np.clip(kernels[..., :3, k] / (2 * scale) + 0.5, 0, 1), interpolation="nearest")
        axes[block * rows, 0].set_title(f"{name} fine-tuning", fontsize=8, loc="left")
    return _save(plt, fig, path)


def repeats_png(every: pd.DataFrame, path) -> Path:
    """Accuracy of every model in every repeat (one split each): how much a single split can mislead."""
    plt, (fig, ax) = _figure(figsize=(7, 4))
    for model, rows in every.groupby("model", sort=False):
        rows = rows.sort_values("repeat")
        ax.plot(rows["repeat"], rows["accuracy"], marker="o", label=model)
    ax.set_xlabel("repeat (split seed)")
    ax.set_ylabel("accuracy")
    ax.set_xticks(sorted(every["repeat"].unique()))
    ax.set_title("accuracy per repeat", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(plt, fig, path)


def learning_curve_png(curve: pd.DataFrame, path) -> Path:
    """Accuracy against training images per class (log scale): the best model of each strategy at each size.

    ``curve`` is ``learning-curve.csv``: one row per size and model, with ``train_size``,
    ``mean_images_per_class``, ``strategy``, ``accuracy`` and, when there, ``accuracy_ci_low``/``_high``
    (drawn as error bars).
    """
    plt, (fig, ax) = _figure(figsize=(7.5, 4.5))
    best = curve.sort_values("accuracy", ascending=False, kind="stable").drop_duplicates(["train_size", "strategy"])
    order = ["features", "finetune", "scratch"]  # the colours of accuracy_vs_time_png
    names = {"features": "features + best classifier", "finetune": "fine-tuned (best freeze)",
             "scratch": "scratch CNN"}
    present = [s for s in order if (best["strategy"] == s).any()] + sorted(set(best["strategy"]) - set(order))
    for i, strategy in enumerate(present):
        rows = best[best["strategy"] == strategy].sort_values("mean_images_per_class")
        x = rows["mean_images_per_class"].to_numpy(float) * 1.03 ** (i - (len(present) - 1) / 2)  # bars apart
        acc = rows["accuracy"].to_numpy(float)
        err = None
        if {"accuracy_ci_low", "accuracy_ci_high"} <= set(rows.columns):
            err = np.vstack([acc - rows["accuracy_ci_low"].to_numpy(float), rows["accuracy_ci_high"].to_numpy(float)
                             - acc]).clip(min=0)
        ax.errorbar(x, acc, yerr=err, marker="o", capsize=3, linewidth=1.5, label=names.get(strategy, strategy),
                    color=f"C{order.index(strategy)}" if strategy in order else None)
    sizes = curve.drop_duplicates("train_size")
    ax.set_xscale("log")
    ax.set_xticks(sizes["mean_images_per_class"].to_numpy(float),
                  [f"{x:g}" if str(s) != "all" else f"all\n({x:g})"
                   for s, x in zip(sizes["train_size"], sizes["mean_images_per_class"], strict=True)])
    ax.minorticks_off()
    ax.set_xlabel("training images per class (log scale)")
    ax.set_ylabel("test accuracy (95 % CI)" if "accuracy_ci_low" in curve else "test accuracy")
    ax.set_title("learning curve: the best model of each strategy at each training size", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(plt, fig, path)


def reliability_png(models: list, path) -> Path:
    """A reliability diagram: for each model, accuracy against confidence over 15 bins, the diagonal for reference.

    ``models``: ``(name, confidence, correct, ece_before, ece)`` per model, ``confidence`` each image's
    probability of its predicted class, ``correct`` whether that prediction is right.
    """
    from transfer.calibration import reliability

    plt, (fig, ax) = _figure(figsize=(6.4, 5.2))
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfectly calibrated")
    for i, (name, confidence, correct, ece_before, ece) in enumerate(models):
        _, accuracy, mean_confidence, counts = reliability(confidence, correct)
        ax.plot(mean_confidence, accuracy, marker="o", color=f"C{i}", linewidth=1.2,
                label=f"{name}: ECE {ece:.3f} (before scaling {ece_before:.3f})")
        ax.scatter(mean_confidence, accuracy, s=np.clip(counts, 6, 120), color=f"C{i}", alpha=0.35)
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("confidence: the probability each model gave its prediction (15 bins)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("reliability after temperature scaling (dot size: images in the bin)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(plt, fig, path)


def _mosaic(kernels, scale: float, cols: int = 8, max_kernels: int = 32) -> np.ndarray:
    """Kernels ``(kh, kw, 3, n)`` as one RGB picture of tiles (1-pixel white gaps), 0 at mid-grey, +-``scale`` at
    the ends."""
    kernels = np.asarray(kernels, np.float64)[..., :3, :max_kernels]
    kh, kw, _, n = kernels.shape
    rows = int(np.ceil(n / cols))
    out = np.ones((rows * (kh + 1) - 1, min(n, cols) * (kw + 1) - 1, 3))
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = np.clip(
            kernels[..., k] / (2 * max(scale, 1e-12)) + 0.5, 0, 1)
    return out


def kernels_png(panels: list, path) -> Path:
    """First-layer kernels as RGB tiles, one panel per ``(title, kernels (kh, kw, 3, n), scale)``: panels given the
    same ``scale`` share one colour scale (mid-grey is 0)."""
    plt, (fig, axes) = _figure(1, len(panels), figsize=(3.3 * len(panels), 3.0), squeeze=False)
    for ax, (title, kernels, scale) in zip(axes[0], panels, strict=True):
        ax.imshow(_mosaic(kernels, scale), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return _save(plt, fig, path)


def block_change_png(table: pd.DataFrame, path, title: str = "") -> Path:
    """A bar per block of how far fine-tuning moved its weights (``relative_change``); frozen blocks in grey."""
    plt, (fig, ax) = _figure(figsize=(max(5.0, 0.32 * len(table) + 1.5), 3.4))
    colours = ["C0" if t else "0.7" for t in table["trained"]]
    ax.bar(range(len(table)), table["relative_change"], color=colours)
    ax.set_xticks(range(len(table)), table["block"], rotation=90, fontsize=7)
    ax.set_ylabel("||after - before|| / ||before||")
    ax.set_title(title or "how far fine-tuning moved each block's weights (grey: frozen)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def activations_png(image, layers: list, path, title: str = "", channels: int = 8) -> Path:
    """One image's maps through a CNN: a row per layer (name, output shape, receptive field), its ``channels``
    most active channels, each on its own colour scale; the first column shows the image with one position's
    receptive field drawn at its centre.

    ``layers``: ``(name, maps (h, w, c), receptive field)`` per layer.
    """
    from matplotlib.patches import Rectangle

    plt, (fig, axes) = _figure(len(layers), channels + 1, figsize=(1.25 * (channels + 1), 1.45 * len(layers)),
                               squeeze=False)
    side = image.shape[0]
    for row, (name, maps, field) in zip(axes, layers, strict=True):
        row[0].imshow(image)
        low = max(side / 2 - field / 2, -0.5)
        row[0].add_patch(Rectangle((low, low), min(field, side), min(field, side), fill=False, edgecolor="yellow",
                                   linewidth=1))
        row[0].set_title(f"{name}\n{'x'.join(str(n) for n in maps.shape)}, field {field} px", fontsize=6,
                         loc="left")
        order = np.argsort(-maps.mean(axis=(0, 1)), kind="stable")[:channels]
        for ax, c in zip(row[1:], order, strict=False):
            ax.imshow(maps[..., c], cmap="viridis", interpolation="nearest")
            ax.set_title(f"ch {c}", fontsize=6)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1 + len(order):]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def gradcam_png(pixels, heat, titles: list, right: list, path, title: str = "", cols: int = 4) -> Path:
    """Images with their Grad-CAM heat overlaid (jet, red = most evidence), each titled (green: right, red:
    wrong)."""
    n = len(pixels)
    rows = int(np.ceil(n / cols))
    plt, (fig, axes) = _figure(rows, cols, figsize=(2.3 * cols, 2.45 * rows + 0.3), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(pixels[k])
            ax.imshow(heat[k], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(titles[k], fontsize=7, color="green" if right[k] else "red")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)
