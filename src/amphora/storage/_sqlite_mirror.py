"""The JSON mirror of an SQLite storage: every current record also as a JSON document.

Private: a part of :class:`amphora.storage.sqlite.SQLiteStorage` (see :class:`MirrorMixin`).

Once a file has a mirror (``create_mirror``), the table ``amphora_objects`` holds one row
per current object::

    amphora_objects(oid INTEGER PRIMARY KEY, tid INTEGER, class_name TEXT, state TEXT)

``state`` is the JSON text :mod:`amphora.jsonpickle` makes of the record (SQLite's JSON
functions and its ``->``/``->>`` operators read it). The ``mirror`` key of
``amphora_meta`` says how documents are written, whichever process commits:

- ``sync``: every commit writes the documents of its records in its own SQLite
  transaction (a commit reads the key under the write lock);
- ``follow``: commits write none; a follower (:meth:`MirrorMixin.follow_mirror`, the
  ``amphora follow`` command) reads the transactions committed after the watermark
  ``mirror_watermark`` (a tid, in ``amphora_meta``) and writes the documents of the objects
  they changed, with the watermark, in one SQLite transaction per batch. It resumes where
  it stopped; :meth:`MirrorMixin.mirror_watermark` tells how far it got.

A trigger removes the row of an object that pack removes, in both modes. Indexes made with
``create_mirror_index`` and ``create_text_index`` are ordinary SQLite indexes and FTS5
tables over this table.
"""
from __future__ import annotations

import re
import sqlite3
import weakref
from typing import Any, Callable, Sequence

from amphora.errors import InvalidQueryError, MirrorError
from amphora.search import placeholders
from amphora.storage._keys import _ints
from amphora.storage._mirror_base import (MODES, MirrorBase, QueryConnection, check_fields,
                                          check_mode, class_filter)
from amphora.storage._sqlite_util import _LAST_TID

__all__ = ["MirrorMixin", "qmark"]


_CREATE_MIRROR = (
    "CREATE TABLE IF NOT EXISTS amphora_objects (oid INTEGER PRIMARY KEY,"
    " tid INTEGER NOT NULL, class_name TEXT NOT NULL, state TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS amphora_objects_class ON amphora_objects (class_name)",
    # pack removes objects with a DELETE on `objects`: their documents go with them
    "CREATE TRIGGER IF NOT EXISTS amphora_objects_gone AFTER DELETE ON objects"
    " BEGIN DELETE FROM amphora_objects WHERE oid = old.oid; END",
)
_MIRROR_KEY = "SELECT value FROM amphora_meta WHERE key = 'mirror'"
_SET_META = ("INSERT INTO amphora_meta (key, value) VALUES (?, ?)"
             " ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_WATERMARK = "SELECT value FROM amphora_meta WHERE key = 'mirror_watermark'"
_COMMITS_AFTER = "SELECT tid, oids FROM transactions WHERE tid > ? ORDER BY tid LIMIT ?"
_CURRENT_RECORDS = "SELECT oid, tid, data FROM objects WHERE oid IN ({marks})"
_FOLLOW_BATCH = 200  # transactions per follower write transaction
_DROP_MIRROR = ("DELETE FROM amphora_meta WHERE key IN ('mirror', 'mirror_watermark')",
                "DROP TRIGGER IF EXISTS amphora_objects_gone",
                "DROP TABLE IF EXISTS amphora_objects")
_OBJECTS_AFTER = "SELECT oid, tid, data FROM objects WHERE oid > ? ORDER BY oid LIMIT ?"
_COUNT_OBJECTS = "SELECT count(*) FROM objects"
# A row is only ever replaced by a newer revision's (a backfill may race a commit). The
# first statement leaves out the class name: setting it, even to the same value, costs an
# update of the class index for every row (a 1000-object update commit: +0.8 ms). When
# it skips rows (an object whose class changed; a newer row, which the second statement
# skips too), its rows get the second one. (Counted with rowcount, which leaves out what
# triggers do: RETURNING would cost as much as the rows' insert.)
_UPSERT_SAME_CLASS = (
    "INSERT INTO amphora_objects (oid, tid, class_name, state) VALUES {values}"
    " ON CONFLICT (oid) DO UPDATE SET tid = excluded.tid, state = excluded.state"
    " WHERE excluded.tid >= amphora_objects.tid"
    " AND excluded.class_name = amphora_objects.class_name")
_UPSERT_DOCUMENTS = (
    "INSERT INTO amphora_objects (oid, tid, class_name, state) VALUES {values}"
    " ON CONFLICT (oid) DO UPDATE SET tid = excluded.tid, class_name = excluded.class_name,"
    " state = excluded.state WHERE excluded.tid >= amphora_objects.tid")
_MAX_ROWS = 128  # documents per statement; a commit's remainder goes in one more statement
_UPSERT_SQL: dict[tuple[str, int], str] = {}  # by statement and number of rows
_BACKFILL_CHUNK = 500
_INDEXES = ("SELECT name, sql FROM sqlite_master WHERE tbl_name = 'amphora_objects'"
            " AND type = 'index' AND name != 'amphora_objects_class'")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def qmark(sql: str) -> str:
    """``sql`` written with ``%s`` placeholders in SQLite's ``?`` style."""
    return placeholders(sql, "qmark")


def check_name(name: str, what: str = "index name") -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.lower().startswith("sqlite"):
        raise InvalidQueryError(f"{what} must be a plain SQL identifier, not {name!r}")
    return name


def _upsert(conn: sqlite3.Connection, statement: str, params: list[Any]) -> sqlite3.Cursor:
    count = len(params) // 4
    sql = _UPSERT_SQL.get((statement, count))
    if sql is None:
        sql = _UPSERT_SQL[statement, count] = statement.format(
            values=",".join(["(?,?,?,?)"] * count))
    return conn.execute(sql, params)


def _write_documents(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, bytes]]) -> None:
    """Upsert the documents of ``rows`` (oid, tid, record), up to _MAX_ROWS per statement."""
    from amphora.jsonpickle import records_to_json
    documents = records_to_json([data for _, _, data in rows])
    for start in range(0, len(rows), _MAX_ROWS):
        params: list[Any] = []
        for (key, tid, _), document in zip(rows[start:start + _MAX_ROWS],
                                           documents[start:start + _MAX_ROWS]):
            params += (key, tid, *document)
        if _upsert(conn, _UPSERT_SAME_CLASS, params).rowcount < len(params) // 4:
            _upsert(conn, _UPSERT_DOCUMENTS, params)


class MirrorMixin(MirrorBase):
    """Part of :class:`~amphora.storage.sqlite.SQLiteStorage`: the JSON mirror.

    Uses these attributes of the storage: ``_path``, ``_check_writable()``,
    ``_connect(read_only)`` (a new connection, closed here), ``_error(exc)`` (the amphora
    error for a driver error), and ``_write`` calls :meth:`_mirror_commit`.
    """

    supports_mirror = True

    @property
    def _mirror_where(self) -> str:
        return self._path

    def _last_tid(self) -> int:
        conn = self._connect(read_only=True)
        try:
            return conn.execute(_LAST_TID).fetchone()[0] or 0
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            conn.close()
    _mirror_conns: weakref.WeakSet  # of QueryConnection: every thread's search connection
    _mirror_lock: Any

    # -- state ------------------------------------------------------------------------
    def mirror_mode(self) -> str | None:
        """``"sync"``, ``"follow"`` or None (no mirror); see the module docstring."""
        conn = self._connect(read_only=True)
        try:
            row = conn.execute(_MIRROR_KEY).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            conn.close()
        return row[0] if row is not None and row[0] in MODES else None

    def mirror_watermark(self) -> int:
        """The tid (as an integer) up to which the documents are current: in ``follow``
        mode the last transaction the follower wrote, in ``sync`` mode the last one."""
        conn = self._connect(read_only=True)
        try:
            mode = conn.execute(_MIRROR_KEY).fetchone()
            if mode is None or mode[0] not in MODES:
                raise MirrorError(f"{self._path} has no JSON mirror")
            query = _LAST_TID if mode[0] == "sync" else _WATERMARK
            return conn.execute(query).fetchone()[0] or 0
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            conn.close()

    def _mirror_commit(self, conn: sqlite3.Connection,
                       rows: Sequence[tuple[int, int, bytes]]) -> None:
        """Inside a commit's write transaction: the documents of ``rows`` (oid, tid, data)
        if the file has a mirror (asked under the write lock, so a mirror created by
        another process is kept from its first commit on)."""
        found = conn.execute(_MIRROR_KEY).fetchone()
        if found is not None and found[0] == "sync" and rows:
            _write_documents(conn, rows)

    # -- making and dropping ------------------------------------------------------------
    def create_mirror(self, progress: Callable[[int, int], None] | None = None,
                      mode: str = "sync") -> int:
        """Give the file a mirror and write the documents of every current object (the
        backfill, in write transactions of a few hundred objects, while others keep
        committing). Calls ``progress(done, total)`` after each chunk; returns the number
        of documents written. Creating an existing mirror completes it, and sets its
        ``mode`` (``"sync"`` or ``"follow"``, see the module docstring)."""
        check_mode(mode)
        self._check_writable()
        writer = self._connect(read_only=False)
        try:
            def start() -> None:
                for statement in _CREATE_MIRROR:
                    writer.execute(statement)
                was = writer.execute(_MIRROR_KEY).fetchone()
                if mode == "follow" and (was is None or was[0] != "follow"):
                    # The backfill below covers everything committed up to now.
                    last = writer.execute(_LAST_TID).fetchone()[0] or 0
                    writer.execute(_SET_META, ("mirror_watermark", last))
                writer.execute(_SET_META, ("mirror", mode))
            # The backfill then writes every current document (a newer one is never
            # overwritten), which also covers what a follower had not reached yet.
            self._in_write_transaction(writer, start)
            return self._backfill(writer, progress)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            writer.close()

    def drop_mirror(self) -> None:
        """Remove the mirror, its indexes and text indexes."""
        self._check_writable()
        writer = self._connect(read_only=False)
        try:
            texts = [row[0] for row in writer.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND sql LIKE 'CREATE VIRTUAL TABLE % USING fts5%'").fetchall()]

            def drop() -> None:
                for name in texts:
                    writer.execute(f"DROP TABLE IF EXISTS {name}")
                for statement in _DROP_MIRROR:
                    writer.execute(statement)
            self._in_write_transaction(writer, drop)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            writer.close()

    def _count_objects(self, conn: sqlite3.Connection) -> int:
        return conn.execute(_COUNT_OBJECTS).fetchone()[0]

    def _backfill_chunk(self, writer: sqlite3.Connection, after: int) -> list:
        def chunk() -> list:
            rows = writer.execute(_OBJECTS_AFTER, (after, _BACKFILL_CHUNK)).fetchall()
            _write_documents(writer, rows)
            return rows
        return self._in_write_transaction(writer, chunk)

    # -- the follower -------------------------------------------------------------------
    def follow_mirror(self, until: float | None = 0.0, interval: float = 0.2,
                      progress: Callable[[int, int], None] | None = None) -> int:
        """Write the documents of the transactions committed after the watermark, batch
        after batch; with ``until=0`` (the default) return once caught up, else keep
        following (polling every ``interval`` seconds) until ``time.monotonic()`` passes
        ``until`` (None: for ever). Returns the number of transactions covered.
        ``progress(done, total)`` hears of each batch."""
        self._check_follow_mode()
        writer = self._connect(read_only=False)
        try:
            return self._keep_following(writer, until, interval, progress)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            writer.close()

    def _follow(self, writer: sqlite3.Connection,
                progress: Callable[[int, int], None] | None) -> int:
        done = 0
        while True:
            def batch() -> int:
                mark = writer.execute(_WATERMARK).fetchone()
                mark = mark[0] if mark is not None else 0
                commits = writer.execute(_COMMITS_AFTER, (mark, _FOLLOW_BATCH)).fetchall()
                if not commits:
                    return 0
                keys = sorted({key for _, oids in commits for key in _ints(oids)})
                rows = []
                for i in range(0, len(keys), 500):
                    chunk = keys[i:i + 500]
                    sql = _CURRENT_RECORDS.format(marks=",".join("?" * len(chunk)))
                    rows += writer.execute(sql, chunk).fetchall()
                _write_documents(writer, rows)  # objects gone: by the trigger
                writer.execute(_SET_META, ("mirror_watermark", commits[-1][0]))
                return len(commits)
            count = self._in_write_transaction(writer, batch)
            if not count:
                return done
            done += count
            if progress is not None:
                last = writer.execute(_LAST_TID).fetchone()[0] or 0
                progress(done, done + (0 if last == 0 else self._behind(writer, last)))

    @staticmethod
    def _behind(conn: sqlite3.Connection, last: int) -> int:
        mark = conn.execute(_WATERMARK).fetchone()
        return conn.execute("SELECT count(*) FROM transactions WHERE tid > ? AND tid <= ?",
                            (mark[0] if mark else 0, last)).fetchone()[0]

    @staticmethod
    def _in_write_transaction(conn: sqlite3.Connection, work: Callable[[], Any]) -> Any:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # -- indexes ------------------------------------------------------------------------
    def create_mirror_index(self, name: str, expression: str, class_name: str | None = None,
                            unique: bool = False) -> None:
        """An index on ``expression`` over ``amphora_objects`` (``lower(state->>'email')``),
        only over objects of ``class_name`` when given."""
        check_name(name)
        where = f" WHERE {class_filter(class_name)}" if class_name is not None else ""
        kind = "UNIQUE INDEX" if unique else "INDEX"
        self._mirror_ddl([f"CREATE {kind} IF NOT EXISTS {name} ON amphora_objects"
                          f" (({expression})){where}"])

    def create_text_index(self, name: str, fields: Sequence[str],
                          class_name: str | None = None) -> None:
        """A full-text index (SQLite FTS5) over the text of ``fields`` of each document
        (names of keys of the state, dotted for nested ones), kept current by triggers."""
        check_name(name)
        fields = check_fields(fields)
        columns = [f"f{n}" for n in range(len(fields))]
        values = ", ".join(f"new.state ->> '$.{field}'" for field in fields)
        condition = class_filter(class_name, "new.class_name")
        select = ", ".join(f"state ->> '$.{field}'" for field in fields)
        backfill_where = f" WHERE {class_filter(class_name)}"
        self._mirror_ddl([
            # porter stemming: "databases" finds "database", as PostgreSQL's english does
            f"CREATE VIRTUAL TABLE {name} USING fts5({', '.join(columns)},"
            " tokenize = 'porter unicode61')",
            f"INSERT INTO {name} (rowid, {', '.join(columns)}) SELECT oid, {select}"
            f" FROM amphora_objects{backfill_where}",
            f"CREATE TRIGGER {name}_insert AFTER INSERT ON amphora_objects WHEN {condition}"
            f" BEGIN INSERT INTO {name} (rowid, {', '.join(columns)}) VALUES (new.oid, {values});"
            " END",
            f"CREATE TRIGGER {name}_update AFTER UPDATE ON amphora_objects BEGIN"
            f" DELETE FROM {name} WHERE rowid = old.oid;"
            f" INSERT INTO {name} (rowid, {', '.join(columns)}) SELECT new.oid, {values}"
            f" WHERE {condition}; END",
            f"CREATE TRIGGER {name}_delete AFTER DELETE ON amphora_objects BEGIN"
            f" DELETE FROM {name} WHERE rowid = old.oid; END",
        ])

    def _mirror_ddl(self, statements: list[str]) -> None:
        self._check_writable()
        if not self.has_mirror():
            raise MirrorError(f"{self._path} has no JSON mirror: create it first "
                              "(db.create_mirror(), or `amphora mirror URI`)")
        writer = self._connect(read_only=False)
        try:
            self._in_write_transaction(writer, lambda: [writer.execute(s) for s in statements])
        except sqlite3.Error as exc:
            raise InvalidQueryError(f"{exc} (in {statements[0]!r})") from exc
        finally:
            writer.close()

    # -- queries ------------------------------------------------------------------------
    def query_mirror(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of a read-only SQL query (``%s`` placeholders) over the mirror, as of
        the latest commit."""
        statement = qmark(sql)
        conn = self._query_connection()
        try:
            mode = conn.execute(_MIRROR_KEY).fetchone()
            if mode is None or mode[0] not in MODES:
                raise MirrorError(f"{self._path} has no JSON mirror: create it first "
                                  "(db.create_mirror(), or `amphora mirror URI`)")
            return conn.execute(statement, tuple(params)).fetchall()
        except sqlite3.OperationalError as exc:
            raise InvalidQueryError(f"{exc} (in {sql!r})") from exc
        except (sqlite3.ProgrammingError, sqlite3.IntegrityError) as exc:
            if self._closed:
                raise self._error(exc) from exc
            raise InvalidQueryError(f"{exc} (in {sql!r})") from exc
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _query_connection(self) -> sqlite3.Connection:
        """This thread's read-only connection for searches (each query sees the latest
        commit: no transaction is held between queries). It goes away with the thread."""
        holder = getattr(self._local, "mirror_conn", None)
        if holder is not None:
            return holder.conn
        if self._closed:
            raise self._error(sqlite3.ProgrammingError("closed"))
        holder = QueryConnection(self._connect(read_only=True))
        holder.conn.execute("PRAGMA query_only = 1")
        with self._mirror_lock:
            self._mirror_conns.add(holder)
        self._local.mirror_conn = holder
        return holder.conn

    def _close_mirror_connections(self) -> None:
        with self._mirror_lock:
            holders, self._mirror_conns = list(self._mirror_conns), weakref.WeakSet()
        for holder in holders:
            holder.conn.close()

    def text_query(self, name: str, query: str) -> tuple[str, list[Any]]:
        """The SQL (``%s`` placeholders) and parameters selecting the oids of the matches
        of ``query`` in text index ``name``, best first."""
        check_name(name)
        return f"SELECT rowid FROM {name} WHERE {name} MATCH %s ORDER BY rank", [query]
