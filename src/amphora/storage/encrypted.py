"""A storage whose records are sealed: encrypted and authenticated, so that the storage
under it (a file, a PostgreSQL server, anyone who can read or write them) learns nothing of
the objects and cannot change them unnoticed.

``EncryptedStorage(storage, keyring)`` seals every record before ``storage`` sees it and
opens it again on the way back. A record is sealed with AES-256-GCM-SIV under a data key
of the :class:`~amphora.crypto.keyring.Keyring`, with a fresh random 96-bit nonce
(GCM-SIV also stays safe if a nonce ever repeats). Its layout::

    magic (2 bytes: A7 5E) | format (1: 1) | kind (1: "R" record, "T" transaction)
    | key id (4, big-endian) | database id (16) | oid (8) | tid (8) | base serial (8)
    | nonce (12) | ciphertext and tag (16)

The first 48 bytes, the header, are the associated data: the cipher authenticates them
with the ciphertext, so none can be changed without the record failing to open. A record
served as the revision ``tid`` of ``oid`` in the database ``id`` opens only if it was
sealed as exactly that: this catches records swapped between objects, an old revision
served as a newer one, a revision of another database, cut or altered bytes, records
stored in the clear and unknown keys, each with :class:`~amphora.errors.TamperedRecordError`.
No byte reaches an unpickler before the tag has been checked. The base serial (the
revision the writer read) is sealed too, the link from each revision to the one before.

**The tid of a record.** A storage chooses a transaction's tid when it commits, after the
records were sent, so a record cannot name the tid it will get. This wrapper chooses it
instead: it takes the commit's tid before sealing (above the storage's last one) and
begins the storage's commit with it, as a copy does (``tpc_begin(transaction, tid)``;
conflicts are still checked). If another writer committed a later tid meanwhile, the
storage refuses that tid; the records are sealed again with a new one and the commit is
retried, a few times.

**Transaction metadata**: user, description and extension are sealed into one record
(kind "T", oid zero) that the storage keeps as the only key of the extension
(``{"amphora.sealed": record}``), bound to the transaction's tid like any record.

**Conflicts** are resolved here, on the plain states: the storage is handed a transaction
whose ``resolve_conflict`` opens the committed and the read revision, merges with the
class's ``_p_resolveConflict`` and seals the merge over the committed revision. The
storage never tries to merge ciphertext.

**The database id** is 16 random bytes that every record carries: given as
``database_id``, else read from the root object's record, else from the first record
opened, else made at the first commit. A storage that serves records of another database
beside this one's is caught; one that serves a whole other database sealed with the same
keys is not, unless ``database_id`` is given.

**Not caught here**: a storage that hides a newer revision and serves the previous one
with its own tid (an object, or the whole database, rolled back); what the storage sees
(oids, tids, record sizes, which records are read and written together).

Pack with garbage collection works over a local storage: the references of each record
are read after it is opened. Through a server it is :class:`~amphora.errors.Unsupported`
(the server's collector cannot read sealed records); pack without it drops old revisions.
The JSON mirror is refused (:class:`~amphora.errors.MirrorError`): it would be
plaintext.
"""
from __future__ import annotations

import os
import struct
import threading
from typing import Any, Callable, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from amphora.crypto.keyring import Keyring
from amphora.errors import (ConflictError, KeyringError, MirrorError, ObjectNotFoundError,
                            StorageError, StorageTransactionError, TamperedRecordError,
                            Unsupported)
from amphora.serialize import references
from amphora.storage.base import (DataRecord, Storage, StorageBase, TransactionMetaData,
                                  TransactionRecord, decode_extension)
from amphora.utils import maxtid, new_tid, oid_repr, p64, tid_repr, u64, z64

__all__ = ["EncryptedStorage", "SEALED_EXTENSION"]

MAGIC = b"\xa7\x5e"
FORMAT = 1
RECORD, TRANSACTION = b"R", b"T"
#: the one extension key of a transaction in the wrapped storage
SEALED_EXTENSION = "amphora.sealed"

_HEADER = struct.Struct(">2sBcI16s8s8s8s")  # magic, format, kind, key id, db, oid, tid, base
_NONCE = 12
_TAG = 16
_SEALED_MIN = _HEADER.size + _NONCE + _TAG
_META = struct.Struct(">II")  # lengths of user and description; the extension follows
_TID_ATTEMPTS = 8  # commits retried when another writer took a later tid meanwhile


class EncryptedStorage(StorageBase):
    """``storage`` with every record and transaction sealed by ``keyring``'s keys.

    New records are sealed with ``keyring.current_key_id``; records sealed with any key
    the keyring holds open. Closing closes ``storage``. Capabilities are the wrapped
    storage's, except undo and the JSON mirror (none).
    """

    supports_undo = False
    supports_mirror = False
    #: not yet: the storage would keep each blob's file in the clear
    no_blobs_reason = ("blob files would be kept in the clear, which an encrypted storage "
                       "promises never to do")
    #: why :mod:`amphora.search` refuses to make a mirror here
    no_mirror_because = "the mirror would hold the objects in plaintext"

    def __init__(self, storage: Storage, keyring: Keyring, database_id: bytes | None = None,
                 name: str | None = None, resolve_conflicts: bool = True):
        if not isinstance(keyring, Keyring):
            raise TypeError(f"keyring must be an amphora.Keyring, not {type(keyring).__name__}")
        if database_id is not None and (type(database_id) is not bytes or len(database_id) != 16):
            raise ValueError(f"a database id is 16 bytes, not {database_id!r}")
        has_mirror = getattr(storage, "has_mirror", None)
        if has_mirror is not None and has_mirror():
            raise MirrorError(f"{storage.getName()} keeps a JSON mirror, which would hold "
                              "the objects in plaintext: drop it before encrypting")
        super().__init__(name or f"encrypted({storage.getName()})", storage.isReadOnly(),
                         resolve_conflicts)
        if getattr(storage, "_resolve_conflicts", False):
            # Its merges would read ciphertext: conflicts reach it with this wrapper's
            # resolver (see _SealedTransaction), or fail as conflicts, never merged there.
            storage._resolve_conflicts = False
        if getattr(storage, "read_ahead", False):
            storage.read_ahead = False  # a server finds no references in sealed records
        self.storage = storage
        self.keyring = keyring
        self.supports_history = getattr(storage, "supports_history", True)
        self.is_remote = getattr(storage, "is_remote", False)
        # A server packs with its own garbage collection, which cannot read sealed records.
        self.supports_pack = getattr(storage, "supports_pack", True) and not self.is_remote
        self._id_lock = threading.Lock()
        self._database_id = database_id
        self._plain: dict[bytes, bytes] = {}  # oid -> the plaintext stored (for conflicts)
        self._inner_txn: _SealedTransaction | None = None
        if database_id is None:
            self._learn_database_id()

    # -- the database id ----------------------------------------------------------------
    @property
    def database_id(self) -> bytes | None:
        """The 16-byte id the records carry (None until known: an empty database)."""
        return self._database_id

    def _learn_database_id(self) -> None:
        try:
            found = self.storage.loadBefore(z64, maxtid)
        except ObjectNotFoundError:
            return
        if found is not None:
            self._open(found[0], RECORD, z64, found[1])

    def _id_for_sealing(self) -> bytes:
        with self._id_lock:
            if self._database_id is None:
                self._database_id = os.urandom(16)
            return self._database_id

    # -- sealing and opening ------------------------------------------------------------
    def _seal(self, plain: bytes, kind: bytes, oid: bytes, tid: bytes, base: bytes) -> bytes:
        key_id = self.keyring.current_key_id
        header = _HEADER.pack(MAGIC, FORMAT, kind, key_id, self._id_for_sealing(), oid, tid,
                              base)
        nonce = os.urandom(_NONCE)
        return header + nonce + AESGCMSIV(self.keyring.key(key_id)).encrypt(nonce, plain, header)

    def _open(self, data: bytes, kind: bytes, oid: bytes | None, tid: bytes | None) -> bytes:
        """The plaintext of ``data`` served as the revision ``tid`` of ``oid`` (None: as
        whatever it names, for references in pack); else TamperedRecordError."""
        what = "a transaction's metadata" if kind == TRANSACTION else (
            "a record" if oid is None else f"the record of oid {oid_repr(oid)}")
        if tid is not None:
            what += f" at {tid_repr(tid)}"
        if len(data) < _SEALED_MIN or data[:2] != MAGIC:
            raise TamperedRecordError(
                f"{what} is not sealed ({len(data)} bytes"
                f"{', too short' if len(data) < _SEALED_MIN else ', no seal header'}): "
                "cut short, or stored in the clear")
        magic, version, sealed_kind, key_id, database, sealed_oid, sealed_tid, _ = \
            _HEADER.unpack_from(data)
        header = data[:_HEADER.size]
        try:
            key = self.keyring.key(key_id)
        except KeyringError:
            raise TamperedRecordError(f"{what} names key {key_id}, which the keyring "
                                      f"does not hold (it holds {self.keyring.key_ids})") from None
        nonce = data[_HEADER.size:_HEADER.size + _NONCE]
        try:
            plain = AESGCMSIV(key).decrypt(nonce, data[_HEADER.size + _NONCE:], header)
        except InvalidTag:
            raise TamperedRecordError(f"{what} failed authentication: changed or cut") from None
        # Authentic from here: the header says what the record truly is.
        if version != FORMAT or sealed_kind != kind:
            raise TamperedRecordError(f"{what} is a sealed {sealed_kind!r} of format "
                                      f"{version}, not a {kind!r} of format {FORMAT}")
        if oid is not None and sealed_oid != oid:
            raise TamperedRecordError(f"{what} was sealed for oid {oid_repr(sealed_oid)}: "
                                      "records swapped between objects")
        if tid is not None and sealed_tid != tid:
            raise TamperedRecordError(f"{what} was sealed as the revision {tid_repr(sealed_tid)}"
                                      ": another revision served in its place")
        with self._id_lock:
            if self._database_id is None:
                self._database_id = database
        if database != self._database_id:
            raise TamperedRecordError(f"{what} belongs to another database "
                                      f"({database.hex()}, not {self._database_id.hex()})")
        return plain

    def _seal_metadata(self, meta: tuple[bytes, bytes, bytes], tid: bytes) -> bytes:
        user, description, extension = meta
        plain = _META.pack(len(user), len(description)) + user + description + extension
        return self._seal(plain, TRANSACTION, z64, tid, z64)

    def _open_metadata(self, tid: bytes, sealed: Any) -> tuple[bytes, bytes, bytes]:
        """``(user, description, extension_bytes)`` of the transaction ``tid``, from the
        one extension key (``sealed``) it has in the wrapped storage."""
        if not isinstance(sealed, bytes):
            raise TamperedRecordError(f"the transaction {tid_repr(tid)} has no sealed "
                                      "metadata: written in the clear")
        plain = self._open(sealed, TRANSACTION, z64, tid)
        users, descriptions = _META.unpack_from(plain)
        start = _META.size
        return (plain[start:start + users], plain[start + users:start + users + descriptions],
                plain[start + users + descriptions:])

    def references(self, data: bytes, oids: list[bytes] | None = None) -> list[bytes]:
        """The oids the sealed record ``data`` refers to (for pack's garbage collection)."""
        return references(self._open(data, RECORD, None, None), oids)

    # -- reading --------------------------------------------------------------------------
    def lastTransaction(self) -> bytes:
        return self.storage.lastTransaction()

    def loadBefore(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        found = self.storage.loadBefore(oid, tid)
        if found is None:
            return None
        data, start, end = found
        return self._open(data, RECORD, oid, start), start, end

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        return {oid: (self._open(data, RECORD, oid, start), start, end)
                for oid, (data, start, end) in self.storage.load_many(oids, before).items()}

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        return self._open(self.storage.loadSerial(oid, serial), RECORD, oid, serial)

    def prefetch(self, oids: Iterable[bytes], tid: bytes) -> None:
        self.storage.prefetch(oids, tid)

    def history(self, oid: bytes, size: int | None = 1) -> list[dict[str, Any]]:
        """The wrapped storage's history with each transaction's metadata opened;
        ``size`` is the plain record's (sealing adds the same bytes to every record)."""
        entries = []
        for entry in self.storage.history(oid, size):
            tid = entry["tid"]
            user, description, extension = self._open_metadata(
                tid, entry.get(SEALED_EXTENSION))
            plain = dict(decode_extension(extension))
            plain.update(time=entry["time"], tid=tid, serial=entry["serial"], user_name=user,
                         description=description, size=max(entry["size"] - _SEALED_MIN, 0))
            entries.append(plain)
        return entries

    def iterator(self, start: bytes | None = None, stop: bytes | None = None
                 ) -> Iterator[TransactionRecord]:
        for txn in self.storage.iterator(start, stop):
            user, description, extension = self._open_metadata(txn.tid, _sealed_of(txn.extension_bytes))
            records = [DataRecord(record.oid, record.tid,
                                  None if record.data is None else self._open(
                                      record.data, RECORD, record.oid,
                                      record.data_txn or record.tid),
                                  record.data_txn)
                       for record in txn]
            yield TransactionRecord(txn.tid, txn.status, user, description, extension, records)

    def transaction_log(self, after: bytes, limit: int) -> list[tuple]:
        """The transaction log of the change feed (:mod:`amphora.feeds`): ``(tid, user,
        description, extension_bytes, oids)`` of up to ``limit`` transactions after
        ``after``, their metadata opened."""
        log_of = getattr(self.storage, "transaction_log", None)
        if log_of is None:
            rows = []
            for txn in self.storage.iterator(p64(u64(after) + 1)):
                rows.append((txn.tid, txn.user, txn.description, txn.extension_bytes,
                             [record.oid for record in txn]))
                if len(rows) >= limit:
                    break
        else:
            rows = log_of(after, limit)
        return [(tid, *self._open_metadata(tid, _sealed_of(extension_bytes)), oids)
                for tid, _user, _description, extension_bytes, oids in rows]

    def __len__(self) -> int:
        return len(self.storage)

    def getSize(self) -> int:
        return self.storage.getSize()

    # -- writing --------------------------------------------------------------------------
    def new_oid(self) -> bytes:
        return self.storage.new_oid()

    def new_oids(self, count: int) -> list[bytes]:
        return self.storage.new_oids(count)

    def _begin(self) -> None:
        self._inner_txn: _SealedTransaction | None = None

    def _vote(self) -> None:
        """Seal the commit with its tid and commit it to the wrapped storage, up to the
        vote; another tid if another writer took a later one meanwhile."""
        for attempt in range(_TID_ATTEMPTS):
            tid = self._tid or new_tid(self.storage.lastTransaction())
            try:
                self._vote_as(tid)
                return
            except StorageTransactionError:
                self._abort()
                if self._tid is not None or attempt == _TID_ATTEMPTS - 1:
                    raise
                sync = getattr(self.storage, "sync", None)
                if sync is not None:
                    sync()
                if self.storage.lastTransaction() < tid:
                    raise  # not a tid taken meanwhile: a real error

    def _vote_as(self, tid: bytes) -> None:
        inner = self.storage
        self._plain = dict(self._stores)
        txn = self._inner_txn = _SealedTransaction(self, tid)
        inner.tpc_begin(txn, tid)
        sealed = {oid: self._seal(data, RECORD, oid, tid, self._serials[oid])
                  for oid, data in self._stores.items()}
        restored = self._restored
        plain_stores = {oid: data for oid, data in sealed.items() if oid not in restored}
        if plain_stores:
            inner.store_many(plain_stores, {oid: self._serials[oid] for oid in plain_stores},
                             txn)
        for oid in restored:
            inner.restore(oid, tid, sealed[oid], "", None, txn)
        for oid, serial in self._checks.items():
            inner.checkCurrentSerialInTransaction(oid, serial, txn)
        try:
            resolved = inner.tpc_vote(txn)
        except ConflictError as exc:  # named with the plain record, not the sealed one
            if type(exc) is not ConflictError or exc.oid not in self._plain:
                raise
            raise type(exc)(oid=exc.oid, serials=exc.serials,
                            data=self._plain[exc.oid]) from None
        self._resolved = list(resolved or ())

    def _finish(self, func: Callable[[bytes], None] | None) -> bytes:
        txn, self._inner_txn = self._inner_txn, None
        tid = self.storage.tpc_finish(txn, func)
        if tid != txn.tid:
            raise StorageError(f"{self.storage.getName()} committed as {tid_repr(tid)}, "
                               f"not as the tid {tid_repr(txn.tid)} its records were sealed with")
        return tid

    def _abort(self) -> None:
        txn, self._inner_txn = self._inner_txn, None
        self._plain = {}
        if txn is not None:
            self.storage.tpc_abort(txn)

    def _resolve(self, txn: "_SealedTransaction", oid: bytes, committed: bytes, old: bytes,
                 data: bytes, load_serial: Callable[[bytes, bytes], bytes]) -> bytes | None:
        """The wrapped storage's conflict on ``oid``, merged on the plain states and
        sealed over the committed revision (or None: a conflict)."""
        resolve = getattr(self._transaction, "resolve_conflict", None)
        if resolve is None:
            if not self._resolve_conflicts:
                return None
            from amphora.serialize import resolve_record as resolve

        def plain_serial(oid: bytes, serial: bytes) -> bytes:
            return self._open(load_serial(oid, serial), RECORD, oid, serial)

        merged = resolve(oid, committed, old, self._plain[oid], plain_serial)
        if merged is None:
            return None
        self._plain[oid] = merged
        return self._seal(merged, RECORD, oid, txn.tid, committed)

    # -- management -------------------------------------------------------------------
    def pack(self, pack_time: float, referencesf: Callable | None = None, gc: bool = True) -> None:
        """Pack the wrapped storage; garbage is found by reading the references of each
        record once opened (``referencesf`` is not used: it reads plain records).
        Through a server, only without ``gc``: the server would look for references in
        sealed records, and this wrapper cannot hand it a way to read them."""
        if gc and self.is_remote:
            raise Unsupported(f"{self.__name__}: pack with garbage collection through a "
                              "server cannot read sealed records; pack(gc=False) drops old "
                              "revisions")
        self.storage.pack(pack_time, self.references, gc)

    def packed_through(self) -> bytes:
        packed = getattr(self.storage, "packed_through", None)
        return z64 if packed is None else packed()

    def registerDB(self, wrapper: Any) -> None:
        self._wrapper = wrapper
        self.storage.registerDB(_Relay(self, wrapper))

    def sync(self) -> None:
        sync = getattr(self.storage, "sync", None)
        if sync is not None:
            sync()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.storage.close()


class _SealedTransaction(TransactionMetaData):
    """What the wrapped storage commits: sealed metadata, the wrapper's tid, and the
    wrapper's conflict resolution."""

    def __init__(self, storage: EncryptedStorage, tid: bytes):
        super().__init__(b"", b"", {SEALED_EXTENSION: storage._seal_metadata(storage._meta, tid)})
        self.tid = tid
        self._storage = storage

    def resolve_conflict(self, oid: bytes, committed: bytes, old: bytes, data: bytes,
                         load_serial: Callable[[bytes, bytes], bytes]) -> bytes | None:
        return self._storage._resolve(self, oid, committed, old, data, load_serial)


class _Relay:
    """The wrapper the wrapped storage reports to: invalidations pass through, records
    are read opened."""

    def __init__(self, storage: EncryptedStorage, wrapper: Any):
        self._storage = storage
        self._wrapper = wrapper

    def invalidate(self, tid: bytes, oids: Iterable[bytes]) -> None:
        self._wrapper.invalidate(tid, oids)

    def invalidateCache(self) -> None:
        invalidate_cache = getattr(self._wrapper, "invalidateCache", None)
        if invalidate_cache is not None:
            invalidate_cache()

    def references(self, record: bytes, oids: list[bytes] | None = None) -> list[bytes]:
        return self._storage.references(record, oids)


def _sealed_of(extension_bytes: bytes) -> Any:
    return decode_extension(extension_bytes).get(SEALED_EXTENSION)
