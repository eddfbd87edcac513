"""ZODB's own storage test mixins, run against the client storage.

The storages are served by a real ``amphora serve`` process (one per kind for the
session, serving one storage per name; see ``tests/server/serverprocess.py``); each test
names storages of its own. ``_new_storage_client`` opens a second client of the same
served storage: ZODB's race tests then check that commits made through one reach the
other's database as pushed invalidations.
"""
import sys
import unittest
import uuid
from pathlib import Path

from peer_mixins import HistoryPreservingPeer, UndoPeer
from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, RevisionStorage, StorageTestBase,
                        Synchronization)

from amphora.storage.client import ClientStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from serverprocess import shared_server  # noqa: E402

class _ClientTestBase(StorageTestBase.StorageTestBase):
    served = "sqlite"
    use_extension_bytes = True  # extension bytes are stored verbatim

    def setUp(self):
        super().setUp()
        self._name = uuid.uuid4().hex
        self.open()

    def _client(self, read_only=False):
        server = shared_server(self.served)
        return ClientStorage(server.host, server.port, storage=self._name,
                             read_only=read_only)

    def open(self, read_only=False, **kw):
        if self._storage is not None:
            self._storage.close()
        self._storage = self._client(read_only)

    def _new_storage_client(self):
        return self._client()


class _ClientUndoPeer(UndoPeer):
    def testPackUndoLog(self):
        raise unittest.SkipTest(
            "fakes the clock of the test process only (time_monotonically_increases): its "
            "pack time is compared with tids the server process made with the real clock")


class ClientSQLitePeerTests(_ClientTestBase, HistoryPreservingPeer):
    """client->sqlite: a history-preserving SQLite file behind the server (its undo
    tests are :class:`ClientSQLiteUndoPeerTests`'s: this class is also the base of the
    encrypted storage's over the client, which refuses undo)."""

    def testLoadBeforeUndo(self):
        raise unittest.SkipTest("run by ClientSQLiteUndoPeerTests (an encrypted storage "
                                "over the client, also of this class, refuses undo)")

    testUndoZombie = testLoadBeforeUndo


class ClientSQLiteUndoPeerTests(_ClientTestBase, _ClientUndoPeer):
    """client->sqlite: ZODB's undo mixins."""


class ClientMemoryPeerTests(_ClientTestBase, _ClientUndoPeer, BasicStorage.BasicStorage,
                            HistoryStorage.HistoryStorage, IteratorStorage.IteratorStorage,
                            IteratorStorage.ExtendedIteratorStorage, MTStorage.MTStorage,
                            PackableStorage.PackableStorageWithOptionalGC,
                            RevisionStorage.RevisionStorage, Synchronization.SynchronizedStorage,
                            ConflictResolution.ConflictResolvingStorage):
    """client->memory (PersistentStorage and ReadOnlyStorage left out: they reopen the
    storage, and a served memory storage ends with its last client)."""

    served = "memory"


del _ClientTestBase, _ClientUndoPeer  # not test cases of their own
