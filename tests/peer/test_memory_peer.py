"""ZODB's own storage test mixins, run against amphora's memory storage."""
import unittest

from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, RevisionStorage, StorageTestBase,
                        Synchronization)

from amphora.storage.memory import MemoryStorage


class MemoryPeerTests(StorageTestBase.StorageTestBase, BasicStorage.BasicStorage,
                      HistoryStorage.HistoryStorage, IteratorStorage.IteratorStorage,
                      IteratorStorage.ExtendedIteratorStorage, MTStorage.MTStorage,
                      PackableStorage.PackableStorageWithOptionalGC,
                      RevisionStorage.RevisionStorage, Synchronization.SynchronizedStorage,
                      ConflictResolution.ConflictResolvingStorage):
    use_extension_bytes = True  # extension bytes are stored verbatim

    def setUp(self):
        super().setUp()
        self._storage = MemoryStorage()

    def testLoadBeforeUndo(self):
        raise unittest.SkipTest("needs undo, which amphora storages do not support")

    testUndoZombie = testLoadBeforeUndo
