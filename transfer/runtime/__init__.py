"""This machine and TensorFlow: machine facts, the oneDNN choice, quiet start-up, engines, file I/O."""

from __future__ import annotations

from transfer._exports import lazy

_API = {
    "CSV_ERRORS": "_fileio",
    "DISK_FULL": "_fileio",
    "DiskFullError": "_fileio",
    "ENGINES": "_engines",
    "ExportedModel": "_engines",
    "atomic_path": "_fileio",
    "available_memory": "_machine",
    "check_engine": "_engines",
    "disk_full": "_fileio",
    "frozen_model": "_engines",
    "keras_home": "_fileio",
    "keeps_file_names": "_fileio",
    "keras_module": "_tensorflow",
    "announce_to": "_tensorflow",
    "device_line": "_tensorflow",
    "tensorflow": "_tensorflow",
    "machine_key": "_machine",
    "remember": "_machine",
    "remembered": "_machine",
    "store_path": "_machine",
    "cpu_flags": "_machine",
    "cpu_name": "_machine",
    "cores": "_machine",
    "read_csv": "_fileio",
    "sha256": "_fileio",
    "slug": "_fileio",
    "temp_owner": "_fileio",
    "write_csv": "_fileio",
    "write_text_atomic": "_fileio",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy(__name__, _API)
