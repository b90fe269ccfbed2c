"""Typed configuration: a dataclass per stage, filled from a preset, a YAML recipe, then the command line.

Recipes keep experiments reproducible; overrides keep one-off runs cheap. The order is one rule for
every stage (:func:`load_config`): dataclass defaults < preset < ``--recipe FILE.yaml`` < flags and
``key=value``. Text from the command line is read by :func:`parse_text` whichever way it came (a
``--flag`` or ``key=value``) and then checked against the field's declared type, so that a typo fails
at once. A field's comment in its dataclass is its documentation: :func:`field_comments` reads it,
and ``spade STAGE --help`` shows it.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
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
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as text; Python reads it as a number
        try:
            return float(value)
        except ValueError:
            pass
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


def parse_text(text: str, tp: Any = None) -> Any:
    """A value typed on the command line. A ``str`` field takes the text as it is, so that paths with
    ':', '=' or '#' survive; anything else is read as a YAML scalar (``200`` an int, ``[a, b]`` a list,
    ``null`` None) and left to :func:`_coerce` to check."""
    if tp is str:
        return text
    return yaml.safe_load(text) if text.strip() else ""


def _parse_flag(text: str | list[str], tp: Any) -> Any:
    """A flag's text: a list flag (``--voices a b``) gives one text per element, read by the element type."""
    if isinstance(text, list):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [parse_text(t, inner) for t in text]
    return parse_text(text, tp)


def override_key(item: str) -> str:
    """The field a ``key=value`` (or ``key.sub=value``) sets."""
    return item.split("=", 1)[0].split(".", 1)[0].strip()


def load_config(cls: type[T], recipe: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, flags: dict[str, str | list[str]] | None = None) -> T:
    """Build ``cls`` from its defaults, then ``base`` (a preset), an optional YAML recipe, then ``flags``
    (field -> the text given to its ``--flag``), then ``key=value`` overrides (last, so they win over a
    flag naming the same key); ``stage.key=value`` sets one entry of a mapping field
    (``score.items_per_speaker=2``)."""
    hints = typing.get_type_hints(cls)
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
    _merge(values, {k: _parse_flag(v, hints.get(k)) for k, v in (flags or {}).items()})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (example: seed=1)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if "." in key:
            key, sub = key.split(".", 1)
            _merge(values, {key: {sub: parse_text(raw)}})
        else:
            _merge(values, {key: parse_text(raw, hints.get(key))})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def show_value(value: Any) -> str:
    """A value as it would be written in a recipe (``false``, ``""``, ``[a, b]``)."""
    return json.dumps(value, default=str)


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of ``cls`` (and of the dataclasses it extends), by field name.

    A field's comment is its trailing ``# ...``, continued by comment-only lines right below it that
    are padded after their '#' (``#          the rest``); a field without one takes the comment lines
    just above it (no blank line between). Read with :mod:`tokenize`, so a '#' inside a string is not a comment.
    """
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass is not object:
            out.update(_own_comments(klass))
    return out


def _own_comments(cls: type) -> dict[str, str]:
    names = {f.name for f in dataclasses.fields(cls)}
    src = textwrap.dedent(inspect.getsource(cls))
    out: dict[str, str] = {}
    depth, line = 0, []  # block depth; code tokens of the current logical line
    above: list[str] = []  # comment-only lines just above the current line
    trailing = ""  # the current line's trailing comment
    last: str | None = None  # the field whose trailing comment a padded comment line below it continues
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.COMMENT:
            body = tok.string[1:]
            text, padded = body.strip(), len(body) - len(body.lstrip()) > 1
            if line:
                trailing = text
            elif last is not None and padded:  # `#          more words` under a trailing comment goes on with it
                out[last] += " " + text
            else:
                above.append(text)
                last = None
        elif tok.type == tokenize.NL and not line and not tok.line.strip():
            above, last = [], None  # a blank line parts a comment from what follows
        elif tok.type == tokenize.NEWLINE:
            name = line[0].string if line and line[0].type == tokenize.NAME else ""
            is_field = depth == 1 and name in names and len(line) > 1 and line[1].string == ":"
            last = None
            if is_field:
                out[name] = trailing or " ".join(above)
                last = name if trailing else None
            line, above, trailing = [], [], ""
        elif tok.type not in (tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER):
            line.append(tok)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
