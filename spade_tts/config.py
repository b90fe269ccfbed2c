"""Typed configuration: a dataclass per stage, filled from a YAML recipe, then ``key=value``.

Recipes keep experiments reproducible; overrides keep one-off runs cheap. Values given on the
command line are parsed as YAML scalars (so ``steps=200`` is an int and ``voices=[a,b]`` a
list), and each is checked against the field's declared type so that a typo fails at once.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{name}={value!r} does not fit {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(name, v, inner) for v in value]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{name}={value!r}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def _merge(values: dict[str, Any], new: dict[str, Any]) -> None:
    """Update ``values``; mappings (a stage's settings inside a pipeline recipe) merge one level deep."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value


def load_config(cls: type[T], recipe: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from defaults, then ``base`` (a preset), an optional YAML recipe, then ``key=value``
    overrides; ``stage.key=value`` sets one entry of a mapping field (``score.items_per_speaker=2``)."""
    values: dict[str, Any] = {}
    _merge(values, dict(base or {}))
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {path} not found: pass an existing YAML file (see recipes/)")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {path} must be a YAML mapping of key: value")
        _merge(values, loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (example: seed=1)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        key = key.strip()
        if "." in key:
            key, sub = key.split(".", 1)
            value = {sub: value}
        _merge(values, {key: value})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
