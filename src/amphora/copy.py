"""Copy transactions from one storage to another.

Works between any two storages that keep the storage contract (amphora's, and ZODB's
own such as ``FileStorage``): the source is read with ``iterator()``, and every
transaction is committed to the destination with its original tid, user, description
and extension, record for record. This is how ZODB data moves into amphora and back::

    from ZODB.FileStorage import FileStorage
    copy_transactions(FileStorage("Data.fs", read_only=True),
                      amphora.open_storage("sqlite:///app.db"))

Rules:

- The destination must be empty, unless ``incremental`` is true: then it must be an
  earlier copy of the same source (its last transaction is one of the source's), and
  only the source's later transactions are copied. Running an incremental copy again
  resumes where an interrupted one stopped.
- A destination that has ``restore`` (every amphora storage, ZODB's FileStorage) gets
  records through it; FileStorage keeps back-pointers and deletion records. Otherwise each record is ``store``\\ d
  with the destination's current serial of the oid, so no conflict can arise. Records
  without data (ZODB writes them when an object's creation is undone) are skipped and
  counted in :attr:`CopyStats.skipped` unless the destination restores them
  (``restores_deletions``: amphora's storages do not restore deletion records); the undone
  object then stays in the copy, unreachable, until a pack with garbage collection.
- Each transaction is committed on its own: if the copy stops halfway, the destination
  holds a prefix of the source's history, never a partial transaction.
- Blobs: a record of a blob (``ZODB.blob.Blob``) comes with its file, read from the
  source's ``loadBlob`` and given to the destination's ``restoreBlob`` (or
  ``storeBlob``), byte for byte. A destination that keeps no blobs refuses the copy with
  :class:`~amphora.errors.Unsupported` naming it, before the transaction is committed.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable

from amphora.errors import StorageError, Unsupported
from amphora.storage.blobs import blob_capable, is_blob_record
from amphora.storage.base import Storage, TransactionMetaData
from amphora.utils import maxtid, oid_repr, p64, tid_repr, u64, z64

__all__ = ["CopyStats", "DestinationNotEmptyError", "copy_transactions", "restore_transactions"]


class DestinationNotEmptyError(StorageError):
    """The destination holds transactions, and the copy is not a continuation of them."""


@dataclasses.dataclass
class CopyStats:
    """How far a copy got. ``first_tid``/``last_tid`` are the first and last tids copied."""

    transactions: int = 0
    records: int = 0
    bytes: int = 0
    skipped: int = 0  #: records without data that the destination could not take
    first_tid: bytes | None = None
    last_tid: bytes | None = None


def copy_transactions(source: Storage, destination: Storage,
                      progress: Callable[[CopyStats], None] | None = None,
                      incremental: bool = False) -> CopyStats:
    """Copy every transaction of ``source`` into ``destination``, keeping tids.

    ``progress(stats)`` is called after each transaction is committed. Returns the
    final :class:`CopyStats`. Raises :class:`DestinationNotEmptyError` (a
    :class:`~amphora.errors.StorageError`) if the destination is not empty (or, with
    ``incremental``, is not a copy of the source), before anything is written;
    any error raised by either storage aborts the transaction being copied and
    propagates, leaving the transactions copied so far committed.
    """
    start = _start_tid(source, destination, incremental)
    return restore_transactions(source.iterator(start), destination, progress,
                                look_up_serials=start is not None, source=source)


def restore_transactions(transactions: Iterable[Any], destination: Storage,
                         progress: Callable[[CopyStats], None] | None = None,
                         look_up_serials: bool = True, source: Any = None) -> CopyStats:
    """Commit each of ``transactions`` (what a storage's ``iterator()`` yields) to
    ``destination`` with its tid, user, description and extension, record for record:
    the copier behind :func:`copy_transactions` and every amphora storage's
    ``copyTransactionsFrom``.

    ``look_up_serials`` false promises that the destination held none of the oids before
    (it was empty), which spares a lookup per oid where ``restore`` is missing. Returns
    the :class:`CopyStats`; an error aborts the transaction being copied and propagates.
    ``source`` is the storage the transactions come from: the files of its blob records
    are read from its ``loadBlob``.
    """
    stats = CopyStats()
    # restore() is optional in ZODB's storage API (FileStorage has it); ZODB's own copy
    # looks for it the same way.
    restore = getattr(destination, "restore", None)
    # The serial each oid has in the destination, as store() must be told it.
    serials: dict[bytes, bytes] = {}

    def current_serial(oid: bytes) -> bytes:
        serial = serials.get(oid)
        if serial is None:
            serial = _current_serial(destination, oid) if look_up_serials else z64
        return serial

    for txn in transactions:
        meta = TransactionMetaData(txn.user, txn.description, _extension_bytes(txn))
        destination.tpc_begin(meta, txn.tid, getattr(txn, "status", " "))
        try:
            for record in txn:
                data = record.data
                if data is None and (restore is None or not _restores_deletions(destination)):
                    stats.skipped += 1
                    continue
                if data is not None and is_blob_record(data):
                    _copy_blob(source, destination, record, txn.tid, meta,
                               restore is not None, current_serial)
                    serials[record.oid] = txn.tid
                elif restore is not None:
                    restore(record.oid, txn.tid, data, "", record.data_txn, meta)
                else:
                    destination.store(record.oid, current_serial(record.oid), data, "", meta)
                    serials[record.oid] = txn.tid
                stats.records += 1
                stats.bytes += len(data or b"")
            destination.tpc_vote(meta)
        except BaseException:
            destination.tpc_abort(meta)
            raise
        destination.tpc_finish(meta)
        stats.transactions += 1
        if stats.first_tid is None:
            stats.first_tid = txn.tid
        stats.last_tid = txn.tid
        if progress is not None:
            progress(stats)
    return stats


def _copy_blob(source: Any, destination: Any, record: Any, tid: bytes, meta: Any,
               restoring: bool, current_serial: Callable[[bytes], bytes]) -> None:
    """Copy a blob's record and file (a copy of the source's: the destination takes the
    file it is given)."""
    if not blob_capable(destination):
        why = getattr(destination, "no_blobs_reason", "it keeps no blob files")
        raise Unsupported(f"{_name(destination)} cannot take the blob ({why}) "
                          f"of oid {oid_repr(record.oid)} written by transaction {tid_repr(tid)}")
    original = _source_blob_file(source, record.oid, tid)
    fd, copy = tempfile.mkstemp(dir=destination.temporaryDirectory(), prefix="copy-")
    try:
        with open(original, "rb") as file, os.fdopen(fd, "wb") as target:
            shutil.copyfileobj(file, target, 1 << 20)
        if restoring and hasattr(destination, "restoreBlob"):
            destination.restoreBlob(record.oid, tid, record.data, copy, record.data_txn, meta)
        else:
            destination.storeBlob(record.oid, current_serial(record.oid), record.data, copy,
                                  "", meta)
    finally:
        if os.path.exists(copy):
            os.remove(copy)


def _source_blob_file(source: Any, oid: bytes, tid: bytes) -> str:
    """The file of the blob revision the source holds. A wrapper that does not declare
    ZODB's ``IBlobStorage`` but passes ``loadBlob`` on (``zodbconvert --incremental``
    wraps its source so) is asked all the same."""
    load_blob = getattr(source, "loadBlob", None)
    if load_blob is not None and blob_capable(source):
        return load_blob(oid, tid)
    problem = ""
    if load_blob is not None:
        try:
            return load_blob(oid, tid)
        except Exception as exc:  # a storage without blob files (a FileStorage without
            problem = f" ({exc})"  # a blob directory) fails in its own way
    raise Unsupported(f"the blob of oid {oid_repr(oid)} written by transaction "
                      f"{tid_repr(tid)} has no file to copy: the source keeps no blobs{problem}")


def _name(storage: Any) -> str:
    get_name = getattr(storage, "getName", None)
    return get_name() if callable(get_name) else type(storage).__name__


def _start_tid(source: Storage, destination: Storage, incremental: bool) -> bytes | None:
    """The tid to start copying at (None: from the beginning), after checking that the
    destination may receive the copy."""
    last = destination.lastTransaction()
    if last == z64:
        return None
    if not incremental:
        raise DestinationNotEmptyError(
            f"the destination is not empty (its last transaction is {tid_repr(last)})")
    found = next(iter(source.iterator(last, last)), None)
    if found is None or found.tid != last:
        raise DestinationNotEmptyError(
            f"the destination's last transaction {tid_repr(last)} is not in the source, "
            "so the destination is not a copy of it; an incremental copy would mix two "
            "databases")
    return p64(u64(last) + 1)


def _restores_deletions(storage: Storage) -> bool:
    """Whether ``storage.restore`` takes records without data (ZODB's FileStorage does;
    amphora's storages say ``restores_deletions = False``)."""
    return getattr(storage, "restores_deletions", True)


def _current_serial(storage: Storage, oid: bytes) -> bytes:
    try:
        found = storage.loadBefore(oid, maxtid)
    except KeyError:  # amphora's ObjectNotFoundError and ZODB's POSKeyError
        return z64
    return found[1] if found else z64


def _extension_bytes(txn: Any) -> bytes:
    extension_bytes = getattr(txn, "extension_bytes", None)
    if extension_bytes is not None:
        return extension_bytes
    return TransactionMetaData(extension=getattr(txn, "extension", None) or {}).extension_bytes
