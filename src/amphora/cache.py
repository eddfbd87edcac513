"""The record cache: records shared by all connections of one DB.

A connection's pickle cache holds live objects; this cache holds the *records* behind
them, so that a ghost loads from memory when any connection of the database read or wrote
that record before. Records are immutable facts about history, which makes sharing safe
across snapshots:

- an entry is ``oid -> (data, start, end)``: the revision written by ``start`` and
  superseded by ``end`` (None while it is current);
- a snapshot that reads everything before ``before`` may use an entry when
  ``start < before`` and (``end`` is None or ``before <= end``);
- every invalidation ``(tid, oids)`` the database receives, for its own commits and for
  commits made elsewhere, closes the current entries of those oids (``end = tid``). Since
  the database gets invalidations before ``lastTransaction()`` reports their tid, no
  snapshot can be newer than the invalidations the cache has seen;
- a record read from the storage while an invalidation arrived may already be stale, so
  it is only kept if it is closed (``end`` known) or no invalidation arrived meanwhile.

Eviction is first-in first-out by estimated size (record bytes plus a fixed overhead).
"""
from __future__ import annotations

import threading
from itertools import repeat
from operator import itemgetter
from typing import Iterable

__all__ = ["RecordCache"]

_OVERHEAD = 100  # bytes per entry beyond the record itself, roughly
_data = itemgetter(0)  # of an entry


class RecordCache:
    """Records by oid with the validity range of each; see the module docstring."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._entries: dict[bytes, tuple[bytes, bytes, bytes | None]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every invalidation

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def generation(self) -> int:
        """Take this before reading from the storage; give it to :meth:`put`."""
        return self._generation

    def get(self, oid: bytes, before: bytes) -> tuple[bytes, bytes] | None:
        """``(data, start)`` of the revision of ``oid`` visible before ``before``, if known."""
        entry = self._entries.get(oid)
        if entry is not None:
            data, start, end = entry
            if start < before and (end is None or before <= end):
                return data, start
        return None

    def holds(self, oid: bytes) -> bool:
        """Whether a revision of ``oid`` is kept (of any snapshot)."""
        return oid in self._entries

    def entry(self, oid: bytes, before: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        """``(data, start, end)`` of the revision of ``oid`` visible before ``before``, if
        known (``end`` None: current as far as the invalidations seen tell)."""
        entry = self._entries.get(oid)
        if entry is not None and entry[1] < before and (entry[2] is None or before <= entry[2]):
            return entry
        return None

    def put(self, oid: bytes, data: bytes, start: bytes, end: bytes | None,
            generation: int) -> None:
        """Remember a record read from the storage after :meth:`generation` returned
        ``generation``."""
        self.put_many(((oid, data, start, end),), generation)

    def put_many(self, records: Iterable[tuple[bytes, bytes, bytes, bytes | None]],
                 generation: int) -> None:
        """:meth:`put` of each ``(oid, data, start, end)`` of ``records``, under one
        acquisition of the lock (a read-ahead brings up to thousands)."""
        if self.max_bytes <= 0:
            return
        with self._lock:
            # a current record read while an invalidation arrived may be superseded
            superseded = generation != self._generation
            entries = self._entries
            size = self._bytes
            for oid, data, start, end in records:
                if end is None and superseded:
                    continue
                current = entries.get(oid)
                if current is not None:
                    if current[2] is None and end is not None:
                        continue  # keep the current revision rather than an older one
                    size -= len(current[0]) + _OVERHEAD
                entries[oid] = (data, start, end)
                size += len(data) + _OVERHEAD
            self._bytes = size
            if size > self.max_bytes:
                self._evict()

    def committed(self, tid: bytes, records: dict[bytes, bytes],
                  other_oids: Iterable[bytes] = ()) -> None:
        """A transaction ``tid`` committed here wrote ``records`` (and changed
        ``other_oids``, whose records it does not know): the :meth:`invalidate` of a
        local commit."""
        if other_oids:
            self.invalidate(tid, other_oids)
        with self._lock:
            self._generation += 1
            entries = self._entries
            if self.max_bytes <= 0:  # keeps none now: drop what it kept of them before
                if not entries:
                    return
                for oid in records:
                    entry = entries.pop(oid, None)
                    if entry is not None:
                        self._bytes -= len(entry[0]) + _OVERHEAD
                return
            # C loops only: this runs for every record of every commit
            replaced = list(filter(None, map(entries.get, records)))
            self._bytes += (sum(map(len, records.values())) - sum(map(len, map(_data, replaced)))
                            + (len(records) - len(replaced)) * _OVERHEAD)
            entries.update(zip(records, zip(records.values(), repeat(tid), repeat(None))))
            if self._bytes > self.max_bytes:
                self._evict()

    def invalidate(self, tid: bytes, oids: Iterable[bytes]) -> None:
        """Transaction ``tid`` wrote new revisions of ``oids``."""
        with self._lock:
            self._generation += 1
            entries = self._entries
            for oid in oids:
                entry = entries.get(oid)
                if entry is not None and entry[2] is None:
                    if entry[1] < tid:
                        entries[oid] = (entry[0], entry[1], tid)
                    else:  # cannot happen in order; be safe
                        del entries[oid]
                        self._bytes -= len(entry[0]) + _OVERHEAD

    def items(self) -> list[tuple[bytes, tuple[bytes, bytes, bytes | None]]]:
        """``(oid, (data, start, end))`` of every record kept, oldest first (a copy)."""
        with self._lock:
            return list(self._entries.items())

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._bytes = 0

    def _evict(self) -> None:
        # Oldest first, down to three quarters, in one pass: taking entries one at a time
        # from the front of a dict is quadratic (iteration skips the holes left behind).
        excess = self._bytes - self.max_bytes * 3 // 4
        victims = []
        for oid, entry in self._entries.items():
            if excess <= 0:
                break
            victims.append(oid)
            excess -= len(entry[0]) + _OVERHEAD
        entries = self._entries
        for oid in victims:
            self._bytes -= len(entries.pop(oid)[0]) + _OVERHEAD
