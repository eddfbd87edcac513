"""Opening a PostgreSQL storage's schema: creating it, and checking that it is one.

Private: a part of :class:`amphora.storage.postgresql.PostgreSQLStorage` (see
:class:`SchemaMixin`), plus the statements its parts share.
"""
from __future__ import annotations

from typing import Any

from amphora.errors import StorageFormatError

__all__ = ["FORMAT", "SCHEMA_VERSION", "SchemaMixin"]

FORMAT = "amphora-postgresql"
SCHEMA_VERSION = 1

_LAST_TID = "SELECT coalesce(max(tid), 0) FROM transactions"  # 0: no transaction yet

# -- schema ---------------------------------------------------------------------------------
# Created in the storage's schema (``search_path`` is set to it on every connection).
# The current revision of every object is in ``objects`` (one index descent per load);
# replaced ones move to ``revisions`` (history-preserving, until pack) or ``replaced``
# (history-free, for ``conflict_window`` seconds). ``refs`` holds the oids a record refers
# to, so that pack finds garbage with one recursive query. A JSON mirror adds its
# documents to ``objects`` as columns (see .mirror).
_CREATE_SCHEMA = (
    "CREATE TABLE amphora_meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE objects (oid bigint PRIMARY KEY, tid bigint NOT NULL,"
    " data bytea NOT NULL, refs bigint[]) WITH (fillfactor = 80)",
    "CREATE TABLE revisions (oid bigint NOT NULL, tid bigint NOT NULL,"
    " end_tid bigint NOT NULL, data bytea NOT NULL, refs bigint[], PRIMARY KEY (oid, tid))",
    "CREATE INDEX revisions_end_tid ON revisions (end_tid)",
    "CREATE TABLE replaced (oid bigint NOT NULL, tid bigint NOT NULL,"
    " end_tid bigint NOT NULL, data bytea NOT NULL, PRIMARY KEY (oid, tid))",
    "CREATE INDEX replaced_end_tid ON replaced (end_tid)",
    "CREATE TABLE transactions (tid bigint PRIMARY KEY, username bytea NOT NULL,"
    " description bytea NOT NULL, extension bytea NOT NULL, oids bytea NOT NULL)",
    "CREATE SEQUENCE oid_seq MINVALUE 0 START WITH 1",
)
# Blob revisions (see .blobs): each one's bytes in chunks of up to 1 MiB, rows of an
# ordinary table rather than large objects, because rows belong to the storage's schema
# (dropped with it, copied by INSERT ... SELECT, deleted by pack with the records in one
# statement, governed by the table's privileges), while large objects live in the
# database-wide pg_largeobject, outlive their rows unless unlinked one by one and need
# privileges of their own. 1 MiB chunks stream in and out in constant memory, and each
# is a single TOAST value. Stored uncompressed (EXTERNAL): blobs are mostly compressed
# already (images, archives), and compressing them again costs CPU for nothing.
# Every chunk carries the blob's whole size, so that a missing or truncated chunk shows.
# Added to a database made before blobs when it is opened for writing.
_CREATE_BLOB_CHUNK = (
    "CREATE TABLE blob_chunk (oid bigint NOT NULL, tid bigint NOT NULL,"
    " chunk_num integer NOT NULL, blob_size bigint NOT NULL, data bytea NOT NULL,"
    " PRIMARY KEY (oid, tid, chunk_num))",
    "ALTER TABLE blob_chunk ALTER COLUMN data SET STORAGE EXTERNAL",
)
_HAS_BLOB_CHUNK = "SELECT to_regclass('blob_chunk') IS NOT NULL"
_INSERT_META = "INSERT INTO amphora_meta (key, value) VALUES (%s, %s)"
_SELECT_META = "SELECT key, value FROM amphora_meta"
_INIT_LOCK = "SELECT pg_advisory_xact_lock(hashtext('amphora-schema:' || %s))"
_SCHEMA_EXISTS = "SELECT count(*) FROM pg_namespace WHERE nspname = %s"
_CREATE_NAMESPACE = "CREATE SCHEMA IF NOT EXISTS {}"
_COUNT_RELATIONS = ("SELECT count(*) FROM pg_class AS c JOIN pg_namespace AS n"
                    " ON n.oid = c.relnamespace WHERE n.nspname = %s")
_HAS_META = ("SELECT count(*) FROM pg_class AS c JOIN pg_namespace AS n"
             " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'amphora_meta'")



class SchemaMixin:
    """Part of :class:`~amphora.storage.postgresql.PostgreSQLStorage`: creating the
    schema, and checking that an existing one is an amphora database this version reads.

    Uses these attributes of the storage: ``schema``, ``_where`` (host, port and database,
    for messages), ``_read_only`` and ``_connect(autocommit)`` (a new connection).
    """

    def _open(self, create: bool, keep_history: bool) -> dict[str, Any]:
        """The meta table of the schema, after creating the schema if allowed."""
        conn = self._connect(autocommit=False)
        try:
            with conn.transaction():
                conn.execute(_INIT_LOCK, (self.schema,))  # processes opening at once wait
                meta = self._existing_meta(conn)
                if meta is not None:
                    return meta
                if self._read_only or not create:
                    why = "is read-only" if self._read_only else "was opened with create=False"
                    raise StorageFormatError(f"{self._where}: no amphora database in schema "
                                             f"{self.schema!r} (the storage {why})")
                self._initialize(conn, keep_history)
                return dict(conn.execute(_SELECT_META).fetchall())
        finally:
            conn.close()

    def _existing_meta(self, conn: Any) -> dict[str, Any] | None:
        """The meta of the schema; None if the schema is missing or empty."""
        schema = self.schema
        if not conn.execute(_SCHEMA_EXISTS, (schema,)).fetchone()[0]:
            return None
        if not conn.execute(_HAS_META, (schema,)).fetchone()[0]:
            if conn.execute(_COUNT_RELATIONS, (schema,)).fetchone()[0]:
                raise StorageFormatError(
                    f"{self._where}: schema {schema!r} holds tables that are not an amphora "
                    "database (no amphora_meta table); choose another schema")
            return None
        try:
            return dict(conn.execute(_SELECT_META).fetchall())
        except Exception as exc:
            raise StorageFormatError(f"{self._where}: schema {schema!r}: an amphora_meta "
                                     f"table amphora cannot read ({exc})") from exc

    def _initialize(self, conn: Any, keep_history: bool) -> None:
        from psycopg import sql
        conn.execute(sql.SQL(_CREATE_NAMESPACE).format(sql.Identifier(self.schema)))
        for statement in _CREATE_SCHEMA + _CREATE_BLOB_CHUNK:
            conn.execute(statement)
        with conn.cursor() as cursor:
            cursor.executemany(_INSERT_META, [
                ("format", FORMAT), ("schema_version", str(SCHEMA_VERSION)),
                ("keep_history", str(int(keep_history))), ("packed_through", "0")])

    def _add_blob_chunk(self, conn: Any) -> None:
        """Give a database made before blobs (its meta checked already) the
        ``blob_chunk`` table, on the autocommit connection ``conn``. Looked up first: a
        role allowed to write rows but not to create tables opens a database that has
        it."""
        if conn.execute(_HAS_BLOB_CHUNK).fetchone()[0]:
            return
        with conn.transaction():
            conn.execute(_INIT_LOCK, (self.schema,))  # processes opening at once wait
            if not conn.execute(_HAS_BLOB_CHUNK).fetchone()[0]:
                for statement in _CREATE_BLOB_CHUNK:
                    conn.execute(statement)

    def _check_meta(self, meta: dict[str, Any], keep_history: bool | None) -> bool:
        """The history mode, after checking the schema is one this version can use."""
        where = f"{self._where} schema {self.schema!r}"
        if meta.get("format") != FORMAT:
            raise StorageFormatError(f"{where}: not an amphora database "
                                     f"(format {meta.get('format')!r}, expected {FORMAT!r})")
        version = meta.get("schema_version")
        if not (isinstance(version, str) and version.isdigit()) or \
                not 1 <= int(version) <= SCHEMA_VERSION:
            raise StorageFormatError(f"{where}: schema version {version!r}; this version of "
                                     f"amphora reads schema version {SCHEMA_VERSION}")
        stored = meta.get("keep_history")
        if stored not in ("0", "1"):
            raise StorageFormatError(f"{where}: bad keep_history value {stored!r}")
        if keep_history is not None and bool(keep_history) != (stored == "1"):
            have = "history-preserving" if stored == "1" else "history-free"
            raise StorageFormatError(f"{where} is a {have} database; it cannot be opened "
                                     f"with keep_history={bool(keep_history)}")
        return stored == "1"
