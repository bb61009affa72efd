"""This machine as far as speed goes: its CPU's name and instruction flags, and the cores this process may use.

What is measured once per machine (the precision, TensorFlow's oneDNN setting, the engines' timings) is kept
under these; read here without importing TensorFlow.
"""

from __future__ import annotations

import os
import platform


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (Linux's /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    """The CPU's model name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    """The cores this process may use (its affinity), not merely those the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
