"""The JSON mirror of a PostgreSQL storage: every current record also as a JSONB document.

Private: a part of :class:`amphora.storage.postgresql.PostgreSQLStorage` (see
:class:`MirrorMixin`). The same design as the SQLite storage's mirror
(:mod:`amphora.storage.sqlite.mirror`), in PostgreSQL's terms, except where the documents
are: columns of the records' own rows, which the mirror adds to ``objects`` (and drops
with it), read through a view::

    objects(oid, tid, data, refs, class_name text, state jsonb, state_tid bigint)
    amphora_objects = SELECT oid, state_tid AS tid, class_name, state FROM objects
                      WHERE state IS NOT NULL
    amphora_text_indexes(name text PRIMARY KEY, fields text[], class_name text)

``state_tid`` is the tid of the record the document was made from. ``mirror`` in
``amphora_meta`` is ``sync`` (a commit writes each row with its document, in the same
statement; ``state_tid`` is then the row's ``tid``) or ``follow`` (commits leave the
documents as they are, and a follower writes them afterwards from the watermark
``mirror_watermark``; objects created since are missing from the view until then). A
document costs no row, index entry or WAL record of its own: it goes with its row to
pack, and never to ``revisions`` or ``replaced`` (whose copies name their columns).
``objects`` gets ``fillfactor = 60`` with the mirror (room on each page for the next
versions of its longer rows, so that an update changing no indexed column stays a HOT
update), 80 without.

The view is read-only (an ``INSTEAD OF`` trigger refuses writes: it reads the records'
own table). Indexes on the documents (``create_index``, text indexes) are indexes on
``objects``, which a query on the view uses as it would on the table. Text indexes are
GIN indexes on ``to_tsvector('english', ...)`` of the indexed fields; their definitions
are kept in ``amphora_text_indexes`` so that a search can repeat the indexed expression.

Mirrors made before (a table ``amphora_objects`` of its own, emptied by a trigger on
``objects`` at pack) are moved into the columns when a writable storage opens the
database or ``create_mirror`` runs: the documents, then every index the old table had
(re-created under the same name on ``objects``, from ``pg_indexes``).
"""
from __future__ import annotations

import re
import threading
import weakref
from typing import Any, Callable, Sequence

from amphora.errors import InvalidQueryError, InvalidURIError, MirrorError, StorageError
from amphora.storage.sql.mirror import (MODES, NO_MIRROR, MirrorBase, QueryConnection,
                                        check_before, check_fields, check_mode, check_timeout,
                                        class_filter, placeholders, timed_out)
from amphora.storage.sql.keys import _ints
from amphora.storage.postgresql.schema import _LAST_TID

__all__ = ["MirrorMixin", "check_role", "documents_of"]

# A row with its document is about twice as long as without (a small object's record of
# 300 bytes has a jsonb document of 440); fillfactor 60 leaves room on each page for the
# next version of two rows out of three (80 without the mirror: four out of five of the
# shorter rows), so that updates changing no indexed column stay on their pages (HOT
# updates, without new index entries: a 1000-object update cost +28% with 70, +21..24%
# with 60).
_ADD_COLUMNS = ("ALTER TABLE objects ADD COLUMN IF NOT EXISTS class_name text,"
                " ADD COLUMN IF NOT EXISTS state jsonb,"
                " ADD COLUMN IF NOT EXISTS state_tid bigint, SET (fillfactor = 60)")
_CREATE_MIRROR = (
    _ADD_COLUMNS,
    # partial: records without a document yet (follow mode) cost no entry
    "CREATE INDEX IF NOT EXISTS amphora_objects_class ON objects (class_name)"
    " WHERE class_name IS NOT NULL",
    "CREATE OR REPLACE VIEW amphora_objects AS SELECT oid, state_tid AS tid, class_name,"
    " state FROM objects WHERE state IS NOT NULL",
    # A simple view can be written through: this one would write the records' table.
    "CREATE OR REPLACE FUNCTION amphora_objects_read_only() RETURNS trigger"
    " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'amphora_objects is read-only"
    " (amphora writes the documents with the records)'; END $$",
    "DROP TRIGGER IF EXISTS amphora_objects_read_only ON amphora_objects",
    "CREATE TRIGGER amphora_objects_read_only INSTEAD OF INSERT OR UPDATE OR DELETE"
    " ON amphora_objects FOR EACH ROW EXECUTE FUNCTION amphora_objects_read_only()",
    "CREATE TABLE IF NOT EXISTS amphora_text_indexes (name text PRIMARY KEY,"
    " fields text[] NOT NULL, class_name text)",
)
# Dropping columns is quick (the catalog only; the space comes back as rows are written
# again), as is dropping the view; the columns' indexes go with them.
_DROP_MIRROR = (
    "DELETE FROM amphora_meta WHERE key IN ('mirror', 'mirror_watermark')",
    "DROP TABLE IF EXISTS amphora_text_indexes",
    "DROP VIEW IF EXISTS amphora_objects",
    "DROP FUNCTION IF EXISTS amphora_objects_read_only()",
    "ALTER TABLE objects DROP COLUMN IF EXISTS class_name, DROP COLUMN IF EXISTS state,"
    " DROP COLUMN IF EXISTS state_tid, SET (fillfactor = 80)",
)
# -- mirrors made before: a table of their own ----------------------------------------------
_MIRROR_RELATION = ("SELECT c.relkind FROM pg_class AS c JOIN pg_namespace AS n"
                    " ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND c.relname = 'amphora_objects'")
_OLD_INDEXES = ("SELECT indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = current_schema() AND tablename = 'amphora_objects'"
                " AND indexname NOT IN ('amphora_objects_pkey', 'amphora_objects_class')"
                " ORDER BY indexname")
_OLD_TABLE = re.compile(r" ON (ONLY )?(\S+\.)?amphora_objects USING ")
_MOVE_DOCUMENTS = ("UPDATE objects AS o SET class_name = a.class_name, state = a.state,"
                   " state_tid = a.tid FROM amphora_objects AS a WHERE a.oid = o.oid")
_DROP_OLD_TABLE = (
    "DROP TRIGGER IF EXISTS amphora_objects_gone ON objects",
    "DROP FUNCTION IF EXISTS amphora_objects_gone()",
    "DROP TABLE amphora_objects",
)
_MIRROR_KEY = "SELECT value FROM amphora_meta WHERE key = 'mirror'"
_WATERMARK = "SELECT value::bigint FROM amphora_meta WHERE key = 'mirror_watermark'"
_SET_META = ("INSERT INTO amphora_meta (key, value) VALUES (%s, %s)"
             " ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_COMMITS_AFTER = "SELECT tid, oids FROM transactions WHERE tid > %s ORDER BY tid LIMIT %s"
_BEHIND = "SELECT count(*) FROM transactions WHERE tid > %s"
# The follower and the backfill lock the rows they read, in oid order (the order in which
# a commit writes them: neither waits for the other while holding what the other needs).
_CURRENT_RECORDS = ("SELECT oid, tid, data FROM objects WHERE oid = ANY(%s::bigint[])"
                    " ORDER BY oid FOR NO KEY UPDATE")
_OBJECTS_AFTER = ("SELECT oid, tid, data FROM objects WHERE oid > %s ORDER BY oid LIMIT %s"
                  " FOR NO KEY UPDATE")
_COUNT_OBJECTS = "SELECT count(*) FROM objects"
# A document is written only beside the record it was made from.
_SET_DOCUMENTS = (
    "UPDATE objects AS o SET class_name = d.c, state = d.s::jsonb, state_tid = d.t"
    " FROM unnest(%s::bigint[], %s::bigint[], {texts}) AS d (k, t, c, s)"
    " WHERE o.oid = d.k AND o.tid = d.t")
# Class names and documents travel as two strings cut apart in the server (a text array
# costs the driver an escaped element each: several times slower for a commit's worth),
# each element preceded by chr(30), which JSON text never holds raw; a class name that
# holds it sends both as arrays. An empty state is NULL: a deletion record's (no document).
_JOINED = "(string_to_array(%s, chr(30)))[2:], (string_to_array(%s, chr(30), ''))[2:]"
_SET_JOINED_DOCUMENTS = _SET_DOCUMENTS.format(texts=_JOINED)
_SET_DOCUMENT_ARRAYS = _SET_DOCUMENTS.format(texts="%s::text[], %s::text[]")
_SEPARATOR = "\x1e"
_TEXT_INDEX = "SELECT fields, class_name FROM amphora_text_indexes WHERE name = %s"
# -- searches ---------------------------------------------------------------------------------
# Read-write only until the overlay of a search at a snapshot is made (see query_mirror).
_BEGIN_SEARCH = "BEGIN ISOLATION LEVEL REPEATABLE READ READ WRITE"
_QUERY_STATE = ("SELECT (SELECT value FROM amphora_meta WHERE key = 'mirror'),"
                " (SELECT coalesce(max(tid), 0) FROM transactions)")
_SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"
_SET_ROLE = "SELECT set_config('role', %s, true)"  # SET LOCAL ROLE
_CHANGED_SINCE = "SELECT oids FROM transactions WHERE tid >= %s"
_SNAPSHOT_RECORDS = ("SELECT DISTINCT ON (oid) oid, tid, data FROM revisions"
                     " WHERE oid = ANY(%s::bigint[]) AND tid < %s ORDER BY oid, tid DESC")
# The overlay is one temporary view (no temporary table: each costs PostgreSQL files and
# catalog rows made and removed per search); its values are written into its definition.
_OVERLAY_VIEW = (
    "CREATE TEMP VIEW amphora_objects AS SELECT oid, tid, class_name, state"
    " FROM {schema}.amphora_objects WHERE oid <> ALL({changed}::bigint[])"
    " UNION ALL SELECT * FROM ({snapshot}) AS snapshot (oid, tid, class_name, state)")
_NO_SNAPSHOT = "SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::jsonb WHERE false"
_GRANT_OVERLAY = "GRANT SELECT ON pg_temp.amphora_objects TO {}"
_BACKFILL_CHUNK = 1000
_FOLLOW_BATCH = 200
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
_ROLE = _NAME


def documents_of(datas: Sequence[bytes]) -> list[tuple[str, str | None]]:
    """``(class name, JSON state)`` of each record; ``("", None)`` for a deletion record
    (empty: an undone creation, see :mod:`amphora.storage.undo`), which has no document
    and so leaves the mirror."""
    from amphora.jsonpickle import records_to_json
    if all(datas):
        return records_to_json(list(datas))
    documents = iter(records_to_json([data for data in datas if data]))
    return [next(documents) if data else ("", None) for data in datas]


def _documents(datas: Sequence[bytes]) -> tuple[str, Any, Any]:
    """The class names and JSON states of records, and how they travel (see _travelling)."""
    return _travelling(documents_of(datas))


def _travelling(documents: Sequence[tuple[str, str | None]]) -> tuple[str, Any, Any]:
    """``(class name, JSON state)`` documents as they travel: ``"joined"`` (two strings,
    every element preceded by chr(30), a missing state empty) or ``"arrays"`` (two
    lists)."""
    # jsonpickle never writes \u0000, which jsonb refuses, nor an empty state
    classes, states = map(list, zip(*documents))
    joined = _SEPARATOR + _SEPARATOR.join(classes)
    if joined.count(_SEPARATOR) != len(classes):  # a class name holding chr(30)
        return "arrays", classes, states
    return "joined", joined, _SEPARATOR + _SEPARATOR.join([state or "" for state in states])


def _set_documents(conn: Any, rows: Sequence[tuple[int, int, bytes]]) -> None:
    """Write the documents of ``(oid, tid, data)`` rows, each beside its record (a row
    holding another revision now is left alone)."""
    if not rows:
        return
    how, classes, states = _documents([data for _, _, data in rows])
    statement = _SET_JOINED_DOCUMENTS if how == "joined" else _SET_DOCUMENT_ARRAYS
    conn.execute(statement, [[key for key, _, _ in rows], [tid for _, tid, _ in rows],
                             classes, states])


def check_role(role: str | None) -> str | None:
    """A ``search_role`` option: None, or the name of a PostgreSQL role."""
    if role is not None and (not isinstance(role, str) or not _ROLE.match(role)):
        raise InvalidURIError(f"search_role must be a lower-case role name (letters, digits, "
                              f"_), not {role!r}")
    return role


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidQueryError(
            f"index name must be a plain lower-case SQL identifier, not {name!r}")
    return name


def _text_expression(fields: Sequence[str]) -> str:
    parts = []
    for field in fields:
        path = field.split(".")
        getter = (f"state ->> '{path[0]}'" if len(path) == 1
                  else "state #>> '{" + ",".join(path) + "}'")
        parts.append(f"coalesce({getter}, '')")
    return "to_tsvector('english', " + " || ' ' || ".join(parts) + ")"


def _pipelined(conn: Any, work: Callable[[], Any]) -> Any:
    """``work()`` in one of ``conn``'s pipelines; an error it raises is the error raised.

    When a statement fails, whether the error surfaces inside the block or when the
    pipeline closes depends on how far the server's answers have come; in the first
    case the close fails again ("pipeline aborted") and psycopg logs that second error
    as a warning, which a command would print beside the real one."""
    failure: BaseException | None = None
    try:
        with conn.pipeline():
            try:
                return work()
            except Exception as exc:
                failure = exc
    except Exception:
        if failure is None:
            raise
    assert failure is not None
    raise failure

class MirrorMixin(MirrorBase):
    """Part of :class:`~amphora.storage.postgresql.PostgreSQLStorage`: the JSON mirror.

    Uses these attributes of the storage: ``_connect(autocommit)``, ``_error(exc)``,
    ``_psycopg``, ``_local``, ``_where``, ``_check_writable()``, ``_closed``,
    ``_commit_lock_sql``, ``_ddl_lock_sql``; ``_write`` calls :meth:`_mirror_documented` and
    :meth:`_commit_documents`, opening for writing :meth:`_upgrade_mirror`, and
    ``_close_connections`` :meth:`_close_mirror_connections`.
    """

    supports_mirror = True
    #: the role searches run under (``SET LOCAL ROLE``), None: the storage's own user
    search_role: str | None = None

    @property
    def _mirror_where(self) -> str:
        return self._where

    def _last_tid(self) -> int:
        return self._mirror_read(lambda conn: conn.execute(_LAST_TID).fetchone()[0])

    # -- state ------------------------------------------------------------------------
    def mirror_mode(self) -> str | None:
        """``"sync"``, ``"follow"`` or None (no mirror)."""
        row = self._mirror_read(lambda conn: conn.execute(_MIRROR_KEY).fetchone())
        return row[0] if row is not None and row[0] in MODES else None

    def mirror_watermark(self) -> int:
        """The tid (an integer) up to which the documents are current."""
        def read(conn: Any) -> int:
            mode = conn.execute(_MIRROR_KEY).fetchone()
            if mode is None or mode[0] not in MODES:
                raise MirrorError(f"{self._where} {NO_MIRROR}")
            query = _LAST_TID if mode[0] == "sync" else _WATERMARK
            return conn.execute(query).fetchone()[0] or 0
        return self._mirror_read(read)

    def _mirror_documented(self, found: str | None) -> bool:
        """Inside a commit, under the commit lock: whether the rows it writes carry their
        documents (``found`` is the value of the ``mirror`` key the commit read, or None)."""
        return found == "sync"

    _mirror_synced = False  # the last commit wrote documents: the next one likely will

    @staticmethod
    def _commit_documents(documents: Sequence[tuple[str, str]]) -> tuple[str, Any, Any]:
        """The class names and JSON states of the records a commit writes, as they
        travel: ``"joined"`` (two strings, each element preceded by chr(30)) or
        ``"arrays"`` (two lists)."""
        return _travelling(documents)

    # -- making and dropping ------------------------------------------------------------
    def create_mirror(self, progress: Callable[[int, int], None] | None = None,
                      mode: str = "sync") -> int:
        """As :meth:`amphora.storage.sqlite.SQLiteStorage.create_mirror`."""
        check_mode(mode)
        self._check_writable()
        self._refuse_sealed()

        def start(conn: Any) -> None:
            with conn.transaction():
                conn.execute(self._ddl_lock_sql)  # no commit writes meanwhile
                self._move_old_mirror(conn)
                for statement in _CREATE_MIRROR:
                    conn.execute(statement)
                was = conn.execute(_MIRROR_KEY).fetchone()
                if mode == "follow" and (was is None or was[0] != "follow"):
                    last = conn.execute(_LAST_TID).fetchone()[0]
                    conn.execute(_SET_META, ("mirror_watermark", str(last)))
                conn.execute(_SET_META, ("mirror", mode))

        def create(conn: Any) -> int:
            start(conn)
            return self._backfill(conn, progress)
        return self._mirror_admin(create)

    def drop_mirror(self) -> None:
        self._check_writable()

        def drop(conn: Any) -> None:
            with conn.transaction():
                conn.execute(self._ddl_lock_sql)  # a commit writing documents ends first
                if self._old_mirror(conn):
                    for statement in _DROP_OLD_TABLE:
                        conn.execute(statement)
                for statement in _DROP_MIRROR:
                    conn.execute(statement)
        self._mirror_admin(drop)

    def _upgrade_mirror(self, conn: Any) -> None:
        """On opening for writing a database that has a mirror (``conn`` is autocommit):
        move a mirror made before into the columns of ``objects``."""
        if not self._old_mirror(conn):
            return
        with conn.transaction():
            conn.execute(self._ddl_lock_sql)
            self._move_old_mirror(conn)

    @staticmethod
    def _old_mirror(conn: Any) -> bool:
        """Whether the mirror is one made before: a table of its own."""
        found = conn.execute(_MIRROR_RELATION).fetchone()
        return found is not None and found[0] == "r"

    def _move_old_mirror(self, conn: Any) -> None:
        """In a transaction holding the commit lock: the documents and indexes of a mirror
        made before moved into ``objects`` (nothing if there is none)."""
        if not self._old_mirror(conn):
            return
        indexes = conn.execute(_OLD_INDEXES).fetchall()
        conn.execute(_ADD_COLUMNS)
        conn.execute(_MOVE_DOCUMENTS)
        for statement in _DROP_OLD_TABLE:  # its indexes go with it
            conn.execute(statement)
        for statement in _CREATE_MIRROR:
            conn.execute(statement)
        for _, definition in indexes:
            moved, found = _OLD_TABLE.subn(" ON objects USING ", definition, count=1)
            if not found:
                raise MirrorError(f"{self._where}: cannot move index {definition!r} "
                                  "of the mirror to the table of records")
            conn.execute(moved)

    def _count_objects(self, conn: Any) -> int:
        return conn.execute(_COUNT_OBJECTS).fetchone()[0]

    def _backfill_chunk(self, conn: Any, after: int) -> list:
        with conn.transaction():
            rows = conn.execute(_OBJECTS_AFTER, (after, _BACKFILL_CHUNK),
                                binary=True).fetchall()
            _set_documents(conn, rows)
        return rows

    # -- the follower -------------------------------------------------------------------
    def follow_mirror(self, until: float | None = 0.0, interval: float = 0.2,
                      progress: Callable[[int, int], None] | None = None) -> int:
        """As :meth:`amphora.storage.sqlite.SQLiteStorage.follow_mirror`."""
        self._check_follow_mode()
        conn = self._follower_connection()
        try:
            return self._keep_following(conn, until, interval, progress)
        except self._psycopg.Error as exc:
            self._local.follow_conn = None  # a new connection next time
            conn.close()
            raise self._error(exc) from exc

    def _follower_connection(self) -> Any:
        """The thread's follower connection (kept: a caller may follow often, each call
        catching up with a few commits)."""
        return self._kept_connection("follow_conn", read_only=False)

    def _follow(self, conn: Any, progress: Callable[[int, int], None] | None) -> int:
        done = 0
        while True:
            with conn.transaction():
                mark = conn.execute(_WATERMARK).fetchone()
                mark = mark[0] if mark is not None else 0
                commits = conn.execute(_COMMITS_AFTER, (mark, _FOLLOW_BATCH),
                                       binary=True).fetchall()
                if commits:
                    keys = sorted({key for _, oids in commits for key in _ints(bytes(oids))})
                    rows = conn.execute(_CURRENT_RECORDS, (keys,), binary=True).fetchall()
                    _set_documents(conn, rows)
                    conn.execute(_SET_META, ("mirror_watermark", str(commits[-1][0])))
            if not commits:
                return done
            done += len(commits)
            if progress is not None:
                behind = conn.execute(_BEHIND, (commits[-1][0],)).fetchone()[0]
                progress(done, done + behind)

    # -- indexes ------------------------------------------------------------------------
    def create_mirror_index(self, name: str, expression: str, class_name: str | None = None,
                            unique: bool = False) -> None:
        _check_name(name)
        where = f" WHERE {class_filter(class_name)}" if class_name is not None else ""
        kind = "UNIQUE INDEX" if unique else "INDEX"
        # on the table the view reads (PostgreSQL indexes no view): a query on the view
        # uses it
        self._mirror_ddl([f"CREATE {kind} IF NOT EXISTS {name} ON objects"
                          f" (({expression})){where}"], [])

    def create_text_index(self, name: str, fields: Sequence[str],
                          class_name: str | None = None) -> None:
        """A full-text index: a GIN index on the english ``tsvector`` of ``fields``."""
        _check_name(name)
        fields = check_fields(fields)
        where = f" WHERE {class_filter(class_name)}" if class_name is not None else ""
        vector = _text_expression(fields)
        self._mirror_ddl(
            [f"CREATE INDEX {name} ON objects USING GIN (({vector})){where}"],
            [("INSERT INTO amphora_text_indexes (name, fields, class_name) VALUES (%s, %s, %s)",
              (name, fields, class_name))])

    def _mirror_ddl(self, statements: list[str], inserts: list[tuple[str, tuple]]) -> None:
        self._check_writable()
        psycopg = self._psycopg

        def run(conn: Any) -> None:
            if conn.execute(_MIRROR_KEY).fetchone() is None:
                raise MirrorError(f"{self._where} {NO_MIRROR}")
            try:
                with conn.transaction():
                    for statement in statements:
                        conn.execute(statement)
                    for statement, params in inserts:
                        conn.execute(statement, params)
            except (psycopg.errors.SyntaxError, psycopg.errors.UndefinedColumn,
                    psycopg.errors.UndefinedFunction, psycopg.errors.DuplicateTable,
                    psycopg.errors.UniqueViolation, psycopg.errors.DatatypeMismatch,
                    psycopg.errors.InvalidObjectDefinition) as exc:
                raise InvalidQueryError(f"{exc} (in {statements[0]!r})") from exc
        self._mirror_admin(run)

    # -- queries ------------------------------------------------------------------------
    def query_mirror(self, sql: str, params: Sequence[Any] = (), before: bytes | None = None,
                     timeout: float | None = None) -> list[tuple]:
        """The rows of a read-only SQL query (``%s`` placeholders) over the mirror: as of
        the latest commit, or with ``before`` (a tid) as if ``amphora_objects`` held the
        documents of the records with tids below it (see :meth:`_overlay`).

        The query runs alone (one statement) in a ``REPEATABLE READ`` transaction made
        read-only before it runs, under ``search_role`` when the storage has one, and
        cancelled after ``timeout`` seconds; the transaction is rolled back, with
        whatever settings the query changed."""
        statement = placeholders(sql, "format")
        snapshot = check_before(before)
        timeout = check_timeout(timeout)
        conn = self._query_connection()
        psycopg = self._psycopg
        def search() -> Any:
            conn.execute(_BEGIN_SEARCH)
            mode, last = conn.execute(_QUERY_STATE).fetchone()
            if mode not in MODES:
                raise MirrorError(f"{self._where} {NO_MIRROR}")
            if snapshot is not None and last >= snapshot:
                self._overlay(conn, snapshot)
            conn.execute("SET TRANSACTION READ ONLY")
            if timeout is not None:
                conn.execute(_SET_TIMEOUT, (f"{max(1, round(timeout * 1000))}ms",))
            if self.search_role is not None:
                conn.execute(_SET_ROLE, (self.search_role,))
            found = conn.execute(statement, tuple(params))
            conn.execute("ROLLBACK")
            return found
        try:
            # two round trips; one statement per query (extended protocol)
            return _pipelined(conn, search).fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise timed_out(timeout or 0, sql) from exc
        except psycopg.errors.UndefinedTable as exc:
            if "amphora_meta" in str(exc):
                raise self._error(exc) from exc
            raise InvalidQueryError(f"{_first_line(exc)} (in {sql!r})") from exc
        except (psycopg.ProgrammingError, psycopg.DataError,
                psycopg.errors.ReadOnlySqlTransaction, psycopg.IntegrityError) as exc:
            raise InvalidQueryError(f"{_first_line(exc)} (in {sql!r})") from exc
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._end_search(conn)

    def _end_search(self, conn: Any) -> None:
        """Leave the search connection in no transaction (or drop it if it broke)."""
        if conn.broken or conn.closed:
            self._local.mirror_conn = None
        elif conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except self._psycopg.Error:
                self._local.mirror_conn = None
                conn.close()

    def _overlay(self, conn: Any, before: int) -> None:
        """In the search's transaction (not yet read-only): shadow ``amphora_objects`` with
        a temporary view of the documents at snapshot ``before`` (PostgreSQL looks in
        ``pg_temp`` first), dropped with the transaction.

        The objects written by transactions since (found in ``transactions``, by its
        primary key) leave the view; the document of each one's revision at the snapshot
        (the last before it, from ``revisions``), transcoded as a commit writes it, takes
        their place. An object without such a revision (created since; or replaced since
        in a history-free schema, which keeps none) is not in the view, as a load at the
        snapshot would not find it."""
        from psycopg import sql

        from amphora.jsonpickle import records_to_json
        changed = sorted({key for (oids,) in conn.execute(_CHANGED_SINCE, (before,),
                                                          binary=True).fetchall()
                          for key in _ints(bytes(oids))})
        rows = conn.execute(_SNAPSHOT_RECORDS, (changed, before), binary=True).fetchall()
        rows = [row for row in rows if row[2]]  # a deletion record: no object then
        snapshot = sql.SQL(_NO_SNAPSHOT)
        if rows:
            documents = records_to_json([bytes(row[2]) for row in rows])
            snapshot = sql.SQL("VALUES {}").format(sql.SQL(", ").join(
                sql.SQL("({}::bigint, {}::bigint, {}::text, {}::jsonb)").format(
                    sql.Literal(row[0]), sql.Literal(row[1]), sql.Literal(class_name),
                    sql.Literal(state))
                for row, (class_name, state) in zip(rows, documents)))
        conn.execute(sql.SQL(_OVERLAY_VIEW).format(
            schema=sql.Identifier(self.schema), changed=sql.Literal(changed),
            snapshot=snapshot))
        if self.search_role is not None:
            conn.execute(sql.SQL(_GRANT_OVERLAY).format(sql.Identifier(self.search_role)))

    def text_query(self, name: str, query: str) -> tuple[str, list[Any]]:
        """The SQL and parameters selecting the oids matching ``query`` (PostgreSQL's
        ``websearch_to_tsquery`` syntax) in text index ``name``, best first."""
        _check_name(name)
        found = self.query_mirror(_TEXT_INDEX, [name])
        if not found:
            raise InvalidQueryError(f"no text index named {name!r}")
        fields, class_name = found[0]
        vector = _text_expression(fields)
        where = f" AND {class_filter(class_name)}" if class_name is not None else ""
        sql = (f"SELECT oid FROM amphora_objects WHERE {vector}"
               f" @@ websearch_to_tsquery('english', %s){where}"
               f" ORDER BY ts_rank({vector}, websearch_to_tsquery('english', %s)) DESC, oid")
        return sql, [query, query]

    # -- connections --------------------------------------------------------------------
    def _query_connection(self) -> Any:
        """The thread's search connection (read-only)."""
        return self._kept_connection("mirror_conn", read_only=True)

    def _kept_connection(self, name: str, read_only: bool) -> Any:
        """An autocommit connection kept per thread as ``self._local.<name>`` (dropped by
        setting it to None) and closed with the storage."""
        holder = getattr(self._local, name, None)
        if holder is not None and not holder.conn.closed:
            return holder.conn
        if self._closed:
            raise StorageError(f"{self.__name__} is closed")
        conn = self._connect(autocommit=True)
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
        holder = QueryConnection(conn)
        with self._mirror_lock():
            self._mirror_conns().add(holder)
        setattr(self._local, name, holder)
        return conn

    def _mirror_read(self, work: Callable[[Any], Any]) -> Any:
        """``work(conn)`` on the thread's search connection (kept: ``wait_for_mirror``
        asks often)."""
        conn = self._query_connection()
        try:
            return work(conn)
        except self._psycopg.Error as exc:
            if conn.broken:
                self._local.mirror_conn = None
            raise self._error(exc) from exc

    def _mirror_admin(self, work: Callable[[Any], Any]) -> Any:
        """``work(conn)`` on a new autocommit connection, closed afterwards."""
        if self._closed:
            raise StorageError(f"{self.__name__} is closed")
        conn = self._connect(autocommit=True)
        try:
            return work(conn)
        except self._psycopg.Error as exc:
            raise self._error(exc) from exc
        finally:
            conn.close()

    def _mirror_conns(self) -> weakref.WeakSet:
        conns = self.__dict__.get("_mirror_conn_set")
        if conns is None:
            conns = self.__dict__.setdefault("_mirror_conn_set", weakref.WeakSet())
        return conns

    def _mirror_lock(self) -> threading.Lock:
        lock = self.__dict__.get("_mirror_conn_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_mirror_conn_lock", threading.Lock())
        return lock

    def _close_mirror_connections(self) -> None:
        with self._mirror_lock():
            holders = list(self._mirror_conns())
            self._mirror_conns().clear()
        for holder in holders:
            try:
                holder.conn.close()
            except Exception:
                pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
