"""Helpers of the storage tests: records built by hand (two pickles, references as
``(oid, None)``, so the tests need no database object and no application class), a
commit through the storage API, and a stand-in for the database that records what the
storage reports."""
from __future__ import annotations

import io
import pickle
import threading
from typing import Callable

from amphora.storage.base import TransactionMetaData
from amphora.utils import z64


class _Pickler(pickle.Pickler):
    """A subclass: only its instances take a ``persistent_id`` attribute on Python 3.13."""


class Ref:
    """A persistent reference to ``oid`` inside a hand-made record."""

    def __init__(self, oid: bytes):
        self.oid = oid


def make_record(module: str, value=None, *refs: bytes) -> bytes:
    """A record in ZODB's format: class metadata (``module.Thing``), then a state referring
    to ``refs``."""
    file = io.BytesIO()
    pickler = _Pickler(file, 3)
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


def commit_during(storage, work: Callable[[], object], records: Callable[[object], bytes],
                  oids: list[bytes]) -> tuple[list[Exception], list[bytes]]:
    """Run ``work()`` while a thread keeps committing ``records(n)`` to each of ``oids`` (read
    first, then at the tid of its last commit); the thread's errors and tids. ``work`` starts
    once the thread has read its serials, so that on a busy machine it cannot be over before
    its first commit begins."""
    done = threading.Event()
    ready = threading.Event()
    errors: list[Exception] = []
    tids: list[bytes] = []

    def writer():
        try:
            serials = {oid: storage.load(oid)[1] for oid in oids}
            ready.set()
            while not done.is_set():
                tid = commit(storage, {oid: records(len(tids)) for oid in serials}, serials)
                serials = dict.fromkeys(serials, tid)
                tids.append(tid)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        ready.wait(60)
        work()
    finally:
        done.set()
        thread.join()
    return errors, tids


ITEM = "conformance.models.Item"


def indexed_items(storage, count: int = 2000):
    """An ``amphora.DB`` over ``storage`` holding ``count`` ``Item`` objects in its root
    (``Item(n, email="P<n>@example.com")``), with a mirror and the expression index
    ``item_email`` on the lower-case e-mail, restricted to the class."""
    import amphora
    from conformance.models import Item
    db = amphora.DB(storage)
    with db.transaction() as conn:
        for n in range(count):
            conn.root()[n] = Item(n, email=f"P{n}@example.com")
    db.create_mirror()
    db.create_index("item_email", "lower(state->>'email')", class_name=ITEM)
    return db


def queries_sent(monkeypatch, storage) -> list[tuple[str, object]]:
    """The ``(statement, params)`` of each ``storage.query_mirror`` call from now on."""
    sent: list[tuple[str, object]] = []
    query_mirror = storage.query_mirror
    monkeypatch.setattr(storage, "query_mirror", lambda statement, params=(), **options:
                        sent.append((statement, params))
                        or query_mirror(statement, params, **options))
    return sent
