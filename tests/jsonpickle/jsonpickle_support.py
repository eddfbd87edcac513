"""Records to transcode, written the ways real databases write them."""
from __future__ import annotations

import io
import json
import pickle

import transaction
import ZODB
from persistent import Persistent
from ZODB.MappingStorage import MappingStorage

from amphora.jsonpickle import transcode
from amphora.serialize import ObjectWriter


class Thing(Persistent):
    """A persistent object; its attributes are the state under test."""


class Target(Persistent):
    """What references point at."""


class Slotted(Persistent):
    __slots__ = ("size", "__dict__")


class Jar:
    """Enough of a connection for amphora's ObjectWriter."""

    database_name = "main"

    def __init__(self):
        self.next = 100

    def db(self):
        return self

    def new_oid(self) -> bytes:
        self.next += 1
        return self.next.to_bytes(8, "big")


JAR = Jar()


def target(oid: int, klass: type = Target) -> Persistent:
    """A persistent object of ``klass`` that a state refers to by ``oid``."""
    obj = klass()
    obj._p_oid = oid.to_bytes(8, "big")
    obj._p_jar = JAR
    return obj


def amphora_record(obj: Persistent) -> bytes:
    """The record amphora's ObjectWriter writes for ``obj``."""
    writer = ObjectWriter(JAR, JAR.new_oid, lambda new: None)
    return writer.serialize(obj)


def thing(**attributes) -> Thing:
    obj = Thing()
    for name, value in attributes.items():
        setattr(obj, name, value)
    return obj


def document(data: bytes) -> tuple[str, object]:
    """``(class name, parsed document)`` of a record, checking the text is strict JSON."""
    class_name, text = transcode(data)
    parsed = json.loads(text, parse_constant=_reject)
    assert json.dumps(parsed, allow_nan=False)
    return class_name, parsed


def state_of(obj: Persistent) -> object:
    return document(amphora_record(obj))[1]


def _reject(token: str):
    raise AssertionError(f"invalid JSON token {token}")


def damaged(record: bytes, data) -> bytes:
    """``record`` with one to three bytes changed and maybe cut short (``data``: a
    hypothesis ``st.data()``)."""
    from hypothesis import strategies as st
    changed = bytearray(record)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(changed) - 1))
        changed[at] = data.draw(st.integers(0, 255))
    return bytes(changed[:data.draw(st.integers(1, len(changed)))])


def pickled(klass: type, state: object, protocol: int) -> bytes:
    """A record of ``klass`` and ``state`` pickled with ``protocol`` by one pickler, as
    ZODB writes records (one memo for both pickles)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol)
    pickler.dump(klass)
    pickler.dump(state)
    return out.getvalue()


def zodb_records(*objects: Persistent) -> list[bytes]:
    """The records ZODB 6 itself writes for ``objects`` (stored under the root)."""
    db = ZODB.DB(MappingStorage())
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        for i, obj in enumerate(objects):
            root[f"o{i}"] = obj
        tm.commit()
        records = [db.storage.load(obj._p_oid)[0] for obj in objects]
        conn.close()
        return records
    finally:
        db.close()
