"""ZODB's own storage test mixins, run against amphora's memory storage."""
from peer_mixins import UndoPeer
from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, RevisionStorage, StorageTestBase,
                        Synchronization)

from amphora.storage.memory import MemoryStorage


class MemoryPeerTests(StorageTestBase.StorageTestBase, UndoPeer, BasicStorage.BasicStorage,
                      HistoryStorage.HistoryStorage, IteratorStorage.IteratorStorage,
                      IteratorStorage.ExtendedIteratorStorage, MTStorage.MTStorage,
                      PackableStorage.PackableStorageWithOptionalGC,
                      RevisionStorage.RevisionStorage, Synchronization.SynchronizedStorage,
                      ConflictResolution.ConflictResolvingStorage):
    use_extension_bytes = True  # extension bytes are stored verbatim

    def setUp(self):
        super().setUp()
        self._storage = MemoryStorage()

