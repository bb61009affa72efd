"""Lazy re-exports: a package's public names, each imported from its module on first use.

Every ``__init__`` of transfer lists its public API as ``{name: module}`` and
hands it to :func:`lazy`, so that importing a package (``import transfer``,
``from transfer.features import extract``) imports only what is used: no
TensorFlow, scikit-learn or pandas until a stage needs them, and no import
cycle between stages that name each other in functions.
"""

from __future__ import annotations

import importlib


def lazy(package: str, api: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package`` that import ``api``'s names (``{name: module}``) when asked."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name):
        if name in api:
            module = api[name] if api[name].startswith("transfer.") else f"{package}.{api[name]}"
            value = getattr(importlib.import_module(module), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(api))

    return __getattr__, __dir__
