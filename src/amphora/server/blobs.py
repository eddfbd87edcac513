"""The server's side of blobs and undo: blob files streamed in chunks from the client
into the served storage's temporary directory (:data:`~amphora.server.protocol.BLOB_WRITE`,
an *upload*), taken by a commit (:meth:`BlobRequests.take_uploads`, then the storage's
``storeBlob``), committed files streamed back in chunks
(:data:`~amphora.server.protocol.BLOB_READ`); the undo log and what an undo writes
(:data:`~amphora.server.protocol.UNDO_LOG`, :data:`~amphora.server.protocol.UNDO_OIDS`).

Works for any served storage whose ``supports_blobs`` is true, through ZODB's
``IBlobStorage`` methods alone (``temporaryDirectory``, ``storeBlob``, ``loadBlob``).
Neither side holds a whole blob: a chunk is at most :data:`MAX_CHUNK` bytes, written with
``os.pwrite`` at its offset (the thread pool may write a client's chunks in any order).
The uploads of a session no commit took are removed when it ends.

Private: mixed into the server's session class.
"""
from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

from amphora import errors
from amphora.server.reads import check_oid
from amphora.storage.blobs import blob_capable
from amphora.utils import p64, tid_repr, u64

__all__ = ["BlobRequests", "MAX_CHUNK", "blob_welcome"]

#: the largest chunk of a blob file in one request or reply
MAX_CHUNK = 4 * 1024 * 1024
_MAX_UPLOADS = 100_000             # uploads a session may have open at once


def blob_welcome(storage: Any) -> dict:
    """The welcome's keys about undo and blobs for ``storage``."""
    supports_undo = getattr(storage, "supportsUndo", None)
    blobs = blob_capable(storage)
    return {"undo": bool(supports_undo()) if callable(supports_undo) else False,
            "blobs": blobs,
            "no_blobs_reason": None if blobs else str(getattr(
                storage, "no_blobs_reason", "it keeps no blob files"))}


class BlobRequests:
    """The handlers of BLOB_WRITE, BLOB_READ, UNDO_LOG and UNDO_OIDS; needs
    ``self.served`` and keeps the session's uploads (``upload id -> (descriptor,
    path)``)."""

    served: Any

    def _uploads(self) -> tuple[dict[int, tuple[int, str]], threading.Lock]:
        found = getattr(self, "_upload_state", None)
        if found is None:
            found = self._upload_state = ({}, threading.Lock())
        return found

    def _blob_storage(self) -> Any:
        storage = self.served.storage
        if not blob_capable(storage):
            raise errors.Unsupported(
                f"{self.served.storage.getName()} keeps no blobs: "
                f"{getattr(storage, 'no_blobs_reason', 'it keeps no blob files')}")
        return storage

    def do_blob_write(self, request_id: int, upload: int, offset: int, data: bytes) -> None:
        if type(upload) is not int or type(offset) is not int or offset < 0:
            raise errors.StorageError(f"blob_write takes an upload id and an offset, not "
                                      f"{upload!r:.20} and {offset!r:.20}")
        if type(data) is not bytes or len(data) > MAX_CHUNK:
            raise errors.StorageError(f"a blob chunk is bytes of at most {MAX_CHUNK:,}")
        uploads, lock = self._uploads()
        with lock:
            entry = uploads.get(upload)
            if entry is None:
                if len(uploads) >= _MAX_UPLOADS:
                    raise errors.StorageError(f"more than {_MAX_UPLOADS:,} blob uploads")
                directory = self._blob_storage().temporaryDirectory()
                fd, path = tempfile.mkstemp(dir=directory, prefix="upload-")
                entry = uploads[upload] = (fd, path)
        os.pwrite(entry[0], data, offset)

    def take_uploads(self, blobs: Any) -> dict[bytes, str]:
        """The files of a commit's ``blobs`` (``{oid: [upload, size]}``), closed and
        handed over (the caller gives them to ``storeBlob``, or removes them). Raises
        StorageError, removing them, when one is unknown or not the size given."""
        if not isinstance(blobs, dict):
            raise errors.StorageError("a commit's blobs are {oid: [upload, size]}")
        uploads, lock = self._uploads()
        taken: dict[bytes, str] = {}
        problem = None
        with lock:
            for oid, entry in blobs.items():
                upload, size = entry if isinstance(entry, list) and len(entry) == 2 \
                    else (None, None)
                found = uploads.pop(upload, None) if type(upload) is int else None
                if found is None:
                    problem = problem or f"no uploaded file {upload!r:.20} for a blob"
                    continue
                fd, path = found
                written = os.fstat(fd).st_size
                os.close(fd)
                taken[check_oid(oid)] = path
                if written != size:
                    problem = problem or (f"the blob of oid {oid.hex()} was uploaded with "
                                          f"{written:,} bytes, not {size!r}")
        if problem is not None:
            remove_files(taken.values())
            raise errors.StorageError(problem)
        return taken

    def drop_uploads(self) -> None:
        """Remove the files no commit took (the session ended)."""
        uploads, lock = self._uploads()
        with lock:
            entries = list(uploads.values())
            uploads.clear()
        for fd, _ in entries:
            os.close(fd)
        remove_files(path for _, path in entries)

    def do_blob_read(self, request_id: int, oid: bytes, serial: bytes, offset: int,
                     length: int) -> list:
        key = (check_oid(oid), check_oid(serial, "a tid"))
        found = getattr(self, "_last_blob", None)  # a file's chunks come one after another
        path = found[1] if found is not None and found[0] == key else None
        try:
            file = open(path, "rb") if path is not None else None
        except FileNotFoundError:  # packed away since: the storage says how
            file = None
        if file is None:
            path = self._blob_storage().loadBlob(*key)
            self._last_blob = (key, path)
            file = open(path, "rb")
        with file:
            size = os.fstat(file.fileno()).st_size
            file.seek(max(0, int(offset)))
            return [size, file.read(max(0, min(int(length), MAX_CHUNK)))]

    # -- undo -------------------------------------------------------------------------
    def do_undo_log(self, request_id: int, offset: int, limit: int) -> list:
        offset, limit = max(0, int(offset)), max(1, min(int(limit), 1000))
        entries = self.served.storage.undoLog(offset, offset + limit)
        return [{key: value for key, value in entry.items()
                 if isinstance(value, (bytes, str, int, float, bool, type(None)))}
                for entry in entries]

    def do_undo_oids(self, request_id: int, tid: bytes) -> list:
        """``[[oid, states], ...]``: the oids transaction ``tid`` wrote (what undoing it
        writes); ``states`` None, or, for an object changed since ``tid`` (the undo is a
        merge, which the client makes), ``[committed serial, committed record, record
        tid wrote, record before tid]``."""
        storage = self.served.storage
        if not storage.supportsUndo():
            raise errors.Unsupported(f"{storage.getName()} keeps no history: it cannot undo")
        tid = check_oid(tid, "a tid")
        for txn in storage.iterator(tid, tid):
            if txn.tid == tid:
                oids = dict.fromkeys(record.oid for record in txn)
                after = p64(u64(storage.lastTransaction()) + 1)
                return [[oid, _undo_states(storage, oid, tid, after)] for oid in oids]
        raise errors.UndoError(f"transaction {tid_repr(tid)} is not in the database (never "
                               "committed, or removed by pack)")


def _undo_states(storage: Any, oid: bytes, tid: bytes, after: bytes) -> list | None:
    """The records an undo of ``tid`` merges for ``oid`` (see do_undo_oids), or None."""
    try:
        current = storage.loadBefore(oid, after)
        if current is None or current[1] == tid:
            return None
        undone = storage.loadSerial(oid, tid)
        before = storage.loadBefore(oid, tid)
    except errors.ObjectNotFoundError:
        return None
    if before is None or current[0] == undone:
        return None
    return [current[1], current[0], undone, before[0]]


def remove_files(paths: Any) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
