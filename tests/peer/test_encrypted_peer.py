"""ZODB's own storage test mixins, run against EncryptedStorage over each kind of storage:
amphora's SQLite (history-preserving), memory, PostgreSQL (both kinds of history), the
client of a real ``amphora serve`` process, and as the base of a DemoStorage. Every
storage object of a test opens the same keyring file; ``_new_storage_client`` wraps a
second storage object on the same data, for ZODB's race tests."""
import os
import unittest

import test_client_peer as client_peer
import test_demo_peer as demo_peer
import test_postgresql_peer as postgresql_peer
from peer_mixins import HistoryPreservingPeer
from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage,
                        MTStorage, PackableStorage, RevisionStorage, StorageTestBase,
                        Synchronization)

from amphora import EncryptedStorage, Keyring
from amphora.crypto.keyring import KdfParameters
from amphora.storage.demo import DemoStorage
from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage

KEYRING = "Data.keyring"
UNDO = "needs undo, which the encrypted storage refuses"


def keyring() -> Keyring:
    """The test's keyring (in its working directory), made at the first use."""
    if os.path.exists(KEYRING):
        return Keyring.unlock(KEYRING, "passphrase")
    return Keyring.create(KEYRING, "passphrase", KdfParameters(1, 1, 1024))


class _Sealed:
    """Wraps the storages that the test base class opens."""

    def open(self, read_only=False, **kw):
        super().open(read_only=read_only, **kw)
        self._storage = EncryptedStorage(self._storage, keyring())

    def _new_storage_client(self):
        return EncryptedStorage(super()._new_storage_client(), keyring())


class EncryptedPeerTests(StorageTestBase.StorageTestBase, HistoryPreservingPeer):
    """encrypted->sqlite: history-preserving SQLite, every record sealed."""

    use_extension_bytes = True  # extension bytes come back as they were given
    path = "Data.sqlite"

    def setUp(self):
        super().setUp()
        self.open()

    def open(self, read_only=False, **kw):
        self._storage = EncryptedStorage(SQLiteStorage(self.path, read_only=read_only, **kw),
                                         keyring())

    def _new_storage_client(self):
        return EncryptedStorage(SQLiteStorage(self.path), keyring())


class _NoUndo:
    def testLoadBeforeUndo(self):
        raise unittest.SkipTest(UNDO)

    testUndoZombie = testLoadBeforeUndo


class EncryptedMemoryPeerTests(StorageTestBase.StorageTestBase, _NoUndo,
                               BasicStorage.BasicStorage, HistoryStorage.HistoryStorage,
                               IteratorStorage.IteratorStorage,
                               IteratorStorage.ExtendedIteratorStorage, MTStorage.MTStorage,
                               PackableStorage.PackableStorageWithOptionalGC,
                               RevisionStorage.RevisionStorage,
                               Synchronization.SynchronizedStorage,
                               ConflictResolution.ConflictResolvingStorage):
    """encrypted->memory."""

    use_extension_bytes = True

    def setUp(self):
        super().setUp()
        self._storage = EncryptedStorage(MemoryStorage(), keyring())


class EncryptedPostgreSQLPeerTests(_Sealed, postgresql_peer.PostgreSQLOpening,
                                   StorageTestBase.StorageTestBase, HistoryPreservingPeer):
    """encrypted->postgresql, history-preserving (without undo: the encrypted storage
    refuses it)."""


class EncryptedPostgreSQLHistoryFreePeerTests(
        _Sealed, postgresql_peer.PostgreSQLHistoryFreePeerTests):
    """encrypted->postgresql, history-free."""


class EncryptedClientSQLitePeerTests(_Sealed, client_peer.ClientSQLitePeerTests):
    """encrypted->client->sqlite: the server holds no key and sees only sealed records."""


class DemoOverEncryptedPeerTests(_NoUndo, demo_peer.DemoMemoryOverSQLitePeerTests):
    """demo(memory over encrypted(sqlite)): the staging recipe over an encrypted base."""

    def setUp(self):
        StorageTestBase.StorageTestBase.setUp(self)
        self._storage = DemoStorage(EncryptedStorage(demo_peer._base(), keyring()),
                                    MemoryStorage())
