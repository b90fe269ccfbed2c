"""Import helpers for the families' optional codec packages: one clear line when one is missing."""
from __future__ import annotations

import importlib
import os
from pathlib import Path


def require(module: str, package: str, family: str, purpose: str = "turn speech tokens into audio"):
    """``importlib.import_module(module)`` or an ImportError naming the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the {family} codec needs the `{package}` package to {purpose}: pip install {package} "
                          f"(import of {module} failed: {e})") from None


def codec_weights(env: str, default: str, family: str, what: str) -> str:
    """Where to load a codec's weights from: ``$env`` (a local folder or file) when set, else ``default`` (a hub id,
    read from the HF cache or downloaded). A local path that is not there fails here, in one line, rather than as a
    hub lookup of a path deep inside the codec package."""
    value = os.environ.get(env, "")
    if not value:
        return default
    if not Path(value).expanduser().exists():
        raise FileNotFoundError(f"{env}={value} does not exist: point {env} at {what} for {family}, or unset it "
                                f"to load {default}")
    return str(Path(value).expanduser())


def load_codec(load, source: str, env: str, family: str, what: str):
    """``load(source)``, with a failure to find the weights (offline hub, missing files) said in one line."""
    try:
        return load(source)
    except (OSError, ValueError) as e:  # hub errors (offline, not cached) are OSError/ValueError subclasses
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FileNotFoundError(f"cannot load the {family} codec from {source} ({first}): set {env} to a local "
                                f"copy of {what}") from e


_LOADED: dict[tuple, object] = {}


def cached(key: tuple, load):
    """``load()`` once per ``key`` (family, where the weights came from): codec weights are large and every
    adapter of a family shares them, but another source (``SPADE_SNAC`` set elsewhere) is another codec."""
    if key not in _LOADED:
        _LOADED[key] = load()
    return _LOADED[key]


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
