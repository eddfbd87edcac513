"""Records and transactions for exercising a storage directly, without a DB.

A record is ZODB's two pickles: the class, then the state. :func:`record` writes one for
a :class:`~conformance.models.Item` whose state holds a value and references to other
oids, so that pack's garbage collection can follow them.
"""
from __future__ import annotations

import io
from typing import Any, Iterable

import zodbpickle.pickle as zpickle

from amphora import TransactionMetaData
from amphora.utils import z64

from conformance.models import Item


class _Ref:
    def __init__(self, oid: bytes):
        self.oid = oid


def record(value: Any, refs: Iterable[bytes] = ()) -> bytes:
    """The record of an ``Item(value)`` that refers to the objects ``refs``."""
    file = io.BytesIO()
    pickler = zpickle.Pickler(file, 3)
    pickler.persistent_id = lambda obj: (obj.oid, Item) if isinstance(obj, _Ref) else None
    pickler.dump(Item)
    pickler.dump({"value": value, "refs": [_Ref(oid) for oid in refs]})
    return file.getvalue()


def commit(storage: Any, records: dict[bytes, tuple[bytes, bytes]], description: str = "",
           user: str = "", extension: dict | None = None) -> bytes:
    """Commit ``{oid: (serial_read, data)}`` in one transaction; the new tid."""
    meta = TransactionMetaData(user, description, extension)
    storage.tpc_begin(meta)
    try:
        for oid, (serial, data) in records.items():
            storage.store(oid, serial, data, "", meta)
        storage.tpc_vote(meta)
    except BaseException:
        storage.tpc_abort(meta)
        raise
    return storage.tpc_finish(meta)


def write(storage: Any, oid: bytes, data: bytes, serial: bytes = z64, **meta: Any) -> bytes:
    """Commit one record; the new tid."""
    return commit(storage, {oid: (serial, data)}, **meta)
