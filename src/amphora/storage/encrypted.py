"""A storage whose records are sealed: encrypted and authenticated, so that the storage
under it (a file, a PostgreSQL server, anyone who can read or write them) learns nothing of
the objects and cannot change them unnoticed.

``EncryptedStorage(storage, keyring)`` seals every record before ``storage`` sees it and
opens it again on the way back. Records are sealed with AES-256-GCM under *subkeys* of a
data key of the :class:`~amphora.crypto.keyring.Keyring`: each call that seals (one
commit's records, a transaction's metadata, a merged conflict) draws a random 16-byte
salt and derives a fresh subkey: BLAKE2b keyed with the data key, salted with the salt
and personalized with a label (libsodium's key derivation); the records it seals are
numbered from 0, and a record's nonce is the salt's last 8 bytes, then the 4-byte number.
A subkey never sees a nonce twice, by construction, and a data key's subkeys never repeat
(two salts of 128 random bits do not meet), so no nonce is ever reused under a key,
however many records a data key seals; no nonce is derived from an oid or a serial.
Opening a record derives its subkey once: the ciphers of up to 4096 subkeys met are
kept (a commit's records, read together, share one). Its layout::

    magic (2 bytes: A7 5E) | format (1: 1) | kind (1: "R" record, "T" transaction)
    | key id (4, big-endian) | database id (16) | oid (8) | tid (8) | base serial (8)
    | salt (16) | number (4, big-endian) | ciphertext of the padded plaintext | tag (16)

**Padding.** Before sealing, the plaintext is padded to a bucket, so that the storage sees
only bucket sizes, never a record's exact size: a byte 0x80 is appended, then zeros up to
the bucket (:func:`~amphora.crypto.padding.padded_size`): a multiple of 64 bytes up to 1 KiB (1 to 63 bytes of
plaintext are sealed as 64, 64 to 127 as 128, ...), then eight buckets per doubling, each
step an eighth of the power of two below (1152, 1280, ... 2048, 2304, 2560, ...), so that
padding adds at most 64 bytes below 1 KiB and at most 12.5% above. The padding is inside
the ciphertext: changing it fails authentication like any other byte; once opened, the
last 0x80 and the zeros after it are cut off (a record without them is refused).

The first 68 bytes, the header, are the associated data: the cipher authenticates them
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
storage never tries to merge ciphertext (a server's own merges, :mod:`amphora.symbolic`,
find no class in a sealed record and ask the client). A server asking ahead, about a
commit voted but not finished, names no committed tid: the committed record's sealed
header does.

**The database id** is 16 random bytes that every record carries: given as
``database_id``, else read from the root object's record, else from the first record
opened, else made at the first commit. A storage that serves records of another database
beside this one's is caught; one that serves a whole other database sealed with the same
keys is not, unless ``database_id`` is given.

**Rollback of the whole database.** Every record of an older copy of the database is
authentic, so a storage could serve one (hiding newer commits). The client remembers the
newest tid it has seen of each database, in a file (:mod:`amphora.crypto.seen`): by
default beside the keyring (``<keyring>.seen``), else ``seen_file``; ``seen_file=False``
keeps it in memory only. When this storage is opened, and each time it is asked for its
last transaction (at each sync, so at every transaction boundary of a connection), a
wrapped storage whose last tid is older than the one remembered is refused with
:class:`~amphora.errors.RollbackError`, naming both tids and the file. The guarantee: a
tid seen (reported by the wrapped storage, or committed here) is in the file within one
second, and at :meth:`close`; a client that dies within that second may not catch a
rollback to just before it. The check needs the database id: an empty database, or one
opened without ``database_id`` whose records were all withheld, is not compared (pass
``database_id`` to compare from the start). A database restored from a backup on purpose
is opened after removing its entry from the file.

**Not caught here**: a storage that hides a newer revision of one object and serves the
previous one with its own tid (while the database's last tid moves on); a rollback to a
point no client had seen yet. **What the storage sees**: oids, tids and transaction
times, each record's and blob's size padded to its bucket, which records each client
reads and writes and when, which records are written together, and each database's id.

**Keys.** A record's header names the data key that sealed it; new records are sealed
with the keyring's current key, and records sealed with any key it holds open. Each commit
first refreshes the keyring (a ``stat`` of its file, see
:meth:`~amphora.crypto.keyring.Keyring.refresh`), so that a key another process added
(``amphora keys rotate``) seals this process's next commit; a record naming a key the
keyring does not hold makes it read the file again before the record is refused.
:mod:`amphora.crypto.rotation` seals the stored records again with a new key.

**Pack with garbage collection** over SQLite, PostgreSQL or memory reads the references
of each record once opened. Through a server, which holds no key, it is computed here: this
wrapper walks from the root (and from every object written after the pack time) through
the references of the revisions the pack keeps, and tells the server only the set of
oids to keep, as computed through the last tid it read (the server learns which oids are
live, not what refers to what). The served storage deletes the objects outside the set
that existed at the pack time, under its commit lock, and only if no transaction was
committed after that tid; else the walk adds the references of those transactions and
asks again (see :mod:`amphora.storage._reachable`).

**Blobs** are sealed too, when the wrapped storage keeps blobs: each blob file is padded
to a bucket like a record and sealed in 64 KiB chunks as it is read, never whole in
memory (see :mod:`amphora.crypto.sealed_blobs` for the layout), and the wrapped storage keeps the sealed file as the blob's; the blob's
record is sealed like any other. Uncommitted blob files, and each revision's file once
opened (read from the wrapped storage's sealed file, checked whole, and kept to be read
again), live in this storage's own temporary directory (``blob_cache_dir``, a directory
for this database alone, or a new directory removed at :meth:`close`): plaintext stays on
the client's machine.

**The JSON mirror** is refused (:class:`~amphora.errors.MirrorError`): it would be
plaintext. The SQL storages also refuse to make one, to any client, once their root
record is sealed.
"""
from __future__ import annotations

import os
import shutil
import stat
import struct
import hashlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from amphora.cache import RecordCache
from amphora.crypto.keyring import Keyring
from amphora.crypto.padding import PAD_STEP, padded_size
from amphora.crypto.sealed_blobs import open_blob_file, seal_blob_file
from amphora.crypto.seen import SeenTids, seen_file_of
from amphora.errors import (ConflictError, KeyringError, MirrorError, ObjectNotFoundError,
                            RollbackError, StorageError, StorageTransactionError,
                            TamperedRecordError)
from amphora.serialize import references
from amphora.storage._reachable import ReachableWalk
from amphora.storage.base import (DataRecord, Storage, StorageBase, TransactionMetaData,
                                  TransactionRecord, decode_extension)
from amphora.storage.blobs import BlobLayerMixin, blob_capable, declare_blob_storage
from amphora.utils import maxtid, new_tid, oid_repr, p64, tid_repr, u64, z64

__all__ = ["EncryptedStorage", "SEALED_EXTENSION", "is_sealed", "sealed_key_id",
           "sealed_metadata"]

MAGIC = b"\xa7\x5e"
FORMAT = 1
RECORD, TRANSACTION = b"R", b"T"
#: the one extension key of a transaction in the wrapped storage
SEALED_EXTENSION = "amphora.sealed"

# magic, format, kind, key id, database id, oid, tid, base serial, salt, counter
_HEADER = struct.Struct(">2sBcI16s8s8s8s16sI")
_HEADER_START = struct.Struct(">2sBcI16s")  # the part common to one commit's records
_HEADER_SIZE = _HEADER.size
_SALT = 16
# where the fields are in a sealed record
_KEY_ID_AT, _DATABASE_AT, _OID_AT, _TID_AT, _BASE_AT, _SALT_AT, _COUNTER_AT = \
    4, 8, 24, 32, 40, 48, 64
_FORMAT_AND_KIND = {kind: bytes([FORMAT]) + kind for kind in (b"R", b"T")}
_TAG = 16
_SEALED_MIN = _HEADER.size + _TAG
_SUBKEY_PERSON = b"amphora subkey"  # BLAKE2b's personalization of a subkey's derivation
_NONCE_AT = _COUNTER_AT - 8  # a nonce: the salt's last 8 bytes, then the record's number
_SUBKEYS_KEPT = 4096  # the ciphers of subkeys met while opening, kept for the next records
_META = struct.Struct(">II")  # lengths of user and description; the extension follows
_TID_ATTEMPTS = 8  # commits retried when another writer took a later tid meanwhile
_CATCH_UP_SECONDS = 2.0  # a remote storage's time to deliver commits it has not pushed yet
_PADDING = b"\x80" + bytes(8191)  # the mark, then zeros: sliced for each record
_PADS = tuple(_PADDING[:PAD_STEP - size] for size in range(PAD_STEP))  # by size % 64
_COUNTS = tuple(number.to_bytes(4, "big") for number in range(1 << 14))  # records' numbers


def _pad(plain: bytes) -> bytes:
    size = len(plain)
    padding = padded_size(size) - size
    if padding > len(_PADDING):  # (records above 64 KiB)
        return b"".join((plain, _PADDING[:1], bytes(padding - 1)))
    return plain + _PADDING[:padding]


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` has the form of a sealed record (not whether it is authentic)."""
    return len(data) >= _SEALED_MIN and data[:2] == MAGIC


class EncryptedStorage(BlobLayerMixin, StorageBase):
    """``storage`` with every record and transaction sealed by ``keyring``'s keys.

    New records are sealed with ``keyring.current_key_id``; records sealed with any key
    the keyring holds open. Closing closes ``storage``. Capabilities are the wrapped
    storage's, except undo and the JSON mirror (none).
    """

    supports_undo = False
    supports_mirror = False
    #: why :mod:`amphora.search` refuses to make a mirror here
    no_mirror_because = "the mirror would hold the objects in plaintext"

    def __init__(self, storage: Storage, keyring: Keyring, database_id: bytes | None = None,
                 name: str | None = None, resolve_conflicts: bool = True,
                 seen_file: str | os.PathLike | bool | None = None,
                 blob_cache_dir: str | os.PathLike | None = None):
        if not isinstance(keyring, Keyring):
            raise TypeError(f"keyring must be an amphora.Keyring, not {type(keyring).__name__}")
        if seen_file is True or not (seen_file is None or seen_file is False
                                     or isinstance(seen_file, (str, os.PathLike))):
            raise TypeError("seen_file is a path, None (beside the keyring) or False (no "
                            f"file), not {seen_file!r}")
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
        self.supports_pack = getattr(storage, "supports_pack", True)
        self._id_lock = threading.Lock()
        self._database_id = database_id
        self._plain: dict[bytes, bytes] = {}  # oid -> the plaintext stored (conflicts name it)
        self._inner_txn: _SealedTransaction | None = None
        self._subkeys: dict[bytes, AESGCM] = {}  # salt -> the cipher of its subkey
        # salt -> (its cipher, the first 40 bytes of a record it opened: format, kind,
        # key id and this database's id), for load_many's common case
        self._records_opened: dict[bytes, tuple[AESGCM, bytes]] = {}
        self._seen_lock = threading.RLock()
        self._seen = z64  # the newest tid seen of this database (the file's included)
        self._seen_loaded = False  # the file's entry read (once the database id is known)
        self.seen_tids = None if seen_file is False else SeenTids(
            seen_file_of(keyring.path) if seen_file is None else Path(seen_file))
        self.supports_blobs = blob_capable(storage)
        if self.supports_blobs:
            declare_blob_storage(self)
        else:
            self.no_blobs_reason = f"{storage.getName()} keeps no blob files"
        self._blob_cache_asked = (None if blob_cache_dir is None
                                  else os.path.abspath(os.fspath(blob_cache_dir)))
        self._blob_cache: str | None = None  # made at its first use
        if database_id is None:
            self._learn_database_id()
        if self.seen_tids is not None and self._database_id is None:
            self.seen_tids.entries()  # a damaged file is reported now, not at a commit
        self.lastTransaction()  # a storage older than what was seen is refused now

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
        if self._database_id is not None:
            return self._database_id
        with self._id_lock:
            if self._database_id is None:
                self._database_id = os.urandom(16)
                self._seen_loaded = True  # a new id: the file has nothing of it
            return self._database_id

    # -- rollback -----------------------------------------------------------------------
    def _load_seen(self) -> None:
        """Raise ``_seen`` to the file's entry, once the database id is known."""
        database_id = self._database_id
        if self._seen_loaded or database_id is None:
            return
        self._seen_loaded = True
        if self.seen_tids is None:
            return
        remembered = self.seen_tids.remembered(database_id)
        if remembered is not None and remembered > self._seen:
            self._seen = remembered
        elif self._seen > z64:  # seen before the id was known
            self.seen_tids.note(database_id, self._seen)

    def _catch_up(self) -> bytes:
        """The wrapped storage's last tid once it caught up with commits it may not have
        heard of yet (another process's, which that process may have noted in the file
        already): it syncs, and a remote storage is given a moment for pushes to come."""
        sync = getattr(self.storage, "sync", None)
        deadline = time.monotonic() + (_CATCH_UP_SECONDS if self.is_remote else 0.0)
        while True:
            if sync is not None:
                sync()
            last = self.storage.lastTransaction()
            if last >= self._seen or time.monotonic() >= deadline:
                return last
            time.sleep(0.02)

    def _saw(self, tid: bytes, check: bool = True) -> None:
        """Note ``tid`` as seen (under ``_seen_lock``); with ``check``, a tid older than
        one seen before (the file's entry included) raises RollbackError. Without, nothing
        is read and nothing raised (a commit's own tid, after it committed)."""
        if check:
            self._load_seen()
        database_id = self._database_id
        if tid > self._seen:
            self._seen = tid
            if self.seen_tids is not None and database_id is not None:
                self.seen_tids.note(database_id, tid)
        elif check and tid < self._seen:
            where = ("this process" if self.seen_tids is None
                     else f"this client (remembered in {self.seen_tids.path})")
            raise RollbackError(
                f"{self.storage.getName()}'s last transaction is {tid_repr(tid)}, older than "
                f"{tid_repr(self._seen)}, which {where} has already seen of the database "
                f"{database_id.hex() if database_id else '(id unknown)'}: it serves an older "
                "copy of the database (a rollback). If the database was restored from a "
                "backup on purpose, remove its entry from that file.",
                last=tid, seen=self._seen,
                path=None if self.seen_tids is None else str(self.seen_tids.path))

    # -- sealing and opening ------------------------------------------------------------
    def _subkey(self, key_id: int, salt: bytes) -> AESGCM:
        """The cipher of the subkey ``salt`` names under the data key ``key_id``: BLAKE2b
        keyed with the data key, with the salt and a personalization string, 32 bytes
        out (libsodium's ``crypto_kdf`` construction); KeyringError if the keyring holds
        no such key. Kept by salt alone (salts are random, 128 bits): a record naming a
        kept salt under another key id fails authentication all the same, since the key
        id is part of the associated data."""
        found = self._subkeys.get(salt)
        if found is None:
            subkey = hashlib.blake2b(key=self.keyring.key(key_id), salt=salt,
                                     person=_SUBKEY_PERSON, digest_size=32).digest()
            found = AESGCM(subkey)
            subkeys = self._subkeys
            if len(subkeys) >= _SUBKEYS_KEPT:
                subkeys.clear()  # (cheaper than dropping the oldest one by one)
            subkeys[salt] = found
        return found

    def _seal(self, plain: bytes, kind: bytes, oid: bytes, tid: bytes, base: bytes) -> bytes:
        return self._seal_many(kind, tid, {oid: plain}, {oid: base})[oid]

    def _seal_many(self, kind: bytes, tid: bytes, plains: dict[bytes, bytes],
                   bases: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """``{oid: sealed}`` of ``plains`` (``{oid: plaintext}``), as revisions ``tid``
        over ``bases`` (``{oid: base serial}``), under one new subkey. One commit's records
        are sealed at once: the salt, the subkey's cipher and the header's start are made
        once for all."""
        key_id = self.keyring.current_key_id
        salt = os.urandom(_SALT)  # a new subkey for these records: never one used before
        cipher = self._subkey(key_id, salt)
        start = _HEADER_START.pack(MAGIC, FORMAT, kind, key_id, self._id_for_sealing())
        if len(plains) >= 1 << 32:
            raise StorageError(f"{len(plains)} records in one commit: a commit seals fewer "
                               "than 2**32")
        # Per record: header, padding (padded_size and _pad in line below 1 KiB), nonce,
        # then the cipher. A list comprehension each: this runs for every record.
        counts = _COUNTS if len(plains) <= len(_COUNTS) else [
            number.to_bytes(4, "big") for number in range(len(plains))]
        headers = [b"".join((start, oid, tid, base, salt, count)) for oid, base, count
                   in zip(plains, map(bases.__getitem__, plains), counts)]
        pads = _PADS
        padded = [plain + pads[len(plain) % 64] if len(plain) < 1023 else _pad(plain)
                  for plain in plains.values()]
        encrypt, nonce_start = cipher.encrypt, salt[8:]
        return dict(zip(plains, [header + encrypt(nonce_start + count, plain, header)
                                 for header, count, plain in zip(headers, counts, padded)]))

    def _open(self, data: bytes, kind: bytes, oid: bytes | None, tid: bytes | None) -> bytes:
        """The plaintext of ``data`` served as the revision ``tid`` of ``oid`` (None: as
        whatever it names, for references in pack); else TamperedRecordError."""
        if len(data) < _SEALED_MIN or data[:2] != MAGIC:
            raise _tampered(kind, oid, tid, f"is not sealed ({len(data)} bytes"
                            f"{', too short' if len(data) < _SEALED_MIN else ', no seal header'}"
                            "): cut short, or stored in the clear")
        salt = data[_SALT_AT:_COUNTER_AT]
        cipher = self._subkeys.get(salt)
        if cipher is None:
            key_id = int.from_bytes(data[_KEY_ID_AT:_KEY_ID_AT + 4], "big")
            try:
                cipher = self._subkey(key_id, salt)
            except KeyringError:
                # Perhaps a key another process added since: read the keyring file again.
                self.keyring.refresh(force=True)
                try:
                    cipher = self._subkey(key_id, salt)
                except KeyringError as exc:
                    raise _tampered(kind, oid, tid, f"names key {key_id}, which the keyring "
                                    f"does not hold: {exc}") from None
        try:  # (slices of bytes reach the cipher faster than a memoryview's)
            padded = cipher.decrypt(data[_NONCE_AT:_HEADER_SIZE], data[_HEADER_SIZE:],
                                    data[:_HEADER_SIZE])
        except InvalidTag:
            raise _tampered(kind, oid, tid, "failed authentication: changed or cut") from None
        # Authentic from here: the header says what the record truly is.
        plain = padded.rstrip(b"\0")  # unpadded: the mark and the zeros after it cut off
        if plain[-1:] == b"\x80":
            plain = plain[:-1]
        else:
            raise _tampered(kind, oid, tid, f"is authentic but not padded as format {FORMAT} "
                            "pads (no 0x80 then zeros at its end)")
        if data[2:4] != _FORMAT_AND_KIND[kind] or (
                oid is not None and data[_OID_AT:_TID_AT] != oid) or (
                tid is not None and data[_TID_AT:_BASE_AT] != tid):
            self._misplaced(data, kind, oid, tid)
        database = data[_DATABASE_AT:_OID_AT]
        if database != self._database_id:
            with self._id_lock:
                if self._database_id is None:
                    self._database_id = database
            if database != self._database_id:
                raise _tampered(kind, oid, tid, f"belongs to another database "
                                f"({database.hex()}, not {self._database_id.hex()})")
        return plain

    @staticmethod
    def _misplaced(data: bytes, kind: bytes, oid: bytes | None, tid: bytes | None) -> None:
        """Raise why an authentic record is not what it was served as."""
        _, version, sealed_kind, _, _, sealed_oid, sealed_tid, _, _, _ = \
            _HEADER.unpack_from(data)
        if version != FORMAT or sealed_kind != kind:
            raise _tampered(kind, oid, tid, f"is a sealed {sealed_kind!r} of format {version}, "
                            f"not a {kind!r} of format {FORMAT}")
        if oid is not None and sealed_oid != oid:
            raise _tampered(kind, oid, tid, f"was sealed for oid {oid_repr(sealed_oid)}: "
                            "records swapped between objects")
        raise _tampered(kind, oid, tid, f"was sealed as the revision {tid_repr(sealed_tid)}: "
                        "another revision served in its place")

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
        """The wrapped storage's last tid; RollbackError if it is older than a tid seen
        before (by this storage object, or remembered in the file of tids seen)."""
        with self._seen_lock:
            last = self.storage.lastTransaction()
            if last != self._seen:
                self._load_seen()
                if last < self._seen:
                    last = self._catch_up()
                self._saw(last)
        return last

    def loadBefore(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        found = self.storage.loadBefore(oid, tid)
        if found is None:
            return None
        data, start, end = found
        return self._open(data, RECORD, oid, start), start, end

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        found = self.storage.load_many(oids, before)
        open_, known = self._open, self._records_opened
        for oid, (data, start, end) in found.items():  # (in place: no second dict)
            # The common case first, in line: a record whose subkey opened a record of
            # this database before, whose header starts as that record's did (format,
            # kind, key id, database id) and names the oid and revision it is served as.
            # The cipher then authenticates the whole header; an authentic record's
            # plaintext ends with the padding's mark and zeros, so its last 0x80 is the
            # mark. Anything else goes through _open, which says what is wrong.
            salt = data[_SALT_AT:_COUNTER_AT]
            seen = known.get(salt)
            if (seen is not None and data[:_OID_AT] == seen[1]
                    and data[_OID_AT:_BASE_AT] == oid + start):
                try:
                    padded = seen[0].decrypt(data[_NONCE_AT:_HEADER_SIZE],
                                             data[_HEADER_SIZE:], data[:_HEADER_SIZE])
                except InvalidTag:
                    padded = b""
                mark = padded.rfind(b"\x80")
                if mark >= 0:
                    found[oid] = (padded[:mark], start, end)
                    continue
            found[oid] = (open_(data, RECORD, oid, start), start, end)
            cipher = self._subkeys.get(salt)  # (kept by _open, unless cleared meanwhile)
            if cipher is not None:
                if len(known) >= _SUBKEYS_KEPT:
                    known.clear()
                known[salt] = (cipher, data[:_OID_AT])
        return found

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        return self._open(self.storage.loadSerial(oid, serial), RECORD, oid, serial)

    def prefetch(self, oids: Iterable[bytes], tid: bytes) -> None:
        self.storage.prefetch(oids, tid)

    def history(self, oid: bytes, size: int | None = 1) -> list[dict[str, Any]]:
        """The wrapped storage's history with each transaction's metadata opened;
        ``size`` is the plain record's (each revision is read and opened for it: the
        wrapped storage knows only its padded size)."""
        entries = []
        for entry in self.storage.history(oid, size):
            tid = entry["tid"]
            user, description, extension = self._open_metadata(
                tid, entry.get(SEALED_EXTENSION))
            plain = dict(decode_extension(extension))
            plain.update(time=entry["time"], tid=tid, serial=entry["serial"], user_name=user,
                         description=description, size=self._plain_size(oid, entry))
            entries.append(plain)
        return entries

    def _plain_size(self, oid: bytes, entry: dict[str, Any]) -> int:
        if not entry["size"]:
            return 0  # an undo's deletion record: nothing sealed
        return len(self._open(self.storage.loadSerial(oid, entry["serial"]), RECORD, oid,
                              entry["serial"]))

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

    # -- blobs ------------------------------------------------------------------------------
    def _blob_cache_directory(self) -> str:
        """This storage's own directory: ``tmp/`` for uncommitted blob files, and the
        opened files of committed revisions (``<oid>-<tid>.blob``)."""
        directory = self._blob_cache
        if directory is None:
            self._refuse_blobs_unless_kept()
            with self._id_lock:
                if self._blob_cache is None:
                    if self._blob_cache_asked is None:
                        made = tempfile.mkdtemp(prefix="amphora-encrypted-blobs-")
                    else:
                        made = self._blob_cache_asked
                    os.makedirs(os.path.join(made, "tmp"), mode=0o700, exist_ok=True)
                    self._blob_cache = made
                directory = self._blob_cache
        return directory

    def temporaryDirectory(self) -> str:
        """Where uncommitted blob files are made: this storage's own directory (their
        plaintext never reaches the wrapped storage)."""
        return os.path.join(self._blob_cache_directory(), "tmp")

    @property
    def fshelper(self) -> Any:
        """The wrapped storage's blob directory, of sealed files (ZODB's blob tests find
        file names through it)."""
        return self.storage.fshelper

    def _opened_blob(self, oid: bytes, tid: bytes) -> str:
        return os.path.join(self._blob_cache_directory(), f"{oid.hex()}-{tid.hex()}.blob")

    def loadBlob(self, oid: bytes, serial: bytes) -> str:
        """The opened file of blob revision ``serial`` of ``oid``: the wrapped storage's
        sealed file, opened (checked whole) into this storage's directory once, and read
        from there after. TamperedRecordError when the sealed file is not authentic."""
        opened = self._opened_blob(oid, serial)
        if os.path.exists(opened):
            return opened
        sealed = self.storage.loadBlob(oid, serial)
        fd, partial = tempfile.mkstemp(dir=self.temporaryDirectory(), prefix="opening-")
        os.close(fd)
        try:
            database = open_blob_file(sealed, partial, self._blob_cipher, self._database_id,
                                      oid, serial)
            if self._database_id is None:
                with self._id_lock:
                    if self._database_id is None:
                        self._database_id = database
            self._make_opened(partial, opened)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
        return opened

    def _make_opened(self, path: str, opened: str) -> None:
        """Move ``path`` to ``opened``, read-only, readable by whom its directory is."""
        readable = os.stat(os.path.dirname(opened)).st_mode & (
            stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(path, readable)
        os.replace(path, opened)

    def _blob_cipher(self, key_id: int, salt: bytes) -> AESGCM:
        try:
            return self._subkey(key_id, salt)
        except KeyringError:
            self.keyring.refresh(force=True)  # perhaps a key another process added since
            return self._subkey(key_id, salt)

    def _seal_blob(self, oid: bytes, tid: bytes, plain: str, directory: str) -> str:
        """A new file in ``directory`` (the wrapped storage's temporary directory): the
        file ``plain`` sealed as blob revision ``tid`` of ``oid``."""
        key_id = self.keyring.current_key_id
        salt = os.urandom(_SALT)
        fd, sealed = tempfile.mkstemp(dir=directory, prefix="sealed-")
        os.close(fd)
        try:
            seal_blob_file(plain, sealed, self._subkey(key_id, salt), key_id, salt,
                           self._id_for_sealing(), oid, tid)
        except BaseException:
            os.remove(sealed)
            raise
        return sealed

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
        vote; another tid if another writer took a later one meanwhile. The keyring is
        refreshed first (a ``stat`` of its file): a key added by another process (a
        rotation) seals this commit's records."""
        self.keyring.refresh()
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
        sealed = self._seal_many(RECORD, tid, self._stores, self._serials)
        restored, blobs = self._restored, self._blobs_stored
        plain_stores = sealed if not restored and not blobs else {
            oid: data for oid, data in sealed.items() if oid not in restored and oid not in blobs}
        if plain_stores:
            serials = self._serials if plain_stores is sealed else {
                oid: self._serials[oid] for oid in plain_stores}
            inner.store_many(plain_stores, serials, txn)
        for oid in restored:
            if oid not in blobs:
                inner.restore(oid, tid, sealed[oid], "", None, txn)
        for oid, plain in blobs.items():  # the plaintext file stays here (see _finish)
            sealed_file = self._seal_blob(oid, tid, plain, inner.temporaryDirectory())
            try:
                if oid in restored:
                    inner.restoreBlob(oid, tid, sealed[oid], sealed_file, None, txn)
                else:
                    inner.storeBlob(oid, self._serials[oid], sealed[oid], sealed_file, "", txn)
            finally:
                if os.path.exists(sealed_file):  # (not taken: the store failed)
                    os.remove(sealed_file)
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
        with self._seen_lock:
            self._saw(tid, check=False)
        for oid, plain in self._blobs_stored.items():  # committed: kept as opened files
            self._make_opened(plain, self._opened_blob(oid, tid))
        return tid

    def _abort(self) -> None:
        txn, self._inner_txn = self._inner_txn, None
        self._plain = {}
        if txn is not None:
            self.storage.tpc_abort(txn)

    def _resolve(self, txn: "_SealedTransaction", oid: bytes, committed: bytes | None,
                 old: bytes, data: bytes, load_serial: Callable[[bytes, bytes | None], bytes]
                 ) -> bytes | None:
        """The wrapped storage's conflict on ``oid``, merged on the plain states and
        sealed over the committed revision (or None: a conflict). ``data`` is the sealed
        record the storage would store (this commit's, or a merge of it already made);
        ``committed`` None: a server asking ahead about a commit voted but not finished,
        whose tid the committed record names in its sealed header."""
        resolve = self._conflict_resolver()
        if resolve is None:
            return None

        def plain_serial(oid: bytes, serial: bytes | None) -> bytes:
            return self._open(load_serial(oid, serial), RECORD, oid, serial)

        base = committed
        if base is None:
            sealed = load_serial(oid, None)
            self._open(sealed, RECORD, oid, None)  # authentic, whichever tid it names
            base = _HEADER.unpack_from(sealed)[6]
        merged = resolve(oid, committed, old, self._open(data, RECORD, oid, txn.tid),
                         plain_serial)
        if merged is None:
            return None
        return self._seal(merged, RECORD, oid, txn.tid, base)

    # -- management -------------------------------------------------------------------
    def pack(self, pack_time: float | bytes, referencesf: Callable | None = None,
             gc: bool = True, reachable: Iterable[bytes] | None = None,
             through: bytes | None = None) -> None:
        """Pack the wrapped storage. With ``gc``, through a server (a storage whose pack
        takes no ``referencesf``), what the root reaches is found here, with the records
        opened, and the server is told only the oids to keep (see
        :mod:`amphora.storage._reachable`). Any other storage finds it itself, reading
        references through :meth:`references` (``referencesf`` is not used: it reads
        plain records): its check of what commits made meanwhile link again runs under
        its commit lock, which no stream of commits can starve. Given ``reachable`` and
        ``through``, they are passed on as they are."""
        if reachable is not None and gc:
            self.storage.pack(pack_time, None, True, reachable=reachable, through=through)
        elif gc and not getattr(self.storage, "pack_uses_referencesf", True):
            ReachableWalk.pack(self, self.storage, pack_time)
        else:
            self.storage.pack(pack_time, self.references, gc)

    def packed_through(self) -> bytes:
        packed = getattr(self.storage, "packed_through", None)
        return z64 if packed is None else packed()

    def registerDB(self, wrapper: Any) -> None:
        """Relay the wrapped storage's invalidations to ``wrapper``. A database that keeps
        the opened records in a cache of its own (``amphora.DB``'s ``records``) turns off
        the wrapped storage's cache of sealed ones (see :mod:`amphora.storage.recordcache`):
        every commit would write into it what the database's cache already holds opened.
        Under ``ZODB.DB`` it stays: a hit there saves a read of the wrapped storage."""
        self._wrapper = wrapper
        sealed_cache = getattr(self.storage, "record_cache", None)
        if (isinstance(getattr(wrapper, "records", None), RecordCache)
                and isinstance(sealed_cache, RecordCache)):
            sealed_cache.max_bytes = 0
            sealed_cache.clear()
        self.storage.registerDB(_Relay(self, wrapper))

    def sync(self) -> None:
        """Catch up with the wrapped storage; RollbackError if it went back in time."""
        sync = getattr(self.storage, "sync", None)
        if sync is not None:
            sync()
        self.lastTransaction()

    def close(self) -> None:
        """Close the wrapped storage, after writing the newest tid seen to the file."""
        if not self._closed:
            self._closed = True
            try:
                if self.seen_tids is not None:
                    self.seen_tids.close()
            finally:
                try:
                    self.storage.close()
                finally:
                    if self._blob_cache is not None and self._blob_cache_asked is None:
                        shutil.rmtree(self._blob_cache, ignore_errors=True)


def sealed_key_id(data: bytes) -> int | None:
    """The id of the key the sealed record (or transaction metadata) ``data`` names in
    its header, as the wrapped storage holds it; None if ``data`` is not sealed. The
    header is not authenticated here (it is when the record is opened)."""
    if not isinstance(data, bytes) or not is_sealed(data):
        return None
    return _HEADER.unpack_from(data)[3]


def sealed_metadata(extension_bytes: bytes) -> bytes | None:
    """The sealed metadata of a transaction, from its extension in the wrapped storage."""
    sealed = _sealed_of(extension_bytes)
    return sealed if isinstance(sealed, bytes) else None


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


def _tampered(kind: bytes, oid: bytes | None, tid: bytes | None,
              reason: str) -> TamperedRecordError:
    """The error for a record refused (the text is made only then: opening is hot)."""
    what = "a transaction's metadata" if kind == TRANSACTION else (
        "a record" if oid is None else f"the record of oid {oid_repr(oid)}")
    if tid is not None:
        what += f" at {tid_repr(tid)}"
    return TamperedRecordError(f"{what} {reason}")


def _sealed_of(extension_bytes: bytes) -> Any:
    return decode_extension(extension_bytes).get(SEALED_EXTENSION)
