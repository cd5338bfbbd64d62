"""Lazy package attributes (PEP 562): a package names its public API without importing it.

Importing ``mmlab`` or a package of it then costs nothing until an attribute is used, so commands
that need no torch (``mmlab --help``, ``mmlab show``) never load it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, resolving ``name`` from ``exports[name]`` (a module)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
