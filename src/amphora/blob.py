"""Blobs through amphora's Connection: ``amphora.Blob`` and what a connection does with one.

``amphora.Blob`` is ZODB's ``ZODB.blob.Blob`` when ZODB is installed, else
:class:`StandaloneBlob`, which writes the same records: a persistent object whose data
lives in a file, so that values of any size are streamed, never held in memory::

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

import io
import os
import shutil
import tempfile
import weakref
from typing import TYPE_CHECKING, Any

from persistent import Persistent

from amphora.errors import AmphoraError, Unsupported
from amphora.storage.blobs import blob_capable
from amphora.utils import oid_repr

if TYPE_CHECKING:
    from amphora.connection import Connection

class BlobFile(io.FileIO):
    """A file of a :class:`StandaloneBlob`, which it tells when it is closed."""

    def __init__(self, name: str, mode: str, blob: Any):
        super().__init__(name, mode + "b")
        self.blob = blob

    def close(self) -> None:
        self.blob.closed(self)
        super().close()

    def __reduce__(self) -> Any:
        raise TypeError("a blob's file cannot be pickled")


class StandaloneBlob(Persistent):
    """A blob for when ZODB is not installed (``amphora.Blob`` is ZODB's ``Blob`` when
    it is): the same behaviour (``open`` in modes ``r``, ``w``, ``a``, ``r+``, ``c``;
    ``committed()``; ``consumeFile``) and the same records: its class pickle names
    ``ZODB.blob.Blob``, and amphora reads such records as this class when ZODB is
    missing, so either class reads what the other wrote."""

    _p_record_global = ("ZODB.blob", "Blob")  # the class its records name (see serialize)
    _p_blob_uncommitted: str | None = None  # the file of data not committed yet
    _p_blob_committed: str | None = None  # the committed file of the revision loaded
    readers: list | None = None
    writers: list | None = None

    def __init__(self, data: bytes | None = None):
        self.__setstate__()
        if data is not None:
            with self.open("w") as file:
                file.write(data)

    def __setstate__(self, state: Any = None) -> None:
        self.readers, self.writers = [], []

    def __getstate__(self) -> None:
        return None

    def _p_deactivate(self) -> None:
        if not self.opened():  # an open blob stays loaded
            super()._p_deactivate()

    def _p_invalidate(self) -> None:
        if self._p_changed is None:
            return
        for ref in (self.readers or []) + (self.writers or []):
            file = ref()
            if file is not None:
                file.close()
        if self._p_blob_uncommitted:
            _remove(self._p_blob_uncommitted)
        super()._p_invalidate()

    def opened(self) -> bool:
        return bool(self.readers or self.writers)

    def closed(self, file: Any) -> None:
        for refs in (self.readers or [], self.writers or []):
            for ref in list(refs):
                if ref() is file:
                    refs.remove(ref)

    def open(self, mode: str = "r") -> Any:
        """A file of the blob's data: ``r`` reads, ``w`` replaces, ``a`` appends, ``r+``
        updates; ``c`` reads the committed file (no uncommitted changes allowed)."""
        if mode not in ("r", "w", "r+", "a", "c"):
            raise ValueError(f"invalid mode {mode!r}")
        if self.readers is None:
            self.__setstate__()
        if mode == "c":
            return open(self.committed(), "rb")
        if self.writers:
            raise BlobError("Already opened for writing.")
        if mode == "r":
            name = self._p_blob_uncommitted or self._p_blob_committed
            if name is None:
                name = self._new_file()
            file = BlobFile(name, "r", self)
            self.readers.append(weakref.ref(file, _forget(self.readers)))
            return file
        if self.readers:
            raise BlobError("Already opened for reading.")
        if self._p_blob_uncommitted is None:
            name = self._new_file()
            if mode != "w" and self._p_blob_committed:
                shutil.copyfile(self._p_blob_committed, name)
        file = BlobFile(self._p_blob_uncommitted, mode, self)
        if mode == "r+":
            file.seek(0)
        self.writers.append(weakref.ref(file, _forget(self.writers)))
        self._p_changed = True
        return file

    def committed(self) -> str:
        """The name of the committed file (read-only), for code that wants a file name."""
        if self._p_blob_uncommitted or not self._p_blob_committed \
                or self._p_blob_committed.endswith(".spb"):
            raise BlobError("Uncommitted changes")
        return self._p_blob_committed

    def consumeFile(self, filename: str) -> None:
        """Take the file ``filename`` (moved when possible) as the blob's data."""
        if self.opened():
            raise BlobError("Already opened.")
        target = self._p_blob_uncommitted or self._new_file()
        try:
            os.replace(filename, target)
        except OSError:
            shutil.copyfile(filename, target)
            os.remove(filename)
        self._p_changed = True

    def _new_file(self) -> str:
        directory = (self._p_jar.db().storage.temporaryDirectory() if self._p_jar
                     else tempfile.gettempdir())
        fd, name = tempfile.mkstemp(dir=directory, prefix="BUC")
        os.close(fd)
        self._p_blob_uncommitted = name
        self._v_cleanup = weakref.finalize(self, _remove, name)  # a blob dropped unsaved
        return name

    # what a connection calls (as it does on ZODB's Blob)
    def _create_uncommitted_file(self) -> str:
        return self._new_file()

    def _uncommitted(self) -> str | None:
        """The file of the new data, handed over: the blob no longer owns it."""
        name = self._p_blob_uncommitted
        if name is None and self._p_blob_committed is None:
            name = self._new_file()
        cleanup = getattr(self, "_v_cleanup", None)
        if cleanup is not None:
            cleanup.detach()
        self._p_blob_uncommitted = None
        return name


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _forget(refs: list) -> Any:
    def forget(ref: Any) -> None:
        if ref in refs:
            refs.remove(ref)
    return forget


try:
    from ZODB.blob import Blob
    from ZODB.interfaces import BlobError
except ImportError:  # amphora's own, with the same records
    Blob = StandaloneBlob  # type: ignore[misc]

    class BlobError(AmphoraError):  # type: ignore[no-redef]
        """A blob cannot do that now (ZODB calls it ``BlobError``)."""

__all__ = ["Blob", "BlobError", "BlobFile", "BlobJar", "StandaloneBlob", "is_blob"]


_BLOB_CLASSES = (Blob, StandaloneBlob)


def is_blob(obj: Any) -> bool:
    return isinstance(obj, _BLOB_CLASSES)


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
