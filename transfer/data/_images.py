"""Images in: finding and decoding files, the one tf.data pipeline, the one prediction loop.

Every strategy, ``extract`` and ``predict`` turn image files into batches
here, so decoding (EXIF, palettes, JPEG draft mode), resizing and the list of
unreadable files behave the same everywhere.  A file that cannot be decoded
becomes a skip reason, never a crash.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from transfer.data._sources import IMAGE_EXTENSIONS, opens_as_image, special_file
from transfer.errors import TransferError
from transfer.runtime import keeps_file_names, tensorflow

RESIZE_MODES = ("plain", "crop")


def resolve(config, **values) -> None:
    """Set resolved ``values`` (a registry name for an alias, a default size) on a frozen config being built:
    for ``__post_init__`` only, where a config checks itself once (the dataclasses documentation's way)."""
    for name, value in values.items():
        object.__setattr__(config, name, value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """How image files become a model's input; every strategy's config starts with these fields.

    Attributes:
        image_size: input height = width (None: the backbone's own size).
        resize: ``"crop"`` (keep the aspect ratio, resize the shorter side,
            centre-crop) or ``"plain"`` (stretch).
        batch_size: images per batch.
    """

    image_size: int | None = None
    resize: str = "crop"
    batch_size: int = 32

    def __post_init__(self):
        """Checked at construction: a function that receives options trusts them.

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        check_resize(self.resize)
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise TransferError(f"batch_size={self.batch_size!r} is not valid: give a positive integer.")
        if self.image_size is not None:
            self.image_size_for(1)

    def image_size_for(self, min_size: int, default_size: int | None = None, what: str = "this model") -> int:
        """``image_size`` (``default_size`` when None), checked against a model's smallest input.

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        size = self.image_size if self.image_size is not None else default_size
        if not isinstance(size, int) or isinstance(size, bool) or size < min_size:
            own = f" (its own is {default_size})" if default_size is not None else ""
            raise TransferError(f"image_size={size!r} is too small for {what}: give an integer >= {min_size}{own}.")
        return size


def check_resize(resize: str) -> str:
    """Validate a resize mode (``plain`` or ``crop``).

    Raises:
        TransferError: any other value.
    """
    if resize not in RESIZE_MODES:
        raise TransferError(f"resize={resize!r} is not valid. Expected one of: {', '.join(RESIZE_MODES)}.")
    return resize


class ImageError(ValueError):
    """A file that cannot be used as an image; the message is the reason."""


@keeps_file_names()
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
            found = sorted(f for f in p.rglob("*") if not f.is_dir() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                skipped.append((str(p), f"folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})"))
            files.extend(found)
        elif p.exists():  # a pipe or a device too: decoding lists it as skipped, with its reason, unread
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
        size: output height = width; None: the image's own size (what an exported model, which resizes inside,
            takes).
        resize: ``"plain"`` (stretch to size) or ``"crop"`` (keep the aspect
            ratio, resize the shorter side, centre-crop).

    Raises:
        ImageError: the file is empty, not an image, or truncated.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if special_file(path):
        raise ImageError(special_file(path))
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _to_rgb_array(img, size, resize)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (no image format recognised)") from None
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"broken symbolic link (to {os.readlink(path)}, which does not exist)") from None
        raise ImageError("no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def unreadable(paths) -> dict[str, str]:
    """``{path: reason}`` of the files that do not even open as images (headers only: fast, before training).

    Files that open but fail to decode (truncated) are found, and skipped, by the decoding itself.
    """
    bad = {}
    for p in map(str, paths):
        if not opens_as_image(p):
            try:
                decode_image(p, 8)
            except ImageError as e:
                bad[p] = str(e)
    return bad


def median_side(paths, sample: int = 500) -> int | None:
    """The median longer side, in pixels, of up to ``sample`` evenly spaced images of ``paths`` (headers only).

    None when none of them opens.
    """
    from PIL import Image

    paths = list(paths)
    sides = []
    for p in paths[:: max(1, -(-len(paths) // sample))]:
        try:
            with Image.open(p) as img:
                sides.append(max(img.size))
        except Exception:  # noqa: BLE001, S112 - unreadable files are skipped and listed by the decoding itself
            continue
    return int(np.median(sides)) if sides else None


def _as_8_bit(img):
    """A 16-bit, 32-bit integer or float image as 8-bit grayscale, scaled by its bit depth or value range.

    Pillow's own conversion clips such pixels at 255, so a 16-bit PNG came out white.
    """
    from PIL import Image

    x = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and 255 < x.max() <= 65535 and x.min() >= 0):
        x = x / 257.0
    elif img.mode == "F" and x.min() >= 0 and x.max() <= 1:
        x = x * 255.0
    elif x.min() < 0 or x.max() > 255:  # any other range: stretched to 0-255
        low, high = x.min(), x.max()
        x = (x - low) * (255.0 / (high - low)) if high > low else np.zeros_like(x)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), mode="L")


def _to_rgb_array(img, size: int, resize: str) -> np.ndarray:
    from PIL import Image, ImageOps

    # JPEGs decode straight to a smaller scale (1/2, 1/4, 1/8) when that still
    # covers the target size: nearly the same pixels after resizing, at a
    # fraction of the decode cost for large photos.
    if size is not None:
        img.draft("RGB", (size, size))
    img.load()
    img = ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img
    if img.mode.startswith(("I", "F")):
        img = _as_8_bit(img)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if "transparency" in img.info else img.convert("RGB")
    if size is None:
        pass
    elif resize == "crop":
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    else:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


@keeps_file_names()
def sample_images() -> list[Path]:
    """Two real photos that ship with scikit-learn (a temple in China, a flower)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return sorted(folder.glob("*.jpg"))


# ---------------------------------------------------------------------------
# The tf.data pipeline: one decode stage, batched for inference or for training.
# ---------------------------------------------------------------------------


# Training decodes each image once per run, not once per epoch, when the decoded images fit in this much memory
# (uint8 at the input size: 3,500 photos at 224 px, 19,000 at 96 px). Measured on hymenoptera (bench/finetune.py
# and the scratch CNN): decoding and resizing its 500 px JPEGs took 1.3 s of a 9 s fine-tuning epoch and most of a
# scratch epoch, on the cores the training needs.
DECODED_CACHE_BYTES = 512 * 2**20


def _decoded(paths: list[str], size: int, resize: str, skipped: dict, *, training=False, shuffle=False, seed=0):
    """``tf.data`` of ``(index, uint8 image, ok)``; an unreadable file is blank, ``ok`` False, reason in ``skipped``.

    For inference, items carry their indices, so decoding may finish out of
    order: a slow (large) photo does not hold up the images behind it.  For
    training the order stays the (seeded) shuffle's, so a run is repeatable;
    when they fit in :data:`DECODED_CACHE_BYTES`, each image is decoded at
    its first epoch and read from memory after.
    """
    tf = tensorflow()

    lock = threading.Lock()
    fits = training and len(paths) * size * size * 3 <= DECODED_CACHE_BYTES
    kept = _DecodedImages(len(paths), size) if fits else None

    def decode(i):
        i = int(i)
        if kept is not None and kept.done[i]:
            return kept.images[i], kept.ok[i]
        try:
            img, ok = decode_image(paths[i], size, resize), np.bool_(True)
        except ImageError as e:
            with lock:
                skipped[paths[i]] = str(e)
            img, ok = np.zeros((size, size, 3), np.uint8), np.bool_(False)
        if kept is not None:
            kept.images[i], kept.ok[i], kept.done[i] = img, ok, True
        return img, ok

    def load(i):
        img, ok = tf.numpy_function(decode, [i], [tf.uint8, tf.bool], stateful=False)
        img.set_shape((size, size, 3))
        ok.set_shape(())
        return i, img, ok

    ds = tf.data.Dataset.range(len(paths))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if training:
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    # One decoder per core: tf.data's autotuner measured here stalled ~0.8 s at start-up every few runs.
    return ds.map(load, num_parallel_calls=os.cpu_count() or 2, deterministic=False)


class _DecodedImages:
    """Decoded training images kept between epochs (memory is taken as images arrive: zeros are not written)."""

    def __init__(self, n: int, size: int):
        self.images = np.zeros((n, size, size, 3), np.uint8)
        self.ok = np.zeros(n, np.bool_)
        self.done = np.zeros(n, np.bool_)


def _fixed_parallelism(ds):
    tf = tensorflow()

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def inference_batches(paths, size: int, resize: str, batch_size: int, skipped: dict):
    """``(indices, uint8 images, ok)`` batches of every file in ``paths``, for a forward pass.

    ``skipped`` receives ``{path: reason}`` of the files that cannot be decoded.
    """
    ds = _decoded([str(p) for p in paths], size, resize, skipped)
    return _fixed_parallelism(ds.batch(batch_size).prefetch(2))


# The augmentations (the ranges of keras.layers.RandomFlip("horizontal"), RandomRotation(0.05), RandomZoom(0.1),
# RandomContrast(0.1)), drawn by TensorFlow's stateless random ops from a seed per batch: Keras's random layers keep
# their state in a seed generator, and inside tf.data's parallel map the order in which batches drew from it moved
# from run to run, so the same command trained on other augmentations (measured: epoch 2 of two identical runs
# differed). A stateless draw depends on the batch's seed alone.
ROTATION, ZOOM, CONTRAST = 0.05, 0.1, 0.1


def augment_batch(x, seed):
    """Flip, rotate, zoom and change the contrast of a batch ``x`` (float RGB in [0, 255]), each image its own
    draw, all from ``seed`` (a shape-[2] integer tensor): the same seed, the same augmentations."""
    import math

    tf = tensorflow()

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    n, h, w = tf.shape(x)[0], tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
    flip = tf.random.stateless_uniform([n], seeds[0]) < 0.5
    x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
    angle = tf.random.stateless_uniform([n], seeds[1], -ROTATION, ROTATION) * 2 * math.pi
    scale = 1 + tf.random.stateless_uniform([n], seeds[2], -ZOOM, ZOOM)
    cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    zero = tf.zeros_like(cos)
    # Output pixel (x, y) reads input (cos (x-cx) - sin (y-cy) + cx, sin (x-cx) + cos (y-cy) + cy).
    transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, zero, zero], 1)
    x = tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transforms, output_shape=tf.shape(x)[1:3],
                                              fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    factor = 1 + tf.random.stateless_uniform([n, 1, 1, 1], seeds[3], -CONTRAST, CONTRAST)
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((x - mean) * factor + mean, 0.0, 255.0)


def training_batches(paths, labels, opts: ImageOptions, preprocess, skipped: dict, *, shuffle=False, augment=False,
                     seed=0):
    """``(images, labels)`` batches for ``model.fit``: readable files only, preprocessed for the model.

    Args:
        labels: one integer class index per path.
        preprocess: maps float RGB pixels in [0, 255] to the model's input.
        skipped: receives ``{path: reason}`` of the files that cannot be decoded.
        augment: flip, rotation, zoom and contrast (seeded), before ``preprocess``.
    """
    tf = tensorflow()

    label_tensor = tf.constant(np.asarray(labels, dtype=np.int32))
    # The steps are plain Python for tf.data: AutoGraph has nothing to convert in them (and warns on lambdas,
    # and cannot read the source of a preprocess_input that imports lazily).
    graph_ready = tf.autograph.experimental.do_not_convert
    ds = _decoded([str(p) for p in paths], opts.image_size, opts.resize, skipped, training=True, shuffle=shuffle,
                  seed=seed)
    ds = ds.filter(graph_ready(lambda i, img, ok: ok))
    ds = ds.map(graph_ready(lambda i, img, ok: (tf.cast(img, tf.float32), tf.gather(label_tensor, i))))
    ds = ds.batch(opts.batch_size)
    if augment:  # a seed per batch, drawn in order (new ones each epoch, the same ones in every run)
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws).map(
            graph_ready(lambda xy, r: (augment_batch(xy[0], tf.stack([r, tf.constant(seed, tf.int64)])), xy[1])),
            num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(graph_ready(lambda x, y: (preprocess(x), y)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# The forward pass over image files.
# ---------------------------------------------------------------------------


def forward(model, x, batch_size: int) -> np.ndarray:
    """``model`` on one batch, padded to ``batch_size`` rows.

    Every call then has the same input shape, so the compiled function is
    traced once; a short last batch would otherwise cost a retrace (seconds).
    """
    n = len(x)
    if n < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
    return np.asarray(model.predict_on_batch(x), dtype=np.float32)[:n]


def predict_images(model, paths, size: int, resize: str, batch_size: int, preprocess, on_batch=None):
    """Run ``model`` over image files through the tf.data pipeline.

    Args:
        model: a Keras model, or a function without arguments that builds one:
            it is then built at the first readable image, so that input with
            nothing readable fails without building a model.
        preprocess: maps float RGB pixels in [0, 255] to the model's input.
        on_batch: called with the number of files in each batch (progress bars).

    Returns:
        ``(kept, outputs, skipped)``: indices into ``paths`` of the readable
        images in input order, the model's outputs for them (one row each,
        flattened), and ``{path: reason}`` for the unreadable ones.
    """
    skipped: dict[str, str] = {}
    kept, chunks = [], []
    for idx, images, ok in inference_batches(paths, size, resize, batch_size, skipped):
        ok = ok.numpy()
        if ok.any():
            if not hasattr(model, "predict_on_batch"):
                model = model()
            out = forward(model, preprocess(images.numpy().astype(np.float32)), batch_size)
            chunks.append(out[ok].reshape(int(ok.sum()), -1))
            kept.extend(int(i) for i in idx.numpy()[ok])
        if on_batch is not None:
            on_batch(len(ok))
    skipped = {p: skipped[p] for p in map(str, paths) if p in skipped}  # in input order, not decoding order
    if not chunks:
        width = int(np.prod(model.output.shape[1:])) if hasattr(model, "output") else 0
        return [], np.zeros((0, width), np.float32), skipped
    outputs = np.concatenate(chunks)
    order = np.argsort(kept, kind="stable")  # back to the input order
    return [kept[i] for i in order], outputs[order], skipped


def timed_predict(model, paths, size: int, resize: str, batch_size: int, preprocess, on_batch=None):
    """:func:`predict_images` after one warm-up batch, timed.

    The warm-up traces the model's function first, so the rate measures
    steady-state inference from image files (decoding included), not the
    one-off tracing.

    Returns:
        ``(kept, outputs, skipped, images_per_second)``.
    """
    forward(model, np.zeros((batch_size, size, size, 3), np.float32), batch_size)
    start = time.perf_counter()
    kept, outputs, skipped = predict_images(model, paths, size, resize, batch_size, preprocess, on_batch=on_batch)
    seconds = time.perf_counter() - start
    return kept, outputs, skipped, (len(paths) / seconds if len(paths) and seconds > 0 else float("nan"))
