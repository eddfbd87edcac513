"""The record cache in the SQLite storage (amphora.storage.recordcache): what ``ZODB.DB``
gets from it, measured in SQL statements run, never in time. What every storage with the
cache does (SQLite, PostgreSQL, the client) is in test_record_cache_storages.py."""
from __future__ import annotations


import pytest
import transaction
import ZODB
from test_record_cache_storages import ITEMS, fill_items, open_item, read_all

from amphora.storage.base import TransactionMetaData
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import maxtid, p64, u64, z64


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "data.db")


def populate(path: str, keep_history: bool = True) -> None:
    fill_items(SQLiteStorage(path, keep_history=keep_history))


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


def test_a_container_loads_its_items_in_one_read_ahead(zodb):
    storage, db = zodb
    with Statements(storage) as selects:
        assert read_all(db) == sum(range(ITEMS))
    # the root, the container, and its ITEMS items read ahead in one batch (padded to
    # statements of up to 500 oids), never one query per item
    assert len(selects) <= 4, selects
    assert len(storage.record_cache) >= ITEMS + 2


def test_another_storage_objects_commit_reaches_the_cache_in_order(zodb, path):
    storage, db = zodb
    other = ZODB.DB(SQLiteStorage(path))
    try:
        manager, conn, item = open_item(db, 7)
        assert item["value"] == 7
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
        assert item["value"] == 3
        oid, first = item._p_oid, item._p_serial
        item["value"] = 30
        manager.commit()
        # the replaced revision is cached, closed; the storage still keeps no history
        assert storage.loadBefore(oid, p64(u64(first) + 1)) is None
        assert storage.loadBefore(oid, p64(u64(item._p_serial) + 1))[1] == item._p_serial
        conn.close()
    finally:
        db.close()


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
