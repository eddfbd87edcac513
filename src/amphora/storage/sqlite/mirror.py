"""The JSON mirror of an SQLite storage: every current record also as a JSON document.

Private: a part of :class:`amphora.storage.sqlite.SQLiteStorage` (see :class:`MirrorMixin`).

Once a file has a mirror (``create_mirror``), the documents are columns of the records'
own rows, which the mirror adds to ``objects`` (and drops with it), read through a view::

    objects(oid, tid, data, class_name TEXT, state TEXT, state_tid INTEGER)
    amphora_objects = SELECT oid, state_tid AS tid, class_name, state FROM objects
                      WHERE state IS NOT NULL

``state`` is the JSON text :mod:`amphora.jsonpickle` makes of the record (SQLite's JSON
functions and its ``->``/``->>`` operators read it), ``state_tid`` the tid of the record
it was made from. The ``mirror`` key of ``amphora_meta`` says how documents are written,
whichever process commits:

- ``sync``: a commit writes each row with its document, in the same statement (it reads
  the key under the write lock); ``state_tid`` is then the row's ``tid``;
- ``follow``: commits leave the documents as they are (objects created since are missing
  from the view); a follower (:meth:`MirrorMixin.follow_mirror`, the ``amphora follow``
  command) reads the transactions committed after the watermark ``mirror_watermark`` (a
  tid, in ``amphora_meta``) and writes the documents of the objects they changed, with
  the watermark, in one SQLite transaction per batch. It resumes where it stopped;
  :meth:`MirrorMixin.mirror_watermark` tells how far it got.

A document costs no row or index entry of its own: it goes with its row to pack, and
never to ``revisions`` or ``replaced`` (whose copies name their columns). SQLite indexes
no view, so the class index (``amphora_objects_class``, partial: rows with a class) and
the indexes made with ``create_mirror_index`` are indexes on ``objects``, which a query
on the view uses. Text indexes (``create_text_index``) are FTS5 tables kept current by
triggers on ``objects`` that fire only when a document is written or removed.

Mirrors made before (a table ``amphora_objects`` of its own, emptied by a trigger on
``objects`` at pack) are moved into the columns when a writable storage opens the file or
``create_mirror`` runs: the documents, the indexes (re-created under the same names on
``objects``) and the triggers of the text indexes (their FTS5 tables stay).
"""
from __future__ import annotations

import contextlib
import re
import secrets
import sqlite3
import weakref
from time import monotonic
from typing import Any, Callable, Iterator, Sequence

from amphora.errors import InvalidQueryError, MirrorError
from amphora.storage.sql.keys import _ints
from amphora.storage.sql.mirror import (MODES, NO_MIRROR, MirrorBase, QueryConnection,
                                        check_before, check_fields, check_mode, check_timeout,
                                        class_filter, placeholders, timed_out)
from amphora.storage.sqlite.statements import _LAST_TID, _ROWS_PER_STATEMENT

__all__ = ["MirrorMixin", "qmark"]

_COLUMNS = {"class_name": "TEXT", "state": "TEXT", "state_tid": "INTEGER"}
_TABLE_COLUMNS = "SELECT name FROM pragma_table_info('objects')"
_ADD_COLUMN = "ALTER TABLE objects ADD COLUMN {name} {type}"
_DROP_COLUMN = "ALTER TABLE objects DROP COLUMN {name}"
_CREATE_MIRROR = (
    # partial: rows without a document (follow mode, objects not yet followed) need none
    "CREATE INDEX IF NOT EXISTS amphora_objects_class ON objects (class_name)"
    " WHERE class_name IS NOT NULL",
    "CREATE VIEW IF NOT EXISTS amphora_objects AS SELECT oid, state_tid AS tid, class_name,"
    " state FROM objects WHERE state IS NOT NULL",
)
_MIRROR_RELATION = "SELECT type FROM sqlite_master WHERE name = 'amphora_objects'"
_MIRROR_KEY = "SELECT value FROM amphora_meta WHERE key = 'mirror'"
_SET_META = ("INSERT INTO amphora_meta (key, value) VALUES (?, ?)"
             " ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_WATERMARK = "SELECT value FROM amphora_meta WHERE key = 'mirror_watermark'"
_COMMITS_AFTER = "SELECT tid, oids FROM transactions WHERE tid > ? ORDER BY tid LIMIT ?"
# the follower: the current records whose document was not made from them
_CURRENT_RECORDS = ("SELECT oid, tid, data, class_name FROM objects WHERE oid IN ({marks})"
                    " AND state_tid IS NOT tid")
_FOLLOW_BATCH = 200  # transactions per follower write transaction
_TEXT_TABLES = ("SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND sql LIKE 'CREATE VIRTUAL TABLE % USING fts5%'")
# Everything on `objects` beyond the records' table is the mirror's (the schema has no
# index or trigger of its own there).
_MIRROR_SCHEMA = ("SELECT type, name FROM sqlite_master WHERE tbl_name = 'objects'"
                  " AND type IN ('index', 'trigger') AND sql IS NOT NULL")
_DROP_META = "DELETE FROM amphora_meta WHERE key IN ('mirror', 'mirror_watermark')"
_OBJECTS_AFTER = ("SELECT oid, tid, data, class_name FROM objects WHERE oid > ?"
                  " ORDER BY oid LIMIT ?")
_COUNT_OBJECTS = "SELECT count(*) FROM objects"
_BACKFILL_CHUNK = 500
# -- a commit's rows with their documents (sync mode) -----------------------------------------
# The first statement leaves the class name out of the update: setting it, even to the
# same value, costs an update of the class index for every row (a 1000-object update
# commit: +0.8 ms). It skips the rows of objects whose class changed (or that had no
# document yet), which the second statement then writes: the rows not written have an
# older tid. (Counted with rowcount, which leaves out what triggers do.)
_COLUMN_LIST = "(oid, tid, data, class_name, state, state_tid)"
_UPSERT_SAME_CLASS = (
    f"INSERT INTO objects {_COLUMN_LIST} VALUES {{values}} ON CONFLICT (oid) DO UPDATE"
    " SET tid = excluded.tid, data = excluded.data, state = excluded.state,"
    " state_tid = excluded.state_tid WHERE objects.class_name = excluded.class_name")
_UPSERT_NEW_CLASS = (
    f"INSERT INTO objects {_COLUMN_LIST} VALUES {{values}} ON CONFLICT (oid) DO UPDATE"
    " SET tid = excluded.tid, data = excluded.data, class_name = excluded.class_name,"
    " state = excluded.state, state_tid = excluded.state_tid WHERE objects.tid < excluded.tid")
# New objects: a row some other transaction made meanwhile is a conflict (IntegrityError).
_INSERT_DOCUMENTED = f"INSERT INTO objects {_COLUMN_LIST} VALUES {{values}}"


def _by_rows(template: str) -> dict[int, str]:
    return {n: template.format(values=",".join(["(?,?,?,?,?,?)"] * n))
            for n in _ROWS_PER_STATEMENT}


_UPSERT_SAME_CLASS_SQL = _by_rows(_UPSERT_SAME_CLASS)
_UPSERT_NEW_CLASS_SQL = _by_rows(_UPSERT_NEW_CLASS)
_INSERT_DOCUMENTED_SQL = _by_rows(_INSERT_DOCUMENTED)
# -- documents of rows already written (the follower, the backfill) ---------------------------
_SET_STATE = "UPDATE objects SET state = ?, state_tid = ? WHERE oid = ?"
_SET_CLASS_AND_STATE = "UPDATE objects SET class_name = ?, state = ?, state_tid = ? WHERE oid = ?"
# -- mirrors made before: a table of their own ------------------------------------------------
_OLD_INDEXES = ("SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'amphora_objects' AND sql IS NOT NULL"
                " AND name != 'amphora_objects_class' ORDER BY name")
_OLD_TRIGGERS = ("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                 " AND tbl_name = 'amphora_objects' ORDER BY name")
_OLD_TABLE = re.compile(r"\bON\s+(\"amphora_objects\"|amphora_objects)\s*\(", re.IGNORECASE)
# a text index's insert trigger (see _text_triggers): its name, condition, columns, values
_TEXT_INSERT = (r"CREATE TRIGGER (\w+)_insert AFTER INSERT ON {table} WHEN (.*) BEGIN"
                r" INSERT INTO \1 \(rowid, ([\w, ]+)\) VALUES \(new\.oid, (.*)\); END\Z")
_OLD_TEXT_TRIGGER = re.compile(_TEXT_INSERT.format(table="amphora_objects"), re.DOTALL)
_MOVE_DOCUMENTS = ("UPDATE objects SET class_name = a.class_name, state = a.state,"
                   " state_tid = a.tid FROM amphora_objects AS a WHERE a.oid = objects.oid")
_DROP_OLD_TABLE = ("DROP TRIGGER IF EXISTS amphora_objects_gone",
                   "DROP TABLE amphora_objects")  # with its indexes and triggers
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# -- searches --------------------------------------------------------------------------------
_QUERY_STATE = ("SELECT (SELECT value FROM amphora_meta WHERE key = 'mirror'),"
                " (SELECT max(tid) FROM transactions)")
# A search connection's own temporary tables, made with it: empty but while a search at a
# snapshot fills them in its read transaction (see MirrorMixin._overlay), which it then
# rolls back. The text table has columns for text indexes of up to _TEXT_FIELDS fields.
_TEXT_FIELDS = 32
_CREATE_OVERLAY = (
    "CREATE TEMP TABLE amphora_changed (oid INTEGER PRIMARY KEY)",
    "CREATE TEMP TABLE amphora_snapshot (oid INTEGER PRIMARY KEY, tid INTEGER,"
    " class_name TEXT, state TEXT)",
    "CREATE VIRTUAL TABLE temp.amphora_snapshot_text USING fts5(doc_oid UNINDEXED,"
    " index_name UNINDEXED, " + ", ".join(f"f{n}" for n in range(_TEXT_FIELDS))
    + ", tokenize = 'porter unicode61')",
)
_CHANGED_SINCE = "SELECT oids FROM transactions WHERE tid >= ?"
_ADD_CHANGED = "INSERT OR IGNORE INTO temp.amphora_changed (oid) VALUES (?)"
_SNAPSHOT_RECORDS = (
    "SELECT r.oid, r.tid, r.data FROM temp.amphora_changed AS c JOIN main.revisions AS r"
    " ON r.oid = c.oid AND r.tid ="
    "  (SELECT max(m.tid) FROM main.revisions AS m WHERE m.oid = c.oid AND m.tid < ?)")
_ADD_SNAPSHOT = ("INSERT INTO temp.amphora_snapshot (oid, tid, class_name, state)"
                 " VALUES (?, ?, ?, ?)")
_TEXT_TRIGGERS = ("SELECT sql FROM main.sqlite_master WHERE type = 'trigger'"
                  " AND tbl_name = 'objects' AND name LIKE '%\\_insert' ESCAPE '\\'")
_TEXT_TRIGGER = re.compile(_TEXT_INSERT.format(table="objects"), re.DOTALL)
# the trigger's own columns, values and condition, of the snapshot's documents as `new`
_SNAPSHOT_TEXT = ("INSERT INTO temp.amphora_snapshot_text (doc_oid, index_name, {columns})"
                  " SELECT new.oid, ?, {values} FROM temp.amphora_snapshot AS new"
                  " WHERE {condition}")
# SQLite looks a name up in temp first: this view shadows the mirror's for the search.
_OVERLAY_VIEW = (
    "CREATE TEMP VIEW amphora_objects AS SELECT oid, tid, class_name, state"
    " FROM main.amphora_objects WHERE oid NOT IN (SELECT oid FROM temp.amphora_changed)"
    " UNION ALL SELECT oid, tid, class_name, state FROM temp.amphora_snapshot")
# The text index answers for the objects not written since the snapshot (all of them but
# in a search at a snapshot), the snapshot's text table for the others.
_TEXT_QUERY = (
    "SELECT oid FROM (SELECT rowid AS oid, rank AS score FROM {name}(%s)"
    " WHERE rowid NOT IN (SELECT oid FROM temp.amphora_changed)"
    " UNION ALL SELECT doc_oid, rank FROM temp.amphora_snapshot_text(%s)"
    " WHERE index_name = '{name}') ORDER BY score")
# What a search may not do (sqlite3 authorizer actions); pragmas only read, with these
# taking an argument.
_REFUSED = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_TRANSACTION,
            sqlite3.SQLITE_SAVEPOINT}
_READ_PRAGMAS = {"table_info", "table_xinfo", "index_info", "index_xinfo", "index_list",
                 "foreign_key_list"}
_PROGRESS_STEPS = 10_000  # virtual machine instructions between looks at the clock


class _SearchConnection(QueryConnection):
    """A thread's search connection (read-only, ``query_only``), whose authorizer refuses
    what a search may not do, except to amphora's own statements (:meth:`trusted`).

    The authorizer sees a statement when it is prepared, and the driver reuses prepared
    statements by their text: amphora's own statements that change the connection's state
    (:meth:`own`) end with a comment no search can guess, so that a search never runs
    one of them."""

    __slots__ = ("_trusted", "_nonce")

    def __init__(self, conn: sqlite3.Connection):
        super().__init__(conn)
        self._trusted = False
        self._nonce = secrets.token_hex(16)
        conn.set_authorizer(self._authorize)

    def own(self, statement: str) -> None:
        """Run one of amphora's statements (``BEGIN``, a pragma ...) on the connection."""
        with self.trusted():
            self.conn.execute(f"{statement} -- {self._nonce}")

    def _authorize(self, action: int, arg1: Any, arg2: Any, database: Any, source: Any) -> int:
        if self._trusted:
            return sqlite3.SQLITE_OK
        if action in _REFUSED or (action == sqlite3.SQLITE_PRAGMA and arg2 is not None
                                  and str(arg1).lower() not in _READ_PRAGMAS):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    @contextlib.contextmanager
    def trusted(self) -> Iterator[None]:
        """amphora's own statements (the snapshot overlay) pass the authorizer."""
        was, self._trusted = self._trusted, True
        try:
            yield
        finally:
            self._trusted = was

    def run(self, statement: str, params: tuple, timeout: float | None) -> list[tuple]:
        """The rows of a search's statement, cancelled after ``timeout`` seconds."""
        conn = self.conn
        if timeout is None:
            return conn.execute(statement, params).fetchall()
        deadline = monotonic() + timeout
        conn.set_progress_handler(lambda: monotonic() > deadline, _PROGRESS_STEPS)
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.set_progress_handler(None, 0)


def qmark(sql: str) -> str:
    """``sql`` written with ``%s`` placeholders in SQLite's ``?`` style."""
    return placeholders(sql, "qmark")


def check_name(name: str, what: str = "index name") -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.lower().startswith("sqlite"):
        raise InvalidQueryError(f"{what} must be a plain SQL identifier, not {name!r}")
    return name


def _documented(rows: Sequence[tuple[int, int, bytes]]) -> list[Any]:
    """The values of ``(oid, tid, data)`` rows with their documents, one after another:
    ``oid, tid, data, class_name, state, tid`` for each row."""
    from amphora.jsonpickle import records_to_json
    values: list[Any] = []
    documents = iter(records_to_json([data for _, _, data in rows if data]))
    for key, tid, data in rows:
        # an undo's deletion record (empty data) has no document
        class_name, state = next(documents) if data else (None, None)
        values += (key, tid, data, class_name, state, tid)
    return values


def _statements(values: list[Any]) -> Iterator[tuple[int, list[Any]]]:
    """The number of rows and the values of each statement writing ``values`` (six per
    row): as many rows per statement as _ROWS_PER_STATEMENT allows."""
    start = 0
    for size in _ROWS_PER_STATEMENT:
        while len(values) - start >= 6 * size:
            yield size, values[start:start + 6 * size]
            start += 6 * size


def _upsert_documented(conn: sqlite3.Connection, rows: list[tuple[int, int, bytes]]) -> None:
    """A commit's rows of objects it replaces, with their documents (see _write_objects
    in amphora.storage.sqlite)."""
    if rows:
        for size, params in _statements(_documented(rows)):
            if conn.execute(_UPSERT_SAME_CLASS_SQL[size], params).rowcount < size:
                conn.execute(_UPSERT_NEW_CLASS_SQL[size], params)


def _insert_documented(conn: sqlite3.Connection, rows: list[tuple[int, int, bytes]]) -> None:
    """A commit's rows of new objects, with their documents."""
    if rows:
        for size, params in _statements(_documented(rows)):
            conn.execute(_INSERT_DOCUMENTED_SQL[size], params)


def _set_documents(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, bytes, Any]]) -> None:
    """Write the documents of ``rows`` (oid, tid, record, class name stored), read in this
    write transaction; the class name only where it changes."""
    from amphora.jsonpickle import records_to_json
    documents = records_to_json([row[2] for row in rows])
    same, changed = [], []
    for (key, tid, _, stored), (class_name, state) in zip(rows, documents):
        if class_name == stored:
            same.append((state, tid, key))
        else:
            changed.append((class_name, state, tid, key))
    if same:
        conn.executemany(_SET_STATE, same)
    if changed:
        conn.executemany(_SET_CLASS_AND_STATE, changed)


def _text_triggers(name: str, columns: str, values: str, condition: str) -> list[str]:
    """The triggers keeping text index ``name`` current: ``columns`` of its FTS5 table
    get ``values`` (expressions of ``new``) for rows meeting ``condition`` (of ``new``).
    They fire only when a document is written or removed."""
    document = f"new.state IS NOT NULL AND ({condition})"
    return [
        f"CREATE TRIGGER {name}_insert AFTER INSERT ON objects WHEN {document}"
        f" BEGIN INSERT INTO {name} (rowid, {columns}) VALUES (new.oid, {values}); END",
        f"CREATE TRIGGER {name}_update AFTER UPDATE OF state ON objects"
        " WHEN new.state IS NOT old.state OR new.class_name IS NOT old.class_name BEGIN"
        f" DELETE FROM {name} WHERE rowid = old.oid;"
        f" INSERT INTO {name} (rowid, {columns}) SELECT new.oid, {values} WHERE {document};"
        " END",
        f"CREATE TRIGGER {name}_delete AFTER DELETE ON objects WHEN old.state IS NOT NULL"
        f" BEGIN DELETE FROM {name} WHERE rowid = old.oid; END",
    ]


def _add_columns(conn: sqlite3.Connection) -> None:
    have = {row[0] for row in conn.execute(_TABLE_COLUMNS)}
    for name, kind in _COLUMNS.items():
        if name not in have:
            conn.execute(_ADD_COLUMN.format(name=name, type=kind))


class MirrorMixin(MirrorBase):
    """Part of :class:`~amphora.storage.sqlite.SQLiteStorage`: the JSON mirror.

    Uses these attributes of the storage: ``_path``, ``_check_writable()``,
    ``_connect(read_only)`` (a new connection, closed here), ``_error(exc)`` (the amphora
    error for a driver error); ``_write`` calls :meth:`_mirror_writes`, opening for
    writing :meth:`_upgrade_mirror`.
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

    @staticmethod
    def _mirror_writes(conn: sqlite3.Connection) -> tuple[Callable, Callable] | None:
        """Inside a commit's write transaction, before it writes rows: if the file keeps a
        ``sync`` mirror (asked under the write lock, so a mirror created by another
        process is kept from its first commit on), the functions ``(upsert, insert)``
        that write ``(oid, tid, data)`` rows with their documents; else None."""
        found = conn.execute(_MIRROR_KEY).fetchone()
        if found is not None and found[0] == "sync":
            return _upsert_documented, _insert_documented
        return None

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
        self._refuse_sealed()
        writer = self._connect(read_only=False)
        try:
            def start() -> None:
                self._move_old_mirror(writer)
                _add_columns(writer)
                for statement in _CREATE_MIRROR:
                    writer.execute(statement)
                was = writer.execute(_MIRROR_KEY).fetchone()
                if mode == "follow" and (was is None or was[0] != "follow"):
                    # The backfill below covers everything committed up to now.
                    last = writer.execute(_LAST_TID).fetchone()[0] or 0
                    writer.execute(_SET_META, ("mirror_watermark", last))
                writer.execute(_SET_META, ("mirror", mode))
            # The backfill then writes every current document, which also covers what a
            # follower had not reached yet.
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
            def drop() -> None:
                for (name,) in writer.execute(_TEXT_TABLES).fetchall():
                    writer.execute(f"DROP TABLE IF EXISTS {name}")
                for kind, name in writer.execute(_MIRROR_SCHEMA).fetchall():
                    writer.execute(f"DROP {kind.upper()} IF EXISTS {name}")
                relation = writer.execute(_MIRROR_RELATION).fetchone()
                if relation is not None:
                    writer.execute(f"DROP {relation[0].upper()} amphora_objects")
                # rewrites every row (SQLite drops a column by rewriting the table)
                have = {row[0] for row in writer.execute(_TABLE_COLUMNS)}
                for name in _COLUMNS:
                    if name in have:
                        writer.execute(_DROP_COLUMN.format(name=name))
                writer.execute(_DROP_META)
            self._in_write_transaction(writer, drop)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            writer.close()

    def _upgrade_mirror(self, conn: sqlite3.Connection) -> None:
        """On opening for writing a file that has a mirror: move a mirror made before into
        the columns of ``objects`` (``conn`` is in no transaction)."""
        found = conn.execute(_MIRROR_RELATION).fetchone()
        if found is not None and found[0] == "table":
            self._in_write_transaction(conn, lambda: self._move_old_mirror(conn))

    def _move_old_mirror(self, conn: sqlite3.Connection) -> None:
        """In a write transaction: the documents, indexes and text indexes' triggers of a
        mirror made before moved to ``objects`` (nothing if there is none)."""
        found = conn.execute(_MIRROR_RELATION).fetchone()
        if found is None or found[0] != "table":
            return
        indexes = []
        for name, sql in conn.execute(_OLD_INDEXES).fetchall():
            moved, count = _OLD_TABLE.subn("ON objects (", sql, count=1)
            if not count:
                raise MirrorError(f"{self._path}: cannot move index {name} of the mirror "
                                  f"to the table of records ({sql!r})")
            indexes.append(moved)
        triggers, texts = conn.execute(_OLD_TRIGGERS).fetchall(), set()
        for _, sql in triggers:
            text = _OLD_TEXT_TRIGGER.match(sql)
            if text is not None:
                name, condition, columns, values = text.groups()
                texts.add(name)
                indexes += _text_triggers(name, columns, values, condition)
        for name, sql in triggers:
            if name.rsplit("_", 1)[0] not in texts:
                raise MirrorError(f"{self._path}: cannot move trigger {name} of the mirror "
                                  f"to the table of records ({sql!r})")
        _add_columns(conn)
        conn.execute(_MOVE_DOCUMENTS)
        for statement in (*_DROP_OLD_TABLE, *_CREATE_MIRROR, *indexes):
            conn.execute(statement)

    def _count_objects(self, conn: sqlite3.Connection) -> int:
        return conn.execute(_COUNT_OBJECTS).fetchone()[0]

    def _backfill_chunk(self, writer: sqlite3.Connection, after: int) -> list:
        def chunk() -> list:
            rows = writer.execute(_OBJECTS_AFTER, (after, _BACKFILL_CHUNK)).fetchall()
            _set_documents(writer, rows)
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
                _set_documents(writer, rows)  # objects gone took their documents along
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
        """An index on ``expression`` of the documents (``lower(state->>'email')``), only
        over objects of ``class_name`` when given: an index on ``objects`` (SQLite indexes
        no view), which queries on ``amphora_objects`` use."""
        check_name(name)
        where = f" WHERE {class_filter(class_name)}" if class_name is not None else ""
        kind = "UNIQUE INDEX" if unique else "INDEX"
        self._mirror_ddl([f"CREATE {kind} IF NOT EXISTS {name} ON objects"
                          f" (({expression})){where}"])

    def create_text_index(self, name: str, fields: Sequence[str],
                          class_name: str | None = None) -> None:
        """A full-text index (SQLite FTS5) over the text of ``fields`` of each document
        (names of keys of the state, dotted for nested ones), kept current by triggers."""
        check_name(name)
        fields = check_fields(fields)
        columns = ", ".join(f"f{n}" for n in range(len(fields)))
        values = ", ".join(f"new.state ->> '$.{field}'" for field in fields)
        select = ", ".join(f"state ->> '$.{field}'" for field in fields)
        self._mirror_ddl([
            # porter stemming: "databases" finds "database", as PostgreSQL's english does
            f"CREATE VIRTUAL TABLE {name} USING fts5({columns},"
            " tokenize = 'porter unicode61')",
            f"INSERT INTO {name} (rowid, {columns}) SELECT oid, {select}"
            f" FROM amphora_objects WHERE {class_filter(class_name)}",
            *_text_triggers(name, columns, values, class_filter(class_name, "new.class_name")),
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
    def query_mirror(self, sql: str, params: Sequence[Any] = (), before: bytes | None = None,
                     timeout: float | None = None) -> list[tuple]:
        """The rows of a read-only SQL query (``%s`` placeholders) over the mirror: as of
        the latest commit, or with ``before`` (a tid) as if ``amphora_objects`` and the
        text indexes held the documents of the records with tids below it (see
        :meth:`_overlay`). A query running longer than ``timeout`` seconds is cancelled.
        The query may not write, attach databases, change settings or control
        transactions (:class:`InvalidQueryError`)."""
        statement = qmark(sql)
        snapshot = check_before(before)
        timeout = check_timeout(timeout)
        holder = self._query_connection()
        conn = holder.conn
        try:
            if snapshot is None:
                self._check_query_state(conn.execute(_QUERY_STATE).fetchone())
                return holder.run(statement, tuple(params), timeout)
            holder.own("BEGIN")  # one read transaction: one snapshot of the file
            try:
                last = self._check_query_state(conn.execute(_QUERY_STATE).fetchone())
                if last >= snapshot:  # commits since the snapshot: their documents go
                    self._overlay(holder, snapshot)
                return holder.run(statement, tuple(params), timeout)
            finally:
                if conn.in_transaction:  # the overlay goes with it
                    holder.own("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if str(exc) == "interrupted" and timeout is not None:
                raise timed_out(timeout, sql) from exc
            raise InvalidQueryError(f"{exc} (in {sql!r})") from exc
        except (sqlite3.ProgrammingError, sqlite3.IntegrityError) as exc:
            if self._closed:
                raise self._error(exc) from exc
            raise InvalidQueryError(f"{exc} (in {sql!r})") from exc
        except sqlite3.DatabaseError as exc:
            # (sqlite_errorname is there since Python 3.11; SQLite's message before)
            if getattr(exc, "sqlite_errorname", str(exc)) in ("SQLITE_AUTH", "not authorized"):
                raise InvalidQueryError(f"{exc}: a search may not attach databases, change "
                                        f"settings or control transactions (in {sql!r})") from exc
            raise self._error(exc) from exc
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _check_query_state(self, row: tuple) -> int:
        """The last tid, from the ``_QUERY_STATE`` row, once sure the file has a mirror."""
        mode, last = row
        if mode not in MODES:
            raise MirrorError(f"{self._path} {NO_MIRROR}")
        return last or 0

    def _overlay(self, holder: "_SearchConnection", before: int) -> None:
        """In the search's read transaction: shadow ``amphora_objects`` with a temporary
        view of the documents at snapshot ``before``, and fill the temporary text table
        ``text_query`` reads beside each text index.

        The objects written by transactions since (found in ``transactions``, by its
        primary key) leave the view; the document of each one's revision at the snapshot
        (the last before it, from ``revisions``), transcoded as a commit writes it, takes
        their place. An object without such a revision (created since; or replaced since
        in a history-free file, which keeps none) is not in the view, as a load at the
        snapshot would not find it. Rolling the transaction back undoes it all."""
        from amphora.jsonpickle import records_to_json
        conn = holder.conn
        changed = {key for (oids,) in conn.execute(_CHANGED_SINCE, (before,))
                   for key in _ints(oids)}
        holder.own("PRAGMA query_only = 0")
        with holder.trusted():
            try:
                conn.executemany(_ADD_CHANGED, [(key,) for key in changed])
                rows = conn.execute(_SNAPSHOT_RECORDS, (before,)).fetchall()
                conn.executemany(_ADD_SNAPSHOT, [
                    (key, tid, class_name, state) for (key, tid, _), (class_name, state)
                    in zip(rows, records_to_json([data for _, _, data in rows]))])
                for (trigger,) in conn.execute(_TEXT_TRIGGERS).fetchall():
                    text = _TEXT_TRIGGER.match(trigger)
                    if text is not None:
                        name, condition, columns, values = text.groups()
                        conn.execute(_SNAPSHOT_TEXT.format(columns=columns, values=values,
                                                           condition=condition), (name,))
                conn.execute(_OVERLAY_VIEW)
            finally:
                holder.own("PRAGMA query_only = 1")

    def _query_connection(self) -> "_SearchConnection":
        """This thread's read-only connection for searches (no transaction is held between
        queries), with its temporary tables for searches at a snapshot. It goes away with
        the thread."""
        holder = getattr(self._local, "mirror_conn", None)
        if holder is not None:
            return holder
        if self._closed:
            raise self._error(sqlite3.ProgrammingError("closed"))
        conn = self._connect(read_only=True)
        try:
            for statement in _CREATE_OVERLAY:
                conn.execute(statement)
            conn.execute("PRAGMA query_only = 1")
        except BaseException:
            conn.close()
            raise
        holder = _SearchConnection(conn)
        with self._mirror_lock:
            self._mirror_conns.add(holder)
        self._local.mirror_conn = holder
        return holder

    def _close_mirror_connections(self) -> None:
        with self._mirror_lock:
            holders, self._mirror_conns = list(self._mirror_conns), weakref.WeakSet()
        for holder in holders:
            holder.conn.close()

    def text_query(self, name: str, query: str) -> tuple[str, list[Any]]:
        """The SQL (``%s`` placeholders) and parameters selecting the oids of the matches
        of ``query`` in text index ``name``, best first. At a snapshot (``query_mirror``'s
        ``before``) the objects written since match by their documents then: the index
        answers for the others, and a temporary FTS5 table with the same tokenizer for
        them (their ranks are computed in it, among themselves)."""
        check_name(name)
        return _TEXT_QUERY.format(name=name), [query, query]
