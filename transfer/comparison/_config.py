"""The options of ``transfer compare``: one frozen dataclass that checks itself and makes each strategy's config."""

from __future__ import annotations

import dataclasses
import functools

from transfer.backbones import DEFAULT_BACKBONE
from transfer.comparison._protocol import FOLDS, PROTOCOLS
from transfer.data import resolve
from transfer.errors import TransferError
from transfer.features import DEFAULT_CLASSIFIERS, SEARCH_SIZE, ExtractConfig
from transfer.finetuning import FinetuneConfig
from transfer.reports import STRATEGIES
from transfer.scratch import ScratchConfig

CONFIGS = {"features": ExtractConfig, "finetune": FinetuneConfig, "scratch": ScratchConfig}
# The digits demo (`transfer compare` with no arguments, CompareConfig.demo()): 96 px (8-px digits gain
# nothing at 224 px but time) and no augmentation (a mirrored digit is another digit).
DEMO_DATA = "digits"
DEMO_OPTIONS = {"image_size": 96, "augment": False}


def _feeds(name: str, *strategies: str, default=dataclasses.MISSING):
    """A compare option that is ``name`` of the configs of ``strategies``, with the first one's default
    unless compare has its own."""
    return dataclasses.field(default=getattr(CONFIGS[strategies[0]], name) if default is dataclasses.MISSING
                             else default, metadata={"strategies": strategies, "name": name})


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Options of ``transfer compare``.

    Each option passes on to the strategies' own configs (see
    :meth:`config_for`) and takes its default from there: the image options
    and ``weights`` to both strategies, so both see the same pixels.

    Attributes:
        backbones: registry names; every strategy runs for each.
        strategies: any of ``features``, ``finetune``, ``scratch``.
        classifiers: strategy 2's scikit-learn classifiers.
        search_size: their grid searches see a stratified sample of at most
            this many training images (None: all); each refit sees all.
        freeze: strategy 1 runs once per value (``all``, ``none``, a count,
            a fraction or a layer name, as ``transfer finetune --freeze``).
        scratch_size: input size of the from-scratch CNN (None: the images' own, within 32-64 px).
        scratch_epochs: its epoch limit (early stopping on validation loss).
        repeats: run the whole comparison this many times, on splits (and
            training seeds) ``seed``, ``seed + 1``, ...; the report is then the
            mean, spread and paired differences over the repeats.
        train_sizes: a learning curve when not empty: the whole comparison
            once per size, on nested, seeded subsets of the one split's
            training images with at most that many per class (``all``: every
            one), scored on the same test images (see :func:`compare`).  A
            comma-separated string or a tuple of positive integers and
            ``all``; sizes of at least 2 with the ``features`` strategy (its
            cross-validation needs 2 images per class).  Not with ``repeats``
            above 1: a learning curve runs on one split.
        drop_duplicates: leave each test image with a copy (exact or near) in train or val out of the test
            split, before any model is trained (the training copies are kept); k-fold keeps copies in one fold
            whatever this says.
        protocol: ``auto`` (default): stratified k-fold cross-validation when one split would score fewer
            than :data:`~transfer.comparison.MIN_SCORED` images, else one split; ``kfold`` or ``split``
            to force either (a source's own test split is always honoured; a learning curve runs on one split).
        folds: k of k-fold (at most the smallest class's image count).
    """

    backbones: tuple[str, ...] = (DEFAULT_BACKBONE,)
    strategies: tuple[str, ...] = STRATEGIES
    classifiers: tuple[str, ...] = DEFAULT_CLASSIFIERS
    search_size: int | None = SEARCH_SIZE
    layer: str = _feeds("layer", "features")
    pooling: str | None = _feeds("pooling", "features")
    flip_average: bool = _feeds("flip_average", "features")
    image_size: int | None = _feeds("image_size", "features", "finetune")
    resize: str = _feeds("resize", "features", "finetune", "scratch")
    batch_size: int = _feeds("batch_size", "features", "finetune", "scratch")
    weights: str = _feeds("weights", "features", "finetune")
    engine: str = _feeds("engine", "features", "finetune")
    executor: str = _feeds("executor", "features")
    actors: int | None = _feeds("actors", "features")
    actor_cpus: float = _feeds("actor_cpus", "features")
    actor_gpus: float = _feeds("actor_gpus", "features")
    freeze: tuple[str, ...] = (FinetuneConfig.freeze,)
    head: str = _feeds("head", "finetune")
    head_epochs: int = _feeds("head_epochs", "finetune")
    epochs: int = _feeds("epochs", "finetune")
    lr: float = _feeds("lr", "finetune")
    lr_mult: float = _feeds("lr_mult", "finetune")
    augment: bool = _feeds("augment", "finetune", "scratch")
    patience: int = _feeds("patience", "finetune")
    precision: str = _feeds("precision", "finetune")
    scratch_size: int | None = _feeds("image_size", "scratch")
    scratch_epochs: int = _feeds("epochs", "scratch")
    seed: int = _feeds("seed", "finetune", "scratch")
    repeats: int = 1
    train_sizes: tuple[str, ...] = ()
    protocol: str = "auto"
    folds: int = FOLDS
    drop_duplicates: bool = False

    @classmethod
    def demo(cls, **options) -> CompareConfig:
        """The settings of the digits demo (``transfer compare`` with no arguments); ``options`` override them."""
        return cls(**{**DEMO_OPTIONS, **options})

    def config_for(self, strategy: str, **fixed):
        """The config of one strategy (``features``, ``finetune`` or ``scratch``) that these options make: made
        (and so checked) once per set of options, then the same object."""
        return _config_for(self, strategy, tuple(sorted(fixed.items())))

    def extract_config(self, backbone) -> ExtractConfig:
        return self.config_for("features", backbone=backbone)

    def finetune_config(self, backbone, freeze) -> FinetuneConfig:
        return self.config_for("finetune", backbone=backbone, freeze=freeze)

    def scratch_config(self) -> ScratchConfig:
        return self.config_for("scratch")

    def __post_init__(self):
        """Checked at construction, before any work: comma-separated strings become tuples, and each strategy's
        own config is built (and so checks its options: sizes, epochs, rates, freeze values...).

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        strategies = _names(self.strategies)
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or not strategies:
            raise TransferError(f"Unknown strategy {unknown[0] if unknown else self.strategies!r}. Expected a "
                                f"comma-separated list of: {', '.join(STRATEGIES)}.")
        self._check_protocol()
        resolve(self, backbones=_backbones(self.backbones), strategies=tuple(s for s in STRATEGIES if s in strategies),
                freeze=tuple(dict.fromkeys(_names(self.freeze))), classifiers=_names(self.classifiers),
                train_sizes=_train_sizes(self.train_sizes, minimum=2 if "features" in strategies else 1))
        if self.train_sizes and self.repeats > 1:
            raise TransferError(f"repeats={self.repeats} and train_sizes={','.join(self.train_sizes)} cannot be "
                                "combined: give one or the other (a learning curve runs on one split).")
        if "finetune" in self.strategies and not self.freeze:
            raise TransferError("freeze is empty: give one or more of all, none, a count, a fraction or a layer name.")
        if "features" in self.strategies:
            from transfer.features import check_search_size, parse_classifiers

            check_search_size(self.search_size)
            resolve(self, classifiers=tuple(parse_classifiers(list(self.classifiers))))
        for backbone in self.backbones:  # each sub-config checks its own options at construction
            if "features" in self.strategies:
                self.extract_config(backbone)
            for f in self.freeze if "finetune" in self.strategies else ():
                self.finetune_config(backbone, f)
        if "scratch" in self.strategies:
            self.scratch_config()

    def _check_protocol(self):
        if not isinstance(self.repeats, int) or isinstance(self.repeats, bool) or self.repeats < 1:
            raise TransferError(f"repeats={self.repeats!r} is not valid: give a positive integer.")
        if self.protocol not in PROTOCOLS:
            raise TransferError(f"protocol={self.protocol!r} is not valid. Expected one of: {', '.join(PROTOCOLS)}.")
        if not isinstance(self.folds, int) or isinstance(self.folds, bool) or self.folds < 2:
            raise TransferError(f"folds={self.folds!r} is not valid: give a whole number of at least 2.")


def _backbones(value) -> tuple[str, ...]:
    from transfer.backbones import get_backbone

    backbones = tuple(dict.fromkeys(get_backbone(b).name for b in _names(value)))
    if not backbones:
        raise TransferError("backbones is empty: give at least one registry name (`transfer backbones`).")
    return backbones


@functools.lru_cache(maxsize=256)
def _config_for(cfg: CompareConfig, strategy: str, fixed: tuple):
    given = {f.metadata["name"]: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
             if strategy in f.metadata.get("strategies", ())}
    return CONFIGS[strategy](**{**given, **dict(fixed)})


def _names(value) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(v).strip() for v in items if str(v).strip())


def _train_sizes(value, minimum: int) -> tuple[str, ...]:
    """``train_sizes`` as sorted, distinct sizes (``all`` last), e.g. ``("5", "10", "all")``."""
    items = tuple(v.lower() for v in _names((value,) if isinstance(value, int) else value))
    bad = [v for v in items if v != "all" and not (v.isascii() and v.isdigit() and int(v) >= minimum)]
    if bad:
        given = value if isinstance(value, str) else ",".join(items)
        why = " (features' cross-validation needs 2 per class)" if minimum == 2 else ""
        raise TransferError(f"train_sizes={given!r} is not valid ({bad[0]!r}): give images per class, comma-"
                            f"separated: whole numbers of at least {minimum}{why} or all (e.g. 5,10,25,all).")
    sizes = sorted({int(v) for v in items if v != "all"})
    return tuple(str(n) for n in sizes) + (("all",) if "all" in items else ())
