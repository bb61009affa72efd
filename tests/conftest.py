import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"


@pytest.fixture
def hymenoptera():
    if not (HYMENOPTERA / "val").is_dir():
        pytest.skip(f"hymenoptera not found at {HYMENOPTERA} (see ../shared/datasets/README.md)")
    return HYMENOPTERA


def solid_image(path: Path, colour, size=(40, 30), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def bad_files(tmp_path):
    """A text file named .jpg, a 0-byte .png and a truncated JPEG."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    good = solid_image(tmp_path / "full.jpg", (200, 30, 30), size=(64, 64))
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture
def keras_cache(tmp_path, monkeypatch):
    """An empty Keras cache directory for this test only."""
    from keras.src.backend import config

    home = tmp_path / "keras_home"
    monkeypatch.setattr(config, "_KERAS_DIR", str(home))
    return home


def random_batch(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def colour_folder(root, n=8, splits=("train", "val"), seed=0):
    """Noisy red and blue images: separable, but not identical."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = {"red": (200, 40, 40), "blue": (40, 40, 200)}
    for split in splits:
        for label, colour in base.items():
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root
