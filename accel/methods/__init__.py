"""The techniques, one file each, grouped by family (inspect, attribute, synthesize).

This package is also callable: `accel.methods()` lists the registered techniques (`accel.methods("attribute")`
one family), so the documented verb and the package of the same name do not shadow each other.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, family: str | None = None) -> list[Any]:
        from ..registry import methods

        return methods(family)


sys.modules[__name__].__class__ = _CallableModule
