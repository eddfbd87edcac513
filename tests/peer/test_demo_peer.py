"""ZODB's own storage test mixins, run against DemoStorage stacks.

The base is an empty SQLite file opened read-only: the tests write through the layer
only, and a write reaching the base would fail. Two stacks: changes in memory, and
changes in a second SQLite file (which can be closed and opened again, as
PersistentStorage and ReadOnlyStorage need, and shared by a second DemoStorage, as
ZODB's race tests need for invalidations from "another process").
"""
import unittest

from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, PersistentStorage, ReadOnlyStorage,
                        RevisionStorage, StorageTestBase, Synchronization)

from amphora.storage.demo import DemoStorage
from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage

UNDO = "needs undo, which DemoStorage does not do"


def _base(path="Base.sqlite"):
    SQLiteStorage(path).close()
    return SQLiteStorage(path, read_only=True)


class _DemoTestBase(StorageTestBase.StorageTestBase):
    use_extension_bytes = True  # extension bytes are stored verbatim

    def testLoadBeforeUndo(self):
        raise unittest.SkipTest(UNDO)

    testUndoZombie = testLoadBeforeUndo


class DemoMemoryOverSQLitePeerTests(_DemoTestBase, BasicStorage.BasicStorage,
                                    HistoryStorage.HistoryStorage,
                                    IteratorStorage.IteratorStorage,
                                    IteratorStorage.ExtendedIteratorStorage,
                                    MTStorage.MTStorage,
                                    PackableStorage.PackableStorageWithOptionalGC,
                                    RevisionStorage.RevisionStorage,
                                    Synchronization.SynchronizedStorage,
                                    ConflictResolution.ConflictResolvingStorage):
    """Changes in memory over an SQLite base."""

    def setUp(self):
        super().setUp()
        self._storage = DemoStorage(_base(), MemoryStorage())


class DemoSQLiteOverSQLitePeerTests(_DemoTestBase, BasicStorage.BasicStorage,
                                    HistoryStorage.HistoryStorage,
                                    IteratorStorage.IteratorStorage,
                                    IteratorStorage.ExtendedIteratorStorage,
                                    MTStorage.MTStorage,
                                    PackableStorage.PackableStorageWithOptionalGC,
                                    PersistentStorage.PersistentStorage,
                                    ReadOnlyStorage.ReadOnlyStorage,
                                    RevisionStorage.RevisionStorage,
                                    Synchronization.SynchronizedStorage,
                                    ConflictResolution.ConflictResolvingStorage):
    """Changes in an SQLite file over an SQLite base."""

    def setUp(self):
        super().setUp()
        self.open()

    def open(self, read_only=False, **kw):
        self._storage = self._new_storage_client(read_only)

    def _new_storage_client(self, read_only=False):
        return DemoStorage(_base(), SQLiteStorage("Changes.sqlite", read_only=read_only))


del _DemoTestBase  # not a test case of its own
