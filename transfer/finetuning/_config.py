"""The options of strategy 1 (fine-tuning): a frozen dataclass that checks itself at construction."""

from __future__ import annotations

import dataclasses
import math

from transfer.backbones import BackboneOptions
from transfer.data import SEED, resolve
from transfer.errors import TransferError
from transfer.finetuning._model import check_freeze_value

SCHEDULES = ("cosine", "plateau", "constant")


HEADS = ("probe", "train")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig(BackboneOptions):
    """Options of ``transfer finetune`` (names after fastai's ``fine_tune``).

    Attributes:
        freeze: what stays frozen in stage 2: ``all`` (head only), ``none``,
            a number of backbone layers counted from the input, a fraction
            (``0.5``, the default: the first half of the layers), or a layer /
            block name: that layer and everything after it train (``block6a``
            or ``block6a_expand_conv``).
        head: how stage 1 makes the head: ``probe`` (default) fits a linear
            probe (a logistic regression on the cached features, to
            convergence, its regularisation cross-validated on ``train``) and
            starts stage 2 from it, as LP-FT (Kumar et al., ICLR 2022) does;
            ``train`` trains it for ``head_epochs`` at ``lr``.  ``probe`` needs
            pretrained weights and no hidden layer, and trains the head otherwise.
        head_epochs: stage 1 epochs with ``head="train"`` (head only) at ``lr``.
        epochs: stage 2 epochs at ``lr / lr_mult`` (one of warm-up, then cosine decay).
        hidden: units of a hidden dense layer in the head (0: none).
        augment: flip, rotation, zoom, contrast; off, stage 1 trains on the cached features.
        class_weight: ``balanced`` or None.
        patience: early stopping when validation accuracy (then loss) has not
            improved for this many epochs; 0: off.  The epoch kept is the best by
            the same ranking, and a fine-tuning epoch must beat the head alone.
        schedule: learning-rate schedule of each stage: cosine, plateau or constant.
        precision: auto (measured), float32, mixed_float16 or mixed_bfloat16.
        train_bn: let BatchNorm layers train, in training mode.
    """

    # The first half of the backbone's layers stays frozen: measured on every set at hand (the docs, "The depth
    # rule"), freezing them lost nothing against training everything (the same test accuracy on digits,
    # hymenoptera and a fashion-mnist subset) while each epoch ran 1.5x faster (bench/finetune.py); freezing
    # three quarters lost 3 points on digits, far from ImageNet. Early layers are the general ones
    # (Yosinski et al., NeurIPS 2014), and trained at the stage-2 rate they barely moved (0.05 % on digits).
    freeze: str = "0.5"
    head: str = "probe"
    head_epochs: int = 5
    epochs: int = 10
    lr: float = 1e-3
    # Stage 2 at 1e-4: the rate swept on hymenoptera, digits and a fashion-mnist subset (the docs, strategy 1):
    # 1e-5 leaves far-from-ImageNet data where the probe left it, 1e-3 unlearns the pretrained features.
    lr_mult: float = 10.0
    dropout: float = 0.2
    hidden: int = 0
    augment: bool = True
    class_weight: str | None = None
    patience: int = 3
    schedule: str = "cosine"
    precision: str = "auto"
    train_bn: bool = False
    seed: int = SEED

    def __post_init__(self):
        """Checked and resolved at construction (the backbone's size, its registry name); ``freeze`` as far as
        it can be without building the model (:func:`~transfer.finetuning.check_freeze` checks layer names).

        Raises:
            TransferError: naming the option, what is allowed and what was given.
        """
        from transfer.finetuning._precision import PRECISIONS

        super().__post_init__()
        check_freeze_value(self.freeze)
        for name in ("head_epochs", "epochs", "hidden", "patience"):
            if getattr(self, name) < 0:
                raise TransferError(f"{name}={getattr(self, name)} is not valid: give 0 or more.")
        if self.head == "train" and self.head_epochs + self.epochs == 0:
            raise TransferError("head_epochs=0 and epochs=0: nothing would be trained; give either more than 0.")
        if not (0 < self.lr < math.inf and 0 < self.lr_mult < math.inf):
            raise TransferError(f"lr={self.lr} and lr_mult={self.lr_mult} must both be positive.")
        if not 0 <= self.dropout < 1:
            raise TransferError(f"dropout={self.dropout} is not valid: give a fraction in [0, 1).")
        if self.class_weight not in (None, "none", "balanced"):
            raise TransferError(f"class_weight={self.class_weight!r} is not valid. Expected 'balanced' or none.")
        for name, allowed in (("head", HEADS), ("schedule", SCHEDULES), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise TransferError(f"{name}={getattr(self, name)!r} is not valid. Expected one of: "
                                    f"{', '.join(allowed)}.")
        resolve(self, freeze=str(self.freeze).strip(),
                class_weight=None if self.class_weight == "none" else self.class_weight)


def finetune_settings(cfg: FinetuneConfig) -> dict:
    """What a run records of ``cfg`` to be resumed or reused: every option but the engine, which runs frozen
    models forward and changes no number beyond 1e-4."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "engine"}
