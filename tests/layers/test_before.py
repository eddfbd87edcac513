"""BeforeStorage: a storage as it was at one moment, read-only and fixed.

These run over every storage kind of the conformance suite (``make_storage``): the data
is written to the storage, then read through a view of an earlier moment.
"""
from __future__ import annotations

import datetime

import pytest

import amphora
from amphora import (BeforeStorage, ObjectNotFoundError, ReadOnlyError,
                     StorageTransactionError, TransactionMetaData, Unsupported)
from amphora.storage.before import moment_tid
from amphora.utils import maxtid, p64, tid_to_datetime, u64, z64

from conformance.records import commit, record, write


def after(tid: bytes) -> bytes:
    return p64(u64(tid) + 1)


@pytest.fixture
def written(storage):
    """Three transactions: a and b created, a changed, c created.
    ``(storage, a, b, c, [t1, t2, t3])``."""
    a, b, c = storage.new_oid(), storage.new_oid(), storage.new_oid()
    t1 = commit(storage, {a: (z64, record("a1")), b: (z64, record("b1"))}, description="one")
    t2 = write(storage, a, record("a2"), t1, description="two")
    t3 = write(storage, c, record("c1"), description="three")
    return storage, a, b, c, [t1, t2, t3]


def test_a_view_reads_the_state_just_before_its_moment(make_storage, written):
    storage, a, b, c, (t1, t2, t3) = written
    make_storage.require("history", storage)
    view = BeforeStorage(storage, before=t3)
    assert view.lastTransaction() == t2
    assert view.loadBefore(a, maxtid) == (record("a2"), t2, None)  # current in the view
    assert view.loadBefore(a, t2) == (record("a1"), t1, t2)
    assert view.loadBefore(b, maxtid) == (record("b1"), t1, None)
    assert view.load_many([a, b, c], maxtid) == {a: (record("a2"), t2, None),
                                                  b: (record("b1"), t1, None)}
    assert view.load_many([a], t2) == {a: (record("a1"), t1, t2)}
    with pytest.raises(ObjectNotFoundError):  # created after the moment
        view.loadBefore(c, maxtid)
    with pytest.raises(ObjectNotFoundError):
        view.loadSerial(c, t3)
    with pytest.raises(ObjectNotFoundError):
        view.history(c)
    assert view.loadSerial(a, t1) == record("a1")
    assert [entry["tid"] for entry in view.history(a, size=5)] == [t2, t1]
    assert [txn.tid for txn in view.iterator()] == [t1, t2]
    assert [txn.tid for txn in view.iterator(t2, maxtid)] == [t2]


def test_at_includes_the_transaction_of_that_moment(make_storage, written):
    storage, a, _b, _c, (t1, t2, _t3) = written
    make_storage.require("history", storage)
    view = BeforeStorage(storage, at=t1)
    assert view.lastTransaction() == t1
    assert view.loadBefore(a, maxtid) == (record("a1"), t1, None)


def test_an_object_created_later_inside_the_view_is_none_before_it(make_storage, written):
    storage, _a, _b, c, (_t1, t2, t3) = written
    make_storage.require("history", storage)
    view = BeforeStorage(storage, at=t3)
    assert view.loadBefore(c, t3) is None
    assert view.loadBefore(c, after(t2)) is None
    assert view.loadBefore(c, maxtid) == (record("c1"), t3, None)


def test_a_view_does_not_change_when_the_storage_does(make_storage, written):
    storage, a, _b, _c, (_t1, t2, t3) = written
    make_storage.require("history", storage)
    view = BeforeStorage(storage)  # now
    assert view.lastTransaction() == t3
    t4 = write(storage, a, record("a3"), t2)
    assert view.lastTransaction() == t3
    assert view.loadBefore(a, maxtid) == (record("a2"), t2, None)
    assert storage.loadBefore(a, maxtid) == (record("a3"), t4, None)


def test_every_write_is_refused(storage, written):
    _, a, _b, _c, (_t1, t2, _t3) = written
    view = BeforeStorage(storage)
    assert view.isReadOnly()
    meta = TransactionMetaData()
    with pytest.raises(ReadOnlyError):
        view.tpc_begin(meta)
    with pytest.raises(ReadOnlyError):
        view.store(a, t2, record("no"), "", meta)
    with pytest.raises(ReadOnlyError):
        view.new_oid()
    with pytest.raises(ReadOnlyError):
        view.new_oids(3)
    with pytest.raises(ReadOnlyError):
        view.pack(0, None)
    with pytest.raises(StorageTransactionError):
        view.tpc_vote(meta)
    view.tpc_abort(meta)  # harmless
    assert storage.loadBefore(a, maxtid)[1] == t2


def test_a_past_moment_of_a_history_free_storage_is_unsupported(make_storage, written):
    storage, _a, _b, _c, (_t1, _t2, t3) = written
    if make_storage.supports("history", storage):
        pytest.skip(f"{make_storage.name} storage keeps history: every moment can be shown")
    with pytest.raises(Unsupported):
        BeforeStorage(storage, before=t3)
    assert BeforeStorage(storage).lastTransaction() == t3  # "now" needs no history


def test_a_database_on_a_view_is_read_only(make_storage, storage):
    make_storage.require("history", storage)
    db = amphora.DB(storage)
    with db.transaction() as conn:
        conn.root.value = "old"
    moment = db.last_transaction()
    with db.transaction() as conn:
        conn.root.value = "new"
    view_db = amphora.DB(BeforeStorage(storage, at=moment))
    conn = view_db.open()
    assert conn.root.value == "old"
    conn.root.value = "changed"
    with pytest.raises(ReadOnlyError):
        conn.transaction_manager.commit()
    conn.transaction_manager.abort()
    conn.close()
    with db.transaction() as conn:
        assert conn.root.value == "new"


def test_moments_are_tids_datetimes_dates_and_iso_strings():
    tid = moment_tid("2026-11-01T12:00")
    assert tid_to_datetime(tid) == datetime.datetime(2026, 11, 1, 12, 0,
                                                     tzinfo=datetime.timezone.utc)
    assert moment_tid(datetime.datetime(2026, 11, 1, 12)) == tid
    assert moment_tid(datetime.datetime(2026, 11, 1, 13, tzinfo=datetime.timezone(
        datetime.timedelta(hours=1)))) == tid
    assert moment_tid(datetime.date(2026, 11, 1)) == moment_tid("2026-11-01T00:00")
    assert moment_tid(tid) == tid
    assert moment_tid("0x" + tid.hex()) == tid
    for bad in ("yesterday", "0xnothex", b"short"):
        with pytest.raises(ValueError):
            moment_tid(bad)
    with pytest.raises(TypeError):
        moment_tid(12.5)


def test_before_uri_opens_a_view(tmp_path):
    uri = f"sqlite:///{tmp_path / 'prod.db'}"
    with amphora.open(uri) as db:
        with db.transaction() as conn:
            conn.root.value = 1
        moment = "0x" + db.last_transaction().hex()
        with db.transaction() as conn:
            conn.root.value = 2
    with amphora.open(f"before://?storage={uri}&at={moment}") as db:
        assert isinstance(db.storage, BeforeStorage)
        with db.transaction() as conn:
            assert conn.root.value == 1
    with pytest.raises(amphora.InvalidURIError, match="at=MOMENT"):
        amphora.open(f"before://?storage={uri}")  # silently meant "now" before


def test_a_before_uri_with_a_raw_plus_in_its_moment_says_to_escape_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'prod.db'}"
    amphora.open(uri).close()
    with pytest.raises(amphora.InvalidURIError, match="%2B") as info:
        amphora.open(f"before://?storage={uri}&at=2026-01-01T12:00:00+01:00")
    assert "at=" in str(info.value)
    with amphora.open(f"before://?storage={uri}&at=2026-01-01T12:00:00%2B01:00") as db:
        assert isinstance(db.storage, BeforeStorage)
