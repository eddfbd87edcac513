"""Blobs through amphora's Connection: ``amphora.Blob`` and what a connection does with one.

``amphora.Blob`` is ZODB's ``ZODB.blob.Blob`` (ZODB, an optional extra, must be
installed to use blobs): a persistent object whose data lives in a file, so that values
of any size are streamed, never held in memory::

    blob = amphora.Blob(b"first bytes")      # or Blob(), then blob.open("w")
    conn.root.report = blob
    with blob.open("w") as file:             # a temporary file beside the storage's blobs
        file.write(...)
    transaction.commit()                     # the storage takes the file as it is
    with conn.root.report.open("r") as file: # the committed file, read-only
        ...
    conn.root.report.committed()             # its name, to hand to a web server

What a :class:`~amphora.connection.Connection` does, through :class:`BlobJar`:

- at commit, a blob object with new data gives its file to the storage
  (``storeBlob``); one whose ``_p_changed`` was set without new data writes nothing;
  a blob opened for reading or writing cannot be committed (``ValueError``), and a
  storage without blobs refuses it with :class:`~amphora.errors.Unsupported`;
- when a blob is loaded, its committed file is the storage's ``loadBlob`` of the
  revision read, so blobs take part in MVCC like any object (a connection reads the
  revision of its snapshot, a historical connection that of its time);
- at a savepoint, a blob's data so far is copied aside (in the storage's temporary
  directory), which rolling back to the savepoint brings back; the copies are removed
  when the transaction ends.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from amphora.errors import Unsupported
from amphora.storage.blobs import blob_capable
from amphora.utils import oid_repr

if TYPE_CHECKING:
    from amphora.connection import Connection

try:
    from ZODB.blob import Blob
except ImportError:  # blobs need ZODB: amphora.Blob then says so when used
    class Blob:  # type: ignore[no-redef]
        """Stands for ``ZODB.blob.Blob`` when ZODB is not installed."""

        def __init__(self, *args: Any, **kwargs: Any):
            raise Unsupported("blobs need ZODB: pip install ZODB (ZODB.blob.Blob is "
                              "amphora.Blob)")

__all__ = ["Blob", "BlobJar", "is_blob"]


def is_blob(obj: Any) -> bool:
    return isinstance(obj, Blob)


class BlobJar:
    """A connection's blob files: what a commit gives the storage, what savepoints set
    aside, and the committed file of every blob loaded."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self.savepoint_files: dict[bytes, str] = {}  # oid -> its data at the last savepoint
        self._made: list[str] = []  # every savepoint file of this transaction

    def _storage(self) -> Any:
        return self._conn._storage

    def check_storage(self, obj: Any) -> None:
        if not blob_capable(self._storage()):
            raise self._unsupported("store", obj)
        if obj.opened():
            raise ValueError(f"the blob of oid {oid_repr(obj._p_oid)} is open: close its files "
                             "before committing (Can't commit with opened blobs.)")

    def take(self, obj: Any) -> str | None:
        """The file of ``obj``'s new data, for the commit (the blob lets go of it); None
        if it has none (only ``_p_changed`` was set)."""
        self.check_storage(obj)
        filename = obj._uncommitted()
        if filename is None:
            return None
        self.savepoint_files.pop(obj._p_oid, None)
        return filename

    def take_savepoint_file(self, oid: bytes, obj: Any) -> str | None:
        """For a blob written at a savepoint and not changed since: the file set aside
        (the live copy of the blob is dropped: it has the same bytes)."""
        filename = self.savepoint_files.pop(oid, None)
        if filename is None:
            return None
        self._made.remove(filename)
        if obj is not None and obj._p_blob_uncommitted:
            os.remove(obj._uncommitted())
        return filename

    def set_aside(self, obj: Any) -> None:
        """At a savepoint: copy ``obj``'s data so far aside (the blob keeps its own)."""
        self.check_storage(obj)
        live = obj._p_blob_uncommitted
        if live is None:
            if obj._p_blob_committed is not None:
                return  # no new data: nothing to keep
            live = obj._create_uncommitted_file()  # a new blob never written: empty
        aside = self._copy(live, "savepoint-")
        self.savepoint_files[obj._p_oid] = aside

    def loaded(self, obj: Any, serial: bytes) -> None:
        """``obj``'s state was just loaded at revision ``serial`` (or from a savepoint)."""
        obj._p_blob_uncommitted = None
        aside = self.savepoint_files.get(obj._p_oid)
        if aside is not None and obj._p_oid in self._conn._sp_states:
            obj._p_blob_committed = None
            with open(aside, "rb") as source, open(obj._create_uncommitted_file(), "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
            return
        storage = self._storage()
        if not blob_capable(storage):
            raise self._unsupported("load", obj)
        obj._p_blob_committed = storage.loadBlob(obj._p_oid, serial)

    def _unsupported(self, verb: str, obj: Any) -> Unsupported:
        storage = self._storage()
        why = getattr(storage, "no_blobs_reason", "it keeps no blob files")
        return Unsupported(f"cannot {verb} the blob of oid {oid_repr(obj._p_oid)} in "
                           f"{storage.getName()} ({type(storage).__name__}): {why}")

    def _copy(self, path: str, prefix: str) -> str:
        fd, copy = tempfile.mkstemp(dir=self._storage().temporaryDirectory(), prefix=prefix,
                                    suffix=".spb")
        with open(path, "rb") as source, os.fdopen(fd, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        self._made.append(copy)
        return copy

    def end(self) -> None:
        """The transaction ended: remove the files set aside."""
        made, self._made = self._made, []
        self.savepoint_files = {}
        for path in made:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
