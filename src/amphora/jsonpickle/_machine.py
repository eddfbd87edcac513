"""The stack machine of :mod:`amphora.jsonpickle`: a record's two pickles read opcode by
opcode into a symbolic state, without importing, looking up or calling anything.

Values are built in JSON-ready form by :mod:`amphora.jsonpickle._values`; the document is
made of the state by :mod:`amphora.jsonpickle._documents`.
"""
from __future__ import annotations

import codecs
import pickle
import struct
from typing import Any

from amphora.errors import CorruptRecordError
from amphora.jsonpickle._values import (
    _appends, _build, _checked_text, _class_name, _float, _Global, _global, _int, _new,
    _py2_string, _reduce, _reference, _setitems, _text)

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

    Values are built straight into JSON-ready form (see :mod:`amphora.jsonpickle`), except
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
