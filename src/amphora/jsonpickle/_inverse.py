"""The inverse of :mod:`amphora.jsonpickle`'s mapping, for plain data:
:func:`json_to_value`, and :class:`Markup` for what it cannot turn into plain data.
"""
from __future__ import annotations

import base64
import datetime
import decimal
from typing import Any

from amphora.jsonpickle._values import _unescape

__all__ = ["Markup", "json_to_value"]


class Markup(dict):
    """A markup object :func:`json_to_value` cannot turn into plain data: a reference, an
    instance, a class name or a placeholder (its tag and fields, values decoded)."""

    __module__ = "amphora.jsonpickle"  # where users find it


def json_to_value(document: Any) -> Any:
    """The Python value a parsed JSON document stands for (``json.loads`` output).

    Inverts the mapping for plain data: strings, numbers, lists, dicts (keys unescaped),
    tuples, sets, bytes, special floats and big ints, dates and times, ``Decimal``.
    Markup that names something else (``@ref``, ``@class``, ``@unknown`` ...) comes back
    as a :class:`Markup` with its values decoded.
    """
    kind = type(document)
    if kind is list:
        return [json_to_value(item) for item in document]
    if kind is not dict:
        return document
    tags = [key for key in document if key[:1] == "@" and key[:2] != "@@"]
    if not tags:
        return {_unescape(key): json_to_value(value) for key, value in document.items()}
    tag = tags[0]
    value = document[tag]
    decode = _DECODERS.get(tag)
    if decode is not None and len(document) == 1:
        return decode(value)
    return Markup({key: json_to_value(item) for key, item in document.items()})


def _decode_dict(pairs: list) -> dict:
    return {_hashable(json_to_value(key)): json_to_value(value) for key, value in pairs}


def _hashable(value: Any) -> Any:
    return tuple(_hashable(item) for item in value) if type(value) is list else value


_DECODERS = {
    "@tuple": lambda value: tuple(json_to_value(value)),
    "@set": lambda value: set(map(_hashable, json_to_value(value))),
    "@frozenset": lambda value: frozenset(map(_hashable, json_to_value(value))),
    "@dict": _decode_dict,
    "@bytes": lambda value: base64.b64decode(value),
    "@str": lambda value: base64.b64decode(value).decode("utf-8", "surrogatepass"),
    "@float": float,
    "@int": int,
    "@decimal": decimal.Decimal,
    "@datetime": datetime.datetime.fromisoformat,
    "@date": datetime.date.fromisoformat,
    "@time": datetime.time.fromisoformat,
    "@timedelta": lambda value: datetime.timedelta(seconds=value),
}
