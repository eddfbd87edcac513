"""The SQLite storage: its file format, its modes, and what it promises beyond the shared
storage contract (batched loads, invalidations between storage objects, pack).

Records here are built by hand (two pickles, references as ``(oid, None)``), so the tests
need no database object and no application class.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from records import Recorder, commit, make_record

from amphora.errors import (ConflictError, CorruptRecordError, InvalidURIError,
                            ObjectNotFoundError, ReadOnlyError, StorageError,
                            StorageFormatError)
from amphora.storage.base import TransactionMetaData
from amphora.storage.sqlite import SCHEMA_VERSION, SQLiteStorage
from amphora.utils import maxtid, p64, u64, z64

# -- helpers --------------------------------------------------------------------------------


def record(value=None, *refs: bytes) -> bytes:
    return make_record("tests.storage", value, *refs)


def after(tid: bytes) -> bytes:
    return p64(u64(tid) + 1)


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "data.db"


@pytest.fixture
def storage(path):
    opened = SQLiteStorage(str(path))
    yield opened
    opened.close()


def make_amphora_file(path: Path, **options) -> None:
    storage = SQLiteStorage(str(path), **options)
    commit(storage, {z64: record("root")})
    storage.close()


# -- the file -------------------------------------------------------------------------------


def test_a_new_file_says_what_it_is(path):
    make_amphora_file(path)
    with sqlite3.connect(path) as conn:
        meta = dict(conn.execute("SELECT key, value FROM amphora_meta"))
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert meta["format"] == "amphora-sqlite"
    assert meta["schema_version"] == SCHEMA_VERSION == 1
    assert meta["keep_history"] == 1
    assert journal == "wal"


def _non_sqlite(path: Path) -> None:
    path.write_bytes(b"this is a text file, not a database\n" * 100)


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.execute("INSERT INTO people VALUES ('ada')")
    conn.commit()
    conn.close()


def _newer_schema(path: Path) -> None:
    make_amphora_file(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE amphora_meta SET value = ? WHERE key = 'schema_version'",
                 (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()


def _truncated(path: Path) -> None:
    storage = SQLiteStorage(str(path))
    commit(storage, {p64(i): record("x" * 2000) for i in range(200)})
    storage.close()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _truncated_header(path: Path) -> None:
    make_amphora_file(path)
    path.write_bytes(path.read_bytes()[:60])


BAD_FILES = {
    "not-sqlite": (_non_sqlite, "not an SQLite database"),
    "foreign-sqlite": (_foreign_sqlite, "not an amphora database"),
    "newer-schema": (_newer_schema, "schema version 2"),
    "truncated": (_truncated, "truncated"),
    "truncated-header": (_truncated_header, "truncated"),
}


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_file_that_is_not_a_usable_amphora_database_is_refused_untouched(path, kind,
                                                                            read_only):
    make, problem = BAD_FILES[kind]
    make(path)
    before = path.read_bytes()
    with pytest.raises(StorageFormatError) as info:
        SQLiteStorage(str(path), read_only=read_only)
    message = str(info.value)
    assert str(path) in message and problem in message
    assert path.read_bytes() == before


@pytest.mark.parametrize("options", [{"read_only": True}, {"create": False}],
                         ids=["read-only", "create-false"])
def test_a_missing_file_is_only_created_when_allowed(path, options):
    with pytest.raises(StorageFormatError, match="no such amphora database"):
        SQLiteStorage(str(path), **options)
    assert not path.exists()


def test_the_history_mode_is_fixed_when_the_file_is_created(path):
    make_amphora_file(path, keep_history=False)
    with pytest.raises(StorageFormatError, match="history-free"):
        SQLiteStorage(str(path), keep_history=True)
    reopened = SQLiteStorage(str(path))  # not asked: the file decides
    assert reopened.keep_history is False and reopened.supports_history is False
    reopened.close()


def page_size_of(path: Path) -> int:
    with open(path, "rb") as file:
        return int.from_bytes(file.read(100)[16:18], "big")  # SQLite's file header


def test_the_page_size_is_chosen_when_the_file_is_created(tmp_path):
    make_amphora_file(tmp_path / "default.db")
    assert page_size_of(tmp_path / "default.db") == 8192
    make_amphora_file(tmp_path / "small.db", page_size=4096)
    assert page_size_of(tmp_path / "small.db") == 4096
    reopened = SQLiteStorage(str(tmp_path / "small.db"), page_size=16384)  # the file decides
    commit(reopened, {z64: record("root again")}, {z64: reopened.load(z64)[1]})
    reopened.close()
    assert page_size_of(tmp_path / "small.db") == 4096


@pytest.mark.parametrize("page_size", [1000, 256, 131072, True, "8192"])
def test_a_bad_page_size_is_refused(path, page_size):
    with pytest.raises(InvalidURIError, match="page_size"):
        SQLiteStorage(str(path), page_size=page_size)
    assert not path.exists()


def test_data_survives_closing_and_reopening(path, storage):
    tid = commit(storage, {z64: record("root"), p64(1): record("one")})
    storage.close()
    reopened = SQLiteStorage(str(path))
    try:
        assert reopened.lastTransaction() == tid
        assert reopened.load(p64(1)) == (record("one"), tid)
        assert len(reopened) == 2
    finally:
        reopened.close()


def killed_after_its_first_line(code: str) -> str:
    """Run ``code`` in a new interpreter, read the first line it prints, then kill it
    (SIGKILL: no cleanup of any kind); the line."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                             stdout=subprocess.PIPE, text=True)
    try:
        return child.stdout.readline().strip()
    finally:
        child.kill()
        child.wait()


def test_a_file_whose_writer_was_killed_opens_and_keeps_its_commits(path):
    """A writer killed with commits still in the write-ahead log: the next storage to open
    the file finds every commit."""
    tid = bytes.fromhex(killed_after_its_first_line(f"""
        import sys, time
        sys.path[:0] = {[str(Path(__file__).parent)]!r}
        from records import commit, make_record
        from amphora.storage.sqlite import SQLiteStorage
        from amphora.utils import p64, z64
        storage = SQLiteStorage({str(path)!r})
        tid = commit(storage, {{z64: make_record("m", "root"), p64(1): make_record("m", 1)}})
        print(tid.hex(), flush=True)
        time.sleep(60)
    """))
    assert Path(f"{path}-wal").stat().st_size > 0  # (the commit is in the log only)
    reopened = SQLiteStorage(str(path))
    try:
        assert reopened.lastTransaction() == tid
        assert reopened.load(p64(1)) == (make_record("m", 1), tid)
    finally:
        reopened.close()


def test_a_file_left_with_a_journal_to_roll_back_opens(path):
    """A process killed in the middle of a transaction in rollback-journal mode (as when
    a new file is switched to write-ahead logging) leaves a journal that the next
    connection must roll back: the storage opening the file does, and makes its
    database in the empty file."""
    sqlite3.connect(path).execute("PRAGMA user_version = 1").connection.close()  # page 1
    assert killed_after_its_first_line(f"""
        import sqlite3, time
        conn = sqlite3.connect({str(path)!r}, isolation_level=None)
        conn.execute("PRAGMA cache_size = 2")  # (the changed pages go to the file early)
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE t (x BLOB)")
        for _ in range(500):
            conn.execute("INSERT INTO t VALUES (randomblob(500))")
        print("ready", flush=True)
        time.sleep(60)
    """) == "ready"
    assert Path(f"{path}-journal").stat().st_size > 0
    storage = SQLiteStorage(str(path))
    try:
        tid = commit(storage, {z64: record("root")})
        assert storage.load(z64) == (record("root"), tid)
    finally:
        storage.close()


# -- read-only and closed -------------------------------------------------------------------


def test_read_only_storage_reads_and_refuses_writes(path, storage):
    tid = commit(storage, {z64: record("root")})
    reader = SQLiteStorage(str(path), read_only=True)
    try:
        assert reader.isReadOnly()
        assert reader.load(z64) == (record("root"), tid)
        with pytest.raises(ReadOnlyError):
            reader.new_oid()
        with pytest.raises(ReadOnlyError):
            reader.tpc_begin(TransactionMetaData())
        with pytest.raises(ReadOnlyError):
            reader.pack(time.time())
        # a read-only storage still hears about others' commits
        tid2 = commit(storage, {z64: record("changed")}, {z64: tid})
        reader.sync()
        assert reader.lastTransaction() == tid2
        assert reader.load(z64) == (record("changed"), tid2)
    finally:
        reader.close()


def test_a_closed_storage_raises_storage_error(storage):
    oid = storage.new_oid()
    commit(storage, {oid: record(1)})
    storage.close()
    storage.close()  # closing twice is fine
    for call in (lambda: storage.loadBefore(oid, maxtid), lambda: storage.load_many([oid], maxtid),
                 lambda: storage.loadSerial(oid, z64), storage.new_oid, storage.sync,
                 lambda: list(storage.iterator()), lambda: len(storage),
                 lambda: storage.tpc_begin(TransactionMetaData()),
                 lambda: storage.pack(time.time())):
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, sqlite3.Error)
        assert "closed" in str(info.value)


def test_a_record_that_is_not_bytes_raises_corrupt_record_error(path, storage):
    tid = commit(storage, {z64: record("root")})
    conn = sqlite3.connect(path)
    conn.execute("UPDATE objects SET data = 'text' WHERE oid = 0")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptRecordError):
        storage.loadBefore(z64, maxtid)
    assert storage.load_many([z64], maxtid) == {}  # left out: loadBefore says why
    with pytest.raises(CorruptRecordError):
        storage.loadSerial(z64, tid)


# -- transactions ---------------------------------------------------------------------------


def test_an_empty_transaction_gets_a_tid_and_a_transaction_record(storage):
    first = commit(storage, {})
    second = commit(storage, {})
    assert z64 < first < second == storage.lastTransaction()
    assert [(t.tid, list(t)) for t in storage.iterator()] == [(first, []), (second, [])]


def test_new_oids_are_unique_across_storage_objects(path, storage):
    other = SQLiteStorage(str(path))
    try:
        oids = [storage.new_oid() for _ in range(100)] + [other.new_oid() for _ in range(100)]
        oids += [storage.new_oid() for _ in range(100)]
        assert len(set(oids)) == len(oids)
        assert z64 not in oids  # the root's oid is never handed out
    finally:
        other.close()


def test_oids_stored_without_new_oid_are_not_handed_out_later(storage):
    commit(storage, {p64(1000): record("restored")})
    assert u64(storage.new_oid()) > 1000


# -- MVCC reads -----------------------------------------------------------------------------


def test_load_before_gives_exact_start_and_end(storage):
    oid = storage.new_oid()
    t1 = commit(storage, {oid: record(1)})
    t2 = commit(storage, {oid: record(2)}, {oid: t1})
    t3 = commit(storage, {oid: record(3)}, {oid: t2})
    assert storage.loadBefore(oid, t1) is None
    assert storage.loadBefore(oid, t2) == (record(1), t1, t2)
    assert storage.loadBefore(oid, t3) == (record(2), t2, t3)
    assert storage.loadBefore(oid, after(t3)) == (record(3), t3, None)
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(p64(12345), maxtid)
    assert [entry["tid"] for entry in storage.history(oid, 10)] == [t3, t2, t1]
    assert storage.loadSerial(oid, t1) == record(1)


def test_load_many_matches_load_before_across_chunks(storage):
    """1200 oids in three chunks: current, changed since the snapshot, created after it,
    and never stored; one or two queries per 500 oids."""
    oids = [storage.new_oid() for _ in range(1100)]
    t1 = commit(storage, {oid: record(i) for i, oid in enumerate(oids)})
    changed = oids[::7]
    t2 = commit(storage, {oid: record("changed") for oid in changed}, {oid: t1 for oid in changed})
    late = [storage.new_oid() for _ in range(50)]
    t3 = commit(storage, {oid: record("late") for oid in late})
    missing = [p64(10**9 + i) for i in range(50)]
    wanted = oids + late + missing

    statements: list[str] = []
    conn = storage._reader().conn
    conn.set_trace_callback(statements.append)
    try:
        snapshot = storage.load_many(wanted, after(t1))
    finally:
        conn.set_trace_callback(None)
    queries = [sql for sql in statements if sql.startswith(("SELECT", "WITH"))]
    assert len(queries) == 3 + 1  # three chunks, then the changed ones in one batch
    assert snapshot == {oid: storage.loadBefore(oid, after(t1)) for oid in oids}
    assert snapshot[changed[0]] == (record(0), t1, t2)
    assert snapshot[oids[1]] == (record(1), t1, None)

    now = storage.load_many(wanted, after(t3))
    assert set(now) == set(oids) | set(late)
    assert now[changed[1]] == (record("changed"), t2, None)
    assert now[late[0]] == (record("late"), t3, None)
    assert storage.load_many([], maxtid) == {}


# -- history-free mode ----------------------------------------------------------------------


def test_history_free_keeps_only_current_revisions(path):
    storage = SQLiteStorage(str(path), keep_history=False)
    try:
        oid = storage.new_oid()
        t1 = commit(storage, {oid: record(1)})
        t2 = commit(storage, {oid: record(2)}, {oid: t1})
        assert storage.loadBefore(oid, t2) is None  # the revision before t2 is gone
        assert storage.loadBefore(oid, after(t2)) == (record(2), t2, None)
        assert [entry["tid"] for entry in storage.history(oid, 10)] == [t2]
        assert [[r.oid for r in txn] for txn in storage.iterator()] == [[], [oid]]
        # ... but the replaced revision stays for conflict resolution, for a while
        assert storage.loadSerial(oid, t1) == record(1)
        storage.conflict_window = 0
        commit(storage, {oid: record(3)}, {oid: t2})
        with pytest.raises(ObjectNotFoundError):
            storage.loadSerial(oid, t1)
    finally:
        storage.close()


def test_history_free_still_detects_conflicts(path):
    storage = SQLiteStorage(str(path), keep_history=False)
    try:
        oid = storage.new_oid()
        t1 = commit(storage, {oid: record(1)})
        commit(storage, {oid: record(2)}, {oid: t1})
        with pytest.raises(ConflictError):
            commit(storage, {oid: record(3)}, {oid: t1})
    finally:
        storage.close()


@pytest.mark.parametrize("keep_history", [True, False])
def test_two_writers_creating_the_same_oid_conflict(path, keep_history):
    # Two processes creating the root at once both store oid 0 as new: the second
    # commit's insert meets the first one's row and must fail, leaving it intact.
    first = SQLiteStorage(str(path), keep_history=keep_history)
    second = SQLiteStorage(str(path), keep_history=keep_history)
    try:
        other = second.new_oid()
        tid = commit(first, {z64: record("first root")})
        txn = TransactionMetaData()
        second.tpc_begin(txn)
        second.store(other, z64, record("other"), "", txn)
        second.store(z64, z64, record("second root"), "", txn)
        with pytest.raises(ConflictError) as caught:
            second.tpc_vote(txn)
        second.tpc_abort(txn)
        assert caught.value.oid == z64 and caught.value.serials == (tid, z64)
        second.sync()
        assert second.load(z64) == (record("first root"), tid)
        with pytest.raises(ObjectNotFoundError):
            second.load(other)
        assert second.lastTransaction() == tid
    finally:
        first.close()
        second.close()


# -- invalidations between storage objects --------------------------------------------------


def test_sync_reports_commits_of_another_storage_object_in_order(path, storage):
    watcher = SQLiteStorage(str(path))
    try:
        recorder = Recorder(watcher)
        watcher.registerDB(recorder)
        a, b = storage.new_oid(), storage.new_oid()
        t1 = commit(storage, {a: record(1), b: record(1)})
        t2 = commit(storage, {b: record(2)}, {b: t1})
        assert watcher.lastTransaction() < t1  # nothing is seen before sync
        watcher.sync()
        assert recorder.events == [("invalidate", t1, sorted([a, b])), ("invalidate", t2, [b])]
        assert watcher.lastTransaction() == t2
        watcher.sync()  # nothing new: nothing reported
        assert len(recorder.events) == 2
    finally:
        watcher.close()


def test_a_commit_reports_earlier_commits_of_others_first(path, storage):
    """A storage object that commits after another one did, without syncing, still tells
    its database about the other commit first, then calls back for its own."""
    other = SQLiteStorage(str(path))
    try:
        recorder = Recorder(storage)
        storage.registerDB(recorder)
        a, b = storage.new_oid(), storage.new_oid()
        theirs = commit(other, {a: record("theirs")})
        txn = TransactionMetaData()
        storage.tpc_begin(txn)
        storage.store(b, z64, record("mine"), "", txn)
        storage.tpc_vote(txn)
        mine = storage.tpc_finish(txn, lambda tid: recorder.events.append(("mine", tid)))
        assert theirs < mine
        assert recorder.events == [("invalidate", theirs, [a]), ("mine", mine)]
        storage.sync()
        assert len(recorder.events) == 2  # its own commit is not reported again
    finally:
        other.close()


class _PausedAfterFirstRow:
    """The connection ``sync`` reads ``PRAGMA data_version`` on, whose statements wait,
    stepped to their first row and so still running (holding a read transaction open on
    that connection), until ``resume`` is set: the moment a thread switch can leave them.
    At most two seconds: a commit that waits for the sync (its lock) goes on after them."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self.paused = threading.Event()
        self.resume = threading.Event()

    def execute(self, sql: str, params=()) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, params)
        self.paused.set()
        self.resume.wait(2)
        return cursor


def test_a_commit_is_not_refused_while_another_thread_syncs(path, storage):
    """A sync in one thread leaves no read transaction, however briefly, on the connection
    that commits: SQLite refuses at once (SQLITE_BUSY_SNAPSHOT, ``database is locked``,
    without waiting) to begin writing on a connection whose read transaction is older than
    another's commit."""
    other = SQLiteStorage(str(path))
    try:
        a, b = storage.new_oid(), storage.new_oid()
        pausing = storage._versioned = _PausedAfterFirstRow(storage._versioned)
        syncing = threading.Thread(target=storage.sync)
        syncing.start()
        try:
            assert pausing.paused.wait(60)
            theirs = commit(other, {a: record("theirs")})  # after the sync's read began
            mine = commit(storage, {b: record("mine")})
        finally:
            pausing.resume.set()
            syncing.join()
        assert theirs < mine
        assert storage.load(b) == (record("mine"), mine)
        other.sync()
        assert other.load(b) == (record("mine"), mine)
    finally:
        other.close()


def test_processes_share_one_file(path, storage):
    """Two other processes commit to the file at the same time as this one: every oid is
    unique, every commit lands, and this storage object hears about all of them."""
    recorder = Recorder(storage)
    storage.registerDB(recorder)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = {sys.path!r}
        from amphora.storage.sqlite import SQLiteStorage
        from amphora.storage.base import TransactionMetaData
        from amphora.utils import z64
        storage = SQLiteStorage({str(path)!r})
        oids = []
        for i in range(20):
            txn = TransactionMetaData()
            storage.tpc_begin(txn)
            for j in range(10):
                oid = storage.new_oid()
                oids.append(oid)
                storage.store(oid, z64, b"record", "", txn)
            storage.tpc_vote(txn)
            storage.tpc_finish(txn)
        storage.close()
        print(",".join(oid.hex() for oid in oids))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    mine = [storage.new_oid() for _ in range(50)]
    commit(storage, {oid: b"record" for oid in mine})
    theirs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        theirs += [bytes.fromhex(h) for h in out.strip().split(",")]
    everything = mine + theirs
    assert len(set(everything)) == len(everything) == 450
    storage.sync()
    reported = [event[1] for event in recorder.events]
    assert reported == sorted(reported) and len(reported) == 40
    assert {oid for event in recorder.events for oid in event[2]} == set(theirs)
    assert all(storage.load(oid)[0] == b"record" for oid in everything)


# -- pack -----------------------------------------------------------------------------------


def test_pack_drops_old_revisions_and_unreachable_objects(storage):
    root, a, b, lost = z64, storage.new_oid(), storage.new_oid(), storage.new_oid()
    t1 = commit(storage, {root: record("root", a), a: record(1, b), b: record("b"),
                          lost: record("lost")})
    t2 = commit(storage, {a: record(2, b)}, {a: t1})
    time.sleep(0.01)
    pack_time = time.time()
    time.sleep(0.01)
    young = storage.new_oid()  # unreachable, but written after the pack time: it stays
    t3 = commit(storage, {young: record("young"), a: record(3, b)}, {a: t2})
    storage.pack(pack_time)

    assert storage.load(root) == (record("root", a), t1)
    assert storage.load(b) == (record("b"), t1)
    with pytest.raises(ObjectNotFoundError):
        storage.load(lost)
    with pytest.raises(ObjectNotFoundError):
        storage.loadSerial(a, t1)  # replaced before the pack time
    assert storage.loadSerial(a, t2) == record(2, b)  # current at the pack time
    assert storage.load(a) == (record(3, b), t3)
    assert storage.load(young) == (record("young"), t3)
    assert len(storage) == 4
    assert storage.lastTransaction() == t3


def test_pack_keeps_what_a_commit_during_pack_refers_to(storage, monkeypatch):
    """An object unreachable when pack walked the graph, but referred to again by a commit
    that landed before pack deleted anything, is kept."""
    root, orphan = z64, storage.new_oid()
    t1 = commit(storage, {root: record("root"), orphan: record("orphan")})
    time.sleep(0.01)
    walk = SQLiteStorage._collect_garbage

    def walk_then_commit(self, reader, writer, cutoff, refs_of):
        committed = []

        def references(data, found=None):  # the first record read: the root, in the walk
            if not committed:
                committed.append(commit(storage, {root: record("root", orphan)}, {root: t1}))
            return refs_of(data, found)
        walk(self, reader, writer, cutoff, references)
        assert committed

    monkeypatch.setattr(SQLiteStorage, "_collect_garbage", walk_then_commit)
    storage.pack(time.time())
    assert storage.load(orphan)[0] == record("orphan")


def test_pack_trims_transactions_without_records_and_others_are_told(path, storage):
    watcher = SQLiteStorage(str(path))
    try:
        recorder = Recorder(watcher)
        watcher.registerDB(recorder)
        oid = storage.new_oid()
        t1 = commit(storage, {z64: record("root", oid), oid: record(1)})
        t2 = commit(storage, {oid: record(2)}, {oid: t1})
        t3 = commit(storage, {oid: record(3)}, {oid: t2})
        storage.pack(time.time() + 10)
        assert [txn.tid for txn in storage.iterator()] == [t1, t3]
        watcher.sync()  # t2's oids can no longer be read: the whole cache is dropped
        assert recorder.events[0] == ("invalidateCache",)
        assert [event[1] for event in recorder.events[1:]] == [t1, t3]
        assert watcher.lastTransaction() == t3
    finally:
        watcher.close()


# -- read snapshots -------------------------------------------------------------------------


def test_a_thread_reads_what_was_reported_to_its_database(path, storage):
    """Loads reuse a read snapshot between calls; it is renewed as soon as the storage
    reports a newer commit, so a load at the new ``lastTransaction()`` never misses it."""
    storage.snapshot_age = 60  # not renewed for age during the test
    oid = storage.new_oid()
    t1 = commit(storage, {oid: record(1)})
    other = SQLiteStorage(str(path))
    try:
        assert storage.loadBefore(oid, after(t1)) == (record(1), t1, None)  # snapshot taken
        t2 = commit(other, {oid: record(2)}, {oid: t1})
        assert storage.loadBefore(oid, after(t1)) == (record(1), t1, None)  # same snapshot
        assert storage.load(oid) == (record(2), t2)  # past lastTransaction(): read fresh
        storage.sync()
        assert storage.lastTransaction() == t2
        assert storage.loadBefore(oid, after(t2)) == (record(2), t2, None)
        assert storage.loadBefore(oid, after(t1)) == (record(1), t1, t2)
    finally:
        other.close()


def test_an_idle_snapshot_is_ended_so_the_log_can_be_recycled(storage):
    storage.snapshot_age = 0.05
    tid = commit(storage, {z64: record("root")})
    storage.loadBefore(z64, after(tid))
    reader = storage._reader()
    assert reader.conn.in_transaction  # kept for the next load ...
    deadline = time.monotonic() + 5
    while reader.conn.in_transaction and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not reader.conn.in_transaction  # ... but not for long


@pytest.mark.parametrize("given, level", [(None, 2), ("full", 2), ("normal", 1)])
def test_commits_are_synced_to_disk_unless_normal_is_asked_for(path, given, level):
    """``synchronous=full`` by default: a commit that returned survives a power loss
    (SQLite's levels: 1 NORMAL, 2 FULL)."""
    options = {} if given is None else {"synchronous": given}
    storage = SQLiteStorage(str(path), **options)
    try:
        writer = storage._connect(read_only=False)
        try:
            assert writer.execute("PRAGMA synchronous").fetchone()[0] == level
        finally:
            writer.close()
    finally:
        storage.close()
