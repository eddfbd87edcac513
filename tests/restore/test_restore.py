"""ZODB's restore interface on every writable storage: ``restore`` writes a record as a
given transaction wrote it, ``copyTransactionsFrom`` copies another storage's history
(a FileStorage written by ZODB here) transaction for transaction."""
from __future__ import annotations

import pytest
import transaction
from persistent.mapping import PersistentMapping

import amphora
from amphora.errors import StorageTransactionError, Unsupported
from amphora.feeds import ChangeFeed
from amphora.storage.base import TransactionMetaData
from amphora.utils import maxtid, new_tid, p64, z64

from restore_support import current_only, dump, write_filestorage

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def filestorage(tmp_path):
    """A FileStorage with three commits by ZODB, opened read-only."""
    from ZODB.FileStorage import FileStorage
    path = tmp_path / "Data.fs"
    write_filestorage(path)
    source = FileStorage(str(path), read_only=True)
    yield source
    source.close()


class _From:
    """``storage`` whose ``iterator()`` starts after ``after`` (as zodbconvert
    --incremental hands its source to ``copyTransactionsFrom``)."""

    def __init__(self, storage, after: bytes):
        self.storage, self.after = storage, after

    def iterator(self, start=None, stop=None):
        return self.storage.iterator(start or p64(int.from_bytes(self.after, "big") + 1), stop)


def kept(storage, history):
    """``history`` as ``storage`` keeps it (history-free: current records only)."""
    return history if storage.supports_history else current_only(history)


def test_copy_transactions_from_a_filestorage_keeps_every_record(storage, filestorage, tmp_path):
    storage.copyTransactionsFrom(filestorage)
    assert dump(storage) == kept(storage, dump(filestorage))
    assert len(dump(storage)) == 4  # the root's creation and three commits
    assert storage.lastTransaction() == filestorage.lastTransaction()
    for oid in {record.oid for txn in filestorage.iterator() for record in txn}:
        assert storage.load(oid) == filestorage.load(oid)
    # More commits to the source, copied incrementally
    from ZODB.FileStorage import FileStorage
    path = tmp_path / "Data.fs"
    filestorage.close()
    write_filestorage(path, commits=2, start=3)
    source = FileStorage(str(path), read_only=True)
    try:
        storage.copyTransactionsFrom(_From(source, storage.lastTransaction()))
        assert dump(storage) == kept(storage, dump(source))
        assert len(dump(storage)) == 6
    finally:
        source.close()
    # A database on the copy reads the objects, and commits after them
    db = amphora.DB(storage)
    with db.transaction() as conn:
        people = conn.root()["people"]
        assert sorted(people) == ["p0", "p1", "p2", "p3", "p4"]
        assert people["p0"].age == 24
        people["p5"] = PersistentMapping()
    new_oid = storage.new_oid()
    assert new_oid not in {record.oid for txn in storage.iterator() for record in txn}


def _commit_item(storage, value):
    db = amphora.DB(storage)
    with db.transaction() as conn:
        conn.root()["item"] = PersistentMapping(value=value)
        conn.root()["other"] = PersistentMapping()
    with db.transaction() as conn:
        oid = conn.root()["item"]._p_oid
        record = storage.loadBefore(oid, maxtid)[0]
    return db, oid, record


def test_restore_replaces_the_current_revision_without_a_conflict_check(storage):
    db, oid, record = _commit_item(storage, 1)
    first = storage.lastTransaction()
    with db.transaction() as conn:  # a later revision, so the restore's serial is stale
        conn.root()["item"]["value"] = 2
    tid = new_tid(storage.lastTransaction())
    meta = TransactionMetaData("copier", "restored", {"why": "test"})
    storage.tpc_begin(meta, tid)
    storage.restore(oid, tid, record, "", first, meta)
    storage.tpc_vote(meta)
    assert storage.tpc_finish(meta) == tid
    assert storage.lastTransaction() == tid
    assert storage.loadBefore(oid, maxtid) == (record, tid, None)
    last = list(storage.iterator(tid))
    assert [(t.tid, t.user, t.description, t.extension) for t in last] == \
        [(tid, b"copier", b"restored", {"why": "test"})]
    assert [(r.oid, r.data) for r in last[0]] == [(oid, record)]
    db.close()


def test_restore_refuses_a_tid_not_above_the_last_and_writes_nothing(storage):
    db, oid, record = _commit_item(storage, 1)
    before = dump(storage)
    last = storage.lastTransaction()
    meta = TransactionMetaData()
    storage.tpc_begin(meta, last)
    storage.restore(oid, last, b"not written", "", None, meta)
    with pytest.raises(StorageTransactionError, match="above the last tid"):
        storage.tpc_vote(meta)
    storage.tpc_abort(meta)
    assert dump(storage) == before
    assert storage.lastTransaction() == last
    db.close()


def test_restore_needs_a_commit_begun_with_its_tid(storage):
    db, oid, record = _commit_item(storage, 1)
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    try:
        with pytest.raises(StorageTransactionError, match="tpc_begin"):
            storage.restore(oid, new_tid(storage.lastTransaction()), record, "", None, meta)
    finally:
        storage.tpc_abort(meta)
    db.close()


def test_a_record_without_data_is_refused_naming_it(storage):
    db, oid, record = _commit_item(storage, 1)
    last = storage.lastTransaction()
    tid = new_tid(last)
    meta = TransactionMetaData()
    storage.tpc_begin(meta, tid)
    try:
        with pytest.raises(Unsupported, match=f"oid 0x0*{int.from_bytes(oid, 'big'):x}.*"
                                              "without data"):
            storage.restore(oid, tid, None, "", None, meta)
    finally:
        storage.tpc_abort(meta)
    assert storage.lastTransaction() == last
    db.close()


def test_restored_transactions_reach_the_change_feed(storage, filestorage):
    feed = ChangeFeed(storage, z64)
    storage.copyTransactionsFrom(filestorage)
    changes = feed.read()
    assert [(c.tid, c.user, c.description, c.extension, sorted(c.oids)) for c in changes] == \
        [(t.tid, t.user, t.description, t.extension, sorted(r.oid for r in t))
         for t in filestorage.iterator()]


def _copy_more(storage, path):
    """Two more commits to the FileStorage at ``path``, copied into ``storage`` after
    what it holds (as ``zodbconvert --incremental`` does)."""
    from ZODB.FileStorage import FileStorage
    write_filestorage(path, commits=2, start=3)
    source = FileStorage(str(path), read_only=True)
    try:
        storage.copyTransactionsFrom(_From(source, storage.lastTransaction()))
    finally:
        source.close()


def test_restored_transactions_invalidate_another_instance(make_storage, filestorage,
                                                           tmp_path):
    if not make_storage.durable:
        pytest.skip(f"{make_storage.name} storage: each instance keeps its own data "
                    "(durable is False), no second instance to tell")
    storage = make_storage("shared")
    storage.copyTransactionsFrom(filestorage)
    filestorage.close()
    db = amphora.DB(make_storage("shared"))
    conn = db.open()
    people = conn.root()["people"]
    assert sorted(people) == ["p0", "p1", "p2"]
    _copy_more(storage, tmp_path / "Data.fs")
    transaction.begin()  # a new transaction: the connection takes the invalidations
    assert sorted(people) == ["p0", "p1", "p2", "p3", "p4"]
    assert people["p0"].age == 24
    conn.close()
    db.close()


def test_a_mirror_gets_documents_for_restored_records(make_storage, storage, filestorage,
                                                      tmp_path):
    if not getattr(storage, "supports_mirror", False):
        pytest.skip(f"{make_storage.name} cannot keep a JSON mirror (supports_mirror is False)")
    storage.copyTransactionsFrom(filestorage)
    filestorage.close()
    db = amphora.DB(storage)
    db.create_mirror()
    _copy_more(storage, tmp_path / "Data.fs")
    conn = db.open()
    found = conn.where("state->>'email' = %s", "p4@example.com")
    assert [item.value for item in found] == ["p4"]
    assert [item.age for item in conn.where("state->>'email' = %s", "p1@example.com")] == [24]
    conn.close()
    db.close()
