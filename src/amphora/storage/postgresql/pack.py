"""Packing a PostgreSQL storage: old revisions, garbage and emptied transactions, in SQL.

Private: a part of :class:`amphora.storage.postgresql.PostgreSQLStorage` (see
:class:`PackMixin`).

Garbage collection reads no record: every record carries its references (``refs``, filled
at vote), so what the root reaches is one recursive query. Records whose references could
not be read at vote (``refs`` is NULL: not a ZODB pickle) are scanned with the
``referencesf`` given to :meth:`~PackMixin.pack` first; if it fails, pack fails before
deleting anything. Given the objects to keep instead (``reachable``: an encrypted
database, whose records the server cannot read), they are copied into a temporary table
under the commit lock and the others that existed at the pack time are deleted.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from amphora.serialize import references as record_references
from amphora.storage.sql.keys import _pack, _u
from amphora.storage.postgresql.schema import _LAST_TID
from amphora.storage.base import oids_to_keep, pack_tid, refuse_stale

__all__ = ["PackMixin"]

_DELETE_SUPERSEDED = "DELETE FROM revisions WHERE end_tid <= %s"
_DELETE_REPLACED_BEFORE = "DELETE FROM replaced WHERE end_tid <= %s"
_UNSCANNED = ("SELECT 'o', oid, tid, data FROM objects WHERE refs IS NULL"
              " UNION ALL SELECT 'r', oid, tid, data FROM revisions WHERE refs IS NULL")
_SET_OBJECT_REFS = "UPDATE objects SET refs = %s::bigint[] WHERE oid = %s AND tid = %s"
_SET_REVISION_REFS = "UPDATE revisions SET refs = %s::bigint[] WHERE oid = %s AND tid = %s"

# Objects no kept revision reaches from the root (oid 0), whose first kept revision is at
# or before the pack time (%s): a snapshot's candidates, checked again under the lock.
_FIND_GARBAGE = """
CREATE TEMPORARY TABLE pack_garbage AS
WITH RECURSIVE live(oid) AS (
    SELECT oid FROM objects WHERE oid = 0
  UNION
    SELECT ref FROM live,
      LATERAL (SELECT refs FROM objects WHERE oid = live.oid
               UNION ALL SELECT refs FROM revisions WHERE oid = live.oid) AS k,
      unnest(k.refs) AS ref
)
SELECT o.oid FROM objects AS o
WHERE NOT EXISTS (SELECT 1 FROM live WHERE live.oid = o.oid)
  AND least(o.tid, (SELECT min(r.tid) FROM revisions AS r WHERE r.oid = o.oid)) <= %s
"""
# Given the objects to keep (pack's ``reachable``), under the commit lock: the others
# whose first kept revision is at or before the pack time (%s).
_CREATE_KEPT = "CREATE TEMPORARY TABLE pack_kept (oid bigint PRIMARY KEY)"
_COPY_KEPT = "COPY pack_kept (oid) FROM STDIN"
_UNKEPT_GARBAGE = """
CREATE TEMPORARY TABLE pack_garbage AS
SELECT o.oid FROM objects AS o
WHERE NOT EXISTS (SELECT 1 FROM pack_kept AS k WHERE k.oid = o.oid)
  AND least(o.tid, (SELECT min(r.tid) FROM revisions AS r WHERE r.oid = o.oid)) <= %s
"""
# Under the commit lock: candidates that records committed since the walk (tid > %s)
# refer to stay, with every candidate they reach.
_RESCUE = """
WITH RECURSIVE rescued(oid) AS (
    SELECT ref FROM (SELECT refs FROM objects WHERE tid > %(seen)s
                     UNION ALL SELECT refs FROM revisions WHERE tid > %(seen)s) AS k,
      unnest(k.refs) AS ref
    WHERE ref IN (SELECT oid FROM pack_garbage)
  UNION
    SELECT ref FROM rescued,
      LATERAL (SELECT refs FROM objects WHERE oid = rescued.oid
               UNION ALL SELECT refs FROM revisions WHERE oid = rescued.oid) AS k,
      unnest(k.refs) AS ref
    WHERE ref IN (SELECT oid FROM pack_garbage)
)
DELETE FROM pack_garbage WHERE oid IN (SELECT oid FROM rescued)
"""
_DELETE_GARBAGE = (
    "DELETE FROM objects WHERE oid IN (SELECT oid FROM pack_garbage)",
    "DELETE FROM revisions WHERE oid IN (SELECT oid FROM pack_garbage)",
    "DELETE FROM replaced WHERE oid IN (SELECT oid FROM pack_garbage)",
)
# Transaction rows before %s without any record left (the last one always stays).
_TRIM_TRANSACTIONS = """
WITH gone AS (
  DELETE FROM transactions AS t WHERE t.tid < %s
    AND NOT EXISTS (SELECT 1 FROM objects AS o WHERE o.tid = t.tid)
    AND NOT EXISTS (SELECT 1 FROM revisions AS r WHERE r.tid = t.tid)
  RETURNING t.tid, length(t.oids) AS size
)
SELECT coalesce(max(tid) FILTER (WHERE size > 0), 0) FROM gone
"""
# transactions up to the last pack's cutoff cannot be undone (see amphora.storage.undo)
_SET_UNDO_HORIZON = ("INSERT INTO amphora_meta (key, value) VALUES ('undo_horizon', %s::text)"
                     " ON CONFLICT (key) DO UPDATE SET value = greatest("
                     "amphora_meta.value::bigint, excluded.value::bigint)::text")
_SET_PACKED_THROUGH = ("UPDATE amphora_meta SET value = %s::text WHERE key = 'packed_through'"
                       " AND value::bigint < %s")


class PackMixin:
    """Part of :class:`~amphora.storage.postgresql.PostgreSQLStorage`: ``pack``.

    Uses these attributes of the storage: ``_check_writable()``, ``_connect(autocommit)``
    (a new connection, closed here), ``_commit_lock_sql`` (the statement that takes the
    commit lock in a transaction) and ``_error(exc)``.
    """

    def pack(self, pack_time: float | bytes, referencesf: Callable | None = None,
             gc: bool = True, reachable: Iterable[bytes] | None = None,
             through: bytes | None = None) -> None:
        """Drop revisions replaced at or before ``pack_time`` and, with ``gc``, objects no
        kept revision reaches from the root (objects whose first kept revision is after
        ``pack_time`` stay), or, given ``reachable``, the objects outside it (see
        :meth:`amphora.storage.base.Storage.pack`). Other threads and processes keep
        reading and committing: the commit lock is held only while garbage is checked
        again and deleted. Transaction rows left without records (before ``pack_time``,
        except the last) are removed too, and so are the blob chunks of the revisions
        removed (with this storage's cached files of them)."""
        import psycopg
        self._check_writable()
        refs_of = referencesf or record_references
        kept = None if reachable is None or not gc else oids_to_keep(reachable, through)
        conn = None
        try:
            conn = self._connect(autocommit=True)
            last = conn.execute(_LAST_TID).fetchone()[0]
            # Nothing committed from here on has a tid at or below `cutoff`.
            cutoff = min(_u(pack_tid(pack_time)), last)
            conn.execute(_DELETE_SUPERSEDED, (cutoff,))
            conn.execute(_DELETE_REPLACED_BEFORE, (cutoff,))  # history-free: the same rule
            if kept is not None:
                self._delete_unreachable(conn, cutoff, kept, through)
            elif gc:
                self._scan_unscanned(conn, refs_of)
                self._collect_garbage(conn, cutoff)
            self._pack_blob_chunks(conn, cutoff)
            packed = conn.execute(_TRIM_TRANSACTIONS, (min(cutoff, last),)).fetchone()[0]
            if packed:  # instances that had not seen these cannot learn their oids any more
                conn.execute(_SET_PACKED_THROUGH, (packed, packed))
            conn.execute(_SET_UNDO_HORIZON, (cutoff,))
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        finally:
            if conn is not None:
                conn.close()

    def _delete_unreachable(self, conn: Any, cutoff: int, kept: set[bytes],
                            through: bytes) -> None:
        """Delete the objects outside ``kept`` that existed at ``cutoff``, under the commit
        lock, unless a transaction after ``through`` was committed (StaleReachableError)."""
        try:
            with conn.transaction():
                conn.execute(self._commit_lock_sql)
                refuse_stale(self.__name__, _pack(conn.execute(_LAST_TID).fetchone()[0]),
                             through)
                conn.execute(_CREATE_KEPT)
                with conn.cursor().copy(_COPY_KEPT) as copy:
                    for oid in kept:
                        copy.write_row((_u(oid),))
                conn.execute(_UNKEPT_GARBAGE, (cutoff,))
                for statement in _DELETE_GARBAGE:
                    conn.execute(statement)
        finally:
            conn.execute("DROP TABLE IF EXISTS pack_garbage")
            conn.execute("DROP TABLE IF EXISTS pack_kept")

    @staticmethod
    def _scan_unscanned(conn: Any, refs_of: Callable) -> None:
        """Fill ``refs`` of records written without them, with ``refs_of``."""
        rows = conn.execute(_UNSCANNED, binary=True).fetchall()
        for table, oid, tid, data in rows:
            # (a deletion record refers to nothing)
            refs = [_u(ref) for ref in refs_of(bytes(data)) if len(ref) == 8] if data else []
            sql = _SET_OBJECT_REFS if table == "o" else _SET_REVISION_REFS
            conn.execute(sql, (refs, oid, tid))

    def _collect_garbage(self, conn: Any, cutoff: int) -> None:
        with conn.transaction():  # the walk: one snapshot, no lock
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            seen = conn.execute(_LAST_TID).fetchone()[0]
            conn.execute(_FIND_GARBAGE, (cutoff,))
        try:
            with conn.transaction():
                conn.execute(self._commit_lock_sql)
                conn.execute(_RESCUE, {"seen": seen})
                for statement in _DELETE_GARBAGE:
                    conn.execute(statement)
        finally:
            conn.execute("DROP TABLE IF EXISTS pack_garbage")
