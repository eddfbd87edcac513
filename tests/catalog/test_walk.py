"""Loading B-trees level by level: everything a span's keys need is loaded, in one batch
per level, and nothing far outside the spans."""
from __future__ import annotations

import random

import pytest
from BTrees.OOBTree import OOBTree

import amphora
from amphora.catalog._walk import load_trees, points, values_in_order

KEYS = 6000  # about 200 buckets under two levels of inner nodes


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    path = tmp_path_factory.mktemp("walk") / "tree.db"
    db = amphora.open(f"sqlite:///{path}")
    with db.transaction() as conn:
        conn.root.tree = tree = OOBTree()
        for key in range(0, 2 * KEYS, 2):  # even keys only
            tree[key] = OOBTree({key: f"value {key}"})  # a value stored apart
    db.close()
    return f"sqlite:///{path}"


class Counted:
    """A cold database whose storage reads are counted (calls and records)."""

    def __init__(self, uri: str):
        self.db = amphora.open(uri)
        self.calls = 0
        self.records = 0
        storage = self.db.storage
        load_many, load_before = storage.load_many, storage.loadBefore

        def counted_many(oids, before):
            oids = list(oids)
            self.calls += 1
            self.records += len(oids)
            return load_many(oids, before)

        def counted_one(oid, before):
            self.calls += 1
            self.records += 1
            return load_before(oid, before)
        storage.load_many, storage.loadBefore = counted_many, counted_one

    def reset(self) -> None:
        self.calls = self.records = 0


@pytest.mark.parametrize("spans", [
    [(100, 100)],
    [(1000, 1400)],
    [(None, 30)],
    [(11900, None)],
    points([3, 4, 500, 5000, 11998]),
    [(10, 20), (15, 40), (7000, 7002)],  # overlapping spans are joined
    [(5001, 5001)],  # an odd key: none there
], ids=repr)
def test_what_the_spans_need_is_loaded_in_one_batch_per_level(uri, spans):
    counted = Counted(uri)
    with counted.db.transaction() as conn:
        tree = conn.root.tree
        tree._p_activate()
        counted.reset()
        load_trees(conn, [(tree, spans)])
        assert counted.calls <= 2  # the inner level, the buckets
        assert counted.records < 40  # a few buckets, not two hundred
        loaded = counted.records
        counted.reset()
        wanted = {key for low, high in spans
                  for key in tree.keys(low, high)}
        for key in wanted:
            assert tree[key] is not None  # no read: the node holding it is loaded
        assert counted.calls == 0, (spans, loaded)
    counted.db.close()


def test_values_in_order_reads_few_buckets_for_the_first_values(uri):
    counted = Counted(uri)
    with counted.db.transaction() as conn:
        tree = conn.root.tree
        tree._p_activate()
        counted.reset()
        first = values_in_order(conn, tree, [(2001, None)])
        taken = [next(first) for _ in range(5)]
        assert [min(value.keys()) for value in taken] == [2002, 2004, 2006, 2008, 2010]
        assert counted.records < 200  # 4 buckets and their values, not 5,000 values
        last = values_in_order(conn, tree, [(None, 101)], reverse=True)
        assert [min(value.keys()) for value in last][:3] == [100, 98, 96]
    counted.db.close()


def test_every_value_comes_in_order_whatever_the_spans(uri):
    counted = Counted(uri)
    rng = random.Random(15)
    with counted.db.transaction() as conn:
        tree = conn.root.tree
        for _ in range(5):
            keys = sorted(rng.sample(range(2 * KEYS), 30))
            spans = points(keys[:10]) + [(keys[20], keys[25])]
            found = [min(value.keys()) for value in values_in_order(conn, tree, spans)]
            expected = sorted({key for low, high in spans for key in tree.keys(low, high)})
            assert found == expected
    counted.db.close()
