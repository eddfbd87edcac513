"""Savepoints: points inside a transaction to roll back to.

``sp = transaction_manager.savepoint()`` remembers the changes so far;
``sp.rollback()`` undoes every change made after it (objects changed after it get their
state at the savepoint back, objects created after it vanish) and keeps the changes made
before it. Savepoints nest: rolling back to an earlier one also discards the later ones.
Nothing is committed until the transaction is.
"""
from __future__ import annotations

import pytest

from amphora import ObjectNotFoundError
from amphora.utils import maxtid

from conformance.models import Item

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def conn(db, connect):
    """A connection whose root holds ``item`` (value "committed"), committed."""
    conn = connect()
    conn.root.item = Item("committed")
    conn.transaction_manager.commit()
    return conn


def committed(db, name):
    """The value of ``root.<name>`` as committed, read in a fresh transaction, or None."""
    with db.transaction() as other:
        found = other.root().get(name)
        return None if found is None else found.value


def test_rollback_undoes_changes_made_after_the_savepoint_and_keeps_earlier_ones(db, conn):
    manager = conn.transaction_manager
    conn.root.item.value = "before the savepoint"
    savepoint = manager.savepoint()
    conn.root.item.value = "after the savepoint"
    conn.root.later = Item("created after the savepoint")
    savepoint.rollback()
    assert conn.root.item.value == "before the savepoint"
    assert "later" not in conn.root()
    manager.commit()
    assert committed(db, "item") == "before the savepoint"
    assert committed(db, "later") is None


def test_objects_created_after_the_savepoint_are_never_stored(db, conn, storage):
    manager = conn.transaction_manager
    savepoint = manager.savepoint()
    new = Item("vanishes")
    conn.root.new = new
    manager.savepoint()  # gives the new object an oid and writes it aside
    oid = new._p_oid
    assert oid is not None
    savepoint.rollback()
    assert new._p_jar is None and new._p_oid is None
    manager.commit()
    with pytest.raises(ObjectNotFoundError):
        storage.loadBefore(oid, maxtid)


def test_objects_created_before_the_savepoint_survive_a_rollback(db, conn):
    manager = conn.transaction_manager
    conn.root.early = Item("created before")
    savepoint = manager.savepoint()
    conn.root.early.value = "changed after"
    savepoint.rollback()
    assert conn.root.early.value == "created before"
    manager.commit()
    assert committed(db, "early") == "created before"


def test_changes_written_at_a_savepoint_are_committed(db, conn):
    manager = conn.transaction_manager
    conn.root.item.value = "at the savepoint"
    conn.root.new = Item("new at the savepoint")
    manager.savepoint()
    manager.commit()
    assert committed(db, "item") == "at the savepoint"
    assert committed(db, "new") == "new at the savepoint"


def test_objects_stay_readable_after_a_savepoint(db, conn):
    manager = conn.transaction_manager
    conn.root.item.value = "saved aside"
    manager.savepoint()
    conn.cacheMinimize()  # the object must now load its savepoint state, not the committed
    assert conn.root.item.value == "saved aside"
    manager.commit()
    assert committed(db, "item") == "saved aside"


def test_nested_savepoints_roll_back_one_level_at_a_time(db, conn):
    manager = conn.transaction_manager
    conn.root.item.value = 1
    outer = manager.savepoint()
    conn.root.item.value = 2
    conn.root.second = Item("made between")
    inner = manager.savepoint()
    conn.root.item.value = 3
    conn.root.third = Item("made last")
    inner.rollback()
    assert conn.root.item.value == 2
    assert conn.root.second.value == "made between"
    assert "third" not in conn.root()
    outer.rollback()
    assert conn.root.item.value == 1
    assert "second" not in conn.root()
    manager.commit()
    assert committed(db, "item") == 1
    assert committed(db, "second") is None


def test_rolling_back_to_a_savepoint_twice_works(db, conn):
    manager = conn.transaction_manager
    savepoint = manager.savepoint()
    conn.root.item.value = "try 1"
    savepoint.rollback()
    conn.root.item.value = "try 2"
    savepoint.rollback()
    assert conn.root.item.value == "committed"
    conn.root.item.value = "final"
    manager.commit()
    assert committed(db, "item") == "final"


def test_abort_after_a_savepoint_discards_everything(db, conn):
    manager = conn.transaction_manager
    conn.root.item.value = "saved"
    conn.root.new = Item("new")
    manager.savepoint()
    manager.abort()
    assert conn.root.item.value == "committed"
    assert "new" not in conn.root()
    assert committed(db, "new") is None


def test_a_state_written_at_a_savepoint_survives_the_object_leaving_the_cache(db, connect):
    """An object saved at a savepoint and then ghostified (cache minimized) comes back with
    its savepoint state, also when its container reads it ahead with its siblings."""
    from persistent.list import PersistentList
    conn = connect()
    conn.root.items = PersistentList([Item(i) for i in range(10)])
    conn.transaction_manager.commit()
    conn.root.items[5].value = "changed"
    conn.transaction_manager.savepoint()
    conn.cacheMinimize()
    db.records.clear()  # so that the siblings really are read from the storage
    assert [item.value for item in conn.root.items][5] == "changed"
    conn.root.items[7].value = "also"
    conn.transaction_manager.commit()
    with db.transaction() as other:
        assert [item.value for item in other.root.items][5:8] == ["changed", 6, "also"]


def test_emptying_a_container_after_a_savepoint_is_committed(db, connect):
    """An empty persistent container is falsy: it is still the object to write."""
    from persistent.mapping import PersistentMapping
    conn = connect()
    conn.root.mapping = PersistentMapping({"a": 1})
    conn.transaction_manager.commit()
    conn.root.mapping["b"] = 2
    conn.transaction_manager.savepoint()
    conn.root.mapping.clear()
    conn.transaction_manager.commit()
    with db.transaction() as other:
        assert dict(other.root.mapping) == {}


def test_rollback_also_forgets_a_savepoint_state_already_fetched_for_a_ghost(db, conn):
    manager = conn.transaction_manager
    conn.root.other = Item("joins the transaction")
    oid = conn.root.item._p_oid
    first = manager.savepoint()
    conn.root.item.value = "after the first savepoint"
    manager.savepoint()
    conn.cacheMinimize()
    item = conn.get(oid)  # a ghost whose record is the later savepoint's state
    first.rollback()
    assert item.value == "committed"
    manager.commit()
    assert committed(db, "item") == "committed"


def test_abort_keeps_a_committed_object_that_left_the_cache_attached(db, conn):
    """A changed object saved at a savepoint, dropped from the cache and fetched again is
    still the committed object after an abort (not mistaken for a new one)."""
    oid = conn.root.item._p_oid
    conn.root.item.value = "changed"
    conn.transaction_manager.savepoint()
    conn.cacheMinimize()
    item = conn.get(oid)
    conn.transaction_manager.abort()
    assert item._p_jar is conn and item._p_oid == oid
    assert item.value == "committed"
