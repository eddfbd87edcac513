"""DemoStorage: layers of changes over a base that is never written.

The conformance suite runs DemoStorage stacks over an empty base; these tests give the
base data of its own and check what the layered view answers: exact tids across layers,
objects created, changed and deleted in a layer, stacks of layers, oids, conflicts.
"""
from __future__ import annotations

import time

import pytest

import amphora
from amphora import ConflictError, ObjectNotFoundError, ReadOnlyError, TransactionMetaData
from amphora.serialize import references
from amphora.storage.demo import DELETED, DemoStorage
from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import maxtid, p64, u64, z64

from conformance.records import commit, record, write


def after(tid: bytes) -> bytes:
    return p64(u64(tid) + 1)


@pytest.fixture(params=["memory", "sqlite"])
def base(request, tmp_path):
    """A base with a root referring to two objects, one of them written twice:
    ``(storage, {"a": oid, "b": oid}, [t1, t2])``."""
    storage = (MemoryStorage("base") if request.param == "memory"
               else SQLiteStorage(str(tmp_path / "base.db")))
    a, b = storage.new_oid(), storage.new_oid()
    t1 = commit(storage, {z64: (z64, record("root", [a, b])), a: (z64, record("a1")),
                          b: (z64, record("b1"))}, description="base 1")
    t2 = write(storage, a, record("a2"), t1, description="base 2")
    yield storage, {"a": a, "b": b}, [t1, t2]
    storage.close()


@pytest.fixture
def demo(base):
    storage, _, _ = base
    layered = DemoStorage(storage, close_base_on_close=False)
    yield layered
    layered.close()


def test_reads_fall_through_to_the_base(base, demo):
    _, oids, (t1, t2) = base
    assert demo.loadBefore(oids["a"], maxtid) == (record("a2"), t2, None)
    assert demo.loadBefore(oids["a"], t2) == (record("a1"), t1, t2)
    assert demo.loadBefore(oids["b"], maxtid) == (record("b1"), t1, None)
    assert demo.loadSerial(oids["a"], t1) == record("a1")
    assert demo.lastTransaction() == t2
    assert len(demo) == 3


def test_writes_go_to_the_layer_and_the_base_is_untouched(base, demo):
    storage, oids, (t1, t2) = base
    t3 = write(demo, oids["a"], record("a3"), t2)
    assert t3 > t2
    assert demo.lastTransaction() == t3
    assert storage.lastTransaction() == t2
    assert storage.loadBefore(oids["a"], maxtid) == (record("a2"), t2, None)
    assert demo.changes.loadBefore(oids["a"], maxtid) == (record("a3"), t3, None)


def test_a_base_revision_replaced_in_the_layer_ends_where_the_layer_begins(base, demo):
    _, oids, (t1, t2) = base
    t3 = write(demo, oids["a"], record("a3"), t2)
    t4 = write(demo, oids["a"], record("a4"), t3)
    a = oids["a"]
    assert demo.loadBefore(a, t2) == (record("a1"), t1, t2)
    assert demo.loadBefore(a, t3) == (record("a2"), t2, t3)
    assert demo.loadBefore(a, t4) == (record("a3"), t3, t4)
    assert demo.loadBefore(a, maxtid) == (record("a4"), t4, None)
    assert demo.load_many([a, oids["b"]], t3) == {a: (record("a2"), t2, t3),
                                                  oids["b"]: (record("b1"), t1, None)}
    assert demo.load_many([a], after(t3)) == {a: (record("a3"), t3, t4)}
    assert [entry["tid"] for entry in demo.history(a, size=10)] == [t4, t3, t2, t1]
    assert [entry["tid"] for entry in demo.history(a, size=3)] == [t4, t3, t2]
    assert [demo.loadSerial(a, tid) for tid in (t1, t2, t3, t4)] == [
        record(f"a{n}") for n in (1, 2, 3, 4)]


def test_an_object_created_in_the_layer_does_not_exist_before_it(base, demo):
    _, _, (_t1, t2) = base
    new = demo.new_oid()
    t3 = write(demo, new, record("new"))
    assert demo.loadBefore(new, t3) is None
    assert demo.loadBefore(new, after(t2)) is None
    assert demo.loadBefore(new, maxtid) == (record("new"), t3, None)
    assert demo.load_many([new], t3) == {}
    assert len(demo) == 4


def test_an_oid_neither_layer_knows_is_not_found(demo):
    with pytest.raises(ObjectNotFoundError):
        demo.loadBefore(p64(0xDEAD), maxtid)
    with pytest.raises(ObjectNotFoundError):
        demo.history(p64(0xDEAD))
    with pytest.raises(ObjectNotFoundError):
        demo.loadSerial(p64(0xDEAD), maxtid)
    assert demo.load_many([p64(0xDEAD)], maxtid) == {}


def test_new_oids_never_collide_with_the_bases_oids(base):
    storage, _, _ = base
    stored = {record.oid for txn in storage.iterator() for record in txn}
    demo = DemoStorage(storage, close_base_on_close=False)
    # Force the layer to start counting where the base's oids are.
    demo._oid_next, demo._oid_end = 0, 10
    fresh = demo.new_oids(10)
    assert not set(fresh) & stored
    assert len(set(fresh)) == 10
    assert len(set(demo.new_oids(500))) == 500


def test_a_stale_serial_conflicts_against_the_layered_current_serial(base, demo):
    _, oids, (t1, t2) = base
    with pytest.raises(ConflictError) as info:
        write(demo, oids["a"], record("stale"), t1)  # the base's current is t2
    assert info.value.serials == (t2, t1)
    with pytest.raises(ConflictError):
        write(demo, oids["b"], record("as new"), z64)  # exists in the base
    t3 = write(demo, oids["a"], record("a3"), t2)
    with pytest.raises(ConflictError) as info:
        write(demo, oids["a"], record("stale again"), t2)  # the layer's current is t3
    assert info.value.serials == (t3, t2)


def test_the_layers_first_tid_is_above_the_bases_last_even_from_the_future(tmp_path):
    storage = MemoryStorage("base")
    future = p64(u64(storage.lastTransaction()) + (1 << 60))  # far ahead of the clock
    meta = TransactionMetaData()
    storage.tpc_begin(meta, future)
    storage.store(z64, z64, record("root"), "", meta)
    storage.tpc_vote(meta)
    storage.tpc_finish(meta)
    demo = DemoStorage(storage)
    tid = write(demo, z64, record("root 2"), future)
    assert tid > future
    assert demo.loadBefore(z64, tid) == (record("root"), future, tid)


def test_push_and_pop_stack_and_discard_layers(base, demo):
    _, oids, (_t1, t2) = base
    a = oids["a"]
    t3 = write(demo, a, record("a3"), t2)
    top = demo.push()
    t4 = write(top, a, record("a4"), t3)
    new = top.new_oid()
    t5 = write(top, new, record("top only"))
    assert top.loadBefore(a, maxtid) == (record("a4"), t4, None)
    assert top.loadBefore(a, t4) == (record("a3"), t3, t4)
    assert top.loadBefore(a, t3) == (record("a2"), t2, t3)
    assert top.lastTransaction() == t5
    assert [entry["tid"] for entry in top.history(a, size=10)][:3] == [t4, t3, t2]
    assert top.pop() is demo
    assert demo.loadBefore(a, maxtid) == (record("a3"), t3, None)
    with pytest.raises(ObjectNotFoundError):
        demo.loadBefore(new, maxtid)
    assert demo.lastTransaction() == t3


def test_iterator_yields_the_bases_transactions_then_the_layers(base, demo):
    _, oids, (t1, t2) = base
    t3 = write(demo, oids["b"], record("b2"), t1, description="layer")
    transactions = list(demo.iterator())
    assert [txn.tid for txn in transactions] == [t1, t2, t3]
    assert [(r.oid, r.data) for r in transactions[2]] == [(oids["b"], record("b2"))]
    assert [txn.tid for txn in demo.iterator(t2, t3)] == [t2, t3]


def test_gc_in_the_layer_deletes_an_object_of_the_base_at_every_tid(base, demo):
    _, oids, (t1, t2) = base
    a, b = oids["a"], oids["b"]
    t3 = write(demo, z64, record("root", [a]), t1)  # b is no longer referred to
    demo.pack(time.time(), references)
    for tid in (after(t1), after(t2), t3, maxtid):
        with pytest.raises(ObjectNotFoundError):
            demo.loadBefore(b, tid)
    with pytest.raises(ObjectNotFoundError):
        demo.loadSerial(b, t1)
    with pytest.raises(ObjectNotFoundError):
        demo.history(b)
    assert b not in demo.load_many([a, b], maxtid)
    assert demo.loadBefore(a, maxtid)[0] == record("a2")
    assert all(record.oid != b for txn in demo.iterator() for record in txn)
    assert len(demo) == 2
    # the base still has it; the layer holds a deletion record
    assert demo.base.loadBefore(b, maxtid)[0] == record("b1")
    assert demo.changes.loadBefore(b, maxtid)[0] == DELETED
    # a write from the deleted object's last serial is a conflict, not a resurrection
    with pytest.raises(ConflictError):
        write(demo, b, record("b again"), t1)


def test_gc_in_a_layer_deletes_what_was_created_and_dropped_in_it(demo):
    child = demo.new_oid()
    t3 = commit(demo, {child: (z64, record("child"))})
    demo.pack(time.time(), references)
    with pytest.raises(ObjectNotFoundError):
        demo.loadBefore(child, maxtid)
    with pytest.raises(ObjectNotFoundError):
        demo.loadBefore(child, after(t3))


def test_a_deletion_in_a_lower_layer_holds_in_the_layers_above(base, demo):
    _, oids, (t1, _t2) = base
    write(demo, z64, record("root", [oids["a"]]), t1)
    demo.pack(time.time(), references)
    top = demo.push()
    with pytest.raises(ObjectNotFoundError):
        top.loadBefore(oids["b"], maxtid)
    assert top.load_many([oids["b"]], maxtid) == {}
    assert top.loadBefore(oids["a"], maxtid)[0] == record("a2")


def test_pack_drops_base_revisions_the_layer_replaced_before_the_pack_time(base, demo):
    _, oids, (t1, t2) = base
    a = oids["a"]
    t3 = write(demo, a, record("a3"), t2)
    demo.pack(time.time(), references, gc=False)
    assert demo.loadBefore(a, maxtid) == (record("a3"), t3, None)
    assert demo.loadBefore(a, t3) is None
    for old in (t1, t2):
        with pytest.raises(ObjectNotFoundError):
            demo.loadSerial(a, old)
    assert [entry["tid"] for entry in demo.history(a, size=10)] == [t3]
    # b was not replaced: its base revision is the one current at the pack time
    assert demo.loadBefore(oids["b"], maxtid) == (record("b1"), t1, None)


def contents(storage) -> tuple:
    """All a storage holds: its last tid, its object count, and every transaction with
    its records."""
    return (storage.lastTransaction(), len(storage),
            [(txn.tid, [(r.oid, r.data) for r in txn]) for txn in storage.iterator()])


@pytest.mark.parametrize("gc", [True, False], ids=["gc", "no-gc"])
def test_pack_leaves_the_base_unchanged(base, demo, gc):
    """Pack works on the layer only: the base keeps every revision, even those the layer
    replaced before the pack time and the objects no longer reachable in the layer."""
    storage, oids, (t1, t2) = base
    a, b = oids["a"], oids["b"]
    held = contents(storage)
    write(demo, a, record("a3"), t2)
    write(demo, z64, record("root", [a]), t1)  # b is no longer referred to in the layer
    demo.pack(time.time(), references, gc=gc)
    assert contents(storage) == held
    assert storage.loadSerial(a, t1) == record("a1")
    assert [entry["tid"] for entry in storage.history(a, size=10)] == [t2, t1]
    assert storage.loadBefore(b, maxtid) == (record("b1"), t1, None)


def test_a_read_only_layer_refuses_writes(base):
    storage, oids, (_t1, t2) = base
    demo = DemoStorage(storage, MemoryStorage(read_only=True), close_base_on_close=False)
    assert demo.isReadOnly()
    with pytest.raises(ReadOnlyError):
        write(demo, oids["a"], record("no"), t2)
    assert demo.loadBefore(oids["a"], maxtid)[1] == t2


def test_a_database_on_a_layer_sees_the_base_and_keeps_its_changes(tmp_path):
    prod = amphora.open(f"sqlite:///{tmp_path / 'prod.db'}")
    with prod.transaction() as conn:
        conn.root.accounts = {"ann": 10}
    last = prod.last_transaction()
    db = amphora.DB(DemoStorage(prod.storage, close_base_on_close=False))
    with db.transaction() as conn:
        assert conn.root.accounts == {"ann": 10}
        conn.root.accounts = {"ann": 10, "bob": 5}
    with db.transaction() as conn:
        assert conn.root.accounts == {"ann": 10, "bob": 5}
    db.close()
    assert prod.last_transaction() == last
    with prod.transaction() as conn:
        assert conn.root.accounts == {"ann": 10}
    prod.close()


def test_demo_uri_opens_layers_named_by_uri(tmp_path):
    base_uri = f"sqlite:///{tmp_path / 'base.db'}"
    with amphora.open(base_uri) as db:
        with db.transaction() as conn:
            conn.root.name = "base"
    changes = tmp_path / "changes.db"
    uri = f"demo://?base={base_uri}&changes=sqlite:///{changes}"
    with amphora.open(uri) as db:
        assert isinstance(db.storage, DemoStorage)
        with db.transaction() as conn:
            assert conn.root.name == "base"
            conn.root.name = "staged"
    with amphora.open(uri) as db:  # the changes were kept in their file
        with db.transaction() as conn:
            assert conn.root.name == "staged"
    with amphora.open(base_uri) as db:
        with db.transaction() as conn:
            assert conn.root.name == "base"
    with pytest.raises(amphora.InvalidURIError):
        amphora.open_storage("demo://somewhere")
