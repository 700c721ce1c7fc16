"""Lazy package exports (PEP 562): a package names its public objects without importing their modules.

Importing one submodule (`pipelines.data.config`, `pipelines.generate.commit`) runs its package's
__init__ first; with lazy exports that does not pull in torch, Ray or every data source with it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `exports[name]` (a module) on first use.

    Args:
        package: the package's `__name__`.
        exports: public name -> the module that defines it.

    Returns:
        The `__getattr__` to assign in the package's __init__; a found value is cached in the package.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


__all__ = ["lazy_exports"]
