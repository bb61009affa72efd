"""``transfer inspect``: inside the networks of a run, as PNG files under ``RUN/inspect/``.

For each model that ships (the fine-tuned model, strategy 2's representative, the scratch CNN): Grad-CAM on test
images, some right and the most confident wrong ones; one image's activations through each network; the first
convolution's kernels pretrained, fine-tuned and from scratch, and how far fine-tuning moved each block.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from transfer.errors import TransferError
from transfer.inspection._models import IMAGES, models_of


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What ``transfer inspect`` wrote.

    Attributes:
        folder: where (``RUN/inspect`` by default).
        files: the PNG and CSV files, in the order a reader should see them.
        said: what it says about them (a frozen stem, a classifier used in kNN's place), one line each.
        images: test images shown per model.
        seconds: how long it took.
    """

    folder: Path
    files: tuple
    said: tuple
    images: int
    seconds: float

    def __str__(self) -> str:
        lines = list(self.said) + [f"wrote {len(self.files)} files in {self.seconds:.1f} s to {self.folder}:"]
        return "\n".join(lines + [f"  {Path(f).name}" for f in self.files])


def readable(paths) -> list[Path]:
    """``paths`` as paths, once each is known to decode as an image.

    Raises:
        TransferError: the first that does not, with why.
    """
    from transfer.data import ImageError, decode_image

    paths = [Path(p) for p in paths]
    for path in paths:
        try:
            decode_image(path, 32)
        except ImageError as e:
            raise TransferError(f"--image {path}: {e}; give image files (JPEG, PNG, ...).") from None
    return paths


def inspect_run(run_dir, out=None, *, images: int = IMAGES, layers=None, through=None, log=print) -> Inspection:
    """Look inside the networks of a run: Grad-CAM, activation maps, kernels (see the module's docstring).

    Args:
        run_dir: the ``--out`` folder of compare, finetune, classify or scratch.
        out: where the files go (default ``RUN/inspect``); replaced as a whole only when every file is written.
        images: test images per model for Grad-CAM.
        layers: layers for the activation maps (None: one per stage).
        through: image files to draw the activation maps of, through each network (None: the first test image
            shown), as ``activations-KIND-NAME.png``.
        log: where progress lines go.

    Raises:
        TransferError: not a finished run folder, nothing in it to look inside, or an image that cannot be read.
    """
    from transfer.inspection._drawing import draw_models
    from transfer.reports import publishing

    if not isinstance(images, int) or isinstance(images, bool) or images < 1:
        raise TransferError(f"images={images!r} is not valid: give a positive whole number of test images per model.")
    start = time.perf_counter()
    run = Path(run_dir)
    through = readable(through or [])
    _, models = models_of(run, log=log)
    target = Path(out) if out is not None else run / "inspect"
    with publishing(target.parent) as stage:
        files, said = draw_models(models, stage / target.name, images=images, layers=layers, through=through)
    files = [target / Path(f).name for f in files]
    return Inspection(target, tuple(files), tuple(said), images, round(time.perf_counter() - start, 1))


def inspect_backbone(backbone: str, paths, out, *, weights="imagenet", image_size=None, resize: str = "crop",
                     layers=None, log=print) -> Inspection:
    """Activation maps of the images at ``paths`` through a pretrained backbone, one PNG per image into ``out``.

    Raises:
        TransferError: an unknown backbone or layer, or an image that cannot be read (before any is drawn).
    """
    from transfer.data import decode_image
    from transfer.inspection._activations import activation_maps, check_layers
    from transfer.inspection._networks import pretrained
    from transfer.reports import publishing
    from transfer.reports.plots import activations_png

    start = time.perf_counter()
    if not paths:
        raise TransferError("no images given: name one or more image files to pass through the backbone.")
    paths = readable(paths)  # every image readable before the backbone is built
    net = pretrained(backbone, weights=weights, image_size=image_size, resize=resize)
    names = check_layers(net.body, layers)
    pixels = np.stack([decode_image(p, net.image_size, resize) for p in paths])
    maps = activation_maps(net, pixels, names)
    target = Path(out)
    files = []
    with publishing(target.parent) as stage:
        for i, path in enumerate(paths):
            png = stage / target.name / f"activations-{path.stem}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            activations_png(pixels[i], [(m.layer, m.maps[i], m.field) for m in maps], png,
                            title=f"{net.name}: {path.name}")
            files.append(target / png.name)
    return Inspection(target, tuple(files), (), len(paths), round(time.perf_counter() - start, 1))
