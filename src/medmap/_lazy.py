"""Lazy package exports: a package's public names are imported on first use, so importing the
package (e.g. ``medmap.text.sentences``) does not pull torch in.

Example:
    >>> __getattr__, __dir__ = lazy_exports(__name__, {"split_sentences": "medmap.text.sentences"},
    ...                                     globals())   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` / ``__dir__`` pair of a package whose ``exports`` map each public
    name to the module that defines it; a name is imported once, then cached in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
