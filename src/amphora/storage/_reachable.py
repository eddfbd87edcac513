"""What a pack with garbage collection keeps, computed by a reader of the records rather
than by the storage: how an encrypted database packs through a server, which cannot read
a reference. Private; see :meth:`ReachableWalk.pack`.

The pack at ``cutoff`` keeps the revision of each object current at the cutoff and every
revision after it. The objects to keep are those reached from the root by following the
references of those revisions, with every object written after the cutoff taken as a
root too: like a file storage packed at a time, nothing written after it is collected,
nor what it refers to (it may still be reachable from a cache that is about to commit).
The walk reads the records current at the cutoff in batches (``load_many``) and the
transactions after it (``iterator``).

The set is computed through a tid (the last one when the walk started). The storage
deletes only if it has committed nothing after that tid, checked under its commit lock;
otherwise (:class:`~amphora.errors.StaleReachableError`) the transactions committed
since are read, their records followed like any revision after the cutoff, and the pack
is asked again, up to a few times. Meanwhile the server keeps its storage for this
client (commits made through it wait, see :meth:`amphora.server.served.Served.pack`),
so the second time succeeds unless another process wrote to the storage.
"""
from __future__ import annotations

from typing import Any

from amphora.errors import StaleReachableError
from amphora.serialize import references
from amphora.storage.base import pack_tid
from amphora.utils import p64, tid_repr, u64, z64

__all__ = ["ReachableWalk"]

_BATCH = 1000            # records read per load_many
_ATTEMPTS = 8            # packs asked before giving up on a database that keeps changing


class ReachableWalk:
    """The objects a pack of ``storage`` (whose records this process reads as plain
    pickles) keeps at ``cutoff`` (a tid), as a set of oids."""

    def __init__(self, storage: Any, cutoff: bytes):
        self.storage = storage
        self.cutoff = cutoff
        self._before = p64(u64(cutoff) + 1)
        #: oid -> the references of its revision current at the cutoff (none: no such)
        self._at_cutoff: dict[bytes, list[bytes]] = {}
        #: oid -> the references of its revisions after the cutoff (read so far)
        self._later: dict[bytes, list[bytes]] = {}
        self._read = cutoff  # transactions after the cutoff are read up to this tid

    @classmethod
    def pack(cls, storage: Any, inner: Any, pack_time: float | bytes) -> None:
        """Pack ``inner`` (the storage under ``storage``, which reads its records) at
        ``pack_time``, telling it the objects to keep, computed again with the
        transactions committed meanwhile as long as it says there were some."""
        sync = getattr(storage, "sync", None)
        if sync is not None:
            sync()
        through = storage.lastTransaction()
        walk = cls(storage, min(pack_tid(pack_time), through))
        for _ in range(_ATTEMPTS):
            try:
                inner.pack(walk.cutoff, None, True, reachable=walk.through(through),
                           through=through)
                return
            except StaleReachableError:
                if sync is not None:
                    sync()
                through = storage.lastTransaction()
        raise StaleReachableError(
            f"{storage.getName()}: transactions kept coming while the objects to keep were "
            f"computed ({_ATTEMPTS} times, the last through {tid_repr(through)}): pack again "
            "when fewer commits are made")

    def through(self, tid: bytes) -> set[bytes]:
        """The objects to keep, with the transactions up to ``tid`` read."""
        if tid > self._read:
            for txn in self.storage.iterator(p64(u64(self._read) + 1), tid):
                for record in txn:
                    if record.data:  # (None or empty: a deletion record)
                        references(record.data, self._later.setdefault(record.oid, []))
                    else:
                        self._later.setdefault(record.oid, [])
            self._read = tid
        roots = {z64, *self._later}
        seen = set(roots)
        level = list(roots)
        while level:
            self._load([oid for oid in level if oid not in self._at_cutoff])
            found = []
            for oid in level:
                for refs in (self._at_cutoff[oid], self._later.get(oid, ())):
                    for ref in refs:
                        if ref not in seen:
                            seen.add(ref)
                            found.append(ref)
            level = found
        return seen

    def _load(self, oids: list[bytes]) -> None:
        """Read the references of the records of ``oids`` current at the cutoff."""
        for start in range(0, len(oids), _BATCH):
            batch = oids[start:start + _BATCH]
            records = self.storage.load_many(batch, self._before)
            for oid in batch:
                record = records.get(oid)
                self._at_cutoff[oid] = references(record[0]) if record and record[0] else []
