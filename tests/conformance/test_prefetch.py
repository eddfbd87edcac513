"""Batched loading: ``conn.prefetch(objs)`` reads many records in one storage call.

Reading objects one by one costs one storage round trip each. ``conn.prefetch`` takes
persistent objects or oids, loads the records of those that are ghosts with a single
``load_many``, and the ghosts then activate without further reads, each with exactly the
state of the connection's snapshot.
"""
from __future__ import annotations

import pytest
from persistent.list import PersistentList

import amphora

from conformance.models import Item

pytestmark = pytest.mark.timeout(30)


class LoadCounting:
    """Mixed into a storage's own class: counts the calls made to it that read records
    (a ``load_many`` implemented with ``loadBefore`` counts once)."""

    _inside_load_many = False

    def _count(self, name: str) -> None:
        if not self._inside_load_many:
            counts = self.__dict__.setdefault("load_counts", {})
            counts[name] = counts.get(name, 0) + 1

    def loadBefore(self, oid, tid):
        self._count("loadBefore")
        return super().loadBefore(oid, tid)

    def load_many(self, oids, before):
        self._count("load_many")
        self._inside_load_many = True
        try:
            return super().load_many(oids, before)
        finally:
            self._inside_load_many = False

    def loadSerial(self, oid, serial):
        self._count("loadSerial")
        return super().loadSerial(oid, serial)


def counting(storage):
    """``storage``, now an instance of a subclass of its class that counts its loads."""
    klass = type(storage)
    storage.__class__ = type(f"LoadCounting{klass.__name__}", (LoadCounting, klass), {})
    storage.load_counts = {}
    return storage


@pytest.fixture
def items_db(storage, db):
    """A DB (no shared record cache, so every read reaches the storage) whose root holds
    ``items``: a list of 30 Items with values 0..29. Made after the suite's ``db`` on the
    same storage (which ``connect`` uses): a storage that lends its record cache to its
    databases takes the size the last one gives, 0 here."""
    db = amphora.DB(counting(storage), record_cache_bytes=0)
    with db.transaction() as conn:
        conn.root.items = PersistentList(Item(n) for n in range(30))
    yield db
    db.close()


def test_prefetched_ghosts_load_their_states_without_further_reads(items_db, connect):
    conn = connect(items_db)
    items = list(conn.root.items)
    conn.cacheMinimize()
    assert all(item._p_changed is None for item in items)
    storage = items_db.storage
    storage.load_counts.clear()
    conn.prefetch(items)
    assert storage.load_counts == {"load_many": 1}
    assert [item.value for item in items] == list(range(30))
    assert storage.load_counts == {"load_many": 1}  # no per-object reads


def test_prefetch_accepts_oids_and_skips_loaded_objects(items_db, connect):
    conn = connect(items_db)
    items = list(conn.root.items)
    conn.cacheMinimize()
    items[0].value  # loaded: nothing to prefetch for it
    storage = items_db.storage
    storage.load_counts.clear()
    conn.prefetch([item._p_oid for item in items[:10]])
    conn.prefetch(items[0])
    assert storage.load_counts.get("load_many") == 1
    assert [item.value for item in items[:10]] == list(range(10))
    assert storage.load_counts.get("loadBefore", 0) == 0


def test_prefetch_reads_the_connections_snapshot_not_newer_commits(make_storage, items_db,
                                                                   connect):
    make_storage.require("history", items_db.storage)
    reader = connect(items_db)
    reader.transaction_manager.begin()
    items = list(reader.root.items)
    reader.cacheMinimize()
    with items_db.transaction() as writer:
        for item in writer.root.items:
            item.value = -1
    reader.prefetch(items)
    assert [item.value for item in items] == list(range(30))
    reader.transaction_manager.begin()
    assert {item.value for item in items} == {-1}


def test_prefetch_of_objects_without_ghosts_does_nothing(items_db, connect):
    conn = connect(items_db)
    items = list(conn.root.items)
    [item.value for item in items]
    storage = items_db.storage
    storage.load_counts.clear()
    conn.prefetch(items)
    assert storage.load_counts == {}


def test_reading_ghosts_one_by_one_costs_one_read_each_without_prefetch(items_db, connect):
    """The baseline the prefetch tests improve on (shows the counting storage counts)."""
    conn = connect(items_db)
    items = list(conn.root.items)
    conn.cacheMinimize()
    storage = items_db.storage
    storage.load_counts.clear()
    for item in items[:5]:
        item.value
    reads = storage.load_counts.get("loadBefore", 0) + storage.load_counts.get("load_many", 0)
    assert 1 <= reads <= 5


def test_prefetch_takes_any_iterable_of_objects_such_as_a_btrees_values(storage, connect):
    from BTrees.OOBTree import OOBTree
    db = amphora.DB(counting(storage), record_cache_bytes=0)
    with db.transaction() as conn:
        conn.root.tree = OOBTree({n: Item(n) for n in range(50)})
    conn = connect(db)
    tree = conn.root.tree
    list(tree.keys())  # the buckets are loaded, the items are ghosts
    conn.cacheMinimize()
    list(tree.keys())
    db.storage.load_counts.clear()
    conn.prefetch(tree.values())
    assert db.storage.load_counts == {"load_many": 1}
    assert sum(item.value for item in tree.values()) == sum(range(50))
    assert db.storage.load_counts == {"load_many": 1}
    conn.close()
    db.close()


@pytest.mark.parametrize("count, batches", [(64, 1), (96, 1), (97, 2), (130, 2)])
def test_reading_a_containers_ghosts_in_order_loads_them_in_batches(storage, connect, count,
                                                                    batches):
    """Without prefetch, the ghosts met in one container's state load 64 at a time, and a
    tail of at most 32 more loads with the batch before it, not in a round trip of its own."""
    db = amphora.DB(counting(storage), record_cache_bytes=0)
    writer = connect(db)
    writer.root.items = PersistentList(Item(n) for n in range(count))
    writer.transaction_manager.commit()
    reader = connect(db)  # a second connection: nothing of the items in its cache
    items = reader.root.items
    items._p_activate()
    db.storage.load_counts.clear()
    assert sum(item.value for item in items) == sum(range(count))
    assert db.storage.load_counts == {"load_many": batches}
    reader.close()
    writer.close()
    db.close()


def test_reading_a_btrees_values_loads_its_buckets_in_one_batch(storage, connect):
    """``values()`` looks at a BTree's last bucket before it walks from the first: the
    batch that the last bucket starts goes on from the first one."""
    from BTrees.OOBTree import OOBTree
    db = amphora.DB(counting(storage), record_cache_bytes=0)
    writer = connect(db)
    writer.root.tree = tree = OOBTree()
    for n in range(600):  # keys in order: buckets half full, about 40 of them
        tree[n] = n
    writer.transaction_manager.commit()
    buckets = 0
    bucket = tree._firstbucket
    while bucket is not None:
        buckets, bucket = buckets + 1, bucket._next
    assert 33 <= buckets <= 64, buckets  # one batch of them, with no tail
    reader = connect(db)
    tree = reader.root.tree
    tree._p_activate()
    db.storage.load_counts.clear()
    assert sum(tree.values()) == sum(range(600))
    assert db.storage.load_counts == {"load_many": 1}
    reader.close()
    writer.close()
    db.close()
