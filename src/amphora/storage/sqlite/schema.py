"""Opening an SQLite storage's file: the schema, and the checks that the file is one.

Private: a part of :class:`amphora.storage.sqlite.SQLiteStorage` (see :class:`SchemaMixin`).
"""
from __future__ import annotations

import os
import sqlite3
from typing import Any

from amphora.errors import StorageError, StorageFormatError

__all__ = ["FORMAT", "SCHEMA_VERSION", "SchemaMixin"]

FORMAT = "amphora-sqlite"
SCHEMA_VERSION = 1

# -- schema ---------------------------------------------------------------------------------
# The current revision of every object lives in ``objects``, keyed by oid (SQLite's rowid,
# so a current load is one B-tree descent with the data inline). A replaced revision moves
# to ``revisions`` (history-preserving mode, until pack) or to ``replaced`` (history-free
# mode, for ``conflict_window`` seconds, only so that conflicts can be resolved).
_CREATE_SCHEMA = (
    "CREATE TABLE amphora_meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE objects (oid INTEGER PRIMARY KEY, tid INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE TABLE revisions (oid INTEGER NOT NULL, tid INTEGER NOT NULL,"
    " end_tid INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE UNIQUE INDEX revisions_oid_tid ON revisions (oid, tid)",
    "CREATE TABLE replaced (oid INTEGER NOT NULL, tid INTEGER NOT NULL,"
    " end_tid INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX replaced_oid_tid ON replaced (oid, tid)",
    "CREATE INDEX replaced_end_tid ON replaced (end_tid)",
    "CREATE TABLE transactions (tid INTEGER PRIMARY KEY, user BLOB NOT NULL,"
    " description BLOB NOT NULL, extension BLOB NOT NULL, oids BLOB NOT NULL)",
)
_INSERT_META = "INSERT INTO amphora_meta (key, value) VALUES (?, ?)"
_SELECT_META = "SELECT key, value FROM amphora_meta"
_COUNT_TABLES = "SELECT count(*) FROM sqlite_master"


class SchemaMixin:
    """Part of :class:`~amphora.storage.sqlite.SQLiteStorage`: creating the file and its
    schema, and checking that an existing file is an amphora database this version reads.

    Uses these attributes of the storage: ``_path`` (the absolute file name),
    ``_page_size`` (for a new file), ``_read_only`` and ``_connect(read_only, create=False)`` (a new connection).
    """

    def _open(self, create: bool, keep_history: bool) -> dict[str, Any]:
        """The meta table of the file, after creating the file if allowed."""
        path = self._path
        if os.path.exists(path) and os.path.getsize(path) > 0:
            self._check_header()
            # (read-write unless the storage is read-only: a writer killed while it made
            # the file may have left a journal to roll back, which a read-only connection
            # cannot do: "attempt to write a readonly database")
            conn = self._connect(read_only=self._read_only)
            try:
                if conn.execute(_COUNT_TABLES).fetchone()[0]:
                    return self._read_meta(conn)
            except sqlite3.DatabaseError as exc:
                raise StorageFormatError(
                    f"{path}: not a readable amphora database ({exc})") from exc
            finally:
                conn.close()
        elif self._read_only or not create:
            why = "is read-only" if self._read_only else "was opened with create=False"
            raise StorageFormatError(f"{path}: no such amphora database (the storage {why})")
        if self._read_only or not create:
            raise StorageFormatError(f"{path}: an empty SQLite database, not an amphora database")
        return self._initialize(keep_history)

    def _check_header(self) -> None:
        """Reject files that are not SQLite, or shorter than their header says."""
        path = self._path
        try:
            with open(path, "rb") as file:
                header = file.read(100)
        except OSError as exc:  # a directory, no permission, ...
            raise StorageError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
        if not header.startswith(b"SQLite format 3\0"):
            raise StorageFormatError(f"{path}: not an SQLite database (no SQLite header)")
        if len(header) < 100:
            raise StorageFormatError(f"{path}: truncated ({len(header)} bytes)")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        header_valid = header[24:28] == header[92:96]  # the page count is current
        size = os.path.getsize(path)
        # While a write-ahead log has frames, a checkpoint may be writing the file (page 1,
        # with the new size, comes first), so the size only tells on a quiet file.
        try:
            quiet = os.path.getsize(path + "-wal") == 0
        except OSError:
            quiet = True
        if header_valid and quiet and size < pages * page_size:
            raise StorageFormatError(
                f"{path}: truncated ({size} bytes; its header says {pages * page_size})")

    def _read_meta(self, conn: sqlite3.Connection) -> dict[str, Any]:
        try:
            return dict(conn.execute(_SELECT_META).fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise StorageFormatError(f"{self._path}: an SQLite database, but not an "
                                         "amphora database (no amphora_meta table)") from exc
            raise

    def _initialize(self, keep_history: bool) -> dict[str, Any]:
        """Create the schema in a new or empty file (another process may race us)."""
        conn = self._connect(read_only=False, create=True)
        try:
            conn.execute(f"PRAGMA page_size={int(self._page_size)}")  # new files only
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not conn.execute(_COUNT_TABLES).fetchone()[0]:
                    for statement in _CREATE_SCHEMA:
                        conn.execute(statement)
                    conn.executemany(_INSERT_META, [
                        ("format", FORMAT), ("schema_version", SCHEMA_VERSION),
                        ("keep_history", int(keep_history)), ("next_oid", 1),
                        ("packed_through", 0)])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return self._read_meta(conn)
        finally:
            conn.close()

    def _check_meta(self, meta: dict[str, Any], keep_history: bool | None) -> bool:
        """The history mode, after checking the file is one this version can use."""
        path = self._path
        if meta.get("format") != FORMAT:
            raise StorageFormatError(f"{path}: not an amphora database "
                                     f"(format {meta.get('format')!r}, expected {FORMAT!r})")
        version = meta.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise StorageFormatError(f"{path}: schema version {version!r}; this version of "
                                     f"amphora reads schema version {SCHEMA_VERSION}")
        stored = meta.get("keep_history")
        if stored not in (0, 1):
            raise StorageFormatError(f"{path}: bad keep_history value {stored!r}")
        if keep_history is not None and bool(keep_history) != bool(stored):
            have = "history-preserving" if stored else "history-free"
            raise StorageFormatError(f"{path} is a {have} database; it cannot be opened with "
                                     f"keep_history={bool(keep_history)}")
        return bool(stored)
