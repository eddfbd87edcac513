"""A record cache in the storage: fast loads for every database over it.

``amphora.DB`` keeps a record cache and reads ahead itself; ``ZODB.DB`` (Zope, Plone,
Pyramid: any application that plugs a storage in through ZConfig) asks the storage for one
record at a time, through ``loadBefore``. :class:`CachedRecordsMixin` gives a storage what
makes those loads cheap, with no help from the database:

- a :class:`~amphora.cache.RecordCache` (``record_cache``) shared by every connection of
  the storage object, size-limited (``record_cache_bytes``), snapshot-aware: it answers a
  load only for a snapshot no newer than ``lastTransaction()`` (whose invalidations it
  has seen), and keeps the records of the storage's own commits (when a database is
  registered: a storage written without one, by a copy or a tool, keeps none);
- read-ahead along references: the first time a revision is loaded (from the file or
  the cache), the records it refers to that the cache lacks (up to ``read_ahead`` of
  them) are read in one batch and kept, for the loads that usually follow (a
  container's items after the container);
- ``prefetch(oids, tid)`` (ZODB's hint) reads the missing ones in one batch.

``load_many`` stays the storage's own, uncached: ``amphora.DB`` calls it for records its
connections did not find in the cache.

Stores need nothing more: :class:`~amphora.storage.base.StorageBase` keeps them in a dict
and the storage writes them in a few multi-row statements at the vote.

A storage gets it by listing the mixin first among its bases and naming its own reads
``_load_before`` (the signature of ``loadBefore``);
:class:`StorageBase` tells the cache of its commits and of the others' it delivers
(``_records_committed``, ``_records_invalidated``, ``_records_unknown``). A storage that
forks calls :meth:`_record_cache_forked` in the child; one that packs clears the cache.

``amphora.DB`` uses the storage's cache as its own when the storage has one (one cache,
not two), see :mod:`amphora.db`.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable

from amphora.cache import RecordCache
from amphora.errors import CorruptRecordError
from amphora.serialize import references
from amphora.utils import p64, u64

__all__ = ["CachedRecordsMixin"]

_PICKLE = b"\x80"  # a ZODB record starts with a pickle's PROTO opcode
_FOLLOWED_MAX = 100_000  # revisions whose references were read ahead, remembered


class CachedRecordsMixin:
    """The storage side of the record cache; see the module docstring."""

    #: the cache's size in estimated bytes (records plus a fixed overhead each); 0: none
    record_cache_bytes = 64 * 1024 * 1024
    #: at most this many records read ahead along the references of a record loaded
    #: from the storage (0: no read-ahead)
    read_ahead = 1024

    record_cache: RecordCache
    _ltid: bytes
    _wrapper: Any
    supports_history: bool

    def _init_record_cache(self, max_bytes: int | None = None) -> None:
        self.record_cache = RecordCache(self.record_cache_bytes if max_bytes is None
                                        else max_bytes)
        self._followed: dict[bytes, bytes] = {}  # oid -> the revision whose refs were read
        self._horizon: tuple[bytes, bytes] = (b"", b"")  # a _ltid, the tid one above

    def _snapshot_known(self, before: bytes) -> bool:
        """Whether the cache may answer for the snapshot ``before``: one no newer than the
        last transaction whose invalidations the cache has seen."""
        ltid = self._ltid
        seen, horizon = self._horizon
        if ltid is not seen:
            horizon = p64(u64(ltid) + 1)
            self._horizon = (ltid, horizon)
        return before <= horizon  # (8-byte tids compare as their integers)

    def loadBefore(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        cache = self.record_cache
        if not self._snapshot_known(tid):
            return self._load_before(oid, tid)
        record = cache.entry(oid, tid)
        # a history-free storage answers old snapshots with None, never a replaced record
        if record is None or (record[2] is not None and not self.supports_history):
            generation = cache.generation()
            record = self._load_before(oid, tid)
            if record is None:
                return None
            cache.put(oid, record[0], record[1], record[2], generation)
        if self.read_ahead and self._followed.get(oid) != record[1]:
            self._read_ahead_of(oid, record, tid)
        return record

    def prefetch(self, oids: Iterable[bytes], tid: bytes) -> None:
        """Read the records of ``oids`` not cached yet, in one batch, and keep them
        (ZODB's hint)."""
        if self._snapshot_known(tid):
            entry_of = self.record_cache.entry
            missing = [oid for oid in oids if entry_of(oid, tid) is None]
            if missing:
                self._load_and_keep(missing, tid)

    def _load_and_keep(self, oids: list[bytes], before: bytes
                       ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        cache = self.record_cache
        generation = cache.generation()
        found = self.load_many(oids, before)
        cache.put_many([(oid, *record) for oid, record in found.items()], generation)
        return found

    def _read_ahead_of(self, oid: bytes, record: tuple[bytes, bytes, bytes | None],
                       before: bytes) -> None:
        """Read and keep the records ``record`` (of ``oid``) refers to that the cache
        lacks, once per revision: a container's items, loaded next."""
        followed = self._followed
        if len(followed) >= _FOLLOWED_MAX:
            followed.clear()
        followed[oid] = record[1]
        data = record[0]
        # A reference is a BINPERSID opcode (Q): a record without that byte has none, and
        # one that is not a pickle (a sealed record) has none that can be read.
        if data[:1] != _PICKLE or b"Q" not in data:
            return
        try:
            refs = references(data)
        except CorruptRecordError:
            return  # reported when the record is unpickled, not here
        if not refs:
            return
        entry_of = self.record_cache.entry
        missing = [ref for ref in dict.fromkeys(refs) if entry_of(ref, before) is None]
        if missing:
            self._load_and_keep(missing[:self.read_ahead], before)

    # -- what StorageBase tells the cache --------------------------------------------
    def _records_committed(self, tid: bytes, stores: dict[bytes, bytes | None]) -> None:
        """This storage committed ``stores`` as ``tid`` (None: a deletion record).

        Their records are kept for the connections of a database (one is registered); a
        storage written without one (a copy, a tool) only closes what it had cached."""
        if self._wrapper is None:
            self.record_cache.invalidate(tid, stores)
        elif None in stores.values():
            written = {oid: data for oid, data in stores.items() if data is not None}
            self.record_cache.committed(tid, written, [o for o in stores if o not in written])
        else:
            self.record_cache.committed(tid, stores)

    def _records_invalidated(self, tid: bytes, oids: list[bytes],
                             records: dict[bytes, bytes] | None = None) -> None:
        """Another process or storage object committed ``oids`` as ``tid``; ``records``
        (when known, read with the news of the commit) become the current ones."""
        if records:
            self.record_cache.committed(tid, records, [o for o in oids if o not in records])
        else:
            self.record_cache.invalidate(tid, oids)

    def _records_unknown(self) -> None:
        """Changes happened that cannot be enumerated (a pack): forget every record."""
        self.record_cache.clear()
        self._followed.clear()

    def _record_cache_forked(self) -> None:
        """In a forked child: a new lock (a thread of the parent may have held it)."""
        self.record_cache._lock = threading.Lock()

    def pack(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().pack(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._records_unknown()

