"""Blobs in a PostgreSQL database: every machine reads them, no shared file system needed.

Private: a part of :class:`amphora.storage.postgresql.PostgreSQLStorage` (see
:class:`ChunkedBlobMixin`), and the local cache of blob files (:class:`BlobCache`).

A blob revision's bytes are rows of ``blob_chunk(oid, tid, chunk_num, blob_size, data)``,
chunks of up to :data:`CHUNK` bytes (see .schema for why rows and not large objects).
``storeBlob`` takes the file into the storage's temporary directory and streams it into
chunks at once, with a binary ``COPY`` (a chunk in memory at a time), in the database
transaction the vote then writes the records in: the chunks carry a provisional tid
until the vote, under the commit lock, gives them the commit's. So a blob is committed
with its record or not at all, and the commit lock is not held while a large blob goes
up. Undo of a blob revision copies the chunks of the revision
it brings back with ``INSERT ... SELECT`` (in the server). Pack deletes the chunks of the
revisions it removes; a history-free commit those of the replaced revisions it forgets.

Reading writes the chunks, streamed, into a file of the local cache (see
:class:`BlobCache`), which ``loadBlob`` returns; a committed file written by this storage
is kept there at once.
"""
from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
import time
from typing import Any

from amphora.errors import InvalidURIError, StorageError
from amphora.storage.blobs import (BlobDirectory, BlobFileError, BlobStorageMixin,
                                   is_blob_record)
from amphora.storage.sql.keys import _pack, _u

__all__ = ["BlobCache", "ChunkedBlobMixin", "CHUNK"]

CHUNK = 1 << 20  #: bytes per row of blob_chunk (the last row of a blob may hold fewer)

_COPY_CHUNKS = ("COPY blob_chunk (oid, tid, chunk_num, blob_size, data)"
                " FROM STDIN (FORMAT BINARY)")
_CHUNK_TYPES = ("int8", "int8", "int4", "int8", "bytea")
# A commit's chunks are sent under a provisional tid (negative: never a real one, and
# random: commits in progress never share one); the vote gives them the commit's tid.
_FORGET_PROVISIONAL = "DELETE FROM blob_chunk WHERE oid = %(o)s AND tid = %(p)s"
_SET_TID = ("UPDATE blob_chunk SET tid = %(t)s"
            " WHERE oid = ANY(%(o)s::bigint[]) AND tid = %(p)s")
_COPY_REVISION = ("INSERT INTO blob_chunk (oid, tid, chunk_num, blob_size, data)"
                  " SELECT oid, %(new)s, chunk_num, blob_size, data FROM blob_chunk"
                  " WHERE oid = %(o)s AND tid = %(old)s")
_CHUNKS = ("SELECT chunk_num, blob_size, data FROM blob_chunk"
           " WHERE oid = %(o)s AND tid = %(t)s ORDER BY chunk_num")
# Chunks of revisions no record has any more (pack; rows of commits in progress are
# above the cutoff and invisible anyway), returned so that the cache drops their files.
_DELETE_UNREFERENCED = """
WITH gone AS (
  DELETE FROM blob_chunk AS c WHERE c.tid <= %(cutoff)s
    AND NOT EXISTS (SELECT 1 FROM objects AS o WHERE o.oid = c.oid AND o.tid = c.tid)
    AND NOT EXISTS (SELECT 1 FROM revisions AS r WHERE r.oid = c.oid AND r.tid = c.tid)
    AND NOT EXISTS (SELECT 1 FROM replaced AS p WHERE p.oid = c.oid AND p.tid = c.tid)
  RETURNING c.oid, c.tid)
SELECT DISTINCT oid, tid FROM gone"""


class BlobCache(BlobDirectory):
    """Local copies of committed blob revisions, laid out as a blob directory's files,
    ``<oid hex>/<tid hex>.blob`` (read-only), and ``tmp/`` for files not committed yet;
    no journal (the database commits the bytes) and no marker of a blob directory (the
    files are copies, removable at any time).

    With ``size`` (bytes), the least recently used files beyond it are removed after each
    file added. Several storages and processes may share one directory: a file appears
    whole, by renaming a finished temporary file (two writers of the same revision write
    the same bytes), and removing a file does not disturb a reader that opened it (the
    bytes stay until it is closed; the storage's ``openCommittedBlobFile`` writes a file
    removed between finding and opening it again).
    """

    def __init__(self, path: str, size: int | None = None):  # (not BlobDirectory's)
        self.path = os.path.abspath(path)
        self.size = size
        self.temporary = os.path.join(self.path, "tmp")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise StorageError(f"{self.path}: the blob cache is not a directory")
        os.makedirs(self.temporary, exist_ok=True)
        self._used = self._total()  # an estimate between scans: the files this one added

    def found(self, oid: bytes, tid: bytes) -> str | None:
        """The cached file of revision ``tid`` of ``oid``, marked as just used; None if
        the cache has none."""
        path = self.file_of(oid, tid)
        try:
            _mark_used(path)
        except FileNotFoundError:
            return None
        return path

    def new_file(self) -> Any:
        """A new file in ``tmp/``, open for writing (then :meth:`keep` or remove it)."""
        return tempfile.NamedTemporaryFile(dir=self.temporary, prefix="loading-",
                                           delete=False)

    def keep(self, oid: bytes, tid: bytes, filename: str) -> str:
        """Make ``filename`` (in ``tmp/``) the read-only file of revision ``tid``."""
        target = self.file_of(oid, tid)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.chmod(filename, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        size = os.path.getsize(filename)
        _mark_used(filename)
        os.replace(filename, target)
        self._used += size
        if self.size is not None and self._used > self.size:
            self.evict(keep=target)
        return target

    def _files(self) -> list[tuple[int, int, str]]:
        """(last use in nanoseconds, size, path) of every cached file."""
        found = []
        for directory in os.scandir(self.path):
            if len(directory.name) != 16 or not directory.is_dir():
                continue
            try:
                entries = list(os.scandir(directory.path))
            except FileNotFoundError:
                continue  # emptied and removed meanwhile
            for entry in entries:
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                found.append((info.st_mtime_ns, info.st_size, entry.path))
        return found

    def _total(self) -> int:
        return sum(size for _, size, _ in self._files())

    def evict(self, keep: str | None = None) -> int:
        """Remove the least recently used files until the cache holds at most ``size``
        bytes, never ``keep`` (the file being handed out); returns how many."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        removed = 0
        for _, size, path in files:
            if self.size is None or total <= self.size:
                break
            if path == keep:
                continue
            removed += self.remove_file(path)
            total -= size
        self._used = total
        return removed


def _mark_used(path: str) -> None:
    """Set the file's modification time, the cache's record of its last use, to now (to
    the nanosecond: the time the kernel would set is coarser, and files used one after
    the other would tie)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


class ChunkedBlobMixin(BlobStorageMixin):
    """Part of :class:`~amphora.storage.postgresql.PostgreSQLStorage`: ZODB's
    ``IBlobStorage`` with the bytes in ``blob_chunk`` and a local :class:`BlobCache`.

    Uses these attributes of the storage: ``_query``, ``_reader()``,
    ``_drop_broken_reader()``, ``_error``, ``_psycopg``, ``_where``, ``schema``,
    ``_read_only``, ``loadSerial``, ``_writing_connection()`` (the commit's database
    transaction) and ``_rollback()``; calls :meth:`_write_blobs` in its vote (with that
    connection and the tid) and :meth:`_settle_blobs`, :meth:`_discard_blobs` after its
    commit and abort.
    """

    blob_table = "blob_chunk"  #: where the blobs' bytes are (``amphora info`` says it)
    _blob_cache_dir: str | None = None
    _blob_cache_size: int | None = None
    _blob_cache_made: tuple[str, int] | None = None  # (directory, pid) made here

    def _setup_blob_cache(self, directory: str | None, size: int | None) -> None:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size < 0):
            raise InvalidURIError(f"blob_cache_size must be a number of bytes, not {size!r}")
        if directory is not None and not isinstance(directory, str):
            raise InvalidURIError(f"blob_cache_dir must be a directory name, not {directory!r}")
        self._blob_cache_dir = directory
        self._blob_cache_size = size
        self._copied_blobs: dict[bytes, bytes] = {}  # oid -> the revision undo brings back
        self._uploaded: tuple[bytes, dict[bytes, str]] | None = None  # (tid, staged files)
        self._provisional: int | None = None  # the tid of this commit's chunks until the vote

    def _blobs(self) -> BlobCache:  # type: ignore[override]
        """The cache, made at its first use (a temporary directory unless
        ``blob_cache_dir`` names one)."""
        cache = self._blob_directory
        if cache is None:
            if self._closed:
                raise StorageError(f"{self.__name__} is closed")
            with self._lock:
                if self._blob_directory is None:
                    path = self._blob_cache_dir
                    if path is None:
                        path = tempfile.mkdtemp(prefix="amphora-blob-cache-")
                        self._blob_cache_made = (path, os.getpid())
                    self._blob_directory = BlobCache(path, self._blob_cache_size)
                cache = self._blob_directory
        return cache  # type: ignore[return-value]

    @property
    def blob_cache(self) -> BlobCache:
        """The local cache of blob files."""
        return self._blobs()

    def _close_blob_cache(self) -> None:
        """Remove the cache directory if this storage made it (not in a forked child:
        it is the parent's)."""
        made, self._blob_cache_made = self._blob_cache_made, None
        if made is not None and made[1] == os.getpid():
            shutil.rmtree(made[0], ignore_errors=True)

    # -- reading --------------------------------------------------------------------
    def loadBlob(self, oid: bytes, serial: bytes) -> str:
        """The name of a local file holding revision ``serial`` of ``oid`` (read-only),
        from the cache or written there from ``blob_chunk``. Raises
        :class:`~amphora.storage.blobs.BlobFileError` naming the oid and tid when the
        revision is a blob's but its chunks are missing or incomplete, and
        :class:`~amphora.errors.ObjectNotFoundError` when there is no such blob
        revision."""
        cache = self._blobs()
        path = cache.found(oid, serial)
        return path if path is not None else self._download(cache, oid, serial)

    def openCommittedBlobFile(self, oid: bytes, serial: bytes, blob: Any = None) -> Any:
        try:
            return super().openCommittedBlobFile(oid, serial, blob)
        except FileNotFoundError:  # evicted (by another storage) between finding and opening
            return super().openCommittedBlobFile(oid, serial, blob)

    def _download(self, cache: BlobCache, oid: bytes, serial: bytes) -> str:
        """Write the chunks of the revision into the cache, streamed (a chunk at a time)."""
        where = f"table blob_chunk of schema {self.schema!r} at {self._where}"
        expected = size = None
        written = 0
        with cache.new_file() as file:
            try:
                rows = self._reader().cursor(binary=True).stream(
                    _CHUNKS, {"o": _u(oid), "t": _u(serial)})
                try:
                    for chunk_num, size, data in rows:
                        if chunk_num != (expected or 0):
                            break  # a chunk is missing
                        expected = chunk_num + 1
                        file.write(data)
                        written += len(data)
                except self._psycopg.Error as exc:
                    self._drop_broken_reader()
                    raise self._error(exc) from exc
                finally:
                    rows.close()  # (cancels the query if the loop stopped early)
                if expected is None:
                    self._no_blob_chunks(oid, serial, where)
                if written != size:
                    raise BlobFileError(oid, serial, where, "its chunks are truncated or "
                                        f"damaged: {written:,} bytes, committed with "
                                        f"{size:,}")
            except BaseException:
                file.close()
                os.remove(file.name)
                raise
        return cache.keep(oid, serial, file.name)

    def _no_blob_chunks(self, oid: bytes, serial: bytes, where: str) -> None:
        record = self.loadSerial(oid, serial)  # ObjectNotFoundError: no such revision
        if is_blob_record(record):
            raise BlobFileError(oid, serial, where, "its chunks are missing")
        self._not_a_blob(oid)

    # -- writing --------------------------------------------------------------------
    def _stage_blob(self, oid: bytes, staged: str) -> None:
        """Keep the file for the cache, and send it to the database at once (``storeBlob``
        and ``restoreBlob`` come here): into the commit's database transaction, under a
        provisional tid, so that the commit lock is not held while it goes up."""
        self._copied_blobs.pop(oid, None)
        again = oid in self._staged_blobs
        super()._stage_blob(oid, staged)
        psycopg = self._psycopg
        try:
            conn = self._writing_connection()
            if self._provisional is None:
                self._provisional = -1 - secrets.randbits(62)
            if again:
                conn.execute(_FORGET_PROVISIONAL, {"o": _u(oid), "p": self._provisional})
            with conn.cursor(binary=True).copy(_COPY_CHUNKS) as copy:
                copy.set_types(_CHUNK_TYPES)
                self._copy_file(copy, _u(oid), self._provisional, staged)
        except psycopg.Error as exc:
            self._rollback()
            raise self._error(exc) from exc

    def _stage_undone_blob(self, oid: bytes, tid: bytes) -> None:
        previous = self._staged_blobs.pop(oid, None)
        if previous is not None:  # stored earlier in this commit: its chunks go
            self._blobs().remove_file(previous)
            try:
                self._writing_connection().execute(
                    _FORGET_PROVISIONAL, {"o": _u(oid), "p": self._provisional})
            except self._psycopg.Error as exc:
                self._rollback()
                raise self._error(exc) from exc
        self._copied_blobs[oid] = tid

    def _write_blobs(self, conn: Any, tid: int) -> None:
        """In the vote's database transaction, once the tid is known: the chunks sent
        under the provisional tid get the real one (their rows are rewritten, not their
        data: it is stored apart, and PostgreSQL keeps a value an update does not
        change), and the revisions undo brings back are copied."""
        staged = self._staged_blobs
        if staged:
            conn.execute(_SET_TID, {"t": tid, "p": self._provisional,
                                    "o": [_u(oid) for oid in staged]})
            self._uploaded = (_pack(tid), staged)
            self._staged_blobs = {}
        for oid, old in self._copied_blobs.items():
            if not conn.execute(_COPY_REVISION, {"o": _u(oid), "old": _u(old),
                                                 "new": tid}).rowcount:
                raise BlobFileError(oid, old, f"table blob_chunk of schema {self.schema!r}",
                                    "its chunks are missing (undo cannot bring it back)")

    @staticmethod
    def _copy_file(copy: Any, oid: int, tid: int, path: str) -> None:
        """Send the file ``path`` as the chunks of ``oid`` at ``tid``, a chunk at a time."""
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            chunk_num = written = 0
            while True:
                data = file.read(CHUNK)
                if not data and chunk_num:
                    break
                copy.write_row((oid, tid, chunk_num, size, data))
                chunk_num += 1
                written += len(data)
                if not data:
                    break  # an empty blob: one empty chunk
        if written != size:
            raise StorageError(f"{path}: the blob file changed while it was stored")

    def _settle_blobs(self) -> None:
        """Committed: the files stored become the cache's files of their revision."""
        uploaded, self._uploaded = self._uploaded, None
        self._copied_blobs = {}
        if uploaded is None:
            return
        tid, staged = uploaded
        cache = self._blobs()
        for oid, path in staged.items():
            try:
                cache.keep(oid, tid, path)
            except OSError:
                cache.remove_file(path)  # it can be read from the database

    def _discard_blobs(self) -> None:
        staged, self._staged_blobs = self._staged_blobs, {}
        uploaded, self._uploaded = self._uploaded, None
        self._copied_blobs = {}
        cache = self._blob_directory
        if cache is None:
            return
        files = list(staged.values()) + (list(uploaded[1].values()) if uploaded else [])
        for path in files:
            cache.remove_file(path)

    def _clear_writes(self) -> None:
        super()._clear_writes()
        self._copied_blobs = {}
        self._uploaded = None
        self._provisional = None

    # -- pack -----------------------------------------------------------------------
    def _pack_blob_chunks(self, conn: Any, cutoff: int) -> int:
        """Delete the chunks of revisions pack removed, and their cached files."""
        gone = conn.execute(_DELETE_UNREFERENCED, {"cutoff": cutoff}).fetchall()
        cache = self._blob_directory
        if cache is not None:
            for oid, tid in gone:
                cache.remove_file(cache.file_of(_pack(oid), _pack(tid)))
        return len(gone)

