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

The modules
-----------

This one has the entry points and the choice between the C fast path
(``amphora._transcoder``, built from ``amphora/_transcoder.c``) and Python. The Python
transcoder: :mod:`~amphora.jsonpickle._machine` reads the pickles (the stack machine over
the opcodes), building values with :mod:`~amphora.jsonpickle._values` (strings, numbers,
containers, references, instances and the calls known to make plain data);
:mod:`~amphora.jsonpickle._documents` makes a record's document of its state (BTrees
flattened) and writes it as JSON text, taming cycles, depth and size;
:mod:`~amphora.jsonpickle._inverse` is :func:`json_to_value`.
"""
from __future__ import annotations

from typing import Any

from amphora.errors import CorruptRecordError
from amphora.jsonpickle._documents import _MAX_VALUES, _document, _dumps, _expanded_size
from amphora.jsonpickle._inverse import Markup, json_to_value
from amphora.jsonpickle._machine import _read
from amphora.jsonpickle._values import _checked_text
from amphora.serialize import class_name_of

__all__ = ["record_to_json", "records_to_json", "transcode", "json_to_value", "Markup",
           "COMPILED"]

try:  # the common records, in C (amphora/_transcoder.c); None for the rest
    from amphora._transcoder import transcode as _fast, transcode_many as _fast_many
except ImportError:  # built without a C compiler: all in Python, the same documents
    _fast = _fast_many = None

#: Whether the C fast path is built (it gives the same documents, about ten times faster).
COMPILED = _fast is not None


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
