"""The PostgreSQL storage: its tables, its modes, and what it promises beyond the shared
storage contract (processes sharing a database, pack done in SQL, notifications, errors).

Each test works in a schema of its own in the test server's database. Records here are
built by hand (two pickles, references as ``(oid, None)``, classes that do not exist), so
the tests need no database object and no application class, and show that the storage
never imports one.
"""
from __future__ import annotations

import io
import pickle
import socket
import subprocess
import sys
import textwrap
import time
import threading

import pgserver
import pytest
from records import (ITEM, Recorder, commit, commit_during, indexed_items, make_record,
                     queries_sent)

import amphora
from amphora.errors import (ConflictError, InvalidURIError, ObjectNotFoundError,
                            ReadOnlyError, StorageError, StorageFormatError)
from amphora.storage.base import TransactionMetaData
from amphora.storage.undo import undo_id
from amphora.storage.postgresql import (SCHEMA_VERSION, PostgreSQLConnectionError,
                                        PostgreSQLStorage)
from amphora.utils import p64, u64, z64

# -- helpers --------------------------------------------------------------------------------


def record(value=None, *refs: bytes) -> bytes:
    return make_record("no_such_module", value, *refs)


@pytest.fixture
def server() -> pgserver.PostgresServer:
    return pgserver.require()


@pytest.fixture
def schema(server, request) -> str:
    name = pgserver.schema_for(request.node.nodeid)
    server.remember_schema(name)
    return name


@pytest.fixture
def sql(server, schema):
    """Run SQL in the test's schema (as another client of the database would)."""
    conn = server.connect()
    conn.execute(f"SET search_path = {schema}")

    def run(statement: str, params=()):
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else None
    yield run
    conn.close()


@pytest.fixture
def open_storage(server, schema):
    opened = []

    def open_storage(**options):
        storage = PostgreSQLStorage(server.dsn(), schema=schema, **options)
        opened.append(storage)
        return storage
    yield open_storage
    for storage in opened:
        storage.close()


@pytest.fixture
def storage(open_storage):
    return open_storage()


def tables(server, schema) -> list[str]:
    with server.connect() as conn:
        return sorted(name for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n"
            " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'S')",
            (schema,)))


# -- the schema -----------------------------------------------------------------------------


def test_a_new_schema_says_what_it_is(storage, sql, server, schema):
    assert dict(sql("SELECT key, value FROM amphora_meta")) == {
        "format": "amphora-postgresql", "schema_version": str(SCHEMA_VERSION),
        "keep_history": "1", "packed_through": "0"}
    assert tables(server, schema) == ["amphora_meta", "blob_chunk", "objects", "oid_seq",
                                      "replaced", "revisions", "transactions"]


def test_oids_and_tids_are_stored_as_bigint_and_records_verbatim(storage, sql):
    data = record("x")
    tid = commit(storage, {p64(7): data})
    assert sql("SELECT oid, tid, data FROM objects") == [(7, u64(tid), data)]


@pytest.mark.parametrize("setup, complaint", [
    (["CREATE TABLE customers (id int)"], "not an amphora database"),
    (["CREATE TABLE amphora_meta (key text PRIMARY KEY, value text NOT NULL)",
      "INSERT INTO amphora_meta VALUES ('format', 'something-else')"], "something-else"),
    (["CREATE TABLE amphora_meta (key text PRIMARY KEY, value text NOT NULL)",
      "INSERT INTO amphora_meta VALUES ('format', 'amphora-postgresql'),"
      " ('schema_version', '99'), ('keep_history', '1')"], "schema version '99'"),
], ids=["foreign-tables", "other-format", "newer-version"])
def test_a_schema_that_is_not_a_usable_amphora_database_is_refused_untouched(
        server, schema, sql, setup, complaint):
    sql(f"CREATE SCHEMA {schema}")
    for statement in setup:
        sql(statement)
    before = tables(server, schema)
    contents = sql("SELECT * FROM amphora_meta") if "amphora_meta" in before else None
    with pytest.raises(StorageFormatError, match=complaint):
        PostgreSQLStorage(server.dsn(), schema=schema)
    assert tables(server, schema) == before
    if contents is not None:
        assert sql("SELECT * FROM amphora_meta") == contents


@pytest.mark.parametrize("options", [{"read_only": True}, {"create": False}])
def test_a_missing_schema_is_only_created_when_allowed(server, schema, options):
    with pytest.raises(StorageFormatError, match="no amphora database"):
        PostgreSQLStorage(server.dsn(), schema=schema, **options)
    assert tables(server, schema) == []


def test_the_history_mode_is_fixed_when_the_schema_is_created(open_storage):
    open_storage(keep_history=False).close()
    with pytest.raises(StorageFormatError, match="history-free"):
        open_storage(keep_history=True)
    assert open_storage().keep_history is False


def test_read_only_storage_reads_and_refuses_writes(open_storage):
    storage = open_storage()
    commit(storage, {z64: record("root")})
    reader = open_storage(read_only=True)
    assert reader.load(z64)[0] == record("root")
    with pytest.raises(ReadOnlyError):
        reader.tpc_begin(TransactionMetaData())
    with pytest.raises(ReadOnlyError):
        reader.new_oid()


# -- several writers ------------------------------------------------------------------------


def test_two_writers_creating_the_same_oid_conflict(open_storage):
    first, second = open_storage(), open_storage()
    txn = TransactionMetaData()
    second.tpc_begin(txn)
    second.store(z64, z64, record("second"), "", txn)
    commit(first, {z64: record("first")})
    with pytest.raises(ConflictError):
        second.tpc_vote(txn)
    second.tpc_abort(txn)
    assert second.load(z64)[0] == record("first")


def test_a_stale_serial_is_a_conflict_and_writes_nothing(open_storage):
    first, second = open_storage(), open_storage()
    tid = commit(first, {z64: record(1)})
    commit(first, {z64: record(2)}, {z64: tid})
    last = second.lastTransaction()
    with pytest.raises(ConflictError):
        commit(second, {z64: record(3), p64(5): record(5)}, {z64: tid})
    assert second.load(z64)[0] == record(2)
    with pytest.raises(ObjectNotFoundError):
        second.load(p64(5))
    second.sync()
    assert second.lastTransaction() > last


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
def test_a_database_whose_transactions_default_to_a_snapshot_still_finds_conflicts(
        server, schema, isolation):
    """A writer waits for another's commit lock, then checks what was committed while it
    waited: whatever the database's default isolation, a commit's statements see every
    commit made before its lock (else it would write over one, or reuse a tid)."""
    import time
    database = "amphora_" + isolation.replace(" ", "_")
    admin = server.connect()
    if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchall():
        admin.execute(f"CREATE DATABASE {database}")
    admin.execute(f"ALTER DATABASE {database} SET default_transaction_isolation = '{isolation}'")
    first = PostgreSQLStorage(server.dsn(database), schema=schema)
    second = PostgreSQLStorage(server.dsn(database), schema=schema)
    try:
        tid = commit(first, {z64: record(1)})
        txn = TransactionMetaData()
        first.tpc_begin(txn)
        first.store(z64, tid, record(2), "", txn)
        first.tpc_vote(txn)  # holds the commit lock
        outcome = []

        def stale_commit():
            stale = TransactionMetaData()
            second.tpc_begin(stale)
            second.store(z64, tid, record(3), "", stale)
            try:
                second.tpc_vote(stale)
                outcome.append(second.tpc_finish(stale))
            except Exception as exc:  # noqa: BLE001 - asserted below
                second.tpc_abort(stale)
                outcome.append(exc)
        thread = threading.Thread(target=stale_commit)
        thread.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        deadline = time.monotonic() + 30
        while admin.execute(waiting).fetchone()[0] == 0:  # until its vote waits for the lock
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        finished = first.tpc_finish(txn)
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], ConflictError), outcome
        assert second.load(z64) == (record(2), finished)
        assert commit(second, {z64: record(4)}, {z64: finished}) > finished
    finally:
        first.close()
        second.close()
        admin.close()


def test_the_connection_strings_own_options_are_kept(server, schema):
    storage = PostgreSQLStorage(server.dsn() + " options='-c statement_timeout=4321'",
                                schema=schema)
    try:
        commit(storage, {z64: record(1)})
        conn = storage._connect(autocommit=True)
        try:
            settings = conn.execute("SELECT current_setting('statement_timeout'),"
                                    " current_setting('search_path'),"
                                    " current_setting('transaction_isolation')").fetchone()
        finally:
            conn.close()
        assert settings == ("4321ms", schema, "read committed")
    finally:
        storage.close()


def test_new_oids_are_unique_across_storage_objects(open_storage):
    first, second = open_storage(), open_storage()
    oids = first.new_oids(100) + second.new_oids(100) + [first.new_oid(), second.new_oid()]
    assert len(set(oids)) == len(oids) and z64 not in oids


def test_oids_stored_without_new_oid_are_not_handed_out_later(open_storage):
    storage = open_storage()
    commit(storage, {p64(5000): record()})
    assert all(u64(oid) > 5000 for oid in open_storage().new_oids(10))


def test_sync_reports_commits_of_another_storage_object_in_order(open_storage):
    mine, theirs = open_storage(), open_storage()
    recorder = Recorder(mine)
    mine.registerDB(recorder)
    tids = [commit(theirs, {p64(n): record(n)}) for n in (1, 2, 3)]
    mine.sync()
    assert recorder.events == [("invalidate", tid, [p64(n)]) for tid, n in zip(tids, (1, 2, 3))]
    assert mine.lastTransaction() == tids[-1]
    mine.sync()
    assert len(recorder.events) == 3


def counted_loads(monkeypatch, storage) -> list[bytes]:
    """The oids ``storage`` reads from the server for ``loadBefore`` from now on (the
    record cache's misses)."""
    loads: list[bytes] = []
    load_before = storage._load_before
    monkeypatch.setattr(storage, "_load_before",
                        lambda oid, tid: loads.append(oid) or load_before(oid, tid))
    return loads


def test_sync_brings_the_new_records_of_small_commits_to_the_cache(open_storage, monkeypatch):
    """Another process's commit of a few small records: the sync that reports it brings
    those of them the cache held, so that the next load asks nothing (a hot spot's
    counter); the others are not kept. Each stays right for older snapshots."""
    mine, theirs = open_storage(), open_storage()
    mine.registerDB(Recorder(mine))
    first = commit(theirs, {p64(1): record(1), p64(2): record(2)})
    mine.sync()
    assert mine.loadBefore(p64(1), p64(u64(first) + 1)) == (record(1), first, None)
    second = commit(theirs, {p64(1): record(10), p64(2): record(20)},
                    {p64(1): first, p64(2): first})
    third = commit(theirs, {p64(1): record(11)}, {p64(1): second})
    loads = counted_loads(monkeypatch, mine)
    mine.sync()
    now = p64(u64(third) + 1)
    assert mine.loadBefore(p64(1), now) == (record(11), third, None)
    assert loads == []
    assert mine.loadBefore(p64(2), now) == (record(20), second, None)
    assert mine.loadBefore(p64(1), third) == (record(10), second, third)
    assert loads == [p64(2), p64(1)]  # (one revision of each is kept: the newest)


@pytest.mark.parametrize("change", ["many objects", "a large record"])
def test_sync_leaves_the_records_of_large_commits_to_the_loads(open_storage, monkeypatch,
                                                               change):
    mine, theirs = open_storage(), open_storage()
    mine.registerDB(Recorder(mine))
    first = commit(theirs, {p64(1): record(1)})
    mine.sync()
    assert mine.loadBefore(p64(1), p64(u64(first) + 1)) == (record(1), first, None)
    new = record("x" * 5000) if change == "a large record" else record(2)
    others = {p64(n): record(n) for n in range(100, 140)} if change == "many objects" else {}
    second = commit(theirs, {p64(1): new, **others}, {p64(1): first})
    loads = counted_loads(monkeypatch, mine)
    mine.sync()
    assert mine.loadBefore(p64(1), p64(u64(second) + 1)) == (new, second, None)
    assert loads == [p64(1)]


def test_a_sessions_first_sync_asks_for_the_commits_only(open_storage, monkeypatch):
    """On a new server session, planning the sync's statement with records costs more
    than the records save: a storage's first sync asks for the commits, the next ones
    for the records too."""
    from amphora.storage.postgresql import storage as module
    theirs = open_storage()
    first = commit(theirs, {p64(1): record(1)})
    mine = open_storage()
    mine.registerDB(Recorder(mine))
    assert mine.loadBefore(p64(1), p64(u64(first) + 1)) == (record(1), first, None)
    asked: list[str] = []
    run = module.wire.run
    monkeypatch.setattr(module.wire, "run", lambda conn, statements, *args, **options:
                        asked.extend(sql for sql, _ in statements)
                        or run(conn, statements, *args, **options))
    loads = counted_loads(monkeypatch, mine)
    second = commit(theirs, {p64(1): record(2)}, {p64(1): first})
    mine.sync()
    assert mine.loadBefore(p64(1), p64(u64(second) + 1)) == (record(2), second, None)
    third = commit(theirs, {p64(1): record(3)}, {p64(1): second})
    mine.sync()
    assert mine.loadBefore(p64(1), p64(u64(third) + 1)) == (record(3), third, None)
    assert [sql for sql in asked if "FROM transactions" in sql] == [
        module._COMMITS_SINCE, module._CHANGES_SINCE]
    assert loads == [p64(1)]  # (the third's record came with the sync)


def test_a_database_keeps_the_root_it_read_when_it_opened(server, schema, monkeypatch):
    uri = server.uri(schema=schema)
    with amphora.open(uri) as db:
        with db.transaction() as conn:
            conn.root()["x"] = 1
    with amphora.open(uri) as db:
        loads = counted_loads(monkeypatch, db.storage)
        with db.transaction() as conn:
            assert conn.root()["x"] == 1
        assert loads == []


def test_the_commits_since_the_last_seen_are_found_by_index_before_any_analyze(open_storage,
                                                                                 sql):
    """Sync and the statement read under the commit lock look for the commits after the
    last one seen: by the index, also on a table PostgreSQL has no statistics of yet (a
    new database, where "tid > x" alone is estimated a third of the rows: a scan of the
    whole table at every sync)."""
    from amphora.storage.postgresql import storage as module
    open_storage()
    sql("INSERT INTO transactions (tid, username, description, extension, oids)"
        " SELECT n, '', '', '', '' FROM generate_series(1, 20000) AS n")
    params = {"l": 19990, "k": 256, "s": 4096, "o": "{}", "t": "{}", "m": "{}",
              "mo": "{}", "mt": "{}"}
    for statement in (module._COMMITS_SINCE, module._CHANGES_SINCE, module._UNDER_LOCK,
                      *module._UNDER_LOCK_WITH_STATES.values()):
        plan = "\n".join(row[0] for row in sql("EXPLAIN " + statement, params))
        assert "transactions_pkey" in plan and "Seq Scan on transactions" not in plan, plan


def test_commits_and_syncs_plan_their_statements_once_a_session(open_storage, sql):
    """On a database with a long history, PostgreSQL would plan the statements of a
    commit and of a sync anew at every execution (the plan for the values at hand looks
    cheaper): a tenth to a third of a millisecond of the server's time each."""
    open_storage()
    sql("INSERT INTO revisions (oid, tid, end_tid, data, refs)"
        " SELECT 1000000 + n, n, n + 1, '', NULL FROM generate_series(1, 100000) AS n")
    sql("INSERT INTO transactions (tid, username, description, extension, oids)"
        " SELECT n, '', '', '', '' FROM generate_series(1, 100000) AS n")
    sql("ANALYZE")
    storage = open_storage()
    storage.registerDB(Recorder(storage))
    serial = z64
    for n in range(8):
        serial = commit(storage, {p64(1): record(n)}, {p64(1): serial})
        storage.sync()
    for conn in (storage._writer, storage._poller):
        plans = conn.execute("SELECT statement, generic_plans, custom_plans"
                             " FROM pg_prepared_statements WHERE statement LIKE '%$1%'"
                             ).fetchall()
        conn.rollback()
        assert plans and all(custom == 0 and generic >= 1 for _, generic, custom in plans), plans


def test_only_the_sessions_of_commits_and_syncs_force_generic_plans(open_storage):
    """Reads (and with them search) keep PostgreSQL's own choice of plans."""
    storage = open_storage()
    commit(storage, {p64(1): record(1)})
    storage.sync()
    assert storage._query("SHOW plan_cache_mode") == [("auto",)]
    for conn in (storage._writer, storage._poller):
        assert conn.execute("SHOW plan_cache_mode").fetchall() == [("force_generic_plan",)]
        conn.rollback()


def test_a_commits_session_keeps_settings_named_amphora(open_storage):
    """What README says of the sessions: a commit's session keeps settings of its own,
    named amphora.*, and no other session has them."""
    storage = open_storage()
    commit(storage, {p64(1): record(1)})
    storage.sync()
    named = "SELECT current_setting('amphora.go', true)"
    found = storage._writer.execute(named).fetchall()
    storage._writer.rollback()
    assert found == [("on",)]
    assert storage._query(named) == [(None,)]


def test_a_commit_reports_earlier_commits_of_others_first(open_storage):
    mine, theirs = open_storage(), open_storage()
    recorder = Recorder(mine)
    mine.registerDB(recorder)
    their_tid = commit(theirs, {p64(1): record()})
    my_tid = commit(mine, {p64(2): record()})
    assert recorder.events == [("invalidate", their_tid, [p64(1)])]
    assert their_tid < my_tid == mine.lastTransaction()


@pytest.mark.timeout(300)
def test_processes_sharing_one_database_keep_a_hot_counter_exact(server, schema):
    """Three processes increment one counter (the root) at once, retrying conflicts: no
    increment is lost or counted twice."""
    uri = server.uri(schema=schema)
    with amphora.open(uri) as db:
        with db.transaction() as conn:
            conn.root()["counter"] = 0
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = {sys.path!r}
        import transaction, amphora
        db = amphora.open({uri!r})
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        retried = 0
        for i in range(30):
            for n, attempt in enumerate(tm.attempts(10_000)):
                retried += n > 0
                with attempt:
                    conn.root()["counter"] += 1
        conn.close()
        db.close()
        print(retried)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    for proc in procs:
        proc.communicate(timeout=240)
        assert proc.returncode == 0
    with amphora.open(uri) as db:
        with db.transaction() as conn:
            assert conn.root()["counter"] == 90


# -- pack -----------------------------------------------------------------------------------


def test_references_are_stored_at_vote(storage, sql):
    commit(storage, {z64: record("root", p64(1), p64(2)), p64(1): record("leaf"),
                     p64(2): b"not a pickle"})
    refs = dict(sql("SELECT oid, refs FROM objects"))
    assert refs == {0: [1, 2], 1: [], 2: None}


def graph(storage) -> bytes:
    """root -> 1 -> 2; 3 -> 4 unreachable; 5 <-> 6 an unreachable cycle. Returns the tid."""
    return commit(storage, {
        z64: record("root", p64(1)), p64(1): record(1, p64(2)), p64(2): record(2),
        p64(3): record(3, p64(4)), p64(4): record(4),
        p64(5): record(5, p64(6)), p64(6): record(6, p64(5))})


@pytest.mark.parametrize("keep_history", [True, False])
def test_pack_keeps_what_the_root_reaches_and_drops_the_rest(open_storage, keep_history):
    storage = open_storage(keep_history=keep_history)
    graph(storage)
    # the root lets go of 1 (and so of 2) and takes 3 (and so 4)
    tid = commit(storage, {z64: record("root", p64(3))}, {z64: storage.load(z64)[1]})
    storage.pack(tid_time_after(tid))
    for oid in (0, 3, 4):
        storage.load(p64(oid))
    for oid in (1, 2, 5, 6):
        with pytest.raises(ObjectNotFoundError):
            storage.load(p64(oid))
    assert len(storage) == 3


def tid_time_after(tid: bytes) -> float:
    from amphora.utils import tid_time
    return tid_time(tid) + 1


def test_pack_drops_old_revisions_but_keeps_the_current_ones(storage):
    first = commit(storage, {z64: record("one")})
    second = commit(storage, {z64: record("two")}, {z64: first})
    storage.pack(tid_time_after(second))
    assert storage.load(z64) == (record("two"), second)
    with pytest.raises(ObjectNotFoundError):
        storage.loadSerial(z64, first)
    assert [entry["tid"] for entry in storage.history(z64, 10)] == [second]


def test_pack_scans_records_written_without_references(storage):
    """A record whose references could not be read at vote is read at pack with the
    ``referencesf`` given, so what it refers to is not taken for garbage."""
    commit(storage, {z64: record("root", p64(1)), p64(1): b"opaque:2", p64(2): record(2),
                     p64(3): record(3)})

    def references(data: bytes) -> list[bytes]:
        if data.startswith(b"opaque:"):
            return [p64(int(data[7:]))]
        from amphora.serialize import references as pickle_references
        return pickle_references(data)
    storage.pack(tid_time_after(storage.lastTransaction()), references)
    storage.load(p64(2))
    with pytest.raises(ObjectNotFoundError):
        storage.load(p64(3))


def test_pack_keeps_what_a_commit_during_pack_refers_to(open_storage, monkeypatch):
    """Garbage found by the walk that a commit made meanwhile refers to again stays, with
    what it reaches: pack checks again under the commit lock."""
    storage, other = open_storage(), open_storage()
    graph(storage)
    cls = type(storage)
    lock_sql = cls._commit_lock_sql.fget(storage)

    def commit_then_lock(self):
        if self is storage:  # after the walk, before pack takes the lock
            commit(other, {p64(7): record(7, p64(3))})
        return lock_sql
    monkeypatch.setattr(cls, "_commit_lock_sql", property(commit_then_lock))
    storage.pack(tid_time_after(storage.lastTransaction()))
    monkeypatch.undo()
    for oid in (3, 4, 7):
        storage.load(p64(oid))
    for oid in (5, 6):
        with pytest.raises(ObjectNotFoundError):
            storage.load(p64(oid))


def test_pack_trims_transactions_without_records_and_others_are_told(open_storage):
    storage, other = open_storage(), open_storage()
    recorder = Recorder(other)
    other.registerDB(recorder)
    first = commit(storage, {z64: record("one")})
    commit(storage, {z64: record("two")}, {z64: first})
    last = commit(storage, {p64(1): record("x")})
    storage.pack(tid_time_after(last))
    assert [t.tid for t in storage.iterator()][-1] == last
    assert first not in [t.tid for t in storage.iterator()]
    other.sync()
    assert recorder.events[0] == ("invalidateCache",)
    assert other.lastTransaction() == last


# -- notifications --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_commit_elsewhere_wakes_poll(open_storage):
    waiting, writer = open_storage(), open_storage()
    recorder = Recorder(waiting)
    waiting.registerDB(recorder)
    woke: list[bool] = []
    thread = threading.Thread(target=lambda: woke.append(waiting.poll(timeout=60)))
    thread.start()
    tid = commit(writer, {p64(1): record()})
    thread.join()
    assert woke == [True]
    assert recorder.events == [("invalidate", tid, [p64(1)])]
    assert waiting.lastTransaction() == tid


def test_poll_reports_earlier_commits_at_once_and_false_when_none_come(open_storage):
    waiting, writer = open_storage(), open_storage()
    tid = commit(writer, {p64(1): record()})
    assert waiting.poll(timeout=60) is True
    assert waiting.lastTransaction() == tid
    assert waiting.poll(timeout=0.05) is False


def test_each_commit_notifies_its_tid(storage, server, schema):
    with server.connect() as listener:
        listener.execute(f"LISTEN amphora_{schema}")
        tid = commit(storage, {p64(1): record()})
        notes = list(listener.notifies(timeout=60, stop_after=1))
    assert [(note.channel, note.payload) for note in notes] == [
        (f"amphora_{schema}", str(u64(tid)))]


# -- URIs and errors ------------------------------------------------------------------------


def test_a_uri_opens_the_storage_with_its_options(server, schema):
    storage = amphora.uri.open_storage(server.uri(schema=schema, keep_history="false"))
    try:
        assert isinstance(storage, PostgreSQLStorage)
        assert storage.keep_history is False and storage.schema == schema
    finally:
        storage.close()
    storage = amphora.uri.open_storage(
        server.uri(schema=schema).replace("postgresql://", "postgres://"))
    storage.close()


@pytest.mark.parametrize("query, complaint", [
    ("keep_history=maybe", "keep_history"),
    ("schema=Not-A-Name", "schema"),
    ("colour=blue", "colour"),
    ("connect_timeout=-1", "connect_timeout"),
])
def test_bad_uri_options_are_invalid_uri_errors(server, query, complaint):
    with pytest.raises(InvalidURIError, match=complaint):
        amphora.uri.open_storage(server.uri() + "?" + query)


def test_a_bad_port_is_an_invalid_uri_error():
    with pytest.raises(InvalidURIError, match="port"):
        amphora.uri.open_storage("postgresql://user@localhost:http/db")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def test_an_unreachable_server_is_a_clear_error_without_the_password():
    port = _closed_port()
    with pytest.raises(PostgreSQLConnectionError) as caught:
        amphora.uri.open_storage(f"postgresql://someone:s3cret@127.0.0.1:{port}/appdb")
    message = str(caught.value)
    assert f"127.0.0.1:{port}/appdb" in message and "someone" in message
    assert "s3cret" not in message
    assert isinstance(caught.value, StorageError)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_missing_database_is_a_clear_error(server):
    uri = server.uri().rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(PostgreSQLConnectionError, match="no_such_db"):
        amphora.uri.open_storage(uri)


def test_an_unknown_user_is_a_clear_error(server):
    uri = server.uri().replace("postgres@", "nobody:pw@")
    with pytest.raises(PostgreSQLConnectionError, match="nobody") as caught:
        amphora.uri.open_storage(uri)
    assert ":pw" not in str(caught.value)


def test_a_dropped_schema_is_a_storage_error(storage, sql, schema):
    commit(storage, {z64: record()})
    sql(f"DROP SCHEMA {schema} CASCADE")
    with pytest.raises(StorageFormatError):
        storage.load(z64)


# -- the JSON mirror's layout -----------------------------------------------------------------
# The documents are columns of `objects`, read through the view `amphora_objects` (what
# tests/search checks on every storage works on it unchanged).

def thing(value) -> bytes:
    """A record of class ``no_such_module.Thing`` (named as pickle names a class, which the
    JSON mapping reads) whose state is ``{"value": value}``."""
    file = io.BytesIO()
    pickle.Pickler(file, 3).dump({"value": value})
    return b"\x80\x03cno_such_module\nThing\nq\x00." + file.getvalue()


def columns(sql, table: str) -> list[str]:
    return [name for (name,) in sql(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
        (table,))]


def fillfactor(sql) -> list:
    return sql("SELECT reloptions FROM pg_class WHERE oid = 'objects'::regclass")[0][0]


def test_the_mirror_is_columns_of_the_records_rows_read_through_a_view(storage, sql, server,
                                                                        schema):
    first = commit(storage, {z64: thing("root"), p64(1): thing("one")})
    assert storage.create_mirror() == 2
    assert columns(sql, "objects") == ["oid", "tid", "data", "refs", "class_name", "state",
                                       "state_tid"]
    assert columns(sql, "amphora_objects") == ["oid", "tid", "class_name", "state"]
    assert "amphora_objects" not in tables(server, schema)  # a view, not a table
    assert fillfactor(sql) == ["fillfactor=60"]
    second = commit(storage, {p64(1): thing("two")}, {p64(1): first})
    assert sql("SELECT tid, state_tid, class_name, state FROM objects WHERE oid = 1") == [
        (u64(second), u64(second), "no_such_module.Thing", {"value": "two"})]
    assert columns(sql, "revisions") == ["oid", "tid", "end_tid", "data", "refs"]
    with pytest.raises(Exception, match="read-only"):  # it would write the records' rows
        sql("DELETE FROM amphora_objects")
    assert sql("SELECT count(*) FROM objects") == [(2,)]
    storage.drop_mirror()
    assert columns(sql, "objects") == ["oid", "tid", "data", "refs"]
    assert fillfactor(sql) == ["fillfactor=80"]
    assert sql("SELECT count(*) FROM pg_class WHERE relname = 'amphora_objects'"
               " AND relnamespace = current_schema()::regnamespace") == [(0,)]
    commit(storage, {p64(1): thing("three")}, {p64(1): second})  # no documents now
    assert storage.load(p64(1))[0] == thing("three")


def test_a_follow_mirror_shows_the_tid_of_each_documents_record(storage, sql):
    first = commit(storage, {z64: thing("root")})
    storage.create_mirror(mode="follow")
    second = commit(storage, {z64: thing("new root")}, {z64: first})
    rows = "SELECT tid, state->>'value' FROM amphora_objects"
    assert sql(rows) == [(u64(first), "root")]  # the commit wrote no document
    assert storage.follow_mirror() == 1
    assert sql(rows) == [(u64(second), "new root")]


def test_a_where_on_an_indexed_expression_uses_the_index(storage, sql, monkeypatch):
    from amphora.search import placeholders
    db = indexed_items(storage)
    db.create_text_index("item_text", ["email"])
    sql("ANALYZE objects")
    sent = queries_sent(monkeypatch, storage)
    conn = db.open()
    found = conn.where("lower(state->>'email') = %s", "p7@example.com", class_name=ITEM)
    assert [item.value for item in found] == [7]
    statement, params = sent[0]
    plan = " ".join(row[0] for row in sql("EXPLAIN " + placeholders(statement, "format"),
                                          params))
    assert "item_email" in plan, plan
    assert len(conn.where("1 = 1", class_name="persistent.mapping.PersistentMapping")) == 1
    statement, params = sent[-1]
    plan = " ".join(row[0] for row in sql("EXPLAIN " + placeholders(statement, "format"),
                                          params))
    assert "amphora_objects_class" in plan, plan  # a partial index, for rows with a class
    sql("SET enable_seqscan = off")  # the table is small: show that the index can serve
    assert [item.value for item in conn.search_text("item_text", "p7@example.com")] == [7]
    statement, params = sent[-1]
    plan = " ".join(row[0] for row in sql("EXPLAIN " + placeholders(statement, "format"),
                                          params))
    assert "item_text" in plan, plan
    conn.close()
    db.close()


# What a mirror was before the documents moved into `objects`: a table of its own.
OLD_MIRROR = (
    "CREATE TABLE amphora_objects (oid bigint PRIMARY KEY, tid bigint NOT NULL,"
    " class_name text NOT NULL, state jsonb NOT NULL) WITH (fillfactor = 70)",
    "CREATE OR REPLACE FUNCTION amphora_objects_gone() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN DELETE FROM amphora_objects WHERE oid IN (SELECT oid FROM gone);"
    " RETURN NULL; END $$",
    "CREATE TRIGGER amphora_objects_gone AFTER DELETE ON objects REFERENCING OLD TABLE AS gone"
    " FOR EACH STATEMENT EXECUTE FUNCTION amphora_objects_gone()",
    "CREATE INDEX amphora_objects_class ON amphora_objects (class_name)",
    "CREATE TABLE amphora_text_indexes (name text PRIMARY KEY,"
    " fields text[] NOT NULL, class_name text)",
    "INSERT INTO amphora_meta VALUES ('mirror', 'sync')",
    # what create_index and create_text_index made
    "CREATE INDEX thing_value ON amphora_objects ((state->>'value'))"
    " WHERE class_name = 'no_such_module.Thing'",
    "CREATE UNIQUE INDEX thing_unique ON amphora_objects ((state->>'value'))",
    "CREATE INDEX thing_text ON amphora_objects USING GIN"
    " ((to_tsvector('english', coalesce(state ->> 'value', ''))))"
    " WHERE class_name = 'no_such_module.Thing'",
    "INSERT INTO amphora_text_indexes"
    " VALUES ('thing_text', '{value}', 'no_such_module.Thing')",
)


def test_a_mirror_made_before_moves_into_the_records_rows_when_opened_for_writing(
        open_storage, sql, server, schema):
    from amphora.jsonpickle import record_to_json
    storage = open_storage()
    first = commit(storage, {z64: thing("root"), p64(1): thing("apple pie")})
    second = commit(storage, {p64(1): thing("apple tart")}, {p64(1): first})
    storage.close()
    for statement in OLD_MIRROR:
        sql(statement)
    # the documents as the old mirror kept them: the root's, and an older one of object 1
    for oid, tid, data in [(0, first, thing("root")), (1, first, thing("apple pie"))]:
        class_name, state = record_to_json(data)
        sql("INSERT INTO amphora_objects VALUES (%s, %s, %s, %s::jsonb)",
            (oid, u64(tid), class_name, state))
    indexes = ("SELECT indexname, tablename FROM pg_indexes"
               " WHERE schemaname = current_schema() AND indexname LIKE 'thing%%' ORDER BY 1")
    reader = open_storage(read_only=True)  # reads the old table as it is
    assert reader.query_mirror("SELECT oid FROM amphora_objects WHERE state->>'value' = %s",
                               ["apple pie"]) == [(1,)]
    assert "amphora_objects" in tables(server, schema)
    writer = open_storage()
    assert "amphora_objects" not in tables(server, schema)
    assert sql("SELECT oid, tid, state->>'value' FROM amphora_objects ORDER BY oid") == [
        (0, u64(first), "root"), (1, u64(first), "apple pie")]  # documents keep their tid
    assert sql(indexes) == [("thing_text", "objects"), ("thing_unique", "objects"),
                            ("thing_value", "objects")]
    assert sql("SELECT count(*) FROM pg_proc WHERE proname = 'amphora_objects_gone'") == [(0,)]
    assert writer.mirror_mode() == "sync" and fillfactor(sql) == ["fillfactor=60"]
    sql_text, params = writer.text_query("thing_text", "apple")
    assert writer.query_mirror(sql_text, params) == [(1,)]
    third = commit(writer, {p64(1): thing("pear")}, {p64(1): second})
    assert sql("SELECT tid, state->>'value' FROM amphora_objects WHERE oid = 1") == [
        (u64(third), "pear")]
    writer.rebuild_mirror()
    assert sql("SELECT tid FROM amphora_objects WHERE oid = 0") == [(u64(first),)]
    with pytest.raises(Exception, match="thing_unique"):  # the unique index holds
        commit(writer, {p64(2): thing("pear")})


def test_a_commit_writes_any_records_documents_with_it(storage, sql):
    """Class names and documents travel joined by chr(30): a lone record without a class
    name, and a class name holding chr(30) (sent as arrays instead), arrive intact."""
    storage.create_mirror()
    commit(storage, {p64(2): b"not a pickle"})
    odd = thing("odd").replace(b"cno_such_module", b"cno\x1esuch")
    commit(storage, {p64(3): odd, p64(4): thing("plain")})
    rows = sql("SELECT oid, class_name, state ? '@unknown', state->>'value' FROM amphora_objects"
               " ORDER BY oid")
    assert rows == [(2, "", True, None), (3, "no\x1esuch.Thing", False, "odd"),
                    (4, "no_such_module.Thing", False, "plain")]


def test_a_commit_sent_without_documents_writes_them_for_a_mirror_made_meanwhile(
        open_storage, sql):
    """Another process makes a mirror kept by every commit after this one's last commit,
    which wrote no documents: its next commit, sent in one round trip without them, is
    stopped by the server before its writes and made with its documents."""
    first, second = open_storage(), open_storage()
    tid = commit(second, {z64: record("root"), p64(1): thing("before")})
    first.create_mirror()
    second.sync()
    commit(second, {p64(1): thing("after"), p64(2): thing("new")}, {p64(1): tid})
    assert sql("SELECT oid, state->>'value', state_tid = tid FROM objects"
               " WHERE oid > 0 ORDER BY oid") == [(1, "after", True), (2, "new", True)]


def test_a_backfill_racing_commits_leaves_every_document_current(storage, sql):
    """The backfill and the commits write the same rows: each document ends beside the
    record it was made from, and neither waits for the other in a deadlock."""
    commit(storage, {p64(n): thing(n) for n in range(3000)})

    def mirror() -> None:
        storage.create_mirror()
        storage.rebuild_mirror()
    errors, commits = commit_during(storage, mirror, lambda n: thing("changed"),
                                    [p64(n) for n in range(0, 3000, 7)])
    assert errors == []
    assert commits  # the race took place
    assert sql("SELECT count(*) FROM objects WHERE state IS NULL OR state_tid <> tid") == [(0,)]
    assert sql("SELECT count(*) FROM amphora_objects WHERE state->>'value' = 'changed'") == [
        (len(range(0, 3000, 7)),)]


# -- undo (amphora.storage.undo): an undone creation is a deletion record -------------------

def undo(storage, tid: bytes) -> bytes:
    """Commit the undo of transaction ``tid``; its tid."""
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.undo(tid, txn)
    storage.tpc_vote(txn)
    return storage.tpc_finish(txn)


def test_an_undone_creation_is_stored_as_empty_data_and_read_as_no_object(storage, sql):
    commit(storage, {z64: record("root")})
    created = commit(storage, {p64(1): record("one"), p64(2): record("two")})
    assert len(storage) == 3
    undone = undo(storage, created)
    assert sql("SELECT oid, length(data) FROM objects WHERE oid > 0 ORDER BY oid") == [
        (1, 0), (2, 0)]
    assert len(storage) == 1
    for oid, value in [(p64(1), "one"), (p64(2), "two")]:
        with pytest.raises(ObjectNotFoundError):
            storage.load(oid)
        with pytest.raises(ObjectNotFoundError):
            storage.loadSerial(oid, undone)
        assert storage.loadBefore(oid, undone) == (record(value), created, undone)
    assert storage.load_many([p64(1), z64], p64(u64(undone) + 1)).keys() == {z64}
    records = {r.oid: r.data for t in storage.iterator(undone, undone) for r in t}
    assert records == {p64(1): None, p64(2): None}
    again = undo(storage, undone)  # the undo of the undo brings them back
    assert storage.load(p64(1)) == (record("one"), again)
    with pytest.raises(ObjectNotFoundError):  # the deletion record, before it
        storage.loadBefore(p64(1), again)
    assert len(storage) == 3


@pytest.mark.parametrize("mode", ["sync", "follow"])
def test_an_undone_creation_leaves_the_mirror_and_comes_back_with_its_undo(storage, sql, mode):
    commit(storage, {z64: thing("root")})
    storage.create_mirror(mode=mode)
    # a class name holding chr(30) sends the documents as arrays rather than joined
    odd = thing("odd").replace(b"cno_such_module", b"cno\x1esuch")
    created = commit(storage, {p64(1): thing("one"), p64(2): odd})
    undone = undo(storage, created)
    if mode == "follow":
        storage.follow_mirror()
    values = "SELECT state->>'value' FROM amphora_objects ORDER BY oid"
    assert storage.query_mirror(values) == [("root",)]
    assert sql("SELECT count(*) FROM objects WHERE state IS NULL") == [(2,)]
    # at a snapshot between the creation and its undo, the objects were there
    assert storage.query_mirror(values, before=undone) == [("root",), ("one",), ("odd",)]
    later = commit(storage, {z64: thing("new root")}, {z64: storage.load(z64)[1]})
    assert storage.query_mirror(values, before=later) == [("root",)]  # not the deletions
    undo(storage, undone)
    if mode == "follow":
        storage.follow_mirror()
    assert storage.query_mirror(values) == [("new root",), ("one",), ("odd",)]


def test_pack_makes_the_transactions_up_to_its_time_not_undoable(storage):
    first = commit(storage, {z64: record("root")}, description="first")
    second = commit(storage, {z64: record("changed")}, {z64: first}, description="second")
    assert [entry["description"] for entry in storage.undoLog()] == [b"second", b"first"]
    storage.pack(second, gc=False)
    assert storage.undoLog() == []
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    with pytest.raises(amphora.UndoError, match="not in the database"):
        storage.undo(second, txn)
    storage.tpc_abort(txn)
    third = commit(storage, {z64: record("third")}, {z64: second}, description="third")
    assert [entry["id"] for entry in storage.undoLog()] == [undo_id(third)]


def test_a_history_free_schema_refuses_undo(open_storage):
    storage = open_storage(keep_history=False)
    tid = commit(storage, {z64: record("root")})
    assert not storage.supports_undo and storage.undoLog() == []
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    with pytest.raises(amphora.Unsupported):
        storage.undo(tid, txn)
    storage.tpc_abort(txn)


# -- commits under contention: the vote's round trips and the commit lock --------------------

def two_databases(open_storage, value):
    """Two ``amphora.DB`` over two storage objects on one schema (two processes' view),
    the root's ``"x"`` set to ``value`` by the first; an open connection of each."""
    import transaction
    dbs = [amphora.DB(open_storage()), amphora.DB(open_storage())]
    managers = [transaction.TransactionManager(), transaction.TransactionManager()]
    conns = [db.open(tm) for db, tm in zip(dbs, managers)]
    conns[0].root()["x"] = value
    managers[0].commit()
    managers[1].begin()
    return dbs, managers, conns


class Sent(list):
    """Statements sent (and ``params``: those sent on the wire, with their parameters;
    ``batches``: the statements of each round trip on the wire)."""

    def __init__(self):
        super().__init__()
        self.params: list[tuple[str, object]] = []
        self.batches: list[list[str]] = []


def statements_of(monkeypatch, storage, events: list[str] | None = None) -> list[str]:
    """The statements ``storage``'s writing connection executes from now on, through
    psycopg or the wire (see amphora.storage.postgresql.wire); a COMMIT also goes to
    ``events``, if given."""
    from amphora.storage.postgresql import storage as module
    sent = Sent()
    events = [] if events is None else events
    conn = storage._writing_connection()  # (made at a storage's first vote)
    execute, commit_, send = conn.execute, conn.commit, module.wire.send

    def noted(statement):
        sent.append(str(statement))
        if str(statement) == "COMMIT":
            events.append("COMMIT")

    def sending(connection, statements, *args, **options):
        statements = list(statements)
        if connection is conn:
            for statement, params in statements:
                noted(statement)
                sent.params.append((str(statement), params))
            sent.batches.append([str(statement) for statement, _ in statements])
        return send(connection, statements, *args, **options)
    monkeypatch.setattr(conn, "execute", lambda statement, *args, **kwargs:
                        noted(statement) or execute(statement, *args, **kwargs))
    monkeypatch.setattr(conn, "commit", lambda: noted("COMMIT") or commit_())
    monkeypatch.setattr(module.wire, "send", sending)
    return sent


def test_a_commit_of_a_connections_only_transaction_is_finished_by_its_vote(open_storage,
                                                                               monkeypatch):
    """amphora's connection, its transaction's only data manager, asks to finish in the
    vote: the COMMIT travels with the writes, and tpc_finish sends nothing."""
    from persistent.mapping import PersistentMapping
    dbs, managers, conns = two_databases(open_storage, PersistentMapping())
    storage = dbs[0].storage
    events = []
    statements_of(monkeypatch, storage, events)
    finish = storage.tpc_finish
    monkeypatch.setattr(storage, "tpc_finish",
                        lambda *args: events.append("tpc_finish") or finish(*args))
    holds = storage.lock_holds
    conns[0].root()["x"]["a"] = 1
    managers[0].commit()
    assert events == ["COMMIT", "tpc_finish"]
    assert storage.lock_holds == holds + 1
    managers[1].begin()
    assert conns[1].root()["x"]["a"] == 1  # durable and seen by the other process
    storage.finish_in_vote = False  # as before: the COMMIT in tpc_finish
    conns[0].root()["x"]["a"] = 2
    managers[0].commit()
    assert events[2:] == ["tpc_finish", "COMMIT"]
    for db in dbs:
        db.close()


def test_a_conflict_found_before_the_lock_is_raised_without_waiting_for_it(open_storage,
                                                                           monkeypatch):
    """A transaction whose read was replaced before it could take the commit lock learns
    of the conflict from the statement that would take the lock, and never holds it (a
    small commit too: its record's class does not merge)."""
    from persistent.mapping import PersistentMapping
    from amphora.errors import ConflictError as Conflict
    dbs, managers, conns = two_databases(open_storage, PersistentMapping())
    conns[1].root()["x"]["late"] = 1  # read before the other's commit
    conns[0].root()["x"]["early"] = 1
    managers[0].commit()
    holds = dbs[1].storage.lock_holds
    batches = statements_of(monkeypatch, dbs[1].storage).batches
    with pytest.raises(Conflict):
        managers[1].commit()
    assert dbs[1].storage.lock_holds == holds  # refused without the lock
    # one round trip: its writes, sent with the check, wrote nothing, and the COMMIT
    # after them committed nothing (no ROLLBACK, no release of the lock)
    assert len(batches) == 1 and "COMMIT" in batches[0]
    managers[1].abort()
    managers[1].begin()
    assert dict(conns[1].root()["x"]) == {"early": 1}
    for db in dbs:
        db.close()


@pytest.mark.parametrize("merges_before_lock,states_with_lock,round_trips", [
    (2, 64, 1), (2, 0, 2), (0, 0, 2)])
def test_a_mergeable_conflict_is_merged_before_the_lock(open_storage, monkeypatch,
                                                        merges_before_lock, states_with_lock,
                                                        round_trips):
    """A conflict on a class that merges (BTrees.Length), in a small commit: the statement
    that checks before the lock takes it anyway, and the server merges it under the lock
    in the same round trip (see test_the_server_merges_a_counter_as_the_client_would).
    In a larger commit, the check finds the
    conflict and reads the states to merge in its round trip (no state is loaded one by
    one); the merge is done before the lock, which is then taken by the statement that
    finds the merged record still current. With no merge allowed before the lock (or
    after that many lost races), the lock is taken with the states' round trip and the
    merge done under it. Every way, the merge counts both increments."""
    from BTrees.Length import Length
    from amphora.storage.postgresql import storage as module
    monkeypatch.setattr(module, "_MERGES_BEFORE_LOCK", merges_before_lock)
    monkeypatch.setattr(module, "_STATES_WITH_LOCK", states_with_lock)
    dbs, managers, conns = two_databases(open_storage, Length(10))
    conns[1].root()["x"].change(5)  # read at 10
    conns[0].root()["x"].change(1)
    managers[0].commit()
    sent = statements_of(monkeypatch, dbs[1].storage)
    managers[1].commit()
    assert not [statement for statement in sent if "LIMIT 1" in statement]  # no _LOAD_SERIAL
    checks = [statement for statement in sent if "WITH stale AS" in statement]
    plain_locks = [statement for statement in sent
                   if statement.startswith("SELECT concat(pg_advisory_lock")]
    assert len(checks) + len(plain_locks) == round_trips  # (each in a round trip of its own)
    assert len(plain_locks) == (0 if merges_before_lock else 1)
    managers[0].begin()
    assert conns[0].root()["x"]() == 16
    for db in dbs:
        db.close()


@pytest.mark.parametrize("value,asks", [("Length", True), ("PersistentMapping", False)])
def test_only_a_commit_that_may_merge_asks_for_states_with_the_lock(open_storage, monkeypatch,
                                                                    value, asks):
    """A commit in two round trips (one that cannot be sent with the lock's, see the next
    test): the statement read under the lock carries the states of the records replaced
    meanwhile only for a small commit whose records merge (a Length); a commit of a
    class that does not merge sends the cheaper statement."""
    from BTrees.Length import Length
    from persistent.mapping import PersistentMapping
    dbs, managers, conns = two_databases(open_storage, {"Length": Length,
                                                        "PersistentMapping":
                                                        PersistentMapping}[value]())
    monkeypatch.setattr(dbs[1].storage, "_fits_at_once", lambda count: False)
    if value == "Length":
        conns[1].root()["x"].change(1)
    else:
        conns[1].root()["x"]["a"] = 1
    sent = statements_of(monkeypatch, dbs[1].storage)
    managers[1].commit()
    states = [statement for statement in sent if "AS r(oid, tid)\nJOIN objects" in statement]
    assert len(states) == (1 if asks else 0)
    assert [statement for statement in sent if "FROM transactions WHERE tid >" in statement]
    for db in dbs:
        db.close()


@pytest.mark.parametrize("value", ["PersistentMapping", "Length"])
def test_a_small_commit_is_made_in_one_round_trip(open_storage, monkeypatch, value):
    """A small commit sends its writes and its COMMIT with the statements that take the
    lock and read under it: one round trip, in which the server also picks the tid and
    merges a counter replaced meanwhile (a Length: both increments count, and the
    client's merge is not called)."""
    from BTrees.Length import Length
    from persistent.mapping import PersistentMapping
    from amphora import symbolic
    dbs, managers, conns = two_databases(open_storage, {"Length": Length,
                                                        "PersistentMapping":
                                                        PersistentMapping}[value]())
    if value == "Length":
        conns[1].root()["x"].change(5)  # read at 0
        conns[0].root()["x"].change(1)
        managers[0].commit()
        monkeypatch.setattr(symbolic, "merge", lambda *args: pytest.fail("merged by the client"))
    else:
        conns[1].root()["x"]["a"] = 1
    storage = dbs[1].storage
    batches = statements_of(monkeypatch, storage).batches
    holds = storage.lock_holds
    last = storage.lastTransaction()
    managers[1].commit()
    assert len(batches) == 1
    assert batches[0][0].lstrip().startswith("WITH stale AS") and "COMMIT" in batches[0]
    assert storage.lock_holds == holds + 1
    assert storage.lastTransaction() > last
    managers[0].begin()
    if value == "Length":
        assert conns[0].root()["x"]() == 6
        assert conns[1].root()["x"]() == 6  # the merged state, invalidated and reloaded
    else:
        assert dict(conns[0].root()["x"]) == {"a": 1}
    for db in dbs:
        db.close()


# A counter's class pickle, as ZODB writes it (the storage never imports the class)
_LENGTH = b"\x80\x03cBTrees.Length\nLength\nq\x00."


def length_record(value: int, protocol: int = 3) -> bytes:
    return _LENGTH + pickle.dumps(value, protocol)


@pytest.mark.parametrize("old,committed,new,protocol", [
    (0, 1, 1, 3), (10, 200, 65, 3), (0, 255, 1, 3), (300, 65535, 301, 3), (0, 65535, 1, 3),
    (5, 2, 1, 3), (0, -5, 2, 3), (0, 2 ** 31 - 2, 1, 3), (0, -2 ** 31 + 1, -1, 3),
    (7, 1000, 9, 2), (0, 2 ** 31 - 1, 1, 3), (0, 2 ** 40, 1, 3), (0, -2 ** 31, -1, 3)])
def test_the_server_merges_a_counter_as_the_client_would(open_storage, monkeypatch, old,
                                                         committed, new, protocol):
    """A counter replaced while a commit waited (read at ``old``, ``committed`` since,
    ``new`` stored) merges to the same bytes as amphora.symbolic's merge: with the
    server's arithmetic and pickling when every number fits in 32 bits (the int opcodes
    read and written, protocol 2 records read too), and on the client when not (LONG1),
    the lock kept meanwhile. Two storage objects: two processes."""
    from amphora import symbolic
    first, second = open_storage(), open_storage()
    oid = p64(1)
    commit(first, {z64: record("root", oid), oid: length_record(old, protocol)})
    read = first.lastTransaction()
    second.sync()
    commit(second, {oid: length_record(committed, protocol)}, {oid: read})
    expected = symbolic.merge(length_record(old, protocol), length_record(committed, protocol),
                              length_record(new))
    assert expected == _LENGTH + pickle.dumps(committed + new - old, 3)
    by_server = all(-2 ** 31 <= n < 2 ** 31 for n in (old, committed, new,
                                                        committed + new - old))
    sends = statements_of(monkeypatch, first).batches
    if by_server:
        monkeypatch.setattr(symbolic, "merge", lambda *args: pytest.fail("merged by the client"))
    txn = TransactionMetaData()
    first.tpc_begin(txn)
    first.store(oid, read, length_record(new), "", txn)
    assert first.tpc_vote(txn) == [oid]
    tid = first.tpc_finish(txn)
    assert first.load(oid) == (expected, tid)
    assert second.loadBefore(oid, p64(u64(tid) + 1))[0] == expected
    # (the COMMIT in tpc_finish; merged by the client, the writes again after the merge)
    assert len(sends) == (2 if by_server else 3)


def test_a_merge_the_server_does_not_make_is_made_with_the_lock_kept(open_storage,
                                                                     monkeypatch):
    """A record of a class that merges but is no counter (a BTree's bucket), replaced
    while the commit waited for the lock: the server stops the first round trip's writes
    (its COMMIT commits nothing) and keeps the lock, and the client merges and sends its
    writes again, without taking the lock again."""
    from BTrees.OOBTree import OOBucket
    dbs, managers, conns = two_databases(open_storage, OOBucket())
    conns[1].root()["x"]["b"] = 2  # read before the other's commit
    conns[0].root()["x"]["a"] = 1
    managers[0].commit()
    storage = dbs[1].storage
    batches = statements_of(monkeypatch, storage).batches
    managers[1].commit()
    assert len(batches) == 2  # the writes stopped; the writes again
    assert "COMMIT" in batches[0] and "COMMIT" in batches[1]
    assert not any("pg_advisory_lock" in statement for statement in batches[1])
    managers[0].begin()
    assert dict(conns[0].root()["x"]) == {"a": 1, "b": 2}
    for db in dbs:
        db.close()


def test_a_commit_reads_the_serials_it_checks_once(storage, monkeypatch):
    """The conflict check before the lock reads the committed serial of each record the
    commit replaces; under the lock only the commits made since that check are looked at
    (none here): no statement reads those serials a second time. (A small commit's are:
    it gives the lock back at once if one was replaced meanwhile, see _GIVE_BACK.)"""
    oids = [p64(n) for n in range(1, 201)]
    tid = commit(storage, dict.fromkeys([z64, *oids], record("first")))
    sent = statements_of(monkeypatch, storage)
    commit(storage, dict.fromkeys(oids, record("second")), dict.fromkeys(oids, tid))
    reading = [statement for statement in sent
               if " objects " in statement and "INSERT INTO" not in statement]
    assert len(reading) == 2 and "pg_advisory_lock" in reading[0]
    (under_lock,) = [params for statement, params in sent.params if statement == reading[1]]
    assert under_lock["o"] == "{}"  # (no oid to read again)
    assert storage.load(oids[-1])[0] == record("second")


def waiting_for_the_commit_lock(server, count: int = 1) -> None:
    """Return once ``count`` sessions wait for an advisory lock (the commit lock)."""
    with server.connect() as conn:
        for _ in range(500):
            waiting = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                   " AND NOT granted").fetchone()[0]
            if waiting >= count:
                return
            time.sleep(0.01)
    raise AssertionError("no session waits for the commit lock")


def test_a_merge_under_the_lock_reads_no_state_one_by_one(open_storage, server,
                                                             monkeypatch):
    """A commit whose check passed while another held the lock finds, once it has the
    lock, that the other replaced a record it read: a conflict that merges
    (BTrees.Length). The states to merge (the committed one and the one read) are read in
    one round trip, not loaded one by one while the lock is held; the merge counts both
    increments. They come in the lock's own round trip (with the statement read under
    it): no statement more is sent while the lock is held."""
    from BTrees.Length import Length
    dbs, managers, conns = two_databases(open_storage, Length(10))
    dbs[0].storage.finish_in_vote = False  # (the lock held from the vote to tpc_finish)
    voted, finish = threading.Event(), threading.Event()
    tpc_finish = dbs[0].storage.tpc_finish

    def held_finish(*args):
        voted.set()
        finish.wait(30)
        return tpc_finish(*args)
    monkeypatch.setattr(dbs[0].storage, "tpc_finish", held_finish)
    conns[1].root()["x"].change(5)  # read at 10
    sent = statements_of(monkeypatch, dbs[1].storage)
    conns[0].root()["x"].change(1)
    first = threading.Thread(target=managers[0].commit)
    first.start()
    voted.wait(30)
    second = threading.Thread(target=managers[1].commit)
    second.start()
    waiting_for_the_commit_lock(server)
    finish.set()
    first.join(30)
    second.join(30)
    assert not [statement for statement in sent if "LIMIT 1" in statement]  # no _LOAD_SERIAL
    assert not [statement for statement in sent if "WITH r(oid, tid)" in statement]  # _STATES
    assert dbs[1].storage.lock_holds == 1
    managers[0].begin()
    assert conns[0].root()["x"]() == 16
    for db in dbs:
        db.close()


def test_a_lost_race_ends_in_one_round_trip_and_tpc_abort_sends_nothing(open_storage,
                                                                         monkeypatch):
    """A commit that finds, before the lock, that it lost a race rolls back with one batch
    after the one that found it (the ROLLBACK of its transaction, in which its writes,
    sent with the check, wrote nothing; it never took the lock, so nothing releases it);
    the tpc_abort that follows has nothing left to send. (Finished by its vote, it sends
    nothing more: see the next test.)"""
    from amphora.storage.postgresql.storage import _UNLOCK
    first, second = open_storage(), open_storage()
    tid = commit(first, {z64: record("root"), p64(1): record(0)})
    commit(first, {p64(1): record(1)}, {p64(1): tid})
    sent = statements_of(monkeypatch, second)
    txn = TransactionMetaData()
    second.tpc_begin(txn)
    second.store(p64(1), tid, record(2), "", txn)
    with pytest.raises(ConflictError):
        second.tpc_vote(txn)
    assert sent[0].lstrip().startswith("WITH stale AS") and sent[-1] == "ROLLBACK"
    assert sent.count("ROLLBACK") == 1 and _UNLOCK not in sent
    assert second.load(p64(1))[0] == record(1)
    voted = len(sent)
    second.tpc_abort(txn)
    assert len(sent) == voted
    assert second.lock_holds == 0


def test_a_commit_made_while_another_waits_for_the_lock_is_its_conflict(open_storage, server):
    """The check before the lock passes while another commit holds the lock, voted but not
    yet finished; that commit replaces the record. The waiting commit, once it has the
    lock, finds the change among the commits made since its check: a ConflictError, and
    nothing of it is written."""
    first, second = open_storage(), open_storage()
    tid = commit(first, {z64: record("root"), p64(1): record(0)})
    held = TransactionMetaData()  # (no finish_with_vote: the lock is held until tpc_finish)
    first.tpc_begin(held)
    first.store(p64(1), tid, record(1), "", held)
    first.tpc_vote(held)
    raised: list[BaseException] = []

    def late():
        txn = TransactionMetaData()
        second.tpc_begin(txn)
        second.store(p64(1), tid, record(2), "", txn)
        try:
            second.tpc_vote(txn)
        except BaseException as exc:  # noqa: BLE001 - checked below
            raised.append(exc)
        second.tpc_abort(txn)
    # What the loser's session holds when it rolls back: nothing, the lock given back
    # by the statement that found the conflict (a round trip before the ROLLBACK)
    holding: list[int] = []
    rollback = second._rollback

    def noting_rollback():
        pid = second._writer.info.backend_pid
        with server.connect() as other:
            holding.append(other.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND"
                                         " locktype = 'advisory'", (pid,)).fetchone()[0])
        rollback()
    second._rollback = noting_rollback
    thread = threading.Thread(target=late)
    thread.start()
    waiting_for_the_commit_lock(server)
    won = first.tpc_finish(held)
    thread.join(30)
    assert len(raised) == 1 and isinstance(raised[0], ConflictError)
    assert raised[0].serials == (won, tid)
    assert holding[0] == 0  # (the vote's rollback; tpc_abort's comes after)
    assert second.lock_holds == 0  # (never held for the commit)
    assert second.load(p64(1)) == (record(1), won)
