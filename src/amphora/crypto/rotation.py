"""Key rotation: sealing a database's records with a new data key, online.

:func:`rotate` adds a data key to the keyring (it becomes the current key: every process
sealing with that keyring file uses it from its next commit, see
:meth:`~amphora.crypto.keyring.Keyring.refresh`), then re-stores the current revision of
every object still sealed with an older key: the same plaintext, sealed with the new key,
committed in small transactions beside the application's writers. A blob's current
revision is re-stored with its file, which is sealed again with the new key too. A writer that changed
an object meanwhile makes that batch a conflict; the batch is read again and retried (the
writer's revision is already sealed with the new key, and is then left alone). Nothing is
merged: a rotation never runs an application's conflict resolution.

**Resumable.** A rotation that stopped (interrupted, killed) leaves every batch it
committed sealed with the new key and the rest with the old ones. Run again, it sees
current revisions sealed with a key other than the current one and finishes the rotation
to the current key instead of adding another; what is done is skipped.

**History and retiring.** Old revisions and the metadata of old transactions stay sealed
with the key they were written with: a rotation writes new revisions, it does not rewrite
history. :func:`retire` removes an old key from the keyring only once no stored revision
and no transaction's metadata names it; until then it refuses and says to pack the
database first (``amphora pack --no-gc URI``, or ``pack()`` through the encrypted storage:
packing to now drops the superseded revisions and the transactions left empty). After ``retire`` the key is gone from the keyring file; copies
of the file made before (backups) still hold it.

Both read the wrapped storage's records as stored (sealed) and look only at the key id in
each header, so checking what is left to do decrypts nothing. The objects are listed from
the wrapped storage's transaction log (``iterator``), which every storage and the network
client have; its cost is a read of the whole log.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from amphora.errors import ConflictError, KeyringError, ReadOnlyError
from amphora.storage.base import TransactionMetaData
from amphora.storage.blobs import is_blob_record
from amphora.storage.encrypted import EncryptedStorage, sealed_key_id, sealed_metadata
from amphora.utils import maxtid, p64, u64, z64

__all__ = ["KeyUsage", "RotationStats", "key_usage", "retire", "rotate"]

#: passes over the objects before a rotation gives up on writers still sealing with an
#: older key (a process whose keyring is another file, say)
MAX_PASSES = 5
_BATCH_ATTEMPTS = 20  # conflicts with writers tolerated on one batch


@dataclass
class RotationStats:
    """What :func:`rotate` did. ``objects``: current revisions looked at in the first
    pass; ``resealed``: revisions re-stored sealed with ``key_id``; ``already``: found
    sealed with it (by an earlier, interrupted rotation or by writers); ``conflicts``:
    batches retried because a writer changed one of their objects; ``remaining``:
    revisions still sealed with an older key at the end (0 unless writers kept sealing
    with an old key for :data:`MAX_PASSES` passes)."""

    key_id: int
    added: bool
    objects: int = 0
    resealed: int = 0
    already: int = 0
    conflicts: int = 0
    passes: int = 0
    remaining: int = 0
    transactions: int = 0


class _Rotation(TransactionMetaData):
    """A rotation's commit: it merges nothing (a conflict is retried on fresh data)."""

    def resolve_conflict(self, *args: Any) -> None:
        return None


def rotate(storage: EncryptedStorage, batch: int = 100,
           progress: Callable[[int, int], None] | None = None,
           add_key: bool | None = None) -> RotationStats:
    """Seal the current revision of every object of ``storage`` with a new key.

    ``add_key``: None (the default) adds a key to ``storage.keyring`` unless a rotation is
    unfinished (a current revision is sealed with a key other than the current one: that
    rotation is finished instead); True always adds one; False only finishes. ``batch``:
    objects per transaction. ``progress(done, total)`` is called after each batch of the
    first pass. Raises :class:`~amphora.errors.ReadOnlyError` if the storage is
    read-only, :class:`~amphora.errors.ConflictError` if writers kept changing one batch
    (run it again: it resumes)."""
    if not isinstance(storage, EncryptedStorage):
        raise TypeError(f"rotate needs an EncryptedStorage, not {type(storage).__name__}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    if storage.isReadOnly():
        raise ReadOnlyError(f"{storage.getName()} is read-only: its records cannot be "
                            "sealed again")
    keyring, inner = storage.keyring, storage.storage
    keyring.refresh()
    listing = _Objects(inner)
    if add_key is None:
        add_key = not any(_stale(inner, chunk, keyring.current_key_id)
                          for chunk in _chunks(listing.update(), 500))
    stats = RotationStats(keyring.add_key() if add_key else keyring.current_key_id, add_key)
    while stats.passes < MAX_PASSES:
        stats.passes += 1
        first = stats.passes == 1
        oids = listing.update()
        if first:
            stats.objects = len(oids)
        resealed_before, done = stats.resealed, 0
        for chunk in _chunks(oids, batch):
            _rotate_batch(storage, chunk, stats, count_already=first)
            done += len(chunk)
            if first and progress is not None:
                progress(done, len(oids))
        if not first and stats.resealed == resealed_before:
            break  # a pass that found nothing left: done
    stats.remaining = sum(len(_stale(inner, chunk, stats.key_id))
                          for chunk in _chunks(listing.update(), 500))
    return stats


def _rotate_batch(storage: EncryptedStorage, oids: list[bytes], stats: RotationStats,
                  count_already: bool) -> None:
    """Re-store the revisions among ``oids`` not sealed with ``stats.key_id``, in one
    transaction; read again and retried when a writer changed one meanwhile."""
    pending: set[bytes] | None = None  # what is left to do, once looked at
    for _ in range(_BATCH_ATTEMPTS):
        current = _current(storage.storage, oids)
        stale = {oid: tid for oid, (key_id, tid) in current.items() if key_id != stats.key_id}
        if count_already:  # sealed with the key, and not by this rotation
            looked_at = current.keys() if pending is None else pending
            stats.already += sum(1 for oid in looked_at if oid in current and oid not in stale)
        pending = set(stale)
        if not stale:
            return
        plain = storage.load_many(stale, maxtid)
        # a revision newer than the one looked at (a writer's) is looked at again
        unchanged = {oid: plain[oid][0] for oid, tid in stale.items()
                     if oid in plain and plain[oid][1] == tid}
        if unchanged:
            txn = _Rotation("amphora keys rotate",
                            f"records sealed again with key {stats.key_id}")
            storage.tpc_begin(txn)
            try:
                for oid, data in unchanged.items():
                    if is_blob_record(data):  # its file is sealed again too
                        storage.storeBlob(oid, stale[oid], data,
                                          _blob_copy(storage, oid, stale[oid]), "", txn)
                    else:
                        storage.store(oid, stale[oid], data, "", txn)
                storage.tpc_vote(txn)
                storage.tpc_finish(txn)
            except ConflictError:
                storage.tpc_abort(txn)
                stats.conflicts += 1
                continue
            except BaseException:
                storage.tpc_abort(txn)
                raise
            stats.transactions += 1
            stats.resealed += len(unchanged)
            pending.difference_update(unchanged)
        if len(unchanged) == len(stale):
            return
    raise ConflictError(f"key rotation: objects kept changing during {_BATCH_ATTEMPTS} "
                        "attempts to seal them again; run the rotation again")


def _blob_copy(storage: EncryptedStorage, oid: bytes, tid: bytes) -> str:
    """A copy of the opened file of blob revision ``tid`` of ``oid``, for storeBlob."""
    fd, copy = tempfile.mkstemp(dir=storage.temporaryDirectory(), prefix="rotation-")
    with open(storage.loadBlob(oid, tid), "rb") as source, os.fdopen(fd, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    return copy


def _current(inner: Any, oids: list[bytes]) -> dict[bytes, tuple[int | None, bytes]]:
    """``{oid: (key id, tid)}`` of the current revisions of ``oids`` as stored (deleted
    objects, which have none, left out)."""
    return {oid: (sealed_key_id(data), tid)
            for oid, (data, tid, _) in inner.load_many(oids, maxtid).items() if data is not None}


def _stale(inner: Any, oids: list[bytes], key_id: int) -> dict[bytes, bytes]:
    """``{oid: tid}`` of the current revisions among ``oids`` not sealed with ``key_id``."""
    return {oid: tid for oid, (found, tid) in _current(inner, oids).items() if found != key_id}


class _Objects:
    """The oids of a storage, read from its transaction log and kept up to date."""

    def __init__(self, storage: Any):
        self._storage = storage
        self._oids: set[bytes] = set()
        self._through = z64

    def update(self) -> list[bytes]:
        """Every oid stored up to now, in order."""
        start = None if self._through == z64 else p64(u64(self._through) + 1)
        for txn in self._storage.iterator(start):
            self._oids.update(record.oid for record in txn)
            self._through = max(self._through, txn.tid)
        return sorted(self._oids)


def _chunks(items: list[bytes], size: int) -> Iterable[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class KeyUsage:
    """How many stored revisions (``records``) and transactions (``transactions``, their
    sealed metadata) name each key id, over the whole history of a storage."""

    records: dict[int, int] = field(default_factory=dict)
    transactions: dict[int, int] = field(default_factory=dict)


def key_usage(storage: EncryptedStorage) -> KeyUsage:
    """Count, per key id, the revisions and transactions ``storage`` holds sealed with it
    (read from the wrapped storage: nothing is decrypted)."""
    usage = KeyUsage()
    for txn in storage.storage.iterator():
        key_id = sealed_key_id(sealed_metadata(txn.extension_bytes) or b"")
        if key_id is not None:
            usage.transactions[key_id] = usage.transactions.get(key_id, 0) + 1
        for record in txn:
            if record.data is not None:
                key_id = sealed_key_id(record.data)
                if key_id is not None:
                    usage.records[key_id] = usage.records.get(key_id, 0) + 1
    return usage


def retire(storage: EncryptedStorage, key_id: int) -> None:
    """Remove the key ``key_id`` from ``storage``'s keyring, once nothing ``storage``
    holds is sealed with it. Refuses (:class:`~amphora.errors.KeyringError`, the keyring
    unchanged) the current key, a key the keyring does not hold, and a key still named by
    a stored revision or transaction: rotate, then pack (to now) first. Other databases
    sealed with the same keyring are not looked at."""
    keyring = storage.keyring
    keyring.refresh()
    keyring.key(key_id)
    if key_id == keyring.current_key_id:
        raise KeyringError(f"key {key_id} is the current key of {keyring.path}: rotate to "
                           "a new key first")
    usage = key_usage(storage)
    records, transactions = usage.records.get(key_id, 0), usage.transactions.get(key_id, 0)
    if records or transactions:
        raise KeyringError(
            f"key {key_id} still seals {records:,} revision(s) and the metadata of "
            f"{transactions:,} transaction(s) of {storage.storage.getName()}: rotate "
            "(amphora keys rotate), then pack to now (amphora pack --no-gc URI, or the "
            "database's pack()), so that no old revision needs it")
    keyring.retire_key(key_id)
