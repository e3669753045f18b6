"""Recipes: TOML files read into frozen dataclasses, validated, with ``--set key=value`` overrides.

A recipe is data, not code. Every field of a recipe dataclass is a TOML key; a nested dataclass is a
TOML table, whose missing keys read as the field's default (not the table class's); a ``dict`` field
is a free-form table checked by whoever consumes it (environment options, for instance). Field metadata
(``spec``) may carry bounds (``min`` / ``max`` inclusive, ``above`` / ``below`` exclusive; for a list, of
each item) or a set of ``choices``. A rule between fields is a method
``checks(self)`` of the dataclass yielding ``(key, expected)`` pairs for what is wrong.

This is the one place a configuration is validated: every config dataclass (recipes, model configs, CEM
settings) is checked here when it is read from TOML, ``--set`` or a stored JSON recipe, and code below
may assume valid values. Every mistake is a ``ForesightError`` naming the file, the key and what was
expected.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from foresight.errors import ForesightError

R = TypeVar("R")


def spec(default: Any = dataclasses.MISSING, *, min: float | None = None, max: float | None = None,
         above: float | None = None, below: float | None = None, choices: tuple | None = None, help: str = "",
         **kwargs) -> Any:
    """A dataclass field with validation metadata: ``min`` / ``max`` inclusive, ``above`` / ``below`` exclusive."""
    meta = {"min": min, "max": max, "above": above, "below": below, "choices": choices, "help": help}
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kwargs)
    return dataclasses.field(default=default, metadata=meta, **kwargs)


def load(cls: type[R], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> R:
    """Read ``path`` into ``cls``, apply ``key=value`` overrides, validate, return the frozen recipe."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ForesightError(f"{path}: no such recipe file") from None
    except tomllib.TOMLDecodeError as e:
        raise ForesightError(f"{path}: not valid TOML ({e})") from None
    for item in overrides:
        apply_override(raw, item, source=path)
    return from_dict(cls, raw, source=str(path))


def apply_override(raw: dict, item: str, source: str | Path = "--set") -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as TOML, else taken as a string."""
    if "=" not in item:
        raise ForesightError(f"--set {item!r}: expected key=value, e.g. --set episodes=500")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ForesightError(f"--set {item!r}: key {part!r} is not a table")
    node[parts[-1]] = value


def from_dict(cls: type[R], raw: dict, source: str = "<recipe>", prefix: str = "") -> R:
    """Build and validate a (nested) recipe dataclass from a plain dict."""
    if not isinstance(raw, dict):
        raise ForesightError(f"{source}: key {prefix.rstrip('.') or '(top)'!r}: expected a table, got {_kind(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ForesightError(f"{source}: unknown key {prefix + unknown[0]!r} (expected one of: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ForesightError(f"{source}: missing key {key!r}{_help(f)}")
            continue
        values[name] = _check(hints[name], raw[name], f, source, key)
    recipe = cls(**values)
    for name, expected in (recipe.checks() if hasattr(recipe, "checks") else ()):  # rules between fields
        raise ForesightError(f"{source}: key {prefix + name!r}: expected {expected}, got {getattr(recipe, name)!r}")
    return recipe


def to_dict(recipe: Any) -> dict:
    """The recipe as plain JSON-able data (what every output folder stores)."""
    return json.loads(json.dumps(dataclasses.asdict(recipe)))


def field_defaults(cls: type) -> dict:
    """The defaults of a recipe class's fields as they read in stored recipes (fields without one left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default) if dataclasses.is_dataclass(f.default) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _check(tp: Any, value: Any, f: dataclasses.Field, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict) and dataclasses.is_dataclass(f.default):  # a table's missing keys: the field's default
            value = {**to_dict(f.default), **value}
        return from_dict(tp, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, f, source, key)
            except ForesightError as e:
                errors.append(str(e))
        raise ForesightError(errors[0])
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _type_error(source, key, "a finite number", value, f)
        value = float(value)
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(source, key, "an integer", value, f)
    elif tp is bool:
        if not isinstance(value, bool):
            raise _type_error(source, key, "true or false", value, f)
    elif tp is str:
        if not isinstance(value, str):
            raise _type_error(source, key, "a string", value, f)
    elif origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _type_error(source, key, "a list", value, f)
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise _type_error(source, key, f"a list of {len(args)}", value, f)
        # an item keeps the field's bounds and choices (its help stays with the list)
        item = dataclasses.field(metadata={**(f.metadata or {}), "help": ""})
        return tuple(_check(args[0] if args[-1] is Ellipsis else args[i], v, item, source, f"{key}[{i}]")
                     for i, v in enumerate(value))
    elif tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _type_error(source, key, "a table", value, f)
        return dict(value)
    else:  # pragma: no cover - a recipe class with a type this loader does not know is a programming error
        raise TypeError(f"recipe field {key} has unsupported type {tp}")
    meta = f.metadata or {}
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ForesightError(f"{source}: key {key!r}: expected one of {list(meta['choices'])}, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ForesightError(f"{source}: key {key!r}: expected a value >= {meta['min']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ForesightError(f"{source}: key {key!r}: expected a value <= {meta['max']}, got {value!r}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise ForesightError(f"{source}: key {key!r}: expected a value > {meta['above']}, got {value!r}")
    if meta.get("below") is not None and value >= meta["below"]:
        raise ForesightError(f"{source}: key {key!r}: expected a value < {meta['below']}, got {value!r}")
    return value


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__) + f" ({value!r})"


def _help(f: dataclasses.Field) -> str:
    text = (f.metadata or {}).get("help")
    return f" ({text})" if text else ""


def _type_error(source: str, key: str, expected: str, value: Any, f: dataclasses.Field) -> ForesightError:
    return ForesightError(f"{source}: key {key!r}: expected {expected}{_help(f)}, got {_kind(value)}")
