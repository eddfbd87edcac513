"""The record cache in the SQLite storage (amphora.storage.recordcache): what ``ZODB.DB``
gets from it, measured in SQL statements run, never in time."""
from __future__ import annotations

import time

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping

from amphora.db import DB
from amphora.errors import ObjectNotFoundError
from amphora.storage.base import TransactionMetaData
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import maxtid, p64, u64, z64

ITEMS = 200


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "data.db")


def populate(path: str, keep_history: bool = True) -> None:
    """A root with ``items``: a mapping of ITEMS mappings, committed through ZODB.DB."""
    db = ZODB.DB(SQLiteStorage(path, keep_history=keep_history))
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    items = PersistentMapping()
    for i in range(ITEMS):
        items[i] = PersistentMapping(value=i)
    conn.root()["items"] = items
    manager.commit()
    db.close()


class Statements:
    """The SELECTs this thread's read connection of ``storage`` runs meanwhile."""

    def __init__(self, storage: SQLiteStorage):
        self.conn = storage._reader().conn
        self.seen: list[str] = []

    def __enter__(self) -> list[str]:
        self.conn.set_trace_callback(self.seen.append)
        return self.seen

    def __exit__(self, *exc) -> None:
        self.conn.set_trace_callback(None)
        self.seen[:] = [sql for sql in self.seen if sql.lstrip().startswith(("SELECT", "WITH"))]


@pytest.fixture
def zodb(path):
    """``(storage, db)``: ZODB.DB over a new SQLiteStorage of a populated file."""
    populate(path)
    storage = SQLiteStorage(path)
    db = ZODB.DB(storage)
    yield storage, db
    db.close()


def open_item(db, key: int):
    """A new connection's transaction manager, the connection, and item ``key``, loaded."""
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    item = conn.root()["items"][key]
    assert item["value"] == key
    return manager, conn, item


def read_all(db, manager=None) -> int:
    conn = db.open(manager or transaction.TransactionManager())
    try:
        return sum(item["value"] for item in conn.root()["items"].values())
    finally:
        conn.close()


def test_a_container_loads_its_items_in_one_read_ahead(zodb):
    storage, db = zodb
    with Statements(storage) as selects:
        assert read_all(db) == sum(range(ITEMS))
    # the root, the container, and its ITEMS items read ahead in one batch (padded to
    # statements of up to 500 oids), never one query per item
    assert len(selects) <= 4, selects
    assert len(storage.record_cache) >= ITEMS + 2


def test_every_connection_of_the_storage_shares_the_records(zodb):
    storage, db = zodb
    read_all(db)
    db.cacheMinimize()  # the pickle caches are empty: every object loads again
    with Statements(storage) as selects:
        assert read_all(db) == sum(range(ITEMS))
    assert selects == []


def test_a_commit_here_is_read_back_by_another_connection_from_the_cache(zodb):
    storage, db = zodb
    reader_manager = transaction.TransactionManager()
    reader = db.open(reader_manager)
    items = reader.root()["items"]
    assert sum(item["value"] for item in items.values()) == sum(range(ITEMS))

    writer_manager = transaction.TransactionManager()
    writer = db.open(writer_manager)
    for item in writer.root()["items"].values():
        item["value"] += 1
    writer_manager.commit()
    writer.close()

    reader_manager.begin()  # the new snapshot: the changed objects are ghosts again
    with Statements(storage) as selects:
        assert sum(item["value"] for item in items.values()) == sum(range(ITEMS)) + ITEMS
    assert selects == []
    reader.close()


def test_another_storage_objects_commit_reaches_the_cache_in_order(zodb, path):
    storage, db = zodb
    other = ZODB.DB(SQLiteStorage(path))
    try:
        manager, conn, item = open_item(db, 7)
        oid, old_tid = item._p_oid, item._p_serial

        other_manager = transaction.TransactionManager()
        other_conn = other.open(other_manager)
        other_conn.root()["items"][7]["value"] = 700
        other_manager.commit()
        other_conn.close()

        # Not reported yet: the cache answers only snapshots it knows all about
        assert storage.loadBefore(oid, maxtid)[0] != storage.loadBefore(oid, p64(u64(old_tid) + 1))[0]
        manager.begin()  # syncs: the commit is reported, the cached record closed
        assert item["value"] == 700
        old = storage.loadBefore(oid, p64(u64(old_tid) + 1))
        assert old[1] == old_tid and old[2] == item._p_serial  # the old revision, closed
        conn.close()
    finally:
        other.close()


def test_a_history_free_storage_answers_old_snapshots_with_none(path):
    populate(path, keep_history=False)
    storage = SQLiteStorage(path)
    db = ZODB.DB(storage)
    try:
        manager, conn, item = open_item(db, 3)
        oid, first = item._p_oid, item._p_serial
        item["value"] = 30
        manager.commit()
        # the replaced revision is cached, closed; the storage still keeps no history
        assert storage.loadBefore(oid, p64(u64(first) + 1)) is None
        assert storage.loadBefore(oid, p64(u64(item._p_serial) + 1))[1] == item._p_serial
        conn.close()
    finally:
        db.close()


def test_the_cache_keeps_to_its_size(zodb):
    storage, db = zodb
    storage.record_cache.max_bytes = 8000
    assert read_all(db) == sum(range(ITEMS))
    assert 0 < storage.record_cache.size_bytes <= 8000


def test_pack_forgets_the_records_it_removed(zodb):
    storage, db = zodb
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    items = conn.root()["items"]
    oid = items[5]._p_oid
    assert items[5]["value"] == 5
    del items[5]
    manager.commit()
    conn.close()
    assert storage.loadBefore(oid, p64(u64(storage.lastTransaction()) + 1)) is not None
    time.sleep(0.01)
    db.pack()
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(oid, p64(u64(storage.lastTransaction()) + 1))


def test_prefetch_reads_the_missing_records_in_one_batch(zodb):
    storage, db = zodb
    storage.read_ahead = 0  # prefetch alone
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    items = conn.root()["items"]
    ghosts = list(items.values())
    with Statements(storage) as selects:
        conn.prefetch(ghosts)
        assert sum(item["value"] for item in ghosts) == sum(range(ITEMS))
    assert len(selects) == 1, selects
    conn.close()


def test_amphora_db_uses_the_storages_cache(path):
    storage = SQLiteStorage(path)
    with DB(storage, record_cache_bytes=1 << 20) as db:
        assert db.records is storage.record_cache
        assert storage.record_cache.max_bytes == 1 << 20
        with db.transaction() as conn:
            conn.root.items = PersistentMapping(value=1)
        oid = db.open().root.items._p_oid
        # the commit's records are in the cache once, kept by the storage
        assert db.records.get(oid, p64(u64(storage.lastTransaction()) + 1))[1] \
            == storage.lastTransaction()


class Listener:
    """What ``registerDB`` is given: a database's invalidation callbacks."""

    def invalidate(self, tid, oids):
        pass

    def invalidateCache(self):
        pass


def commit_root(storage: SQLiteStorage, data: bytes, serial: bytes = z64) -> bytes:
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.store(z64, serial, data, "", txn)
    storage.tpc_vote(txn)
    return storage.tpc_finish(txn)


def test_commits_are_cached_for_a_database_only(path):
    """A storage written without a database (a copy, a tool) keeps none of its records;
    with one, the records of its commits serve the database's next loads."""
    storage = SQLiteStorage(path)
    try:
        first = commit_root(storage, b"\x80\x03first")
        assert storage.record_cache.entry(z64, p64(u64(first) + 1)) is None
        assert storage.loadBefore(z64, p64(u64(first) + 1))[0] == b"\x80\x03first"  # now cached
        storage.registerDB(Listener())
        second = commit_root(storage, b"\x80\x03second", first)
        assert storage.record_cache.entry(z64, p64(u64(second) + 1)) \
            == (b"\x80\x03second", second, None)
        # an older snapshot reads the revision it replaced from the file
        assert storage.loadBefore(z64, p64(u64(first) + 1)) \
            == (b"\x80\x03first", first, second)
    finally:
        storage.close()
