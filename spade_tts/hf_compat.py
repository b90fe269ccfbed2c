"""Small shims over Hugging Face API renames, so one code path runs on transformers 4.x and 5.x.

transformers 5.2x renamed the KV-cache argument and output field from ``past_key_values`` to
``cache``; the GPU machines here run an older 5.x and users run 4.x, so both spellings are
detected instead of pinned.
"""
from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=None)
def _cache_arg(forward_cls: type) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` with the argument name this model's forward takes."""
    return {_cache_arg(type(model)): cache}


def output_cache(out):
    """The KV cache a forward returned, under either name."""
    keys = out.keys() if hasattr(out, "keys") else ()
    return out["cache"] if "cache" in keys else out["past_key_values"]
