"""Segmentation: methods on one shared trace, sliding windows, metric, pipeline, commands.

This package is also callable: ``segclip.segment(model, image, classes)`` is
:func:`segclip.segment.api.segment` (the package and the function share the name ``segclip.segment``, so the
package's module object forwards calls to the function; its submodules stay reachable as attributes).
"""
from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from segclip.segment.api import segment

        return segment(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
