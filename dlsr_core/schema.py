"""Rebuild a frozen dataclass from untrusted JSON, checked against the dataclass's own fields and type hints.

Checkpoint metadata and resume files are read with this, so a field added to a config dataclass (with a default) is
accepted without touching the reader, while an unknown key, a missing required field, a wrong type (a width given as
"512", a bool posing as an int, a NaN float) or a value outside a field's declared range is refused with a message
naming the field. A field may declare an inclusive range in its metadata, `field(metadata={"range": (1, 4096)})`;
for a tuple field the range applies to each item. `None` as either bound means unbounded.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import lru_cache
from typing import Any

MAX_STRING_LENGTH = 4096


class SchemaError(ValueError):
    """JSON that does not describe a valid instance of the dataclass; the message names the offending field."""


@lru_cache(maxsize=64)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_json(cls: type, value: Any, where: str | None = None) -> Any:
    """An instance of dataclass `cls` built from the JSON object `value`; raises SchemaError naming the field."""
    where = where or cls.__name__
    if not isinstance(value, dict):
        raise SchemaError(f"{where} must be a JSON object, got {_describe(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise SchemaError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(fields)}")
    hints = _hints(cls)
    arguments = {}
    for name, spec in fields.items():
        if name not in value:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{where} lacks the required key {name!r}")
            continue
        converted = _convert(value[name], hints[name], f"{where}.{name}")
        _check_range(converted, spec.metadata.get("range"), f"{where}.{name}")
        arguments[name] = converted
    return cls(**arguments)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_range(value: Any, bounds: tuple[float | None, float | None] | None, where: str) -> None:
    if bounds is None or value is None:
        return
    low, high = bounds
    for item in value if isinstance(value, tuple) else (value,):
        if (low is not None and item < low) or (high is not None and item > high):
            span = f"{'-inf' if low is None else low}..{'inf' if high is None else high}"
            raise SchemaError(f"{where} = {item!r} is outside its valid range {span}")


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        problems = []
        for option in (a for a in arguments if a is not type(None)):
            try:
                return _convert(value, option, where)
            except SchemaError as error:
                problems.append(str(error))
        raise SchemaError(problems[0] if len(problems) == 1 else f"{where}: {_describe(value)} fits none of {hint}")
    if origin is typing.Literal:
        if not any(type(value) is type(choice) and value == choice for choice in arguments):
            raise SchemaError(f"{where} must be one of {list(arguments)}, got {_describe(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where} must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"{where} must be an integer, got {_describe(value)}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise SchemaError(f"{where} must be a finite number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or len(value) > MAX_STRING_LENGTH:
            raise SchemaError(
                f"{where} must be a string of at most {MAX_STRING_LENGTH} characters, not {_describe(value)}"
            )
        return value
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{where} must be a JSON array, got {_describe(value)}")
        if not arguments:
            return tuple(value)
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_convert(item, arguments[0], f"{where}[{i}]") for i, item in enumerate(value))
        if len(value) != len(arguments):
            raise SchemaError(f"{where} must have {len(arguments)} items, got {len(value)}")
        return tuple(
            _convert(item, kind, f"{where}[{i}]") for i, (item, kind) in enumerate(zip(value, arguments, strict=True))
        )
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where} must be a JSON array, got {_describe(value)}")
        kind = arguments[0] if arguments else Any
        return [_convert(item, kind, f"{where}[{i}]") for i, item in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise SchemaError(f"{where} must be a JSON object, got {_describe(value)}")
        kind = arguments[1] if arguments else Any
        return {key: _convert(item, kind, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise SchemaError(f"{where}: cannot read a {hint} from {_describe(value)}")
