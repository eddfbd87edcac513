"""The storage contract, written once.

A storage keeps *records*: opaque ``bytes`` (ZODB's two pickles, see
:mod:`amphora.serialize`) filed under an 8-byte oid and the 8-byte tid of the transaction
that wrote them. A storage never unpickles application objects; only the Connection (and
conflict resolution) does.

The contract is ZODB's ``IStorage``, so ``ZODB.DB(storage)`` works on every amphora
storage and ZODB's storage test mixins run against them. Its historical names
(``loadBefore``, the always-empty ``version`` argument) live at this boundary only.

Invariants every storage keeps:

- Tids are strictly increasing: a transaction that commits after another gets a larger tid.
- ``loadBefore(oid, tid)`` answers exactly: the revision current just before ``tid``, the
  tid that wrote it, and the tid of the next revision (``None`` if it is still current).
- Invalidations come before visibility: for every transaction committed by someone else
  (another process, another storage instance), the storage calls
  ``wrapper.invalidate(tid, oids)`` with the full oid set, in commit order, *before*
  ``lastTransaction()`` reports that tid. For its own commits, ``tpc_finish`` calls
  ``func(tid)`` before ``lastTransaction()`` reports the tid.
- ``tpc_finish`` and ``tpc_abort`` cannot fail once ``tpc_vote`` succeeded.
- Bad input leaves stored data intact: a failed or aborted commit writes nothing.

:class:`StorageBase` implements the two-phase-commit bookkeeping (the commit lock, the
checks on which transaction is current, conflict resolution) so that a concrete storage
writes only its own reads and writes: ``_vote``, ``_finish``, ``_abort``.
"""
from __future__ import annotations

import datetime
import io
import logging
import pickle
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, runtime_checkable

from amphora.errors import (ConflictError, ObjectNotFoundError, ReadConflictError,
                            ReadOnlyError, StaleReachableError, StorageError,
                            StorageTransactionError, Unsupported)
from amphora.serialize import references, resolve_record
from amphora.storage.sql.keys import _split
from amphora.utils import (maxtid, new_tid, oid_repr, p64, tid_from_datetime, tid_repr,
                           tid_time, u64, z64)

log = logging.getLogger(__name__)

__all__ = ["Storage", "StorageBase", "TransactionMetaData", "TransactionRecord", "DataRecord",
           "encode_metadata", "decode_extension"]


@runtime_checkable
class Storage(Protocol):
    """What the database needs of a storage.

    Capability flags (class attributes) say what else a storage can do; tests and callers
    check them instead of probing with ``hasattr``.
    """

    supports_history: bool   #: old revisions stay readable until pack
    supports_undo: bool      #: ``undo``/``undoLog``/``undoInfo`` (see amphora.storage.undo)
    supports_pack: bool      #: ``pack`` drops old revisions and garbage
    supports_mirror: bool    #: keeps JSON documents of its objects for SQL search
    supports_blobs: bool     #: ZODB's IBlobStorage: ``storeBlob``, ``loadBlob`` ...
    is_remote: bool          #: records cross a network
    #: ``pack`` reads references with the ``referencesf`` it is given (a client's server
    #: reads them itself: an encrypted database tells it what to keep instead)
    pack_uses_referencesf: bool

    # -- reading --------------------------------------------------------------------
    def loadBefore(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        """``(data, start_tid, end_tid)`` of the revision current just before ``tid``.

        ``end_tid`` is the tid of the following revision, or None if the revision is
        still current. None if the object did not exist before ``tid``; raises
        :class:`ObjectNotFoundError` if the oid was never stored.
        """

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        """``loadBefore`` for many oids in one go: ``{oid: (data, start, end)}``.

        Oids with no revision before ``before`` are left out, never an error.
        """

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        """The record written for ``oid`` by transaction ``serial``, else ObjectNotFoundError."""

    def lastTransaction(self) -> bytes:
        """The last committed tid whose invalidations are delivered (``z64`` when empty)."""

    def history(self, oid: bytes, size: int = 1) -> list[dict[str, Any]]:
        """Up to ``size`` revisions of ``oid``, newest first, as dicts with ``tid``,
        ``serial``, ``time``, ``user_name``, ``description``, ``size`` and the
        transaction's extension keys."""

    def iterator(self, start: bytes | None = None, stop: bytes | None = None
                 ) -> Iterator[TransactionRecord]:
        """Transactions with ``start <= tid <= stop`` in tid order, each iterable over its
        :class:`DataRecord` s."""

    def __len__(self) -> int:
        """The number of objects (current records)."""

    def getSize(self) -> int:
        """The approximate size in bytes."""

    # -- writing (two-phase commit) ---------------------------------------------------
    def new_oid(self) -> bytes:
        """A new 8-byte oid, never handed out before."""

    def new_oids(self, count: int) -> list[bytes]:
        """``count`` new oids at once (what ``new_oid`` gives, in fewer steps)."""

    def tpc_begin(self, transaction: Any, tid: bytes | None = None, status: str = " ") -> None:
        """Start committing ``transaction``; blocks while another commit is in progress."""

    def store(self, oid: bytes, serial: bytes, data: bytes, version: str, transaction: Any) -> None:
        """Write ``data`` for ``oid``; ``serial`` is the tid it was read at (``z64`` if new).

        Raises :class:`ConflictError` (here or at vote) if ``serial`` is no longer
        current and the conflict cannot be resolved.
        """

    def store_many(self, records: Mapping[bytes, bytes], serials: Mapping[bytes, bytes],
                   transaction: Any) -> None:
        """``store`` for many records at once: ``records`` maps oids to data, ``serials``
        maps the same oids to the tid each was read at (``z64`` if new)."""

    def checkCurrentSerialInTransaction(self, oid: bytes, serial: bytes, transaction: Any) -> None:
        """Fail the commit with :class:`ReadConflictError` unless ``serial`` is current."""

    def tpc_vote(self, transaction: Any) -> list[bytes] | None:
        """Last chance to fail. Returns the oids whose conflicts were resolved."""

    def tpc_finish(self, transaction: Any, func: Callable[[bytes], None] | None = None) -> bytes:
        """Make the transaction durable, call ``func(tid)``, and return the new tid."""

    def tpc_abort(self, transaction: Any) -> None:
        """Discard the transaction (no error if it is not the current one)."""

    # -- management -------------------------------------------------------------------
    def pack(self, pack_time: float | bytes, referencesf: Callable | None = None,
             gc: bool = True, reachable: Iterable[bytes] | None = None,
             through: bytes | None = None) -> None:
        """Drop revisions superseded before ``pack_time`` (seconds since the epoch, or a
        tid) and, with ``gc``, objects no longer reachable from the root.

        The storage finds what is reachable itself, reading references from records with
        ``referencesf``, unless it is given ``reachable``: the oids to keep, computed by
        someone who can read the records (an encrypted database's client, see
        :mod:`amphora.storage.encrypted`) from every revision the pack keeps up to the
        tid ``through``. The storage then deletes, under its commit lock, exactly the
        objects outside ``reachable`` that existed at the pack time (objects created
        after it always stay), and reads no record. If it committed any transaction
        after ``through`` (one may refer to an object outside the set again), it deletes
        nothing and raises :class:`~amphora.errors.StaleReachableError`: the caller adds
        the references of those transactions and packs again. Old revisions may have
        been dropped already (that part needs no set).
        """

    def registerDB(self, wrapper: Any) -> None:
        """Remember ``wrapper`` (``invalidate(tid, oids)``, ``invalidateCache()``) to tell
        it about transactions committed elsewhere."""

    def sync(self) -> None:
        """Catch up with transactions committed elsewhere, reporting them to the wrapper."""

    def sortKey(self) -> str: ...
    def getName(self) -> str: ...
    def isReadOnly(self) -> bool: ...
    def supportsUndo(self) -> bool: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------
# Transaction metadata

_PLAIN_BUILTINS = {t.__name__: t for t in (dict, list, tuple, set, frozenset, bytes, bytearray,
                                           str, int, float, complex, bool)}


def _restricted_loads(data: bytes) -> Any:
    """Unpickle plain data (a transaction's extension dict) without importing any class."""
    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            if module in ("builtins", "__builtin__") and name in _PLAIN_BUILTINS:
                return _PLAIN_BUILTINS[name]
            if module == "datetime" and name in ("datetime", "date", "time", "timedelta"):
                return getattr(datetime, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in metadata")
    return _NoGlobals(io.BytesIO(data)).load()


def decode_extension(extension_bytes: bytes) -> dict:
    """The extension dict stored as ``extension_bytes`` (empty dict if none or unreadable)."""
    if not extension_bytes:
        return {}
    try:
        value = _restricted_loads(extension_bytes)
    except Exception:
        return {}
    return value if isinstance(value, dict) else {}


def encode_metadata(transaction: Any) -> tuple[bytes, bytes, bytes]:
    """``(user, description, extension_bytes)`` of any transaction-like object.

    Accepts ``transaction.Transaction`` (str fields, ``extension`` dict), ZODB's and
    amphora's ``TransactionMetaData`` (bytes fields, ``extension_bytes``).
    """
    user = getattr(transaction, "user", b"") or b""
    description = getattr(transaction, "description", b"") or b""
    if isinstance(user, str):
        user = user.encode("utf-8")
    if isinstance(description, str):
        description = description.encode("utf-8")
    extension_bytes = getattr(transaction, "extension_bytes", None)
    if extension_bytes is None:
        extension = getattr(transaction, "extension", None) or {}
        extension_bytes = pickle.dumps(extension, 3) if extension else b""
    return user, description, extension_bytes


class RecordsAsStored:
    """The record methods of a storage's wrapper (what ``registerDB`` is given) that keeps
    records as they are stored: references found by scanning the pickles, data neither
    transformed nor untransformed (a database, the server)."""

    def references(self, record: bytes, oids: list[bytes] | None = None) -> list[bytes]:
        return references(record, oids)

    def transform_record_data(self, data: bytes) -> bytes:
        return data

    def untransform_record_data(self, data: bytes) -> bytes:
        return data


class TransactionMetaData:
    """What a storage records about a transaction: user, description, extension.

    ``user`` and ``description`` are bytes (str is encoded as UTF-8); ``extension`` is a
    dict of plain data, stored pickled as ``extension_bytes``.

    ``finish_with_vote``: None, or set before ``tpc_vote`` by a data manager that is its
    transaction's only one (a successful vote is then always followed by
    ``tpc_finish``). A storage may then finish in the vote: make the commit durable, call
    ``finish_with_vote(tid, resolved)`` where ``tpc_finish`` would have called its
    ``func`` (``resolved``: the oids ``tpc_vote`` will return), and have the coming
    ``tpc_finish`` return that tid without calling ``func``; a ``tpc_abort`` instead
    leaves the commit made. Storages may ignore it (only the client storage uses it, to
    spare a round trip with its server).
    """

    finish_with_vote: Callable[[bytes, list[bytes]], None] | None = None

    def __init__(self, user: str | bytes = b"", description: str | bytes = b"",
                 extension: dict | bytes | None = None):
        self.user = user.encode("utf-8") if isinstance(user, str) else user
        self.description = description.encode("utf-8") if isinstance(description, str) else description
        if isinstance(extension, bytes):
            self.extension_bytes = extension
        else:
            self.extension_bytes = pickle.dumps(extension, 3) if extension else b""
        self._data: dict[int, Any] = {}

    @property
    def extension(self) -> dict:
        return decode_extension(self.extension_bytes)

    def note(self, text: str | bytes) -> None:
        text = text.encode("utf-8") if isinstance(text, str) else text
        self.description = (self.description.strip() + b" " + text.strip()).strip()

    # per-data-manager scratch space, as transaction.Transaction offers
    def data(self, ob: Any) -> Any:
        return self._data[id(ob)]

    def set_data(self, ob: Any, value: Any) -> None:
        self._data[id(ob)] = value


@dataclass
class DataRecord:
    """One record of a transaction, as :meth:`Storage.iterator` yields it."""

    oid: bytes
    tid: bytes
    data: bytes | None
    data_txn: bytes | None = None
    version: str = ""


@dataclass
class TransactionRecord:
    """One committed transaction, as :meth:`Storage.iterator` yields it."""

    tid: bytes
    status: str
    user: bytes
    description: bytes
    extension_bytes: bytes
    records: list[DataRecord] = field(default_factory=list)

    @property
    def extension(self) -> dict:
        return decode_extension(self.extension_bytes)

    @extension.setter
    def extension(self, value: dict) -> None:
        self.extension_bytes = pickle.dumps(value, 3) if value else b""

    def __iter__(self) -> Iterator[DataRecord]:
        return iter(self.records)


def history_entry(tid: bytes, user: bytes, description: bytes, extension_bytes: bytes,
                  size: int) -> dict[str, Any]:
    """One ``history()`` dict."""
    entry = dict(decode_extension(extension_bytes))
    entry.update(time=tid_time(tid), tid=tid, serial=tid, user_name=user,
                 description=description, size=size)
    return entry


# ---------------------------------------------------------------------------------------
# The shared two-phase-commit machinery

class StorageBase:
    """Two-phase-commit bookkeeping shared by amphora's storages.

    One commit at a time per storage object: ``tpc_begin`` takes ``_commit_lock`` and
    ``tpc_finish``/``tpc_abort`` release it. ``_lock`` (re-entrant) guards the storage's
    published state; ``tpc_finish`` holds it while it calls ``func(tid)`` and publishes
    the tid, so no reader sees a half-finished commit.

    Subclasses implement ``_current_serial(oid)``, ``_vote()`` (check and write, may
    raise), ``_finish(tid)`` (make durable; must not fail) and ``_abort()``. Stores are
    buffered in ``_stores``; read checks in ``_checks``.
    """

    supports_history = True
    supports_undo = False
    supports_mirror = False
    supports_pack = True
    #: blob files (see amphora.storage.blobs); ``no_blobs_reason`` says why not
    supports_blobs = False
    no_blobs_reason = "it keeps no blob files"
    is_remote = False
    pack_uses_referencesf = True
    #: ``restore`` takes records without data (ZODB's deletion records): no amphora
    #: storage keeps those, so copies skip and count them
    restores_deletions = False

    def __init__(self, name: str, read_only: bool = False, resolve_conflicts: bool = True):
        self.__name__ = name
        self._read_only = read_only
        self._resolve_conflicts = resolve_conflicts
        self._lock = threading.RLock()
        self._commit_lock = threading.Lock()
        self._transaction: Any = None
        self._tid: bytes | None = None
        self._stores: dict[bytes, bytes] = {}
        self._serials: dict[bytes, bytes] = {}
        self._checks: dict[bytes, bytes] = {}
        self._restored: set[bytes] = set()  # oids written by restore: never a conflict
        self._resolved: list[bytes] = []
        self._meta: tuple[bytes, bytes, bytes] = (b"", b"", b"")
        self._wrapper: Any = None
        self._closed = False

    # -- naming -----------------------------------------------------------------------
    def getName(self) -> str:
        return self.__name__

    def sortKey(self) -> str:
        return self.__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__name__!r}>"

    def isReadOnly(self) -> bool:
        return self._read_only

    def supportsUndo(self) -> bool:
        return bool(self.supports_undo)

    def registerDB(self, wrapper: Any) -> None:
        self._wrapper = wrapper

    def sync(self) -> None:
        """Nothing to catch up with for a storage no one else writes to."""

    def _deliver(self, rows: list[tuple[int, bytes]], packed_through: int,
                 records: dict[int, dict[bytes, bytes]] | None = None) -> None:
        """Tell the wrapper about others' commits ``rows`` (``(tid, joined oids)`` with
        tids as integers) newer than ``_ltid``, in order, then publish them; holding
        ``_lock``. ``packed_through`` above ``_ltid`` means pack removed commits unseen:
        the wrapper flushes its caches first. ``records``: some of the records those
        commits wrote (``{oid: data}`` by tid), read with them, for the record cache."""
        ltid = u64(self._ltid)
        rows = [row for row in rows if row[0] > ltid]
        if not rows:
            return
        self._others_committed()
        if packed_through > ltid:
            self._records_unknown()
        for tid, oids in rows:
            self._records_invalidated(p64(tid), _split(oids), records and records.get(tid))
        wrapper = self._wrapper
        if wrapper is not None:
            if packed_through > ltid:
                invalidate_cache = getattr(wrapper, "invalidateCache", None)
                if invalidate_cache is not None:
                    invalidate_cache()
            for tid, oids in rows:
                wrapper.invalidate(p64(tid), _split(oids))
        self._ltid = p64(rows[-1][0])

    def _others_committed(self) -> None:
        """Hook: :meth:`_deliver` is about to report commits made elsewhere."""

    # Hooks of a storage that caches records (see amphora.storage.recordcache)
    def _records_committed(self, tid: bytes, stores: dict[bytes, bytes | None]) -> None:
        """Hook: this storage committed ``stores`` as ``tid`` (before anyone hears of it)."""

    def _records_invalidated(self, tid: bytes, oids: list[bytes],
                             records: dict[bytes, bytes] | None = None) -> None:
        """Hook: another process or storage object committed ``oids`` as ``tid``
        (``records``: the data of some of them, when known)."""

    def _records_unknown(self) -> None:
        """Hook: commits happened that cannot be enumerated (pack removed them)."""

    def _publish(self, tid: bytes, func: Callable[[bytes], None] | None) -> bytes:
        """Once commit ``tid`` is durable (SQL storages): report the others' commits its
        vote found (``_pending``, before ``tid``), pass the oids it stored
        (:meth:`_stored_oids_up_to`), call ``func(tid)``; ``tid`` is the last transaction
        whatever happens."""
        try:
            pending, self._pending = self._pending, []
            self._deliver([row for row in pending if row[0] < u64(tid)], self._pending_packed)
            self._stored_oids_up_to(self._top_oid)
            self._records_committed(tid, self._stores)
            if func is not None:
                func(tid)
        finally:
            self._ltid = tid
        return tid

    def _stored_oids_up_to(self, top: int) -> None:
        """Hook of :meth:`_publish`: oids up to ``top`` were stored, never hand them out."""

    def close(self) -> None:
        """Close every connection; the storage raises :class:`StorageError` afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_connections()

    def _close_connections(self) -> None:
        """Hook: release what :meth:`close` must (connections, threads)."""

    def prefetch(self, oids: Iterable[bytes], tid: bytes) -> None:
        """A hint that ``oids`` will be loaded; storages with a cache override it."""

    def load(self, oid: bytes, version: str = "") -> tuple[bytes, bytes]:
        """The current ``(data, tid)`` of ``oid`` (ZODB 4 API, for tools and tests)."""
        found = self.loadBefore(oid, maxtid)
        if found is None:
            raise ObjectNotFoundError(oid)
        return found[0], found[1]

    def new_oids(self, count: int) -> list[bytes]:
        return [self.new_oid() for _ in range(count)]

    def getTid(self, oid: bytes) -> bytes:
        """The tid of the current revision of ``oid``."""
        return self.load(oid)[1]

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        found = {}
        for oid in oids:
            try:
                record = self.loadBefore(oid, before)
            except ObjectNotFoundError:
                continue
            if record is not None:
                found[oid] = record
        return found

    # -- two-phase commit -------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyError(f"{self.__name__} is read-only")
        if self._closed:
            raise StorageError(f"{self.__name__} is closed")

    def _check_current(self, transaction: Any) -> None:
        if transaction is not self._transaction or transaction is None:
            raise StorageTransactionError(
                "this storage is not committing that transaction")

    def _refuse(self, transaction: Any) -> None:
        """Raise why ``transaction``, not the one being committed, cannot write."""
        if self._read_only:
            raise ReadOnlyError(f"{self.__name__} is read-only")
        self._check_current(transaction)

    def tpc_transaction(self) -> Any:
        """The transaction being committed, or None (ZEO's server asks for it)."""
        return self._transaction

    def tpc_begin(self, transaction: Any, tid: bytes | None = None, status: str = " ") -> None:
        self._check_writable()
        if self._transaction is transaction:
            raise StorageTransactionError("duplicate tpc_begin calls for the same transaction")
        self._commit_lock.acquire()
        self._transaction = transaction
        self._tid = tid
        self._clear_writes()
        self._resolved = []
        self._meta = encode_metadata(transaction)
        try:
            self._begin()
        except BaseException:
            self._end()
            raise

    def _begin(self) -> None:
        """Hook: a commit started (the commit lock is held)."""

    def store(self, oid: bytes, serial: bytes, data: bytes, version: str, transaction: Any) -> None:
        # Called once per object written: checks kept to the cheap ones.
        if transaction is not self._transaction or transaction is None:
            if self._read_only:
                raise ReadOnlyError(f"{self.__name__} is read-only")
            self._check_current(transaction)
        if version:
            raise StorageError("versions are not supported")
        if type(data) is not bytes:
            raise TypeError(f"record data must be bytes, not {type(data).__name__}")
        if len(oid) != 8:
            raise StorageError(f"an oid is 8 bytes, not {oid!r}")
        stores = self._stores
        if oid not in stores:
            # A second store of an oid in one transaction replaces the data; the serial
            # to check is the one first read.
            self._serials[oid] = z64 if serial is None else serial
        stores[oid] = data

    def store_many(self, records: Mapping[bytes, bytes], serials: Mapping[bytes, bytes],
                   transaction: Any) -> None:
        # A Connection's whole commit in one call: the checks of store, made over all.
        if transaction is not self._transaction or transaction is None:
            if self._read_only:
                raise ReadOnlyError(f"{self.__name__} is read-only")
            self._check_current(transaction)
        if not records:
            return
        if records.keys() != serials.keys():
            raise StorageError("store_many needs a serial for every record, and no other")
        kinds = set(map(type, records.values()))
        if kinds != {bytes}:
            kinds.discard(bytes)
            raise TypeError(f"record data must be bytes, not {kinds.pop().__name__}")
        if set(map(len, records)) != {8}:
            raise StorageError(
                f"an oid is 8 bytes, not {next(o for o in records if len(o) != 8)!r}")
        if None in serials.values():
            serials = {oid: z64 if serial is None else serial for oid, serial in serials.items()}
        if self._stores:  # a second store of an oid keeps the serial first read
            first = self._serials
            serials = {oid: first.get(oid, serial) for oid, serial in serials.items()}
        self._serials.update(serials)
        self._stores.update(records)

    def restore(self, oid: bytes, serial: bytes, data: bytes | None, version: str,
                prev_txn: bytes | None, transaction: Any) -> None:
        """Write ``data`` for ``oid`` as transaction ``serial`` wrote it (ZODB's
        ``IStorageRestoreable``): how copies keep a source's history.

        The commit must have been begun with that tid (``tpc_begin(transaction, serial)``),
        and it is refused at vote unless it is above the storage's last tid. No conflict
        check is made: the record replaces whatever revision is current. ``prev_txn``
        (ZODB's back-pointer hint) is ignored: the data is always stored. ``data`` None
        (ZODB's record of an undone creation) raises :class:`Unsupported`: amphora
        storages do not restore deletion records.
        """
        if transaction is not self._transaction or transaction is None:
            self._refuse(transaction)
        if self._tid is None or serial != self._tid:  # (store checks the rest)
            raise StorageTransactionError(
                f"restore of oid {oid_repr(oid)} as transaction {tid_repr(serial)} needs a "
                f"commit begun with that tid (tpc_begin(transaction, tid)), not "
                f"{'a new tid' if self._tid is None else tid_repr(self._tid)}")
        if data is None:
            raise Unsupported(
                f"oid {oid_repr(oid)} in transaction {tid_repr(serial)} is a record without "
                "data (an undone creation): amphora storages do not restore deletion records")
        self.store(oid, serial, data, "", transaction)
        self._restored.add(oid)

    def copyTransactionsFrom(self, other: Any, verbose: bool = False) -> None:
        """Restore every transaction of ``other.iterator()`` here, in order, each with its
        tid, user, description, extension and records (ZODB's ``copyTransactionsFrom``;
        ``verbose`` is accepted and ignored). Each tid must be above this storage's last
        tid; each transaction is committed on its own, so a failure leaves the ones before
        it committed. Records without data (undone creations) are skipped with a logged
        warning (see :meth:`restore`). See :func:`amphora.copy.restore_transactions`."""
        from amphora.copy import restore_transactions  # the copier sits above the storages
        stats = restore_transactions(other.iterator(), self, source=other)
        if stats.skipped:
            log.warning("%s: %d records without data (undone creations) were not copied: "
                        "amphora storages do not restore deletion records", self.__name__,
                        stats.skipped)

    def undo(self, transaction_id: bytes, transaction: Any) -> None:
        """Undo is not supported (``supports_undo`` is False)."""
        if self._read_only:
            raise ReadOnlyError(f"{self.__name__} is read-only")
        raise Unsupported("amphora storages do not support undo")

    def checkCurrentSerialInTransaction(self, oid: bytes, serial: bytes, transaction: Any) -> None:
        self._check_current(transaction)
        self._checks[oid] = serial

    def tpc_vote(self, transaction: Any) -> list[bytes] | None:
        self._check_current(transaction)
        self._vote()
        return list(self._resolved)

    def tpc_finish(self, transaction: Any, func: Callable[[bytes], None] | None = None) -> bytes:
        self._check_current(transaction)
        try:
            with self._lock:
                tid = self._finish(func)
        finally:
            self._end()
        return tid

    def tpc_abort(self, transaction: Any) -> None:
        if transaction is not self._transaction or transaction is None:
            return
        try:
            self._abort()
        finally:
            self._end()

    def _end(self) -> None:
        self._transaction = None
        self._tid = None
        self._clear_writes()
        self._commit_lock.release()

    def _clear_writes(self) -> None:
        """Forget the records, serials, read checks and restores of a commit (at its
        start and end; ``_resolved`` outlives the end: its connection reads it after)."""
        self._stores = {}
        self._serials = {}
        self._checks = {}
        self._restored = set()

    def _forget_commit_after_fork(self) -> None:
        """In a forked child: new locks, and no commit in progress (a thread of the parent
        may have held the locks, and a commit in progress is the parent's)."""
        self._lock = threading.RLock()
        self._commit_lock = threading.Lock()
        self._transaction = None
        self._tid = None
        self._clear_writes()
        self._resolved = []

    # -- conflict checks, for _vote ----------------------------------------------------
    def _check_conflicts(self, committed: Mapping[bytes, bytes],
                         load_serial: Callable[[bytes, bytes], bytes],
                         stale: list[bytes] | None = None) -> None:
        """Check read checks and stores against the committed serials; resolve or raise.

        ``committed`` maps the oids stored or checked in this transaction to their
        committed serial as seen under the storage's write lock (missing: never stored).
        A storage that found the ``stale`` stores itself (those whose committed serial is
        not the one read) passes them, and ``committed`` then needs to cover only those
        and the read checks.

        A transaction with a ``resolve_conflict`` method (the signature of
        :func:`amphora.serialize.resolve_record`) resolves its own write conflicts, also
        on a storage opened with ``resolve_conflicts=False``: the server's asks the
        committing client, while the commit lock is held.
        """
        current = committed.get
        for oid, serial in self._checks.items():
            serial_now = current(oid, z64)
            if serial_now != serial:
                raise ReadConflictError(oid=oid, serials=(serial_now, serial))
        if stale is None:
            stale = [oid for oid, read in self._serials.items() if current(oid, z64) != read]
        if self._restored:  # restored records replace whatever is current
            stale = [oid for oid in stale if oid not in self._restored]
        if not stale:  # usually
            return
        resolve = self._conflict_resolver()
        for oid in stale:
            read = self._serials[oid]
            serial_now = current(oid, z64)
            data = self._stores[oid]  # None: an undo's deletion record, never merged
            if resolve is not None and read != z64 and serial_now != z64 and data is not None:
                resolved = resolve(oid, serial_now, read, data, load_serial)
                if resolved is not None:
                    self._stores[oid] = resolved
                    self._resolved.append(oid)
                    continue
            raise ConflictError(oid=oid, serials=(serial_now, read), data=data)

    def _conflict_resolver(self) -> Callable | None:
        """What merges conflicting records (signature of
        :func:`amphora.serialize.resolve_record`), or None: the committer's own (the
        server's asks the client) before the storage's."""
        resolve = getattr(self._transaction, "resolve_conflict", None)
        if resolve is None and self._resolve_conflicts:
            return resolve_record
        return resolve

    def _next_tid(self, last: bytes) -> bytes:
        """The tid for this commit: the one asked for at ``tpc_begin`` or a new one."""
        if self._tid is not None:
            if self._tid <= last:
                raise StorageTransactionError(
                    f"a restored tid must be above the last tid: {tid_repr(self._tid)} is "
                    f"not above {tid_repr(last)}")
            return self._tid
        return new_tid(last)

    # -- abstract ---------------------------------------------------------------------
    def _vote(self) -> None:
        raise NotImplementedError

    def _finish(self, func: Callable[[bytes], None] | None) -> bytes:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError


def pack_tid(pack_time: float | bytes) -> bytes:
    """The tid of a pack time given as seconds since the epoch (or already as a tid)."""
    if isinstance(pack_time, bytes):
        return pack_time
    when = datetime.datetime.fromtimestamp(pack_time, datetime.timezone.utc)
    return tid_from_datetime(when)


def reachable(roots: Iterable[bytes], references: Callable[[bytes], Iterable[bytes]]) -> set[bytes]:
    """Every oid reachable from ``roots``, following ``references(oid)``."""
    seen = set(roots)
    todo = list(seen)
    while todo:
        oid = todo.pop()
        for ref in references(oid):
            if ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return seen



def oids_to_keep(reachable: Iterable[bytes], through: bytes | None) -> set[bytes]:
    """The ``reachable`` and ``through`` arguments of :meth:`Storage.pack`, checked:
    a set of 8-byte oids (StorageError naming the first that is not one, or a missing
    ``through``)."""
    if type(through) is not bytes or len(through) != 8:
        raise StorageError(f"pack given the objects to keep needs the 8-byte tid they were "
                           f"computed through, not {through!r:.40}")
    kept = set(reachable)
    if set(map(type, kept)) - {bytes} or set(map(len, kept)) - {8}:
        bad = next(oid for oid in kept if type(oid) is not bytes or len(oid) != 8)
        raise StorageError(f"pack's objects to keep are 8-byte oids, not {bad!r:.40}")
    return kept


def refuse_stale(name: str, last: bytes, through: bytes) -> None:
    """Raise :class:`~amphora.errors.StaleReachableError` if the storage ``name``
    committed after ``through`` (its last tid is ``last``): called under its commit
    lock, before deleting anything."""
    if last > through:
        raise StaleReachableError(
            f"{name}: the objects to keep were computed through {tid_repr(through)}, and "
            f"transactions up to {tid_repr(last)} were committed since")
