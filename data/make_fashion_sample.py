"""Make data/fashion-sample/: 24 images per class of Fashion-MNIST's test set, as PNG files in class folders.

A small set that every clone of the repository carries, so that the README's examples run as written
without downloading anything. Run once from the repository root with Debian's dataset-fashion-mnist
installed (`apt-get install dataset-fashion-mnist`); the draw is seeded, so it makes the same files again.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from transfer.data._sources import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx

PER_CLASS = 24
OUT = Path(__file__).resolve().parent / "fashion-sample"


def main():
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(0)
    for k, name in enumerate(FASHION_MNIST_CLASSES):
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in sorted(rng.choice(np.flatnonzero(labels == k), PER_CLASS, replace=False)):
            Image.fromarray(images[i]).save(folder / f"t10k-{i:05d}.png", optimize=True)


if __name__ == "__main__":
    main()
