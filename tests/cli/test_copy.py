"""``amphora.copy.copy_transactions``: the library function behind ``amphora copy``."""
from __future__ import annotations

import pytest
from persistent.mapping import PersistentMapping

import amphora
from amphora.copy import CopyStats, DestinationNotEmptyError, copy_transactions
from amphora.storage.base import DataRecord, TransactionRecord
from amphora.utils import p64


def dump(storage):
    return [(t.tid, t.user, t.description, t.extension_bytes,
             sorted((r.oid, r.data) for r in t)) for t in storage.iterator()]


@pytest.fixture
def source():
    db = amphora.open("memory://")
    with db.transaction("one") as conn:
        conn.root.things = PersistentMapping(a=1)
    with db.transaction("two") as conn:
        conn.root.things["b"] = 2
    yield db.storage
    db.close()


def test_copies_every_transaction_with_its_tid_and_metadata(source):
    destination = amphora.open_storage("memory://")
    seen = []
    stats = copy_transactions(source, destination, progress=lambda s: seen.append(s.last_tid))
    assert dump(destination) == dump(source)
    assert seen == [txn.tid for txn in source.iterator()]
    assert (stats.transactions, stats.records, stats.skipped) == (3, 4, 0)
    assert stats.last_tid == source.lastTransaction() == destination.lastTransaction()


def test_a_non_empty_destination_is_refused_untouched(source):
    destination = amphora.open_storage("memory://")
    copy_transactions(source, destination)
    before = dump(destination)
    with pytest.raises(DestinationNotEmptyError, match="not empty"):
        copy_transactions(source, destination)
    assert dump(destination) == before


def test_incremental_copies_only_what_is_new(source):
    destination = amphora.open_storage("memory://")
    copy_transactions(source, destination)
    db = amphora.DB(source)
    with db.transaction("three") as conn:
        conn.root.things["c"] = 3
    stats = copy_transactions(source, destination, incremental=True)
    assert stats.transactions == 1
    assert dump(destination) == dump(source)
    assert copy_transactions(source, destination, incremental=True) == CopyStats()


def test_incremental_refuses_an_unrelated_destination(source):
    other = amphora.open("memory://")  # a root of its own
    before = dump(other.storage)
    with pytest.raises(DestinationNotEmptyError, match="not a copy"):
        copy_transactions(source, other.storage, incremental=True)
    assert dump(other.storage) == before


class _SourceWithADeletion:
    """What ZODB's FileStorage yields after an object's creation was undone."""

    def __init__(self, data: bytes):
        self.transactions = [
            TransactionRecord(p64(1 << 40), " ", b"", b"create", b"",
                              [DataRecord(p64(0), p64(1 << 40), data)]),
            TransactionRecord(p64(2 << 40), " ", b"", b"undo", b"",
                              [DataRecord(p64(0), p64(2 << 40), None)]),
        ]

    def iterator(self, start=None, stop=None):
        return iter(self.transactions)


def test_records_without_data_are_skipped_and_counted(source):
    data = next(iter(next(iter(source.iterator())))).data
    destination = amphora.open_storage("memory://")
    stats = copy_transactions(_SourceWithADeletion(data), destination)
    assert (stats.transactions, stats.records, stats.skipped) == (2, 1, 1)
    assert [t.description for t in destination.iterator()] == [b"create", b"undo"]
