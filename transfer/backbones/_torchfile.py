"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing torch.

A ``.pth`` file is a pickle whose tensors point at raw storages kept beside
it: either the legacy layout (several pickles in one stream followed by the
raw storages) or the zip layout of ``torch.save`` since PyTorch 1.6.  A
pickle can name any callable, so an ordinary ``pickle.load`` of a file from
elsewhere can run code.  The unpickler here resolves only the handful of
names a state dict needs and refuses every other one.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(ValueError):
    """The file asks the unpickler for something a state dict never needs."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _TensorRef:
    """A tensor view over a storage that is read after the pickle."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"refusing to load '{module}.{name}': a weights file may only hold "
            "tensors and dicts, and this one asks to run other code"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"unexpected storage type {storage_type!r}")
        self._storages.setdefault(key, {"dtype": storage_type.dtype, "data": None})
        return key


def _load_one(f, storages):
    return _RestrictedUnpickler(f, storages).load()


def _materialise(obj, storages):
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, storages)) for k, v in obj.items())
    if isinstance(obj, _TensorRef):
        buf = _checked_view(obj, storages)
        itemsize = buf.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            buf[obj.offset:],
            shape=obj.size,
            strides=tuple(s * itemsize for s in obj.stride),
        ).copy()
    return obj


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def _checked_view(ref: _TensorRef, storages) -> np.ndarray:
    """The storage under ``ref``, after checking that the view stays inside it.

    ``as_strided`` trusts its arguments: a view past the end of its storage
    reads unrelated process memory or crashes, so every number the pickle
    declares is checked against the bytes actually present first.
    """
    entry = storages.get(ref.storage)
    buf = None if entry is None else entry["data"]
    if buf is None:
        raise ValueError(f"tensor over storage {ref.storage!r}, which the file does not hold")
    numbers = (ref.offset, *ref.size, *ref.stride)
    if not all(_is_count(n) for n in numbers) or len(ref.size) != len(ref.stride) or len(ref.size) > 8:
        raise ValueError(f"tensor with an impossible layout (offset {ref.offset!r}, size {ref.size!r}, "
                         f"stride {ref.stride!r})")
    count = int(np.prod(ref.size, dtype=object))
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True)) if count else ref.offset - 1
    if last >= len(buf) or count > len(buf):
        raise ValueError(f"tensor of shape {ref.size} at offset {ref.offset} needs more than the "
                         f"{len(buf)} values its storage holds (a truncated or crafted file)")
    return buf


def _storage_array(raw: bytes, dtype: np.dtype) -> np.ndarray:
    if len(raw) % dtype.itemsize:
        raise ValueError(f"a storage of {len(raw)} bytes is not a whole number of {dtype} values")
    return np.frombuffer(raw, dtype=dtype)


def _read_legacy(f) -> dict:
    storages: dict = {}
    magic = _load_one(f, storages)
    if magic != LEGACY_MAGIC:
        raise ValueError("not a PyTorch checkpoint (wrong magic number)")
    _load_one(f, storages)  # protocol version
    _load_one(f, storages)  # sys_info
    obj = _load_one(f, storages)
    keys = _load_one(f, storages)
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = storages[key]["dtype"]
        left = os.fstat(f.fileno()).st_size - f.tell()
        if not 0 <= count * dtype.itemsize <= left:
            raise ValueError(f"a storage declares {count} values but the file has {left} bytes left")
        storages[key]["data"] = _storage_array(f.read(count * dtype.itemsize), dtype)
    return _materialise(obj, storages)


def _read_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ValueError("zip checkpoint without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        storages: dict = {}
        obj = _load_one(io.BytesIO(zf.read(pkl)), storages)
        for key, entry in storages.items():
            info = zf.getinfo(f"{prefix}data/{key}")
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > 64 * (info.compress_size + 1024):
                raise ValueError(f"storage {key} inflates {info.compress_size} bytes to {info.file_size}")
            entry["data"] = _storage_array(zf.read(info), entry["dtype"])
    return _materialise(obj, storages)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict as ``{name: numpy array}`` without torch.

    Args:
        path: a ``.pth``/``.pt`` file in the legacy or the zip layout.

    Returns:
        An ordered dict of NumPy arrays, in the file's order.

    Raises:
        UnsafeCheckpointError: the pickle names anything but tensors and dicts.
        ValueError: the file is not a readable PyTorch checkpoint.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            state = _read_zip(path)
        else:
            with open(path, "rb") as f:
                state = _read_legacy(f)
    except UnsafeCheckpointError:
        raise
    except (ValueError, pickle.UnpicklingError, EOFError, KeyError, TypeError, struct.error,
            zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state
