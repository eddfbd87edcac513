"""Conflicts between transactions, and how they are resolved or retried.

Two transactions that change the same object conflict: the second to commit gets a
:class:`amphora.ConflictError`, unless the object's class can merge the two changes
(``_p_resolveConflict``, as BTrees and ``Counter`` below do). ``ConflictError`` is a
``transaction.interfaces.TransientError``, so ``transaction``'s retry loops retry it.
``conn.readCurrent(obj)`` makes a transaction also conflict when an object it only read
has changed (a :class:`amphora.ReadConflictError`).
"""
from __future__ import annotations

import pickle

import pytest
from BTrees.Length import Length
from BTrees.OOBTree import OOBTree
from transaction.interfaces import TransientError

from amphora import ConflictError, ReadConflictError

from conformance.models import Counter, Item

pytestmark = pytest.mark.timeout(30)


def test_two_connections_changing_one_object_conflict(db, connect):
    with db.transaction() as conn:
        conn.root.item = Item(0)
    first, second = connect(), connect()
    first.root.item.value = "first"
    second.root.item.value = "second"
    first.transaction_manager.commit()
    with pytest.raises(ConflictError) as info:
        second.transaction_manager.commit()
    error = info.value
    assert isinstance(error, TransientError)
    assert error.oid == first.root.item._p_oid
    assert error.class_name == "conformance.models.Item"
    assert "conformance.models.Item" in str(error)
    second.transaction_manager.abort()
    assert second.root.item.value == "first"  # the loser sees the winner after abort


def test_a_transaction_retried_after_a_conflict_succeeds(db, connect):
    with db.transaction() as conn:
        conn.root.item = Item(0)
    first, second = connect(), connect()
    first.root.item.value += 1
    second.root.item.value += 1
    first.transaction_manager.commit()
    with pytest.raises(ConflictError):
        second.transaction_manager.commit()
    second.transaction_manager.abort()
    second.root.item.value += 1
    second.transaction_manager.commit()
    with db.transaction() as conn:
        assert conn.root.item.value == 2


def test_the_attempts_loop_retries_a_conflicting_transaction_until_it_commits(db, connect):
    with db.transaction() as conn:
        conn.root.item = Item(0)
    conn = connect()
    manager = conn.transaction_manager
    attempts = 0
    for attempt in manager.attempts(3):
        with attempt:
            attempts += 1
            conn.root.item.value += 10
            if attempts == 1:  # someone else commits first, once
                with db.transaction() as other:
                    other.root.item.value += 1
    assert attempts == 2
    with db.transaction() as check:
        assert check.root.item.value == 11


def test_user_class_resolves_concurrent_increments(db, connect):
    """``Counter._p_resolveConflict`` adds both increments to the committed value."""
    with db.transaction() as conn:
        conn.root.counter = Counter(100)
    first, second = connect(), connect()
    first.root.counter.increment(3)
    second.root.counter.increment(4)
    first.transaction_manager.commit()
    second.transaction_manager.commit()  # resolved, no ConflictError
    assert second.root.counter.value == 107  # the merged state, not this transaction's
    with db.transaction() as conn:
        assert conn.root.counter.value == 107


def test_btrees_length_resolves_concurrent_changes(db, connect):
    with db.transaction() as conn:
        conn.root.length = Length(10)
    first, second = connect(), connect()
    first.root.length.change(1)
    second.root.length.change(2)
    first.transaction_manager.commit()
    second.transaction_manager.commit()
    with db.transaction() as conn:
        assert conn.root.length() == 13


def test_inserting_different_keys_into_one_small_btree_both_succeed(db, connect):
    """A tree this small keeps its one bucket inline; BTrees resolve that too (as ZODB
    over a conflict-resolving storage does), even though BTrees call ``readCurrent`` on
    the tree they change."""
    with db.transaction() as conn:
        conn.root.tree = OOBTree({"a": 1})
    first, second = connect(), connect()
    first.root.tree["b"] = 2
    second.root.tree["c"] = 3
    first.transaction_manager.commit()
    second.transaction_manager.commit()
    with db.transaction() as conn:
        assert dict(conn.root.tree) == {"a": 1, "b": 2, "c": 3}


def test_a_small_btree_of_persistent_objects_merges_inserts_too(db, connect):
    """The merge compares the values of the keys both kept (references to persistent
    objects, with ``<`` as well as ``==``)."""
    with db.transaction() as conn:
        conn.root.tree = OOBTree({"a": Item(1), "d": Item(4)})
    first, second = connect(), connect()
    first.root.tree["b"] = Item(2)
    second.root.tree["c"] = Item(3)
    first.transaction_manager.commit()
    second.transaction_manager.commit()
    with db.transaction() as conn:
        assert {k: v.value for k, v in conn.root.tree.items()} == {"a": 1, "b": 2, "c": 3,
                                                                   "d": 4}


def test_inserting_different_keys_into_one_bucket_of_a_large_btree_both_succeed(db, connect):
    with db.transaction() as conn:
        conn.root.tree = tree = OOBTree()
        for n in range(0, 400, 2):
            tree[n] = n
    first, second = connect(), connect()
    tree1, tree2 = first.root.tree, second.root.tree
    assert tree1._p_oid == tree2._p_oid and len(tree1) == 200
    # 201 and 203 fall between 200 and 204: the same bucket, deep inside the tree
    first.root.tree[201] = "first"
    second.root.tree[203] = "second"
    first.transaction_manager.commit()
    second.transaction_manager.commit()
    with db.transaction() as conn:
        tree = conn.root.tree
        assert (tree[201], tree[203], len(tree)) == ("first", "second", 202)


def test_inserting_the_same_btree_key_twice_conflicts(db, connect):
    with db.transaction() as conn:
        conn.root.tree = OOBTree({"a": 1})
    first, second = connect(), connect()
    first.root.tree["same"] = 1
    second.root.tree["same"] = 2
    first.transaction_manager.commit()
    with pytest.raises(ConflictError):
        second.transaction_manager.commit()
    second.transaction_manager.abort()
    with db.transaction() as conn:
        assert conn.root.tree["same"] == 1


def test_read_current_fails_the_commit_when_an_object_read_has_changed(db, connect):
    with db.transaction() as conn:
        conn.root.balance = Item(100)
        conn.root.log = Item([])
    reader, writer = connect(), connect()
    balance = reader.root.balance
    reader.readCurrent(balance)
    reader.root.log.value = [f"saw {balance.value}"]
    writer.root.balance.value = 0
    writer.transaction_manager.commit()
    with pytest.raises(ReadConflictError) as info:
        reader.transaction_manager.commit()
    assert info.value.oid == balance._p_oid
    reader.transaction_manager.abort()
    with db.transaction() as conn:
        assert conn.root.log.value == []


def test_an_object_read_current_and_then_changed_still_has_its_conflicts_resolved(db,
                                                                                  connect):
    """Writing an object checks its serial anyway; the read check must not pre-empt
    conflict resolution (ZODB drops written objects from the read-current set)."""
    with db.transaction() as conn:
        conn.root.counter = Counter(0)
    first, second = connect(), connect()
    for conn in (first, second):
        conn.readCurrent(conn.root.counter)
        conn.root.counter.increment(1)
    first.transaction_manager.commit()
    second.transaction_manager.commit()
    with db.transaction() as conn:
        assert conn.root.counter.value == 2


def test_without_read_current_a_stale_read_commits(db, connect):
    with db.transaction() as conn:
        conn.root.balance = Item(100)
        conn.root.log = Item([])
    reader, writer = connect(), connect()
    balance = reader.root.balance.value
    reader.root.log.value = [f"saw {balance}"]
    writer.root.balance.value = 0
    writer.transaction_manager.commit()
    reader.transaction_manager.commit()
    with db.transaction() as conn:
        assert conn.root.log.value == ["saw 100"]


def test_read_current_passes_when_nothing_changed(db, connect):
    with db.transaction() as conn:
        conn.root.balance = Item(100)
        conn.root.log = Item([])
    reader = connect()
    reader.readCurrent(reader.root.balance)
    reader.root.log.value = ["ok"]
    reader.transaction_manager.commit()
    with db.transaction() as conn:
        assert conn.root.log.value == ["ok"]


def test_new_objects_of_a_failed_commit_are_stored_when_the_transaction_is_retried(db, connect):
    """A commit that fails (here on a conflict) gave oids to the new objects it met; the
    abort takes them back, so that the retry stores them instead of referring to records
    that were never written."""
    with db.transaction() as conn:
        conn.root.item = Item(0)
    first, second = connect(), connect()
    first.root.item.value = "first"
    child = Item("child")
    second.root.item.value = "second"
    second.root.item.child = child
    first.transaction_manager.commit()
    with pytest.raises(ConflictError):
        second.transaction_manager.commit()
    second.transaction_manager.abort()
    assert child._p_jar is None and child._p_oid is None
    second.root.item.child = child
    second.transaction_manager.commit()
    with db.transaction() as conn:
        assert conn.root.item.child.value == "child"


def test_new_objects_of_a_commit_that_fails_while_writing_are_stored_on_retry(db, connect):
    """A commit that fails while pickling (an attribute that cannot be pickled) leaves no
    new object half attached: after the abort and a fix, the retry stores them all."""
    conn = connect()
    first, second = Item("first"), Item("second")
    second.unpicklable = lambda: None
    conn.root.first, conn.root.second = first, second
    with pytest.raises(pickle.PicklingError,
                       match="cannot pickle the state of a conformance.models.Item object"):
        conn.transaction_manager.commit()
    conn.transaction_manager.abort()
    assert first._p_oid is None and second._p_oid is None
    del second.unpicklable
    conn.root.first, conn.root.second = first, second
    conn.transaction_manager.commit()
    with db.transaction() as other:
        assert (other.root.first.value, other.root.second.value) == ("first", "second")
