"""The embedded default storage: one SQLite file, shared by many threads and processes.

SQLite in WAL mode lets readers run while one writer commits, across processes, so no
server is needed. A commit is durable when it returns: with ``synchronous="full"`` (the
default) SQLite syncs the log at every commit, so committed transactions survive a crash
of the process, of the operating system, or a power loss, as with ZODB's FileStorage and
PostgreSQL. ``synchronous="normal"`` is an opt-in that syncs only at checkpoints: faster
commits that survive a crash of the process, but the last transactions committed before a
power loss or an operating-system crash can be lost.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import threading
import weakref
from functools import partial
from time import monotonic
from typing import Any, Callable, Iterable, Iterator

from amphora.errors import (CorruptRecordError, InvalidURIError, ObjectNotFoundError,
                            ReadOnlyError, StorageError, StorageFormatError)
from amphora.storage import _fork
from amphora.storage.blobs import BlobStorageMixin
from amphora.storage.sqlite.mirror import MirrorMixin
from amphora.storage.sqlite.pack import PackMixin
# FORMAT and SCHEMA_VERSION are importable from here too.
from amphora.storage.sqlite.schema import FORMAT, SCHEMA_VERSION, SchemaMixin  # noqa: F401
from amphora.storage.sql.keys import _ints, _pack, _split, _u, _unpack
from amphora.storage.sqlite.statements import (_CHANGES_SINCE, _LAST_TID, _LOAD_CURRENT,
                                          _LOAD_SERIAL, _PRUNE_REPLACED, _ROWS_PER_STATEMENT)
from amphora.storage.sql.log import TransactionLogMixin
from amphora.storage.recordcache import CachedRecordsMixin
from amphora.storage.undo import UndoMixin
from amphora.storage.base import (DataRecord, StorageBase, history_entry,
                                  pack_tid)
from amphora.utils import oid_repr, p64, tid_repr, tid_time, z64

__all__ = ["SQLiteStorage"]

# The schema (and the checks that a file is an amphora database) is in .schema,
# pack and its statements in .pack, the statements both use (_LOAD_CURRENT,
# _LOAD_SERIAL, _LAST_TID, _CHANGES_SINCE, _PRUNE_REPLACED) in .statements, and the oid
# and tid conversions in amphora.storage.sql.keys.

# -- reading --------------------------------------------------------------------------------
_LOAD_REVISION_BEFORE = ("SELECT tid, end_tid, data FROM revisions WHERE oid = ? AND tid < ?"
                         " ORDER BY tid DESC LIMIT 1")
_LOAD_MANY_CURRENT = ("SELECT oid, tid, CASE WHEN tid < ? THEN data END FROM objects"
                      " WHERE oid IN ({marks})")
_LOAD_MANY_REVISIONS = (
    "WITH wanted(oid) AS (VALUES {rows})"
    " SELECT w.oid, r.tid, r.end_tid, r.data"
    " FROM wanted AS w JOIN revisions AS r ON r.oid = w.oid AND r.tid ="
    "  (SELECT max(m.tid) FROM revisions AS m WHERE m.oid = w.oid AND m.tid < ?)")
_CURRENT_SERIALS = "SELECT oid, tid FROM objects WHERE oid IN ({marks})"
_HISTORY = (
    "SELECT x.tid, length(x.data), t.user, t.description, t.extension FROM"
    " (SELECT tid, data FROM objects WHERE oid = :oid"
    "  UNION ALL SELECT tid, data FROM revisions WHERE oid = :oid) AS x"
    " LEFT JOIN transactions AS t ON t.tid = x.tid ORDER BY x.tid DESC LIMIT :size")
_PACKED_THROUGH = "SELECT value FROM amphora_meta WHERE key = 'packed_through'"
_TRANSACTIONS = ("SELECT tid, user, description, extension, oids FROM transactions"
                 " WHERE tid >= ? AND tid <= ? ORDER BY tid LIMIT ?")
_RECORDS_OF = (  # the oids, then the tid twice
    "WITH wanted(oid) AS (VALUES {rows})"
    " SELECT o.oid, o.data FROM wanted AS w JOIN objects AS o ON o.oid = w.oid WHERE o.tid = ?"
    " UNION ALL SELECT r.oid, r.data FROM wanted AS w JOIN revisions AS r"
    "  ON r.oid = w.oid AND r.tid = ?")
_COUNT_OBJECTS = "SELECT count(*) FROM objects WHERE length(data) > 0"
_UNDO_LOG = ("SELECT tid, user, description, extension FROM transactions WHERE tid > ?"
             " ORDER BY tid DESC LIMIT ? OFFSET ?")
_UNDO_HORIZON = "SELECT value FROM amphora_meta WHERE key = 'undo_horizon'"
_TRANSACTION_OIDS = "SELECT oids FROM transactions WHERE tid = ?"
_BLOB_SIZE = "SELECT size FROM blob_sizes WHERE oid = ? AND tid = ?"

# -- writing --------------------------------------------------------------------------------
_ARCHIVE_CURRENT = ("INSERT INTO revisions (oid, tid, end_tid, data)"
                    " SELECT oid, tid, ?, data FROM objects WHERE oid IN ({marks})")
_RETAIN_CURRENT = ("INSERT INTO replaced (oid, tid, end_tid, data)"
                   " SELECT oid, tid, ?, data FROM objects WHERE oid IN ({marks})")
_UPSERT_OBJECTS = ("INSERT INTO objects (oid, tid, data) VALUES {values} ON CONFLICT (oid)"
                   " DO UPDATE SET tid = excluded.tid, data = excluded.data")
_INSERT_OBJECTS = "INSERT INTO objects (oid, tid, data) VALUES {values}"
# the size of each blob revision's file (see amphora.storage.blobs): a table made by the
# first commit with a blob (a file without it has none)
_CREATE_BLOB_SIZES = ("CREATE TABLE IF NOT EXISTS blob_sizes (oid INTEGER NOT NULL,"
                      " tid INTEGER NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (oid, tid))"
                      " WITHOUT ROWID")
_INSERT_BLOB_SIZE = "INSERT OR REPLACE INTO blob_sizes (oid, tid, size) VALUES (?, ?, ?)"
_INSERT_TRANSACTION = ("INSERT INTO transactions (tid, user, description, extension, oids)"
                       " VALUES (?, ?, ?, ?, ?)")
_NEXT_OID = "SELECT value FROM amphora_meta WHERE key = 'next_oid'"
_SET_NEXT_OID = "UPDATE amphora_meta SET value = :next WHERE key = 'next_oid' AND value < :next"

_SYNCHRONOUS = ("off", "normal", "full", "extra")
_PAGE_SIZES = [1 << n for n in range(9, 17)]
_BATCH = 500                         # oids per statement in batched reads
_BATCH_SIZES = (1, 4, 16, 64, 128, 256, _BATCH)  # few distinct statements, so all stay cached
_OID_BLOCK = 64                      # oids first reserved in the file per new_oid round trip
_OID_BLOCK_MAX = 4096                # ... doubling with each reservation up to this
_PAD_TO = [next(size for size in _BATCH_SIZES if size >= n) for n in range(_BATCH + 1)]


def _padded(values: list) -> list:
    """``values`` (at most _BATCH) with the last repeated up to the next batch size: the
    same few statements serve every size (repeats in ``IN`` lists change nothing)."""
    missing = _PAD_TO[len(values)] - len(values)
    return values + [values[-1]] * missing if missing else values


def _chunks(keys: list[int]) -> Iterator[list[int]]:
    """``keys`` in padded chunks of at most _BATCH (see _padded)."""
    for i in range(0, len(keys), _BATCH):
        yield _padded(keys[i:i + _BATCH])


def _write_objects(conn: sqlite3.Connection, rows: list[tuple[int, int, bytes]],
                   statements: dict[int, str]) -> None:
    """Write ``rows`` (oid, tid, data) to ``objects`` with ``statements`` (by rows each
    binds): binding a few hundred rows at once costs about half of a statement per row."""
    start = 0
    for size in _ROWS_PER_STATEMENT:
        sql = statements[size]
        while len(rows) - start >= size:
            chunk = rows[start:start + size]
            conn.execute(sql, [value for row in chunk for value in row])
            start += size


def _by_size(template: str) -> dict[int, str]:
    """``template`` with ``{marks}`` (``?,?,...``) or ``{rows}`` (``(?),(?),...``) filled in
    for every batch size."""
    return {n: template.format(marks=",".join("?" * n), rows=",".join(["(?)"] * n))
            for n in _BATCH_SIZES}


_LOAD_MANY_CURRENT_SQL = _by_size(_LOAD_MANY_CURRENT)
_LOAD_MANY_REVISIONS_SQL = _by_size(_LOAD_MANY_REVISIONS)
_RECORDS_OF_SQL = _by_size(_RECORDS_OF)
_CURRENT_SERIALS_SQL = _by_size(_CURRENT_SERIALS)
_ARCHIVE_CURRENT_SQL = _by_size(_ARCHIVE_CURRENT)
_UPSERT_OBJECTS_SQL = {n: _UPSERT_OBJECTS.format(values=",".join(["(?,?,?)"] * n))
                       for n in _ROWS_PER_STATEMENT}
_INSERT_OBJECTS_SQL = {n: _INSERT_OBJECTS.format(values=",".join(["(?,?,?)"] * n))
                       for n in _ROWS_PER_STATEMENT}
_RETAIN_CURRENT_SQL = _by_size(_RETAIN_CURRENT)
# A commit's writes of (oid, tid, data) rows: (objects it replaces, new objects); with a
# sync mirror the mirror's instead, which write the documents too.
_PLAIN_WRITES = (partial(_write_objects, statements=_UPSERT_OBJECTS_SQL),
                 partial(_write_objects, statements=_INSERT_OBJECTS_SQL))


class _Reader:
    """One thread's read connection and the SQLite snapshot (read transaction) it keeps
    open between loads, so that a load costs one query and no locking system calls.

    ``generation`` is the storage's generation when the snapshot began (-1: none open),
    ``horizon`` the largest ``before`` it can answer, ``started`` its ``monotonic()`` time.
    ``lock`` is held while the connection is used (the sweeper ends idle snapshots).
    """

    __slots__ = ("conn", "lock", "generation", "horizon", "started", "__weakref__")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.lock = threading.Lock()
        self.generation = -1
        self.horizon = 0
        self.started = 0.0


class SQLiteStorage(CachedRecordsMixin, SchemaMixin, PackMixin, MirrorMixin, TransactionLogMixin, BlobStorageMixin,
                    UndoMixin, StorageBase):
    """A storage in one SQLite file (WAL mode), shared safely by threads and processes.

    On-disk format (``schema_version`` 1)::

        amphora_meta(key TEXT PRIMARY KEY, value)
            format='amphora-sqlite', schema_version=1, keep_history=1|0,
            next_oid=<first oid not yet handed out>, packed_through=<largest tid of a
            transaction row removed by pack>
        objects(oid INTEGER PRIMARY KEY, tid INTEGER, data BLOB)
            the current revision of every object
        revisions(oid INTEGER, tid INTEGER, end_tid INTEGER, data BLOB), UNIQUE(oid, tid)
            history-preserving mode: replaced revisions, kept until pack; ``end_tid`` is
            the tid of the revision that replaced it. Empty ``data`` (here and in
            ``objects``) is a deletion record: an undone creation (see
            :mod:`amphora.storage.undo`)
        replaced(oid INTEGER, tid INTEGER, end_tid INTEGER, data BLOB)
            history-free mode: replaced revisions, kept ``conflict_window`` seconds for
            conflict resolution only (``loadSerial``; never ``loadBefore``)
        transactions(tid INTEGER PRIMARY KEY, user BLOB, description BLOB,
                     extension BLOB, oids BLOB)
            one row per commit; ``oids`` is the concatenated 8-byte oids it wrote, which
            is how other processes learn what to invalidate. Pack removes rows left
            without records (never the last one).

    Oids and tids are the signed 64-bit integers with the same 8 bytes; ``data`` is the
    record exactly as stored.

    Blob files (see :mod:`amphora.storage.blobs`) are kept in the directory ``blob_dir``,
    by default the file's name with ``.blobs`` added (``app.db.blobs/``), made with the
    file (or at the first writable opening of a file made before). A commit writes and
    syncs its blob files before its records; the files of a commit a crash interrupted
    are removed at the next writable opening. The first commit with a blob adds the table
    ``blob_sizes(oid, tid, size)``: the size each file was committed with, checked when
    it is read.

    Concurrency: reads use one connection per thread and never wait. A commit holds the
    storage's commit lock from ``tpc_begin``; ``tpc_vote`` takes SQLite's write lock
    (``BEGIN IMMEDIATE``, waiting up to ``busy_timeout`` seconds for other processes),
    checks conflicts against what is committed under that lock, picks a tid above every
    tid in the file and writes; ``tpc_finish`` commits, which is the durability point.
    ``sync()`` reports transactions committed by other processes or storage objects to
    the registered database, in tid order, before ``lastTransaction()`` shows them.

    ``keep_history=None`` takes the mode the file was created with (history-preserving
    for a new file); asking for the other mode raises :class:`StorageFormatError`.
    ``page_size`` is SQLite's page size for a new file (an existing one keeps its own):
    8 KiB rather than SQLite's 4 KiB halves the pages a commit writes to the log.
    Opening anything that is not an amphora SQLite file of a known schema version
    raises :class:`StorageFormatError` and leaves the file untouched.
    """

    supports_pack = True
    is_remote = False
    mmap_size = 1 << 30  #: optional tuning: memory-map the file for reads
    #: history-free mode: seconds a replaced revision stays readable by ``loadSerial``, so
    #: that a transaction that read it can still have its conflicts resolved
    conflict_window = 60.0
    #: seconds a thread's read snapshot is reused (ended sooner when others commit)
    snapshot_age = 0.2

    def __init__(self, path: str, read_only: bool = False, keep_history: bool | None = None,
                 resolve_conflicts: bool = True, synchronous: str = "full",
                 busy_timeout: float = 60.0, create: bool = True, page_size: int = 8192,
                 blob_dir: str | None = None):
        super().__init__(str(path), read_only, resolve_conflicts)
        # Bad option values (often from a URI's query string) are InvalidURIError (a ValueError).
        if not isinstance(synchronous, str) or synchronous.lower() not in _SYNCHRONOUS:
            raise InvalidURIError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        synchronous = synchronous.lower()
        if keep_history not in (None, True, False):
            raise InvalidURIError(f"keep_history must be true or false, not {keep_history!r}")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)):
            raise InvalidURIError(f"busy_timeout must be a number of seconds, not {busy_timeout!r}")
        if page_size not in _PAGE_SIZES:
            raise InvalidURIError(f"page_size must be a power of two from 512 to 65536, "
                                  f"not {page_size!r}")
        self._page_size = page_size
        self._path = os.path.abspath(path)
        self._uri = pathlib.Path(self._path).as_uri()
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._mirror_conns: weakref.WeakSet = weakref.WeakSet()  # searches' connections
        self._mirror_lock = threading.Lock()
        # A dead thread's reader (and its connection) goes away with the thread.
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._generation = 0  # bumped before others' commits are reported (see _renew)
        self._sweeper: threading.Timer | None = None
        self._sweeper_lock = threading.Lock()
        self._oid_lock = threading.Lock()
        self._init_record_cache()
        self._oid_next = self._oid_end = 0
        self._oid_block = _OID_BLOCK
        self._oid_conn: sqlite3.Connection | None = None
        self._pending: list[tuple[int, bytes]] = []  # others' commits found at vote
        self._pending_packed = 0
        self._voted_tid: bytes | None = None
        self._top_oid = -1  # the largest oid written by the transaction being committed
        self._ltid = z64
        self._writer: sqlite3.Connection | None = None
        self._poller: sqlite3.Connection | None = None
        _fork.track(self)
        try:
            meta = self._open(create, True if keep_history is None else bool(keep_history))
            self.keep_history = self._check_meta(meta, keep_history)
            self.supports_history = self.supports_undo = self.keep_history
            if not read_only:
                self._writer = self._connect(read_only=False)
                # WAL is a property of the file; put it back if a tool switched it off.
                if self._writer.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._writer.execute("PRAGMA journal_mode=WAL")
                if "mirror" in meta:  # a mirror made before moves into objects' rows now
                    self._upgrade_mirror(self._writer)
            self._poller = self._connect(read_only=True)
            self._open_blobs(self._path + ".blobs" if blob_dir is None else blob_dir, read_only)
            if not read_only:
                self._recover_blobs(self._writer)
            # data_version is read on the poller, which only sync() uses (under _lock),
            # never on the connection that commits: a statement of sync() running there
            # from another thread holds a read transaction on it, and SQLite then refuses
            # at once (SQLITE_BUSY_SNAPSHOT, or SQLITE_BUSY without waiting) the BEGIN
            # IMMEDIATE of a commit. Every commit changes it, this storage's own too:
            # those the next sync() finds already reported.
            self._versioned = self._poller
            self._data_version = self._versioned.execute("PRAGMA data_version").fetchone()[0]
            last = self._poller.execute(_LAST_TID).fetchone()[0]
        except sqlite3.Error as exc:
            self._close_connections()
            raise self._error(exc) from exc
        except BaseException:
            self._close_connections()
            raise
        self._ltid = _pack(last) if last else z64
        # The opening thread usually reads next: give it its reader now, with the schema
        # parsed (a new SQLite connection reads it at its first statement). An
        # optimization only: a damaged file is reported by the read that meets the damage.
        with contextlib.suppress(sqlite3.Error, StorageError):
            reader = self._reader()
            with reader.lock:
                reader.conn.execute(_LOAD_CURRENT, (-1,)).fetchall()

    # -- opening --------------------------------------------------------------------
    @property
    def _blobs_durable(self) -> bool:
        return self._synchronous != "off"

    def _recover_blobs(self, conn: sqlite3.Connection) -> None:
        """Remove the blob files of commits a crash interrupted (journaled, never
        committed), under the write lock: no commit of another process is between
        placing its files and committing then."""
        if not os.listdir(self._blobs().pending):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            def committed(tid: bytes) -> bool:
                return conn.execute(_TRANSACTION_OIDS, (_u(tid),)).fetchone() is not None
            self._blobs().recover(committed)
        finally:
            conn.execute("COMMIT")

    def _connect(self, read_only: bool, create: bool = False) -> sqlite3.Connection:
        mode = "ro" if read_only else ("rwc" if create else "rw")
        conn = sqlite3.connect(f"{self._uri}?mode={mode}", uri=True, timeout=self._busy_timeout,
                               isolation_level=None, check_same_thread=False,
                               cached_statements=256)
        pragmas = [f"mmap_size={int(self.mmap_size)}"]
        if not read_only:
            pragmas += [f"synchronous={self._synchronous}", "cache_size=-65536"]
        try:
            for pragma in pragmas:
                conn.execute(f"PRAGMA {pragma}")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- errors ---------------------------------------------------------------------
    def _error(self, exc: sqlite3.Error) -> StorageError:
        """The amphora error for a driver error: the one place they are translated."""
        if self._closed or (isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc)):
            return StorageError(f"{self.__name__} is closed")
        name = getattr(exc, "sqlite_errorname", "")
        text = str(exc)
        if name.startswith("SQLITE_READONLY") or "readonly database" in text:
            return ReadOnlyError(f"{self._path}: {text}")
        if (name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
                or "malformed" in text or "not a database" in text):
            return StorageFormatError(f"{self._path}: damaged or not an amphora database ({text})")
        if name == "SQLITE_BUSY_SNAPSHOT":  # refused at once, no wait: say so
            return StorageError(f"{self._path}: refused the write lock to a connection "
                                f"reading an older snapshot ({text}, {name})")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
            return StorageError(f"{self._path}: locked by another writer (waited up to "
                                f"{self._busy_timeout} s: {text})")
        return StorageError(f"{self._path}: {text}")

    def _corrupt(self, oid: bytes, tid: int) -> CorruptRecordError:
        return CorruptRecordError(f"{self._path}: the record of oid {oid_repr(oid)} written "
                                  f"by {tid_repr(_pack(tid))} is not bytes")

    def _reader(self) -> _Reader:
        """This thread's reader."""
        try:
            return self._local.reader
        except AttributeError:
            pass
        if self._closed:
            raise StorageError(f"{self.__name__} is closed")
        try:
            reader = _Reader(self._connect(read_only=True))
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        self._local.reader = reader
        with self._sweeper_lock:  # the sweeper copies the set under this lock
            self._readers.add(reader)
        return reader

    def _renew(self, reader: _Reader, before: int) -> None:
        """Give ``reader`` a snapshot that can answer reads before ``before`` (its lock held).

        A snapshot may serve a load only if it began after every commit this storage has
        reported: ``_generation`` is bumped before any report, so a snapshot whose
        generation is current misses nothing a caller can know of. Reads past
        ``lastTransaction()`` (``before`` beyond the horizon) run outside any snapshot.
        """
        conn = reader.conn
        if conn.in_transaction:
            conn.execute("COMMIT")
        reader.generation = -1
        generation, horizon = self._generation, _u(self._ltid) + 1
        if before <= horizon:
            conn.execute("BEGIN")  # the snapshot starts at the first read, after this point
            reader.generation, reader.horizon, reader.started = generation, horizon, monotonic()
            self._arm_sweeper()

    def _query(self, sql: str, params: Any = ()) -> list:
        """All rows of ``sql``, read now (outside any snapshot) on this thread's connection."""
        reader = self._reader()
        with reader.lock:
            try:
                if reader.conn.in_transaction:
                    reader.generation = -1
                    reader.conn.execute("COMMIT")
                return reader.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _arm_sweeper(self) -> None:
        with self._sweeper_lock:
            if self._sweeper is None and not self._closed:
                self._sweeper = threading.Timer(self.snapshot_age, self._sweep)
                self._sweeper.daemon = True
                self._sweeper.start()

    def _sweep(self) -> None:
        """End snapshots idle for ``snapshot_age``: an open snapshot keeps every process's
        checkpoints from recycling the write-ahead log, which would then grow."""
        with self._sweeper_lock:
            self._sweeper = None
            readers = list(self._readers)
        if self._closed:
            return
        now, pinned = monotonic(), False
        for reader in readers:
            if not reader.lock.acquire(blocking=False):
                pinned = True
                continue
            try:
                if reader.conn.in_transaction:
                    if now - reader.started >= self.snapshot_age:
                        reader.generation = -1
                        with _fork.quiet():  # (a thread of ours: see _fork)
                            reader.conn.execute("COMMIT")
                    else:
                        pinned = True
            except sqlite3.Error:
                pass  # closed meanwhile
            finally:
                reader.lock.release()
        if pinned:
            self._arm_sweeper()

    # -- reading --------------------------------------------------------------------
    def lastTransaction(self) -> bytes:
        with self._lock:
            return self._ltid

    def _load_before(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        """``loadBefore`` from the file (the record cache's, see CachedRecordsMixin)."""
        try:
            reader = self._local.reader
        except AttributeError:
            reader = self._reader()
        key = _unpack(oid)[0]
        before = _unpack(tid)[0]
        with reader.lock:
            try:
                if (reader.generation != self._generation or before > reader.horizon
                        or monotonic() - reader.started > self.snapshot_age):
                    self._renew(reader, before)
                conn = reader.conn
                row = conn.execute(_LOAD_CURRENT, (key,)).fetchone()
                if row is None:
                    raise ObjectNotFoundError(oid)
                if row[0] >= before:
                    row = conn.execute(_LOAD_REVISION_BEFORE, (key, before)).fetchone()
                    if row is None:
                        return None
                    start, end, data = row
                    end = _pack(end)
                else:
                    start, data = row
                    end = None
            except sqlite3.Error as exc:
                reader.generation = -1
                raise self._error(exc) from exc
        if data.__class__ is not bytes:
            raise self._corrupt(oid, start)
        if not data:  # a deletion record
            raise ObjectNotFoundError(oid)
        return data, _pack(start), end

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        """``loadBefore`` for many oids, one query per 500 (two if some changed since).

        A damaged record is left out, so that ``loadBefore`` reports it for its oid alone.
        """
        try:
            reader = self._local.reader
        except AttributeError:
            reader = self._reader()
        before_i = _unpack(before)[0]
        wanted = {_unpack(oid)[0]: oid for oid in oids}
        keys = list(wanted)
        found: dict[bytes, tuple[bytes, bytes, bytes | None]] = {}
        older: list[int] = []  # oids of objects changed since `before`
        with reader.lock:
            try:
                if (reader.generation != self._generation or before_i > reader.horizon
                        or monotonic() - reader.started > self.snapshot_age):
                    self._renew(reader, before_i)
                conn = reader.conn
                for i in range(0, len(keys), _BATCH):
                    chunk = _padded(keys[i:i + _BATCH])
                    sql = _LOAD_MANY_CURRENT_SQL[len(chunk)]
                    for key, tid, data in conn.execute(sql, (before_i, *chunk)):
                        if data.__class__ is bytes and data:
                            found[wanted[key]] = (data, _pack(tid), None)
                        elif data is None:
                            older.append(key)
                for chunk in _chunks(older):
                    sql = _LOAD_MANY_REVISIONS_SQL[len(chunk)]
                    for key, tid, end, data in conn.execute(sql, (*chunk, before_i)):
                        if data.__class__ is bytes and data:
                            found[wanted[key]] = (data, _pack(tid), _pack(end))
            except sqlite3.Error as exc:
                reader.generation = -1
                raise self._error(exc) from exc
        return found

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        rows = self._query(_LOAD_SERIAL, {"oid": _u(oid), "tid": _u(serial)})
        if not rows or rows[0][0] == b"":  # none, or a deletion record
            raise ObjectNotFoundError(oid)
        if rows[0][0].__class__ is not bytes:
            raise self._corrupt(oid, _u(serial))
        return rows[0][0]

    def history(self, oid: bytes, size: int | None = 1) -> list[dict[str, Any]]:
        limit = -1 if size is None else max(size, 1)
        rows = self._query(_HISTORY, {"oid": _u(oid), "size": limit})
        if not rows:
            raise ObjectNotFoundError(oid)
        entries = [history_entry(_pack(tid), user or b"", description or b"", extension or b"",
                                 length) for tid, length, user, description, extension in rows]
        return entries if size is None else entries[:max(size, 0)]

    def packed_through(self) -> bytes:
        """The largest tid of a transaction pack removed (``z64`` if none): transactions
        up to it may be missing from ``iterator`` and ``transaction_log``."""
        return _pack(self._query(_PACKED_THROUGH)[0][0] or 0)

    def _transaction_rows(self, low: int, high: int, limit: int) -> list:
        return self._query(_TRANSACTIONS, (low, high, limit))

    def _last_tid_int(self) -> int:
        return self._query(_LAST_TID)[0][0] or 0

    def _records_of(self, tid: int, oids: bytes) -> list[DataRecord]:
        """The records transaction ``tid`` wrote that are still stored, in store order."""
        wanted = _split(oids)
        keys = [_u(oid) for oid in wanted]
        datas: dict[int, bytes] = {}
        for chunk in _chunks(keys):
            sql = _RECORDS_OF_SQL[len(chunk)]
            datas.update(self._query(sql, (*chunk, tid, tid)))
        tid_bytes = _pack(tid)
        return [DataRecord(oid, tid_bytes, datas[key] or None)
                for oid, key in zip(wanted, keys) if key in datas]

    def __len__(self) -> int:
        return self._query(_COUNT_OBJECTS)[0][0]

    # -- undo (see amphora.storage.undo) ------------------------------------------------
    def _undo_horizon(self) -> int:
        """Transactions up to this tid (a pack's) cannot be undone."""
        rows = self._query(_UNDO_HORIZON)
        return rows[0][0] if rows else 0

    def _undo_log_rows(self, offset: int, limit: int) -> list[tuple[bytes, bytes, bytes, bytes]]:
        rows = self._query(_UNDO_LOG, (self._undo_horizon(), limit, offset))
        return [(_pack(tid), user, description, extension)
                for tid, user, description, extension in rows]

    def _undo_oids(self, tid: bytes) -> list[bytes] | None:
        rows = self._query(_TRANSACTION_OIDS, (_u(tid),))
        if not rows or _u(tid) <= self._undo_horizon():
            return None
        return _split(rows[0][0])

    def _undo_current(self, oid: bytes) -> tuple[bytes, bytes | None] | None:
        rows = self._query(_LOAD_CURRENT, (_u(oid),))
        return (_pack(rows[0][0]), rows[0][1] or None) if rows else None

    def _blob_size(self, oid: bytes, tid: bytes) -> int | None:
        if self._closed:
            return None  # a closed storage still names its files (as ZODB's do)
        try:
            rows = self._query(_BLOB_SIZE, (_u(oid), _u(tid)))
        except StorageError as exc:
            if "no such table" in str(exc):
                return None  # no blob committed yet (or by an older version)
            raise
        return rows[0][0] if rows else None

    def getSize(self) -> int:
        """The size in bytes of the file and its write-ahead log."""
        size = 0
        for path in (self._path, self._path + "-wal"):
            try:
                size += os.path.getsize(path)
            except OSError:
                pass
        return size

    # -- invalidations --------------------------------------------------------------
    def sync(self) -> None:
        """Report transactions committed by others since the last report.

        Each goes to ``wrapper.invalidate(tid, oids)`` in tid order before
        ``lastTransaction()`` returns it; if pack removed some of them unseen,
        ``wrapper.invalidateCache()`` is called first. Costs one ``PRAGMA data_version``
        when nothing changed since the last sync (and a query after this storage's own
        commits, which it finds already reported). Uses no connection a commit uses.
        """
        with self._lock:
            conn = self._poller
            if conn is None or self._closed:
                raise StorageError(f"{self.__name__} is closed")
            try:
                version = self._versioned.execute("PRAGMA data_version").fetchone()[0]
                if version == self._data_version:
                    return
                self._data_version = version  # read before the query: no commit is missed
                rows = conn.execute(_CHANGES_SINCE, (_u(self._ltid),)).fetchall()
                packed = conn.execute(_PACKED_THROUGH).fetchone()[0] if rows else 0
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            self._deliver(rows, packed)

    def _others_committed(self) -> None:
        self._generation += 1  # before anyone hears of them: snapshots must be renewed

    # -- writing --------------------------------------------------------------------
    def new_oid(self) -> bytes:
        """A new oid, unique across every process using the file (reserved in blocks)."""
        self._check_writable()
        with self._oid_lock:
            if self._oid_next >= self._oid_end:
                self._reserve_oids()
            oid = self._oid_next
            self._oid_next += 1
        return p64(oid)

    def new_oids(self, count: int) -> list[bytes]:
        self._check_writable()
        oids: list[bytes] = []
        with self._oid_lock:
            while len(oids) < count:
                if self._oid_next >= self._oid_end:
                    self._reserve_oids()
                first = self._oid_next
                self._oid_next = min(self._oid_end, first + count - len(oids))
                oids.extend(map(_pack, range(first, self._oid_next)))
        return oids

    def _reserve_oids(self) -> None:
        block = self._oid_block
        try:
            if self._oid_conn is None:
                self._oid_conn = self._connect(read_only=False)
                if self._synchronous in ("full", "extra"):
                    # A reservation needs no sync of its own: a commit that uses its oids
                    # comes later in the write-ahead log, and syncing it syncs the log up
                    # to there; a reservation lost with no such commit lost no oid in use.
                    self._oid_conn.execute("PRAGMA synchronous=normal")
            conn = self._oid_conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                first = conn.execute(_NEXT_OID).fetchone()[0]
                conn.execute(_SET_NEXT_OID, {"next": first + block})
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        self._oid_next, self._oid_end = first, first + block
        # A process that uses oids fast reserves bigger blocks (fewer write transactions);
        # unused oids of a block are simply never used.
        self._oid_block = min(block * 2, _OID_BLOCK_MAX)

    def _vote(self) -> None:
        conn = self._writer
        if conn is None:
            raise StorageError(f"{self.__name__} is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")  # SQLite's write lock, across processes
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            self._write(conn)
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error(exc) from exc
        except BaseException:
            self._rollback()
            raise

    def _write(self, conn: sqlite3.Connection) -> None:
        """Check conflicts and write the transaction, inside the write transaction."""
        stores = self._stores
        last = conn.execute(_LAST_TID).fetchone()[0] or 0
        # Oids and serials as the integers stored, converted all at once
        oids = list(stores)
        keys = _ints(b"".join(oids))
        reads = _ints(b"".join(map(self._serials.__getitem__, oids)))
        check_oids = list(self._checks)
        check_keys = _ints(b"".join(check_oids))
        # The committed serials of what was read. Objects new in this transaction (read
        # as z64) are not looked up: their rows are inserted, and an insert finds a row
        # some other transaction made with the same oid (the root, a restore).
        current = self._current_serials(
            conn, [key for key, read in zip(keys, reads) if read] + check_keys)
        committed_tid = current.get
        stale = [oid for oid, key, read in zip(oids, keys, reads)
                 if read and committed_tid(key, 0) != read]  # usually none
        committed = {oid: _pack(current[key])
                     for oid, key in zip(stale + check_oids,
                                         _ints(b"".join(stale)) + check_keys)
                     if key in current}

        def load_serial(oid: bytes, serial: bytes) -> bytes:  # in this write transaction
            rows = conn.execute(_LOAD_SERIAL, {"oid": _u(oid), "tid": _u(serial)}).fetchall()
            if not rows or rows[0][0].__class__ is not bytes:
                raise ObjectNotFoundError(oid)
            return rows[0][0]
        self._check_conflicts(committed, load_serial, stale)
        tid = self._next_tid(max(_pack(last), self._ltid))
        tid_i = _u(tid)
        sizes = self._place_blobs(tid)  # synced to disk before the records that refer to them
        if sizes:
            conn.execute(_CREATE_BLOB_SIZES)
            conn.executemany(_INSERT_BLOB_SIZE,
                             [(_u(oid), tid_i, size) for oid, size in sizes.items()])
        # in oid order: B-tree pages fill sequentially (denser file, less to write)
        # (None: an undo's deletion record, stored as empty data)
        replacing = sorted([(key, tid_i, data or b"") for key, read, data
                            in zip(keys, reads, stores.values()) if read])
        creating = sorted([(key, tid_i, data or b"") for key, read, data
                           in zip(keys, reads, stores.values()) if not read])
        archive = _ARCHIVE_CURRENT_SQL if self.keep_history else _RETAIN_CURRENT_SQL
        for chunk in _chunks([row[0] for row in replacing]):
            conn.execute(archive[len(chunk)], (tid_i, *chunk))
        if not self.keep_history:  # replaced revisions stay only while they may resolve conflicts
            horizon = pack_tid(max(tid_time(tid) - self.conflict_window, 0))
            conn.execute(_PRUNE_REPLACED, (_u(horizon),))
        upsert, insert = self._mirror_writes(conn) or _PLAIN_WRITES
        upsert(conn, replacing)
        try:
            insert(conn, creating)
        except sqlite3.IntegrityError:  # an object stored as new exists: a conflict
            found = self._current_serials(conn, [row[0] for row in creating])
            stale = [oid for oid, key, read in zip(oids, keys, reads)
                     if not read and key in found]
            self._check_conflicts({oid: _pack(found[_u(oid)]) for oid in stale},
                                  load_serial, stale)
            raise  # not reached: new objects are never merged
        user, description, extension = self._meta
        conn.execute(_INSERT_TRANSACTION, (tid_i, user, description, extension, b"".join(stores)))
        self._top_oid = max(keys) if keys else -1
        # Oids stored without new_oid (restores, the root) are never handed out; those
        # below the end of this process's block are not: next_oid is past it already.
        if self._top_oid >= self._oid_end:
            conn.execute(_SET_NEXT_OID, {"next": self._top_oid + 1})
        # Commits by others since our last sync: reported before ours, in tid order.
        ltid = _u(self._ltid)
        if last > ltid:
            self._pending = conn.execute(_CHANGES_SINCE, (ltid,)).fetchall()
            self._pending_packed = conn.execute(_PACKED_THROUGH).fetchone()[0]
        self._voted_tid = tid

    @staticmethod
    def _current_serials(conn: sqlite3.Connection, keys: list[int]) -> dict[int, int]:
        """oid -> committed tid of those of ``keys`` that are stored."""
        current: dict[int, int] = {}
        for chunk in _chunks(keys):
            current.update(conn.execute(_CURRENT_SERIALS_SQL[len(chunk)], chunk))
        return current

    def _rollback(self) -> None:
        conn = self._writer
        self._pending = []
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # a failed rollback leaves nothing committed either

    def _finish(self, func: Callable[[bytes], None] | None) -> bytes:
        tid = self._voted_tid
        conn = self._writer
        if conn is None or tid is None:
            raise StorageError(f"{self.__name__} is closed")
        try:
            conn.execute("COMMIT")  # the durability point
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error(exc) from exc
        self._settle_blobs()
        # The transaction is durable now: whatever happens below, the tid is published.
        self._generation += 1  # before anyone hears of it: snapshots must be renewed
        return self._publish(tid, func)

    def _stored_oids_up_to(self, top: int) -> None:
        with self._oid_lock:
            if self._oid_next <= top < self._oid_end:
                self._oid_next = top + 1

    def _abort(self) -> None:
        self._rollback()
        self._discard_blobs()

    # -- closing --------------------------------------------------------------------
    def _close_connections(self) -> None:
        self._close_mirror_connections()
        with self._sweeper_lock:
            if self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None
            readers, self._readers = list(self._readers), weakref.WeakSet()
        for reader in readers:
            with reader.lock:  # not while another thread is reading on it
                reader.conn.close()
        # The writer, closing last, checkpoints and removes the write-ahead log.
        conns = [self._poller, self._oid_conn, self._writer]
        self._poller = self._oid_conn = self._writer = None
        for conn in conns:
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass

    # -- after a fork -----------------------------------------------------------------
    def _kept_open(self) -> list[sqlite3.Connection | None]:
        """Every connection this storage keeps open (held across a fork, see _fork)."""
        conns = [reader.conn for reader in list(self._readers)]
        conns += [holder.conn for holder in list(self._mirror_conns)]
        return conns + [self._poller, self._oid_conn, self._writer]

    def _forked(self, kept: list) -> None:
        """In the child, at the fork (no other thread runs): connections of its own (the
        parent's are left as they are, never used or closed here: a read snapshot or lock
        SQLite believes held is not held by this process), and new locks,
        thread-locals and sweeper (the parent's threads that held or ran them are not
        here); the oids reserved and the commit in progress stay the parent's."""
        self._local = threading.local()
        self._readers = weakref.WeakSet()
        self._mirror_conns = weakref.WeakSet()
        self._mirror_lock = threading.Lock()
        self._sweeper = None
        self._sweeper_lock = threading.Lock()
        self._oid_lock = threading.Lock()
        self._oid_next = self._oid_end = 0
        self._oid_conn = self._writer = self._poller = None
        self._pending = []
        self._voted_tid = None
        self._generation += 1
        self._record_cache_forked()
        self._forget_commit_after_fork()
        if self._closed:
            return
        try:
            if not self._read_only:
                self._writer = self._connect(read_only=False)
            self._poller = self._connect(read_only=True)
        except sqlite3.Error:
            self._closed = True  # its use raises "closed" rather than a hang
            return
        self._versioned = self._poller
        self._data_version = -1  # the next sync looks for commits

