"""ZODB compatibility: amphora's records are ZODB records, its storages are ZODB storages.

A record written by amphora is read by ZODB's own tools (``ZODB.serialize``,
``ZODB.utils.get_pickle_metadata``); ``ZODB.DB`` runs over any amphora storage, reads what
``amphora.DB`` wrote, and writes what ``amphora.DB`` reads.
"""
from __future__ import annotations

import pytest
import transaction
import ZODB
import ZODB.serialize
import ZODB.utils
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import amphora
from amphora.serialize import references
from amphora.utils import maxtid, z64

from conformance.models import Counter, Item, Node

pytestmark = pytest.mark.timeout(30)


def test_amphora_records_are_read_by_zodb_serialize(db, storage):
    with db.transaction() as conn:
        conn.root.chain = Node("head", Node("tail"))
    head, tail = conn.root.chain._p_oid, conn.root.chain.next._p_oid
    data = storage.loadBefore(head, maxtid)[0]
    assert ZODB.utils.get_pickle_metadata(data) == ("conformance.models", "Node")
    assert ZODB.serialize.referencesf(data) == [tail] == references(data)
    root_data = storage.loadBefore(z64, maxtid)[0]
    assert ZODB.utils.get_pickle_metadata(root_data) == ("persistent.mapping",
                                                         "PersistentMapping")
    assert ZODB.serialize.referencesf(root_data) == [head]


def zodb_db_over(make_storage, storage):
    """A ``ZODB.DB`` over the data amphora wrote to ``storage`` (reopened when the kind
    keeps data in a file; the same object otherwise, since closing would lose it)."""
    return ZODB.DB(make_storage.reopen(storage))


def test_zodb_db_reads_what_amphora_db_wrote(make_storage, storage):
    db = amphora.DB(storage)
    with db.transaction() as conn:
        conn.root.tree = OOBTree({f"k{n}": Item(n) for n in range(50)})
        conn.root.chain = Node("a", Node("b"))
    if make_storage.durable:
        db.close()
    zdb = zodb_db_over(make_storage, storage)
    try:
        manager = transaction.TransactionManager()
        zconn = zdb.open(manager)
        root = zconn.root()
        assert root["tree"]["k42"].value == 42 and len(root["tree"]) == 50
        assert root["chain"].next.name == "b"
        manager.abort()
        zconn.close()
    finally:
        zdb.close()


def test_amphora_reads_zodb_records_that_refer_to_their_class_pickle(make_storage, storage):
    # ZODB pickles a record's class and state with one memo: a reference to an object of
    # the same class (the next node, the next bucket) names the class through the memo
    # entry of the record's class pickle.
    zdb = ZODB.DB(storage)
    manager = transaction.TransactionManager()
    zconn = zdb.open(manager)
    zconn.root()["chain"] = Node("a", Node("b", Node("c")))
    zconn.root()["tree"] = OOBTree({f"k{n:04d}": Item(n) for n in range(500)})
    manager.commit()
    data = storage.loadBefore(zconn.root()["chain"]._p_oid, maxtid)[0]
    assert b"h\x00" in data[data.index(b".") + 1:]  # BINGET 0: the class pickle's memo
    assert references(data) == [zconn.root()["chain"].next._p_oid]  # for pack and GC
    zconn.close()
    if make_storage.durable:
        zdb.close()
    db = amphora.DB(make_storage.reopen(storage))
    try:
        with db.transaction() as conn:
            chain = conn.root.chain
            assert type(chain.next) is Node and chain.next.next.name == "c"
            tree = conn.root.tree
            assert [item.value for item in tree.values()] == list(range(500))
    finally:
        db.close()


def test_amphora_db_reads_what_zodb_db_wrote(make_storage, storage):
    zdb = ZODB.DB(storage)
    manager = transaction.TransactionManager()
    zconn = zdb.open(manager)
    zconn.root()["tree"] = OOBTree({f"k{n}": Item(n) for n in range(50)})
    zconn.root()["counter"] = Counter(5)
    manager.commit()
    zconn.close()
    if make_storage.durable:
        zdb.close()
    db = amphora.DB(make_storage.reopen(storage))
    try:
        with db.transaction() as conn:
            assert conn.root.tree["k7"].value == 7 and len(conn.root.tree) == 50
            assert isinstance(conn.root(), PersistentMapping)
            conn.root.counter.increment()
        with db.transaction() as conn:
            assert conn.root.counter.value == 6
    finally:
        db.close()


def test_a_small_application_runs_on_zodb_db_over_an_amphora_storage(storage):
    """A BTree of persistent objects, a conflict-resolving counter, commit and abort,
    through ZODB's own DB and Connection."""
    zdb = ZODB.DB(storage)
    try:
        one, two = transaction.TransactionManager(), transaction.TransactionManager()
        first, second = zdb.open(one), zdb.open(two)
        first.root()["items"] = OOBTree()
        first.root()["hits"] = Counter(0)
        one.commit()
        two.begin()
        for n in range(40):
            first.root()["items"][n] = Item(f"item {n}")
        one.commit()
        # concurrent increments resolve through _p_resolveConflict
        first.root()["hits"].increment(2)
        second.root()["hits"].increment(3)
        one.commit()
        two.commit()
        # abort discards
        first.root()["items"][0].value = "aborted"
        one.abort()
        assert first.root()["items"][0].value == "item 0"
        two.begin()
        assert second.root()["hits"].value == 5
        assert len(second.root()["items"]) == 40
        assert second.root()["items"][39].value == "item 39"
        one.abort()
        two.abort()
        first.close()
        second.close()
    finally:
        zdb.close()
