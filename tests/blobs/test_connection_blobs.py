"""Blobs through amphora's own Connection and DB, on the storages that keep them (memory,
SQLite and PostgreSQL): sizes, many per commit, MVCC, history, undo, pack, conflicts,
savepoints, and the errors for what cannot work."""
from __future__ import annotations

import os

import pgserver
import pytest
import transaction

import amphora
from amphora import Blob
from amphora.crypto.keyring import KdfParameters
from amphora.storage.blobs import BlobFileError
from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import oid_repr, tid_repr, u64


CHEAP = KdfParameters(iterations=1, lanes=1, memory_cost=1024)  # keys made in milliseconds


def postgresql_storage(path, **options):
    """A PostgreSQL storage in a schema of its own for ``path`` (dropped after the test)."""
    from amphora.storage.postgresql import PostgreSQLStorage
    return PostgreSQLStorage(pgserver.require().dsn(), schema=pgserver.claim_schema(str(path)),
                             **options)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def make_db(request, tmp_path):
    dbs = []

    def make(**options):
        if request.param == "memory":
            storage = MemoryStorage(**options)
        elif request.param == "sqlite":
            storage = SQLiteStorage(str(tmp_path / "app.db"), **options)
        else:
            storage = postgresql_storage(tmp_path / "app", **options)
        db = amphora.DB(storage)
        dbs.append(db)
        return db
    yield make
    for db in dbs:
        db.close()


def remove_blob(db, oid, serial, path) -> str:
    """Remove the stored bytes of a blob revision whose committed file is ``path``; where
    they were (which the error names)."""
    os.chmod(path, 0o600)
    os.remove(path)
    if not hasattr(db.storage, "blob_cache"):
        return path
    pgserver.require().sql(db.storage.schema,
                           "DELETE FROM blob_chunk WHERE oid = %s AND tid = %s",
                           (u64(oid), u64(serial)))
    return "table blob_chunk"


def truncate_blob(db, oid, serial, path, size: int) -> None:
    """Cut the stored bytes of a blob revision whose committed file is ``path`` to
    ``size``."""
    os.chmod(path, 0o600)
    if not hasattr(db.storage, "blob_cache"):
        with open(path, "r+b") as file:
            file.truncate(size)
        return
    os.remove(path)
    pgserver.require().sql(db.storage.schema,
                           "UPDATE blob_chunk SET data = substr(data, 1, %s)"
                           " WHERE oid = %s AND tid = %s", (size, u64(oid), u64(serial)))


@pytest.fixture
def db(make_db):
    return make_db()


def read(blob) -> bytes:
    with blob.open("r") as file:
        return file.read()


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 4096],
                         ids=["0 bytes", "1 byte", "1 MiB"])
def test_a_blob_written_is_read_back(db, data):
    with db.transaction() as conn:
        conn.root.blob = Blob()
        with conn.root.blob.open("w") as file:
            file.write(data)
    with db.transaction() as conn:
        blob = conn.root.blob
        assert read(blob) == data
        with open(blob.committed(), "rb") as file:
            assert file.read() == data
        assert os.stat(blob.committed()).st_mode & 0o222 == 0  # committed files are read-only


def test_many_blobs_in_one_commit(db):
    with db.transaction() as conn:
        conn.root.blobs = [Blob(b"blob %d" % i) for i in range(300)]
    with db.transaction() as conn:
        assert [read(blob) for blob in conn.root.blobs] == [b"blob %d" % i for i in range(300)]


def test_each_connection_reads_the_revision_of_its_snapshot(db):
    with db.transaction() as conn:
        conn.root.blob = Blob(b"first")
    reader_tm = transaction.TransactionManager()
    reader = db.open(transaction_manager=reader_tm)
    assert read(reader.root.blob) == b"first"
    with db.transaction() as conn:
        with conn.root.blob.open("w") as file:
            file.write(b"second")
    reader.root.blob._p_deactivate()  # loaded again, from the same snapshot
    assert read(reader.root.blob) == b"first"
    reader_tm.commit()  # a new transaction: a new snapshot
    assert read(reader.root.blob) == b"second"
    reader.close()


def test_a_historical_connection_reads_the_revision_of_its_time(db):
    with db.transaction() as conn:
        conn.root.blob = Blob(b"first")
    first = db.last_transaction()
    with db.transaction() as conn:
        with conn.root.blob.open("w") as file:
            file.write(b"second")
    old = db.open(at=first)
    assert read(old.root.blob) == b"first"
    old.close()


def test_undo_brings_back_the_blob_data(db):
    with db.transaction("first") as conn:
        conn.root.blob = Blob(b"first")
    with db.transaction("second") as conn:
        with conn.root.blob.open("w") as file:
            file.write(b"second")
    db.undo(db.undoLog(0, 1)[0]["id"])
    transaction.commit()
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"first"
    db.undo(db.undoLog(0, 1)[0]["id"])  # the undo undone
    transaction.commit()
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"second"


def test_pack_removes_the_files_of_the_revisions_it_removes(db):
    with db.transaction() as conn:
        conn.root.blob = Blob(b"first")
        conn.root.gone = Blob(b"unreferenced soon")
    with db.transaction() as conn:
        blob = conn.root.blob
        with blob.open("w") as file:
            file.write(b"second")
        del conn.root.gone
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"second"
        current = conn.root.blob.committed()
    directory = db.storage.blob_directory
    files = {os.path.join(root, name) for root, _, names in os.walk(directory)
             for name in names if name.endswith(".blob")}
    assert len(files) == 3
    db.pack()
    left = {os.path.join(root, name) for root, _, names in os.walk(directory)
            for name in names if name.endswith(".blob")}
    assert left == {current}
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"second"


def test_two_connections_writing_one_blob_conflict(db):
    with db.transaction() as conn:
        conn.root.blob = Blob(b"first")
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    conn1, conn2 = db.open(transaction_manager=tm1), db.open(transaction_manager=tm2)
    for conn, data in ((conn1, b"one"), (conn2, b"two")):
        with conn.root.blob.open("w") as file:
            file.write(data)
    tm1.commit()
    with pytest.raises(amphora.ConflictError):
        tm2.commit()
    tm2.abort()
    assert read(conn2.root.blob) == b"one"
    assert os.listdir(db.storage.temporaryDirectory()) == []  # the loser's file is gone
    conn1.close()
    conn2.close()


def test_savepoints_set_blob_data_aside_and_roll_back_to_it(db):
    with db.transaction() as conn:
        conn.root.blob = Blob(b"committed")
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    with conn.root.blob.open("w") as file:
        file.write(b"at the savepoint")
    savepoint = tm.savepoint()
    with conn.root.blob.open("w") as file:
        file.write(b"after it")
    savepoint.rollback()
    assert read(conn.root.blob) == b"at the savepoint"
    tm.commit()
    assert read(conn.root.blob) == b"at the savepoint"
    assert os.listdir(db.storage.temporaryDirectory()) == []  # savepoint files removed
    conn.close()


def test_setting_p_changed_alone_writes_nothing(db):
    with db.transaction() as conn:
        conn.root.blob = Blob(b"data")
    with db.transaction() as conn:
        serial = conn.root.blob._p_serial
        conn.root.blob._p_changed = True
    with db.transaction() as conn:
        assert conn.root.blob._p_serial == serial  # no new revision
        assert read(conn.root.blob) == b"data"


def test_an_open_blob_cannot_be_committed(db):
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    conn.root.blob = Blob(b"data")
    file = conn.root.blob.open("r")
    with pytest.raises(ValueError, match="is open"):
        tm.commit()
    tm.abort()
    file.close()
    conn.close()


def test_a_missing_blob_file_is_an_error_naming_oid_and_tid(db):
    with db.transaction() as conn:
        conn.root.blob = Blob(b"data")
        conn.root.other = 1
    with db.transaction() as conn:
        path = conn.root.blob.committed()
        oid, serial = conn.root.blob._p_oid, conn.root.blob._p_serial
    where = remove_blob(db, oid, serial, path)
    conn = db.open()
    with pytest.raises(BlobFileError) as caught:
        conn.root.blob.open("r")
    message = str(caught.value)
    assert f"oid {oid_repr(oid)}" in message and tid_repr(serial) in message
    assert caught.value.oid == oid and caught.value.tid == serial
    assert "missing" in message and where in message
    assert isinstance(caught.value, amphora.POSKeyError)
    assert conn.root.other == 1  # the rest of the database is readable
    conn.close()


def test_an_encrypted_storage_keeps_blobs_sealed(tmp_path):
    # (sealing, tampering and the blob suite: tests/encryption/test_encrypted_blobs.py)
    keyring = amphora.Keyring.create(tmp_path / "app.keyring", "passphrase", CHEAP)
    db = amphora.open("memory://", keyring=keyring)
    try:
        with db.transaction() as conn:
            conn.root.blob = Blob(b"secret")
        with db.transaction() as conn:
            assert read(conn.root.blob) == b"secret"
            oid, tid = conn.root.blob._p_oid, conn.root.blob._p_serial
        with open(db.storage.storage.loadBlob(oid, tid), "rb") as file:
            assert b"secret" not in file.read()
    finally:
        db.close()


def test_a_truncated_blob_file_is_an_error_naming_oid_and_tid(db):
    with db.transaction() as conn:
        conn.root.blob = Blob(b"0123456789")
    with db.transaction() as conn:
        path = conn.root.blob.committed()
        oid, serial = conn.root.blob._p_oid, conn.root.blob._p_serial
    truncate_blob(db, oid, serial, path, 4)
    conn = db.open()
    with pytest.raises(BlobFileError) as caught:
        conn.root.blob.open("r")
    message = str(caught.value)
    assert f"oid {oid_repr(oid)}" in message and tid_repr(serial) in message
    assert "truncated" in message and "4 bytes, committed with 10" in message
    conn.close()


def test_zodb_and_amphora_read_each_others_blobs(tmp_path):
    import ZODB
    path = str(tmp_path / "shared.db")
    zodb = ZODB.DB(SQLiteStorage(path))
    with zodb.transaction() as conn:
        conn.root.from_zodb = Blob(b"written by ZODB.DB")
    zodb.close()
    db = amphora.open(f"sqlite:///{path}")
    with db.transaction() as conn:
        assert read(conn.root.from_zodb) == b"written by ZODB.DB"
        conn.root.from_amphora = Blob(b"written by amphora")
    db.close()
    zodb = ZODB.DB(SQLiteStorage(path))
    with zodb.transaction() as conn:
        assert read(conn.root.from_amphora) == b"written by amphora"
    zodb.close()
