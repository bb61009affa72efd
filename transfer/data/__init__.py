"""Source -> split -> images: where the labelled images come from, how they are split, how they are decoded."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "DUPLICATE_COLUMNS": "_duplicates",
    "ImageError": "_images",
    "ImageOptions": "_images",
    "RESIZE_MODES": "_images",
    "SEED": "_splits",
    "SPLIT_COLUMNS": "_splits",
    "TEST_FRACTION": "_splits",
    "VAL_FRACTION": "_splits",
    "class_names": "_imagenet",
    "decode_image": "_images",
    "evaluation_split": "_splits",
    "exact_groups": "_duplicates",
    "find_duplicates": "_duplicates",
    "group_ids": "_duplicates",
    "summary": "_duplicates",
    "forward": "_images",
    "list_images": "_images",
    "load_image": "_images",
    "make_split": "_splits",
    "median_side": "_images",
    "predict_images": "_images",
    "prepare_split": "_splits",
    "read_split": "_splits",
    "resolve_source": "_sources",
    "resolve": "_images",
    "roles": "_splits",
    "sample_images": "_images",
    "share_split": "_splits",
    "timed_predict": "_images",
    "train_subset": "_splits",
    "training_batches": "_images",
    "unreadable": "_images",
    "with_roles": "_splits",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
