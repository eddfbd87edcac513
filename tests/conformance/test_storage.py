"""The storage contract, used directly (no DB, no Connection).

Every amphora storage keeps opaque records under 8-byte oids and the 8-byte tids of the
transactions that wrote them, commits in two phases, detects write and read conflicts,
and, when it keeps history, answers exactly which revision was current at any tid.
"""
from __future__ import annotations

import time

import pytest
from transaction.interfaces import TransientError

from amphora import (AmphoraError, ConflictError, ObjectNotFoundError, ReadConflictError,
                     ReadOnlyError, StaleReachableError, StorageError,
                     StorageTransactionError, TransactionMetaData)
from amphora.serialize import references
from amphora.utils import maxtid, p64, u64, z64

from conformance.records import commit, record, write

pytestmark = pytest.mark.timeout(30)


def after(tid: bytes) -> bytes:
    """The tid just after ``tid``: ``loadBefore(oid, after(t))`` reads the state at t."""
    return p64(u64(tid) + 1)


@pytest.fixture
def three_revisions(storage):
    """One object written by three transactions: ``(oid, [t1, t2, t3], [d1, d2, d3])``."""
    oid = storage.new_oid()
    datas = [record(f"revision {n}") for n in (1, 2, 3)]
    tids = []
    serial = z64
    for n, data in enumerate(datas, 1):
        serial = write(storage, oid, data, serial, description=f"write {n}")
        tids.append(serial)
    return oid, tids, datas


# -- oids and tids ----------------------------------------------------------------------

def test_new_oid_gives_distinct_8_byte_oids(storage):
    oids = [storage.new_oid() for _ in range(200)]
    assert all(isinstance(oid, bytes) and len(oid) == 8 for oid in oids)
    assert len(set(oids)) == len(oids)


def test_new_oid_never_reuses_a_stored_oid_after_reopening(make_storage):
    storage = make_storage()
    stored = [storage.new_oid() for _ in range(5)]
    commit(storage, {oid: (z64, record(n)) for n, oid in enumerate(stored)})
    storage = make_storage.reopen(storage)
    fresh = {storage.new_oid() for _ in range(20)}
    assert not fresh & set(stored)


def test_an_empty_storage_has_last_transaction_z64(storage):
    assert storage.lastTransaction() == z64


def test_each_commit_returns_a_tid_larger_than_the_last(storage):
    oid = storage.new_oid()
    tids = []
    serial = z64
    for n in range(5):
        serial = write(storage, oid, record(n), serial)
        tids.append(serial)
        assert storage.lastTransaction() == serial
    assert all(len(tid) == 8 for tid in tids)
    assert tids == sorted(tids) and len(set(tids)) == len(tids)


def test_tpc_finish_calls_back_with_the_tid_before_last_transaction_reports_it(storage):
    oid = storage.new_oid()
    before = write(storage, oid, record(1))
    seen = []

    def callback(tid):
        seen.append((tid, storage.lastTransaction()))

    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    storage.store(oid, before, record(2), "", meta)
    storage.tpc_vote(meta)
    tid = storage.tpc_finish(meta, callback)
    assert seen == [(tid, before)]
    assert storage.lastTransaction() == tid


# -- reading ----------------------------------------------------------------------------

def test_load_before_names_the_revision_and_the_tids_that_bound_it(make_storage, storage,
                                                                   three_revisions):
    make_storage.require("history", storage)
    oid, (t1, t2, t3), (d1, d2, d3) = three_revisions
    assert storage.loadBefore(oid, t1) is None
    assert storage.loadBefore(oid, after(t1)) == (d1, t1, t2)
    assert storage.loadBefore(oid, t2) == (d1, t1, t2)
    assert storage.loadBefore(oid, after(t2)) == (d2, t2, t3)
    assert storage.loadBefore(oid, t3) == (d2, t2, t3)
    assert storage.loadBefore(oid, after(t3)) == (d3, t3, None)
    assert storage.loadBefore(oid, maxtid) == (d3, t3, None)


def test_load_before_of_the_current_revision_works_without_history(storage, three_revisions):
    oid, (_t1, _t2, t3), (_d1, _d2, d3) = three_revisions
    assert storage.loadBefore(oid, maxtid) == (d3, t3, None)
    assert storage.loadBefore(oid, after(t3)) == (d3, t3, None)


def test_load_before_is_none_before_the_object_was_created(storage):
    first = write(storage, storage.new_oid(), record("other"))
    oid = storage.new_oid()
    created = write(storage, oid, record("late"))
    assert storage.loadBefore(oid, created) is None
    assert storage.loadBefore(oid, after(first)) is None


def test_load_before_of_an_unknown_oid_raises_object_not_found(storage):
    write(storage, storage.new_oid(), record(1))
    unknown = p64(0xDEAD)
    with pytest.raises(ObjectNotFoundError) as info:
        storage.loadBefore(unknown, maxtid)
    assert isinstance(info.value, KeyError)  # code catching KeyError/POSKeyError keeps working
    assert info.value.args[0] == unknown


def test_load_serial_reads_each_revision_by_its_tid(make_storage, storage, three_revisions):
    make_storage.require("history", storage)
    oid, tids, datas = three_revisions
    for tid, data in zip(tids, datas):
        assert storage.loadSerial(oid, tid) == data


def test_load_serial_reads_the_current_revision(storage, three_revisions):
    oid, tids, datas = three_revisions
    assert storage.loadSerial(oid, tids[-1]) == datas[-1]


def test_load_serial_of_an_unknown_revision_raises_object_not_found(storage, three_revisions):
    oid, tids, _ = three_revisions
    with pytest.raises(ObjectNotFoundError):
        storage.loadSerial(oid, after(tids[-1]))
    with pytest.raises(ObjectNotFoundError):
        storage.loadSerial(p64(0xDEAD), tids[-1])


def test_load_many_returns_what_exists_in_the_snapshot_and_leaves_out_the_rest(storage):
    present, missing, later = storage.new_oid(), p64(0xDEAD), storage.new_oid()
    t1 = write(storage, present, record("present"))
    t2 = write(storage, later, record("later"))
    found = storage.load_many([present, missing, later], after(t1))
    assert found == {present: (record("present"), t1, None)}
    found = storage.load_many([present, missing, later], after(t2))
    assert found == {present: (record("present"), t1, None), later: (record("later"), t2, None)}
    assert storage.load_many([], maxtid) == {}


def test_load_many_reads_old_revisions_like_load_before(make_storage, storage, three_revisions):
    make_storage.require("history", storage)
    oid, (t1, t2, t3), (d1, d2, d3) = three_revisions
    assert storage.load_many([oid], t3) == {oid: (d2, t2, t3)}
    assert storage.load_many([oid], t1) == {}


def test_history_lists_revisions_newest_first_with_their_metadata(make_storage, storage,
                                                                  three_revisions):
    make_storage.require("history", storage)
    oid, tids, datas = three_revisions
    entries = storage.history(oid, size=10)
    assert [entry["tid"] for entry in entries] == tids[::-1]
    assert [entry["description"] for entry in entries] == [b"write 3", b"write 2", b"write 1"]
    assert [entry["size"] for entry in entries] == [len(d) for d in datas[::-1]]
    assert all(entry["serial"] == entry["tid"] for entry in entries)
    assert entries[0]["time"] == pytest.approx(time.time(), abs=60)
    assert [entry["tid"] for entry in storage.history(oid, size=2)] == tids[:0:-1]


def test_history_has_the_current_revision_and_the_transaction_metadata(storage):
    oid = storage.new_oid()
    tid = write(storage, oid, record(1), user="ann", description="made it",
                extension={"app": "test"})
    [entry] = storage.history(oid)
    assert entry["tid"] == tid
    assert entry["user_name"] == b"ann"
    assert entry["description"] == b"made it"
    assert entry["app"] == "test"


def test_history_of_an_unknown_oid_raises_object_not_found(storage):
    with pytest.raises(ObjectNotFoundError):
        storage.history(p64(0xDEAD))


def test_iterator_yields_every_transaction_in_tid_order_with_its_records(make_storage,
                                                                         storage):
    make_storage.require("history", storage)
    a, b = storage.new_oid(), storage.new_oid()
    t1 = commit(storage, {a: (z64, record("a1")), b: (z64, record("b1"))},
                description="first", user="ann", extension={"k": 1})
    t2 = write(storage, a, record("a2"), t1, description="second")
    t3 = write(storage, b, record("b2"), t1, description="third")
    transactions = list(storage.iterator())
    assert [txn.tid for txn in transactions] == [t1, t2, t3]
    first = transactions[0]
    assert (first.user, first.description, first.extension) == (b"ann", b"first", {"k": 1})
    assert sorted((r.oid, r.tid, r.data) for r in first) == sorted(
        [(a, t1, record("a1")), (b, t1, record("b1"))])
    assert [(r.oid, r.data) for r in transactions[1]] == [(a, record("a2"))]


def test_iterator_ranges_include_both_ends(make_storage, storage, three_revisions):
    make_storage.require("history", storage)
    _oid, (t1, t2, t3), _ = three_revisions
    assert [txn.tid for txn in storage.iterator(t2)] == [t2, t3]
    assert [txn.tid for txn in storage.iterator(None, t2)][-2:] == [t1, t2]
    assert [txn.tid for txn in storage.iterator(t2, t2)] == [t2]
    assert [txn.tid for txn in storage.iterator(t1, t3)] == [t1, t2, t3]
    assert list(storage.iterator(after(t3))) == []


def test_len_counts_objects_not_revisions(storage, three_revisions):
    write(storage, storage.new_oid(), record("another"))
    assert len(storage) == 2


# -- conflicts ---------------------------------------------------------------------------

def test_storing_from_a_stale_serial_raises_conflict_error_and_changes_nothing(
        storage, three_revisions):
    oid, (_t1, t2, t3), (_d1, _d2, d3) = three_revisions
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    with pytest.raises(ConflictError) as info:
        storage.store(oid, t2, record("stale"), "", meta)
        storage.tpc_vote(meta)
    storage.tpc_abort(meta)
    error = info.value
    assert isinstance(error, TransientError)  # transaction's retry loops retry it
    assert not isinstance(error, ReadConflictError)
    assert error.oid == oid
    assert error.serials == (t3, t2)  # (committed, read)
    assert "conformance.models.Item" in str(error)
    assert storage.lastTransaction() == t3
    assert storage.loadBefore(oid, maxtid) == (d3, t3, None)


def test_creating_an_oid_that_another_transaction_created_conflicts(storage):
    oid = storage.new_oid()
    write(storage, oid, record("first"))
    with pytest.raises(ConflictError):
        write(storage, oid, record("second"))  # read serial z64: "new"
    assert storage.loadBefore(oid, maxtid)[0] == record("first")


def test_check_current_serial_raises_read_conflict_when_the_object_changed(
        storage, three_revisions):
    oid, (_t1, t2, t3), _ = three_revisions
    other = storage.new_oid()
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    with pytest.raises(ReadConflictError) as info:
        storage.checkCurrentSerialInTransaction(oid, t2, meta)
        storage.store(other, z64, record("depends on a stale read"), "", meta)
        storage.tpc_vote(meta)
    storage.tpc_abort(meta)
    assert isinstance(info.value, ConflictError)
    assert info.value.oid == oid
    assert storage.lastTransaction() == t3
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(other, maxtid)


def test_check_current_serial_passes_when_the_object_is_unchanged(storage, three_revisions):
    oid, (_t1, _t2, t3), _ = three_revisions
    other = storage.new_oid()
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    storage.checkCurrentSerialInTransaction(oid, t3, meta)
    storage.store(other, z64, record("fine"), "", meta)
    storage.tpc_vote(meta)
    tid = storage.tpc_finish(meta)
    assert storage.loadBefore(other, maxtid) == (record("fine"), tid, None)


# -- two-phase commit --------------------------------------------------------------------

def test_tpc_abort_after_vote_writes_nothing(storage):
    existing = storage.new_oid()
    t1 = write(storage, existing, record("kept"))
    new = storage.new_oid()
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    storage.store(existing, t1, record("discarded"), "", meta)
    storage.store(new, z64, record("discarded"), "", meta)
    storage.tpc_vote(meta)
    storage.tpc_abort(meta)
    assert storage.lastTransaction() == t1
    assert storage.loadBefore(existing, maxtid) == (record("kept"), t1, None)
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(new, maxtid)
    # the commit lock was released: the next commit goes through
    t2 = write(storage, existing, record("next"), t1)
    assert t2 > t1


def test_store_many_writes_records_like_store(storage, three_revisions):
    oid, (_t1, _t2, t3), _ = three_revisions
    new = storage.new_oid()
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    storage.store_many({oid: record("changed"), new: record("created")},
                       {oid: t3, new: z64}, meta)
    storage.tpc_vote(meta)
    tid = storage.tpc_finish(meta)
    assert storage.loadBefore(oid, maxtid) == (record("changed"), tid, None)
    assert storage.loadBefore(new, maxtid) == (record("created"), tid, None)


def test_store_many_detects_a_stale_serial_like_store(storage, three_revisions):
    oid, (_t1, t2, t3), _ = three_revisions
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    with pytest.raises(ConflictError) as info:
        storage.store_many({oid: record("stale")}, {oid: t2}, meta)
        storage.tpc_vote(meta)
    storage.tpc_abort(meta)
    assert info.value.oid == oid
    assert storage.loadBefore(oid, maxtid)[1] == t3


def test_store_many_after_store_keeps_the_serial_first_read(storage, three_revisions):
    oid, (_t1, t2, t3), _ = three_revisions
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    storage.store(oid, t2, record("first"), "", meta)
    storage.store_many({oid: record("second")}, {oid: t3}, meta)  # t2 still counts
    with pytest.raises(ConflictError):
        storage.tpc_vote(meta)
    storage.tpc_abort(meta)
    assert storage.loadBefore(oid, maxtid)[1] == t3


@pytest.mark.parametrize("records, serials, error, match", [
    ({b"\0" * 8: "text"}, {b"\0" * 8: z64}, TypeError, "bytes, not str"),
    ({b"short": b"data"}, {b"short": z64}, AmphoraError, "8 bytes"),
    ({b"\0" * 8: b"data"}, {}, AmphoraError, "a serial for every record"),
])
def test_store_many_refuses_bad_records_and_writes_nothing(storage, records, serials, error,
                                                           match):
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    try:
        with pytest.raises(error, match=match):
            storage.store_many(records, serials, meta)
    finally:
        storage.tpc_abort(meta)
    assert storage.lastTransaction() == z64
    with pytest.raises(StorageTransactionError):  # outside a commit
        storage.store_many({p64(1): record(1)}, {p64(1): z64}, TransactionMetaData())


def test_tpc_abort_of_a_transaction_that_is_not_committing_is_harmless(storage):
    storage.tpc_abort(TransactionMetaData())
    write(storage, storage.new_oid(), record(1))


def test_two_phase_commit_calls_must_name_the_transaction_being_committed(storage):
    oid = storage.new_oid()
    with pytest.raises(StorageTransactionError):
        storage.store(oid, z64, record(1), "", TransactionMetaData())  # no tpc_begin
    meta, other = TransactionMetaData(), TransactionMetaData()
    storage.tpc_begin(meta)
    try:
        with pytest.raises(StorageTransactionError):
            storage.store(oid, z64, record(1), "", other)
        with pytest.raises(StorageTransactionError):
            storage.tpc_vote(other)
        with pytest.raises(StorageTransactionError):
            storage.tpc_finish(other)
        storage.store(oid, z64, record(1), "", meta)
        storage.tpc_vote(meta)
        tid = storage.tpc_finish(meta)
    except BaseException:
        storage.tpc_abort(meta)
        raise
    assert storage.loadBefore(oid, maxtid) == (record(1), tid, None)


def test_a_read_only_storage_refuses_to_commit(make_storage):
    storage = make_storage()
    oid = storage.new_oid()
    tid = write(storage, oid, record("written before"))
    if make_storage.durable:
        storage = make_storage.reopen(storage, read_only=True)
    else:
        storage = make_storage("read-only", read_only=True)
    assert storage.isReadOnly()
    with pytest.raises(ReadOnlyError):
        storage.tpc_begin(TransactionMetaData())
    if make_storage.durable:
        assert storage.loadBefore(oid, maxtid) == (record("written before"), tid, None)


# -- pack -------------------------------------------------------------------------------

def test_pack_drops_revisions_superseded_before_the_pack_time(make_storage, storage,
                                                              three_revisions):
    make_storage.require("history", storage)
    make_storage.require("pack", storage)
    oid, (t1, t2, t3), (_d1, _d2, d3) = three_revisions
    storage.pack(time.time(), references, gc=False)  # no root refers to the object
    assert storage.loadBefore(oid, maxtid) == (d3, t3, None)
    assert storage.loadSerial(oid, t3) == d3
    for old in (t1, t2):
        with pytest.raises(ObjectNotFoundError):
            storage.loadSerial(oid, old)
    assert [entry["tid"] for entry in storage.history(oid, size=10)] == [t3]


def test_pack_with_gc_removes_unreachable_objects_and_keeps_reachable_ones(make_storage,
                                                                           storage):
    make_storage.require("pack", storage)
    child, grandchild, orphan = storage.new_oid(), storage.new_oid(), storage.new_oid()
    t1 = commit(storage, {z64: (z64, record("root", [child])),
                          child: (z64, record("child", [grandchild])),
                          grandchild: (z64, record("grandchild")),
                          orphan: (z64, record("orphan"))})
    storage.pack(time.time(), references)
    for oid in (z64, child, grandchild):
        assert storage.loadBefore(oid, maxtid)[1] == t1
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(orphan, maxtid)


def test_pack_with_gc_removes_objects_no_longer_referenced(make_storage, storage):
    make_storage.require("pack", storage)
    child = storage.new_oid()
    t1 = commit(storage, {z64: (z64, record("root", [child])), child: (z64, record("child"))})
    write(storage, z64, record("root without child"), t1)
    storage.pack(time.time(), references)
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(child, maxtid)


def test_pack_without_gc_keeps_unreachable_objects(make_storage, storage):
    make_storage.require("pack", storage)
    orphan = storage.new_oid()
    commit(storage, {z64: (z64, record("root")), orphan: (z64, record("orphan"))})
    storage.pack(time.time(), references, gc=False)
    assert storage.loadBefore(orphan, maxtid)[0] == record("orphan")


def test_pack_keeps_objects_created_after_the_pack_time(make_storage, storage):
    make_storage.require("pack", storage)
    write(storage, z64, record("root"))
    time.sleep(0.02)
    pack_time = time.time()
    time.sleep(0.02)
    late = storage.new_oid()
    write(storage, late, record("not yet linked"))
    storage.pack(pack_time, references)
    assert storage.loadBefore(late, maxtid)[0] == record("not yet linked")


def test_pack_given_the_objects_to_keep_deletes_exactly_the_others(make_storage, storage):
    """``reachable`` replaces the storage's own walk: it reads no reference (the root
    refers to the orphan, which is deleted all the same)."""
    make_storage.require("pack", storage)
    kept, orphan = storage.new_oid(), storage.new_oid()
    t1 = commit(storage, {z64: (z64, record("root", [kept, orphan])),
                          kept: (z64, record("kept")), orphan: (z64, record("orphan"))})
    storage.pack(time.time(), references, reachable={z64, kept}, through=t1)
    assert storage.loadBefore(kept, maxtid)[0] == record("kept")
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(orphan, maxtid)


def test_pack_given_objects_to_keep_computed_before_a_commit_refuses(make_storage, storage):
    """A commit after the set was computed may refer to an object outside it: the pack
    deletes nothing and raises StaleReachableError, a TransientError."""
    make_storage.require("pack", storage)
    orphan = storage.new_oid()
    t1 = commit(storage, {z64: (z64, record("root")), orphan: (z64, record("orphan"))})
    t2 = write(storage, z64, record("root again", [orphan]), t1)
    with pytest.raises(StaleReachableError) as refused:
        storage.pack(time.time(), references, reachable={z64}, through=t1)
    assert isinstance(refused.value, TransientError)
    assert storage.loadBefore(orphan, maxtid)[0] == record("orphan")
    storage.pack(time.time(), references, reachable={z64, orphan}, through=t2)
    assert storage.loadBefore(orphan, maxtid)[0] == record("orphan")


@pytest.mark.parametrize("reachable, through, named", [
    ({z64, b"short"}, "the last tid", "8-byte oids"),
    ({z64}, None, "8-byte tid"),
    ({z64}, "not a tid", "8-byte tid"),
])
def test_pack_given_bad_objects_to_keep_names_them_and_deletes_nothing(
        make_storage, storage, reachable, through, named):
    make_storage.require("pack", storage)
    orphan = storage.new_oid()
    tid = commit(storage, {z64: (z64, record("root")), orphan: (z64, record("orphan"))})
    with pytest.raises(StorageError, match=named):
        storage.pack(time.time(), references, reachable=reachable,
                     through=tid if through == "the last tid" else through)
    assert storage.loadBefore(orphan, maxtid)[0] == record("orphan")


# -- closing ----------------------------------------------------------------------------

def test_a_closed_storage_raises_an_amphora_error_when_used(storage):
    oid = storage.new_oid()
    write(storage, oid, record(1))
    storage.close()
    with pytest.raises(AmphoraError):
        storage.tpc_begin(TransactionMetaData())
    with pytest.raises(AmphoraError):
        storage.loadBefore(oid, maxtid)
    with pytest.raises(AmphoraError):
        storage.new_oid()
    storage.close()  # closing twice is harmless
