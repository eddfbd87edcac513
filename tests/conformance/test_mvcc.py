"""Snapshots: each connection reads the database as of the start of its transaction.

A connection sees a consistent snapshot: everything committed before its transaction
began, nothing committed after, until its next transaction boundary (commit, abort or
begin). At that boundary, objects that others changed are invalidated (turned into
ghosts) and reload their new state when used. Historical connections
(``db.open(at=...)`` / ``db.open(before=...)``) see a fixed past moment and cannot write.
"""
from __future__ import annotations

import pytest
import transaction

from amphora import DB, ReadConflictError, ReadOnlyHistoryError, Unsupported
from amphora.storage.memory import MemoryStorage
from amphora.utils import p64, u64

from conformance.models import Item

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def two_items(db):
    """Commit ``root.a`` and ``root.b`` (Items with value 0)."""
    with db.transaction() as conn:
        conn.root.a = Item(0)
        conn.root.b = Item(0)


def commit_values(connect, **values):
    """Set the values of root items in a separate connection and commit."""
    writer = connect()
    for name, value in values.items():
        getattr(writer.root, name).value = value
    writer.transaction_manager.commit()
    writer.close()


def test_a_reader_does_not_see_a_commit_until_its_next_transaction(db, connect, two_items):
    reader = connect()
    reader.transaction_manager.begin()
    assert reader.root.a.value == 0
    commit_values(connect, a=1, b=1)
    # the object already loaded keeps its state ...
    assert reader.root.a.value == 0
    # ... and an object loaded only now comes from the same snapshot
    assert reader.root.b.value == 0
    reader.transaction_manager.abort()
    assert reader.root.a.value == 1
    assert reader.root.b.value == 1


def test_ghosts_loaded_after_a_concurrent_commit_still_read_the_snapshot(make_storage, db,
                                                                         connect, two_items):
    make_storage.require("history", db.storage)
    reader = connect()
    reader.transaction_manager.begin()
    a = reader.root.a
    reader.cacheMinimize()
    assert a._p_changed is None
    commit_values(connect, a=5)
    assert a.value == 0  # reloaded from the snapshot, not the newest revision
    reader.transaction_manager.begin()
    assert a.value == 5


def test_without_history_a_ghost_changed_since_the_snapshot_raises_read_conflict(
        make_storage, db, connect, two_items):
    """A history-free storage keeps only current records: a snapshot cannot read an object
    changed after it began, and says so with a (retryable) ReadConflictError rather than
    show a state from another snapshot."""
    if make_storage.supports("history", db.storage):
        pytest.skip(f"{make_storage.name} storage keeps history: old states stay readable")
    reader = connect()
    reader.transaction_manager.begin()
    a = reader.root.a
    reader.cacheMinimize()
    commit_values(connect, a=5)
    with pytest.raises(ReadConflictError) as info:
        a.value
    assert info.value.oid == a._p_oid
    reader.transaction_manager.abort()
    assert a.value == 5


def test_commit_in_one_connection_invalidates_cached_objects_in_another(db, connect,
                                                                        two_items):
    reader = connect()
    a = reader.root.a
    assert a.value == 0 and a._p_changed is False
    commit_values(connect, a=7)
    reader.transaction_manager.begin()
    assert a._p_changed is None  # invalidated: a ghost until used
    assert a.value == 7
    assert reader.root.b._p_changed is False  # untouched objects stay loaded


def test_a_writer_sees_its_own_commit_and_then_newer_commits(db, connect, two_items):
    first, second = connect(), connect()
    first.root.a.value = 1
    first.transaction_manager.commit()
    assert first.root.a.value == 1
    second.transaction_manager.begin()
    second.root.a.value = 2
    second.transaction_manager.commit()
    first.transaction_manager.begin()
    assert first.root.a.value == 2


def test_new_objects_committed_elsewhere_appear_at_the_next_boundary(db, connect, two_items):
    reader = connect()
    reader.transaction_manager.begin()
    assert "c" not in reader.root()
    writer = connect()
    writer.root.c = Item("new")
    writer.transaction_manager.commit()
    assert "c" not in reader.root()
    reader.transaction_manager.begin()
    assert reader.root.c.value == "new"


def test_a_connection_reopened_from_the_pool_sees_the_newest_state(db, connect, two_items):
    reader = connect()
    a = reader.root.a
    assert a.value == 0
    manager = reader.transaction_manager
    reader.close()
    commit_values(connect, a=3)
    again = db.open(manager)
    try:
        assert again.root.a.value == 3
    finally:
        again.close()


# -- historical connections ---------------------------------------------------------------

@pytest.fixture
def three_states(db):
    """``root.item`` committed with values 1, 2, 3; the tids of the three commits."""
    tids = []
    with db.transaction() as conn:
        conn.root.item = Item(1)
    tids.append(db.last_transaction())
    for value in (2, 3):
        with db.transaction() as conn:
            conn.root.item.value = value
        tids.append(db.last_transaction())
    return tids


def test_open_at_a_tid_sees_the_state_that_tid_committed(make_storage, db, connect,
                                                         three_states):
    make_storage.require("history", db.storage)
    t1, t2, t3 = three_states
    assert connect(at=t1).root.item.value == 1
    assert connect(at=t2).root.item.value == 2
    assert connect(at=t3).root.item.value == 3


def test_open_before_a_tid_sees_the_state_just_before_it(make_storage, db, connect,
                                                         three_states):
    make_storage.require("history", db.storage)
    t1, t2, t3 = three_states
    assert connect(before=t2).root.item.value == 1
    assert connect(before=t3).root.item.value == 2
    assert connect(before=p64(u64(t3) + 1)).root.item.value == 3


def test_a_historical_connection_ignores_later_commits(make_storage, db, connect,
                                                       three_states):
    make_storage.require("history", db.storage)
    old = connect(at=three_states[1])
    assert old.root.item.value == 2
    with db.transaction() as conn:
        conn.root.item.value = 4
    old.transaction_manager.begin()
    old.cacheMinimize()
    assert old.root.item.value == 2


def test_a_historical_connection_of_the_last_tid_works_without_history(db, connect,
                                                                       three_states):
    assert connect(at=three_states[-1]).root.item.value == 3


def test_a_storage_without_history_refuses_a_past_moment_at_open(make_storage, db,
                                                                 three_states):
    if make_storage.supports("history", db.storage):
        pytest.skip(f"{make_storage.name} keeps history: every moment can be opened")
    with pytest.raises(Unsupported, match="keeps no history"):
        db.open(at=three_states[0])  # opened before, and failed at the first read
    with pytest.raises(Unsupported):
        db.open(before=three_states[-1])


def test_a_historical_connection_refuses_writes(db, connect, three_states):
    old = connect(at=three_states[-1])
    assert old.isReadOnly()
    with pytest.raises(ReadOnlyHistoryError):
        old.root.item.value = 99
    with pytest.raises(ReadOnlyHistoryError):
        old.add(Item("new"))
    old.transaction_manager.abort()
    with db.transaction() as conn:
        assert conn.root.item.value == 3


def test_open_takes_at_or_before_but_not_both(db, three_states):
    with pytest.raises(ValueError):
        db.open(at=three_states[0], before=three_states[1])


def test_a_historical_connection_can_be_closed(db, three_states):
    old = db.open(at=three_states[-1])
    assert old.root.item.value == 3
    old.close()
    assert not old.opened


def test_with_an_explicit_manager_a_connection_sees_its_own_commit_after_it(db):
    """After its commit, a connection never reloads what it wrote from the snapshot before
    the commit, even before the next explicit begin()."""
    import transaction
    manager = transaction.TransactionManager(explicit=True)
    conn = db.open(manager)
    manager.begin()
    conn.root.item = Item(1)
    manager.commit()
    manager.begin()
    conn.root.item.value = 2
    manager.commit()
    conn.cacheMinimize()
    assert conn.root.item.value == 2
    manager.begin()
    assert conn.root.item.value == 2
    manager.abort()
    conn.close()


def test_a_historical_view_of_the_future_does_not_change_as_commits_arrive(db, make_storage):
    import datetime
    make_storage.require("history", db.storage)
    with db.transaction() as conn:
        conn.root.a = Item(1)
        conn.root.b = Item(1)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    view = db.open(at=later)
    assert view.root.a.value == 1
    with db.transaction() as conn:
        conn.root.a.value = conn.root.b.value = 2
    assert view.root.b.value == 1  # the view is "now" as of opening, not a moving target
    view.close()


class LaggingStorage(MemoryStorage):
    """A memory storage whose ``lastTransaction()`` can be held at a tid while commits go
    on: it stands for the moment, in any storage, between a commit's invalidations being
    delivered to the database and its tid being reported (the order the storage contract
    allows), which a real storage makes too short to reach from a test."""

    held: bytes | None = None

    def lastTransaction(self) -> bytes:
        return self.held if self.held is not None else super().lastTransaction()


def test_a_snapshot_starts_after_invalidations_delivered_before_the_last_tid_moved():
    """An invalidated object is reloaded at least as new as the commit that invalidated
    it, even while the storage still reports an older last transaction: else the reload
    reads the old state and, the invalidation spent, keeps it."""
    storage = LaggingStorage()
    db = DB(storage)
    with db.transaction() as conn:
        conn.root.a = Item(0)
    reader = db.open(transaction.TransactionManager())
    assert reader.root.a.value == 0
    reader.transaction_manager.abort()
    storage.held = storage.lastTransaction()
    with db.transaction() as conn:
        conn.root.a.value = 1  # invalidates a in the reader; the last tid stays held
    reader.transaction_manager.begin()
    assert reader.root.a.value == 1
    reader.transaction_manager.abort()
    storage.held = None
    reader.transaction_manager.begin()
    assert reader.root.a.value == 1
    reader.transaction_manager.abort()
    reader.close()
    db.close()
