"""Records as JSON documents, for SQL search: a pickle -> JSON transcoder.

Every object is also kept as a JSON document beside its record, so that SQL can find it
(``json_extract(state, '$.title')``). The record stays the truth; the document is derived
from it and is never read back into objects.

The transcoder reads the two pickles of a record (class metadata, then state) with its own
small stack machine over the opcodes. It never imports, looks up or calls a class: a
GLOBAL becomes a name, a REDUCE or NEWOBJ becomes a description of the call. So it works on
records whose classes are not installed, and nothing in a record can run code.

It is *total*: :func:`record_to_json` gives every record a document and never raises.
What it cannot represent becomes an ``{"@unknown": ...}`` placeholder; a record that is
not two pickles at all (truncated, garbage) gets a placeholder document from
:func:`record_to_json`, while :func:`transcode` raises :class:`CorruptRecordError` for it.

The mapping
-----------

The document of a record is its *state* (what ``__getstate__`` returned); the class name
(``module.Qualname``) is returned beside it. Arguments a class writes for ``__new__``
(``__getnewargs__``) are not part of the document.

JSON objects whose keys start with ``@`` are *markup*: a markup object has exactly one key
that starts with a single ``@`` (its tag), and may have plain fields beside it. A dict key
that starts with ``@`` is escaped by one more ``@`` (``"@id"`` is written ``"@@id"``), so
user data never reads as markup.

====================================  ===============================================
Python value                          JSON
====================================  ===============================================
``None``, ``bool``, ``str``           ``null``, ``true``/``false``, string
``int`` in the signed 64-bit range    number
other ``int``                         ``{"@int": "123456789012345678901234"}``
finite ``float``                      number
NaN, +inf, -inf                       ``{"@float": "nan"}``, ``"inf"``, ``"-inf"``
``str`` holding U+0000 or a lone      ``{"@str": "<base64 of its UTF-8, surrogates
surrogate (not storable in SQL JSON)  passed through>"}``
``bytes``                             ``{"@bytes": "<base64>"}``
``list``                              array
``tuple``                             ``{"@tuple": [...]}``
``set``, ``frozenset``                ``{"@set": [...]}``, ``{"@frozenset": [...]}``
                                      (in the order the pickle holds them)
``dict`` with ``str`` keys only       object (keys escaped as above; a key holding
                                      U+0000 or a lone surrogate counts as "other")
other ``dict``                        ``{"@dict": [[key, value], ...]}`` (keys are values
                                      here, so they are never escaped)
``datetime``                          ``{"@datetime": "2024-05-01T12:30:00"}``, with
                                      ``+HH:MM`` when its tzinfo is a fixed offset
                                      (``timezone``, ``pytz.utc``); any other tzinfo is
                                      kept in a ``"tz"`` field, and ``"fold": 1`` is kept
``date``, ``time``                    ``{"@date": "2024-05-01"}``, ``{"@time": "12:30:00"}``
                                      (``time`` like ``datetime``)
``timedelta``                         ``{"@timedelta": <total seconds>}`` (exact to the
                                      microsecond below about 60 years)
``Decimal``                           ``{"@decimal": "3.10"}``
a persistent object                   ``{"@ref": <oid as int>, "class": "mod.Name"}``
                                      (``"class"`` when the reference names it)
a weak reference (``['w', (oid,)]``)  ``{"@wref": <oid>}``
a cross-database reference            ``{"@xref": <oid>, "database": "name"}`` (+ "class")
a class or function used as a value   ``{"@global": "mod.Name"}``
any other object                      ``{"@class": "mod.Name"}``, plus ``"args"`` (the
                                      call's arguments, if any), ``"kwargs"``,
                                      ``"state"`` (its ``__setstate__`` argument) and
                                      ``"items"`` (list items or dict entries it was
                                      given), each when present
what cannot be represented            ``{"@unknown": "<opcode or reason>", ...}``
====================================  ===============================================

A state (of the record or of an object inside it) that is a 2-tuple of a dict (or
``None``) and a dict is the ``(__dict__, slots)`` form: its two dicts are merged into one
object. Records of BTrees classes (``BTrees.*`` buckets, sets, trees and tree sets) are
flattened: a bucket is ``{"@items": [[key, value], ...], "next": ref}`` ("next" when it
has a next bucket), a set bucket ``{"@keys": [...]}``, a tree whose items fit in its own
record the same as a bucket, and a larger tree ``{"@children": [ref, ...], "keys":
[separating keys], "first": ref}``. ``PersistentMapping`` and ``PersistentList`` are *not*
flattened: their state is ``{"data": ...}`` like any subclass's (which may add attributes
beside ``data``).

Python 2 ``str`` (``STRING`` opcodes) becomes a string when it is ASCII and bytes
otherwise, as ZODB reads it. Both pickles share one memo, as ZODB writes them. A structure
that contains itself becomes ``{"@unknown": "cycle"}`` where it recurs, and nesting deeper
than 200 levels ``{"@unknown": "too deep"}``. Structures shared (not cyclic) are written
at each place; a document that would so grow past a million JSON values (sharing nested in
sharing) is ``{"@unknown": "too large"}`` as a whole.

:func:`json_to_value` inverts the mapping for plain data; what names something outside
it (references, instances, placeholders) comes back as :class:`Markup`.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import datetime
import decimal
import json
import pickle
import re
import struct
from typing import Any

from amphora.errors import CorruptRecordError
from amphora.serialize import class_name_of

__all__ = ["record_to_json", "records_to_json", "transcode", "json_to_value", "Markup",
           "COMPILED"]

try:  # the common records, in C (amphora/_transcoder.c); None for the rest
    from amphora._transcoder import transcode as _fast, transcode_many as _fast_many
except ImportError:  # built without a C compiler: all in Python, the same documents
    _fast = _fast_many = None

#: Whether the C fast path is built (it gives the same documents, about ten times faster).
COMPILED = _fast is not None


class _Global:
    """A class or function named by the pickle (never looked up)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<global {self.name}>"


class Markup(dict):
    """A markup object :func:`json_to_value` cannot turn into plain data: a reference, an
    instance, a class name or a placeholder (its tag and fields, values decoded)."""


def transcode(data: bytes) -> tuple[str, str]:
    """``(class name, JSON text)`` of a record.

    Raises :class:`CorruptRecordError` when ``data`` is not two pickles (truncated,
    garbage, an opcode that does not exist). Never imports or calls a class.
    """
    if _fast is not None:
        found = _fast(data)
        if found is not None:
            return found
    return _transcode(data)


def record_to_json(data: bytes) -> tuple[str, str]:
    """``(class name, JSON text)`` of any record; never raises.

    A record :func:`transcode` rejects gets ``{"@unknown": "corrupt record", "error":
    "..."}`` and the class name its class pickle gives, or ``""``.
    """
    if _fast is not None:
        found = _fast(data)
        if found is not None:
            return found
    return _record_to_json(data)


def records_to_json(records: list[bytes]) -> list[tuple[str, str]]:
    """``[record_to_json(record) for record in records]``, faster."""
    if _fast_many is None:
        return [_record_to_json(record) for record in records]
    found = _fast_many(records)
    for i, document in enumerate(found):
        if document is None:
            found[i] = _record_to_json(bytes(records[i]))
    return found


def _transcode(data: bytes) -> tuple[str, str]:
    """:func:`transcode` in Python: every case."""
    reused: list[Any] = []
    try:
        class_name, state = _read(bytes(data), reused)
    except CorruptRecordError:
        raise
    except Exception as exc:
        raise CorruptRecordError(
            f"cannot transcode a record ({type(exc).__name__}: {exc})") from exc
    document = _document(class_name, state)
    if reused and _expanded_size(document, {}, set(), 0) > _MAX_VALUES:
        # Containers met again through the memo are written at each place: nested
        # sharing could make the text grow exponentially.
        document = {"@unknown": "too large"}
    return class_name, _dumps(document)


def _record_to_json(data: bytes) -> tuple[str, str]:
    """:func:`record_to_json` in Python."""
    try:
        return _transcode(data)
    except Exception as exc:
        try:
            class_name = class_name_of(data)
        except Exception:
            class_name = ""
        if _checked_text(class_name) is not class_name:
            class_name = ""
        message = str(exc)
        if _checked_text(message) is not message:
            message = ascii(message)
        return class_name, _dumps({"@unknown": "corrupt record", "error": message})


# ---------------------------------------------------------------------------------------
# The stack machine

_b64 = binascii.b2a_base64
_unpack_I = struct.Struct("<I").unpack_from
_unpack_i = struct.Struct("<i").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_unpack_d = struct.Struct(">d").unpack_from

(_MARK, _STOP, _POP, _POP_MARK, _DUP, _FLOAT, _INT, _BININT, _BININT1, _LONG, _BININT2,
 _NONE, _PERSID, _BINPERSID, _REDUCE, _STRING, _BINSTRING, _SHORT_BINSTRING, _UNICODE,
 _BINUNICODE, _APPEND, _BUILD, _GLOBAL, _DICT, _EMPTY_DICT, _APPENDS, _GET, _BINGET,
 _INST, _LONG_BINGET, _LIST, _EMPTY_LIST, _OBJ, _PUT, _BINPUT, _LONG_BINPUT, _SETITEM,
 _TUPLE, _EMPTY_TUPLE, _SETITEMS, _BINFLOAT, _PROTO, _NEWOBJ, _EXT1, _EXT2, _EXT4,
 _TUPLE1, _TUPLE2, _TUPLE3, _NEWTRUE, _NEWFALSE, _LONG1, _LONG4, _BINBYTES,
 _SHORT_BINBYTES, _SHORT_BINUNICODE, _BINUNICODE8, _BINBYTES8, _EMPTY_SET, _ADDITEMS,
 _FROZENSET, _NEWOBJ_EX, _STACK_GLOBAL, _MEMOIZE, _FRAME, _BYTEARRAY8, _NEXT_BUFFER,
 _READONLY_BUFFER) = (getattr(pickle, name)[0] for name in (
    "MARK", "STOP", "POP", "POP_MARK", "DUP", "FLOAT", "INT", "BININT", "BININT1", "LONG",
    "BININT2", "NONE", "PERSID", "BINPERSID", "REDUCE", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "APPEND", "BUILD", "GLOBAL", "DICT",
    "EMPTY_DICT", "APPENDS", "GET", "BINGET", "INST", "LONG_BINGET", "LIST", "EMPTY_LIST",
    "OBJ", "PUT", "BINPUT", "LONG_BINPUT", "SETITEM", "TUPLE", "EMPTY_TUPLE", "SETITEMS",
    "BINFLOAT", "PROTO", "NEWOBJ", "EXT1", "EXT2", "EXT4", "TUPLE1", "TUPLE2", "TUPLE3",
    "NEWTRUE", "NEWFALSE", "LONG1", "LONG4", "BINBYTES", "SHORT_BINBYTES",
    "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES8", "EMPTY_SET", "ADDITEMS", "FROZENSET",
    "NEWOBJ_EX", "STACK_GLOBAL", "MEMOIZE", "FRAME", "BYTEARRAY8", "NEXT_BUFFER",
    "READONLY_BUFFER"))

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _read(data: bytes, reused: list[Any]) -> tuple[str, Any]:
    """The class name and the symbolic state of a record; containers fetched from the
    memo are appended to ``reused``."""
    memo: dict[int, Any] = {}
    pos = _known_class_pickle(data, memo)
    if pos:
        class_name = memo[0].name
    else:
        meta, pos = _run(data, 0, memo, reused)
        class_name = _class_name(meta)
        if class_name is None:
            raise CorruptRecordError(f"unrecognized class metadata in a record: {meta!r}")
    state, _end = _run(data, pos, memo, reused)
    return class_name, state


def _known_class_pickle(data: bytes, memo: dict[int, Any]) -> int:
    """Where the state pickle starts, when the class pickle has the usual form (its global
    put in ``memo``); else 0."""
    if data[:1] != b"\x80" or data[2:3] != b"c":
        return 0
    first = data.find(b"\n", 3)
    end = data.find(b"\n", first + 1) + 1
    if first < 0 or end <= 0 or data[end:end + 3] != b"q\x00.":
        return 0
    memo[0] = _globals.get(data[3:end]) or _named_global(data[3:end])
    return end + 3


# The argument of GLOBAL opcodes (b"module\nname\n") -> its _Global, for the names seen
# most: record classes, datetime, Decimal... Bounded: cleared when full.
_globals: dict[bytes, _Global] = {}
_GLOBALS_MAX = 10000


def _named_global(line: bytes) -> _Global:
    if 0 in line:
        raise CorruptRecordError("a GLOBAL names a class with U+0000 in its name")
    module, name, _ = line.split(b"\n")
    found = _global(module.decode("utf-8"), name.decode("utf-8"))
    if len(_globals) >= _GLOBALS_MAX:
        _globals.clear()
    _globals[line] = found
    return found


def _run(data: bytes, pos: int, memo: dict[int, Any], reused: list[Any]) -> tuple[Any, int]:
    """Interpret one pickle of ``data`` from ``pos``: its value and where it ended.

    Values are built straight into JSON-ready form (see the module docstring), except
    bytes and globals, which stay ``bytes`` and :class:`_Global` until :func:`_dumps`
    (references need the raw oid, REDUCE needs the name).

    Speed: the common opcodes are tested first, as numbers (the opcode's name beside
    each); the others are :func:`_rare_opcode`'s. An opcode that makes a value falls
    through to the end of the loop, which also does the ``BINPUT`` that follows nearly
    every value in a pickle.
    """
    stack: list[Any] = []
    marks: list[int] = []
    push = stack.append
    if data[pos] == 128:  # PROTO
        pos += 2
    while True:
        op = data[pos]
        pos += 1
        if op == 88:  # BINUNICODE
            end = pos + 4 + _unpack_I(data, pos)[0]
            raw = data[pos + 4:end]
            pos = end  # past the end if the record is cut short: data[pos] raises below
            if 0 in raw:  # U+0000 (an int test: much faster than b"\x00" in raw)
                value = _text(raw)
            else:
                try:
                    value = raw.decode()
                except UnicodeDecodeError:
                    value = _text(raw)
        elif op == 113:  # BINPUT
            memo[data[pos]] = stack[-1]
            pos += 1
            continue
        elif op < 100:
            if op == 75:  # BININT1
                push(data[pos])
                pos += 1
                continue
            elif op == 67:  # SHORT_BINBYTES
                end = pos + 1 + data[pos]
                value = data[pos + 1:end]
                pos = end
                if (len(value) == 8 and data[end] == 113 and data[end + 2] == 104
                        and data[end + 4] == 134 and data[end + 5] == 113
                        and data[end + 7] == 81):
                    # A reference as ZODB writes most of them, done in one step: the oid,
                    # BINPUT, BINGET of its class, TUPLE2, BINPUT, BINPERSID.
                    klass = memo[data[end + 3]]
                    pid = {"@tuple": [value, klass]}
                    memo[data[end + 1]] = value
                    memo[data[end + 6]] = pid
                    pos = end + 8
                    if type(klass) is _Global:
                        value = {"@ref": int.from_bytes(value, "big"), "class": klass.name}
                    else:
                        value = _reference(pid)
            elif op == 81:  # BINPERSID
                pid = stack.pop()
                parts = pid.get("@tuple") if type(pid) is dict else None
                if (parts is not None and len(parts) == 2 and type(parts[0]) is bytes
                        and len(parts[0]) == 8 and type(parts[1]) is _Global):
                    # ZODB's usual (oid, class) reference, without a call
                    value = {"@ref": int.from_bytes(parts[0], "big"), "class": parts[1].name}
                else:
                    value = _reference(pid)
            elif op == 40:  # MARK
                marks.append(len(stack))
                continue
            elif op == 93:  # EMPTY_LIST
                value = []
            elif op == 78:  # NONE
                push(None)
                continue
            elif op == 74:  # BININT
                push(_unpack_i(data, pos)[0])
                pos += 4
                continue
            elif op == 71:  # BINFLOAT
                value = _unpack_d(data, pos)[0]
                pos += 8
                push(_float(value) if value - value else value)
                continue
            elif op == 46:  # STOP
                if len(stack) != 1 or marks:
                    raise CorruptRecordError(
                        f"a pickle ends with {len(stack)} values on its stack")
                return stack[0], pos
            elif op == 77:  # BININT2
                push(_unpack_H(data, pos)[0])
                pos += 2
                continue
            elif op == 82:  # REDUCE
                args = stack.pop()
                value = _reduce(stack.pop(), args)
            elif op == 99:  # GLOBAL
                end = data.index(b"\n", data.index(b"\n", pos) + 1) + 1
                value = _globals.get(data[pos:end]) or _named_global(data[pos:end])
                pos = end
            elif op == 97:  # APPEND
                value = stack.pop()
                _appends(stack[-1], [value])
                continue
            elif op == 98:  # BUILD
                state = stack.pop()
                value = _build(stack.pop(), state)
            elif op == 41:  # EMPTY_TUPLE
                value = {"@tuple": []}
            else:
                pos = _rare_opcode(op, data, pos, stack, marks, memo, reused)
                continue
        elif op == 104:  # BINGET
            value = memo[data[pos]]
            pos += 1
            if type(value) is dict or type(value) is list:
                reused.append(value)
            push(value)
            continue
        elif op == 134:  # TUPLE2
            second = stack.pop()
            value = {"@tuple": [stack.pop(), second]}
        elif op == 117:  # SETITEMS
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            _setitems(stack[-1], items)
            continue
        elif op == 125:  # EMPTY_DICT
            value = {}
        elif op == 101:  # APPENDS
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            _appends(stack[-1], items)
            continue
        elif op == 136 or op == 137:  # NEWTRUE, NEWFALSE
            push(op == 136)
            continue
        elif op == 140:  # SHORT_BINUNICODE
            end = pos + 1 + data[pos]
            raw = data[pos + 1:end]
            pos = end
            value = _text(raw)
        elif op == 115:  # SETITEM
            value = stack.pop()
            key = stack.pop()
            _setitems(stack[-1], [key, value])
            continue
        elif op == 133:  # TUPLE1
            value = {"@tuple": [stack.pop()]}
        elif op == 135:  # TUPLE3
            third = stack.pop()
            second = stack.pop()
            value = {"@tuple": [stack.pop(), second, third]}
        elif op == 116:  # TUPLE
            start = marks.pop()
            value = {"@tuple": stack[start:]}
            del stack[start:]
        else:
            pos = _rare_opcode(op, data, pos, stack, marks, memo, reused)
            continue
        if data[pos] == 113:  # BINPUT
            memo[data[pos + 1]] = value
            pos += 2
        push(value)


def _rare_opcode(op: int, data: bytes, pos: int, stack: list, marks: list, memo: dict,
                 reused: list) -> int:
    """Do what opcode ``op`` (all but the common ones) does; return the new position."""
    push = stack.append
    if op == _PROTO:
        return pos + 1
    if op == _FRAME:
        return pos + 8
    if op == _MEMOIZE:
        memo[len(memo)] = stack[-1]
    elif op == _LONG_BINPUT:
        memo[_unpack_I(data, pos)[0]] = stack[-1]
        return pos + 4
    elif op == _LONG_BINGET:
        push(memo[_unpack_I(data, pos)[0]])
        reused.append(stack[-1])
        return pos + 4
    elif op in _SIZED_OPCODES:
        width, make = _SIZED_OPCODES[op]
        if width == 1:
            size = data[pos]
        elif width == 4:
            size = _unpack_i(data, pos)[0]
        else:
            size = _unpack_Q(data, pos)[0]
        pos += width
        raw = data[pos:pos + size]
        if size < 0 or len(raw) != size:
            raise CorruptRecordError(f"a record ends inside the argument of opcode {op:#04x}")
        push(make(raw))
        return pos + size
    elif op == _STACK_GLOBAL:
        name = stack.pop()
        module = stack.pop()
        if type(module) is str and type(name) is str:
            push(_global(module, name))
        else:
            push({"@unknown": "STACK_GLOBAL", "module": module, "name": name})
    elif op == _NEWOBJ:
        args = stack.pop()
        stack[-1] = _new(stack[-1], args, None)
    elif op == _NEWOBJ_EX:
        kwargs = stack.pop()
        args = stack.pop()
        stack[-1] = _new(stack[-1], args, kwargs)
    elif op in _MARKED_OPCODES:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        if op == _LIST:
            push(items)
        elif op == _DICT:
            target: dict[Any, Any] = {}
            _setitems(target, items)
            push(target)
        elif op == _FROZENSET:
            push({"@frozenset": items})
        elif op == _ADDITEMS:
            target = stack[-1]
            if type(target) is dict and "@set" in target:
                target["@set"].extend(items)
            else:
                stack[-1] = {"@unknown": "ADDITEMS", "object": target, "items": items}
        elif op == _POP_MARK:
            pass
        else:  # OBJ: the class is the first of the items
            if not items:
                raise CorruptRecordError("OBJ without a class")
            push(_new(items[0], {"@tuple": items[1:]}, None))
    elif op == _EMPTY_SET:
        push({"@set": []})
    elif op == _POP:
        if marks and marks[-1] == len(stack):
            marks.pop()  # POP of a MARK (protocol 0/1 pickles do this)
        else:
            stack.pop()
    elif op == _DUP:
        push(stack[-1])
    elif op == _INST:
        end = data.index(b"\n", data.index(b"\n", pos) + 1) + 1
        klass = _globals.get(data[pos:end]) or _named_global(data[pos:end])
        start = marks.pop()
        args = stack[start:]
        del stack[start:]
        push(_new(klass, {"@tuple": args}, None))
        return end
    elif op in _LINE_OPCODES:
        end = data.index(b"\n", pos)
        _line_opcode(op, data[pos:end], stack, memo)
        if op == _GET:
            reused.append(stack[-1])
        return end + 1
    elif op == _EXT1 or op == _EXT2 or op == _EXT4:
        # The extension registry is state of the reading process, not of the record.
        size = 1 if op == _EXT1 else 2 if op == _EXT2 else 4
        push({"@unknown": "EXT", "code": int.from_bytes(data[pos:pos + size], "little")})
        return pos + size
    elif op == _NEXT_BUFFER:
        push({"@unknown": "NEXT_BUFFER"})  # out-of-band data is not in a record
    elif op == _READONLY_BUFFER:
        pass
    else:
        raise CorruptRecordError(f"unknown pickle opcode {op:#04x} at position {pos - 1}")
    return pos


def _line_opcode(op: int, line: bytes, stack: list, memo: dict) -> None:
    """The protocol 0 opcodes, whose argument is a line of text."""
    if op == _INT:
        stack.append(True if line == b"01" else False if line == b"00" else _int(int(line)))
    elif op == _LONG:
        stack.append(_int(int(line[:-1] if line.endswith(b"L") else line)))
    elif op == _FLOAT:
        value = float(line)
        stack.append(_float(value) if value - value else value)
    elif op == _STRING:
        quote = line[:1]
        if len(line) < 2 or quote not in (b"'", b'"') or line[-1:] != quote:
            raise CorruptRecordError("a STRING opcode without quotes")
        stack.append(_py2_string(codecs.escape_decode(line[1:-1])[0]))
    elif op == _UNICODE:
        stack.append(_checked_text(str(line, "raw-unicode-escape")))
    elif op == _PUT:
        memo[int(line)] = stack[-1]
    elif op == _GET:
        stack.append(memo[int(line)])
    else:  # PERSID: ZODB never writes text persistent ids
        stack.append({"@unknown": "PERSID", "id": _checked_text(line.decode("latin-1"))})


def _bytearray(raw: bytes) -> Any:
    return {"@class": "builtins.bytearray", "args": [raw]}


# opcode -> (width of its size, what makes the value of the bytes that follow)
_SIZED_OPCODES = {
    _BINBYTES: (4, bytes), _BINBYTES8: (8, bytes), _BYTEARRAY8: (8, _bytearray),
    _BINUNICODE8: (8, lambda raw: _text(raw)),
    _SHORT_BINSTRING: (1, lambda raw: _py2_string(raw)),
    _BINSTRING: (4, lambda raw: _py2_string(raw)),
    _LONG1: (1, lambda raw: _int(int.from_bytes(raw, "little", signed=True))),
    _LONG4: (4, lambda raw: _int(int.from_bytes(raw, "little", signed=True))),
}
_MARKED_OPCODES = frozenset((_LIST, _DICT, _FROZENSET, _ADDITEMS, _POP_MARK, _OBJ))
_LINE_OPCODES = frozenset((_INT, _LONG, _FLOAT, _STRING, _UNICODE, _PUT, _GET, _PERSID))


# ---------------------------------------------------------------------------------------
# Values

def _text(raw: bytes) -> Any:
    """A string from UTF-8 (lone surrogates allowed, as pickle writes them)."""
    return _checked_text(raw.decode("utf-8", "surrogatepass"))


def _checked_text(text: str) -> Any:
    """``text``, or its ``@str`` form when it holds what SQL JSON cannot store (U+0000,
    lone surrogates)."""
    if "\x00" in text:
        return _Text(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _Text(text)
    return text


class _Text(dict):
    """The ``@str`` form of a string; ``text`` keeps the string for the readers of ids,
    oids and Python 2 bytes."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        super().__init__({"@str": base64.b64encode(text.encode("utf-8", "surrogatepass"))
                          .decode("ascii")})
        self.text = text


def _string(value: Any) -> str | None:
    """The string ``value`` stands for, or None."""
    if type(value) is str:
        return value
    if type(value) is _Text:
        return value.text
    return None


def _py2_string(raw: bytes) -> Any:
    """A Python 2 ``str``: text when it is ASCII, else bytes (as ZODB reads it)."""
    if raw.isascii():
        return _checked_text(raw.decode("ascii"))
    return raw


def _float(value: float) -> Any:
    """The form of a non-finite float."""
    if value != value:
        return {"@float": "nan"}
    return {"@float": "inf" if value > 0 else "-inf"}


def _int(value: int) -> Any:
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    return {"@int": str(value)}


# Names pickle writes for Python 2 compatibility, read as today's names.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _global(module: str, name: str) -> _Global:
    return _Global(f"{_PY2_MODULES.get(module, module)}.{name}")


def _class_name(meta: Any) -> str | None:
    """The class name in a record's class metadata (see ``amphora.serialize``)."""
    if type(meta) is _Global:
        return meta.name
    if type(meta) is dict and "@tuple" in meta and len(meta["@tuple"]) == 2:
        klass = meta["@tuple"][0]
        if type(klass) is _Global:
            return klass.name
        if type(klass) is dict and "@tuple" in klass:
            parts = klass["@tuple"]
            if len(parts) == 2 and type(parts[0]) is str and type(parts[1]) is str:
                return f"{parts[0]}.{parts[1]}"
    return None


def _setitems(target: Any, items: list) -> None:
    """Add ``key, value, key, value ...`` to a dict under construction.

    A dict is a JSON object while its keys are strings (escaped when they start with
    ``@``); the first other key turns it, in place (so every holder of it sees this),
    into ``{"@dict": [[key, value], ...]}``.
    """
    if type(target) is dict and "@class" not in target and "@dict" not in target:
        pairs = iter(items)
        for key in pairs:
            if type(key) is str and key[:1] != "@":
                target[key] = next(pairs)
            else:
                rest = [key]
                rest.extend(pairs)
                _add_items(target, rest)
                return
        return
    _add_items(target, items)


def _add_items(target: Any, items: list) -> None:
    if type(target) is not dict:
        raise CorruptRecordError(f"SETITEMS on {type(target).__name__}")
    if "@class" in target:
        sub = target.get("items")
        if sub is None:
            sub = target["items"] = {}
        target = sub
    pairs = target.get("@dict")
    for i in range(0, len(items), 2):
        key = items[i]
        if pairs is None:
            if type(key) is str:
                if key[:1] == "@":
                    key = "@" + key
                target[key] = items[i + 1]
                continue
            pairs = [[_unescape(k), v] for k, v in target.items()]
            target.clear()
            target["@dict"] = pairs
        pairs.append([key, items[i + 1]])


def _unescape(key: str) -> str:
    return key[1:] if key[:1] == "@" else key


def _appends(target: Any, items: list) -> None:
    if type(target) is list:
        target.extend(items)
    elif type(target) is dict and "@class" in target:
        target.setdefault("items", []).extend(items)
    else:
        raise CorruptRecordError(f"APPENDS on {type(target).__name__}")


def _is_markup(value: Any) -> bool:
    """True for a JSON-ready dict that is markup (its tag always comes first)."""
    for key in value:
        return key[:1] == "@" and key[:2] != "@@"
    return False


def _object_state(state: Any) -> Any:
    """A ``(dict or None, slots)`` state as one object; any other state as it is."""
    if type(state) is dict and "@tuple" in state:
        parts = state["@tuple"]
        if len(parts) == 2:
            first, slots = parts
            if (type(slots) is dict and not _is_markup(slots)
                    and (first is None or type(first) is dict and not _is_markup(first))):
                merged = dict(first) if first else {}
                merged.update(slots)
                return merged
    return state


def _reference(pid: Any) -> Any:
    """A persistent id, in any of ZODB's forms, as a reference."""
    kind = type(pid)
    if kind is dict and "@tuple" in pid:
        parts = pid["@tuple"]
        if len(parts) == 2:
            oid = _oid(parts[0])
            if oid is not None:
                found = {"@ref": oid}
                klass = parts[1]
                if klass is not None:
                    found["class"] = _class_name({"@tuple": [klass, None]}) or klass
                return found
    elif kind is bytes or kind is str:
        oid = _oid(pid)
        if oid is not None:
            return {"@ref": oid}
    elif kind is list and pid:
        if len(pid) == 1:
            oid = _oid(pid[0])
            if oid is not None:
                return {"@wref": oid}
        elif len(pid) == 2 and type(pid[1]) is dict and "@tuple" in pid[1]:
            args = pid[1]["@tuple"]
            if pid[0] == "w" and args:
                oid = _oid(args[0])
                if oid is not None:
                    return {"@wref": oid}
            elif pid[0] in ("m", "n") and len(args) >= 2:
                oid = _oid(args[1])
                if oid is not None:
                    found = {"@xref": oid, "database": args[0]}
                    if len(args) > 2:
                        found["class"] = _class_name({"@tuple": [args[2], None]}) or args[2]
                    return found
    return {"@unknown": "persistent id", "id": pid}


def _oid(value: Any) -> int | None:
    text = _string(value)
    if text is not None:
        try:
            value = text.encode("latin-1")
        except UnicodeEncodeError:
            return None
    if type(value) is bytes and len(value) == 8:
        return int.from_bytes(value, "big")
    return None


def _reduce(func: Any, args: Any) -> Any:
    """What ``func(*args)`` stands for."""
    if type(func) is _Global and type(args) is dict and "@tuple" in args:
        values = args["@tuple"]
        special = _SPECIAL.get(func.name)
        if special is not None:
            try:
                found = special(values)
            except (ValueError, TypeError, KeyError, IndexError, OverflowError):
                found = None
            if found is not None:
                return found
        instance = {"@class": func.name}
        if values:
            instance["args"] = values
        return instance
    return {"@unknown": "REDUCE", "callable": func, "args": args}


def _new(klass: Any, args: Any, kwargs: Any) -> Any:
    """What ``klass.__new__(klass, *args, **kwargs)`` stands for (NEWOBJ, INST, OBJ)."""
    if type(klass) is not _Global or type(args) is not dict or "@tuple" not in args:
        return {"@unknown": "NEWOBJ", "class": klass, "args": args, "kwargs": kwargs}
    instance = {"@class": klass.name}
    if args["@tuple"]:
        instance["args"] = args["@tuple"]
    if kwargs:
        instance["kwargs"] = kwargs
    return instance


def _build(obj: Any, state: Any) -> Any:
    if type(obj) is dict and "@class" in obj:
        obj["state"] = _object_state(state)
        return obj
    return {"@unknown": "BUILD", "object": obj, "state": state}


# Calls known to make plain data: name -> function of the argument list, giving the
# JSON form (or None when the arguments are not what that type pickles).

def _bytes_arg(value: Any) -> bytes:
    text = _string(value)
    if text is not None:
        return text.encode("latin-1")  # a Python 2 str
    if type(value) is not bytes:
        raise TypeError("not bytes")
    return value


def _tzinfo(args: list, index: int) -> tuple[Any, Any]:
    """``(fixed tzinfo or None, other tzinfo or None)`` from a datetime's arguments."""
    if len(args) <= index or args[index] is None:
        return None, None
    tz = args[index]
    if type(tz) is dict:
        if tz.get("@class") == "datetime.timezone":
            offset = tz.get("args", [None])[0]
            if type(offset) is dict and "@timedelta" in offset:
                return datetime.timezone(datetime.timedelta(seconds=offset["@timedelta"])), None
        if tz.get("@class") in _UTC_NAMES:
            return datetime.timezone.utc, None
    return None, tz


_UTC_NAMES = frozenset(("pytz._UTC", "pytz.utc", "pytz.UTC"))


def _datetime(args: list) -> Any:
    raw = _bytes_arg(args[0])
    if len(raw) != 10:
        return None
    fixed, other = _tzinfo(args, 1)
    fold = raw[2] >> 7
    value = datetime.datetime((raw[0] << 8) | raw[1], raw[2] & 0x7F, raw[3], raw[4], raw[5],
                              raw[6], int.from_bytes(raw[7:10], "big"), fixed)
    return _with_tz({"@datetime": value.isoformat()}, other, fold)


def _date(args: list) -> Any:
    raw = _bytes_arg(args[0])
    if len(raw) != 4:
        return None
    return {"@date": datetime.date((raw[0] << 8) | raw[1], raw[2], raw[3]).isoformat()}


def _time(args: list) -> Any:
    raw = _bytes_arg(args[0])
    if len(raw) != 6:
        return None
    fixed, other = _tzinfo(args, 1)
    fold = raw[0] >> 7
    value = datetime.time(raw[0] & 0x7F, raw[1], raw[2], int.from_bytes(raw[3:6], "big"),
                          fixed)
    return _with_tz({"@time": value.isoformat()}, other, fold)


def _with_tz(found: dict, other: Any, fold: int) -> dict:
    if other is not None:
        found["tz"] = other
    if fold:
        found["fold"] = 1
    return found


def _timedelta(args: list) -> Any:
    days, seconds, micros = (list(args) + [0, 0, 0])[:3]
    if not all(type(part) is int for part in (days, seconds, micros)):
        return None
    whole = days * 86400 + seconds
    return {"@timedelta": (whole * 1000000 + micros) / 1e6 if micros else whole}


def _decimal(args: list) -> Any:
    if len(args) == 1 and type(args[0]) is str:
        return {"@decimal": args[0]}
    return None


def _collection(tag: str) -> Any:
    def convert(args: list) -> Any:
        if not args:
            return {tag: []}
        if len(args) == 1 and type(args[0]) is list:
            return {tag: args[0]}
        return None
    return convert


def _codecs_encode(args: list) -> Any:
    # Protocols 0-2 write bytes as _codecs.encode(text, "latin1").
    if len(args) == 2 and _string(args[0]) is not None and args[1] == "latin1":
        return _string(args[0]).encode("latin-1")
    return None


def _empty_bytes(args: list) -> Any:
    return b"" if not args else None


def _getattr(args: list) -> Any:
    # Protocols below 4 name nested classes and methods as getattr(parent, name).
    if len(args) == 2 and type(args[0]) is _Global and type(args[1]) is str:
        return _Global(f"{args[0].name}.{args[1]}")
    return None


def _reconstructor(args: list) -> Any:
    # copyreg._reconstructor(cls, base, base_state): protocols 0 and 1 objects.
    if len(args) == 3 and type(args[0]) is _Global:
        instance = {"@class": args[0].name}
        if args[2] is not None:
            instance["args"] = [args[2]]
        return instance
    return None


def _newobj(args: list) -> Any:
    # copyreg.__newobj__(cls, *args)
    if args and type(args[0]) is _Global:
        return _new(args[0], {"@tuple": args[1:]}, None)
    return None


_SPECIAL = {
    "datetime.datetime": _datetime,
    "datetime.date": _date,
    "datetime.time": _time,
    "datetime.timedelta": _timedelta,
    "decimal.Decimal": _decimal,
    "builtins.set": _collection("@set"),
    "builtins.frozenset": _collection("@frozenset"),
    "builtins.bytes": _empty_bytes,
    "_codecs.encode": _codecs_encode,
    "builtins.getattr": _getattr,
    "copyreg._reconstructor": _reconstructor,
    "copyreg.__newobj__": _newobj,
}


# ---------------------------------------------------------------------------------------
# Documents

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
    # 3.13 that limit is far deeper than SQLite's JSON functions read): a document with
    # enough containers to be too deep is measured.
    if text.count("[") + text.count("{") > _MAX_DEPTH and _too_deep(text):
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


# ---------------------------------------------------------------------------------------
# The inverse, for plain data

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
