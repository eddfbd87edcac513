"""A read-only view of a storage as it was at one moment.

``BeforeStorage(storage, before=moment)`` shows the transactions of ``storage`` committed
before ``moment`` (a tid, a datetime, a date or an ISO-8601 string) and nothing after;
``at=moment`` includes a transaction committed exactly then. The view never changes,
whatever is committed to ``storage`` meanwhile, and refuses every write with
:class:`~amphora.errors.ReadOnlyError`. It is a storage, so ``amphora.DB(view)`` opens it
and :class:`~amphora.storage.demo.DemoStorage` can take it as a base: the way to stage
changes on a copy of production that production never sees::

    DemoStorage(base=BeforeStorage(prod), changes=open_storage("sqlite:///staging.db"))

A moment later than the storage's last transaction is taken as "now": a view of the
future would change as commits arrive. Only a history-preserving storage can show a past
moment; over a history-free one a view of a past moment is
:class:`~amphora.errors.Unsupported`.

Over a storage that keeps blobs, the view serves the blob files of its revisions
(``loadBlob``, read-only like the rest).

``db.open(at=...)`` gives the same view to one connection; a BeforeStorage gives it to a
whole database, to tools (``amphora at URI MOMENT info``) and to other wrappers.
"""
from __future__ import annotations

import datetime
from typing import Any, Callable, Iterable, Iterator

from amphora.errors import ObjectNotFoundError, ReadOnlyError, Unsupported
from amphora.storage.base import Storage, StorageBase, TransactionRecord
from amphora.storage.blobs import blob_capable, declare_blob_storage, open_committed
from amphora.utils import p64, tid_from_datetime, tid_repr, tid_time, u64, z64

__all__ = ["BeforeStorage", "moment_tid"]


def moment_tid(when: Any) -> bytes:
    """The tid of a moment: a tid (8 bytes, or ``0x`` and hex digits), a datetime (naive: UTC), a date (its
    midnight, UTC) or an ISO-8601 string of either."""
    if isinstance(when, bytes):
        if len(when) != 8:
            raise ValueError(f"a tid is 8 bytes, not {when!r}")
        return when
    if isinstance(when, str) and when.lower().startswith("0x"):
        try:
            value = int(when, 16)
        except ValueError:
            value = -1
        if not 0 <= value < 1 << 64:
            raise ValueError(f"{when!r} is not a tid (0x and up to 16 hex digits)")
        return p64(value)
    if isinstance(when, str):
        try:
            when = datetime.datetime.fromisoformat(when)
        except ValueError:
            raise ValueError(f"{when!r} is not an ISO-8601 date or time") from None
    if isinstance(when, datetime.date) and not isinstance(when, datetime.datetime):
        when = datetime.datetime(when.year, when.month, when.day)
    if isinstance(when, datetime.datetime):
        return tid_from_datetime(when)
    raise TypeError(f"expected a tid, datetime, date or ISO string, not {type(when).__name__}")


class BeforeStorage(StorageBase):
    """``storage`` as it was just before ``before`` (or at ``at``): read-only, fixed.

    Reads are the wrapped storage's reads with the tid capped at the view's bound:
    ``loadBefore`` never returns a revision written at or after it, and a revision that
    was still current then is reported current (``end_tid`` None). An object created after
    the bound is unknown to the view (:class:`ObjectNotFoundError`). ``lastTransaction``
    is the last transaction inside the view. Closing the view closes ``storage``.
    """

    supports_pack = False
    supports_mirror = False
    supports_undo = False

    def __init__(self, storage: Storage, before: Any = None, *, at: Any = None,
                 name: str | None = None):
        if before is not None and at is not None:
            raise ValueError("give before= or at=, not both")
        sync = getattr(storage, "sync", None)  # ZODB's storages may have none
        if sync is not None:
            sync()
        now = p64(u64(storage.lastTransaction()) + 1)
        if at is not None:
            bound = p64(u64(moment_tid(at)) + 1)
        elif before is not None:
            bound = moment_tid(before)
        else:
            bound = now
        bound = min(bound, now)
        if bound <= z64:
            raise ValueError("a view must end after the first possible tid")
        self.storage = storage
        self.before = bound  #: the view holds the transactions with tids below this one
        self.supports_history = getattr(storage, "supports_history", True)
        self.is_remote = getattr(storage, "is_remote", False)
        if bound < now and not self.supports_history:
            raise Unsupported(f"{storage.getName()} keeps no history: it cannot show "
                              f"the moment {tid_repr(bound)}")
        super().__init__(name or f"before({storage.getName()}, {bound.hex()})", read_only=True)
        self._ltid = _last_tid_before(storage, bound)
        self._census: tuple[int, int] | None = None  # (objects, bytes), see _counted
        self.supports_blobs = blob_capable(storage)
        if self.supports_blobs:
            declare_blob_storage(self)

    # -- reading --------------------------------------------------------------------
    def lastTransaction(self) -> bytes:
        return self._ltid

    def loadBefore(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        bound = self.before
        found = self.storage.loadBefore(oid, min(tid, bound))
        if found is None:
            if tid < bound and self.storage.loadBefore(oid, bound) is not None:
                return None  # created later, but inside the view
            raise ObjectNotFoundError(oid)  # no revision inside the view
        data, start, end = found
        return data, start, (end if end is not None and end < bound else None)

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        bound = self.before
        found = self.storage.load_many(oids, min(before, bound))
        return {oid: (data, start, end if end is not None and end < bound else None)
                for oid, (data, start, end) in found.items()}

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        if serial >= self.before:
            raise ObjectNotFoundError(oid)
        return self.storage.loadSerial(oid, serial)

    def prefetch(self, oids: Iterable[bytes], tid: bytes) -> None:
        self.storage.prefetch(oids, min(tid, self.before))

    def history(self, oid: bytes, size: int | None = 1) -> list[dict[str, Any]]:
        bound = self.before
        entries = [entry for entry in self.storage.history(oid, None)
                   if entry["tid"] < bound]
        if not entries:
            raise ObjectNotFoundError(oid)
        return entries if size is None else entries[:max(size, 1)]

    def loadBlob(self, oid: bytes, serial: bytes) -> str:
        """The wrapped storage's file of blob revision ``serial`` of ``oid``, if that
        revision is inside the view."""
        if serial >= self.before or not self.supports_blobs:
            raise ObjectNotFoundError(oid)
        return self.storage.loadBlob(oid, serial)

    def openCommittedBlobFile(self, oid: bytes, serial: bytes, blob: Any = None) -> Any:
        return open_committed(self.loadBlob(oid, serial), blob)

    def temporaryDirectory(self) -> str:
        """The wrapped storage's (a blob read into a connection's savepoint is copied
        there)."""
        return self.storage.temporaryDirectory()

    def iterator(self, start: bytes | None = None, stop: bytes | None = None
                 ) -> Iterator[TransactionRecord]:
        last = p64(u64(self.before) - 1)
        return self.storage.iterator(start, last if stop is None else min(stop, last))

    def __len__(self) -> int:
        """The number of objects at the view's moment. A view of the present asks the
        wrapped storage; a view of the past counts them from the transactions up to its
        moment (read once, the first time it is asked)."""
        if self._census is None and self._is_present():
            return len(self.storage)
        return self._counted()[0]

    def getSize(self) -> int:
        """The wrapped storage's size for a view of the present; for a view of the past,
        the bytes of the records current at its moment."""
        if self._census is None and self._is_present():
            return self.storage.getSize()
        return self._counted()[1]

    def _is_present(self) -> bool:
        """True while no transaction of the wrapped storage is outside the view."""
        return self.storage.lastTransaction() == self._ltid

    def _counted(self) -> tuple[int, int]:
        """``(objects, bytes)`` current at the view's moment, from its transactions."""
        if self._census is None:
            sizes: dict[bytes, int] = {}
            for txn in self.iterator():
                for record in txn:
                    if record.data is None:
                        sizes.pop(record.oid, None)  # removed (undone creation)
                    else:
                        sizes[record.oid] = len(record.data)
            self._census = (len(sizes), sum(sizes.values()))
        return self._census

    # -- writing: refused -----------------------------------------------------------
    def new_oid(self) -> bytes:
        raise ReadOnlyError(f"{self.__name__} is a read-only view of the past")

    def new_oids(self, count: int) -> list[bytes]:
        raise ReadOnlyError(f"{self.__name__} is a read-only view of the past")

    def tpc_begin(self, transaction: Any, tid: bytes | None = None, status: str = " ") -> None:
        raise ReadOnlyError(f"{self.__name__} is a read-only view of the past")

    def checkCurrentSerialInTransaction(self, oid: bytes, serial: bytes, transaction: Any) -> None:
        raise ReadOnlyError(f"{self.__name__} is a read-only view of the past")

    def pack(self, pack_time: float | bytes, referencesf: Callable | None = None,
             gc: bool = True, reachable: Iterable[bytes] | None = None,
             through: bytes | None = None) -> None:
        raise ReadOnlyError(f"{self.__name__} is a read-only view of the past")

    def storeBlob(self, *args: Any) -> None:
        raise ReadOnlyError(f"{self.__name__} is a read-only view of the past")

    restoreBlob = storeBlob

    # -- the rest -------------------------------------------------------------------
    def registerDB(self, wrapper: Any) -> None:
        """Nothing to report: the view never changes."""

    def close(self) -> None:
        self._closed = True
        self.storage.close()


def _last_tid_before(storage: Storage, bound: bytes) -> bytes:
    """The tid of the last transaction of ``storage`` below ``bound`` (``z64`` if none),
    looking back through ever larger windows of time so that only the recent part of a
    long history is read."""
    last = storage.lastTransaction()
    if last < bound:
        return last
    high = p64(u64(bound) - 1)
    seconds, beginning = 60.0, tid_time(z64)
    while True:
        earliest = tid_time(bound) - seconds
        low = z64 if earliest <= beginning + 1 else tid_from_datetime(
            datetime.datetime.fromtimestamp(earliest, datetime.timezone.utc))
        found = z64
        for txn in storage.iterator(low, high):
            found = txn.tid
        if found != z64 or low == z64:
            return found
        seconds *= 64
