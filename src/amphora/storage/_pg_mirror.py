"""The JSON mirror of a PostgreSQL storage: every current record also as a JSONB document.

Private: a part of :class:`amphora.storage.postgresql.PostgreSQLStorage` (see
:class:`MirrorMixin`). The same design as the SQLite storage's mirror
(:mod:`amphora.storage._sqlite_mirror`), in PostgreSQL's terms::

    amphora_objects(oid bigint PRIMARY KEY, tid bigint, class_name text, state jsonb)
    amphora_text_indexes(name text PRIMARY KEY, fields text[], class_name text)

``mirror`` in ``amphora_meta`` is ``sync`` (every commit writes its documents in its own
transaction, reading the key under the commit lock) or ``follow`` (a follower writes them
afterwards from the watermark ``mirror_watermark``). Pack's deletes from ``objects``
remove documents through a statement trigger. Text indexes are GIN indexes on
``to_tsvector('english', ...)`` of the indexed fields; their definitions are kept in
``amphora_text_indexes`` so that a search can repeat the indexed expression.
"""
from __future__ import annotations

import re
import threading
import weakref
from typing import Any, Callable, Sequence

from amphora.errors import InvalidQueryError, MirrorError, StorageError
from amphora.search import placeholders
from amphora.storage._mirror_base import (MODES, NO_MIRROR, MirrorBase, QueryConnection,
                                          check_fields, check_mode, class_filter)
from amphora.storage._pg_schema import _ints

__all__ = ["MirrorMixin"]

_CREATE_MIRROR = (
    # Room on each page (fillfactor) for a row's next version: an update that changes no
    # indexed column stays on its page without new index entries (a 1000-document
    # update: 11.9 -> 8.6 ms). Set again for mirrors made before.
    "CREATE TABLE IF NOT EXISTS amphora_objects (oid bigint PRIMARY KEY,"
    " tid bigint NOT NULL, class_name text NOT NULL, state jsonb NOT NULL)"
    " WITH (fillfactor = 70)",
    "ALTER TABLE amphora_objects SET (fillfactor = 70)",
    # pack removes objects with DELETEs on `objects`: their documents go with them (a
    # trigger rather than a foreign key, whose check would cost every insert)
    "CREATE OR REPLACE FUNCTION amphora_objects_gone() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN DELETE FROM amphora_objects WHERE oid IN (SELECT oid FROM gone);"
    " RETURN NULL; END $$",
    "DROP TRIGGER IF EXISTS amphora_objects_gone ON objects",
    "CREATE TRIGGER amphora_objects_gone AFTER DELETE ON objects REFERENCING OLD TABLE AS gone"
    " FOR EACH STATEMENT EXECUTE FUNCTION amphora_objects_gone()",
    "CREATE INDEX IF NOT EXISTS amphora_objects_class ON amphora_objects (class_name)",
    "CREATE TABLE IF NOT EXISTS amphora_text_indexes (name text PRIMARY KEY,"
    " fields text[] NOT NULL, class_name text)",
)
_DROP_MIRROR = (
    "DELETE FROM amphora_meta WHERE key IN ('mirror', 'mirror_watermark')",
    "DROP TABLE IF EXISTS amphora_text_indexes",
    "DROP TRIGGER IF EXISTS amphora_objects_gone ON objects",
    "DROP FUNCTION IF EXISTS amphora_objects_gone()",
    "DROP TABLE IF EXISTS amphora_objects",
)
_MIRROR_KEY = "SELECT value FROM amphora_meta WHERE key = 'mirror'"
_WATERMARK = "SELECT value::bigint FROM amphora_meta WHERE key = 'mirror_watermark'"
_SET_META = ("INSERT INTO amphora_meta (key, value) VALUES (%s, %s)"
             " ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_LAST_TID = "SELECT coalesce(max(tid), 0) FROM transactions"
_COMMITS_AFTER = "SELECT tid, oids FROM transactions WHERE tid > %s ORDER BY tid LIMIT %s"
_BEHIND = "SELECT count(*) FROM transactions WHERE tid > %s"
_CURRENT_RECORDS = "SELECT oid, tid, data FROM objects WHERE oid = ANY(%s::bigint[])"
_OBJECTS_AFTER = "SELECT oid, tid, data FROM objects WHERE oid > %s ORDER BY oid LIMIT %s"
_COUNT_OBJECTS = "SELECT count(*) FROM objects"
# A row is only ever replaced by a newer revision's (a backfill may race a commit).
_UPSERT = (
    "INSERT INTO amphora_objects (oid, tid, class_name, state)"
    " SELECT o, t, c, s::jsonb FROM unnest(%s::bigint[], %s::bigint[], {texts}) AS d (o, t, c, s)"
    " ON CONFLICT (oid) DO UPDATE SET tid = excluded.tid, class_name = excluded.class_name,"
    " state = excluded.state WHERE excluded.tid >= amphora_objects.tid")
# Class names and documents travel as two strings cut apart in the server (a text array
# costs the driver an escaped element each: several times slower for a commit's worth).
# JSON text never holds a raw control character, so chr(30) cannot occur in a document.
_UPSERT_DOCUMENTS = _UPSERT.format(
    texts="string_to_array(%s, chr(30)), string_to_array(%s, chr(30))")
_UPSERT_DOCUMENT_ARRAYS = _UPSERT.format(texts="%s::text[], %s::text[]")
_SEPARATOR = "\x1e"
_TEXT_INDEX = "SELECT fields, class_name FROM amphora_text_indexes WHERE name = %s"
_BACKFILL_CHUNK = 1000
_FOLLOW_BATCH = 200
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


def _upsert_documents(conn: Any, rows: Sequence[tuple[int, int, bytes]]) -> None:
    """Write the documents of ``(oid, tid, data)`` rows (a newer document is never
    replaced by an older one)."""
    from amphora.jsonpickle import records_to_json
    if not rows:
        return
    oids = [key for key, _, _ in rows]
    tids = [tid for _, tid, _ in rows]
    # jsonpickle never writes \u0000, which jsonb refuses
    classes, states = map(list, zip(*records_to_json([data for _, _, data in rows])))
    joined = _SEPARATOR.join(classes)
    if len(rows) > 1 and "" not in classes and joined.count(_SEPARATOR) == len(rows) - 1:
        conn.execute(_UPSERT_DOCUMENTS, [oids, tids, joined, _SEPARATOR.join(states)])
    else:  # one row (an empty string splits into none), or a class name holding chr(30)
        conn.execute(_UPSERT_DOCUMENT_ARRAYS, [oids, tids, classes, states])




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


class MirrorMixin(MirrorBase):
    """Part of :class:`~amphora.storage.postgresql.PostgreSQLStorage`: the JSON mirror.

    Uses these attributes of the storage: ``_connect(autocommit)``, ``_error(exc)``,
    ``_psycopg``, ``_local``, ``_where``, ``_check_writable()``, ``_closed``; ``_write``
    calls :meth:`_mirror_commit` and ``_close_connections`` calls
    :meth:`_close_mirror_connections`.
    """

    supports_mirror = True

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

    def _mirror_commit(self, conn: Any, tid: int, rows: Sequence[tuple[int, bytes]],
                       found: tuple | None) -> None:
        """Inside a commit, under the commit lock: the documents of ``rows`` (oid, data)
        written by transaction ``tid``, if the database keeps a ``sync`` mirror (``found``
        is the row of the ``mirror`` key the commit read under the lock, or None)."""
        if found is not None and found[0] == "sync" and rows:
            _upsert_documents(conn, [(key, tid, data) for key, data in rows])

    # -- making and dropping ------------------------------------------------------------
    def create_mirror(self, progress: Callable[[int, int], None] | None = None,
                      mode: str = "sync") -> int:
        """As :meth:`amphora.storage.sqlite.SQLiteStorage.create_mirror`."""
        check_mode(mode)
        self._check_writable()

        def start(conn: Any) -> None:
            with conn.transaction():
                conn.execute(self._commit_lock_sql)  # no commit writes meanwhile
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
                for statement in _DROP_MIRROR:
                    conn.execute(statement)
        self._mirror_admin(drop)

    def _count_objects(self, conn: Any) -> int:
        return conn.execute(_COUNT_OBJECTS).fetchone()[0]

    def _backfill_chunk(self, conn: Any, after: int) -> list:
        with conn.transaction():
            rows = conn.execute(_OBJECTS_AFTER, (after, _BACKFILL_CHUNK),
                                binary=True).fetchall()
            if rows:
                _upsert_documents(conn, rows)
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
                    if rows:
                        _upsert_documents(conn, rows)
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
        self._mirror_ddl([f"CREATE {kind} IF NOT EXISTS {name} ON amphora_objects"
                          f" (({expression})){where}"], [])

    def create_text_index(self, name: str, fields: Sequence[str],
                          class_name: str | None = None) -> None:
        """A full-text index: a GIN index on the english ``tsvector`` of ``fields``."""
        _check_name(name)
        fields = check_fields(fields)
        where = f" WHERE {class_filter(class_name)}" if class_name is not None else ""
        vector = _text_expression(fields)
        self._mirror_ddl(
            [f"CREATE INDEX {name} ON amphora_objects USING GIN (({vector})){where}"],
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
    def query_mirror(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of a read-only SQL query (``%s`` placeholders) over the mirror."""
        statement = placeholders(sql, "format")
        conn = self._query_connection()
        psycopg = self._psycopg
        try:
            mode = conn.execute(_MIRROR_KEY).fetchone()
            if mode is None or mode[0] not in MODES:
                raise MirrorError(f"{self._where} {NO_MIRROR}")
            return conn.execute(statement, tuple(params)).fetchall()
        except psycopg.errors.UndefinedTable as exc:
            if "amphora_meta" in str(exc):
                raise self._error(exc) from exc
            raise InvalidQueryError(f"{_first_line(exc)} (in {sql!r})") from exc
        except (psycopg.ProgrammingError, psycopg.DataError,
                psycopg.errors.ReadOnlySqlTransaction, psycopg.IntegrityError) as exc:
            raise InvalidQueryError(f"{_first_line(exc)} (in {sql!r})") from exc
        except psycopg.Error as exc:
            if conn.broken:
                self._local.mirror_conn = None
            raise self._error(exc) from exc

    def text_query(self, name: str, query: str) -> tuple[str, list[Any]]:
        """The SQL and parameters selecting the oids matching ``query`` (PostgreSQL's
        ``websearch_to_tsquery`` syntax) in text index ``name``, best first."""
        _check_name(name)
        found = self.query_mirror(
            "SELECT fields, class_name FROM amphora_text_indexes WHERE name = %s", [name])
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
