"""Helpers of the storage tests: records built by hand (two pickles, references as
``(oid, None)``, so the tests need no database object and no application class), a
commit through the storage API, and a stand-in for the database that records what the
storage reports."""
from __future__ import annotations

import io
import pickle

from amphora.storage.base import TransactionMetaData
from amphora.utils import z64


class Ref:
    """A persistent reference to ``oid`` inside a hand-made record."""

    def __init__(self, oid: bytes):
        self.oid = oid


def make_record(module: str, value=None, *refs: bytes) -> bytes:
    """A record in ZODB's format: class metadata (``module.Thing``), then a state referring
    to ``refs``."""
    file = io.BytesIO()
    pickler = pickle.Pickler(file, 3)
    pickler.persistent_id = lambda obj: (obj.oid, None) if isinstance(obj, Ref) else None
    pickler.dump((module, "Thing"))
    pickler.dump({"value": value, "refs": [Ref(oid) for oid in refs]})
    return file.getvalue()


def commit(storage, records: dict[bytes, bytes], serials: dict[bytes, bytes] | None = None,
           description: str = "") -> bytes:
    """Commit ``{oid: data}``; ``serials`` gives the tid each oid was read at (new if absent)."""
    txn = TransactionMetaData(description=description)
    storage.tpc_begin(txn)
    for oid, data in records.items():
        storage.store(oid, (serials or {}).get(oid, z64), data, "", txn)
    storage.tpc_vote(txn)
    return storage.tpc_finish(txn)


class Recorder:
    """A stand-in for the database: what ``registerDB`` callers receive."""

    def __init__(self, storage=None):
        self.storage = storage
        self.events: list = []

    def invalidate(self, tid, oids):
        # The invariant: a tid is reported before lastTransaction() shows it.
        if self.storage is not None:
            assert self.storage.lastTransaction() < tid
        self.events.append(("invalidate", tid, sorted(oids)))

    def invalidateCache(self):
        self.events.append(("invalidateCache",))
