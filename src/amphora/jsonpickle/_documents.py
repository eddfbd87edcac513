"""The documents of :mod:`amphora.jsonpickle`: a record's document made of its symbolic
state (BTrees buckets, sets and trees flattened), and written as JSON text, with cycles,
nesting too deep and sharing that would grow too large replaced by placeholders.

The state comes from :mod:`amphora.jsonpickle._machine`; the values left raw while
reading (bytes, :class:`~amphora.jsonpickle._values._Global`) are written here.
"""
from __future__ import annotations

import binascii
import json
import re
from typing import Any

from amphora.jsonpickle._values import _Global, _object_state

_b64 = binascii.b2a_base64


def _document(class_name: str, state: Any) -> Any:
    """The JSON-ready document of a record's state."""
    if class_name.startswith("BTrees."):
        flat = _btree(class_name, state)
        if flat is not None:
            return flat
    return _object_state(state)


def _tuple_items(value: Any) -> list | None:
    if type(value) is dict and "@tuple" in value:
        return value["@tuple"]
    return None


def _btree(class_name: str, state: Any) -> Any:
    """A BTrees bucket, set, tree or tree set state, flattened; None for another shape."""
    name = class_name.rpartition(".")[2]
    if name.endswith("Bucket"):
        return _bucket(state, "@items")
    if name.endswith("TreeSet"):
        return _tree(state, "@keys")
    if name.endswith("BTree"):
        return _tree(state, "@items")
    if name.endswith("Set"):
        return _bucket(state, "@keys")
    return None


def _bucket(state: Any, tag: str) -> Any:
    parts = _tuple_items(state)
    if parts is None or len(parts) not in (1, 2):
        return None
    flat = _tuple_items(parts[0])
    if flat is None:
        return None
    if tag == "@items":
        if len(flat) % 2:
            return None
        pairs = iter(flat)
        found = {tag: [[key, value] for key, value in zip(pairs, pairs)]}
    else:
        found = {tag: flat}
    if len(parts) == 2:
        found["next"] = parts[1]
    return found


def _tree(state: Any, tag: str) -> Any:
    if state is None:
        return {tag: []}
    parts = _tuple_items(state)
    if parts is None or len(parts) not in (1, 2):
        return None
    children = _tuple_items(parts[0])
    if children is None:
        return None
    if len(parts) == 1:
        if len(children) != 1:
            return None
        return _bucket(children[0], tag)  # a small tree keeps its one bucket inline
    return {"@children": children[0::2], "keys": children[1::2], "first": parts[1]}


def _default(value: Any) -> Any:
    """The JSON form of the values left raw while reading."""
    if type(value) is bytes:
        return {"@bytes": _b64(value, newline=False).decode("ascii")}
    if type(value) is _Global:
        return {"@global": value.name}
    raise TypeError(f"{type(value).__name__} is not JSON")


def _make_encoder() -> Any:
    # The C encoder without a circular-reference table: it keeps no state between calls
    # (so threads may share it), and a cycle ends in RecursionError, handled by _dumps.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is not None:
        encode = make(None, _default, json.encoder.encode_basestring, None, ":", ",",
                      False, False, False)
        return lambda value: "".join(encode(value, 0))
    encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, check_circular=False,
                               separators=(",", ":"), default=_default)
    return encoder.encode


_encode = _make_encoder()
_MAX_DEPTH = 200
_MAX_VALUES = 1000000


def _expanded_size(value: Any, sizes: dict[int, int], ancestors: set[int], depth: int) -> int:
    """How many JSON values ``value`` is written as (shared containers counted at each
    place; ``sizes`` remembers containers already counted)."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return 1
    key = id(value)
    found = sizes.get(key)
    if found is not None:
        return found
    if key in ancestors or depth >= _MAX_DEPTH:
        return 1  # a placeholder, see _tame
    ancestors.add(key)
    total = 1
    for item in (value.values() if kind is dict else value):
        total += _expanded_size(item, sizes, ancestors, depth + 1)
        if total > _MAX_VALUES:
            break
    ancestors.discard(key)
    sizes[key] = total
    return total


def _dumps(document: Any) -> str:
    """JSON text of a JSON-ready document; cycles and deep nesting become placeholders."""
    try:
        text = _encode(document)
    except (RecursionError, ValueError):
        return _encode(_tame(document, set(), 0))
    # The encoder stops at its own recursion limit, not at _MAX_DEPTH (and since Python
    # 3.13 that limit is far deeper than SQLite's JSON functions read): a document long
    # enough, with containers enough, to be too deep (two characters a level) is measured.
    if (len(text) > 2 * _MAX_DEPTH and text.count("[") + text.count("{") > _MAX_DEPTH
            and _too_deep(text)):
        return _encode(_tame(document, set(), 0))
    return text


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def _too_deep(text: str) -> bool:
    """True if JSON ``text`` nests containers more than ``_MAX_DEPTH`` deep: its brackets
    alone, emptied pair by innermost pair, a level per pass (in C, by the regex engine)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(_MAX_DEPTH):
        brackets = _INNERMOST.sub("", brackets)
        if not brackets:
            return False
    return True


def _tame(value: Any, ancestors: set[int], depth: int) -> Any:
    """A copy of ``value`` with each recurrence of a container inside itself, and what is
    nested too deep, replaced by placeholders."""
    kind = type(value)
    if kind is dict or kind is list:
        key = id(value)
        if key in ancestors:
            return {"@unknown": "cycle"}
        if depth >= _MAX_DEPTH:
            return {"@unknown": "too deep"}
        ancestors.add(key)
        depth += 1
        if kind is dict:
            copy: Any = {k: _tame(v, ancestors, depth) for k, v in value.items()}
        else:
            copy = [_tame(v, ancestors, depth) for v in value]
        ancestors.discard(key)
        return copy
    if kind is bytes or kind is _Global:
        return _default(value)
    return value
