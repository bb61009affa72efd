"""The pictures of ``transfer inspect``, from the models of a run (see :mod:`transfer.inspection._inspect`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError


def draw_models(models: list, folder: Path, *, images: int, layers=None, through=None) -> tuple[list, list]:
    """Every picture of ``models`` (:class:`~transfer.inspection.Model`, from :func:`models_of`) into ``folder``:
    ``(files in reading order, lines said)``. ``through``: image files whose activation maps to draw (default: the
    first test image shown)."""
    from transfer.inspection._activations import check_layers
    from transfer.inspection._networks import network

    folder.mkdir(parents=True, exist_ok=True)
    said, files, nets = [], [], {}
    for model in models:
        try:
            nets[model] = network(model)
        except TransferError as e:  # one model that cannot be rebuilt must not cost the others' pictures
            said.append(f"{model.name}: {e}")
    bodies = {("pretrained" if m.kind == "features" else m.kind): (net, m.name) for m, net in nets.items()}
    for kind, (net, _) in bodies.items():  # a wrong --layer is refused before the slow part
        if kind != "scratch":
            check_layers(net.body, layers)
    cams = [gradcam_of(model, net, folder, images) for model, net in nets.items()]
    files += [png for png, _ in cams]
    if cams:
        files.append(folder / "gradcam.csv")
        pd.concat([rows for _, rows in cams]).to_csv(files[-1], index=False)
    first = next((rows["path"].iloc[0] for _, rows in cams if len(rows)), None)
    tuned = next((m for m in nets if m.kind == "finetune"), None)
    if tuned is not None:
        kernel_files, lines = kernels_of(tuned, nets[tuned], nets, folder)
        files += kernel_files
        said += lines
    if through:
        for path in through:
            files += activations_of(bodies, path, folder, layers, f"-{Path(path).stem}")
    elif first is not None:
        files += activations_of(bodies, first, folder, layers)
    return files, said


def gradcam_of(model, net, folder: Path, images: int):
    """Grad-CAM of ``net`` on its shown test images: ``(png, their rows)``."""
    from transfer.inspection._gradcam import grad_cam
    from transfer.inspection._models import shown_images
    from transfer.reports.plots import gradcam_png

    rows = shown_images(model, images)
    pixels = net.pixels(rows["path"])
    index = {str(c): i for i, c in enumerate(net.classes)}
    heat, probs = grad_cam(net, pixels, [index[str(p)] for p in rows["pred_label"]])
    right = list(rows["true_label"].astype(str) == rows["pred_label"].astype(str))
    titles = [f"{t} -> {p} ({s:.2f})" for t, p, s in zip(rows["true_label"], rows["pred_label"], rows["score"],
                                                          strict=True)]
    png = gradcam_png(pixels, heat, titles, right, folder / f"gradcam-{model.kind}.png",
                      title=f"{model.name}: where the evidence for its prediction lies")
    return png, rows[["path", "true_label", "pred_label", "score"]].assign(model=model.name)


def activations_of(bodies: dict, path: str, folder: Path, layers=None, suffix: str = "") -> list:
    """One image's maps through the pretrained backbone (strategy 2's network) and each trained network (``bodies``:
    kind -> ``(network, name)``): their PNG files, ``activations-KIND{suffix}.png``."""
    from transfer.inspection._activations import activation_maps
    from transfer.reports.plots import activations_png

    files = []
    for kind, (net, name) in bodies.items():
        pixels = net.pixels([path])
        maps = activation_maps(net, pixels, layers if kind != "scratch" else None)
        title = (f"{name.split(' ')[0]} pretrained" if kind == "pretrained" else name) + f": {Path(path).name}"
        files.append(activations_png(pixels[0], [(m.layer, m.maps[0], m.field) for m in maps],
                                     folder / f"activations-{kind}{suffix}.png", title=title))
    return files


def kernels_of(model, net, nets: dict, folder: Path) -> tuple[list, list]:
    """The first convolution's kernels (pretrained, fine-tuned, their difference, scratch) and each block's change:
    ``(files, lines)``; a frozen stem is said in one line instead of drawn twice."""
    import json

    from transfer.backbones import build_backbone
    from transfer.inspection._kernels import block_change, first_conv
    from transfer.reports.plots import block_change_png, kernels_png

    cfg = json.loads((model.run_dir / "config.json").read_text())["finetune"]
    if str(cfg["weights"]).lower() in ("none", "random"):
        return [], [f"{model.name} started from random weights: no pretrained kernels to compare with"]
    before = build_backbone(cfg["backbone"], weights=cfg["weights"], image_size=cfg["image_size"], pooling=None)
    trained = _trained_layers(model.run_dir)
    name, pretrained = first_conv(before)
    _, tuned = first_conv(net.body)
    scratch = next((first_conv(n.body)[1] for m, n in nets.items() if m.kind == "scratch"), None)
    scale = float(np.abs(pretrained).max())
    panels, lines = [(f"pretrained {name}", pretrained, scale)], []
    if trained.get(name, False):
        difference = tuned - pretrained
        panels += [("fine-tuned (same scale)", tuned, scale),
                   (f"difference (scale x{scale / max(np.abs(difference).max(), 1e-12):.0f})", difference,
                    float(np.abs(difference).max()))]
    table = block_change(before, net.body, trained)
    # A fine-tuning whose every epoch lost to the head alone keeps its stage-1 model: the backbone is the
    # pretrained one to the bit, and a plot of zeros would read as "fine-tuning moved nothing" without saying why.
    moved = bool((table["relative_change"] > 0).any())
    if not trained.get(name, False):
        lines.append(f"the stem ({name}) stayed frozen in {model.name}: its kernels are the pretrained ones"
                     + ("; the bars show how far each trained block moved" if moved else ""))
    if not moved:
        lines.append(f"no block of {model.name} moved from its pretrained weights (it kept its stage-1 model: no "
                     "fine-tuning epoch beat the head alone): no block-change plot")
    if scratch is not None:
        panels.append(("scratch CNN (own scale)", scratch, float(np.abs(scratch).max())))
    files = [kernels_png(panels, folder / "kernels.png")]
    table.to_csv(folder / "block-change.csv", index=False)
    if moved:
        files.append(block_change_png(table, folder / "block-change.png",
                                      title=f"{model.name}: how far each block's weights moved (grey: frozen)"))
    return files + [folder / "block-change.csv"], lines


def _trained_layers(run_dir: Path) -> dict:
    path = Path(run_dir) / "layers.csv"
    if not path.exists():
        return {}
    table = pd.read_csv(path)
    return dict(zip(table["name"], table["trainable"].astype(bool), strict=True))
