"""The database: a storage, a pool of connections, and the invalidations between them.

``DB(storage)`` makes sure the storage has a root object (a ``PersistentMapping`` at oid
0), then hands out :class:`~amphora.connection.Connection` s. It registers itself with the
storage (``storage.registerDB(db)``) so that transactions committed elsewhere (another
process on the same SQLite file, another client of a server) reach every connection as
invalidations; commits made through its own connections are passed to the others in the
storage's commit callback.

A database opened before a fork works in the child: the storage opens what it needs
there (see each storage), and the database's locks, which a thread of the parent (a
storage reporting a commit, a subscriber thread) may have held at the fork, are new in the
child. Subscriptions stay the parent's: the child runs none of the parent's callbacks (a
worker process subscribes for itself).
"""
from __future__ import annotations

import contextlib
import datetime
import threading
import time
import weakref
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

import transaction as transaction_module
from persistent.mapping import PersistentMapping

from amphora.cache import RecordCache
from amphora.connection import Connection
from amphora.errors import (ConflictError, ConnectionStateError, ObjectNotFoundError,
                            Unsupported)
from amphora.feeds import Change, ChangeFeed, Subscriptions, achanges
from amphora.search import DatabaseSearch
from amphora.serialize import ObjectWriter, references
from amphora.storage import _fork
from amphora.storage.base import RecordsAsStored, Storage, TransactionMetaData
from amphora.utils import p64, tid_from_datetime, tid_repr, u64, z64

__all__ = ["DB"]


class DB(DatabaseSearch, RecordsAsStored):
    """An amphora database over ``storage``.

    ``cache_size`` is each connection's target number of objects in memory (0: no
    limit by count), ``cache_size_bytes`` its target in estimated bytes (0: no limit);
    ``pool_size`` is how many closed connections are kept for reuse;
    ``record_cache_bytes`` the size of the record cache all connections share (see
    :mod:`amphora.cache`; 0 turns it off). A storage with a record cache of its own
    (``storage.record_cache``, see :mod:`amphora.storage.recordcache`) lends it: the
    database uses it, sized ``record_cache_bytes``, and the storage keeps it up to date.
    """

    def __init__(self, storage: Storage, cache_size: int = 10000, cache_size_bytes: int = 0,
                 pool_size: int = 7, record_cache_bytes: int = 64 * 1024 * 1024):
        self.storage = storage
        lent = getattr(storage, "record_cache", None)
        #: the storage keeps the record cache up to date (its commits, the others')
        self._storage_keeps_records = isinstance(lent, RecordCache)
        if self._storage_keeps_records:
            lent.max_bytes = record_cache_bytes
            self.records = lent
        else:
            self.records = RecordCache(record_cache_bytes)
        self.cache_size = cache_size
        self.cache_size_bytes = cache_size_bytes
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._pool: list[Connection] = []
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._closed = False
        self._subscriptions: Subscriptions | None = None
        self.before_commit_hooks: list[Callable[[Connection], None]] = []
        _fork.track(self)
        storage.registerDB(self)
        self._ensure_root()

    def _ensure_root(self) -> None:
        storage = self.storage
        try:
            # At the snapshot a connection opened now reads, so that a storage with a
            # record cache keeps the root (and what its read-ahead brings) for it
            storage.loadBefore(z64, p64(u64(storage.lastTransaction()) + 1))
            return
        except ObjectNotFoundError:
            pass
        if storage.isReadOnly():
            return
        root = PersistentMapping()
        meta = TransactionMetaData(description="initial database creation")
        writer = ObjectWriter(None, storage.new_oid, lambda obj: None)
        data = writer.serialize(root)
        storage.tpc_begin(meta)
        try:
            storage.store(z64, z64, data, "", meta)
            storage.tpc_vote(meta)
        except ConflictError:
            storage.tpc_abort(meta)  # another process created it first
            return
        except BaseException:
            storage.tpc_abort(meta)
            raise
        storage.tpc_finish(meta)

    # -- connections ----------------------------------------------------------------
    def open(self, transaction_manager: Any = None, at: Any = None,
             before: Any = None) -> Connection:
        """A connection. ``at``/``before`` (a tid, datetime or ISO string) give a
        read-only view of the database as it was at (or just before) that moment."""
        if self._closed:
            raise ConnectionStateError("the database is closed")
        if at is not None or before is not None:
            if at is not None and before is not None:
                raise ValueError("give at= or before=, not both")
            bound = _as_tid(before if before is not None else at)
            if at is not None:
                bound = p64(u64(bound) + 1)
            # A view of the future would change as commits arrive: no later than now.
            self.storage.sync()
            now = p64(u64(self.storage.lastTransaction()) + 1)
            if bound < now and not getattr(self.storage, "supports_history", True):
                raise Unsupported(
                    f"{self.storage.getName()} keeps no history: it cannot show the database "
                    f"as it was before {tid_repr(bound)}, only as it is now")
            bound = min(bound, now)
            conn = Connection(self, self.cache_size, self.cache_size_bytes, before=bound)
            conn._open(transaction_manager)
            return conn
        with self._lock:
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = Connection(self, self.cache_size, self.cache_size_bytes)
            with self._lock:
                self._connections.add(conn)
        conn._open(transaction_manager)
        return conn

    def _release(self, conn: Connection) -> None:
        if conn._historical is not None:
            return
        with self._lock:
            if len(self._pool) < self.pool_size and not self._closed:
                self._pool.append(conn)
            else:
                self._connections.discard(conn)

    @contextlib.contextmanager
    def transaction(self, note: str | None = None) -> Iterator[Connection]:
        """``with db.transaction() as conn:`` commits on success, aborts on error."""
        manager = transaction_module.TransactionManager()
        conn = self.open(manager)
        try:
            txn = manager.begin()
            if note:
                txn.note(note)
            try:
                yield conn
            except BaseException:
                manager.abort()
                raise
            manager.commit()
        finally:
            if conn._joined is not None:
                manager.abort()
            conn.close()

    # -- the storage-wrapper protocol (called by the storage) ------------------------
    def invalidate(self, tid: bytes, oids: Iterable[bytes]) -> None:
        """A transaction committed elsewhere changed ``oids``."""
        self._invalidate(tid, list(oids))

    def invalidateCache(self) -> None:
        """Changes happened elsewhere that cannot be enumerated: flush every cache."""
        if not self._storage_keeps_records:
            self.records.clear()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn._invalidate_all()

    def _invalidate(self, tid: bytes, oids: list[bytes], exclude: Connection | None = None,
                    written: dict[bytes, bytes] | None = None) -> None:
        """Transaction ``tid`` changed ``oids``; ``written`` holds the records it wrote,
        when it was committed here (the record cache keeps them)."""
        if self._storage_keeps_records:
            pass  # told before this call (see amphora.storage.recordcache)
        elif written is None:
            self.records.invalidate(tid, oids)
        else:
            self.records.committed(tid, written, [oid for oid in oids if oid not in written])
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            if conn is not exclude:
                conn._invalidate(tid, oids)

    # -- information and management -------------------------------------------------
    # ZODB's ``Connection.db()`` is a method and its DB has ``_storage``: code written for
    # ZODB (``ZODB.blob.Blob`` finds the storage's temporary directory so) calls
    # ``conn.db()._storage``; amphora's ``conn.db`` is the DB, which answers both.
    def __call__(self) -> "DB":
        return self

    @property
    def _storage(self) -> Storage:
        return self.storage

    def last_transaction(self) -> bytes:
        """The tid of the last committed transaction (``z64`` if none)."""
        return self.storage.lastTransaction()

    lastTransaction = last_transaction

    def history(self, oid: bytes, size: int = 1) -> list[dict]:
        return self.storage.history(oid, size)

    def pack(self, t: float | None = None, days: float = 0, gc: bool = True) -> None:
        """Remove revisions older than ``t`` (epoch seconds; default now) minus ``days``,
        and, with ``gc``, objects no longer reachable from the root."""
        when = (time.time() if t is None else t) - days * 86400
        self.storage.pack(when, references, gc=gc)

    def objectCount(self) -> int:
        return len(self.storage)

    object_count = objectCount

    def getName(self) -> str:
        return self.storage.getName()

    def getSize(self) -> int:
        return self.storage.getSize()

    def cacheMinimize(self) -> None:
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.cacheMinimize()

    # -- undo (see amphora.storage.undo) ---------------------------------------------
    def supportsUndo(self) -> bool:
        return bool(getattr(self.storage, "supports_undo", False))

    supports_undo = property(supportsUndo)

    def undoLog(self, first: int = 0, last: int = -20,
                filter: Callable[[dict], bool] | None = None) -> list[dict]:
        """Undoable transactions, newest first (``[]`` on a storage without undo): dicts
        with ``id`` (what :meth:`undo` takes), ``time``, ``user_name`` and
        ``description`` (text, as ``ZODB.DB`` gives them) and the transaction's extension
        keys; see the storage's ``undoLog``. ``filter`` sees the storage's entries."""
        if not self.supportsUndo():
            return []
        return [_text_entry(entry) for entry in self.storage.undoLog(first, last, filter)]

    undo_log = undoLog

    def undoInfo(self, first: int = 0, last: int = -20,
                 specification: dict | None = None) -> list[dict]:
        """:meth:`undoLog` entries matching ``specification`` (a dict of values)."""
        if not self.supportsUndo():
            return []
        if specification:
            specification = {key: value.encode("utf-8") if isinstance(value, str) else value
                             for key, value in specification.items()}
        return [_text_entry(entry)
                for entry in self.storage.undoInfo(first, last, specification)]

    def undo(self, transaction_id: Any, txn: Any = None) -> None:
        """Undo transaction ``transaction_id`` (an ``undoLog`` id, or a tid) when ``txn``
        (default: the current transaction) commits; see :meth:`undo_many`."""
        self.undo_many([transaction_id], txn)

    def undo_many(self, transaction_ids: Iterable[Any], txn: Any = None) -> None:
        """Undo the transactions ``transaction_ids`` when ``txn`` (default: the current
        transaction) commits: one new transaction gives their objects back the revisions
        they had before. Commit it on its own. The commit raises
        :class:`~amphora.errors.UndoError` if a later change to one of the objects cannot
        be merged. Raises :class:`Unsupported` now if the storage keeps no history."""
        if not self.supportsUndo():
            raise Unsupported(f"{self.storage.getName()} cannot undo (it keeps no history)")
        from amphora._undo import UndoDataManager
        if txn is None:
            txn = transaction_module.get()
        txn.join(UndoDataManager(self, list(transaction_ids)))

    undoMultiple = undo_many

    # -- change feeds (see amphora.feeds) ------------------------------------------
    def changes(self, since: bytes | None = None, timeout: float | None = None
                ) -> Iterator[Change]:
        """Every transaction committed after tid ``since`` (None: from now on), in commit
        order, waiting for new ones; the iteration ends when ``timeout`` seconds pass
        without one (None: never). Raises :class:`~amphora.feeds.ResyncRequired` when
        pack removed transactions after ``since``."""
        return ChangeFeed(self.storage, since).follow(timeout)

    def achanges(self, since: bytes | None = None, timeout: float | None = None
                 ) -> AsyncIterator[Change]:
        """:meth:`changes` for ``async for``."""
        return achanges(self.storage, since, timeout)

    def subscribe(self, callback: Callable[[Change], Any]) -> None:
        """Call ``callback(change)`` for every transaction committed from now on, in
        commit order, from a thread of the database (never from a commit). A forked
        child calls none of the callbacks subscribed in its parent."""
        with self._lock:
            if self._subscriptions is None:
                self._subscriptions = Subscriptions(self.storage)
        self._subscriptions.subscribe(callback)

    def add_before_commit_hook(self, hook: Callable[[Connection], None]) -> None:
        """Call ``hook(conn)`` before every commit of a transaction that a connection of
        this database takes part in (after its first change). What the hook changes is
        committed too; what it raises aborts the commit."""
        self.before_commit_hooks.append(hook)

    def remove_before_commit_hook(self, hook: Callable[[Connection], None]) -> None:
        self.before_commit_hooks.remove(hook)

    def unsubscribe(self, callback: Callable[[Change], Any]) -> None:
        if self._subscriptions is not None:
            self._subscriptions.unsubscribe(callback)

    def close(self) -> None:
        """Close the storage. Open connections become unusable."""
        if self._closed:
            return
        self._closed = True
        if self._subscriptions is not None:
            self._subscriptions.close()
        with self._lock:
            self._pool.clear()
            connections, self._connections = list(self._connections), weakref.WeakSet()
        for conn in connections:  # left open: their managers stop telling them of boundaries
            manager = conn.transaction_manager
            if conn._opened and manager is not None and conn._historical is None:
                with contextlib.suppress(KeyError):
                    manager.unregisterSynch(conn)
        self.storage.close()

    def _forked(self, kept: list) -> None:
        """In a forked child, at the fork (no other thread runs): new locks (the
        parent's threads that held some are not here) and no subscriptions."""
        self._lock = threading.Lock()
        self.records._lock = threading.Lock()
        for conn in list(self._connections):
            conn._inv_lock = threading.Lock()
        self._subscriptions = None

    def __enter__(self) -> "DB":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<amphora.DB {self.storage.getName()!r}>"


def _text_entry(entry: dict) -> dict:
    """An undo log entry with ``user_name`` and ``description`` as text."""
    for key in ("user_name", "description"):
        if isinstance(entry.get(key), bytes):
            entry[key] = entry[key].decode("utf-8", "replace")
    return entry


def _as_tid(when: Any) -> bytes:
    """A tid from a tid, datetime, date or ISO-8601 string."""
    if isinstance(when, bytes):
        if len(when) != 8:
            raise ValueError("a tid is 8 bytes")
        return when
    if isinstance(when, str):
        when = datetime.datetime.fromisoformat(when)
    if isinstance(when, datetime.date) and not isinstance(when, datetime.datetime):
        when = datetime.datetime(when.year, when.month, when.day)
    if isinstance(when, datetime.datetime):
        return tid_from_datetime(when)
    raise TypeError(f"expected a tid, datetime or ISO string, not {type(when).__name__}")
