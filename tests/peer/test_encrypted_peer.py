"""ZODB's own storage test mixins, run against an EncryptedStorage over amphora's SQLite
storage (a second storage object on the same file, with the same keyring, for ZODB's race
tests)."""
import os

from peer_mixins import HistoryPreservingPeer
from ZODB.tests import StorageTestBase

from amphora import EncryptedStorage, Keyring
from amphora.crypto.keyring import KdfParameters
from amphora.storage.sqlite import SQLiteStorage

KEYRING = "Data.keyring"


class EncryptedPeerTests(StorageTestBase.StorageTestBase, HistoryPreservingPeer):
    """History-preserving SQLite, every record sealed."""

    use_extension_bytes = True  # extension bytes come back as they were given
    path = "Data.sqlite"

    def setUp(self):
        super().setUp()
        self.open()

    def _keyring(self) -> Keyring:
        if os.path.exists(KEYRING):
            return Keyring.unlock(KEYRING, "passphrase")
        return Keyring.create(KEYRING, "passphrase", KdfParameters(1, 1, 1024))

    def open(self, read_only=False, **kw):
        self._storage = EncryptedStorage(SQLiteStorage(self.path, read_only=read_only, **kw),
                                         self._keyring())

    def _new_storage_client(self):
        return EncryptedStorage(SQLiteStorage(self.path), self._keyring())
