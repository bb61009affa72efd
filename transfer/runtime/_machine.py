"""This machine as far as speed goes, and the one store of what was measured on it once.

What is measured once per machine (TensorFlow's oneDNN setting, the fine-tuning
precision, the engines' timings) is kept in one file,
``~/.keras/transfer/machine.json``, under one key: the CPU's name, the cores
this process may use and the versions of the packages that run the
measured code.  A new TensorFlow, another core count or another CPU is a new
machine: measured again.  Everything here is read without importing
TensorFlow.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path

# What the measured answers depend on besides the CPU: the packages that run the measured code.
PACKAGES = ("tensorflow", "keras", "onnxruntime", "openvino", "tf2onnx")


def _cpuinfo(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (Linux's /proc/cpuinfo; empty elsewhere)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name."""
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cores() -> int:
    """The cores this process may use (its affinity), not merely those the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int:
    """Bytes of memory a new allocation can use now: the kernel's MemAvailable (free memory and the caches it can
    drop), else the physical memory; a cgroup's limit, where one is set, caps either."""
    try:
        with open("/proc/meminfo") as f:
            have = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return min(have, int(limit) - used) if limit != "max" else have
    except (OSError, ValueError):
        return have


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def machine_key() -> str:
    """This CPU, its usable cores and the versions of :data:`PACKAGES`: what every measured answer depends on."""
    versions = " ".join(f"{p} {_version(p)}" for p in PACKAGES)
    return f"{cpu_name()} x{cores()} | {versions}"


def store_path() -> Path:
    """The file of what was measured on this machine (beside Keras's own cache, like the models)."""
    from transfer.runtime._fileio import keras_home

    return keras_home() / "transfer" / "machine.json"


def _all() -> dict:
    try:
        known = json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def remembered(topic: str) -> dict:
    """What was measured on this machine about ``topic`` (``onednn``, ``precision``, ``engines``); {} if nothing."""
    value = _all().get(machine_key(), {}).get(topic, {})
    return value if isinstance(value, dict) else {}


def remember(topic: str, value: dict) -> None:
    """Keep ``value`` as this machine's answer about ``topic`` (a store that cannot be written is left as it is:
    the answer is then measured again next time)."""
    from transfer.runtime._fileio import write_text_atomic

    known = _all()
    known.setdefault(machine_key(), {})[topic] = value
    try:
        write_text_atomic(store_path(), json.dumps(known, indent=1, sort_keys=True))
    except OSError:
        pass
