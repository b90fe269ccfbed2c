"""Import helpers for the families' optional codec packages: one clear line when one is missing."""
from __future__ import annotations

import importlib


def require(module: str, package: str, family: str, purpose: str = "turn speech tokens into audio"):
    """``importlib.import_module(module)`` or an ImportError naming the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the {family} codec needs the `{package}` package to {purpose}: pip install {package} "
                          f"(import of {module} failed: {e})") from None


def load_callable(spec: str):
    """``'package.module:function'`` -> the function (the generic family's encode/decode hooks)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{spec!r} is not a 'module:function' reference")
    module, _, name = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"cannot import {module} for {spec!r}: {e}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module} has no {name!r} (from {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj
