"""Package exports imported on first use.

``resnet-hpo --help`` and the readers must answer without importing torch, Ray or plotly
(about 5 s together on a 2-core machine); a package's ``__init__`` therefore names its
exports and the module each lives in, and imports that module only when a name is used
(PEP 562 module ``__getattr__``). Type checkers read the ``TYPE_CHECKING`` imports each
package keeps next to its table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, tuple[str, ...]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``, whose ``exports`` map a
    module (relative, ``"._open"``) to the names it provides."""
    module_of = {name: module for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later lookups find it without calling this
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of})

    return sorted(module_of), __getattr__, __dir__
