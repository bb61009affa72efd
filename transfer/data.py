"""Finding and decoding images; bad files become skip reasons, not crashes."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
RESIZE_MODES = ("plain", "crop")


def check_resize(resize: str) -> str:
    """Validate a resize mode (``plain`` or ``crop``).

    Raises:
        TransferError: any other value.
    """
    if resize not in RESIZE_MODES:
        from transfer.errors import TransferError

        raise TransferError(f"resize={resize!r} is not valid. Expected one of: {', '.join(RESIZE_MODES)}.")
    return resize


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

    See :func:`decode_image` (the same, as uint8).
    """
    return decode_image(path, size, resize).astype(np.float32)


def decode_image(path, size: int, resize: str = "plain") -> np.ndarray:
    """Decode one image to a uint8 ``(size, size, 3)`` RGB array.

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
                # JPEGs decode straight to a smaller scale (1/2, 1/4, 1/8) when that
                # still covers the target size: nearly the same pixels after
                # resizing, at a fraction of the decode cost for large photos.
                img.draft("RGB", (size, size))
                img.load()
                img = ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img
                if img.mode != "RGB":
                    img = img.convert("RGBA").convert("RGB") if "transparency" in img.info else img.convert("RGB")
                if resize == "crop":
                    img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
                else:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(img, dtype=np.uint8)
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


# ---------------------------------------------------------------------------
# Data sources: a class-per-folder tree, a CSV manifest, or a built-in name.
# ---------------------------------------------------------------------------

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
BUILTINS = ("digits", "fashion-mnist")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def _error(msg):
    from transfer.errors import TransferError

    return TransferError(msg)


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[sub.name] = sorted(f for f in sub.rglob("*") if f.is_file() and not f.name.startswith("."))
    return classes


def _check_classes(classes: dict[str, list], where: str):
    if not classes:
        raise _error(f"{where} has no class sub-folders: put the images of each class in a folder of its own "
                     "(e.g. data/cats/*.jpg, data/dogs/*.jpg).")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise _error(f"Class folder {where}/{empty[0]} is empty: add images or remove the folder.")
    if len(classes) < 2:
        raise _error(f"{where} has a single class ({next(iter(classes))!r}): a classifier needs at least two.")


def _folder_table(root: Path) -> pd.DataFrame:
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    split_dirs = {_SPLIT_ALIASES[n]: p for n, p in subdirs.items() if n in _SPLIT_ALIASES}
    rows = []
    if "train" in split_dirs:
        names = None
        for split, folder in sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[0])):
            classes = _class_folders(folder)
            _check_classes(classes, str(folder))
            if names is None:
                names = set(classes)
            elif set(classes) != names:
                raise _error(
                    f"The class folders of {folder} ({sorted(classes)}) differ from those of "
                    f"{split_dirs['train']} ({sorted(names)}): every split needs the same class names."
                )
            rows += [(str(f), c, split) for c, files in classes.items() for f in files]
    else:
        classes = _class_folders(root)
        _check_classes(classes, str(root))
        rows = [(str(f), c, None) for c, files in classes.items() for f in files]
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def _csv_table(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise _error(f"Cannot read the manifest {path}: {str(e).splitlines()[0]}") from None
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise _error(f"The manifest {path} lacks the column(s) {sorted(missing)}: it needs path,label[,split] "
                     f"(it has {list(table.columns)}).")
    table["path"] = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in table["path"]]
    if "split" in table.columns:
        table["split"] = table["split"].str.lower().map(lambda s: _SPLIT_ALIASES.get(s, s))
        bad = sorted(set(table["split"]) - set(SPLITS))
        if bad:
            raise _error(f"The manifest {path} has split value(s) {bad}; allowed: {', '.join(SPLITS)}.")
    else:
        table["split"] = None
    if table["label"].nunique() < 2:
        raise _error(f"The manifest {path} has fewer than two labels: a classifier needs at least two.")
    dup = table["path"][table["path"].duplicated()]
    if len(dup):
        raise _error(f"The manifest {path} lists {dup.nunique()} image(s) more than once (e.g. {dup.iloc[0]}): "
                     "list each image once, or the same image could land in train and test.")
    return table[["path", "label", "split"]]


def _write_pngs(root: Path, images, labels, splits):
    """Materialise an in-memory image set as PNG files, atomically as a whole folder."""
    import shutil
    import tempfile

    from PIL import Image

    if (root / "DONE").exists():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        for i, (img, label, split) in enumerate(zip(images, labels, splits, strict=True)):
            folder = tmp / (split or "all") / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png")
        (tmp / "DONE").write_text("complete\n")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _digits_table() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    from transfer.fileio import keras_home

    root = keras_home() / "datasets" / "transfer-digits"
    if not (root / "DONE").exists():
        d = load_digits()
        images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
        _write_pngs(root, images, [str(t) for t in d.target], [None] * len(images))
    table = _folder_table(root / "all")
    return table.sort_values("path", kind="stable").reset_index(drop=True)


def _read_idx(path: Path) -> np.ndarray:
    import gzip
    import struct

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        _, _, dtype, ndim = f.read(4)
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def _fashion_arrays():
    def find(stem):
        for name in (stem, stem + ".gz"):
            if (FASHION_MNIST_DIR / name).exists():
                return FASHION_MNIST_DIR / name
        return None

    files = {k: find(k) for k in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    if all(files.values()):
        x_train, y_train, x_test, y_test = (_read_idx(p) for p in files.values())
        return (x_train, y_train), (x_test, y_test)
    try:
        import keras

        return keras.datasets.fashion_mnist.load_data()
    except Exception as e:  # noqa: BLE001 - any download failure
        raise _error(
            f"fashion-mnist is neither installed in {FASHION_MNIST_DIR} nor downloadable ({str(e).splitlines()[0]}). "
            "Install it with: apt-get install dataset-fashion-mnist"
        ) from None


def _fashion_table() -> pd.DataFrame:
    from transfer.fileio import keras_home

    root = keras_home() / "datasets" / "transfer-fashion-mnist"
    if not (root / "DONE").exists():
        (x_train, y_train), (x_test, y_test) = _fashion_arrays()
        images = np.concatenate([x_train, x_test])
        labels = [FASHION_MNIST_CLASSES[int(t)] for t in np.concatenate([y_train, y_test])]
        _write_pngs(root, images, labels, ["train"] * len(x_train) + ["test"] * len(x_test))
    return _folder_table(root)


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the images come from and which split each belongs to (if the source says)."""

    name: str
    kind: str
    table: pd.DataFrame  # path, label, split (None where the source has no splits)


def resolve_source(src) -> DataSource:
    """Turn ``--data`` into a table of images.

    Args:
        src: a folder (one sub-folder per class, optionally under ``train/``,
            ``val/``, ``test/``), a CSV manifest (``path,label[,split]``,
            paths relative to the CSV) or a built-in name: ``digits`` or
            ``fashion-mnist``.

    Raises:
        TransferError: unknown source, empty class folder, a single class,
            or different class names across splits.
    """
    name = str(src)
    if name in BUILTINS:
        table = _digits_table() if name == "digits" else _fashion_table()
        return DataSource(name, "builtin", table)
    path = Path(name).expanduser()
    if path.is_dir():
        return DataSource(name, "folder", _folder_table(path.resolve()))
    if path.is_file() and path.suffix.lower() == ".csv":
        return DataSource(name, "csv", _csv_table(path.resolve()))
    raise _error(
        f"--data {name!r} is not a folder, a .csv manifest or a built-in data set. "
        f"Give a folder with one sub-folder per class, a CSV with path,label[,split], or one of: {', '.join(BUILTINS)}."
    )


def make_split(table: pd.DataFrame, val_fraction=0.15, test_fraction=0.15, seed=0) -> pd.DataFrame:
    """Give every image a split: the source's own when it has one, else a stratified, seeded split.

    Returns:
        A copy of ``table`` with ``split`` in ``train``/``val``/``test``.
    """
    from sklearn.model_selection import train_test_split

    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise _error(f"{name}={frac!r} is not valid: give a fraction in [0, 1).")
    if val_fraction + test_fraction >= 1:
        raise _error(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training images: "
                     "keep their sum below 1.")
    table = table.reset_index(drop=True).copy()
    if table["split"].notna().all():
        if "train" not in set(table["split"]):
            raise _error("The source's splits have no 'train' images: add a train/ folder or split column rows.")
        return table
    if table["split"].notna().any():
        raise _error("Only some images have a split: give every row of the manifest a split, or none.")
    idx = np.arange(len(table))
    labels = table["label"].to_numpy()
    split = np.array(["train"] * len(table), dtype=object)
    rest = idx
    if test_fraction > 0:
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
        split[test] = "test"
    if val_fraction > 0:
        _, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest],
                                  random_state=seed)
        split[val] = "val"
    table["split"] = split
    return table


def evaluation_split(table: pd.DataFrame) -> str:
    """The split final numbers come from: ``test`` when there is one, else ``val``."""
    splits = set(table["split"])
    if "test" in splits:
        return "test"
    if "val" in splits:
        return "val"
    raise _error("There are no val or test images to evaluate on: set --val-fraction/--test-fraction above 0 "
                 "or give the source a val/ or test/ split.")


def prepare_split(source: DataSource, out, val_fraction=0.15, test_fraction=0.15, seed=0) -> pd.DataFrame:
    """The split of a run: ``out/split.csv`` when the run folder has one, else a new one written there.

    Reusing the file means every strategy and every later run in ``out``
    sees exactly the same images in the same splits.

    Raises:
        TransferError: ``out/split.csv`` lists other images than ``source``.
    """
    from transfer.report import write_csv

    path = Path(out) / "split.csv"
    if path.exists():
        split = pd.read_csv(path, dtype=str, keep_default_na=False)
        if set(split.columns) != {"path", "label", "split"}:
            raise _error(f"{path} is not a split file (columns path,label,split): remove it or choose another --out.")
        ours = set(zip(source.table["path"], source.table["label"], strict=True))
        theirs = set(zip(split["path"], split["label"], strict=True))
        if ours != theirs:
            raise _error(
                f"{path} was made for other images or labels ({len(theirs - ours)} of its (path, label) rows are "
                f"not in {source.name}, {len(ours - theirs)} of {source.name}'s are not in it): use another --out, "
                "or delete that split.csv to split again."
            )
        evaluation_split(split)
        split.attrs["reused"] = True  # this call's seed and fractions did not make it
        return split
    try:
        split = make_split(source.table, val_fraction, test_fraction, seed)
    except ValueError as e:
        from transfer.errors import TransferError

        if isinstance(e, TransferError):
            raise
        raise _error(f"Cannot make a stratified split of {source.name}: {e}. Add images to the smallest classes "
                     "or lower --val-fraction/--test-fraction.") from None
    evaluation_split(split)  # before anything is written or computed
    write_csv(split, path)
    split.attrs["reused"] = False
    return split
