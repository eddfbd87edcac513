"""Using a database: opening it, transactions, the root, storing objects, the pool.

``amphora.open(uri)`` or ``amphora.DB(storage)`` gives a database; ``db.transaction()``
gives a connection inside a transaction that commits when the block ends and aborts if it
raises. Objects are stored by reachability: whatever new persistent object a stored
object refers to is stored with it.
"""
from __future__ import annotations

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

import amphora
from amphora import ConnectionStateError, InvalidURIError, ObjectNotFoundError
from amphora.utils import maxtid, z64

from conformance.models import Item, Node

pytestmark = pytest.mark.timeout(30)


# -- opening ----------------------------------------------------------------------------

def test_open_a_uri_write_and_read_back(make_storage):
    db = amphora.open(make_storage.uri())
    try:
        with db.transaction() as conn:
            conn.root.item = Item("stored")
        with db.transaction() as conn:
            assert conn.root.item.value == "stored"
            assert isinstance(conn.root(), PersistentMapping)
    finally:
        db.close()


def test_data_written_through_a_uri_is_there_after_reopening(make_storage):
    if not make_storage.durable:
        pytest.skip(f"{make_storage.name} storage: data lives only as long as the storage "
                    "object")
    db = amphora.open(make_storage.uri())
    with db.transaction() as conn:
        conn.root.item = Item("durable")
    db.close()
    db = amphora.open(make_storage.uri())
    try:
        with db.transaction() as conn:
            assert conn.root.item.value == "durable"
    finally:
        db.close()


def test_a_new_database_has_an_empty_root_mapping_at_oid_0(db, storage):
    data, tid, end = storage.loadBefore(z64, maxtid)
    assert end is None
    with db.transaction() as conn:
        assert conn.root()._p_oid == z64
        assert dict(conn.root()) == {}


def test_opening_a_db_twice_on_one_storage_keeps_the_root(make_storage, storage):
    db = amphora.DB(storage)
    with db.transaction() as conn:
        conn.root.kept = 1
    tid = storage.lastTransaction()
    storage = make_storage.reopen(storage)
    db = amphora.DB(storage)
    assert storage.lastTransaction() == tid  # no second root was written
    with db.transaction() as conn:
        assert conn.root.kept == 1


# -- transactions -----------------------------------------------------------------------

def test_db_transaction_commits_when_the_block_succeeds(db):
    with db.transaction() as conn:
        conn.root.answer = 42
    with db.transaction() as conn:
        assert conn.root.answer == 42


def test_db_transaction_aborts_when_the_block_raises(db):
    with db.transaction() as conn:
        conn.root.item = Item("before")
    last = db.last_transaction()
    with pytest.raises(RuntimeError, match="boom"):
        with db.transaction() as conn:
            conn.root.item.value = "changed"
            conn.root.extra = Item("new")
            raise RuntimeError("boom")
    assert db.last_transaction() == last
    with db.transaction() as conn:
        assert conn.root.item.value == "before"
        assert "extra" not in conn.root()


def test_db_transaction_note_is_the_transaction_description(db, storage):
    with db.transaction(note="add a thing") as conn:
        conn.root.thing = 1
    assert db.history(z64)[0]["description"] == b"add a thing"


def test_zodb_style_open_and_thread_transaction_manager(db):
    conn = db.open()
    conn.root()["item"] = Item("zodb style")
    transaction.commit()
    conn.close()
    conn = db.open()
    try:
        assert conn.root()["item"].value == "zodb style"
        conn.root()["item"].value = "aborted"
        transaction.abort()
        assert conn.root()["item"].value == "zodb style"
    finally:
        conn.close()


# -- the root ---------------------------------------------------------------------------

def test_root_is_a_mapping_and_its_keys_are_attributes(db):
    with db.transaction() as conn:
        conn.root()["by_key"] = 1
        conn.root.by_attribute = 2
        assert conn.root.by_key == 1
        assert conn.root()["by_attribute"] == 2
        del conn.root.by_key
        assert "by_key" not in conn.root()
    with db.transaction() as conn:
        assert dict(conn.root()) == {"by_attribute": 2}
        assert "by_attribute" in dir(conn.root)


def test_a_missing_root_attribute_raises_attribute_error(db):
    with db.transaction() as conn:
        with pytest.raises(AttributeError, match="nothing_here"):
            conn.root.nothing_here
        assert getattr(conn.root, "nothing_here", "default") == "default"
        with pytest.raises(AttributeError):
            del conn.root.nothing_here


# -- storing objects --------------------------------------------------------------------

def test_new_objects_reachable_from_a_stored_object_are_stored_with_it(db, storage):
    with db.transaction() as conn:
        chain = Node("a", Node("b", Node("c")))
        conn.root.chain = chain
        inner = PersistentList([Item(1), Item(2)])
        conn.root.lists = PersistentMapping({"inner": inner})
    oids = [chain._p_oid, chain.next._p_oid, chain.next.next._p_oid, inner._p_oid,
            inner[0]._p_oid]
    assert all(oid is not None for oid in oids) and len(set(oids)) == len(oids)
    for oid in oids:
        assert storage.loadBefore(oid, maxtid) is not None
    with db.transaction() as conn:
        assert [conn.root.chain.name, conn.root.chain.next.name,
                conn.root.chain.next.next.name] == ["a", "b", "c"]
        assert [item.value for item in conn.root.lists["inner"]] == [1, 2]
        assert conn.root.chain.next.next._p_oid == oids[2]


def test_a_new_object_changed_again_before_commit_is_stored_in_its_final_state(db):
    with db.transaction() as conn:
        item = Item("first")
        conn.root.item = item
        item.value = "second"
    with db.transaction() as conn:
        assert conn.root.item.value == "second"


def test_an_object_shared_by_two_parents_is_stored_once(db):
    with db.transaction() as conn:
        shared = Item("shared")
        conn.root.a = Node("a", shared)
        conn.root.b = Node("b", shared)
    with db.transaction() as conn:
        assert conn.root.a.next is conn.root.b.next
        conn.root.a.next.value = "changed through a"
    with db.transaction() as conn:
        assert conn.root.b.next.value == "changed through a"


def test_add_gives_an_oid_at_once_and_stores_the_object_without_a_reference(db, storage):
    with db.transaction() as conn:
        item = Item("added")
        conn.add(item)
        oid = item._p_oid
        assert oid is not None and item._p_jar is conn
        assert conn.get(oid) is item
    data, _, _ = storage.loadBefore(oid, maxtid)
    with db.transaction() as conn:
        assert conn.get(oid).value == "added"


def test_get_of_an_unknown_oid_raises_object_not_found(db):
    with db.transaction() as conn:
        with pytest.raises(ObjectNotFoundError):
            conn.get(b"\0\0\0\0\0\0\xde\xad")


def test_btrees_of_persistent_objects_round_trip(db):
    with db.transaction() as conn:
        tree = conn.root.tree = OOBTree()
        for n in range(300):
            tree[f"key{n:04d}"] = Item(n)
    with db.transaction() as conn:
        tree = conn.root.tree
        assert len(tree) == 300
        assert tree["key0123"].value == 123
        assert list(tree.keys(min="key0297")) == ["key0297", "key0298", "key0299"]


# -- abort ------------------------------------------------------------------------------

def test_abort_restores_the_committed_state_and_detaches_new_objects(db, connect):
    conn = connect()
    tm = conn.transaction_manager
    conn.root.item = Item("committed")
    tm.commit()
    conn.root.item.value = "changed"
    new = Item("new")
    conn.root.new = new
    tm.abort()
    assert conn.root.item.value == "committed"
    assert "new" not in conn.root()
    assert new._p_jar is None and new._p_oid is None


def test_abort_after_add_detaches_the_added_object(db, connect):
    conn = connect()
    item = Item("added")
    conn.add(item)
    conn.transaction_manager.abort()
    assert item._p_jar is None and item._p_oid is None


# -- connections ------------------------------------------------------------------------

def test_closing_a_connection_with_pending_changes_raises(db, connect):
    conn = connect()
    conn.root.pending = Item("not committed")
    with pytest.raises(ConnectionStateError):
        conn.close()
    conn.transaction_manager.abort()
    conn.close()
    assert not conn.opened


def test_a_closed_connection_refuses_to_load_or_add(db, connect):
    conn = connect()
    conn.root.item = Item("x")
    conn.transaction_manager.commit()
    conn.cacheMinimize()
    item = conn.root.item
    conn.close()
    with pytest.raises(ConnectionStateError):
        item.value
    with pytest.raises(ConnectionStateError):
        conn.add(Item("late"))


def test_the_pool_reuses_closed_connections(db):
    manager = transaction.TransactionManager()
    first = db.open(manager)
    first.close()
    second = db.open(manager)
    assert second is first
    third = db.open(transaction.TransactionManager())
    assert third is not second
    second.close()
    third.close()


def test_a_closed_database_refuses_new_connections(make_storage):
    db = amphora.DB(make_storage())
    db.close()
    with pytest.raises(ConnectionStateError):
        db.open()


# -- cache ------------------------------------------------------------------------------

def test_cache_minimize_turns_objects_into_ghosts_that_reload(db, connect):
    conn = connect()
    conn.root.items = PersistentList([Item(n) for n in range(10)])
    conn.transaction_manager.commit()
    items = list(conn.root.items)
    conn.cacheMinimize()
    assert all(item._p_changed is None for item in items)
    assert [item.value for item in items] == list(range(10))
    assert all(item._p_changed is False for item in items)


def test_cache_size_bounds_the_loaded_objects_after_a_transaction_boundary(make_storage):
    db = amphora.DB(make_storage(), cache_size=20)
    try:
        with db.transaction() as conn:
            conn.root.items = PersistentList([Item(n) for n in range(200)])
        conn = db.open(transaction.TransactionManager())
        assert sum(item.value for item in conn.root.items) == sum(range(200))
        assert conn.cache_info()["non_ghosts"] > 20
        conn.transaction_manager.abort()  # a boundary: the cache shrinks to its target
        assert conn.cache_info()["non_ghosts"] <= 20
        assert sum(item.value for item in conn.root.items) == sum(range(200))
        conn.transaction_manager.abort()
        conn.close()
    finally:
        db.close()


# -- history and pack -------------------------------------------------------------------

def test_db_history_lists_an_objects_revisions(make_storage, db):
    make_storage.require("history", db.storage)
    with db.transaction(note="one") as conn:
        conn.root.item = Item(1)
    for n, note in ((2, "two"), (3, "three")):
        with db.transaction(note=note) as conn:
            conn.root.item.value = n
    oid = conn.root.item._p_oid
    entries = db.history(oid, size=10)
    assert [entry["description"] for entry in entries] == [b"three", b"two", b"one"]
    assert entries[0]["tid"] == db.last_transaction()


def test_db_pack_removes_old_revisions_and_unreachable_objects(make_storage, db):
    make_storage.require("pack", db.storage)
    make_storage.require("history", db.storage)
    with db.transaction() as conn:
        conn.root.item = Item(1)
        conn.root.dropped = Item("garbage soon")
    with db.transaction() as conn:
        conn.root.item.value = 2
        item_oid, dropped_oid = conn.root.item._p_oid, conn.root.dropped._p_oid
        del conn.root.dropped
    assert len(db.history(item_oid, size=10)) == 2
    db.pack()
    assert len(db.history(item_oid, size=10)) == 1
    with pytest.raises(ObjectNotFoundError):
        db.storage.loadBefore(dropped_oid, maxtid)
    with db.transaction() as conn:
        assert conn.root.item.value == 2


def test_db_pack_without_history_still_collects_garbage(make_storage, db):
    make_storage.require("pack", db.storage)
    with db.transaction() as conn:
        conn.root.dropped = Item("garbage soon")
        conn.root.kept = Item("kept")
    with db.transaction() as conn:
        dropped_oid = conn.root.dropped._p_oid
        del conn.root.dropped
    db.pack()
    with pytest.raises(ObjectNotFoundError):
        db.storage.loadBefore(dropped_oid, maxtid)
    with db.transaction() as conn:
        assert conn.root.kept.value == "kept"


# -- URIs -------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, named", [
    ("nosuch://somewhere", "nosuch"),
    ("just a path.db", "not a storage URI"),
    ("sqlite://", "file path"),
    ("memory://?bogus_option=1", "bogus_option"),
])
def test_open_with_a_bad_uri_raises_invalid_uri_error_naming_the_problem(uri, named):
    if uri.startswith("sqlite:"):
        pytest.importorskip("amphora.storage.sqlite", reason="sqlite storage not written yet")
    with pytest.raises(InvalidURIError, match=named) as info:
        amphora.open(uri)
    assert isinstance(info.value, ValueError)


def test_sqlite_uri_with_three_slashes_is_relative_to_the_working_directory(
        tmp_path, monkeypatch):
    pytest.importorskip("amphora.storage.sqlite", reason="sqlite storage not written yet")
    monkeypatch.chdir(tmp_path)
    db = amphora.open("sqlite:///relative.db")
    try:
        with db.transaction() as conn:
            conn.root.here = True
    finally:
        db.close()
    assert (tmp_path / "relative.db").exists()


def test_a_connection_left_open_does_not_outlive_its_database(tmp_path):
    """A connection opened with the thread's transaction manager and never closed: once its
    database is closed, later transactions of that manager (another database's, say) go on
    as if it were not there."""
    db = amphora.open(f"sqlite:///{tmp_path / 'left.db'}")
    left_open = db.open()  # the thread's manager, never closed
    assert left_open.root() is not None
    db.close()
    other = amphora.open("memory://")
    try:
        conn = other.open()
        transaction.begin()  # told the closed database's connection of it: "closed"
        conn.root()["x"] = 1
        transaction.commit()
        conn.close()
    finally:
        other.close()
