"""ZODB's own storage test mixins, run against amphora's SQLite storage.

StorageTestBase runs each test in a fresh temporary directory, so the storage file is a
relative name there. ``_new_storage_client`` opens a second storage object on the same
file: ZODB's race tests then check that commits made through one reach the other's
database as invalidations (``sync``), as they would from another process.
"""
import unittest

from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, PersistentStorage, ReadOnlyStorage,
                        RevisionStorage, StorageTestBase, Synchronization)

from amphora.storage.sqlite import SQLiteStorage

UNDO = "needs undo, which amphora storages do not support"


class _SQLiteTestBase(StorageTestBase.StorageTestBase):
    keep_history = True
    use_extension_bytes = True  # extension bytes are stored verbatim
    path = "Data.sqlite"

    def setUp(self):
        super().setUp()
        self.open()

    def open(self, read_only=False, **kw):
        self._storage = SQLiteStorage(self.path, read_only=read_only,
                                      keep_history=self.keep_history, **kw)

    def _new_storage_client(self):
        return SQLiteStorage(self.path, keep_history=self.keep_history)


class SQLitePeerTests(_SQLiteTestBase, BasicStorage.BasicStorage,
                      HistoryStorage.HistoryStorage, IteratorStorage.IteratorStorage,
                      IteratorStorage.ExtendedIteratorStorage, MTStorage.MTStorage,
                      PackableStorage.PackableStorageWithOptionalGC,
                      PersistentStorage.PersistentStorage, ReadOnlyStorage.ReadOnlyStorage,
                      RevisionStorage.RevisionStorage, Synchronization.SynchronizedStorage,
                      ConflictResolution.ConflictResolvingStorage):
    """A history-preserving file."""

    def testLoadBeforeUndo(self):
        raise unittest.SkipTest(UNDO)

    testUndoZombie = testLoadBeforeUndo


class SQLiteHistoryFreePeerTests(_SQLiteTestBase, BasicStorage.BasicStorage,
                                 MTStorage.MTStorage, PackableStorage.PackableStorage,
                                 PersistentStorage.PersistentStorage,
                                 ReadOnlyStorage.ReadOnlyStorage,
                                 Synchronization.SynchronizedStorage,
                                 ConflictResolution.ConflictResolvingStorage):
    """A history-free file (``keep_history=False``): only current revisions are kept
    (replaced ones only briefly, for conflict resolution).

    RevisionStorage, HistoryStorage and the iterator mixins are left out: their tests
    read replaced revisions back through ``loadBefore``, ``history`` or ``iterator``.
    """

    keep_history = False

    def _needs_old_snapshots(self):
        raise unittest.SkipTest(
            "a history-free storage replaces revisions at once, so a connection whose "
            "snapshot predates another thread's commit gets ReadConflictError when it loads "
            "a replaced object; these ZODB tests count that retryable error as a failure")

    test2ZODBThreads = test7ZODBThreads = test_race_loadopen_vs_local_invalidate = \
        test_race_load_vs_external_invalidate = \
        test_race_external_invalidate_vs_disconnect = _needs_old_snapshots

    def testUndoConflictResolution(self):
        raise unittest.SkipTest(UNDO)

    testUndoUnresolvable = testPackUndoLog = testUndoConflictResolution


del _SQLiteTestBase  # not a test case of its own
