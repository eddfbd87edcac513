"""The ZODB storage test mixins the SQL storages run, and the tests they skip, for a
history-preserving and a history-free storage: a test module combines one with its own
``StorageTestBase`` subclass (which opens the storage), and :class:`UndoPeer` (before the
other) for a storage that undoes."""
import unittest

from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, PersistentStorage, ReadOnlyStorage,
                        RevisionStorage, Synchronization, TransactionalUndoStorage)

UNDO = "needs undo, which this storage refuses (supports_undo is False)"
NO_UNDO = "needs undo, which a history-free storage cannot do"
DATA_TXN = ("an undo writes its records with their data; the iterator does not report "
            "them as back pointers (data_txn) to the transaction that wrote the data first")


class UndoPeer(TransactionalUndoStorage.TransactionalUndoStorage,
               ConflictResolution.ConflictResolvingTransUndoStorage,
               PackableStorage.PackableUndoStorage):
    """ZODB's undo mixins, and the undo tests of the other mixins that
    :class:`HistoryPreservingPeer` skips for a storage without undo."""

    testLoadBeforeUndo = RevisionStorage.RevisionStorage.testLoadBeforeUndo
    testUndoZombie = IteratorStorage.IteratorStorage.testUndoZombie

    def testTransactionalUndoIterator(self):
        raise unittest.SkipTest(DATA_TXN)


class HistoryPreservingPeer(BasicStorage.BasicStorage, HistoryStorage.HistoryStorage,
                            IteratorStorage.IteratorStorage,
                            IteratorStorage.ExtendedIteratorStorage, MTStorage.MTStorage,
                            PackableStorage.PackableStorageWithOptionalGC,
                            PersistentStorage.PersistentStorage,
                            ReadOnlyStorage.ReadOnlyStorage, RevisionStorage.RevisionStorage,
                            Synchronization.SynchronizedStorage,
                            ConflictResolution.ConflictResolvingStorage):
    def testLoadBeforeUndo(self):
        raise unittest.SkipTest(UNDO)

    testUndoZombie = testLoadBeforeUndo


class HistoryFreePeer(BasicStorage.BasicStorage, MTStorage.MTStorage,
                      PackableStorage.PackableStorage, PersistentStorage.PersistentStorage,
                      ReadOnlyStorage.ReadOnlyStorage, Synchronization.SynchronizedStorage,
                      ConflictResolution.ConflictResolvingStorage):
    """Only current revisions are kept (replaced ones only briefly, for conflict
    resolution). RevisionStorage, HistoryStorage and the iterator mixins are left out:
    their tests read replaced revisions back through ``loadBefore``, ``history`` or
    ``iterator``. (The test module's base sets ``keep_history = False``.)"""

    def _needs_old_snapshots(self):
        raise unittest.SkipTest(
            "a history-free storage replaces revisions at once, so a connection whose "
            "snapshot predates another thread's commit gets ReadConflictError when it loads "
            "a replaced object; these ZODB tests count that retryable error as a failure")

    test2ZODBThreads = test7ZODBThreads = test_race_loadopen_vs_local_invalidate = \
        test_race_load_vs_external_invalidate = \
        test_race_external_invalidate_vs_disconnect = _needs_old_snapshots

    def testUndoConflictResolution(self):
        raise unittest.SkipTest(NO_UNDO)

    testUndoUnresolvable = testPackUndoLog = testUndoConflictResolution
