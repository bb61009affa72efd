"""The source stage: what ``--data`` names becomes a table of image paths, labels and (maybe) splits.

A class-per-folder tree (optionally under ``train/``, ``val/``, ``test/``), a
CSV manifest, or a built-in data set (``digits``, ``fashion-mnist``).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.errors import TransferError
from transfer.runtime import CSV_ERRORS, keeps_file_names, keras_home, keras_module

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
BUILTINS = ("digits", "fashion-mnist")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def special_file(path) -> str | None:
    """Why ``path`` is not a regular file, in words (a named pipe, a device, ...), without opening it; None for a
    regular file or a broken link (whose reading says why it fails).

    Opening a named pipe blocks until something writes to it, and a device such as /dev/zero never ends: these are
    listed as skipped, never read.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}
    kind = next((name for test, name in kinds.items() if test(mode)), "not a file")
    return f"not a regular file ({kind}{', through a symbolic link' if os.path.islink(path) else ''}): not read"


def _unused_reason(path: Path, folder: Path) -> str | None:
    """Why a file under a class folder is left out of the split, or None when it is a candidate image."""
    parts = path.relative_to(folder).parts
    if path.name.startswith("._"):
        return "a macOS resource-fork file (._ AppleDouble metadata), not an image"
    if any(part.startswith(".") for part in parts):
        return "a hidden file (its name or a folder's starts with '.')"
    return special_file(path)


def _class_folders(folder: Path, unused: dict | None = None) -> dict[str, list[Path]]:
    """Each class folder's candidate images; a broken symbolic link is kept, so that it is listed as skipped with
    its reason. Every other file left out is put in ``unused`` (``{path: reason}``), for skipped.csv."""
    classes = {}
    unused = {} if unused is None else unused
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = []
        for f in sorted(sub.rglob("*")):
            if f.is_dir():
                continue
            reason = _unused_reason(f, sub)
            if reason is None:
                files.append(f)
            else:
                unused[str(f)] = reason
        classes[sub.name] = files
    return classes


def opens_as_image(path) -> bool:
    """Whether ``path`` has an image header Pillow recognises (a quick check: the pixels are not decoded)."""
    from PIL import Image

    if special_file(path):
        return False
    try:
        with Image.open(path) as img:
            return img.width > 0 and img.height > 0
    except Exception:  # noqa: BLE001 - anything that does not open is not an image
        return False


def _holds_images(files: list[Path]) -> bool:
    """Whether any file has an image extension, or (none has) whether any opens as an image."""
    return any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files) or any(map(opens_as_image, files[:50]))


def _check_classes(classes: dict[str, list], where: str):
    if not classes:
        raise TransferError(f"{where} has no class sub-folders: put the images of each class in a folder of its own "
                     "(e.g. data/cats/*.jpg, data/dogs/*.jpg).")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise TransferError(f"Class folder {where}/{empty[0]} is empty: add images or remove the folder.")
    imageless = [c for c, files in classes.items() if not _holds_images(files)]
    if imageless:
        files = classes[imageless[0]]
        raise TransferError(f"Class folder {where}/{imageless[0]} holds no images ({len(files)} other file(s), e.g. "
                            f"{files[0].name}): add images (.jpg, .png, ...) or remove the folder.")
    if len(classes) < 2:
        raise TransferError(f"{where} has a single class ({next(iter(classes))!r}): a classifier needs at least two.")


def _folder_table(root: Path, unused: dict | None = None) -> pd.DataFrame:
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    split_dirs = {_SPLIT_ALIASES[n]: p for n, p in subdirs.items() if n in _SPLIT_ALIASES}
    rows = []
    if "train" in split_dirs:
        names = None
        for split, folder in sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[0])):
            classes = _class_folders(folder, unused)
            _check_classes(classes, str(folder))
            if names is None:
                names = set(classes)
            elif set(classes) != names:
                raise TransferError(
                    f"The class folders of {folder} ({sorted(classes)}) differ from those of "
                    f"{split_dirs['train']} ({sorted(names)}): every split needs the same class names."
                )
            rows += [(str(f), c, split) for c, files in classes.items() for f in files]
    else:
        classes = _class_folders(root, unused)
        _check_classes(classes, str(root))
        rows = [(str(f), c, None) for c, files in classes.items() for f in files]
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def _csv_table(path: Path) -> pd.DataFrame:
    # UTF-8 with or without a byte-order mark, or UTF-16 with one (spreadsheets write both); bytes that are not
    # UTF-8 stay as they are, the way file names that are not UTF-8 are read from disk.
    utf16 = path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-16" if utf16 else "utf-8-sig",
                            encoding_errors="strict" if utf16 else CSV_ERRORS)
    except (pd.errors.ParserError, UnicodeError, pd.errors.EmptyDataError) as e:
        raise TransferError(f"Cannot read the manifest {path}: {str(e).splitlines()[0]}") from None
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise TransferError(f"The manifest {path} lacks the column(s) {sorted(missing)}: it needs path,label[,split] "
                     f"(it has {list(table.columns)}).")
    table["path"] = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in table["path"]]
    if "split" in table.columns:
        table["split"] = table["split"].str.lower().map(lambda s: _SPLIT_ALIASES.get(s, s))
        bad = sorted(set(table["split"]) - set(SPLITS))
        if bad:
            raise TransferError(f"The manifest {path} has split value(s) {bad}; allowed: {', '.join(SPLITS)}.")
    else:
        table["split"] = None
    if table["label"].nunique() < 2:
        raise TransferError(f"The manifest {path} has fewer than two labels: a classifier needs at least two.")
    dup = table["path"][table["path"].duplicated()]
    if len(dup):
        raise TransferError(f"The manifest {path} lists {dup.nunique()} image(s) more than once (e.g. {dup.iloc[0]}): "
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

    root = keras_home() / "datasets" / "transfer-digits"
    if not (root / "DONE").exists():
        d = load_digits()
        images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
        _write_pngs(root, images, [str(t) for t in d.target], [None] * len(images))
    table = _folder_table(root / "all")
    return table.sort_values("path", kind="stable").reset_index(drop=True)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not, as a uint8 array."""
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
        x_train, y_train, x_test, y_test = (read_idx(p) for p in files.values())
        return (x_train, y_train), (x_test, y_test)
    try:
        keras = keras_module()

        return keras.datasets.fashion_mnist.load_data()
    except Exception as e:  # noqa: BLE001 - any download failure
        raise TransferError(
            f"fashion-mnist is neither installed in {FASHION_MNIST_DIR} nor downloadable ({str(e).splitlines()[0]}). "
            "Install it with: apt-get install dataset-fashion-mnist"
        ) from None


def _fashion_table() -> pd.DataFrame:
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
    unused: dict = dataclasses.field(default_factory=dict)  # {path: reason} of the files under a class folder left out


@keeps_file_names()
def resolve_source(src) -> DataSource:
    """Turn ``--data`` into a table of images.

    Args:
        src: a folder (one sub-folder per class, optionally under ``train/``,
            ``val/``, ``test/``), a CSV manifest (``path,label[,split]``,
            paths relative to the CSV) or a built-in name: ``digits`` or
            ``fashion-mnist`` (a :class:`DataSource` is returned as it is).

    Raises:
        TransferError: unknown source, empty class folder, a single class,
            or different class names across splits.
    """
    if isinstance(src, DataSource):
        return src
    name = str(src)
    if name in BUILTINS:
        table = _digits_table() if name == "digits" else _fashion_table()
        return DataSource(name, "builtin", table)
    path = Path(name).expanduser()
    if path.is_dir():
        unused = {}
        table = _folder_table(path.resolve(), unused)
        return DataSource(name, "folder", table, unused)
    if path.is_file() and path.suffix.lower() == ".csv":
        return DataSource(name, "csv", _csv_table(path.resolve()))
    raise TransferError(
        f"data={name!r} is not a folder, a .csv manifest or a built-in data set. "
        f"Give a folder with one sub-folder per class, a CSV with path,label[,split], or one of: {', '.join(BUILTINS)}."
    )
