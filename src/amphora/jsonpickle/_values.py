"""The values of :mod:`amphora.jsonpickle`, in JSON-ready form: strings (with the ``@str``
form of what SQL JSON cannot store), numbers, dicts as they are filled (escaped keys, or
``@dict`` pairs), references in ZODB's forms, instances described by their class and
arguments, and the calls known to make plain data (datetime, Decimal, sets, bytes...).

Used by the stack machine (:mod:`amphora.jsonpickle._machine`) as it reads, and by
:mod:`amphora.jsonpickle._documents` and :mod:`amphora.jsonpickle._inverse`.
"""
from __future__ import annotations

import base64
import datetime
from typing import Any

from amphora.errors import CorruptRecordError


class _Global:
    """A class or function named by the pickle (never looked up)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<global {self.name}>"


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


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

