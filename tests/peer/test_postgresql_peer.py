"""ZODB's own storage test mixins, run against amphora's PostgreSQL storage.

Every test gets a schema of its own in the test server's database (dropped in
``tearDown``). ``_new_storage_client`` opens a second storage object on the same schema:
ZODB's race tests then check that commits made through one reach the other's database as
invalidations (``sync``), as they would from another process.
"""
import unittest

import pgserver
from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, PersistentStorage, ReadOnlyStorage,
                        RevisionStorage, StorageTestBase, Synchronization)

from amphora.storage.postgresql import PostgreSQLStorage

UNDO = "needs undo, which amphora storages do not support"


def _server() -> pgserver.PostgresServer:
    """The session's server; a skip (an error under CI) when there is none."""
    try:
        return pgserver.server()
    except pgserver.PostgresUnavailable as exc:
        if pgserver.in_ci():
            raise
        raise unittest.SkipTest(f"no PostgreSQL server for the tests: {exc}") from exc


class _PostgreSQLTestBase(StorageTestBase.StorageTestBase):
    keep_history = True
    use_extension_bytes = True  # extension bytes are stored verbatim

    def setUp(self):
        super().setUp()
        self.server = _server()
        self.schema = pgserver.schema_for(self.id())
        self.server.remember_schema(self.schema)
        self.open()

    def tearDown(self):
        super().tearDown()
        self.server.drop_schemas()

    def open(self, read_only=False, **kw):
        self._storage = PostgreSQLStorage(self.server.dsn(), read_only=read_only,
                                          keep_history=self.keep_history, schema=self.schema,
                                          **kw)

    def _new_storage_client(self):
        return PostgreSQLStorage(self.server.dsn(), keep_history=self.keep_history,
                                 schema=self.schema)


class PostgreSQLPeerTests(_PostgreSQLTestBase, BasicStorage.BasicStorage,
                          HistoryStorage.HistoryStorage, IteratorStorage.IteratorStorage,
                          IteratorStorage.ExtendedIteratorStorage, MTStorage.MTStorage,
                          PackableStorage.PackableStorageWithOptionalGC,
                          PersistentStorage.PersistentStorage, ReadOnlyStorage.ReadOnlyStorage,
                          RevisionStorage.RevisionStorage, Synchronization.SynchronizedStorage,
                          ConflictResolution.ConflictResolvingStorage):
    """A history-preserving database."""

    def testLoadBeforeUndo(self):
        raise unittest.SkipTest(UNDO)

    testUndoZombie = testLoadBeforeUndo


class PostgreSQLHistoryFreePeerTests(_PostgreSQLTestBase, BasicStorage.BasicStorage,
                                     MTStorage.MTStorage, PackableStorage.PackableStorage,
                                     PersistentStorage.PersistentStorage,
                                     ReadOnlyStorage.ReadOnlyStorage,
                                     Synchronization.SynchronizedStorage,
                                     ConflictResolution.ConflictResolvingStorage):
    """A history-free database (``keep_history=False``): only current revisions are kept
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


del _PostgreSQLTestBase  # not a test case of its own
