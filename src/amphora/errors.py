"""Errors raised by amphora.

Every error amphora raises derives from :class:`AmphoraError`::

    AmphoraError
     +-- StorageError                  a storage cannot do what was asked
     |    +-- StorageFormatError       a file or database that is not (or no longer) a
     |    |                            readable amphora store: wrong schema, truncated, corrupt
     |    +-- CorruptRecordError       one stored record cannot be decoded
     |    +-- StorageTransactionError  two-phase commit called out of order or with the
     |    |                            wrong transaction
     |    +-- ReadOnlyError            a write on a read-only storage or connection
     |    |    +-- ReadOnlyHistoryError   a write on a historical (``at=``) connection
     |    +-- Unsupported              the storage lacks the capability
     |    +-- PostgreSQLConnectionError  the PostgreSQL server cannot be reached or refused us
     |    +-- ClientDisconnected (TransientError)  the amphora server cannot be reached
     |    +-- StaleReachableError (TransientError)  a pack's set of objects to keep was
     |    |                            computed before the storage's last commit
     |    +-- TamperedRecordError      an encrypted record failed authentication
     |    +-- RollbackError            an encrypted database older than one already seen
     +-- ObjectNotFoundError (KeyError)   no record for an oid (ZODB: POSKeyError)
     +-- ConflictError (TransientError)   another transaction changed what this one wrote
     |    +-- ReadConflictError        ... or what it read (``readCurrent``, vanished objects)
     +-- UndoError                     a transaction cannot be undone (ZODB: UndoError)
     +-- ConnectionStateError          a closed connection, or one with pending changes
     +-- InvalidURIError (ValueError)  a URI amphora cannot open
     +-- MirrorError                   the JSON mirror is missing or cannot do what was asked
     |    +-- InvalidQueryError (ValueError)  SQL given to a search that the database refused
     +-- CatalogError (ValueError)     a catalog index declaration or query refused
     +-- KeyringError                  a keyring that cannot be created, read or unlocked

:class:`ConflictError` is a :class:`transaction.interfaces.TransientError`, so
``transaction`` retry loops (``for attempt in transaction.manager.attempts()``) retry it.

Code written for ZODB catches ZODB's exception classes (``POSKeyError``,
``ConflictError``, ``ReadOnlyError`` ...). When ZODB is installed, each amphora error with a
ZODB counterpart also derives from that class, so such code keeps working against amphora.
"""
from __future__ import annotations

import importlib.util

from transaction.interfaces import TransientError

from amphora.utils import oid_repr, tid_repr

__all__ = [
    "AmphoraError", "StorageError", "StorageFormatError", "CorruptRecordError",
    "StorageTransactionError", "ReadOnlyError", "ReadOnlyHistoryError", "Unsupported",
    "ObjectNotFoundError", "POSKeyError", "ConflictError", "ReadConflictError",
    "UndoError", "ConnectionStateError", "InvalidURIError", "MirrorError", "InvalidQueryError",
    "PostgreSQLConnectionError", "ClientDisconnected", "KeyringError", "TamperedRecordError",
    "RollbackError", "CatalogError", "StaleReachableError",
]


def _zodb_bases(*names: str) -> tuple[type, ...]:
    """ZODB's exception classes of these names, when ZODB is installed (else none)."""
    if importlib.util.find_spec("ZODB") is None:
        return ()
    from ZODB import POSException
    return tuple(getattr(POSException, name) for name in names)


class AmphoraError(Exception):
    """The root of every error amphora raises."""


class StorageError(AmphoraError, *_zodb_bases("StorageError")):
    """A storage cannot do what was asked."""


class StorageFormatError(StorageError):
    """The file or database is not an amphora store this version can read."""


class CorruptRecordError(StorageError):
    """A stored record cannot be decoded."""


class StorageTransactionError(StorageError, *_zodb_bases("StorageTransactionError")):
    """A two-phase-commit call came out of order or named another transaction."""


class ReadOnlyError(StorageError, *_zodb_bases("ReadOnlyError")):
    """A write was attempted on a read-only storage or connection."""


class ReadOnlyHistoryError(ReadOnlyError, *_zodb_bases("ReadOnlyHistoryError")):
    """A write was attempted on a historical connection (``db.open(at=...)``)."""


class Unsupported(StorageError, *_zodb_bases("Unsupported")):
    """The storage does not have the capability asked for."""


class PostgreSQLConnectionError(StorageError):
    """The PostgreSQL server cannot be reached or refused us (no such database, bad
    credentials, not running). The message names host, port, database and user."""


class ClientDisconnected(StorageError, TransientError):
    """The amphora server cannot be reached (retrying may succeed once it is back)."""


class StaleReachableError(StorageError, TransientError):
    """A pack with garbage collection was given the objects to keep as computed through a
    tid, and the storage has committed transactions after it: they may refer to objects
    outside the set. Nothing was deleted; compute the set again with those transactions
    (see :meth:`amphora.storage.base.Storage.pack`)."""


class ObjectNotFoundError(AmphoraError, *_zodb_bases("POSKeyError"), KeyError):
    """There is no record for the oid (ZODB calls this ``POSKeyError``).

    ``args[0]`` is the 8-byte oid.
    """

    def __str__(self) -> str:
        oid = self.args[0] if self.args else None
        return f"no object with oid {oid_repr(oid)}" if isinstance(oid, bytes) else super().__str__()


POSKeyError = ObjectNotFoundError


class ConflictError(AmphoraError, *_zodb_bases("ConflictError"), TransientError):
    """Another transaction committed a change to an object this transaction changed.

    Attributes: ``oid`` (8-byte oid or None), ``class_name`` (``module.Class`` or None),
    ``serials`` (``(committed_tid, read_tid)`` or None), ``data`` (the rejected record).
    Retrying the transaction may succeed.
    """

    def __init__(self, message: str | None = None, object=None, oid: bytes | None = None,
                 serials: tuple[bytes, bytes] | None = None, data: bytes | None = None):
        self.message = message or self.default_message
        self.oid = oid
        self.serials = serials
        self.data = data
        self.class_name = None
        if object is not None:
            self.oid = getattr(object, "_p_oid", oid)
            klass = type(object)
            self.class_name = f"{klass.__module__}.{klass.__qualname__}"
        elif data is not None:
            from amphora.serialize import class_name_of
            try:
                self.class_name = class_name_of(data)
            except AmphoraError:
                pass
        Exception.__init__(self, self.message)

    default_message = "database conflict error"

    # The ZODB spellings, for code written against ZODB.
    def get_oid(self):
        return self.oid

    def get_class_name(self):
        return self.class_name

    def get_old_serial(self):
        return self.serials[1] if self.serials else None

    def get_new_serial(self):
        return self.serials[0] if self.serials else None

    def get_serials(self):
        return self.serials

    def __str__(self) -> str:
        parts = [self.message]
        if self.oid is not None:
            parts.append(f"oid {oid_repr(self.oid)}")
        if self.class_name:
            parts.append(f"class {self.class_name}")
        if self.serials:
            committed, read = self.serials
            parts.append(f"serial this txn started with {tid_repr(read)}")
            parts.append(f"serial currently committed {tid_repr(committed)}")
        detail = ", ".join(parts[1:])
        return f"{self.message} ({detail})" if detail else self.message


class ReadConflictError(ConflictError, *_zodb_bases("ReadConflictError")):
    """An object this transaction read has changed (or vanished) since it was read."""

    default_message = "database read conflict error"


class UndoError(AmphoraError, *_zodb_bases("UndoError")):
    """A transaction cannot be undone: it is not in the database (never committed,
    packed away), or a later transaction changed one of its objects in a way that cannot
    be merged. ``oid`` is that object's oid, or None."""

    def __init__(self, reason: str, oid: bytes | None = None):
        Exception.__init__(self, reason, oid)
        self.reason = self._reason = reason
        self.oid = self._oid = oid

    def __str__(self) -> str:
        if self.oid is None:
            return self.reason
        return f"{self.reason} (oid {oid_repr(self.oid)})"


class ConnectionStateError(AmphoraError, *_zodb_bases("ConnectionStateError")):
    """The connection is closed, or cannot be closed with changes pending."""


class InvalidURIError(AmphoraError, ValueError):
    """The URI names no storage amphora can open, or has bad options."""


class MirrorError(AmphoraError):
    """The database has no JSON mirror, or its storage cannot keep one."""


class CatalogError(AmphoraError, ValueError):
    """A catalog (:mod:`amphora.catalog`) refused an index declaration or a query; the
    message names what was wrong."""


class InvalidQueryError(MirrorError, ValueError):
    """A search's SQL, index definition or name was refused; the message says why."""


class KeyringError(AmphoraError):
    """A keyring file cannot be created, read or unlocked: a wrong passphrase, a file
    that is not a keyring, a key id the keyring does not hold."""


class TamperedRecordError(StorageError):
    """A record of an encrypted storage failed authentication: it was changed, cut,
    stored in the clear, moved from another object, revision or database, or sealed
    with a key the keyring does not hold. Nothing of it was unpickled."""


class RollbackError(StorageError):
    """An encrypted storage's last transaction is older than one this client has already
    seen of that database: the server serves an older copy (a rollback), or the database
    was restored from a backup. ``last`` is the storage's tid, ``seen`` the newest one
    remembered, ``path`` the file that remembers it (None: seen by this process only)."""

    def __init__(self, message: str, last: bytes | None = None, seen: bytes | None = None,
                 path: str | None = None):
        super().__init__(message)
        self.last = last
        self.seen = seen
        self.path = path
