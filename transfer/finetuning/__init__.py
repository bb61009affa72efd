"""Strategy 1: a backbone with a new head, its early layers frozen, trained in stages."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "FinetuneConfig": "_config",
    "HEADS": "_config",
    "PRECISIONS": "_precision",
    "SCHEDULES": "_config",
    "check_freeze": "_model",
    "finetune": "_finetune",
    "finetune_run": "_finetune",
    "finetune_settings": "_config",
    "load_saved_model": "_model",
    "tensorboard": "_training",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
