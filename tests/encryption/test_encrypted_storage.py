"""EncryptedStorage over real storages: what reaches the disk, conflicts merged on the
client, commits racing for tids, and what an encrypted database refuses."""
from __future__ import annotations

import glob
import os
from typing import Any

import pytest
import serverprocess  # tests/server/serverprocess.py
import transaction
from BTrees.Length import Length
from persistent import Persistent
from persistent.mapping import PersistentMapping

import amphora
from amphora.storage.encrypted import EncryptedStorage, is_sealed
from amphora.storage.sqlite import SQLiteStorage

from .conftest import CHEAP

SECRETS = [b"ZanzibarLedger", b"quartermaster_notes", b"the launch code is 0451",
           b"mysterious-user", b"a description that tells all"]


class ZanzibarLedger(Persistent):
    def __init__(self):
        self.quartermaster_notes = "the launch code is 0451"


def files_of(path) -> bytes:
    """The SQLite file and whatever beside it SQLite writes (WAL, shared memory), and
    every file under the blob directory beside it."""
    names = sorted(glob.glob(f"{path}*")) + sorted(glob.glob(f"{path}.blobs/**", recursive=True))
    return b"".join(open(name, "rb").read() for name in names
                    if os.path.isfile(name) and not name.endswith(".keyring"))


def write_ledger(db: amphora.DB, **extension) -> None:
    """A ledger in the root, committed by a named user with a note."""
    with db.transaction() as conn:
        conn.root.ledger = ZanzibarLedger()
        txn = conn.transaction_manager.get()
        txn.user = "mysterious-user"
        txn.note("a description that tells all")
        for key, value in extension.items():
            txn.setExtendedInfo(key, value)


def test_the_sqlite_files_hold_no_class_attribute_or_value(tmp_path, keyring):
    path = tmp_path / "secret.db"
    db = amphora.open(f"sqlite:///{path}", keyring=keyring)
    write_ledger(db)
    with db.transaction() as conn:
        assert conn.root.ledger.quartermaster_notes == "the launch code is 0451"
    assert glob.glob(f"{path}-wal")  # the WAL is read while the database is open
    raw = files_of(path)
    assert len(raw) > 4096
    assert [secret for secret in SECRETS if secret in raw] == []
    db.close()
    raw = files_of(path)
    assert [secret for secret in SECRETS if secret in raw] == []
    # The same objects stored without encryption show every one of those names.
    plain = amphora.open(f"sqlite:///{tmp_path / 'plain.db'}")
    write_ledger(plain)
    assert [secret for secret in SECRETS if secret not in files_of(tmp_path / "plain.db")] == []
    plain.close()


def test_metadata_reads_back_through_history_and_iterator(tmp_path, keyring):
    db = amphora.open(f"sqlite:///{tmp_path / 'm.db'}", keyring=keyring)
    write_ledger(db, ticket=42)
    last = list(db.storage.iterator())[-1]
    assert (last.user, last.description, last.extension) == (
        b"mysterious-user", b"a description that tells all", {"ticket": 42})
    entry = db.storage.history(amphora.utils.z64)[0]
    assert (entry["user_name"], entry["description"], entry["ticket"]) == (
        b"mysterious-user", b"a description that tells all", 42)
    db.close()


def test_reopening_needs_the_same_keys(tmp_path, keyring):
    path = tmp_path / "k.db"
    db = amphora.open(f"sqlite:///{path}", keyring=keyring)
    with db.transaction() as conn:
        conn.root.ledger = ZanzibarLedger()
    database_id = db.storage.database_id
    db.close()
    again = amphora.open(f"sqlite:///{path}", keyring=amphora.Keyring.unlock(
        keyring.path, "correct horse battery staple"))
    assert again.storage.database_id == database_id
    with again.transaction() as conn:
        assert conn.root.ledger.quartermaster_notes == "the launch code is 0451"
    again.close()
    stranger = amphora.Keyring.create(tmp_path / "other.keyring", "other", CHEAP)
    with pytest.raises(amphora.TamperedRecordError, match="failed authentication"):
        amphora.open(f"sqlite:///{path}", keyring=stranger)


def test_conflicts_are_merged_on_the_client(tmp_path, keyring):
    """Two connections add to one BTrees.Length: the SQLite storage below never merges
    (its records are sealed); the wrapper merges the plain states and seals the merge."""
    db = amphora.open(f"sqlite:///{tmp_path / 'c.db'}", keyring=keyring)
    assert db.storage.storage._resolve_conflicts is False
    with db.transaction() as conn:
        conn.root.count = Length(0)
    one, two = (db.open(transaction.TransactionManager()) for _ in range(2))
    one.root.count.change(1)
    two.root.count.change(10)
    one.transaction_manager.commit()
    two.transaction_manager.commit()
    one.close(), two.close()
    with db.transaction() as conn:
        assert conn.root.count() == 11
    db.close()


def test_a_conflict_that_cannot_merge_names_the_plain_class(tmp_path, keyring):
    db = amphora.open(f"sqlite:///{tmp_path / 'c.db'}", keyring=keyring)
    with db.transaction() as conn:
        conn.root.ledger = ZanzibarLedger()
    one, two = (db.open(transaction.TransactionManager()) for _ in range(2))
    one.root.ledger.quartermaster_notes = "one"
    two.root.ledger.quartermaster_notes = "two"
    one.transaction_manager.commit()
    with pytest.raises(amphora.ConflictError) as raised:
        two.transaction_manager.commit()
    assert raised.value.class_name.endswith("ZanzibarLedger")
    two.transaction_manager.abort()
    one.close(), two.close()
    with db.transaction() as conn:
        assert conn.root.ledger.quartermaster_notes == "one"
    db.close()


def _sqlite(path) -> SQLiteStorage:
    return SQLiteStorage(str(path))


def _client(path) -> Any:
    from amphora.storage.client import ClientStorage
    server = serverprocess.shared_server("sqlite")
    return ClientStorage(server.host, server.port, storage=serverprocess.storage_name(path))


@pytest.mark.parametrize("inner", [_sqlite, _client], ids=["sqlite", "client->sqlite"])
def test_a_commit_whose_tid_was_overtaken_is_sealed_again(tmp_path, keyring, inner):
    """Two storage objects on one database: one begins its commit (its tid chosen), the
    other commits meanwhile with a later tid; the first is sealed again with a newer tid."""
    path = tmp_path / "race.db"
    first = EncryptedStorage(inner(path), keyring)
    db = amphora.DB(first)
    with db.transaction() as conn:
        conn.root.mine, conn.root.theirs = PersistentMapping(), PersistentMapping()
    second = amphora.DB(EncryptedStorage(inner(path), keyring))
    conn = db.open(transaction.TransactionManager())
    conn.root.mine["name"] = "first"
    txn = conn.transaction_manager.get()
    chosen = []
    vote_as = first._vote_as

    def overtaken(tid: bytes) -> None:
        chosen.append(tid)
        if len(chosen) == 1:
            with second.transaction() as other:
                other.root.theirs["name"] = "second"
        vote_as(tid)
    first._vote_as = overtaken
    txn.commit()
    assert len(chosen) == 2 and chosen[1] > chosen[0]
    conn.close()
    for database in (db, second):
        database.storage.sync()
        with database.transaction() as check:
            assert (check.root.mine["name"], check.root.theirs["name"]) == ("first", "second")
    second.close(), db.close()


def test_the_json_mirror_is_refused(tmp_path, keyring):
    db = amphora.open(f"sqlite:///{tmp_path / 'mirror.db'}", keyring=keyring)
    with pytest.raises(amphora.MirrorError, match="plaintext"):
        db.create_mirror()
    db.close()
    plain = amphora.open(f"sqlite:///{tmp_path / 'mirrored.db'}")
    plain.create_mirror()
    plain.close()
    with pytest.raises(amphora.MirrorError, match="plaintext"):
        amphora.open(f"sqlite:///{tmp_path / 'mirrored.db'}", keyring=keyring)


def test_a_keyring_must_be_a_keyring():
    with pytest.raises(TypeError, match="amphora.Keyring"):
        EncryptedStorage(amphora.MemoryStorage(), "passphrase")


def test_a_view_of_the_past_over_an_encrypted_database(tmp_path, keyring):
    """BeforeStorage over EncryptedStorage: the database as it was at a tid, its old
    revisions opened with the keys; and db.open(at=...) on the same database."""
    from amphora.storage.before import BeforeStorage
    path = tmp_path / "app.db"
    db = amphora.open(f"sqlite:///{path}", keyring=keyring)
    with db.transaction() as conn:
        conn.root.balance = 100
    then = db.lastTransaction()
    with db.transaction() as conn:
        conn.root.balance = 40
    with db.open(at=then) as conn:
        assert conn.root.balance == 100
    db.close()
    view = amphora.DB(BeforeStorage(EncryptedStorage(SQLiteStorage(str(path), read_only=True),
                                                     keyring), at=then))
    with view.transaction() as conn:
        assert conn.root.balance == 100
    view.close()


def test_one_record_cache_under_amphora_db_the_sealed_one_under_zodb_db(tmp_path, keyring):
    """amphora.DB keeps the opened records in its own cache, so the wrapped storage's
    cache of sealed ones is turned off (it was written at every commit and read by no
    one); under ZODB.DB, which keeps no records, the sealed cache is the only one."""
    import ZODB

    ours = EncryptedStorage(SQLiteStorage(str(tmp_path / "ours.db")), keyring)
    db = amphora.DB(ours)
    with db.transaction() as conn:
        conn.root()["counter"] = PersistentMapping(value=1)
    assert ours.storage.record_cache.max_bytes == 0
    assert len(ours.storage.record_cache) == 0
    opened = [data for _, (data, _, _) in db.records.items()]
    assert opened and not any(is_sealed(data) for data in opened)
    db.close()

    theirs = EncryptedStorage(SQLiteStorage(str(tmp_path / "theirs.db")), keyring)
    zdb = ZODB.DB(theirs)
    conn = zdb.open()
    conn.root()["counter"] = PersistentMapping(value=1)
    transaction.commit()
    cached = [data for _, (data, _, _) in theirs.storage.record_cache.items()]
    assert theirs.storage.record_cache.max_bytes > 0
    assert cached and all(is_sealed(data) for data in cached)
    conn.close()
    zdb.close()
