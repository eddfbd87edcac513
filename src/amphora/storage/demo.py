"""Layers of changes over a storage that is never written.

``DemoStorage(base, changes)`` reads through to ``base`` and writes to ``changes`` (a
:class:`~amphora.storage.memory.MemoryStorage` unless another storage is given): a
database to try things on, throw away, or keep apart from the data it started from.
``push()`` puts a new layer on top (a DemoStorage over this one), ``pop()`` discards the
top layer and gives back what was under it. The base may be any storage, another
DemoStorage included, or a :class:`~amphora.storage.before.BeforeStorage` (a fixed
moment of a database that others keep writing to).

The layered view keeps the storage contract exactly:

- ``loadBefore``, ``load_many``, ``loadSerial`` and ``history`` answer from the layer
  when it has the revision, else from the base; a base revision that the layer replaced
  ends (``end_tid``) where the layer's first revision of the object begins.
- Tids only grow: the layer's first commit gets a tid above the base's last one, and
  ``lastTransaction()`` is the larger of the two layers' last tids.
- Write conflicts are detected against the object's current serial in the layered view
  (the layer's, else the base's).
- ``new_oid`` hands out oids from a random point far above where storages count from,
  skipping any oid either layer holds, so new objects never collide with the base's.
- ``iterator`` yields the base's transactions, then the layer's.

Blobs pass through when the layer keeps them (a memory storage does, and SQLite): a blob
written goes to the layer's blob directory with its record, and a blob revision the layer
does not have is read from the base's (``loadBlob``). A layer that keeps no blobs refuses
them with :class:`~amphora.errors.Unsupported` naming it.

Pack packs the layer only; the base is never written. Garbage collection works on the
whole view (reachability from the root through both layers), and an object of the base
that is no longer reachable is deleted *in the layer*: the layer stores a *deletion
record*, a record of zero bytes (no real record is empty: it is two pickles). An object
deleted so is gone at every tid, as if pack had removed it from a single storage, and
``iterator`` leaves its records out. Base revisions that the layer's pack time makes
obsolete are hidden while this DemoStorage object lives (the layer's storage keeps no
note of the pack time).
"""
from __future__ import annotations

import random
import threading
from typing import Any, Callable, Iterable, Iterator

from amphora.errors import ObjectNotFoundError, StorageError, Unsupported
from amphora.serialize import references as record_references
from amphora.storage.blobs import (BlobFileError, BlobLayerMixin, blob_capable,
                                   declare_blob_storage)
from amphora.storage.base import (DataRecord, Storage, StorageBase, TransactionMetaData,
                                  TransactionRecord, oids_to_keep, pack_tid, reachable,
                                  refuse_stale)
from amphora.storage.memory import MemoryStorage
from amphora.utils import maxtid, new_tid, oid_repr, p64, tid_repr, u64, z64

__all__ = ["DemoStorage", "DELETED"]

#: What a layer stores for an object that garbage collection deleted there.
DELETED = b""

# New oids start at a random point in this range: above any counter a storage starts
# from, and below 2**63 (SQL integer columns are signed).
_OID_LOW, _OID_HIGH = 1 << 48, 1 << 62


class DemoStorage(BlobLayerMixin, StorageBase):
    """Reads from ``changes`` then ``base``; writes to ``changes`` only.

    ``base`` defaults to an empty memory storage, ``changes`` to a new memory storage.
    The base must not be written by anyone while layered (wrap a live database in a
    :class:`~amphora.storage.before.BeforeStorage` first). ``read_only`` (or a read-only
    ``changes``) refuses writes. Closing closes both layers, unless
    ``close_base_on_close`` / ``close_changes_on_close`` say otherwise.
    """

    supports_undo = False
    supports_mirror = False

    def __init__(self, base: Storage | None = None, changes: Storage | None = None,
                 name: str | None = None, read_only: bool = False,
                 close_base_on_close: bool = True, close_changes_on_close: bool = True):
        self.base = MemoryStorage("base") if base is None else base
        self.changes = MemoryStorage("changes") if changes is None else changes
        super().__init__(name or f"demo({self.changes.getName()} over {self.base.getName()})",
                         read_only or self.changes.isReadOnly())
        self.supports_history = self.changes.supports_history
        self.supports_pack = self.changes.supports_pack
        self.is_remote = self.base.is_remote or self.changes.is_remote
        self._close_base = close_base_on_close
        self._close_changes = close_changes_on_close
        self._packed = z64  # base revisions replaced at or before this tid are packed away
        self._oid_lock = threading.Lock()
        self._oid_next = self._oid_end = 0
        self._random = random.Random()
        self.supports_blobs = blob_capable(self.changes)
        if self.supports_blobs:
            declare_blob_storage(self)
        else:
            self.no_blobs_reason = (f"its changes storage {self.changes.getName()} keeps no "
                                    "blob files")

    # -- layers ---------------------------------------------------------------------
    def push(self, changes: Storage | None = None) -> "DemoStorage":
        """A new layer over this one (its writes go to ``changes``, memory by default).
        Closing the new layer closes this one too; ``pop()`` it to keep this one."""
        return DemoStorage(self, changes)

    def pop(self) -> Storage:
        """Discard this layer: close its changes storage, and return the base."""
        self._closed = True
        if self._close_changes:
            self.changes.close()
        return self.base

    # -- reading --------------------------------------------------------------------
    def lastTransaction(self) -> bytes:
        return max(self.base.lastTransaction(), self.changes.lastTransaction())

    def _in_layer(self, oid: bytes) -> tuple[bytes, bool] | None:
        """``(first tid, deleted)`` of ``oid`` in the layer, or None if the layer never
        wrote it: where its base revisions end, and whether pack deleted it."""
        try:
            entries = self.changes.history(oid, None)
        except ObjectNotFoundError:
            return None
        return entries[-1]["tid"], entries[0]["size"] == 0

    def _base_end(self, end: bytes | None, layer_first: bytes | None) -> bytes | None | bool:
        """The end tid of a base revision as the view sees it (the layer's first revision
        ends it), or False if the layer's pack made the revision obsolete."""
        if end is None:
            end = layer_first
        if end is not None and end <= self._packed:
            return False
        return end

    def loadBefore(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        self._check_open()
        try:
            found = self.changes.loadBefore(oid, tid)
        except ObjectNotFoundError:  # the layer never wrote the object
            found = self.base.loadBefore(oid, tid)
            if found is not None:
                end = self._base_end(found[2], None)
                if end is False:
                    return None
            return found
        if found is not None:
            data, _start, end = found
            if end is None:
                if data == DELETED:
                    raise ObjectNotFoundError(oid)
                return found
            if self.changes.loadBefore(oid, maxtid)[0] == DELETED:
                raise ObjectNotFoundError(oid)  # deleted since: gone at every tid
            return None if data == DELETED else found
        first, deleted = self._in_layer(oid)
        if deleted:
            raise ObjectNotFoundError(oid)
        try:
            found = self.base.loadBefore(oid, tid)
        except ObjectNotFoundError:  # created in the layer, after tid
            return None
        if found is None:
            return None
        end = self._base_end(found[2], first)
        return None if end is False else (found[0], found[1], end)

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        self._check_open()
        oids = list(oids)
        changes = self.changes
        found = changes.load_many(oids, before)
        past = [oid for oid, (_, _, end) in found.items() if end is not None]
        deleted = {oid for oid, (data, _, _) in changes.load_many(past, maxtid).items()
                   if data == DELETED} if past else set()
        result = {oid: record for oid, record in found.items()
                  if record[0] != DELETED and oid not in deleted}
        rest = [oid for oid in oids if oid not in found]
        from_base = self.base.load_many(rest, before) if rest else {}
        if from_base:
            in_layer = changes.load_many(list(from_base), maxtid)
            for oid, (data, start, end) in from_base.items():
                first = None
                if oid in in_layer:
                    first, gone = self._in_layer(oid)
                    if gone:
                        continue
                end = self._base_end(end, first)
                if end is not False:
                    result[oid] = (data, start, end)
        return result

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        self._check_open()
        layer = self._in_layer(oid)
        if layer is not None:
            if layer[1]:
                raise ObjectNotFoundError(oid)
            try:
                data = self.changes.loadSerial(oid, serial)
            except ObjectNotFoundError:
                pass
            else:
                if data == DELETED:
                    raise ObjectNotFoundError(oid)
                return data
        found = self.base.loadBefore(oid, p64(u64(serial) + 1))
        if found is None or found[1] != serial:
            raise ObjectNotFoundError(oid)
        if self._base_end(found[2], layer and layer[0]) is False:
            raise ObjectNotFoundError(oid)
        return found[0]

    def history(self, oid: bytes, size: int | None = 1) -> list[dict[str, Any]]:
        self._check_open()
        try:
            entries = self.changes.history(oid, None)
        except ObjectNotFoundError:
            entries, first = [], None
        else:
            if entries[0]["size"] == 0:
                raise ObjectNotFoundError(oid)
            first = entries[-1]["tid"]
            entries = [entry for entry in entries if entry["size"] != 0]
        if size is None or len(entries) < size:
            try:
                older = self.base.history(oid, None)
            except ObjectNotFoundError:
                if not entries:
                    raise
                older = []
            end = first
            for entry in older:  # newest first: each ends where the one before it begins
                if self._base_end(end, None) is not False:
                    entries.append(entry)
                end = entry["tid"]
            if not entries:
                raise ObjectNotFoundError(oid)
        return entries if size is None else entries[:max(size, 1)]

    def loadBlob(self, oid: bytes, serial: bytes) -> str:
        """The file of blob revision ``serial`` of ``oid``: the layer's if the layer wrote
        that revision, else the base's (unless the layer deleted the object)."""
        try:
            return self.changes.loadBlob(oid, serial)
        except BlobFileError:
            raise
        except ObjectNotFoundError:
            pass  # not a revision the layer wrote (or not a blob's)
        layer = self._in_layer(oid)
        if layer is not None and layer[1]:
            raise ObjectNotFoundError(oid)
        if not blob_capable(self.base):
            raise ObjectNotFoundError(oid, f"no blob revision {tid_repr(serial)} of oid "
                                           f"{oid_repr(oid)}: {self.base.getName()} keeps "
                                           "no blobs")
        return self.base.loadBlob(oid, serial)

    @property
    def fshelper(self) -> Any:
        """The layer's blob directory (ZODB's blob tests find file names through it)."""
        return self.changes.fshelper

    def temporaryDirectory(self) -> str:
        """The layer's: where blob files are made before they are committed there."""
        if not self.supports_blobs:
            self._refuse_blobs_unless_kept()
        return self.changes.temporaryDirectory()

    def iterator(self, start: bytes | None = None, stop: bytes | None = None
                 ) -> Iterator[TransactionRecord]:
        """The base's transactions, then the layer's, leaving out records of objects
        deleted in the layer and base records the layer's pack made obsolete."""
        self._check_open()
        layer_states: dict[bytes, tuple[bytes, bool] | None] = {}

        def layer_state(oid: bytes) -> tuple[bytes, bool] | None:
            if oid not in layer_states:
                layer_states[oid] = self._in_layer(oid)
            return layer_states[oid]

        def base_record_kept(record: DataRecord) -> bool:
            state = layer_state(record.oid)
            if state is not None and state[1]:
                return False
            if self._packed == z64:
                return True
            found = self.base.loadBefore(record.oid, p64(u64(record.tid) + 1))
            return (found is not None and
                    self._base_end(found[2], state and state[0]) is not False)

        for txn in self.base.iterator(start, stop):
            every = list(txn)
            records = [record for record in every if base_record_kept(record)]
            if records or not every:  # a transaction emptied by the layer's pack goes
                yield _copy(txn, records)
        for txn in self.changes.iterator(start, stop):
            records = [record for record in txn if record.data != DELETED
                       and not (layer_state(record.oid) or (z64, False))[1]]
            yield _copy(txn, records)

    def __len__(self) -> int:
        """The objects of the base, plus those created in the layer, less those deleted
        in it (reads the layer's history)."""
        count = len(self.base)
        oids = {record.oid for txn in self.changes.iterator() for record in txn}
        in_base = self.base.load_many(oids, maxtid)
        current = self.changes.load_many(oids, maxtid)
        for oid in oids:
            deleted = oid in current and current[oid][0] == DELETED
            if oid in in_base:
                count -= deleted
            else:
                count += oid in current and not deleted
        return count

    def getSize(self) -> int:
        return self.base.getSize() + self.changes.getSize()

    # -- writing --------------------------------------------------------------------
    def new_oid(self) -> bytes:
        return self.new_oids(1)[0]

    def new_oids(self, count: int) -> list[bytes]:
        self._check_writable()
        oids: list[bytes] = []
        with self._oid_lock:
            while len(oids) < count:
                if self._oid_next >= self._oid_end:
                    self._oid_next = self._random.randrange(_OID_LOW, _OID_HIGH)
                    self._oid_end = _OID_HIGH
                first = self._oid_next
                self._oid_next = min(self._oid_end, first + count - len(oids))
                fresh = [p64(n) for n in range(first, self._oid_next)]
                taken = self.changes.load_many(fresh, maxtid).keys() | \
                    self.base.load_many(fresh, maxtid).keys()
                oids.extend(oid for oid in fresh if oid not in taken)
        return oids

    def _begin_layer(self, transaction: Any, tid: bytes | None) -> None:
        """Start committing ``transaction`` to the layer, with a tid above the base's."""
        base_last = self.base.lastTransaction()
        if tid is None and self.changes.lastTransaction() < base_last:
            tid = new_tid(base_last)
        self.changes.tpc_begin(transaction, tid)

    def _begin(self) -> None:
        self._begin_layer(self._transaction, self._tid)

    def _vote(self) -> None:
        changes, transaction = self.changes, self._transaction
        oids = list(self._stores.keys() | self._checks.keys())
        in_layer = changes.load_many(oids, maxtid)
        committed = {oid: start for oid, (data, start, _) in in_layer.items()
                     if data != DELETED}
        rest = [oid for oid in oids if oid not in in_layer]
        if rest:
            committed.update((oid, record[1])
                             for oid, record in self.base.load_many(rest, maxtid).items())
        self._check_conflicts(committed, self.loadSerial)
        # The layer checks its own serials: those it holds, z64 for objects new to it.
        serials = {oid: in_layer[oid][1] if oid in in_layer else z64 for oid in self._stores}
        blobs = self._blobs_stored
        records = self._stores if not blobs else {
            oid: data for oid, data in self._stores.items() if oid not in blobs}
        changes.store_many(records, {oid: serials[oid] for oid in records}, transaction)
        for oid, filename in blobs.items():
            changes.storeBlob(oid, serials[oid], self._stores[oid], filename, "", transaction)
        changes.tpc_vote(transaction)

    def _finish(self, func: Callable[[bytes], None] | None) -> bytes:
        return self.changes.tpc_finish(self._transaction, func)

    def _abort(self) -> None:
        self.changes.tpc_abort(self._transaction)

    # -- management -----------------------------------------------------------------
    def pack(self, pack_time: float | bytes, referencesf: Callable | None = None,
             gc: bool = True, reachable: Iterable[bytes] | None = None,
             through: bytes | None = None) -> None:
        """Pack the layer: drop its revisions replaced before ``pack_time`` and, with
        ``gc``, delete (in the layer) every object of either layer that no kept revision
        reaches from the root, or, given ``reachable``, that is outside it (see
        :meth:`amphora.storage.base.Storage.pack`). Objects created after ``pack_time``
        stay."""
        self._check_writable()
        if not self.supports_pack:
            raise Unsupported(f"{self.changes.getName()} cannot be packed")
        refs_of = referencesf or record_references
        kept = None if reachable is None or not gc else oids_to_keep(reachable, through)
        with self._commit_lock:
            if kept is not None:
                refuse_stale(self.__name__, self.lastTransaction(), through)
            cutoff = min(pack_tid(pack_time), self.lastTransaction())
            self.changes.pack(pack_time, refs_of, gc=False)
            self._packed = max(self._packed, cutoff)
            if gc:
                garbage = self._garbage(cutoff, refs_of, kept)
                if garbage:
                    self._delete(garbage)

    def _garbage(self, cutoff: bytes, refs_of: Callable, kept: set[bytes] | None = None
                 ) -> list[bytes]:
        """The objects that existed at ``cutoff`` and that no revision kept by a pack at
        ``cutoff`` reaches from the root (or, given ``kept``, that are not in it)."""
        first_tid: dict[bytes, bytes] = {}
        at_cutoff: dict[bytes, list[bytes]] = {}  # references of the revision current then
        later: dict[bytes, list[bytes]] = {}      # and of the revisions after it
        for txn in self.iterator():
            for record in txn:
                if record.data is None:
                    continue
                first_tid.setdefault(record.oid, txn.tid)
                if kept is not None:
                    continue
                found: list[bytes] = []
                refs_of(record.data, found)
                if txn.tid <= cutoff:
                    at_cutoff[record.oid] = found
                else:
                    later.setdefault(record.oid, []).extend(found)
        if kept is not None:
            live = kept
        elif z64 not in first_tid:
            live = set()
        else:
            live = reachable([z64], lambda oid: at_cutoff.get(oid, []) + later.get(oid, []))
        return [oid for oid, first in first_tid.items() if first <= cutoff and oid not in live]

    def _delete(self, oids: list[bytes]) -> None:
        """Commit deletion records for ``oids`` to the layer (holding the commit lock),
        telling the database which objects went."""
        changes = self.changes
        meta = TransactionMetaData(description="pack: objects no longer reachable")
        in_layer = changes.load_many(oids, maxtid)
        serials = {oid: in_layer[oid][1] if oid in in_layer else z64 for oid in oids}
        self._begin_layer(meta, None)
        try:
            changes.store_many(dict.fromkeys(oids, DELETED), serials, meta)
            changes.tpc_vote(meta)
        except BaseException:
            changes.tpc_abort(meta)
            raise
        wrapper = self._wrapper

        def invalidate(tid: bytes) -> None:
            if wrapper is not None:
                wrapper.invalidate(tid, oids)
        with self._lock:
            changes.tpc_finish(meta, invalidate)
        remove_blob_files = getattr(changes, "remove_blob_files", None)
        if remove_blob_files is not None:  # gone at every tid: no revision's file is read
            remove_blob_files(oids)

    def registerDB(self, wrapper: Any) -> None:
        self._wrapper = wrapper
        self.changes.registerDB(wrapper)

    def sync(self) -> None:
        """Catch up with commits made to the layer's storage elsewhere (the base does
        not change)."""
        self._check_open()
        self.changes.sync()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self.__name__} is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._close_changes:
            self.changes.close()
        if self._close_base:
            self.base.close()


def _copy(txn: TransactionRecord, records: list[DataRecord]) -> TransactionRecord:
    return TransactionRecord(txn.tid, getattr(txn, "status", " "), txn.user, txn.description,
                             txn.extension_bytes, records)
