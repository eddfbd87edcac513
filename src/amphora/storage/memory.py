"""A history-preserving storage in memory: the working reference of the storage contract.

Every revision of every object is kept (until pack) in two parallel lists per oid, tids
ascending, so ``loadBefore`` is one bisection. Data lives as long as the storage object.
A revision whose data is None is a deletion record (an undone creation, see
:mod:`amphora.storage.undo`): the object does not exist from its tid on.

Blob files (see :mod:`amphora.storage.blobs`) live in a temporary directory the storage
makes at its first use of blobs and removes when it is closed (or in ``blob_dir``, which
it leaves in place).
"""
from __future__ import annotations

import bisect
import shutil
import tempfile
import threading
import weakref
from typing import Callable, Iterable, Iterator

from amphora.errors import ObjectNotFoundError, StorageError
from amphora.serialize import references as record_references
from amphora.storage.blobs import BlobDirectory, BlobStorageMixin
from amphora.storage.base import (DataRecord, StorageBase, TransactionRecord, history_entry,
                                  oids_to_keep, pack_tid, refuse_stale)
from amphora.storage.base import reachable as reachable_from
from amphora.storage.undo import UndoMixin
from amphora.utils import p64, u64, z64

__all__ = ["MemoryStorage"]


class MemoryStorage(BlobStorageMixin, UndoMixin, StorageBase):
    """Keeps records in dicts: ``oid -> ([tid, ...], [data, ...])`` and an ordered
    ``tid -> TransactionRecord`` (the record list holds oids and tids, data is looked up)."""

    _blobs_durable = False  # nothing here survives the process

    def __init__(self, name: str = "memory", read_only: bool = False,
                 resolve_conflicts: bool = True, blob_dir: str | None = None):
        super().__init__(name, read_only, resolve_conflicts)
        self._blob_dir_asked = blob_dir
        self._blob_sizes: dict[tuple[bytes, bytes], int] = {}  # (oid, tid) -> file size
        self._voted_blob_sizes: dict[bytes, int] = {}
        self._revisions: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
        self._transactions: dict[bytes, TransactionRecord] = {}
        self._packed_through = z64  # the largest tid of a transaction pack removed
        self._pack_cutoff = z64  # transactions up to this tid cannot be undone
        self._ltid = z64
        self._last_oid = 0
        self._oid_lock = threading.Lock()

    def _blobs(self) -> BlobDirectory:
        """The blob directory, made at its first use."""
        directory = self._blob_directory
        if directory is None:
            self._check_open()
            with self._lock:
                if self._blob_directory is None:
                    path = self._blob_dir_asked
                    if path is None:
                        path = tempfile.mkdtemp(prefix="amphora-blobs-")
                        weakref.finalize(self, shutil.rmtree, path, True)
                    self._open_blobs(path)
                directory = self._blob_directory
        return directory

    def _blob_size(self, oid: bytes, tid: bytes) -> int | None:
        with self._lock:
            return self._blob_sizes.get((oid, tid))

    def close(self) -> None:
        super().close()
        directory = self._blob_directory
        if directory is not None and self._blob_dir_asked is None:
            shutil.rmtree(directory.path, ignore_errors=True)

    # -- reading --------------------------------------------------------------------
    def lastTransaction(self) -> bytes:
        with self._lock:
            return self._ltid

    def loadBefore(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        self._check_open()
        with self._lock:
            revisions = self._revisions.get(oid)
            if revisions is None:
                raise ObjectNotFoundError(oid)
            tids, datas = revisions
            i = bisect.bisect_left(tids, tid)
            if i == 0:
                return None
            if datas[i - 1] is None:
                raise ObjectNotFoundError(oid)
            return datas[i - 1], tids[i - 1], tids[i] if i < len(tids) else None

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        self._check_open()
        with self._lock:
            revisions = self._revisions.get(oid)
            if revisions is not None:
                tids, datas = revisions
                i = bisect.bisect_left(tids, serial)
                if i < len(tids) and tids[i] == serial and datas[i] is not None:
                    return datas[i]
            raise ObjectNotFoundError(oid)

    def _current_serial(self, oid: bytes) -> bytes:
        revisions = self._revisions.get(oid)
        return revisions[0][-1] if revisions else z64

    def history(self, oid: bytes, size: int = 1) -> list[dict]:
        self._check_open()
        with self._lock:
            revisions = self._revisions.get(oid)
            if revisions is None:
                raise ObjectNotFoundError(oid)
            tids, datas = revisions
            entries = []
            for tid, data in zip(reversed(tids), reversed(datas)):
                if size is not None and len(entries) >= size:
                    break
                txn = self._transactions[tid]
                entries.append(history_entry(tid, txn.user, txn.description,
                                             txn.extension_bytes, len(data or b"")))
            return entries

    def iterator(self, start: bytes | None = None, stop: bytes | None = None
                 ) -> Iterator[TransactionRecord]:
        self._check_open()
        with self._lock:
            selected = [txn for tid, txn in self._transactions.items()
                        if (start is None or tid >= start) and (stop is None or tid <= stop)]
            copies = [TransactionRecord(txn.tid, txn.status, txn.user, txn.description,
                                        txn.extension_bytes,
                                        [DataRecord(r.oid, r.tid, self._data_of(r.oid, r.tid))
                                         for r in txn.records])
                      for txn in selected]
        return iter(copies)

    def _data_of(self, oid: bytes, tid: bytes) -> bytes | None:
        """The data ``tid`` wrote for ``oid`` (None: a deletion record)."""
        tids, datas = self._revisions[oid]
        return datas[bisect.bisect_left(tids, tid)]

    def __len__(self) -> int:
        with self._lock:
            return sum(datas[-1] is not None for _, datas in self._revisions.values())

    def getSize(self) -> int:
        with self._lock:
            return sum(len(d) for _, datas in self._revisions.values() for d in datas if d)

    # -- undo (see amphora.storage.undo) ------------------------------------------------
    def _undo_log_rows(self, offset: int, limit: int) -> list[tuple[bytes, bytes, bytes, bytes]]:
        with self._lock:
            txns = [txn for tid, txn in self._transactions.items() if tid > self._pack_cutoff]
        newest = txns[::-1][offset:offset + limit]
        return [(txn.tid, txn.user, txn.description, txn.extension_bytes) for txn in newest]

    def _undo_oids(self, tid: bytes) -> list[bytes] | None:
        with self._lock:
            txn = self._transactions.get(tid)
            if txn is None or tid <= self._pack_cutoff:
                return None
            return [record.oid for record in txn.records]

    def _undo_current(self, oid: bytes) -> tuple[bytes, bytes | None] | None:
        with self._lock:
            revisions = self._revisions.get(oid)
            return None if revisions is None else (revisions[0][-1], revisions[1][-1])

    # -- writing --------------------------------------------------------------------
    def new_oid(self) -> bytes:
        self._check_open()
        with self._oid_lock:
            self._last_oid += 1
            return p64(self._last_oid)

    def _vote(self) -> None:
        with self._lock:
            committed = {oid: self._current_serial(oid)
                         for oid in self._stores.keys() | self._checks.keys()}
            self._check_conflicts(committed, self.loadSerial)
            # chosen here, where failing is allowed; the commit lock keeps it valid
            self._vote_tid = self._next_tid(self._ltid)
            self._voted_blob_sizes = self._place_blobs(self._vote_tid)

    def _finish(self, func: Callable[[bytes], None] | None) -> bytes:
        tid = self._vote_tid
        user, description, extension_bytes = self._meta
        txn = TransactionRecord(tid, " ", user, description, extension_bytes)
        highest = max(self._stores, default=z64)
        if highest > p64(self._last_oid):  # oids written by a copy must not be handed out
            with self._oid_lock:
                self._last_oid = max(self._last_oid, u64(highest))
        for oid, data in self._stores.items():
            tids, datas = self._revisions.setdefault(oid, ([], []))
            tids.append(tid)
            datas.append(data)
            txn.records.append(DataRecord(oid, tid, None))
        self._transactions[tid] = txn
        for oid, size in self._voted_blob_sizes.items():
            self._blob_sizes[oid, tid] = size
        self._voted_blob_sizes = {}
        self._settle_blobs()
        try:
            if func is not None:
                func(tid)
        finally:
            self._ltid = tid  # the data is in: publish the tid whatever func did
        return tid

    def _abort(self) -> None:
        self._voted_blob_sizes = {}
        self._discard_blobs()

    # -- management -----------------------------------------------------------------
    def pack(self, pack_time: float | bytes, referencesf: Callable | None = None,
             gc: bool = True, reachable: Iterable[bytes] | None = None,
             through: bytes | None = None) -> None:
        """Drop revisions superseded at ``pack_time``; with ``gc``, drop objects that no
        kept revision reaches from the root (objects created after ``pack_time`` stay),
        or, given ``reachable``, the objects outside it (see
        :meth:`amphora.storage.base.Storage.pack`)."""
        cutoff = pack_tid(pack_time)
        refs_of = referencesf or record_references
        kept = None if reachable is None or not gc else oids_to_keep(reachable, through)
        with self._commit_lock, self._lock:
            if kept is not None:
                refuse_stale(self.__name__, self._ltid, through)
            self._pack_cutoff = max(self._pack_cutoff, cutoff)
            for oid, (tids, datas) in self._revisions.items():
                keep_from = bisect.bisect_right(tids, cutoff) - 1
                if keep_from > 0:
                    del tids[:keep_from], datas[:keep_from]
            if gc:
                def refs(oid: bytes) -> Iterable[bytes]:
                    found: list[bytes] = []
                    for data in self._revisions.get(oid, ((), ()))[1]:
                        if data is not None:
                            refs_of(data, found)
                    return found
                if kept is not None:
                    live = kept
                else:
                    live = reachable_from([z64], refs) if z64 in self._revisions else set()
                for oid in [oid for oid, (tids, _) in self._revisions.items()
                            if oid not in live and tids[0] <= cutoff]:
                    del self._revisions[oid]
            for tid, txn in list(self._transactions.items()):
                txn.records = [r for r in txn.records
                               if r.oid in self._revisions and tid in self._revisions[r.oid][0]]
                if not txn.records and tid < cutoff:
                    del self._transactions[tid]
                    self._packed_through = max(self._packed_through, tid)
            if self._blob_directory is not None:
                revisions = self._revisions
                self._pack_blobs(lambda oid: set(revisions.get(oid, ((), ()))[0]), self._ltid)
                self._blob_sizes = {(oid, tid): size for (oid, tid), size
                                    in self._blob_sizes.items()
                                    if tid in revisions.get(oid, ((), ()))[0]}

    def packed_through(self) -> bytes:
        """The largest tid of a transaction pack removed (``z64`` if none)."""
        with self._lock:
            return self._packed_through

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the storage {self.__name__!r} is closed")

