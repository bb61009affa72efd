"""Finding and decoding images; bad files become skip reasons, not crashes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
RESIZE_MODES = ("plain", "crop")


class ImageError(ValueError):
    """A file that cannot be used as an image; the message is the reason."""


def list_images(paths) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders into image files.

    Folders are searched recursively for files with an image extension;
    files named explicitly are kept whatever their extension (decoding
    decides).  Returns ``(files, skipped)`` where ``skipped`` holds
    ``(path, reason)`` for paths that do not exist or folders without images.
    """
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                skipped.append((str(p), f"folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            skipped.append((str(p), "no such file or folder"))
    return files, skipped


def load_image(path, size: int, resize: str = "plain") -> np.ndarray:
    """Decode one image to a float32 ``(size, size, 3)`` RGB array in [0, 255].

    EXIF orientation is applied; grayscale, palette and RGBA images become RGB.

    Args:
        path: the image file.
        size: output height = width.
        resize: ``"plain"`` (stretch to size) or ``"crop"`` (keep the aspect
            ratio, resize the shorter side, centre-crop).

    Raises:
        ImageError: the file is empty, not an image, or truncated.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.mode != "RGB":
                    img = img.convert("RGBA").convert("RGB") if "transparency" in img.info else img.convert("RGB")
                if resize == "crop":
                    img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
                else:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(img, dtype=np.float32)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (no image format recognised)") from None
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def sample_images() -> list[Path]:
    """Two real photos that ship with scikit-learn (a temple in China, a flower)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return sorted(folder.glob("*.jpg"))
