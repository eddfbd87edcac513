"""Packing an SQLite storage: dropping old revisions, garbage and emptied transactions.

Private: a part of :class:`amphora.storage.sqlite.SQLiteStorage` (see :class:`PackMixin`).
"""
from __future__ import annotations

import sqlite3
from typing import Callable, Iterable

from amphora.serialize import references as record_references
from amphora.storage.sql.keys import _pack, _split, _u
from amphora.storage.sqlite.statements import (_CHANGES_SINCE, _LAST_TID, _LOAD_CURRENT,
                                          _LOAD_SERIAL, _PRUNE_REPLACED)
from amphora.storage.base import oids_to_keep, pack_tid, reachable, refuse_stale

__all__ = ["PackMixin"]

# -- pack -----------------------------------------------------------------------------------
_SUPERSEDED = "SELECT oid, tid FROM revisions WHERE end_tid <= ?"  # replaced by pack time
_DELETE_REVISION = "DELETE FROM revisions WHERE oid = ? AND tid = ?"
_ALL_DATA = ("SELECT data FROM objects WHERE oid = :oid"
             " UNION ALL SELECT data FROM revisions WHERE oid = :oid")
_FIRST_TIDS = ("SELECT o.oid, min(o.tid, coalesce((SELECT min(r.tid) FROM revisions AS r"
               " WHERE r.oid = o.oid), o.tid)) FROM objects AS o")
_DELETE_OBJECT = "DELETE FROM objects WHERE oid = ?"
_DELETE_REVISIONS = "DELETE FROM revisions WHERE oid = ?"
_DELETE_REPLACED = "DELETE FROM replaced WHERE oid = ?"
_RECORD_EXISTS = ("SELECT 1 FROM objects WHERE oid = :oid AND tid = :tid"
                  " UNION ALL SELECT 1 FROM revisions WHERE oid = :oid AND tid = :tid LIMIT 1")
_TIDS_OF = ("SELECT tid FROM objects WHERE oid = :oid UNION ALL SELECT tid FROM revisions"
            " WHERE oid = :oid UNION ALL SELECT tid FROM replaced WHERE oid = :oid")
_PRUNE_BLOB_SIZES = (
    "DELETE FROM blob_sizes WHERE tid <= :last AND NOT EXISTS (SELECT 1 FROM objects AS o"
    " WHERE o.oid = blob_sizes.oid AND o.tid = blob_sizes.tid) AND NOT EXISTS (SELECT 1"
    " FROM revisions AS r WHERE r.oid = blob_sizes.oid AND r.tid = blob_sizes.tid)"
    " AND NOT EXISTS (SELECT 1 FROM replaced AS p WHERE p.oid = blob_sizes.oid"
    " AND p.tid = blob_sizes.tid)")
_HAS_BLOB_SIZES = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blob_sizes'"
_OLD_TRANSACTIONS = "SELECT tid, oids FROM transactions WHERE tid < ? ORDER BY tid"
_DELETE_TRANSACTION = "DELETE FROM transactions WHERE tid = ?"
# transactions up to the last pack's cutoff cannot be undone (see amphora.storage.undo)
_SET_UNDO_HORIZON = ("INSERT INTO amphora_meta (key, value) VALUES ('undo_horizon', ?)"
                     " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)")
_SET_PACKED_THROUGH = ("UPDATE amphora_meta SET value = :packed"
                       " WHERE key = 'packed_through' AND value < :packed")

_CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"
_FREE_PAGES = "PRAGMA freelist_count"
_PAGE_SIZE = "PRAGMA page_size"
_VACUUM = "VACUUM"

_DELETE_CHUNK = 1000                 # rows deleted per write transaction while packing


class PackMixin:
    """Part of :class:`~amphora.storage.sqlite.SQLiteStorage`: ``pack``.

    Uses these attributes of the storage: ``_check_writable()``,
    ``_connect(read_only)`` (a new connection, closed here) and ``_error(exc)`` (the
    amphora error for a driver error).
    """

    def pack(self, pack_time: float | bytes, referencesf: Callable | None = None,
             gc: bool = True, reachable: Iterable[bytes] | None = None,
             through: bytes | None = None) -> None:
        """Drop revisions replaced at or before ``pack_time`` and, with ``gc``, objects no
        kept revision reaches from the root (objects whose first kept revision is after
        ``pack_time`` stay), or, given ``reachable``, the objects outside it (see
        :meth:`amphora.storage.base.Storage.pack`). Other threads and processes keep
        reading and committing: the write lock is taken only for short deletes.
        Transaction rows left without records (before ``pack_time``, except the last) are
        removed too."""
        self._check_writable()
        refs_of = referencesf or record_references
        kept = None if reachable is None or not gc else oids_to_keep(reachable, through)
        reader = writer = None
        try:
            reader = self._connect(read_only=True)
            writer = self._connect(read_only=False)
            last = reader.execute(_LAST_TID).fetchone()[0] or 0
            # Nothing committed from here on has a tid at or below `cutoff`.
            cutoff = min(_u(pack_tid(pack_time)), last)
            doomed = reader.execute(_SUPERSEDED, (cutoff,)).fetchall()
            self._delete_in_chunks(writer, _DELETE_REVISION, doomed)
            writer.execute(_PRUNE_REPLACED, (cutoff + 1,))  # history-free: the same rule
            if kept is not None:
                self._delete_unreachable(writer, cutoff, kept, through)
            elif gc:
                self._collect_garbage(reader, writer, cutoff, refs_of)
            self._trim_transactions(reader, writer, min(cutoff, last))
            writer.execute(_SET_UNDO_HORIZON, (cutoff,))
            # the files of the revisions removed (the commits since `last` are left alone)
            self._pack_blobs(lambda oid: {_pack(tid) for (tid,) in reader.execute(
                _TIDS_OF, {"oid": _u(oid)})}, _pack(last))
            if writer.execute(_HAS_BLOB_SIZES).fetchone():
                writer.execute(_PRUNE_BLOB_SIZES, {"last": last})
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            for conn in (reader, writer):
                if conn is not None:
                    conn.close()

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the file and empty it (SQLite's ``TRUNCATE``
        checkpoint), so that the file alone holds the database and its size is the
        database's. False when a reader elsewhere kept part of the log in use."""
        self._check_writable()
        writer = self._connect(read_only=False)
        try:
            busy, _, _ = writer.execute(_CHECKPOINT).fetchone()
            return not busy
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            writer.close()

    def free_bytes(self) -> int:
        """The bytes of the file's free pages (left by deletes, a pack's for one), which
        SQLite reuses for new data but does not give back to the file system until
        :meth:`vacuum`."""
        reader = self._connect(read_only=True)
        try:
            pages = reader.execute(_FREE_PAGES).fetchone()[0]
            return pages * reader.execute(_PAGE_SIZE).fetchone()[0]
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            reader.close()

    def vacuum(self) -> None:
        """Rewrite the file without its free pages (SQLite's ``VACUUM``), then checkpoint.
        Commits elsewhere wait meanwhile: the rewrite takes the write lock throughout."""
        self._check_writable()
        writer = self._connect(read_only=False)
        try:
            writer.execute(_VACUUM)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            writer.close()
        self.checkpoint()

    def _delete_in_chunks(self, writer: sqlite3.Connection, sql: str, rows: list) -> None:
        for i in range(0, len(rows), _DELETE_CHUNK):
            writer.execute("BEGIN IMMEDIATE")
            try:
                writer.executemany(sql, rows[i:i + _DELETE_CHUNK])
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise

    def _collect_garbage(self, reader: sqlite3.Connection, writer: sqlite3.Connection,
                         cutoff: int, refs_of: Callable) -> None:
        def references(conn: sqlite3.Connection, key: int) -> list[int]:
            found: list[bytes] = []
            for (data,) in conn.execute(_ALL_DATA, {"oid": key}):
                if data:  # not a deletion record
                    refs_of(data, found)
            return [_u(oid) for oid in found if len(oid) == 8]

        reader.execute("BEGIN")  # one snapshot for the whole walk
        try:
            seen = reader.execute(_LAST_TID).fetchone()[0] or 0
            if reader.execute(_LOAD_CURRENT, (0,)).fetchone() is None:
                live: set[int] = set()
            else:
                live = reachable([0], lambda key: references(reader, key))
            garbage = {key for key, first in reader.execute(_FIRST_TIDS)
                       if first <= cutoff and key not in live}
        finally:
            reader.execute("COMMIT")
        if not garbage:
            return
        writer.execute("BEGIN IMMEDIATE")
        try:
            # Commits since the walk may refer to garbage again: it stays, with what it reaches.
            referred: set[int] = set()
            for tid, oids in writer.execute(_CHANGES_SINCE, (seen,)).fetchall():
                for oid in _split(oids):
                    for (data,) in writer.execute(_LOAD_SERIAL, {"oid": _u(oid), "tid": tid}):
                        referred.update(_u(ref) for ref in refs_of(data) if len(ref) == 8)
            garbage -= reachable(referred & garbage, lambda key: [
                ref for ref in references(writer, key) if ref in garbage])
            self._delete_objects(writer, [(key,) for key in garbage])
            writer.execute("COMMIT")
        except BaseException:
            writer.execute("ROLLBACK")
            raise

    def _delete_unreachable(self, writer: sqlite3.Connection, cutoff: int,
                            kept: set[bytes], through: bytes) -> None:
        """Delete the objects outside ``kept`` that existed at ``cutoff``, under the write
        lock, unless a transaction after ``through`` was committed (StaleReachableError)."""
        live = {_u(oid) for oid in kept}
        writer.execute("BEGIN IMMEDIATE")
        try:
            refuse_stale(self.__name__, _pack(writer.execute(_LAST_TID).fetchone()[0] or 0),
                         through)
            rows = [(key,) for key, first in writer.execute(_FIRST_TIDS)
                    if first <= cutoff and key not in live]
            self._delete_objects(writer, rows)
            writer.execute("COMMIT")
        except BaseException:
            writer.execute("ROLLBACK")
            raise

    @staticmethod
    def _delete_objects(writer: sqlite3.Connection, rows: list[tuple[int]]) -> None:
        writer.executemany(_DELETE_OBJECT, rows)
        writer.executemany(_DELETE_REVISIONS, rows)
        writer.executemany(_DELETE_REPLACED, rows)

    def _trim_transactions(self, reader: sqlite3.Connection, writer: sqlite3.Connection,
                           before: int) -> None:
        """Remove transaction rows below ``before`` whose records are all gone."""
        empty, packed = [], 0
        for tid, oids in reader.execute(_OLD_TRANSACTIONS, (before,)).fetchall():
            if not any(reader.execute(_RECORD_EXISTS, {"oid": _u(oid), "tid": tid}).fetchone()
                       for oid in _split(oids)):
                empty.append((tid,))
                if oids:
                    packed = max(packed, tid)
        if packed:  # instances that had not seen these cannot learn their oids any more
            writer.execute(_SET_PACKED_THROUGH, {"packed": packed})
        self._delete_in_chunks(writer, _DELETE_TRANSACTION, empty)
