"""ZODB's own storage test mixins, run against amphora's SQLite storage.

StorageTestBase runs each test in a fresh temporary directory, so the storage file is a
relative name there. ``_new_storage_client`` opens a second storage object on the same
file: ZODB's race tests then check that commits made through one reach the other's
database as invalidations (``sync``), as they would from another process.
"""
from peer_mixins import HistoryFreePeer, HistoryPreservingPeer, UndoPeer
from ZODB.tests import StorageTestBase

from amphora.storage.sqlite import SQLiteStorage


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


class SQLitePeerTests(_SQLiteTestBase, UndoPeer, HistoryPreservingPeer):
    """A history-preserving file."""


class SQLiteHistoryFreePeerTests(_SQLiteTestBase, HistoryFreePeer):
    """A history-free file (``keep_history=False``)."""

    keep_history = False


del _SQLiteTestBase  # not a test case of its own
