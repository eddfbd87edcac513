"""The PostgreSQL storage: the path past one machine (replication, managed services).

Any number of processes on any number of machines share one database; PostgreSQL's MVCC
lets them read while one of them commits. Uses psycopg 3 (``pip install
amphora[postgresql]``).

After a fork, a storage copied into the child lets go of every session of the parent at
the fork, without a message sent (closing a psycopg connection would send ``Terminate``
on the socket the parent still uses), and opens sessions of its own as it needs them.
"""
from __future__ import annotations

import re
import time
import threading
import weakref
from itertools import accumulate
from typing import Any, Callable, Iterable

from amphora.errors import (ConflictError, CorruptRecordError, InvalidURIError,
                            ObjectNotFoundError, PostgreSQLConnectionError, ReadOnlyError,
                            StorageError, StorageFormatError)
from amphora.serialize import references as record_references
from amphora.serialize import resolvable, resolve_record
from amphora.symbolic import counter
from amphora.storage import _fork
from amphora.storage.postgresql.blobs import ChunkedBlobMixin
from amphora.storage.postgresql.mirror import (_MIRROR_KEY, MirrorMixin, check_role,
                                               documents_of)
from amphora.storage.postgresql.pack import PackMixin
from amphora.storage.postgresql import wire
# FORMAT and SCHEMA_VERSION are importable from here too.
from amphora.storage.sql.keys import _ints, _pack, _split, _u, _unpack
from amphora.storage.postgresql.schema import FORMAT, SCHEMA_VERSION, SchemaMixin  # noqa: F401
from amphora.storage.postgresql.schema import _LAST_TID
from amphora.storage.sql.log import TransactionLogMixin
from amphora.storage.recordcache import CachedRecordsMixin
from amphora.storage.undo import UndoMixin
from amphora.storage.base import (DataRecord, StorageBase, history_entry,
                                  pack_tid)
from amphora.utils import tid_time, z64

__all__ = ["PostgreSQLStorage", "PostgreSQLConnectionError"]

# -- reading --------------------------------------------------------------------------------
# One statement (one snapshot) answers a loadBefore: the current row, and the revision
# current before %(b)s when the current row is not older than that.
_LOAD_BEFORE = """
SELECT o.tid, CASE WHEN o.tid < %(b)s THEN o.data END, r.tid, r.end_tid, r.data
FROM objects AS o LEFT JOIN LATERAL (
  SELECT tid, end_tid, data FROM revisions
  WHERE oid = o.oid AND tid < %(b)s AND o.tid >= %(b)s ORDER BY tid DESC LIMIT 1
) AS r ON true
WHERE o.oid = %(o)s"""
# ... and, in the same round trip, the current records that the asked ones refer to and
# that refer to none (up to %(n)s of them, not asked for, unchanged since before %(b)s):
# the items a reader of a container asks for next, the values of a BTree's buckets. They
# come back with "ahead" true and go to the record cache (see load_many). A record that
# refers to others (a bucket, a sub-container) is not read ahead: the reader asks for it,
# and that query brings what it refers to.
_LOAD_MANY = """
WITH asked AS (SELECT oid, tid, data, refs FROM objects WHERE oid = ANY(%(o)s::bigint[]))
SELECT a.oid, a.tid, CASE WHEN a.tid < %(b)s THEN a.data END, r.tid, r.end_tid, r.data,
       false AS ahead
FROM asked AS a LEFT JOIN LATERAL (
  SELECT tid, end_tid, data FROM revisions
  WHERE oid = a.oid AND tid < %(b)s AND a.tid >= %(b)s ORDER BY tid DESC LIMIT 1
) AS r ON true
UNION ALL
SELECT e.oid, e.tid, e.data, NULL, NULL, NULL, true
FROM objects AS e
WHERE e.oid = ANY((SELECT (array_agg(ref))[1:%(n)s]
                   FROM asked, unnest(asked.refs) AS ref WHERE asked.tid < %(b)s)::bigint[])
  AND e.tid < %(b)s AND e.oid <> ALL(%(o)s::bigint[]) AND coalesce(cardinality(e.refs), 0) = 0"""
_LOAD_SERIAL = """
SELECT data FROM objects WHERE oid = %(o)s AND tid = %(t)s
UNION ALL SELECT data FROM revisions WHERE oid = %(o)s AND tid = %(t)s
UNION ALL SELECT data FROM replaced WHERE oid = %(o)s AND tid = %(t)s LIMIT 1"""
# The states a merge under the commit lock reads, in one round trip (with the lock's, or
# after it for records replaced while the commit waited for it): the revisions the
# writers started from (oid, tid pairs) and the current ones
_STATES = """
WITH r(oid, tid) AS (SELECT * FROM unnest(%(o)s::bigint[], %(t)s::bigint[]))
SELECT oid, tid, data FROM objects WHERE oid = ANY(%(o)s::bigint[])
UNION ALL SELECT oid, tid, data FROM revisions WHERE (oid, tid) IN (SELECT oid, tid FROM r)
UNION ALL SELECT oid, tid, data FROM replaced WHERE (oid, tid) IN (SELECT oid, tid FROM r)"""
_HISTORY = """
SELECT x.tid, length(x.data), t.username, t.description, t.extension FROM
 (SELECT tid, data FROM objects WHERE oid = %(o)s
  UNION ALL SELECT tid, data FROM revisions WHERE oid = %(o)s) AS x
 LEFT JOIN transactions AS t ON t.tid = x.tid ORDER BY x.tid DESC LIMIT %(n)s"""
_PACKED_THROUGH = "SELECT value::bigint FROM amphora_meta WHERE key = 'packed_through'"
# The n-th (from 1) of the 8-byte big-endian oids joined in a bytea, as a bigint
_OID_AT = "('x' || encode(substr({joined}, 8 * {n} - 7, 8), 'hex'))::bit(64)::bigint"
# The commits after the last one seen (%(l)s). The upper bound, always true, makes the
# planner's estimate a narrow range with or without the table's statistics: for a plain
# "tid > x" on a table not analyzed yet (a new database, before autovacuum gets to it)
# it estimates a third of the rows, and scans the table at every sync; and the generic
# plan of a prepared statement (see PostgreSQLStorage._connect) is the index scan.
_AFTER_LAST_SEEN = "tid > %(l)s AND tid <= 9223372036854775807"
# What sync reads, in one statement: the commits since the last one seen, each with the
# pack marker (read once: an initplan), and, when those commits wrote few records
# (%(k)s bytes of oids at most), the current records they wrote that are small (%(s)s
# bytes at most): rows with an oid. A hot spot's counter, replaced by another process,
# then needs no load of its own after the sync (see sync).
_CHANGES_SINCE = f"""
WITH t AS (SELECT tid, oids FROM transactions WHERE {_AFTER_LAST_SEEN})
SELECT tid, oids, ({_PACKED_THROUGH}), NULL::bigint FROM t
UNION ALL
SELECT o.tid, o.data, NULL, o.oid FROM objects AS o
WHERE o.oid = ANY(ARRAY(
    SELECT {_OID_AT.format(joined="t.oids", n="n")}
    FROM t, generate_series(1, length(t.oids) / 8) AS n
    WHERE (SELECT sum(length(oids)) FROM t) <= %(k)s))
  AND length(o.data) BETWEEN 1 AND %(s)s"""
# ... without the records, for a storage whose record cache holds none and for the first
# sync of a server session (a storage just opened): on a new session, planning the
# statement above costs about a millisecond more, more than the records could save
_COMMITS_SINCE = (f"SELECT tid, oids, ({_PACKED_THROUGH}), NULL::bigint FROM transactions"
                  f" WHERE {_AFTER_LAST_SEEN}")
#: sync brings the new records of others' commits when they changed at most this many
#: objects, those of at most _SYNCED_BYTES bytes (and keeps those the cache held)
_SYNCED_OIDS = 32
_SYNCED_BYTES = 4096
_TRANSACTIONS = ("SELECT tid, username, description, extension, oids FROM transactions"
                 " WHERE tid >= %s AND tid <= %s ORDER BY tid LIMIT %s")
_RECORDS_OF = """
SELECT oid, data FROM objects WHERE oid = ANY(%(o)s::bigint[]) AND tid = %(t)s
UNION ALL SELECT oid, data FROM revisions WHERE oid = ANY(%(o)s::bigint[]) AND tid = %(t)s"""
_COUNT_OBJECTS = "SELECT count(*) FROM objects WHERE length(data) > 0"  # not deletions
# -- undo (see amphora.storage.undo): transactions up to the last pack's cutoff are not
# undoable (the revisions before them may be gone)
_UNDO_HORIZON = ("coalesce((SELECT value::bigint FROM amphora_meta"
                 " WHERE key = 'undo_horizon'), 0)")
_UNDO_LOG = ("SELECT tid, username, description, extension FROM transactions"
             f" WHERE tid > {_UNDO_HORIZON} ORDER BY tid DESC LIMIT %s OFFSET %s")
_UNDO_OIDS = f"SELECT oids FROM transactions WHERE tid = %s AND tid > {_UNDO_HORIZON}"
_CURRENT_RECORD = "SELECT tid, data FROM objects WHERE oid = %s"
_SIZE = ("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class AS c"
         " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
         " WHERE n.nspname = current_schema() AND c.relkind = 'r'")

# -- writing --------------------------------------------------------------------------------
_COMMIT_LOCK_KEY = "hashtext('amphora-commit:' || current_schema())"
# Pack's and the mirror's changes hold the commit lock to the end of their transaction
_COMMIT_LOCK = f"SELECT pg_advisory_xact_lock({_COMMIT_LOCK_KEY})"
# A commit holds it as a session lock, released by the statement sent after its COMMIT
# or ROLLBACK (_UNLOCK): a commit that learns, once it has the lock, that it lost a race
# gives the lock back in the statement that finds it (see _GIVE_BACK), not a round trip
# later with its ROLLBACK. (Where many queue for a hot spot, every loser in the queue
# used to hold the lock for that round trip.) amphora.locked says, until the end of the
# transaction, that the lock was taken.
_TAKE_COMMIT_LOCK = (f"concat(pg_advisory_lock({_COMMIT_LOCK_KEY}),"
                     " set_config('amphora.locked', 'on', true))")
_TAKE_COMMIT_LOCK_NOW = f"SELECT {_TAKE_COMMIT_LOCK}"
_UNLOCK = "SELECT pg_advisory_unlock_all()"
_KEEPS = {"o": "{}", "t": "{}", "m": "{}"}  # (_GIVE_BACK's parameters: never given back)
_OBJECTS_SHARED = "LOCK TABLE objects IN ACCESS SHARE MODE"
_OBJECTS_EXCLUSIVE = "LOCK TABLE objects IN ACCESS EXCLUSIVE MODE"
# The conflict check before the lock, in one statement (one snapshot): the last tid then
# (oid NULL) and whether the commit lock was taken, which it is only if every record this
# transaction read (an oid and the tid read, 0 for none) is still current, then each
# record that is not, with its committed tid (NULL: gone). A transaction that lost a race
# learns it without queueing for the lock. Under the lock, only the commits after that
# last tid are looked at (their rows in ``transactions`` name what they wrote): no serial
# is read twice. (An object pack deletes while this commit waits for the lock is not
# seen: it was garbage, and the commit's write of it makes it a current record again.)
# A stale record comes with the states a merge reads: the committed one and the one its
# writer started from (from ``revisions``, or ``replaced`` in history-free mode; by mode),
# so that a conflict that merges costs no round trip more.
# A record marked as one that merges (the third array: a small commit's stores of a class
# with ``_p_resolveConflict``) does not keep the lock from being taken when it is stale:
# its merge is then done under the lock, with the states read under it (_UNDER_LOCK), a
# round trip earlier than a merge before the lock and a second check would take.
_COMMIT_LOCK_IF_CURRENT = {keep_history: f"""
WITH stale AS MATERIALIZED (
  SELECT r.oid, o.tid, o.data, v.data AS old, r.merges
  FROM unnest(%s::bigint[], %s::bigint[], %s::boolean[]) AS r(oid, tid, merges)
  LEFT JOIN objects AS o ON o.oid = r.oid
  LEFT JOIN {table} AS v ON v.oid = r.oid AND v.tid = r.tid
  WHERE o.tid IS DISTINCT FROM nullif(r.tid, 0))
SELECT NULL::bigint, coalesce(max(tid), 0),
       (SELECT {_TAKE_COMMIT_LOCK}::text
        WHERE NOT EXISTS (SELECT FROM stale WHERE NOT merges)) IS NOT NULL,
       NULL::bytea, NULL::bytea
FROM transactions
UNION ALL SELECT oid, tid, NULL, data, old FROM stale""" for keep_history, table in (
    (True, "revisions"), (False, "replaced"))}
_CURRENT_SERIALS = "SELECT oid, tid FROM objects WHERE oid = ANY(%s::bigint[])"

# Under the lock, with a snapshot taken once it is held: if a record the commit read (the
# oids, tids and merge flags of _COMMIT_LOCK_IF_CURRENT: %(o)s, %(t)s, %(m)s) was replaced
# meanwhile and does not merge, the lock is given back (true; NULL otherwise): the commit
# has lost, and raises its ConflictError. (A row pack deleted meanwhile is not a
# conflict, as in the check before the lock.)
_GIVE_BACK = f"""(SELECT pg_advisory_unlock({_COMMIT_LOCK_KEY})
         AND set_config('amphora.locked', 'off', true) = 'off'
 WHERE current_setting('amphora.locked', true) = 'on' AND EXISTS (
  SELECT FROM unnest(%(o)s::bigint[], %(t)s::bigint[], %(m)s::boolean[]) AS r(oid, tid, merges)
  JOIN objects AS o ON o.oid = r.oid
  WHERE NOT r.merges AND o.tid <> r.tid))"""
# Read once the lock is taken, in its round trip and one statement: the pack marker, the
# mirror's key and whether the lock was given back (first row, tid NULL), then the commits
# since the last sync (%(l)s), in order
_UNDER_LOCK = f"""
SELECT NULL::bigint AS tid, NULL::bytea, ({_PACKED_THROUGH}), ({_MIRROR_KEY}), {_GIVE_BACK}
UNION ALL SELECT tid, oids, NULL, NULL, NULL FROM transactions WHERE {_AFTER_LAST_SEEN}
ORDER BY tid NULLS FIRST"""
# ... and after these (oid not NULL), for a small commit with records that merge, each
# of those (the oids and serials read, %(mo)s and %(mt)s) replaced while the commit waited for
# the lock, with the states its merge reads: the committed one and the one its writer
# started from. A hot spot's commit, which usually finds its record replaced by the
# commit ahead of it in the lock's queue, merges with no round trip more while it holds
# the lock. (Planning and running the join costs the server about 0.15 ms more: not
# asked for by commits that would not merge.)
_UNDER_LOCK_WITH_STATES = {keep_history: f"""
SELECT NULL::bigint AS tid, NULL::bytea AS oids, ({_PACKED_THROUGH}), ({_MIRROR_KEY}),
       NULL::bigint AS oid, NULL::bytea, NULL::bigint, NULL::bytea, {_GIVE_BACK}
UNION ALL SELECT tid, oids, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM transactions WHERE {_AFTER_LAST_SEEN}
UNION ALL SELECT o.tid, NULL, NULL, NULL, r.oid, o.data, r.tid, v.data, NULL
FROM unnest(%(mo)s::bigint[], %(mt)s::bigint[]) AS r(oid, tid)
JOIN objects AS o ON o.oid = r.oid AND o.tid <> r.tid
LEFT JOIN {table} AS v ON v.oid = r.oid AND v.tid = r.tid
ORDER BY oid NULLS FIRST, tid NULLS FIRST""" for keep_history, table in (
    (True, "revisions"), (False, "replaced"))}
# -- a commit in one round trip (see PostgreSQLStorage._fits_at_once) -------------------
# The integer of a counter's record (see amphora.symbolic.counter) whose class pickle is
# the bytes r.head: its state a PROTO 2 or 3, one of the int opcodes the pickler writes
# for a 32-bit int (BININT1, BININT2, BININT) and STOP. NULL: anything else (LONG1, a
# record of another class or pickled otherwise), which the client merges.
_COUNTER_OF = r"""SELECT CASE
  WHEN substr(st, 1, 1) <> '\x80'::bytea OR substr(st, 2, 1) NOT IN ('\x02'::bytea, '\x03'::bytea)
       OR substr(st, length(st), 1) <> '\x2e'::bytea THEN NULL
  WHEN length(st) = 5 AND substr(st, 3, 1) = '\x4b'::bytea THEN get_byte(st, 3)::bigint
  WHEN length(st) = 6 AND substr(st, 3, 1) = '\x4d'::bytea
    THEN get_byte(st, 3) + 256 * get_byte(st, 4)::bigint
  WHEN length(st) = 8 AND substr(st, 3, 1) = '\x4a'::bytea
    THEN get_byte(st, 3) + 256 * get_byte(st, 4) + 65536 * get_byte(st, 5)
         + 16777216 * get_byte(st, 6)::bigint
         - CASE WHEN get_byte(st, 6) >= 128 THEN 4294967296 ELSE 0 END END
FROM (SELECT substr({record}, length(r.head) + 1)
      WHERE substr({record}, 1, length(r.head)) = r.head) AS x(st)"""
# ... and the state pickle of a merged integer v, as pickle.dumps(v, 3) writes it (NULL
# beyond 32 bits)
_COUNTER_STATE = r"""'\x8003'::bytea || CASE
  WHEN v BETWEEN 0 AND 255 THEN '\x4b'::bytea || set_byte('\x00'::bytea, 0, v::int)
  WHEN v BETWEEN 256 AND 65535
    THEN '\x4d'::bytea || set_byte(set_byte('\x0000'::bytea, 0, (v & 255)::int), 1, (v >> 8)::int)
  WHEN v BETWEEN -2147483648 AND 2147483647
    THEN '\x4a'::bytea || set_byte(set_byte(set_byte(set_byte('\x00000000'::bytea,
      0, (v & 255)::int), 1, ((v >> 8) & 255)::int), 2, ((v >> 16) & 255)::int),
      3, ((v >> 24) & 255)::int) END || '\x2e'::bytea"""
# Sent after the statement read under the lock (_UNDER_LOCK), before the writes: the
# commit goes on (the tid it gets, first row) if the lock is held (not given back: every
# record read that does not merge is current) and each record that merges (%(mo)s: oids,
# %(mt)s: serials read, %(mh)s: the hex of the class pickle of a counter, '' for another
# record, %(mn)s: a counter's new number) and was replaced meanwhile is a counter whose
# merge (committed + new - old) the server makes: then one row each (oid, committed tid,
# merged record). The tid is the client's (%(tid)s, from its clock) or, if not above the
# last, the last + 1. The writes read it (and the merged records) from the settings this
# sets: 'amphora.tid' is "stop" if the commit does not go on, and the writes then write
# nothing (see _at_once), so that the COMMIT after them commits nothing, and
# 'amphora.go' (kept by the session past that COMMIT) is "off", so that the statement
# after the COMMIT does not give back a lock the commit holds. The client then goes on
# as a commit in two round trips does, with the lock if it holds it. (Nothing raises an
# error: the server would log every lost race.) The commit does not go on either if the
# last commit it knew of wrote no documents for the mirror and a mirror kept by every
# commit was made meanwhile. Its first row also has the server's clock (µs): the lock's
# hold, counted to the clock of the statement that gives it back (_UNLOCK_TIMED).
_SERVER_MERGE = {keep_history: f"""
WITH r(oid, tid, head, n) AS (
  SELECT oid, tid, decode(nullif(head, ''), 'hex'), n
  FROM unnest(%(mo)s::bigint[], %(mt)s::bigint[], %(mh)s::text[], %(mn)s::bigint[])
    AS u(oid, tid, head, n)),
m AS MATERIALIZED (
  SELECT r.oid, o.tid,
         r.head || (SELECT {_COUNTER_STATE} FROM (SELECT c.n + r.n - p.n) AS w(v)) AS data
  FROM r JOIN objects AS o ON o.oid = r.oid AND o.tid <> r.tid
  LEFT JOIN {table} AS v ON v.oid = r.oid AND v.tid = r.tid
  LEFT JOIN LATERAL ({_COUNTER_OF.format(record="o.data")}) AS c(n) ON true
  LEFT JOIN LATERAL ({_COUNTER_OF.format(record="v.data")}) AS p(n) ON true),
t(tid) AS (
  SELECT CASE WHEN current_setting('amphora.locked', true) = 'on'
    AND ({_MIRROR_KEY}) IS DISTINCT FROM 'sync' AND NOT EXISTS (SELECT FROM m WHERE data IS NULL)
    THEN greatest(%(tid)s::bigint, (SELECT max(tid) FROM transactions) + 1) END)
SELECT NULL::bigint AS oid, t.tid, NULL::bytea,
       set_config('amphora.tid', coalesce(t.tid::text, 'stop'), true)
         || set_config('amphora.go', CASE WHEN t.tid IS NULL THEN 'off' ELSE 'on' END, false),
       set_config('amphora.merged', (SELECT coalesce(string_agg(oid || ':' || encode(data, 'hex'),
                                                                ','), '') FROM m), true),
       (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
FROM t
UNION ALL SELECT oid, tid, data, NULL, NULL, NULL FROM m""" for keep_history, table in (
    (True, "revisions"), (False, "replaced"))}
_GOES = "current_setting('amphora.tid') <> 'stop'"
_SET_TID = "nullif(current_setting('amphora.tid'), 'stop')::bigint"
_UNLOCK_TIMED = ("SELECT pg_advisory_unlock_all(),"
                 " (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
                 " WHERE current_setting('amphora.go') = 'on'")


def _at_once(sql: str) -> str:
    """A statement of a commit's writes as it goes in one round trip: a write with the
    tid that _SERVER_MERGE set and, the one that replaces objects (and archives them),
    the records it merged, writing nothing if the commit does not go on (each row it
    inserts, archives or replaces is selected only then); the lock given back only then
    (_UNLOCK_TIMED); any other unchanged."""
    if sql == _UNLOCK:
        return _UNLOCK_TIMED
    if "%(tid)s" not in sql:
        return sql
    found = _AT_ONCE.get(sql)
    if found is None:
        rows = _MERGED_ROWS if _ARCHIVED in sql else f"{_PLAIN_ROWS}\nWHERE {_GOES}"
        found = sql.replace(_TRANSACTION_VALUES, _TRANSACTION_VALUES.replace(
            "VALUES (", "SELECT ").removesuffix(")") + f" WHERE {_GOES}")
        found = found.replace(_ARCHIVED, f"{_ARCHIVED} AND {_GOES}")
        found = found.replace(_PLAIN_ROWS, rows).replace("%(tid)s", _SET_TID)
        if found.count(_GOES) != (_TRANSACTION_VALUES in sql) + ("INSERT INTO objects" in sql) \
                + (_ARCHIVED in sql):
            raise AssertionError(f"a write not stopped by _SERVER_MERGE: {sql}")
        found = _AT_ONCE[sql] = found
    return found


_AT_ONCE: dict[str, str] = {}


# Prefixed (in a WITH) to the statement that replaces the rows (see _WRITES): the
# revisions replaced, archived by the same statement (its parts all read the rows as they
# were before it)
_ARCHIVED = "WHERE oid = ANY(%(replaced)s::bigint[])"
_ARCHIVING = {
    True: ("archived AS (INSERT INTO revisions (oid, tid, end_tid, data, refs)"
           f" SELECT oid, tid, %(tid)s::bigint, data, refs FROM objects {_ARCHIVED})"),
    False: ("retained AS (INSERT INTO replaced (oid, tid, end_tid, data)"  # history-free
            f" SELECT oid, tid, %(tid)s::bigint, data FROM objects {_ARCHIVED})"),
}
# (with the chunks of the blob revisions forgotten: see .blobs)
_PRUNE_REPLACED = ("WITH gone AS (DELETE FROM replaced WHERE end_tid < %s RETURNING oid, tid)"
                   " DELETE FROM blob_chunk AS c USING gone"
                   " WHERE c.oid = gone.oid AND c.tid = gone.tid")
# The rows of a write travel as a few values, not arrays of a thousand (which the driver
# would convert element by element): the oids as one string of 8-byte big-endian oids,
# the records joined into one bytea with their lengths and offsets as text, and the
# references as array literals joined by "|" ("N" for none known). They are cut apart in
# the server (the offsets come from the client: a window sum over the rows would copy
# every row, documents included, once more).
# With a mirror kept by every commit (``sync``) the rows carry their documents too (see
# amphora.storage.postgresql.mirror): class names and JSON states, each list one string, every
# element preceded by chr(30) (which JSON text never holds raw; a class name holding it
# is sent as a text array instead), in the same statement.
_ROWS = f"""
SELECT {_OID_AT.format(joined="%(oids)s::bytea", n="u.n::int")},
       %(tid)s::bigint, substr(%(datas)s::bytea, u.start::int + 1, u.len::int),
       CASE WHEN u.refs = 'N' THEN NULL ELSE u.refs::bigint[] END{{documents}}
FROM unnest(string_to_array(%(lengths)s, ','), string_to_array(%(starts)s, ','),
            string_to_array(%(refs)s, '|'){{texts}})
     WITH ORDINALITY AS u(len, start, refs{{names}}, n)"""
_PLAIN_ROWS = _ROWS.format(texts="", names="", documents="")
_DOCUMENTED = {"names": ", class_name, state",
               "documents": ", u.class_name, u.state::jsonb, %(tid)s"}
_DOCUMENTED_ROWS = _ROWS.format(texts=", (string_to_array(%(classes)s, chr(30)))[2:],"
                                      " (string_to_array(%(states)s, chr(30), ''))[2:]",
                                **_DOCUMENTED)
_DOCUMENTED_ARRAY_ROWS = _ROWS.format(texts=", %(classes)s::text[], %(states)s::text[]",
                                      **_DOCUMENTED)
# ... in a commit in one round trip, with the records the server merged (_SERVER_MERGE)
_MERGED_ROWS = f"""
SELECT w.oid, w.tid, coalesce(g.data, w.data), w.refs
FROM ({_PLAIN_ROWS}\nWHERE {_GOES}) AS w(oid, tid, data, refs)
LEFT JOIN (SELECT split_part(e, ':', 1)::bigint, decode(split_part(e, ':', 2), 'hex')
           FROM unnest(string_to_array(current_setting('amphora.merged'), ',')) AS e
          ) AS g(oid, data) ON g.oid = w.oid"""
_COLUMNS = "INSERT INTO objects (oid, tid, data, refs) {rows}"
_DOCUMENTED_COLUMNS = ("INSERT INTO objects (oid, tid, data, refs, class_name, state, state_tid)"
                       " {rows}")
_SET = ("ON CONFLICT (oid) DO UPDATE"
        " SET tid = excluded.tid, data = excluded.data, refs = excluded.refs")
_SET_DOCUMENTED = (f"{_SET}, class_name = excluded.class_name, state = excluded.state,"
                   " state_tid = excluded.state_tid")
# New objects: a row some other transaction made meanwhile (the root, a restore) is a
# conflict, found by the rows not returned.
_NEW = "ON CONFLICT (oid) DO NOTHING RETURNING oid"
# (upsert, insert) by how the rows' documents travel: None (no documents), "joined" or
# "arrays"
_WRITES = {
    None: (f"{_COLUMNS} {_SET}".format(rows=_PLAIN_ROWS),
           f"{_COLUMNS} {_NEW}".format(rows=_PLAIN_ROWS)),
    "joined": (f"{_DOCUMENTED_COLUMNS} {_SET_DOCUMENTED}".format(rows=_DOCUMENTED_ROWS),
               f"{_DOCUMENTED_COLUMNS} {_NEW}".format(rows=_DOCUMENTED_ROWS)),
    "arrays": (f"{_DOCUMENTED_COLUMNS} {_SET_DOCUMENTED}".format(rows=_DOCUMENTED_ARRAY_ROWS),
               f"{_DOCUMENTED_COLUMNS} {_NEW}".format(rows=_DOCUMENTED_ARRAY_ROWS)),
}
# New objects in a commit finished by its vote: a row that exists already fails the
# statement (and with it the commit, which then cannot have been made) instead of
# being skipped, since no row count can be looked at before the COMMIT that follows
_WRITES_STRICT = {
    None: f"{_COLUMNS}".format(rows=_PLAIN_ROWS),
    "joined": f"{_DOCUMENTED_COLUMNS}".format(rows=_DOCUMENTED_ROWS),
    "arrays": f"{_DOCUMENTED_COLUMNS}".format(rows=_DOCUMENTED_ARRAY_ROWS),
}
# The transaction's row and the notification of its tid (sent at COMMIT), prefixed (in a
# WITH) to the commit's first write, or alone in a commit that writes no record. (A
# data-modifying WITH query runs to completion, its RETURNING list too, whether or not the
# statement reads it.)
_TRANSACTION_VALUES = ("VALUES (%(tid)s::bigint, %(user)s, %(description)s, %(extension)s,"
                       " %(written)s)")
_TRANSACTION_ROW = ("committed AS (INSERT INTO transactions"
                    f" (tid, username, description, extension, oids) {_TRANSACTION_VALUES}"
                    " RETURNING pg_notify(%(channel)s, tid::text))")
_INSERT_TRANSACTION = f"WITH {_TRANSACTION_ROW} SELECT"
_NEXT_OIDS = "SELECT nextval('oid_seq') FROM generate_series(1, %s)"
# oids stored without new_oid (the root, restores) are never handed out
_PASS_OID = "SELECT setval('oid_seq', %s) FROM oid_seq WHERE last_value < %s"

_BATCH = 1000                        # oids per statement in batched reads
_AHEAD = 2000                        # referenced records read along by one load_many
#: conflicts merged before taking the commit lock (each against the state committed then)
#: before a commit takes the lock and merges under it
_MERGES_BEFORE_LOCK = 2
#: commits of up to this many records get the states of those replaced while they waited
#: for the commit lock with the lock (see _UNDER_LOCK); larger ones ask if they need them
_STATES_WITH_LOCK = 64
_COUNTED = 2 ** 62  # a counter's number the server merges (sums stay in 64 bits)
_OID_BLOCK = 64                      # oids first reserved per round trip to the sequence
_OID_BLOCK_MAX = 4096                # ... doubling with each reservation up to this
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


def _refs_literal(data: bytes) -> str:
    """The references of a record as a PostgreSQL array literal ("N": not a pickle; none
    for a deletion record)."""
    if not data:
        return "{}"
    try:
        refs = record_references(data)
    except CorruptRecordError:
        return "N"
    if not refs:
        return "{}"
    return "{" + ",".join([str(_unpack(ref)[0]) for ref in refs if len(ref) == 8]) + "}"


class _Made:
    """What a commit's vote makes of its records while its first round trip is out: their
    references and, if asked, their documents, by ``id()`` of each record (the records
    are kept, so that the ids stay theirs). A record not among them (one that a resolved
    conflict made) is done when asked for."""

    def __init__(self, datas: list[bytes], documents: bool):
        self._datas = datas
        keys = list(map(id, datas))
        self._refs = dict(zip(keys, map(_refs_literal, datas)))
        self._documents = dict(zip(keys, documents_of(datas))) if documents else {}

    def references(self, datas: list[bytes]) -> list[str]:
        refs = self._refs
        return [refs.get(id(data)) or _refs_literal(data) for data in datas]

    def documents(self, datas: list[bytes]) -> list[tuple[str, str | None]]:
        found = [self._documents.get(id(data)) for data in datas]
        missing = [i for i, document in enumerate(found) if document is None]
        for i, document in zip(missing, documents_of([datas[i] for i in missing])):
            found[i] = document
        return found  # type: ignore[return-value]


class _Reader:
    """One thread's autocommit connection: each read is one statement, one snapshot."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: Any):
        self.conn = conn


def require_psycopg() -> Any:
    """The ``psycopg`` module; a :class:`StorageError` that says how to install it when it
    is missing."""
    try:
        import psycopg
    except ImportError as exc:
        raise StorageError("the PostgreSQL storage needs psycopg 3: "
                           "pip install 'amphora[postgresql]'") from exc
    return psycopg


class PostgreSQLStorage(CachedRecordsMixin, SchemaMixin, PackMixin, MirrorMixin,
                        TransactionLogMixin, ChunkedBlobMixin, UndoMixin, StorageBase):
    """A storage in a PostgreSQL database, shared by any number of processes.

    Tables (``schema_version`` 1), in the schema ``schema`` (``public`` by default; every
    connection's ``search_path`` is set to it, so one database can hold several storages)::

        amphora_meta(key text PRIMARY KEY, value text)
            format='amphora-postgresql', schema_version=1, keep_history=1|0,
            packed_through=<largest tid of a transaction row removed by pack>,
            undo_horizon=<the last pack's cutoff: transactions up to it are not undoable>
        objects(oid bigint PRIMARY KEY, tid bigint, data bytea, refs bigint[])
            the current revision of every object; ``refs`` are the oids its record
            refers to (NULL for a record that is not a ZODB pickle), for pack. A JSON
            mirror adds its documents as columns, read through the view
            ``amphora_objects`` (see :mod:`amphora.storage.postgresql.mirror`)
        revisions(oid, tid, end_tid, data, refs), PRIMARY KEY (oid, tid)
            history-preserving mode: replaced revisions, kept until pack; ``end_tid`` is
            the tid of the revision that replaced it. Empty ``data`` (here and in
            ``objects``) is a deletion record: an undone creation (see
            :mod:`amphora.storage.undo`)
        replaced(oid, tid, end_tid, data), PRIMARY KEY (oid, tid)
            history-free mode: replaced revisions, kept ``conflict_window`` seconds for
            conflict resolution only (``loadSerial``; never ``loadBefore``)
        transactions(tid bigint PRIMARY KEY, username bytea, description bytea,
                     extension bytea, oids bytea)
            one row per commit; ``oids`` is the concatenated 8-byte oids it wrote, which
            is how other processes learn what to invalidate. Pack removes rows left
            without records (never the last one).
        oid_seq
            the sequence oids are handed out from (in blocks)
        blob_chunk(oid, tid, chunk_num integer, blob_size bigint, data bytea),
                   PRIMARY KEY (oid, tid, chunk_num)
            the bytes of each blob revision, in chunks of up to 1 MiB numbered from 0
            (one empty chunk for an empty blob); ``blob_size`` is the whole blob's size.
            Added when a database made before blobs is opened for writing

    Oids and tids are the signed 64-bit integers with the same 8 bytes; ``data`` is the
    record exactly as stored.

    Concurrency: reads use one autocommit connection per thread; each load is one
    statement, so it sees one consistent snapshot and never waits. Loads are answered
    from the record cache (:mod:`amphora.storage.recordcache`, ``record_cache_bytes``)
    that every thread and connection of the storage object shares when they can; what
    ``load_many`` reads ahead along references goes there too. The cache learns of every
    commit as ``sync()`` (or a vote) reports it, and forgets everything on pack or when
    a pack elsewhere removed commits unseen. A commit holds the
    storage's commit lock from ``tpc_begin``; ``tpc_vote`` opens a transaction, takes an
    advisory lock (``pg_advisory_lock``, released after COMMIT or ROLLBACK, or given back
    by a commit that finds it lost a race) that serializes writers of this schema
    across processes, checks conflicts against what is committed under it, picks a tid
    above every committed tid and writes; ``tpc_finish`` commits, which is the
    durability point, and the commit sends ``NOTIFY amphora_<schema>`` with its tid. A
    small commit sends its writes (and, finished by its vote, its ``COMMIT``) with the
    statements that take the lock, in one round trip: the server picks the tid, merges
    the counters (``BTrees.Length``) replaced while it waited, and does not write if
    anything else it read was replaced; the client then goes on as for a larger commit.
    ``sync()`` reports transactions committed elsewhere to the registered database, in
    tid order, before ``lastTransaction()`` shows them (one indexed query);
    :meth:`poll` waits for such a commit, woken by the notification.

    ``keep_history=None`` takes the mode the schema was created with (history-preserving
    for a new one); asking for the other mode raises :class:`StorageFormatError`, as
    does a schema holding anything but an amphora database of a known version (left
    untouched). A server that cannot be reached, or refuses the connection, raises
    :class:`PostgreSQLConnectionError`. ``search_role`` (``?search_role=NAME``): the role
    every search's SQL runs under (``SET LOCAL ROLE``; see ``query_mirror``).

    Blobs (:mod:`amphora.storage.postgresql.blobs`) are read through local files in
    ``blob_cache_dir`` (by default a temporary directory removed at close), which keeps
    at most ``blob_cache_size`` bytes (no limit by default), the least recently used
    files removed first.
    """

    supports_pack = True
    is_remote = True
    #: records read ahead along references per query (see load_many and the record cache)
    read_ahead = _AHEAD
    #: commit in the vote for a transaction's only data manager (``finish_with_vote``);
    #: False commits in ``tpc_finish`` always (benchmarks compare the two)
    finish_in_vote = True
    #: history-free mode: seconds a replaced revision stays readable by ``loadSerial``, so
    #: that a transaction that read it can still have its conflicts resolved
    conflict_window = 60.0

    def __init__(self, dsn: str = "", read_only: bool = False, keep_history: bool | None = None,
                 schema: str = "public", resolve_conflicts: bool = True, create: bool = True,
                 connect_timeout: float = 10.0, search_role: str | None = None,
                 blob_cache_dir: str | None = None, blob_cache_size: int | None = None):
        if keep_history not in (None, True, False):
            raise InvalidURIError(f"keep_history must be true or false, not {keep_history!r}")
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
            raise InvalidURIError(f"schema must be a lower-case SQL name (letters, digits, _), "
                                  f"not {schema!r}")
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)) \
                or connect_timeout <= 0:
            raise InvalidURIError(f"connect_timeout must be a number of seconds, "
                                  f"not {connect_timeout!r}")
        psycopg = require_psycopg()
        from psycopg.conninfo import conninfo_to_dict
        self._psycopg = psycopg
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise InvalidURIError(f"not a PostgreSQL connection string: {exc}") from exc
        self.dsn = dsn
        self.schema = schema
        self.search_role = check_role(search_role)
        self._connect_timeout = connect_timeout
        # after the connection string's own options (which stay), so that these win
        self._options = (f"{params.get('options') or ''} -c search_path={schema}"
                         r" -c default_transaction_isolation=read\ committed")
        self._where = _describe(params)
        super().__init__(f"{self._where}?schema={schema}", read_only, resolve_conflicts)
        self._setup_blob_cache(blob_cache_dir, blob_cache_size)
        self._channel = f"amphora_{schema}"[:63]
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._oid_lock = threading.Lock()
        self._oids: list[int] = []   # reserved, not yet handed out (ascending)
        self._oid_block = _OID_BLOCK
        self._pending: list[tuple[int, bytes]] = []  # others' commits found at vote
        self._pending_packed = 0
        self._voted_tid: bytes | None = None
        self._finished_tid: bytes | None = None  # committed by its vote (finish_with_vote)
        self._lock_taken: float | None = None  # perf_counter() when the commit lock was seen
        self._lock_asked = False  # the commit lock asked for and not yet released
        #: commits (and failed votes) that held the commit lock, and the seconds they held
        #: it as this process sees it: from the reply that shows the lock taken to the
        #: reply to COMMIT or ROLLBACK (benchmarks read them)
        self.lock_holds = 0
        self.lock_held = 0.0
        self._top_oid = -1
        self._ltid = z64
        self._writer: Any = None
        self._poller: Any = None
        self._synced_on: Any = None  # the poller that has synced (see sync)
        self._waiter: Any = None
        self._waiter_lock = threading.Lock()
        self._init_record_cache()
        _fork.track(self)
        try:
            meta = self._open(create, True if keep_history is None else bool(keep_history))
            self.keep_history = self._check_meta(meta, keep_history)
            self.supports_history = self.supports_undo = self.keep_history
            self._poller = self._connect(autocommit=True, generic_plans=True)
            if not read_only:
                self._add_blob_chunk(self._poller)
            if "mirror" in meta and not read_only:  # a mirror made before moves now
                self._upgrade_mirror(self._poller)
            last = self._poller.execute(_LAST_TID).fetchone()[0]
        except psycopg.Error as exc:
            self._close_connections()
            raise self._error(exc) from exc
        except BaseException:
            self._close_connections()
            raise
        self._ltid = _pack(last) if last else z64

    # -- connections and errors --------------------------------------------------------
    @property
    def _commit_lock_sql(self) -> str:
        """What pack and the mirror's making take the commit lock with, in a transaction
        (statements without parameters): first a lock on ``objects`` (ACCESS SHARE),
        then the commit lock. Commits lock ``objects`` before the commit lock too (their
        vote reads it in the statement that takes the lock): in the same order, no
        deadlock. See :attr:`_ddl_lock_sql` for a transaction that alters ``objects``."""
        return f"{_OBJECTS_SHARED}; {_COMMIT_LOCK}"

    @property
    def _ddl_lock_sql(self) -> str:
        """:attr:`_commit_lock_sql` for a transaction that alters ``objects`` (ACCESS
        EXCLUSIVE first: taking it after the commit lock, it would wait for a commit
        that holds ACCESS SHARE and waits for the commit lock)."""
        return f"{_OBJECTS_EXCLUSIVE}; {_COMMIT_LOCK}"

    def _connect(self, autocommit: bool, generic_plans: bool = False) -> Any:
        """A new connection whose ``search_path`` is the storage's schema, and whose
        transactions are READ COMMITTED whatever the database's default: a commit checks,
        after taking the commit lock, what others committed before it (a snapshot taken
        while it waited for the lock would hide their commits).

        With ``generic_plans`` (the sessions of commits and syncs, whose statements are
        prepared: see :mod:`.wire`), PostgreSQL plans each statement once a session
        (again after an ``ANALYZE``). Their statements look rows up by key, so one plan
        fits every execution. Left to choose, PostgreSQL plans them anew at every
        execution once the tables are large (the plan for the values at hand, an
        array's length known, looks cheaper than the generic one): with a history of
        200,000 revisions, 0.2-0.3 ms of the server's time for each of the check that
        takes the commit lock, the statement read under it and the sync, against
        0.05-0.1 ms planned once."""
        psycopg = self._psycopg
        options = self._options + (" -c plan_cache_mode=force_generic_plan"
                                   if generic_plans else "")
        try:
            return psycopg.connect(self.dsn, autocommit=autocommit,
                                   connect_timeout=max(1, round(self._connect_timeout)),
                                   options=options)
        except psycopg.OperationalError as exc:
            raise PostgreSQLConnectionError(
                f"cannot connect to PostgreSQL at {self._where}: "
                f"{_first_line(exc)}") from None

    def _error(self, exc: Exception) -> StorageError:
        """The amphora error for a driver error: the one place they are translated."""
        if isinstance(exc, StorageError):
            return exc
        errors = self._psycopg.errors
        text = _first_line(exc)
        if self._closed:
            return StorageError(f"{self.__name__} is closed")
        if isinstance(exc, (errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege)):
            return ReadOnlyError(f"{self._where}: {text}")
        if isinstance(exc, (errors.UndefinedTable, errors.UndefinedColumn,
                            errors.InvalidSchemaName)):
            return StorageFormatError(f"{self._where} schema {self.schema!r}: not (or no "
                                      f"longer) an amphora database ({text})")
        if isinstance(exc, self._psycopg.OperationalError):
            return PostgreSQLConnectionError(f"PostgreSQL at {self._where}: {text}")
        return StorageError(f"{self._where}: {text}")

    def _reader(self) -> Any:
        """This thread's autocommit connection."""
        return self._thread_reader().conn

    def _thread_reader(self) -> _Reader:
        try:
            return self._local.reader
        except AttributeError:
            pass
        if self._closed:
            raise StorageError(f"{self.__name__} is closed")
        reader = _Reader(self._connect(autocommit=True))
        self._local.reader = reader
        with self._readers_lock:
            self._readers.add(reader)
        return reader

    def _query(self, sql: str, params: Any = (), binary: bool = False) -> list:
        """All rows of ``sql`` on this thread's connection."""
        try:
            return self._reader().execute(sql, params, binary=binary).fetchall()
        except self._psycopg.Error as exc:
            self._drop_broken_reader()
            raise self._error(exc) from exc

    def _drop_broken_reader(self) -> None:
        reader = getattr(self._local, "reader", None)
        if reader is not None and reader.conn.broken:
            del self._local.reader
            reader.conn.close()

    # -- reading --------------------------------------------------------------------
    def lastTransaction(self) -> bytes:
        with self._lock:
            return self._ltid

    def _load_before(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        """``loadBefore`` from the database (the record cache's misses; see
        :mod:`amphora.storage.recordcache`)."""
        rows = self._query(_LOAD_BEFORE, {"o": _unpack(oid)[0], "b": _unpack(tid)[0]},
                           binary=True)
        if not rows:
            raise ObjectNotFoundError(oid)
        current, data, start, end, old = rows[0]
        if data is not None:
            if not data:  # a deletion record
                raise ObjectNotFoundError(oid)
            return data, _pack(current), None
        if start is None:
            return None
        if not old:  # a deletion record
            raise ObjectNotFoundError(oid)
        return old, _pack(start), _pack(end)

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        """``loadBefore`` for many oids, one query per thousand, from the database.

        Each query also reads (up to ``read_ahead``) the current records that the records
        asked for refer to and that refer to none, and puts them in the record cache
        (which every thread and connection shares): a reader that asks for a BTree's
        buckets asks for their values next, and finds them there. Such a record was
        current, and older than ``before``, when the query ran; the cache takes it only if
        it learnt of no commit meanwhile (its generation), so a commit that replaces it
        later closes it as any cached record. What is returned is exactly what
        ``loadBefore`` would return for each oid asked for.
        """
        oids = list(oids)
        found: dict[bytes, tuple[bytes, bytes, bytes | None]] = {}
        before_i = _unpack(before)[0]
        wanted = {_unpack(oid)[0]: oid for oid in oids}
        keys = list(wanted)
        cache = self.record_cache
        ahead = int(self.read_ahead) if cache.max_bytes > 0 else 0
        for i in range(0, len(keys), _BATCH):
            generation = cache.generation()  # before the query: see RecordCache.put
            rows = self._query(_LOAD_MANY, {"o": keys[i:i + _BATCH], "b": before_i,
                                            "n": ahead}, binary=True)
            read_ahead = []
            # (empty data: a deletion record, no object)
            for key, current, data, start, end, old, is_ahead in rows:
                if is_ahead:
                    if data:
                        read_ahead.append((_pack(key), data, _pack(current), None))
                elif data is not None:
                    if data:
                        found[wanted[key]] = (data, _pack(current), None)
                elif old:
                    found[wanted[key]] = (old, _pack(start), _pack(end))
            cache.put_many(read_ahead, generation)
        return found

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        rows = self._query(_LOAD_SERIAL, {"o": _u(oid), "t": _u(serial)}, binary=True)
        if not rows or not rows[0][0]:  # none, or a deletion record
            raise ObjectNotFoundError(oid)
        return rows[0][0]

    def history(self, oid: bytes, size: int | None = 1) -> list[dict[str, Any]]:
        limit = None if size is None else max(size, 1)
        rows = self._query(_HISTORY, {"o": _u(oid), "n": limit}, binary=True)
        if not rows:
            raise ObjectNotFoundError(oid)
        entries = [history_entry(_pack(tid), user, description, extension, length)
                   for tid, length, user, description, extension in rows]
        return entries if size is None else entries[:max(size, 0)]

    def packed_through(self) -> bytes:
        """The largest tid of a transaction pack removed (``z64`` if none)."""
        return _pack(self._query(_PACKED_THROUGH)[0][0] or 0)

    def _transaction_rows(self, low: int, high: int, limit: int) -> list:
        return self._query(_TRANSACTIONS, (low, high, limit), binary=True)

    def _last_tid_int(self) -> int:
        return self._query(_LAST_TID)[0][0]

    def _records_of(self, tid: int, oids: bytes) -> list[DataRecord]:
        """The records transaction ``tid`` wrote that are still stored, in store order."""
        wanted = _split(oids)
        keys = _ints(oids)
        datas: dict[int, bytes] = {}
        for i in range(0, len(keys), _BATCH):
            datas.update(self._query(_RECORDS_OF, {"o": keys[i:i + _BATCH], "t": tid},
                                     binary=True))
        tid_bytes = _pack(tid)
        return [DataRecord(oid, tid_bytes, datas[key] or None)  # None: a deletion record
                for oid, key in zip(wanted, keys) if key in datas]

    def __len__(self) -> int:
        return self._query(_COUNT_OBJECTS)[0][0]

    def getSize(self) -> int:
        """The size in bytes of the storage's tables and their indexes."""
        return self._query(_SIZE)[0][0]

    # -- undo (see amphora.storage.undo) ------------------------------------------------
    def _undo_log_rows(self, offset: int, limit: int) -> list[tuple[bytes, bytes, bytes, bytes]]:
        rows = self._query(_UNDO_LOG, (limit, offset), binary=True)
        return [(_pack(tid), user, description, extension)
                for tid, user, description, extension in rows]

    def _undo_oids(self, tid: bytes) -> list[bytes] | None:
        rows = self._query(_UNDO_OIDS, (_u(tid),), binary=True)
        return _split(bytes(rows[0][0])) if rows else None

    def _undo_current(self, oid: bytes) -> tuple[bytes, bytes | None] | None:
        rows = self._query(_CURRENT_RECORD, (_u(oid),), binary=True)
        return (_pack(rows[0][0]), rows[0][1] or None) if rows else None

    # -- invalidations --------------------------------------------------------------
    def sync(self) -> None:
        """Report transactions committed by others since the last report.

        Each goes to ``wrapper.invalidate(tid, oids)`` in tid order before
        ``lastTransaction()`` returns it; if pack removed some of them unseen,
        ``wrapper.invalidateCache()`` is called first. Costs one indexed query (one round
        trip) that returns no row when nothing changed. When those commits changed few
        objects, it brings their new records too, and the record cache keeps the small
        ones it held an older revision of: a hot spot's next load needs no round trip.
        """
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.__name__} is closed")
            try:
                conn = self._poller
                if conn is None:  # a forked child's first sync
                    conn = self._poller = self._connect(autocommit=True, generic_plans=True)
                # (the records are asked for from a session's second sync on: see
                # _COMMITS_SINCE)
                asked = _CHANGES_SINCE if conn is self._synced_on and len(self.record_cache) \
                    else _COMMITS_SINCE
                rows = wire.run(conn, [(asked, {"l": _u(self._ltid), "k": 8 * _SYNCED_OIDS,
                                                "s": _SYNCED_BYTES})])[0].rows
                self._synced_on = conn
            except self._psycopg.Error as exc:
                if conn.broken:  # the next sync reconnects
                    self._poller = self._connect(autocommit=True, generic_plans=True)
                raise self._error(exc) from exc
            commits = sorted([(tid, oids) for tid, oids, _, key in rows if key is None])
            packed = next((packed or 0 for _, _, packed, key in rows if key is None), 0)
            # The new records of objects the cache holds, by the tid that wrote them
            held = self.record_cache.holds
            records: dict[int, dict[bytes, bytes]] = {}
            for tid, data, _, key in rows:
                if key is not None and held(oid := _pack(key)):
                    records.setdefault(tid, {})[oid] = data
            self._deliver(commits, packed, records)

    def poll(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) until another process or storage
        object commits, then :meth:`sync`. True if new transactions were reported.

        Woken by the ``NOTIFY`` each commit sends, so it neither spins nor queries while
        nothing happens; a commit made before the call is reported at once.
        """
        with self._waiter_lock:
            try:
                if self._waiter is None:
                    waiter = self._connect(autocommit=True)
                    from psycopg import sql
                    waiter.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._waiter = waiter
                before = self.lastTransaction()
                self.sync()  # commits made before LISTEN took effect, or since the last poll
                if self.lastTransaction() != before:
                    return True
                for _ in self._waiter.notifies(timeout=timeout, stop_after=1):
                    break
            except self._psycopg.Error as exc:
                raise self._error(exc) from exc
        self.sync()
        return self.lastTransaction() != before

    # -- writing --------------------------------------------------------------------
    def new_oid(self) -> bytes:
        """A new oid, unique across every process using the database (from ``oid_seq``,
        reserved in blocks)."""
        return self.new_oids(1)[0]

    def new_oids(self, count: int) -> list[bytes]:
        self._check_writable()
        with self._oid_lock:
            while len(self._oids) < count:
                self._reserve_oids(max(self._oid_block, count - len(self._oids)))
            taken, self._oids = self._oids[:count], self._oids[count:]
        return [_pack(oid) for oid in taken]

    def _reserve_oids(self, block: int) -> None:
        rows = self._query(_NEXT_OIDS, (block,))
        self._oids.extend(oid for (oid,) in rows)
        # A process that uses oids fast reserves bigger blocks (fewer round trips);
        # unused oids of a block are simply never used.
        self._oid_block = min(self._oid_block * 2, _OID_BLOCK_MAX)

    def _writing_connection(self) -> Any:
        """The connection of the commit's database transaction (which blobs start before
        the vote)."""
        if self._writer is None:
            self._writer = wire.adopt(self._connect(autocommit=False, generic_plans=True))
        return self._writer

    def _vote(self) -> None:
        """Write the commit (see :meth:`_write`). With ``finish_with_vote`` (amphora's
        connection, when it is its transaction's only data manager) the same round trip
        commits, so the commit lock is released a round trip and the return to the
        transaction manager earlier; ``finish_with_vote`` is then called here, as
        :meth:`_finish` calls ``func``."""
        psycopg = self._psycopg
        # (not with blobs: their chunks get the tid after the writes, see _write_blobs)
        then = getattr(self._transaction, "finish_with_vote", None) \
            if self.finish_in_vote and not (self._staged_blobs or self._copied_blobs) \
            else None
        try:
            self._write(self._writing_connection(), then is not None)
        except psycopg.errors.UniqueViolation as exc:
            # a strict insert of a new object found its row made meanwhile: a conflict
            self._rollback()
            if then is None:
                raise self._error(exc) from exc
            self._new_object_conflict()
            raise self._error(exc) from exc
        except psycopg.Error as exc:
            self._rollback()
            raise self._error(exc) from exc
        except BaseException:
            self._rollback()
            raise
        if then is not None:  # committed: durable, published as tpc_finish would
            self._held()
            self._settle_blobs()
            tid = self._finished_tid = self._voted_tid
            self._publish(tid, lambda tid: then(tid, list(self._resolved)))

    def _held(self) -> None:
        """The commit lock is released (COMMIT or ROLLBACK answered): count its hold."""
        if self._lock_taken is not None:
            self.lock_holds += 1
            self.lock_held += time.perf_counter() - self._lock_taken
            self._lock_taken = None

    def _mergeable(self, stale: list[bytes]) -> bool:
        """Whether conflicts on ``stale`` (and no read conflict) may be merged: not if a
        read check failed, there is no resolver, or the storage's own resolver would
        find a record's class without ``_p_resolveConflict``. (A transaction's own
        resolver, the server asking its client, is assumed able to.)"""
        resolve = self._conflict_resolver()
        if resolve is None or not stale:
            return False
        if resolve is not resolve_record:
            return True
        stores = self._stores
        return all(stores[oid] is not None and resolvable(stores[oid]) for oid in stale)

    def _new_object_conflict(self) -> None:
        """Raise the ConflictError of new objects whose rows another commit made (read
        after the failed commit's rollback)."""
        creating = [oid for oid, read in self._serials.items() if read == z64]
        rows = self._query(_CURRENT_SERIALS, (_ints(b"".join(creating)),))
        found = {_pack(key): _pack(tid) for key, tid in rows}
        for oid in creating:
            if oid in found:
                raise ConflictError(oid=oid, serials=(found[oid], z64),
                                    data=self._stores.get(oid))

    def _write(self, conn: Any, finish: bool = False) -> None:
        """Check conflicts and write the transaction, inside one database transaction;
        with ``finish``, commit it in the same round trip as the writes. A commit that
        fits (see :meth:`_fits_at_once`) sends its writes with the statements that take
        the lock, and is made in that one round trip unless it must merge what the
        server does not (see _SERVER_MERGE)."""
        stores = self._stores
        oids = list(stores)
        keys = _ints(b"".join(oids))
        reads = _ints(b"".join(map(self._serials.__getitem__, oids)))
        at_once = None
        if self._fits_at_once(len(keys)):
            made = _Made([data or b"" for data in stores.values()], False)
            tid_i = _u(self._next_tid(self._ltid))  # (the server's if not above the last)
            at_once = (self._writes(tid_i, oids, keys, reads, False, made, finish, True),
                       tid_i, made)
        last, mirror, made, load_serial, written = self._lock_and_check(conn, oids, keys,
                                                                        reads, at_once)
        if written is not None:  # made in the first round trip
            tid, (_, inserting), results = written
        else:
            tid = self._next_tid(max(_pack(last), self._ltid))
            # With a sync mirror, each row carries its document (written by the same
            # statement)
            mirrored = self._mirror_synced = self._mirror_documented(mirror)
            statements, inserting = self._writes(_u(tid), oids, keys, reads, mirrored, made,
                                                 finish)
            if finish:
                self._voted_tid = tid  # (before the COMMIT: a failed one is not retried)
            results = wire.run(conn, statements, begin=True)
        self._lock_asked = self._lock_asked and not finish
        inserted = None if inserting is None else results[inserting]
        creating = [key for key, read in zip(keys, reads) if not read]
        if inserted is not None and inserted.rowcount != len(creating):
            made_rows = {oid for (oid,) in inserted.rows}
            taken = [key for key in creating if key not in made_rows]
            found = dict(conn.execute(_CURRENT_SERIALS, (taken,)).fetchall())
            stale = [oid for oid, key in zip(oids, keys) if key in found]
            self._check_conflicts({oid: _pack(found[_u(oid)]) for oid in stale},
                                  load_serial, stale)
            raise StorageError("a new object's row exists, but no conflict was found")
        self._write_blobs(conn, _u(tid))  # in this transaction: committed with the records
        self._voted_tid = tid

    def _writes(self, tid_i: int, oids: list[bytes], keys: list[int], reads: list[int],
                mirrored: bool, made: _Made, finish: bool, at_once: bool = False
                ) -> tuple[list[tuple[str, Any]], int | None]:
        """The statements that write the commit as ``tid_i`` (``at_once``: as the tid the
        server sets, see _SERVER_MERGE) and, with ``finish``, commit it, and the index of
        the one that inserts new objects (None: none)."""
        datas = [data or b"" for data in self._stores.values()]  # merges replaced some
        replacing = sorted([(key, data) for key, read, data in zip(keys, reads, datas) if read])
        creating = sorted([(key, data) for key, read, data in zip(keys, reads, datas) if not read])
        user, description, extension = self._meta
        # The transaction's row goes with the first write (see _TRANSACTION_ROW)
        row = {"tid": tid_i, "user": user, "description": description,
               "extension": extension, "written": b"".join(oids), "channel": self._channel}
        # One round trip: BEGIN (when blobs did not start the transaction), the writes
        # and, with ``finish``, the COMMIT
        statements: list[tuple[str, Any]] = []
        if replacing:  # (history-free: replaced revisions stay while they may merge)
            how, params = self._row_params(tid_i, replacing, mirrored, made)
            params["replaced"] = _array([key for key, _ in replacing])
            params.update(row)
            statements.append((f"WITH {_TRANSACTION_ROW}, {_ARCHIVING[self.keep_history]} "
                               f"{_WRITES[how][0]}", params))
            row = None
        if not self.keep_history:
            horizon = pack_tid(max(tid_time(_pack(tid_i)) - self.conflict_window, 0))
            statements.append((_PRUNE_REPLACED, (_u(horizon),)))
        inserting = None
        if creating:
            how, params = self._row_params(tid_i, creating, mirrored, made)
            insert = _WRITES_STRICT[how] if finish else _WRITES[how][1]
            if row is not None:
                params.update(row)
                insert = f"WITH {_TRANSACTION_ROW} {insert}"
                row = None
            inserting = len(statements)
            statements.append((insert, params))
        if row is not None:  # no record written (an empty commit)
            statements.append((_INSERT_TRANSACTION, row))
        # New oids, stored without new_oid or not (a replaced object's was passed when it
        # was made; a restored one may be new, though read at its tid)
        self._top_oid = max([key for key, _ in creating]
                            + [_u(oid) for oid in self._restored], default=-1)
        if self._top_oid >= 0:
            statements.append((_PASS_OID, (self._top_oid, self._top_oid)))
        if finish:
            statements += [("COMMIT", ()), (_UNLOCK, ())]
        if at_once:
            statements = [(_at_once(sql), params) for sql, params in statements]
        return statements, inserting

    def _fits_at_once(self, count: int) -> bool:
        """Whether a commit of ``count`` records is sent with the statements that take the
        lock (see _SERVER_MERGE): one that gives the lock back if it lost (small, and
        merged by the storage's resolver or none), and has no blob, restore or tid of its
        own, and whose records go without documents (the last commit wrote none: the
        server checks that the mirror still wants none)."""
        return count <= _STATES_WITH_LOCK and self._tid is None and not self._restored \
            and not (self._staged_blobs or self._copied_blobs) and not self._mirror_synced \
            and self._conflict_resolver() in (resolve_record, None)

    def _lock_and_check(self, conn: Any, oids: list[bytes], keys: list[int], reads: list[int],
                        at_once: tuple[tuple[list[tuple[str, Any]], int | None], int, _Made]
                        | None = None) -> tuple[int, str | None, _Made,
                                                Callable[[bytes, bytes], bytes], Any]:
        """Take the commit lock and check the transaction's conflicts under it: those that
        may be merged are, the others raised. Returns the last committed tid, the value
        of the mirror's key (read under the lock), the written records' references and
        documents (made while the server takes the lock), the ``load_serial`` of
        conflict resolution (in this transaction) and None. Others' commits since the
        last sync are left in ``_pending`` (and pack's ``_pending_packed``), to be
        reported before this one.

        ``at_once``: the statements that write the commit as the server's tid (and the
        index of its insert of new objects), the client's tid and the records'
        references, sent with the first round trip (see _SERVER_MERGE). If they wrote
        it, the last item returned is ``(tid, those statements, their results)``, and
        the records the server merged are this commit's stores. If not (they wrote
        nothing), the commit goes on as one without them, with the lock if it holds it.

        Conflicts that may be merged are merged before the lock, against the states
        committed then, up to ``_MERGES_BEFORE_LOCK`` times (each merge makes its record
        read at the state it merged); the lock is then taken only if those are still
        current, so that it is not held while Python merges. After that many, the lock
        is taken anyway and the merge done under it."""
        states: dict[tuple[bytes, bytes], bytes] = {}  # fetched ahead for merges

        def load_serial(oid: bytes, serial: bytes) -> bytes:
            state = states.get((oid, serial))
            if state is not None:
                return state
            found = conn.execute(_LOAD_SERIAL, {"o": _u(oid), "t": _u(serial)},
                                 binary=True).fetchall()
            if not found:
                raise ObjectNotFoundError(oid)
            return found[0][0]

        ltid = _u(self._ltid)
        # The stores of a small commit whose conflicts merge, by oid key (see
        # _COMMIT_LOCK_IF_CURRENT): a hint, since their merge is tried under the lock
        # whatever it says
        merges = self._merge_hints(oids, keys) if len(keys) <= _STATES_WITH_LOCK else {}
        with_states = any(merges.values())
        # Whether the lock may be given back under it (see _GIVE_BACK): for a small commit
        # whose merge flags are the storage's own resolver's (or that merges nothing). A
        # large one's serials are not read a second time under the lock.
        gives_back = len(keys) <= _STATES_WITH_LOCK and \
            self._conflict_resolver() in (resolve_record, None)

        def under_lock(checked: dict[str, str], states: bool = True) -> tuple[str, Any]:
            """Sent after the lock, in its round trip: the pack marker, the mirror's key,
            whether the lock was given back (a record of ``checked`` replaced that does not
            merge), others' commits since the last sync and, for a small commit that may
            merge, the states of its records replaced meanwhile (see _UNDER_LOCK)."""
            if not (with_states and states):
                return _UNDER_LOCK, {"l": ltid, **checked}
            replacing = [(key, read) for key, read in zip(keys, reads) if merges.get(key)]
            return (_UNDER_LOCK_WITH_STATES[self.keep_history],
                    {"l": ltid, "mo": _array([key for key, _ in replacing]),
                     "mt": _array([read for _, read in replacing]), **checked})
        made = None
        for lost in range(_MERGES_BEFORE_LOCK + 1):
            # What was read, by oid key: the stores' serials (not the new objects': an
            # insert finds a row made meanwhile) and the read checks'.
            read = {key: serial for key, serial in zip(keys, reads) if serial}
            read.update(zip(_ints(b"".join(self._checks)),
                            _ints(b"".join(self._checks.values()))))
            flags = ",".join(["t" if merges.get(key) else "f" for key in read])
            checking = {"o": _array(read), "t": _array(read.values()), "m": f"{{{flags}}}"}
            self._lock_asked = True
            first = at_once is not None and lost == 0
            asked = [(_COMMIT_LOCK_IF_CURRENT[self.keep_history],
                      (checking["o"], checking["t"], checking["m"])),
                     # (a commit whose reads all merge never gives the lock back)
                     under_lock(checking if gives_back and "f" in flags else _KEEPS,
                                states=not first)]
            if first:
                (writes, inserting), tid_i, made = at_once  # type: ignore[misc]
                asked += [(_SERVER_MERGE[self.keep_history],
                           self._server_merges(oids, keys, reads, merges, tid_i))] + writes
            answers = wire.send(conn, asked, begin=True)
            # While the server takes the lock (or waits for it): each record's
            # references and, if the last commit wrote documents, its document, by
            # id() of the record (one replaced by a merge gets its own later). An
            # undo's deletion record (None) is stored as empty data.
            if made is None:
                made = _Made([data or b"" for data in self._stores.values()],
                             self._mirror_synced)
            if first:
                written = self._written_at_once(conn, answers,
                                                timed=writes[-1][0] is _UNLOCK_TIMED)
                if written[0] is not None:
                    return (0, None, made, load_serial,
                            (written[0], (writes, inserting), written[2]))
                locking, changes = written[1]
                rows_have_states = False
            else:
                locking, changes = answers.receive()
                rows_have_states = with_states
            checked = locking.rows
            seen, locked = next((tid, lock) for key, tid, lock, _, _ in checked if key is None)
            # (0: gone)
            committed = {key: tid or 0 for key, tid, _, _, _ in checked if key is not None}
            if locked:
                break
            # Something read was replaced before this commit could take the lock. Unless
            # the conflicts may be merged, they are raised now, without waiting for it.
            serials, stale = self._committed_serials(oids, keys, reads, committed)
            if not self._mergeable(stale):
                self._check_conflicts(serials, load_serial, stale)  # raises
            merging = self._states_asked(stale)
            if lost == _MERGES_BEFORE_LOCK:  # merged under the lock, in its round trip
                asked = [(_TAKE_COMMIT_LOCK_NOW, ()),
                         under_lock(_KEEPS)]  # (with states, if small)
                if not with_states:
                    asked.append((_STATES, merging))
                self._lock_asked = True
                _, changes, *fetched = wire.run(conn, asked, begin=True)
                rows_have_states = with_states
                if fetched:
                    _keep_states(states, fetched[0].rows)
                break
            # The states the merges read came with the check: the committed ones and the
            # ones read (by the serials read)
            started = dict(zip(merging["o"], merging["t"]))
            found = [(key, tid, data) for key, tid, _, data, _ in checked if data is not None]
            found += [(key, started[key], old) for key, _, _, _, old in checked
                      if old is not None and key in started]
            reads = self._merge_unlocked(oids, keys, reads, started, found, states,
                                         load_serial)
        # What the commits after the check wrote (usually none): its snapshot missed them.
        (_, _, packed, mirror, *_, given_back), *rows = changes.rows
        if not given_back:
            self._lock_taken = time.perf_counter()
        if rows_have_states:
            _keep_states(states, [(oid, tid, data) for tid, _, _, _, oid, data, _, _, _
                                  in rows if oid is not None])
            _keep_states(states, [(oid, read, old) for _, _, _, _, oid, _, read, old, _
                                  in rows if old is not None])
            rows = [row for row in rows if row[4] is None]
        pending = [(tid, written) for tid, written, *_ in rows]
        for tid, written in pending:
            if tid > seen:
                committed.update((key, tid) for key in _ints(written) if key in read)
        serials, stale = self._committed_serials(oids, keys, reads, committed)
        if stale and self._mergeable(stale):
            # Replaced while this commit waited for the lock (a hot spot's usual race):
            # the states the merges read, in one round trip
            missing = [oid for oid in stale if (oid, serials[oid]) not in states]
            if missing:
                _keep_states(states, conn.execute(_STATES, self._states_asked(missing),
                                                  binary=True).fetchall())
        self._check_conflicts(serials, load_serial, stale)
        if given_back:  # (the server found a conflict that the check above must raise)
            raise ConflictError("a record this transaction read was replaced while it "
                                "waited for the commit lock")
        self._pending = pending
        self._pending_packed = packed or 0
        return max(seen, pending[-1][0] if pending else 0), mirror, made, load_serial, None

    def _server_merges(self, oids: list[bytes], keys: list[int], reads: list[int],
                       merges: dict[int, bool], tid_i: int) -> dict[str, Any]:
        """The parameters of _SERVER_MERGE: the records that merge (``merges``), each with
        its serial read and, for a counter (see amphora.symbolic.counter), its class
        pickle and number; the client's tid."""
        stores = self._stores
        mo, mt, mh, mn = [], [], [], []
        for oid, key, read in zip(oids, keys, reads):
            if merges.get(key) and read:
                found = counter(stores[oid])  # type: ignore[arg-type]
                head, number = found if found is not None and \
                    -_COUNTED <= found[1] <= _COUNTED else (b"", 0)
                mo.append(key)
                mt.append(read)
                mh.append(head.hex())
                mn.append(number)
        return {"mo": _array(mo), "mt": _array(mt), "mn": _array(mn),
                "mh": "{" + ",".join([f'"{head}"' for head in mh]) + "}", "tid": tid_i}

    def _written_at_once(self, conn: Any, answers: wire.Answers, timed: bool
                         ) -> tuple[bytes | None, Any, list[Any]]:
        """The answers to a first round trip that carried the writes (see
        _lock_and_check): ``(tid, None, results of the writes)`` if they were made,
        else ``(None, (check, statement under the lock), [])``: the server stopped the
        writes (and a COMMIT sent with them committed nothing), and the lock, if held,
        is kept."""
        results, error = answers.receive_all()
        if error is not None:
            raise error
        locking, changes, merged, *written = results
        _, tid, _, _, _, clock = next(row for row in merged.rows if row[0] is None)
        if tid is None:
            locked = next(lock for key, _, lock, _, _ in locking.rows if key is None)
            self._lock_asked = locked and not changes.rows[0][-1]  # (not given back)
            return None, (locking, changes), []
        (_, _, packed, _, _), *pending = changes.rows
        self._pending = [(tid_, written_) for tid_, written_, *_ in pending]
        self._pending_packed = packed or 0
        stores = self._stores
        for key, _, data, *_ in merged.rows:  # the records the server merged
            if key is None:
                continue
            oid = _pack(key)
            stores[oid] = data
            self._resolved.append(oid)
        if timed:  # committed, and the lock given back by _UNLOCK_TIMED
            self.lock_holds += 1
            self.lock_held += max(written[-1].rows[0][1] - clock, 0) / 1e6
        else:  # held until tpc_finish: counted from here
            self._lock_taken = time.perf_counter()
        return _pack(tid), None, written

    def _merge_hints(self, oids: list[bytes], keys: list[int]) -> dict[int, bool]:
        """Which stores' conflicts the storage's own resolver would try to merge, by oid
        key (none with another resolver: the server's asks its client, which is not done
        while the lock is held)."""
        if self._conflict_resolver() is not resolve_record:
            return {}
        stores, checks = self._stores, self._checks
        return {key: resolvable(stores[oid]) for oid, key in zip(oids, keys)
                if stores[oid] is not None and oid not in checks}

    def _merge_unlocked(self, oids: list[bytes], keys: list[int], reads: list[int],
                        started: dict[int, int], fetched: list[tuple[int, int, bytes]],
                        states: dict[tuple[bytes, bytes], bytes],
                        load_serial: Callable[[bytes, bytes], bytes]) -> list[int]:
        """Merge the stale stores ``started`` (the serial read, by oid key) against the
        states committed now, ``fetched`` (oid key, tid, data: the committed states and the
        ones read), without the lock; each merged record is then read at the state it
        merged (the new ``reads``, returned). Raises the conflicts that do not merge."""
        _keep_states(states, fetched)
        newest: dict[int, int] = {}
        for oid, tid, _ in fetched:  # the current row's tid, above the revision read
            newest[oid] = max(tid, newest.get(oid, 0))
        # (an object whose current row is gone has only the revision read: no merge)
        committed = {key: 0 if newest.get(key, read) == read else newest[key]
                     for key, read in started.items()}
        serials, stale = self._committed_serials(oids, keys, reads, committed)
        self._check_conflicts(serials, load_serial, stale)
        for oid in stale:  # merged: based on the committed state now
            self._serials[oid] = serials[oid]
        return _ints(b"".join(map(self._serials.__getitem__, oids)))

    def _states_asked(self, stale: list[bytes]) -> dict[str, list[int]]:
        """The parameters of _STATES for the merges of ``stale``: their oids and the
        serials their writers read."""
        return {"o": _ints(b"".join(stale)),
                "t": _ints(b"".join(map(self._serials.__getitem__, stale)))}

    def _committed_serials(self, oids: list[bytes], keys: list[int], reads: list[int],
                           committed: dict[int, int]) -> tuple[dict[bytes, bytes], list[bytes]]:
        """What :meth:`_check_conflicts` takes: the committed serials of the stale stores
        and of the read checks, and the stale stores, given the ``committed`` tid of each
        oid key read that changed (0: deleted)."""
        serials: dict[bytes, bytes] = {}
        stale = []
        for oid, key, read in zip(oids, keys, reads):
            if read and committed.get(key, read) != read:  # usually none
                stale.append(oid)
                serials[oid] = _pack(committed[key])
        for oid, serial in self._checks.items():
            key = _u(oid)
            serials[oid] = _pack(committed[key]) if key in committed else serial
        return serials, stale

    def _row_params(self, tid: int, rows: list[tuple[int, bytes]], mirrored: bool,
                    made: _Made) -> tuple[str | None, dict[str, Any]]:
        """How the documents of a write travel (a key of _WRITES) and its parameters."""
        datas = [data for _, data in rows]
        params = _rows(tid, rows, made.references(datas))
        if not mirrored:
            return None, params
        how, classes, states = self._commit_documents(made.documents(datas))
        params["classes"] = classes
        params["states"] = states
        return how, params

    def _rollback(self) -> None:
        conn = self._writer
        self._pending = []
        if conn is not None:
            # (and the commit lock, if this vote took it and did not give it back)
            ending = [("ROLLBACK", ())] * wire.in_transaction(conn) \
                + [(_UNLOCK, ())] * self._lock_asked
            try:
                if ending:
                    wire.run(conn, ending)
                self._lock_asked = False
            except self._psycopg.Error:
                pass  # a failed rollback leaves nothing committed either (and a broken
                # session, replaced below, holds no lock)
            self._held()
            if conn.broken:
                self._lock_asked = False
                self._writer = None
                conn.close()

    def _finish(self, func: Callable[[bytes], None] | None) -> bytes:
        if self._finished_tid is not None:  # committed by its vote, func's work done there
            tid, self._finished_tid = self._finished_tid, None
            return tid
        tid = self._voted_tid
        conn = self._writer
        if conn is None or tid is None:
            raise StorageError(f"{self.__name__} is closed")
        try:
            wire.run(conn, [("COMMIT", ()), (_UNLOCK, ())])  # the durability point
            self._lock_asked = False
        except self._psycopg.Error as exc:
            self._rollback()
            raise self._error(exc) from exc
        self._held()
        self._settle_blobs()
        # The transaction is durable now: whatever happens below, the tid is published.
        return self._publish(tid, func)

    def _stored_oids_up_to(self, top: int) -> None:
        with self._oid_lock:
            if self._oids and self._oids[0] <= top:
                self._oids = [oid for oid in self._oids if oid > top]

    def _abort(self) -> None:
        if self._finished_tid is not None:  # committed by its vote: nothing to undo
            self._finished_tid = None
            return
        self._rollback()
        self._discard_blobs()

    # -- closing --------------------------------------------------------------------
    def _close_connections(self) -> None:
        self._close_mirror_connections()
        self._close_blob_cache()
        with self._readers_lock:
            readers, self._readers = list(self._readers), weakref.WeakSet()
        conns = [reader.conn for reader in readers]
        conns += [self._poller, self._writer, self._waiter]
        self._poller = self._writer = self._waiter = None
        for conn in conns:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass

    # -- after a fork -----------------------------------------------------------------
    def _kept_open(self) -> list[Any]:
        """Every connection this storage keeps open (held across a fork, see _fork)."""
        conns = [reader.conn for reader in list(self._readers)]
        conns += [holder.conn for holder in list(self._mirror_conns())]
        return conns + [self._poller, self._writer, self._waiter]

    def _forked(self, kept: list[Any]) -> None:
        """In the child, at the fork (no other thread runs): let go of the parent's
        sessions without a message sent (their sockets made /dev/null first: closing sends
        Terminate), and forget the thread-locals that held some, the locks, the oids
        reserved (the parent hands them out) and the commit in progress. Each thread opens
        its own sessions at its next call."""
        for conn in kept:
            try:
                _fork.drop_descriptor(conn.pgconn.socket)
            except self._psycopg.Error:
                continue  # closed already
            conn.pgconn.finish()
        self._local = threading.local()
        self._readers = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self.__dict__.pop("_mirror_conn_set", None)
        self.__dict__.pop("_mirror_conn_lock", None)
        self._poller = self._writer = self._waiter = None
        self._waiter_lock = threading.Lock()
        self._oid_lock = threading.Lock()
        self._oids = []
        self._oid_block = _OID_BLOCK
        self._pending = []
        self._voted_tid = self._finished_tid = self._lock_taken = None
        self._record_cache_forked()
        self._forget_commit_after_fork()


def _rows(tid: int, rows: list[tuple[int, bytes]], refs: list[str]) -> dict[str, Any]:
    """The parameters of a write (see _ROWS) of ``(oid, data)`` rows whose references are
    ``refs`` (array literals, see _refs_literal), without documents."""
    datas = [data for _, data in rows]
    lengths = list(map(len, datas))
    return {"tid": tid, "oids": b"".join([_pack(key) for key, _ in rows]),
            "datas": b"".join(datas), "lengths": ",".join(map(str, lengths)),
            "starts": ",".join(map(str, list(accumulate(lengths, initial=0))[:-1])),
            "refs": "|".join(refs)}


def _describe(params: dict[str, Any]) -> str:
    """``user@host:port/dbname`` of connection parameters (never the password)."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user")
    dbname = params.get("dbname") or user or "postgres"
    return f"{user + '@' if user else ''}{host}:{port}/{dbname}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _array(ints: Iterable[int]) -> str:
    """An array literal of integers: sent as one text value (cast by the statement),
    cheaper for the driver than a list it adapts element by element."""
    return "{" + ",".join(map(str, ints)) + "}"


def _keep_states(states: dict[tuple[bytes, bytes], bytes],
                 rows: list[tuple[int, int, bytes]]) -> None:
    """Keep the rows of _STATES (oid, tid, data) in ``states``, by (oid, tid) bytes."""
    states.update(((_pack(oid), _pack(tid)), data) for oid, tid, data in rows)
