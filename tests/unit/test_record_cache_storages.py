"""The record cache of the SQLite, PostgreSQL and client storages (see
amphora.storage.recordcache; test_storage_record_cache.py has SQLite's own details): what
``ZODB.DB`` gets from it, measured in reads that reach the database or the server, never
in time. PostgreSQL is a real server (tests/pgserver.py); the client talks to a real
``amphora serve`` process over SQLite."""
from __future__ import annotations

import multiprocessing
import time
import traceback
from pathlib import Path
from typing import Any

import pgserver
import pytest
import serverprocess
import transaction
import ZODB
from persistent.mapping import PersistentMapping

import amphora
from amphora.errors import ObjectNotFoundError
from amphora.uri import open_storage
from amphora.utils import p64, u64

ITEMS = 200
KINDS = ["sqlite", "postgresql", "client"]

_fork = multiprocessing.get_context("fork")


class Database:
    """One database of a kind, and how to open another storage object on it."""

    def __init__(self, kind: str, path: Path):
        self.kind = kind
        self.opened: list[Any] = []
        if kind == "sqlite":
            self.uri = f"sqlite:///{path}.db"
        elif kind == "postgresql":
            server = pgserver.require()
            schema = pgserver.schema_for(str(path))
            server.remember_schema(schema)
            self.uri = server.uri(schema=schema)
        else:
            server = serverprocess.shared_server("sqlite")
            self.uri = f"amphora://{server.address}/{serverprocess.storage_name(path)}"

    def open(self, **options: Any) -> Any:
        storage = open_storage(self.uri, **options)
        self.opened.append(storage)
        return storage

    def close_all(self) -> None:
        for storage in self.opened:
            storage.close()


@pytest.fixture(params=KINDS)
def database(request, tmp_path):
    found = Database(request.param, tmp_path / "data")
    yield found
    found.close_all()


def populate(database: Database) -> None:
    fill_items(database.open())


def fill_items(storage: Any) -> None:
    """A root with ``items``: a mapping of ITEMS mappings, committed through ZODB.DB on
    ``storage`` (closed afterwards)."""
    db = ZODB.DB(storage)
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    items = PersistentMapping()
    for i in range(ITEMS):
        items[i] = PersistentMapping(value=i)
    conn.root()["items"] = items
    manager.commit()
    db.close()


@pytest.fixture
def zodb(database):
    """``(storage, db)``: ZODB.DB over a new storage object of a populated database."""
    populate(database)
    storage = database.open()
    db = ZODB.DB(storage)
    yield storage, db
    db.close()


class Reads:
    """The reads of ``storage`` that reach its database or server meanwhile (the record
    cache's misses and read-aheads), as ``(method, number of oids)``."""

    def __init__(self, storage: Any):
        self.storage = storage
        self.seen: list[tuple[str, int]] = []

    def __enter__(self) -> list[tuple[str, int]]:
        storage, seen = self.storage, self.seen
        load_before, load_many = storage._load_before, storage.load_many

        def counted_load_before(oid, tid):
            seen.append(("loadBefore", 1))
            return load_before(oid, tid)

        def counted_load_many(oids, before):
            oids = list(oids)
            seen.append(("load_many", len(oids)))
            return load_many(oids, before)
        storage._load_before, storage.load_many = counted_load_before, counted_load_many
        return seen

    def __exit__(self, *exc) -> None:
        del self.storage._load_before, self.storage.load_many


def read_all(db, manager=None) -> int:
    conn = db.open(manager or transaction.TransactionManager())
    try:
        return sum(item["value"] for item in conn.root()["items"].values())
    finally:
        conn.close()


def open_item(db, key: int):
    """A new connection's transaction manager, the connection, and item ``key``, loaded."""
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    manager.begin()  # a snapshot of every commit made so far
    item = conn.root()["items"][key]
    return manager, conn, item


def change_item(storage: Any, key: int, value: int) -> None:
    """Item ``key`` set to ``value`` through a database of its own on ``storage``."""
    db = ZODB.DB(storage)
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    conn.root()["items"][key]["value"] = value
    manager.commit()
    conn.close()
    db.close()


def next_snapshot(tid: bytes) -> bytes:
    return p64(u64(tid) + 1)


def test_a_container_loads_its_items_in_a_few_reads(zodb):
    storage, db = zodb
    with Reads(storage) as reads:
        assert read_all(db) == sum(range(ITEMS))
    # the root, then the container with its ITEMS items read ahead: never one per item
    assert len(reads) <= 3, reads
    assert len(storage.record_cache) >= ITEMS + 2


def test_every_connection_of_the_storage_shares_the_records(zodb):
    storage, db = zodb
    read_all(db)
    db.cacheMinimize()  # the pickle caches are empty: every object loads again
    with Reads(storage) as reads:
        assert read_all(db) == sum(range(ITEMS))
    assert reads == []


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
    with Reads(storage) as reads:
        assert sum(item["value"] for item in items.values()) == sum(range(ITEMS)) + ITEMS
    assert reads == []
    reader.close()


def test_another_storage_objects_commit_closes_the_cached_record(zodb, database):
    storage, db = zodb
    manager, conn, item = open_item(db, 7)
    assert item["value"] == 7
    oid, old_tid = item._p_oid, item._p_serial
    assert storage.record_cache.entry(oid, next_snapshot(old_tid))[2] is None  # current

    change_item(database.open(), 7, 700)
    manager.begin()  # learns of the commit: the cached record is closed at its tid
    new_tid = storage.lastTransaction()
    closed = storage.record_cache.entry(oid, next_snapshot(old_tid))
    pushed = storage.record_cache.entry(oid, next_snapshot(new_tid))
    if database.kind in ("client", "postgresql"):
        # the server pushed the (small) new record with its commit; PostgreSQL's sync
        # brought it with the commit's oids
        assert closed is None and pushed[1:] == (new_tid, None)
    else:  # the others' commits are oids and a tid
        assert closed[1:] == (old_tid, new_tid) and pushed is None
    assert item["value"] == 700  # read, and cached as current
    assert storage.record_cache.entry(oid, next_snapshot(new_tid))[1:] == (new_tid, None)
    conn.close()


def test_an_old_snapshot_never_gets_a_newer_record(zodb, database):
    storage, db = zodb
    old_manager, old_conn, old_item = open_item(db, 7)
    assert old_item["value"] == 7
    snapshot = next_snapshot(storage.lastTransaction())

    change_item(database.open(), 7, 700)
    new_manager, new_conn, new_item = open_item(db, 1)
    new_item = new_conn.root()["items"][7]
    assert new_item["value"] == 700  # the new record is cached now

    old_item._p_invalidate()  # loaded again, in the old connection's snapshot
    assert old_item["value"] == 7
    data, start, end = storage.loadBefore(old_item._p_oid, snapshot)
    assert start == old_item._p_serial and end == new_item._p_serial
    old_conn.close()
    new_conn.close()


def test_the_cache_keeps_to_its_size(database):
    populate(database)
    storage = database.open()
    storage.record_cache.max_bytes = 8000
    db = ZODB.DB(storage)
    try:
        assert read_all(db) == sum(range(ITEMS))
        assert 0 < storage.record_cache.size_bytes <= 8000
    finally:
        db.close()


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
    assert storage.loadBefore(oid, next_snapshot(storage.lastTransaction())) is not None
    time.sleep(0.01)
    db.pack()
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(oid, next_snapshot(storage.lastTransaction()))


def test_prefetch_reads_the_missing_records_in_one_batch(zodb):
    storage, db = zodb
    storage.read_ahead = 0  # prefetch alone
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    items = conn.root()["items"]
    ghosts = list(items.values())
    storage.record_cache.clear()  # (the root's read-ahead brought them)
    with Reads(storage) as reads:
        conn.prefetch(ghosts)
        assert sum(item["value"] for item in ghosts) == sum(range(ITEMS))
    assert reads == [("load_many", ITEMS)], reads
    conn.close()


def test_amphora_db_uses_the_storages_cache(database):
    populate(database)
    with amphora.DB(database.open(), record_cache_bytes=1 << 20) as db:
        storage = db.storage
        assert db.records is storage.record_cache
        assert storage.record_cache.max_bytes == 1 << 20
        with db.transaction() as conn:
            conn.root()["other"] = PersistentMapping(value=1)
        oid = db.open().root()["other"]._p_oid
        # the commit's records are in the cache once, kept by the storage
        assert db.records.get(oid, next_snapshot(storage.lastTransaction()))[1] \
            == storage.lastTransaction()


def read_in_child(storage: Any, error_file: Path) -> None:
    """In a forked child: read every item through ZODB.DB on the parent's storage (its
    cache filled by the parent), change one, and read it back."""
    try:
        db = ZODB.DB(storage)
        assert read_all(db) == sum(range(ITEMS))
        manager, conn, item = open_item(db, 3)
        assert item["value"] == 3
        item["value"] = 300
        manager.commit()
        conn.close()
        assert read_all(db) == sum(range(ITEMS)) + 297
    except BaseException:
        error_file.write_text(traceback.format_exc())
        raise


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_uses_the_cache_even_if_a_thread_held_its_lock(zodb, tmp_path):
    storage, db = zodb
    read_all(db)
    error_file = tmp_path / "child.err"
    with storage.record_cache._lock:  # as a thread of the parent may at the fork
        child = _fork.Process(target=read_in_child, args=(storage, error_file), daemon=True)
        child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, error_file.read_text() if error_file.exists() else child.exitcode
    manager = transaction.TransactionManager()
    manager.begin()
    assert read_all(db, manager) == sum(range(ITEMS)) + 297  # the parent sees the commit


def test_a_client_takes_its_cache_size_from_the_uri(tmp_path):
    database = Database("client", tmp_path / "data")
    try:
        storage = database.open()
        assert storage.record_cache.max_bytes == storage.record_cache_bytes  # the default
        sized = open_storage(f"{database.uri}?record_cache_bytes=12345")
        database.opened.append(sized)
        assert sized.record_cache.max_bytes == 12345
        with pytest.raises(amphora.errors.InvalidURIError, match="record_cache_bytes"):
            open_storage(f"{database.uri}?record_cache_bytes=lots")
    finally:
        database.close_all()


def test_amphora_open_sizes_the_clients_cache_from_the_uri(tmp_path):
    database = Database("client", tmp_path / "data")
    try:
        database.open()  # (serves the database)
        with amphora.open(f"{database.uri}?record_cache_bytes=23456") as db:
            assert db.records is db.storage.record_cache
            assert db.storage.record_cache.max_bytes == 23456
    finally:
        database.close_all()


# -- the client's cache file -------------------------------------------------------------
@pytest.fixture
def served(tmp_path):
    database = Database("client", tmp_path / "data")
    populate(database)
    yield database
    database.close_all()


def fill_cache_file(database: Database, cache_file: Path) -> None:
    """Read every item through a client with ``cache_file``, then close it (writing it)."""
    db = ZODB.DB(database.open(cache_file=str(cache_file)))
    assert read_all(db) == sum(range(ITEMS))
    db.close()


def test_the_client_cache_file_serves_the_next_start(served, tmp_path):
    cache_file = tmp_path / "records.cache"
    fill_cache_file(served, cache_file)
    assert cache_file.stat().st_size > ITEMS * 50

    storage = served.open(cache_file=str(cache_file))
    assert len(storage.record_cache) >= ITEMS + 2
    db = ZODB.DB(storage)
    with Reads(storage) as reads:
        assert read_all(db) == sum(range(ITEMS))
    assert reads == []
    db.close()


def test_the_client_cache_file_learns_what_changed_while_it_was_closed(served, tmp_path):
    cache_file = tmp_path / "records.cache"
    fill_cache_file(served, cache_file)
    change_item(served.open(), 7, 700)

    storage = served.open(cache_file=str(cache_file))
    db = ZODB.DB(storage)
    with Reads(storage) as reads:
        assert read_all(db) == sum(range(ITEMS)) + 693
    assert [count for _, count in reads] == [1], reads  # the changed item alone
    db.close()


def test_a_cache_file_the_server_cannot_verify_is_dropped(served, tmp_path):
    cache_file = tmp_path / "records.cache"
    fill_cache_file(served, cache_file)
    other = Database("client", tmp_path / "other")  # another database, the same server
    try:
        populate(other)
        storage = other.open(cache_file=str(cache_file))
        assert len(storage.record_cache) == 0
        db = ZODB.DB(storage)
        assert read_all(db) == sum(range(ITEMS))
        db.close()
    finally:
        other.close_all()


def test_a_damaged_cache_file_is_ignored(served, tmp_path):
    cache_file = tmp_path / "records.cache"
    fill_cache_file(served, cache_file)
    cache_file.write_bytes(cache_file.read_bytes()[:-10])  # truncated
    storage = served.open(cache_file=str(cache_file))
    assert len(storage.record_cache) == 0
    db = ZODB.DB(storage)
    assert read_all(db) == sum(range(ITEMS))
    db.close()
    rewritten = open_storage(f"{served.uri}?cache_file={cache_file}")  # as a URI option
    served.opened.append(rewritten)
    assert len(rewritten.record_cache) > ITEMS
