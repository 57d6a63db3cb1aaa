"""Reading the JSON records nest_rt acts on: bundle.json and its sidecars, run.json, progress.json.

These files may be damaged or hand-edited. Each is read through ``read_json``, which turns every
failure (unreadable, not a regular file, not UTF-8, not JSON, nested deeper than any record
nest_rt writes) into the caller's one-line error, and its structure is then checked against a
declared ``shape`` by ``check_shape``, in one place per kind of record, so that the code after
the check can trust its keys and types.

A shape is: a type or tuple of types (an int is never a bool; a float may be an int); ``[shape]``
a list of such items; ``{key: shape}`` an object with those keys (others allowed); ``MapOf(shape)``
an object whose every value has the shape; ``Optional(shape)`` a key that may be missing or
null (``Optional(shape, null=False)``: missing, not null); ``OneOf(*values)`` one of the values given.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import NotARegularFile, open_regular

MAX_DEPTH = 64  # records nest_rt writes nest about 8 levels deep


def read_json(path: Path, what: str, error: type[Exception]) -> Any:
    """The parsed content of the JSON file ``path``, or ``error`` naming ``what`` and the file."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except NotARegularFile:
        raise error(f"{what}: {path} is not a regular file") from None
    except OSError as exc:
        raise error(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        try:
            content = json.loads(handle.read().decode("utf-8"))
        except RecursionError:
            raise error(f"{what}: {path} is nested too deeply to be a record nest-rt wrote") from None
        except OSError as exc:
            raise error(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
        except ValueError as exc:  # UnicodeDecodeError too
            raise error(f"{what}: {path} is not valid JSON ({exc})") from None
    if _depth(content) > MAX_DEPTH:
        raise error(f"{what}: {path} is nested deeper than {MAX_DEPTH} levels; not a record nest-rt wrote")
    return content


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (without recursion: any depth is measured)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                pending.extend((child, depth + 1) for child in children)
    return deepest


@dataclass(frozen=True)
class Optional:
    shape: Any
    null: bool = True  # False: the key may be missing, but if present it has the shape


@dataclass(frozen=True)
class MapOf:
    shape: Any


class OneOf:
    def __init__(self, *values: Any):
        self.values = values


def check_shape(value: Any, shape: Any, where: str, error: type[Exception], at: str = "") -> None:
    """Raise ``error`` ('WHERE: KEY must be ..., got ...') unless ``value`` has ``shape``."""
    def refuse(expected: str) -> None:
        shown = repr(value)
        raise error(f"{where}: {at or 'the record'} must be {expected}, got "
                    f"{shown if len(shown) <= 60 else shown[:57] + '...'}")
    if isinstance(shape, Optional):
        if value is not None or not shape.null:
            check_shape(value, shape.shape, where, error, at)
    elif isinstance(shape, OneOf):
        if not any(type(value) is type(choice) and value == choice for choice in shape.values):
            refuse(" or ".join(map(repr, shape.values)))
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict):
            refuse("an object")
        for key, item in value.items():
            check_shape(item, shape.shape, where, error, f"{at}.{key}" if at else key)
    elif isinstance(shape, dict):
        if not isinstance(value, dict):
            refuse("an object")
        for key, item_shape in shape.items():
            if key not in value:
                if isinstance(item_shape, Optional):
                    continue
                raise error(f"{where}: {f'{at}.{key}' if at else key} is missing")
            check_shape(value[key], item_shape, where, error, f"{at}.{key}" if at else key)
    elif isinstance(shape, list):
        if not isinstance(value, list):
            refuse("a list")
        for index, item in enumerate(value):
            check_shape(item, shape[0], where, error, f"{at}[{index}]")
    else:
        types = shape if isinstance(shape, tuple) else (shape,)
        if float in types:
            types = (*types, int)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            refuse(" or ".join(_NAMES.get(t, t.__name__) for t in types if not (t is int and float in types)))


_NAMES = {int: "an integer", str: "a string", float: "a number", bool: "true or false", dict: "an object",
          list: "a list"}
