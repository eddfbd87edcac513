"""ZODB's own storage test mixins, run against amphora's memory storage."""
import unittest

from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, RevisionStorage, StorageTestBase,
                        Synchronization, TransactionalUndoStorage)

from amphora.storage.memory import MemoryStorage

DATA_TXN = ("an undo writes its records with their data; the iterator does not report "
            "them as back pointers (data_txn) to the transaction that wrote the data first")


class MemoryPeerTests(StorageTestBase.StorageTestBase, BasicStorage.BasicStorage,
                      HistoryStorage.HistoryStorage, IteratorStorage.IteratorStorage,
                      IteratorStorage.ExtendedIteratorStorage, MTStorage.MTStorage,
                      PackableStorage.PackableStorageWithOptionalGC,
                      RevisionStorage.RevisionStorage, Synchronization.SynchronizedStorage,
                      ConflictResolution.ConflictResolvingStorage,
                      ConflictResolution.ConflictResolvingTransUndoStorage,
                      TransactionalUndoStorage.TransactionalUndoStorage):
    use_extension_bytes = True  # extension bytes are stored verbatim

    def setUp(self):
        super().setUp()
        self._storage = MemoryStorage()

    def testTransactionalUndoIterator(self):
        raise unittest.SkipTest(DATA_TXN)
