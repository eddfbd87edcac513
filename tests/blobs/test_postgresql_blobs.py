"""Blobs on PostgreSQL: their bytes in the database (``blob_chunk``), so that storages on
machines without a shared file system read each other's blobs; the local cache of blob
files and its size limit; pack, undo and history-free commits removing or copying chunks
in SQL; a database made before blobs gaining their table."""
from __future__ import annotations

import functools
import os

import pgserver
import pytest
import transaction

import amphora
from amphora import Blob
from amphora.errors import InvalidURIError
from amphora.storage.postgresql import PostgreSQLStorage
from amphora.storage.postgresql.blobs import CHUNK

MIB = 1 << 20


@pytest.fixture
def server() -> pgserver.PostgresServer:
    return pgserver.require()


@pytest.fixture
def schema(request) -> str:
    return pgserver.claim_schema(request.node.nodeid)


@pytest.fixture
def sql(server, schema):
    """``sql(statement, params)``: its rows, run in the test's schema by another client."""
    return functools.partial(server.sql, schema)


@pytest.fixture
def open_db(server, schema):
    """``open_db(**options)``: an amphora.DB on the test's schema; each call is another
    storage object with a blob cache of its own, as on another machine."""
    dbs = []

    def open_db(**options):
        db = amphora.DB(PostgreSQLStorage(server.dsn(), schema=schema, **options))
        dbs.append(db)
        return db
    yield open_db
    for db in dbs:
        db.close()


def read(blob) -> bytes:
    with blob.open("r") as file:
        return file.read()


def data_of(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(256)) * (size // 256) + b"x" * (size % 256)


def chunk_rows(sql) -> list[tuple]:
    return sql("SELECT oid, tid, chunk_num, blob_size, length(data) FROM blob_chunk"
               " ORDER BY oid, tid, chunk_num")


def cached_files(db) -> list[str]:
    path = db.storage.blob_cache.path
    return sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                  for name in names if name.endswith(".blob"))


# -- where the bytes are --------------------------------------------------------------------


def test_a_blob_is_kept_in_chunks_of_a_mebibyte_each_carrying_the_whole_size(open_db, sql):
    db = open_db()
    big = data_of(2 * CHUNK + 1000)
    with db.transaction() as conn:
        conn.root.big, conn.root.empty = Blob(big), Blob(b"")
    with db.transaction() as conn:
        big_oid, empty_oid = conn.root.big._p_oid, conn.root.empty._p_oid
        tid = int.from_bytes(conn.root.big._p_serial, "big")
    key = lambda oid: int.from_bytes(oid, "big")  # noqa: E731
    assert chunk_rows(sql) == sorted([
        (key(big_oid), tid, 0, len(big), CHUNK), (key(big_oid), tid, 1, len(big), CHUNK),
        (key(big_oid), tid, 2, len(big), 1000), (key(empty_oid), tid, 0, 0, 0)])


def test_storages_without_a_shared_file_system_read_each_others_blobs(open_db):
    here, there = open_db(), open_db()
    assert here.storage.blob_cache.path != there.storage.blob_cache.path
    with here.transaction() as conn:
        conn.root.blob = Blob(b"written here")
    there.storage.sync()
    with there.transaction() as conn:
        assert read(conn.root.blob) == b"written here"
        with conn.root.blob.open("w") as file:
            file.write(b"written there")
    here.storage.sync()
    with here.transaction() as conn:
        assert read(conn.root.blob) == b"written there"


def test_two_processes_read_each_others_blobs(server, schema, tmp_path):
    import subprocess
    import sys
    uri = server.uri(schema=schema)
    db = amphora.open(uri)
    with db.transaction() as conn:
        conn.root.blob = Blob(b"from the parent")
    child = subprocess.run([sys.executable, "-c", (
        "import sys, amphora\n"
        "db = amphora.open(sys.argv[1])\n"
        "with db.transaction() as conn:\n"
        "    print(conn.root.blob.open().read().decode())\n"
        "    conn.root.answer = amphora.Blob(b'from the child')\n"
        "db.close()\n"), uri], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "from the parent"
    db.storage.sync()
    with db.transaction() as conn:
        assert read(conn.root.answer) == b"from the child"
    db.close()


def test_a_commit_keeps_its_own_files_in_the_cache(open_db):
    db = open_db()
    with db.transaction() as conn:
        conn.root.blob = Blob(b"kept")
    with db.transaction() as conn:
        assert cached_files(db) == [conn.root.blob.committed()]
    assert os.listdir(db.storage.temporaryDirectory()) == []


def test_an_aborted_commit_leaves_no_chunks_and_no_files(open_db, sql):
    db = open_db()
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    conn.root.blob = Blob(b"never committed")
    tm.savepoint()
    tm.abort()
    conn.close()
    assert chunk_rows(sql) == []
    assert os.listdir(db.storage.temporaryDirectory()) == []
    assert cached_files(db) == []


# -- the cache --------------------------------------------------------------------------------


def test_the_default_cache_is_a_temporary_directory_removed_at_close(server, schema):
    storage = PostgreSQLStorage(server.dsn(), schema=schema)
    path = storage.blob_cache.path
    assert os.path.isdir(path)
    storage.close()
    assert not os.path.exists(path)


def test_a_cache_directory_given_stays(open_db, tmp_path):
    cache = tmp_path / "cache"
    db = open_db(blob_cache_dir=str(cache))
    with db.transaction() as conn:
        conn.root.blob = Blob(b"data")
    db.close()
    assert len([name for _, _, names in os.walk(cache) for name in names
                if name.endswith(".blob")]) == 1


def test_the_cache_evicts_the_least_recently_used_files_beyond_its_size(open_db):
    writer = open_db()
    with writer.transaction() as conn:
        conn.root.blobs = [Blob(data_of(MIB, seed)) for seed in range(5)]
    reader = open_db(blob_cache_size=3 * MIB)
    with reader.transaction() as conn:
        blobs = conn.root.blobs
        for seed, blob in enumerate(blobs):
            assert read(blob) == data_of(MIB, seed)
        # (the names asked of the cache itself: committed() would write a file again)
        paths = [reader.storage.blob_cache.file_of(blob._p_oid, blob._p_serial)
                 for blob in blobs]
        assert cached_files(reader) == paths[2:]  # the last three read
        assert read(blobs[0]) == data_of(MIB, 0)  # read from the database again ...
        assert cached_files(reader) == [paths[0]] + paths[3:]  # ... the least recent gone
    assert sum(map(os.path.getsize, cached_files(reader))) <= 3 * MIB


def test_a_file_open_for_reading_survives_its_eviction(open_db):
    writer = open_db()
    with writer.transaction() as conn:
        conn.root.blobs = [Blob(data_of(MIB, seed)) for seed in range(3)]
    reader = open_db(blob_cache_size=MIB)
    with reader.transaction() as conn:
        blobs = conn.root.blobs
        with blobs[0].open("r") as file:
            assert file.read(10) == data_of(MIB, 0)[:10]
            path = blobs[0].committed()
            read(blobs[1])  # evicts the first blob's file
            assert not os.path.exists(path)
            assert file.read() == data_of(MIB, 0)[10:]


def test_an_append_after_its_file_was_evicted_fails_then_works_once_reloaded(open_db):
    """What docs/blobs.md says of the one case a size limit does not cover: ZODB's
    open("a") copies the file named when the blob was loaded; evicted since, the open
    fails and the blob opens once reloaded; the database kept every byte."""
    writer = open_db()
    with writer.transaction() as conn:
        conn.root.blobs = [Blob(data_of(MIB, seed)) for seed in range(2)]
    reader = open_db(blob_cache_size=MIB)
    with reader.transaction() as conn:
        first, second = conn.root.blobs
        first._p_activate()  # loaded: its file named
        read(second)  # more than the cache's size used since: the first one's file goes
        with pytest.raises(FileNotFoundError):
            first.open("a")
        first._p_invalidate()
        with first.open("a") as file:
            file.write(b"appended")
    with reader.transaction() as conn:
        assert read(conn.root.blobs[0]) == data_of(MIB, 0) + b"appended"


@pytest.mark.parametrize("options, complaint", [
    ({"blob_cache_size": -1}, "blob_cache_size"),
    ({"blob_cache_size": "big"}, "blob_cache_size"),
])
def test_bad_cache_options_are_refused_naming_them(server, schema, options, complaint):
    with pytest.raises(InvalidURIError, match=complaint):
        PostgreSQLStorage(server.dsn(), schema=schema, **options)


def test_the_cache_options_go_in_the_uri(server, schema, tmp_path):
    storage = amphora.open_storage(server.uri(schema=schema, blob_cache_dir=tmp_path / "c",
                                              blob_cache_size=5000))
    try:
        assert storage.blob_cache.path == str(tmp_path / "c")
        assert storage.blob_cache.size == 5000
    finally:
        storage.close()


# -- pack, undo, history-free -----------------------------------------------------------------


def revisions_with_chunks(sql) -> set[tuple[int, int]]:
    return {(oid, tid) for oid, tid in sql("SELECT DISTINCT oid, tid FROM blob_chunk")}


def replaced_and_dropped(db) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Commit a blob replaced later, and one dropped from the root; the (oid, tid) of the
    old revision, of the current one and of the dropped blob."""
    with db.transaction() as conn:
        conn.root.blob = Blob(b"first")
        conn.root.gone = Blob(b"unreferenced soon")
    with db.transaction() as conn:
        key = lambda blob: (int.from_bytes(blob._p_oid, "big"),  # noqa: E731
                            int.from_bytes(blob._p_serial, "big"))
        old, gone = key(conn.root.blob), key(conn.root.gone)
        with conn.root.blob.open("w") as file:
            file.write(b"second")
        del conn.root.gone
    with db.transaction() as conn:
        current = key(conn.root.blob)
    return old, current, gone


@pytest.mark.parametrize("gc", [True, False], ids=["gc", "no-gc"])
def test_pack_removes_the_chunks_of_the_revisions_it_removes(open_db, sql, gc):
    db = open_db()
    old, current, gone = replaced_and_dropped(db)
    assert revisions_with_chunks(sql) == {old, current, gone}
    db.storage.pack(db.storage.lastTransaction(), gc=gc)
    assert revisions_with_chunks(sql) == ({current} if gc else {current, gone})
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"second"


def test_a_history_free_commit_forgets_the_chunks_of_what_it_replaced(open_db, sql):
    db = open_db(keep_history=False)
    db.storage.conflict_window = 0  # replaced revisions are forgotten by the next commit
    old, current, gone = replaced_and_dropped(db)
    with db.transaction() as conn:
        conn.root.other = 1  # forgets the replaced revision
    assert revisions_with_chunks(sql) == {current, gone}
    db.storage.pack(db.storage.lastTransaction())
    assert revisions_with_chunks(sql) == {current}
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"second"


def test_undo_copies_the_chunks_of_the_revision_it_brings_back(open_db, sql):
    db = open_db()
    first = data_of(CHUNK + 10, 1)
    with db.transaction() as conn:
        conn.root.blob = Blob(first)
    with db.transaction() as conn:
        with conn.root.blob.open("a") as file:
            file.write(b"appended")
    db.undo(db.last_transaction())  # (a tid is an undo id too)
    transaction.commit()
    with db.transaction() as conn:
        assert read(conn.root.blob) == first
        oid = int.from_bytes(conn.root.blob._p_oid, "big")
        tid = int.from_bytes(conn.root.blob._p_serial, "big")
    assert sql("SELECT chunk_num, length(data) FROM blob_chunk WHERE oid = %s AND tid = %s"
               " ORDER BY chunk_num", (oid, tid)) == [(0, CHUNK), (1, 10)]
    other = open_db()  # reads the new revision's chunks, not a cached file
    with other.transaction() as conn:
        assert read(conn.root.blob) == first


# -- a database made before blobs -------------------------------------------------------------


def test_a_database_made_before_blobs_gains_their_table_when_opened_for_writing(
        server, schema, sql, open_db):
    db = open_db()
    with db.transaction() as conn:
        conn.root.title = "before blobs"
    db.close()
    sql("DROP TABLE blob_chunk")  # as a version without blobs made it
    read_only = PostgreSQLStorage(server.dsn(), schema=schema, read_only=True)
    read_only.close()
    assert sql("SELECT to_regclass('blob_chunk') IS NULL") == [(True,)]  # left as it was
    db = open_db()
    assert sql("SELECT to_regclass('blob_chunk') IS NULL") == [(False,)]
    with db.transaction() as conn:
        assert conn.root.title == "before blobs"
        conn.root.blob = Blob(b"the first blob")
    with open_db().transaction() as conn:
        assert read(conn.root.blob) == b"the first blob"


def test_a_missing_middle_chunk_is_an_error_naming_oid_and_tid(open_db, sql):
    from amphora.storage.blobs import BlobFileError
    from amphora.utils import oid_repr, tid_repr
    db = open_db()
    with db.transaction() as conn:
        conn.root.blob = Blob(data_of(3 * CHUNK))
        conn.root.small = Blob(b"intact")
    with db.transaction() as conn:
        oid, serial = conn.root.blob._p_oid, conn.root.blob._p_serial
    sql("DELETE FROM blob_chunk WHERE oid = %s AND chunk_num = 1",
        (int.from_bytes(oid, "big"),))
    reader = open_db()  # a cache of its own: reads the chunks
    with pytest.raises(BlobFileError) as caught:
        reader.storage.loadBlob(oid, serial)
    message = str(caught.value)
    assert f"oid {oid_repr(oid)}" in message and tid_repr(serial) in message
    assert f"truncated or damaged: {CHUNK:,} bytes, committed with {3 * CHUNK:,}" in message
    assert "blob_chunk" in message
    assert os.listdir(reader.storage.temporaryDirectory()) == []  # the partial file is gone
    with reader.transaction() as conn:  # the session goes on reading
        assert read(conn.root.small) == b"intact"


def test_amphora_info_says_the_blobs_are_in_the_database(server, schema, open_db):
    import subprocess
    import sys
    open_db().close()
    done = subprocess.run([sys.executable, "-m", "amphora", "info", server.uri(schema=schema)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "blobs:" in done.stdout and "in the database, table blob_chunk" in done.stdout
    assert "blob directory" not in done.stdout


def test_a_blob_stored_twice_in_one_commit_keeps_the_second_file(open_db, sql, tmp_path):
    from amphora.storage.base import TransactionMetaData
    storage = open_db().storage
    oid = storage.new_oid()
    blob_record = b"\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N."  # ZODB's, for a Blob
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    for i, data in enumerate([data_of(CHUNK + 1), b"the second file"]):
        path = tmp_path / f"file{i}"
        path.write_bytes(data)
        storage.storeBlob(oid, None, blob_record, str(path), "", txn)
        assert not path.exists()  # taken by the storage
    storage.tpc_vote(txn)
    tid = storage.tpc_finish(txn)
    assert sql("SELECT tid, chunk_num, length(data) FROM blob_chunk") == [
        (int.from_bytes(tid, "big"), 0, len(b"the second file"))]
    with open(open_db().storage.loadBlob(oid, tid), "rb") as file:
        assert file.read() == b"the second file"
