"""Stage packages that can be called: `vl.train(config)`, `vl.evaluate(run)`.

A package module gets a subclass of ModuleType with `__call__`, which imports its target
on the first call, so importing the package stays light and its submodules stay
importable as before.
"""
from __future__ import annotations

import importlib
import sys
import types


def callable_module(name: str, target: str) -> None:
    """Make the module `name` callable: calling it calls `target` ("module:function")."""
    module_name, _, attr = target.partition(":")

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(module_name), attr)(*args, **kwargs)

    CallableModule.__call__.__doc__ = f"Calls {target} (see its docstring)."
    sys.modules[name].__class__ = CallableModule
