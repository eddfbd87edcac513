"""A Connection: one thread's view of the database, and the jar of its objects.

A Connection is three things at once:

- the *jar* of the persistent objects it loaded (``obj._p_jar``): ``persistent`` asks it
  to load a ghost's state (``setstate``), tells it when an object changes (``register``),
  and asks for old states (``oldstate``, for conflict resolution);
- a *data manager* in ``transaction``'s two-phase commit: at commit it writes every
  changed object, and every new object reachable from one, to the storage;
- a *snapshot*: it reads everything as committed before its start tid, fixed at each
  transaction boundary. Objects changed by transactions committed since (here, in other
  connections, or in other processes) are *invalidated* (turned back into ghosts) at the
  next boundary, never in the middle of a transaction.

MVCC, step by step. At each transaction boundary the connection

1. asks the storage to catch up with commits made elsewhere (``storage.sync()``), which
   delivers their invalidations to every connection of the database;
2. reads ``storage.lastTransaction()``;
3. takes, atomically, the oids invalidated since the last boundary and the newest tid
   those invalidations came with;
4. starts its snapshot just after the later of the two tids, and ghostifies the oids.

Reading the last tid before taking the invalidations matters: a commit that lands between
the two steps is either in the snapshot with its invalidations applied, or after the
snapshot with its invalidations still pending. (ZODB learned this the hard way.)

Object states (``_p_changed``, after ``persistent``): ghost (None), up to date (False),
changed (True). A changed object is *registered* with its connection, which joins the
current transaction.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterable

import transaction as transaction_module
from persistent import Persistent, PickleCache
from persistent.mapping import PersistentMapping

from amphora.blob import BlobJar, is_blob
from amphora.errors import (ConflictError, ConnectionStateError, CorruptRecordError,
                            ObjectNotFoundError, ReadConflictError, ReadOnlyHistoryError)
from amphora.search import ConnectionSearch
from amphora.serialize import ObjectReader, ObjectWriter
from amphora.storage.base import TransactionMetaData
from amphora.utils import oid_repr, p64, tid_repr, u64, z64

if TYPE_CHECKING:
    from amphora.db import DB

__all__ = ["Connection", "Root"]


class Root:
    """``conn.root``: the root mapping, with its keys also readable as attributes.

    ``conn.root()`` returns the mapping itself (as in ZODB); ``conn.root.people`` is
    ``conn.root()["people"]``; ``conn.root.people = x`` sets it.
    """

    __slots__ = ("_mapping",)

    def __init__(self, mapping: PersistentMapping):
        object.__setattr__(self, "_mapping", mapping)

    def __call__(self) -> PersistentMapping:
        return self._mapping

    def __getattr__(self, name: str) -> Any:
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(f"the root has no {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._mapping[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self._mapping[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> list[str]:
        return [k for k in self._mapping if isinstance(k, str) and k.isidentifier()]

    def __repr__(self) -> str:
        return f"<root: {' '.join(sorted(map(str, self._mapping)))}>"


class Connection(ConnectionSearch):
    """A view of the database for one thread at a time; see the module docstring.

    Obtain one with ``db.open()``; give it back with ``conn.close()``.
    """

    def __init__(self, db: "DB", cache_size: int, cache_size_bytes: int,
                 before: bytes | None = None):
        self._db = db
        self._storage = db.storage
        self._records = db.records
        self.transaction_manager: Any = None
        self._cache = PickleCache(self, cache_size, cache_size_bytes)
        self._reader = ObjectReader(self._ghost, self.get)
        self._creating: list[Any] = []  # new objects met while writing, to write too
        self._oid_pool: list[bytes] = []  # oids taken from the storage ahead of need
        self._writer = ObjectWriter(self, self._new_oid, self._creating.append)
        # MVCC
        self._historical = before
        self._start = before if before is not None else p64(u64(self._storage.lastTransaction()) + 1)
        self._inv_lock = threading.Lock()
        self._invalidated: set[bytes] | None = set()   # None: flush the whole cache
        self._inv_tid = z64
        # the current transaction
        self._joined: Any = None
        self._registered: list[Any] = []
        self._added: dict[bytes, Any] = {}
        self._read_current: dict[bytes, bytes] = {}
        self._modified: list[bytes] = []
        self._written: dict[bytes, bytes] = {}
        self._stored_new: list[Any] = []  # new objects written in this commit
        self._prefetched: dict[bytes, tuple[bytes, bytes]] = {}
        self._siblings: dict[bytes, _Siblings] = {}
        self._new_ghosts: list[bytes] | None = None
        # savepoints: states written at savepoints in this transaction
        self._sp_states: dict[bytes, bytes] = {}
        self._sp_serials: dict[bytes, bytes] = {}
        self._blob_jar = BlobJar(self)  # blob files (see amphora.blob)
        self._blobs: dict[bytes, str] = {}  # oid -> the file this commit gives the storage
        self._opened = False

    # -- public API -----------------------------------------------------------------
    @property
    def db(self) -> "DB":
        return self._db

    @property
    def root(self) -> Root:
        """The root object: ``conn.root()`` is the mapping, ``conn.root.name`` its items."""
        return Root(self.get(z64))

    def get(self, oid: bytes) -> Any:
        """The object with ``oid`` in this connection (a ghost until used).

        Raises :class:`ObjectNotFoundError` if there is no such object in the snapshot.
        """
        obj = self._cache.get(oid)
        if obj is not None:
            return obj
        obj = self._added.get(oid)
        if obj is not None:
            return obj
        record = self._load(oid)
        try:
            obj = self._reader.new_ghost(record[0])
        except Exception as exc:
            raise _corrupt(oid, None, record[1], exc) from exc
        self._cache.new_ghost(oid, obj)
        self._prefetched[oid] = record  # activation uses it without a second read
        return obj

    __getitem__ = get

    def add(self, obj: Any) -> None:
        """Make a new persistent object part of this connection now (it gets an oid at
        once and is stored at the next commit even if nothing refers to it)."""
        self._check_open()
        if obj._p_jar is self:
            return
        if obj._p_jar is not None:
            raise ConnectionStateError(f"{obj!r} already belongs to another connection")
        if self._historical is not None:
            raise ReadOnlyHistoryError("a historical connection cannot add objects")
        oid = obj._p_oid = self._new_oid()
        obj._p_jar = self
        self._added[oid] = obj
        self._join()
        self._registered.append(obj)

    def readCurrent(self, obj: Any) -> None:
        """Fail this transaction's commit if ``obj`` changes before then (even though this
        transaction only reads it)."""
        oid = obj._p_oid
        if oid is None or obj._p_jar is not self or oid in self._added:
            return
        self._read_current.setdefault(oid, obj._p_serial)
        self._join()

    read_current = readCurrent

    def prefetch(self, *objs_or_oids: Any) -> None:
        """Load many objects in one storage round trip.

        Takes persistent objects or oids (or iterables of them); ghosts among them get
        their records now, and are activated without another read when used.
        """
        oids = []
        for item in objs_or_oids:
            # one object or oid, or any iterable of them (a list, a BTree's values() ...)
            items = (item,) if isinstance(item, (bytes, Persistent)) else item
            for one in items:
                if isinstance(one, bytes):
                    obj = self._cache.get(one)
                    if obj is None or obj._p_changed is None:
                        oids.append(one)
                elif getattr(one, "_p_jar", None) is self and one._p_changed is None:
                    oids.append(one._p_oid)
        records = self._records
        missing = []
        for oid in oids:
            if oid not in self._prefetched and oid not in self._sp_states \
                    and records.get(oid, self._start) is None:
                missing.append(oid)
        if missing:
            self._fetch(missing)

    def pending_objects(self) -> list[Any]:
        """The objects this transaction writes so far: the changed ones, the added ones
        and every new object they reach (which get their oids now). Their states are
        written aside as by :meth:`savepoint`; changing them again is fine."""
        self.savepoint()
        cache, added = self._cache, self._added
        found = []
        for oid in self._sp_states:
            obj = cache.get(oid)
            if obj is None:
                obj = added.get(oid)
            if obj is not None:
                found.append(obj)
        return found

    def close(self) -> None:
        """Give the connection back to the database. Its objects stay usable only as far
        as they are loaded; raises ConnectionStateError with changes pending."""
        if not self._opened:
            return
        if self._joined is not None:
            raise ConnectionStateError("cannot close a connection joined to a transaction; "
                                       "commit or abort first")
        if self.transaction_manager is not None and self._historical is None:
            self.transaction_manager.unregisterSynch(self)  # only current views registered
        self._opened = False
        self._prefetched.clear()  # records read ahead but never used
        self._db._release(self)

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._joined is not None:
            self.transaction_manager.abort()
        self.close()

    @property
    def opened(self) -> bool:
        return self._opened

    def isReadOnly(self) -> bool:
        return self._historical is not None or self._storage.isReadOnly()

    def cacheMinimize(self) -> None:
        """Turn every up-to-date object in the cache into a ghost."""
        self._cache.minimize()

    cache_minimize = cacheMinimize

    def cacheGC(self) -> None:
        """Shrink the cache towards its target size."""
        self._cache.incrgc()

    @property
    def cache_size(self) -> int:
        return self._cache.cache_size

    def cache_info(self) -> dict[str, int]:
        return {"objects": len(self._cache), "non_ghosts": self._cache.cache_non_ghost_count,
                "estimated_bytes": self._cache.total_estimated_size}

    def sync(self) -> None:
        """Abort the current transaction and move to the newest snapshot."""
        self.transaction_manager.abort()
        self._new_snapshot(sync=True)

    # -- opening (called by DB) -------------------------------------------------------
    def _open(self, transaction_manager: Any) -> None:
        self.transaction_manager = transaction_manager or transaction_module.manager
        self._opened = True
        if self._historical is None:
            self.transaction_manager.registerSynch(self)
            self._new_snapshot(sync=True)

    def _check_open(self) -> None:
        if not self._opened:
            raise ConnectionStateError("the connection is closed")

    # -- invalidations and snapshots ------------------------------------------------
    def _invalidate(self, tid: bytes, oids: Iterable[bytes]) -> None:
        """Called by the DB when a transaction ``tid`` changed ``oids``."""
        with self._inv_lock:
            if self._invalidated is not None:
                self._invalidated.update(oids)
            if tid > self._inv_tid:
                self._inv_tid = tid

    def _invalidate_all(self) -> None:
        with self._inv_lock:
            self._invalidated = None

    def _new_snapshot(self, sync: bool) -> None:
        if self._historical is not None or self._db._closed:
            # A closed database's connections are unusable: a transaction boundary of the
            # manager they were opened with (which may outlive them) asks nothing of them.
            return
        storage = self._storage
        if sync:
            storage.sync()
        last = storage.lastTransaction()
        with self._inv_lock:
            invalidated, self._invalidated = self._invalidated, set()
            if self._inv_tid > last:
                last = self._inv_tid
        self._start = p64(u64(last) + 1)
        self._prefetched.clear()
        if invalidated is None:
            self._cache.invalidate(list(self._cache.cache_data))
        elif invalidated:
            self._cache.invalidate(list(invalidated))
        self._cache.incrgc()

    # -- the jar protocol (called by persistent) -------------------------------------
    def _load(self, oid: bytes) -> tuple[bytes, bytes]:
        """``(data, serial)`` of ``oid`` in this snapshot (or this transaction's savepoints)."""
        if oid in self._sp_states:  # this transaction's own state wins over any record
            return self._sp_states[oid], self._sp_serials[oid]
        found = self._prefetched.pop(oid, None)
        if found is not None:
            return found
        records = self._records
        found = records.get(oid, self._start)
        if found is not None:
            return found
        siblings = self._siblings.get(oid)
        if siblings is not None:
            self._read_ahead(oid, siblings)
            found = self._prefetched.pop(oid, None)
            if found is not None:
                return found
        generation = records.generation()
        try:
            record = self._storage.loadBefore(oid, self._start)
        except ObjectNotFoundError:
            if oid != z64:
                raise
            # Nothing was ever committed, and the storage is read-only (else the DB would
            # have created the root): an empty database has an empty root.
            return _empty_root_record(), z64
        if record is None:
            raise ReadConflictError(
                "the object has no revision in this connection's snapshot (a history-free "
                "storage replaced it since, or a pack removed it)", oid=oid)
        data, start, end = record
        if type(data) is not bytes:
            raise CorruptRecordError(f"the record of oid {oid_repr(oid)} (serial {tid_repr(start)}) "
                                     f"is a {type(data).__name__}, not bytes")
        records.put(oid, data, start, end, generation)
        return data, start

    def _read_ahead(self, oid: bytes, siblings: "_Siblings") -> None:
        """Load ``oid`` together with the ghosts that follow it among its siblings (met in
        the same container's state), in one batch: containers are mostly read in order.

        A batch holds ``_READ_AHEAD`` ghosts, and up to half as many again when no more
        are found near them: a small tail would cost a round trip of its own. After the
        last sibling come the first ones: a BTree's ``values()`` looks at its last bucket
        before it walks from the first."""
        cache = self._cache
        siblings_of = self._siblings
        prefetched = self._prefetched
        oids, tail = [oid], []
        for other in siblings.following(oid, 2 * _READ_AHEAD):
            obj = cache.get(other)
            if obj is not None and obj._p_changed is None and other not in prefetched \
                    and other not in self._sp_states:
                if len(oids) < _READ_AHEAD:
                    oids.append(other)
                elif len(tail) < _READ_AHEAD // 2:
                    tail.append(other)
                else:
                    tail = []  # more than a tail: left for the next batch
                    break
        oids += tail
        for one in oids:
            siblings_of.pop(one, None)
        self._fetch(oids)

    def _fetch(self, oids: list[bytes]) -> None:
        """Read the records of ``oids`` in one storage call, for their ghosts to use."""
        records = self._records
        generation = records.generation()
        prefetched = self._prefetched
        found = self._storage.load_many(oids, self._start)
        for oid, (data, start, end) in found.items():
            prefetched[oid] = (data, start)
        records.put_many([(oid, *record) for oid, record in found.items()], generation)

    def setstate(self, obj: Any) -> None:
        """Load the state of the ghost ``obj``."""
        if not self._opened:
            raise ConnectionStateError(
                f"cannot load {type(obj).__name__} (oid {obj._p_oid!r}): the connection is closed")
        data, serial = self._load(obj._p_oid)
        outer, new_ghosts = self._new_ghosts, []
        self._new_ghosts = new_ghosts
        try:
            self._reader.set_state(obj, data)
        except (ConflictError, ObjectNotFoundError, ConnectionStateError):
            raise  # about another object, or this connection: not this record's fault
        except Exception as exc:
            raise _corrupt(obj._p_oid, type(obj), serial, exc) from exc
        finally:
            self._new_ghosts = outer
        if len(new_ghosts) > 1:
            # Remember which ghosts came from one container: if the application reads
            # them one after another, the rest are loaded in one batch (see _load).
            siblings = _Siblings(new_ghosts)
            siblings_of = self._siblings
            if len(siblings_of) > _MAX_SIBLINGS:
                siblings_of.clear()
            for oid in new_ghosts:
                siblings_of[oid] = siblings
        obj._p_serial = serial
        obj._p_estimated_size = len(data)
        if is_blob(obj):
            self._blob_jar.loaded(obj, serial)

    def register(self, obj: Any) -> None:
        """``obj`` changed: write it at the next commit."""
        if self._historical is not None:
            raise ReadOnlyHistoryError(
                f"cannot change {type(obj).__name__} in a historical connection")
        self._join()
        self._registered.append(obj)

    def oldstate(self, obj: Any, tid: bytes) -> Any:
        """The state ``obj`` had as written by transaction ``tid``."""
        return self._reader.get_state(self._storage.loadSerial(obj._p_oid, tid))

    def _ghost(self, oid: bytes, klass: type) -> Any:
        """The object a reference names: from the cache, or a new ghost."""
        obj = self._cache.get(oid)
        if obj is not None:
            return obj
        obj = self._added.get(oid)
        if obj is not None:
            return obj
        obj = klass.__new__(klass)
        self._cache.new_ghost(oid, obj)
        if self._new_ghosts is not None:
            self._new_ghosts.append(oid)
        return obj

    def _new_oid(self) -> bytes:
        pool = self._oid_pool
        if not pool:
            pool.extend(reversed(self._storage.new_oids(_OID_POOL)))
        return pool.pop()  # unused oids of a pool are simply never used

    def _join(self) -> None:
        if self._joined is None:
            self._check_open()
            txn = self.transaction_manager.get()
            txn.join(self)
            self._joined = txn
            for hook in self._db.before_commit_hooks:
                txn.addBeforeCommitHook(hook, (self,))

    # -- the data-manager protocol (called by transaction) ----------------------------
    def sortKey(self) -> str:
        return f"{self._storage.sortKey()}:{id(self)}"

    def tpc_begin(self, txn: Any) -> None:
        if self._historical is not None:
            raise ReadOnlyHistoryError("a historical connection cannot commit")
        self._modified = []
        self._creating.clear()
        meta = TransactionMetaData(txn.user, txn.description, txn.extension)
        txn.set_data(self, meta)
        self._storage.tpc_begin(meta)

    def commit(self, txn: Any) -> None:
        meta = txn.data(self)
        storage = self._storage
        records: dict[bytes, bytes] = {}  # what this transaction writes, by oid
        serials: dict[bytes, bytes] = {}  # the serial each of them was read at
        blobs = self._blobs  # oid -> blob file, for blobs with new data
        self._written = records
        # objects written at savepoints and not changed since
        for oid, data in self._sp_states.items():
            obj = self._cache.get(oid)
            if obj is None:
                obj = self._added.get(oid)
            if obj is not None and obj._p_changed:
                continue  # changed again: written below
            records[oid] = data
            serials[oid] = self._sp_serials[oid]
            if self._blob_jar.savepoint_files:
                filename = self._blob_jar.take_savepoint_file(oid, obj)
                if filename is not None:
                    blobs[oid] = filename
        self._store_objects(self._registered, records, serials, blobs)
        plain = {oid: data for oid, data in records.items() if oid not in blobs} if blobs else records
        storage.store_many(plain, {oid: serials[oid] for oid in plain} if blobs else serials, meta)
        for oid, filename in blobs.items():  # a blob's record is stored with its file
            storage.storeBlob(oid, serials[oid], records[oid], filename, "", meta)
        self._modified = list(records)
        for oid, serial in self._read_current.items():
            if oid not in records:  # a write checks its own serial, and may be resolved
                storage.checkCurrentSerialInTransaction(oid, serial, meta)

    def _store_objects(self, objs: list[Any], records: dict[bytes, bytes],
                       serials: dict[bytes, bytes], blobs: dict[bytes, str] | None = None
                       ) -> None:
        """Serialize ``objs`` and every new object they reach into ``records`` (and the
        serial each was read at into ``serials``); the files of blobs go into ``blobs``
        (None: at a savepoint, which sets them aside)."""
        queue = self._creating
        pending = list(objs)
        try:
            self._store_pending(pending, records, serials, blobs)
        except BaseException:
            queue.extend(pending)  # new objects among them are detached by the abort
            raise

    def _store_pending(self, pending: list[Any], records: dict[bytes, bytes],
                       serials: dict[bytes, bytes], blobs: dict[bytes, str] | None) -> None:
        serialize = self._writer.serialize
        cache = self._cache
        queue = self._creating
        sp_serials = self._sp_serials
        added = self._added
        stored_new = self._stored_new
        while pending or queue:
            if not pending:
                pending.extend(queue)
                queue.clear()
            obj = pending.pop()
            oid = obj._p_oid
            if oid in records or obj._p_jar is not self:
                continue
            if obj._p_changed is None:
                continue  # a ghost (invalidated after a savepoint rollback)
            if is_blob(obj) and not self._blob_file(obj, blobs):
                continue  # only _p_changed was set: nothing new to write
            try:
                data = serialize(obj)
            except BaseException:
                pending.append(obj)
                raise
            serial = obj._p_serial
            if sp_serials:
                serial = sp_serials.get(oid, serial)
            records[oid] = data
            serials[oid] = serial
            if serial == z64:
                stored_new.append(obj)  # detached again if the commit fails
                if cache.get(oid) is None:
                    cache[oid] = obj  # a new object joins the cache
            if added:
                added.pop(oid, None)

    def _blob_file(self, obj: Any, blobs: dict[bytes, str] | None) -> bool:
        """Put the file of the blob ``obj``'s new data in ``blobs`` (or, at a savepoint,
        set it aside); False if it has none."""
        if blobs is None:
            self._blob_jar.set_aside(obj)
            return True
        filename = self._blob_jar.take(obj)
        if filename is None:
            obj._p_changed = False
            return False
        blobs[obj._p_oid] = filename
        return True

    def tpc_vote(self, txn: Any) -> None:
        meta = txn.data(self)
        # The only data manager of its transaction is always finished after a successful
        # vote: the storage may finish in the vote (see TransactionMetaData). The
        # transaction package keeps its data managers in ``_resources``; without it, two
        # phases.
        resources = getattr(txn, "_resources", None)
        if resources is not None and len(resources) == 1 and resources[0] is self:
            meta.finish_with_vote = self._finished_in_vote
        try:
            resolved = self._storage.tpc_vote(meta)
        except ConflictError as exc:
            obj = self._cache.get(exc.oid) if exc.oid is not None else None
            if obj is not None and not exc.class_name:
                klass = type(obj)
                exc.class_name = f"{klass.__module__}.{klass.__qualname__}"
            if isinstance(exc, ReadConflictError) and exc.oid is not None:
                self._cache.invalidate(exc.oid)
            raise
        if resolved:
            for oid in resolved:
                self._written.pop(oid, None)  # the storage holds a merged record
                obj = self._cache.get(oid)
                if obj is not None:
                    del obj._p_changed  # the stored state is the merged one: reload it

    def _finished_in_vote(self, tid: bytes, resolved: list[bytes]) -> None:
        """The storage finished the commit in its vote: what :meth:`tpc_finish`'s
        callback does, the merged records left out of those kept."""
        written = self._written
        for oid in resolved:
            written.pop(oid, None)
        self._db._invalidate(tid, self._modified, exclude=self, written=written)

    def tpc_finish(self, txn: Any) -> None:
        modified = self._modified
        written = self._written

        def invalidate_others(tid: bytes) -> None:
            self._db._invalidate(tid, modified, exclude=self, written=written)

        serial = self._storage.tpc_finish(txn.data(self), invalidate_others)
        for oid in modified:
            obj = self._cache.get(oid)
            if obj is not None and obj._p_changed is not None:
                obj._p_changed = False
                obj._p_serial = serial
        # A blob reloads with the committed file of the new revision as its data.
        self._cache.invalidate([oid for oid in self._blobs if self._cache.get(oid) is not None])
        self._cleanup()

    def tpc_abort(self, txn: Any) -> None:
        try:
            meta = txn.data(self)
        except KeyError:
            meta = None
        if meta is not None:
            self._storage.tpc_abort(meta)
        self._abort_objects()
        self._cleanup()

    def abort(self, txn: Any) -> None:
        self._abort_objects()
        self._cleanup()

    def _abort_objects(self) -> None:
        """Forget this transaction's changes: new objects are detached, changed ones
        become ghosts (they reload their committed state when used)."""
        cache = self._cache
        new = self._creating + self._stored_new + list(self._added.values())
        new_oids = {obj._p_oid for obj in new}
        new_oids.update(oid for oid, serial in self._sp_serials.items() if serial == z64)
        objs = self._registered + new
        objs += [obj for obj in map(cache.get, self._sp_states) if obj is not None]
        for obj in objs:
            oid = obj._p_oid
            if oid is None or obj._p_jar is not self:
                continue
            if oid in new_oids:  # never committed
                if cache.get(oid) is obj:
                    del cache[oid]
                _detach(obj)
            else:
                cache.invalidate(oid)

    def _cleanup(self) -> None:
        self._joined = None
        self._registered = []
        self._added = {}
        self._creating.clear()
        self._modified = []
        self._written = {}
        self._stored_new = []
        self._read_current = {}
        self._sp_states = {}
        self._sp_serials = {}
        self._blobs = {}
        self._blob_jar.end()

    # -- synchronizer protocol (transaction manager hooks) -----------------------------
    def beforeCompletion(self, txn: Any) -> None:
        pass

    def afterCompletion(self, txn: Any) -> None:
        # Even with an explicit transaction manager: after its own commit a connection
        # must not load what that commit changed from the snapshot before it.
        self._new_snapshot(sync=False)

    def newTransaction(self, txn: Any, sync: bool = True) -> None:
        self._new_snapshot(sync=sync)

    # -- savepoints -------------------------------------------------------------------
    def savepoint(self) -> "_Savepoint":
        """Write the changes so far aside (in memory) so they can be rolled back to."""
        records: dict[bytes, bytes] = {}
        serials: dict[bytes, bytes] = {}
        self._creating.clear()
        self._prefetched.clear()  # may hold an older state of what is written aside now
        self._store_objects(self._registered, records, serials)
        self._sp_states.update(records)
        for oid, serial in serials.items():
            self._sp_serials.setdefault(oid, serial)
        for oid in records:
            obj = self._cache.get(oid)
            if obj is not None and obj._p_changed:
                obj._p_changed = False
        for obj in list(self._added.values()):
            self._cache[obj._p_oid] = obj
        self._added = {}
        self._registered = []
        return _Savepoint(self, dict(self._sp_states), dict(self._blob_jar.savepoint_files))

    def _rollback(self, states: dict[bytes, bytes], blob_files: dict[bytes, str]) -> None:
        cache = self._cache
        # a blob's state is always the same: its data set aside tells whether it changed
        kept = self._blob_jar.savepoint_files
        changed_blobs = [oid for oid in kept if blob_files.get(oid) != kept[oid]]
        self._blob_jar.savepoint_files = dict(blob_files)
        changed = [obj._p_oid for obj in self._registered if obj._p_oid is not None]
        changed += changed_blobs
        for obj in list(self._added.values()) + self._creating:
            if obj._p_oid is not None and cache.get(obj._p_oid) is obj:
                del cache[obj._p_oid]
            _detach(obj)
        later = [oid for oid in self._sp_states if oid not in states]
        # written again at a later savepoint: the loaded state is newer than the one kept
        changed += [oid for oid, data in self._sp_states.items()
                    if oid in states and states[oid] != data]
        for oid in later:
            obj = cache.get(oid)
            if obj is not None and self._sp_serials.get(oid) == z64:
                del cache[oid]
                _detach(obj)
            self._sp_serials.pop(oid, None)
        self._sp_states = dict(states)
        self._prefetched.clear()  # may hold states of the savepoints rolled back
        self._registered = []
        self._added = {}
        self._creating.clear()
        cache.invalidate([oid for oid in changed + later if cache.get(oid) is not None])


_MAX_SIBLINGS = 100_000  # ghosts remembered for read-ahead, per connection


def _empty_root_record() -> bytes:
    """The record of an empty root mapping (as :class:`amphora.DB` first stores it)."""
    return ObjectWriter(None, _no_oid, _no_oid).serialize(PersistentMapping())


def _no_oid(*_: Any) -> Any:
    raise AssertionError("an empty mapping refers to no object")


def _detach(obj: Any) -> None:
    """Make a new object free again (no jar, no oid), as before it met this connection.

    ``del`` rather than assigning None: a jar of None would still be asked to register
    the object's next change.
    """
    del obj._p_jar
    del obj._p_oid


_OID_POOL = 64  # oids a connection takes from the storage at a time
_READ_AHEAD = 64  # records loaded in one batch when reading a container's ghosts


class _Siblings:
    """Ghosts created while loading one container's state, in the order met."""

    __slots__ = ("oids", "position")

    def __init__(self, oids: list[bytes]):
        self.oids = oids
        self.position: dict[bytes, int] | None = None  # made when first needed

    def following(self, oid: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` siblings after ``oid``, then from the first one on."""
        if self.position is None:
            self.position = {one: i for i, one in enumerate(self.oids)}
        start = self.position[oid] + 1
        after = self.oids[start:start + limit]
        if len(after) < limit:
            after += self.oids[:min(limit - len(after), start - 1)]
        return after


class _Savepoint:
    """A point in the current transaction to roll back to."""

    def __init__(self, conn: Connection, states: dict[bytes, bytes],
                 blob_files: dict[bytes, str]):
        self._conn = conn
        self._states = states
        self._blob_files = blob_files

    def rollback(self) -> None:
        self._conn._rollback(self._states, self._blob_files)



def _corrupt(oid: bytes, klass: type | None, serial: bytes, exc: BaseException) -> CorruptRecordError:
    """The error for a record of ``oid`` that cannot be turned into its object."""
    what = f" ({klass.__module__}.{klass.__qualname__})" if klass is not None else ""
    detail = str(exc) or type(exc).__name__
    return CorruptRecordError(f"cannot load oid {oid_repr(oid)}{what}, serial {tid_repr(serial)}: "
                              f"{detail}")
