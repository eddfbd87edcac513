"""amphora: a transactional object database for Python.

>>> import amphora
>>> db = amphora.open("memory://")
>>> with db.transaction() as conn:
...     conn.root.greeting = "hello"
>>> with db.transaction() as conn:
...     conn.root.greeting
'hello'
"""
from __future__ import annotations

from typing import Any

from amphora.blob import Blob
from amphora.connection import Connection
from amphora.db import DB
from amphora.errors import (AmphoraError, CatalogError, ClientDisconnected, ConflictError,
                            ConnectionStateError, CorruptRecordError, InvalidQueryError,
                            InvalidURIError, KeyringError, MirrorError, ObjectNotFoundError,
                            POSKeyError, PostgreSQLConnectionError, ReadConflictError, ReadOnlyError,
                            ReadOnlyHistoryError, RollbackError, StaleReachableError,
                            StorageError, StorageFormatError, StorageTransactionError,
                            TamperedRecordError, UndoError,
                            Unsupported)
from amphora.crypto.keyring import Keyring
from amphora.feeds import Change, ResyncRequired
from amphora.serialize import Broken
from amphora.storage.base import Storage, TransactionMetaData
from amphora.storage.before import BeforeStorage
from amphora.storage.demo import DemoStorage
from amphora.storage.encrypted import EncryptedStorage
from amphora.storage.memory import MemoryStorage
from amphora.uri import DB_OPTIONS as _DB_OPTIONS
from amphora.uri import open_storage_for_db as _open_storage_for_db
from amphora.uri import open_storage

__all__ = [
    "AmphoraError", "BeforeStorage", "Blob", "Broken", "CatalogError", "Change", "ClientDisconnected",
    "ConflictError",
    "Connection", "ConnectionStateError", "CorruptRecordError", "DB", "DemoStorage",
    "EncryptedStorage", "InvalidQueryError", "InvalidURIError", "Keyring", "KeyringError",
    "MemoryStorage", "MirrorError",
    "ObjectNotFoundError", "POSKeyError", "PostgreSQLConnectionError", "ReadConflictError",
    "ReadOnlyError", "ReadOnlyHistoryError", "ResyncRequired", "RollbackError",
    "StaleReachableError", "Storage", "StorageError",
    "StorageFormatError", "StorageTransactionError", "TamperedRecordError",
    "TransactionMetaData", "UndoError",
    "Unsupported",
    "open", "open_storage",
]


def open(uri: str, keyring: Keyring | None = None, seen_file: Any = None,
         **options: Any) -> DB:
    """A :class:`DB` on the storage ``uri`` names (``"sqlite:///app.db"``, ``"memory://"``).

    ``cache_size``, ``cache_size_bytes``, ``pool_size`` and ``record_cache_bytes`` go to
    the DB, as keyword arguments or in the URI's query string; every other option to the
    storage (see :func:`open_storage`). With a ``keyring``, the storage is wrapped in an
    :class:`EncryptedStorage` sealed with its keys; ``seen_file`` is where it remembers
    the newest transaction seen, to refuse a rolled-back storage (:class:`RollbackError`):
    a path, None for beside the keyring (``<keyring>.seen``), False for nowhere.
    """
    if seen_file is not None and keyring is None:
        raise TypeError("seen_file is for an encrypted database: give a keyring too")
    db_options = {k: options.pop(k) for k in _DB_OPTIONS if k in options}
    storage, uri_db_options = _open_storage_for_db(uri, **options)
    if keyring is not None:
        try:
            storage = EncryptedStorage(storage, keyring, seen_file=seen_file)
        except BaseException:
            storage.close()
            raise
    try:
        return DB(storage, **{**uri_db_options, **db_options})
    except BaseException:
        storage.close()
        raise
