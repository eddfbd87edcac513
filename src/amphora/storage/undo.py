"""Undo, shared by the history-preserving storages (ZODB's ``IStorageUndoable``).

Undoing transaction T is a new transaction that gives every object T wrote back the
revision it had just before T. An object T created gets a *deletion record* (ZODB: a
record whose data is None): it does not exist from the undo's tid on, and undoing the
undo brings it back. When a later transaction changed an object after T, the undo is the
same merge a conflict is (``_p_resolveConflict``: the later state is the committed one,
T's state the one read, the state before T the one written); if it cannot be merged, the
undo raises :class:`UndoError` and the transaction cannot commit.

A storage gets undo from :class:`UndoMixin` by providing, besides ``loadBefore`` and
``loadSerial`` (which treat a deletion record as "no object at that time"):

- ``_undo_log_rows(offset, limit)``: transactions newest first, as
  ``(tid, user, description, extension_bytes)``, skipping ``offset``;
- ``_undo_oids(tid)``: the oids transaction ``tid`` wrote, or None if it is not stored
  (never committed, or removed by pack);
- ``_undo_current(oid)``: ``(serial, data)`` of the current record, ``data`` None for a
  deletion record; None if the oid was never stored.

Undo records go into the commit's buffered stores (``_stores``, with the serial each
replaces in ``_serials``) with ``None`` as the data of a deletion, so the vote checks
them against concurrent commits like any store.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Callable, Iterator

from amphora.errors import ObjectNotFoundError, ReadOnlyError, UndoError, Unsupported
from amphora.storage.base import decode_extension
from amphora.utils import tid_repr, tid_time

__all__ = ["UndoMixin", "undo_id", "undo_tid", "UNDO_PENDING"]

_LOG_CHUNK = 100  # transactions read per query while listing
#: stands for the record this commit writes already, as the serial an undo replaces
UNDO_PENDING = _PENDING = b"pending!"


def undo_id(tid: bytes) -> bytes:
    """The id ``undoLog`` hands out for ``tid``: its base64 form, as ZODB's FileStorage
    hands out (Zope's Undo tab passes it back verbatim)."""
    return base64.encodebytes(tid).rstrip()


def undo_tid(transaction_id: bytes | str) -> bytes:
    """The tid named by an ``undoLog`` id (base64), or by a tid itself (8 bytes).

    Raises :class:`UndoError` for anything else.
    """
    if isinstance(transaction_id, str):
        transaction_id = transaction_id.encode("ascii", "replace")
    if not isinstance(transaction_id, (bytes, bytearray)):
        raise UndoError(f"a transaction id is bytes or str, not "
                        f"{type(transaction_id).__name__}")
    if len(transaction_id) == 8:
        return bytes(transaction_id)
    try:
        tid = base64.decodebytes(bytes(transaction_id) + b"\n")
    except binascii.Error:
        tid = b""
    if len(tid) != 8:
        raise UndoError(f"{transaction_id!r} is not a transaction id (the base64 'id' of "
                        "an undoLog entry, or an 8-byte tid)")
    return tid


class UndoMixin:
    """``undoLog``, ``undoInfo`` and ``undo`` for a storage built on
    :class:`~amphora.storage.base.StorageBase` (see the module docstring)."""

    supports_undo = True  # a storage whose mode keeps no history sets it False

    def undoLog(self, first: int = 0, last: int = -20,
                filter: Callable[[dict], bool] | None = None) -> list[dict[str, Any]]:
        """Undoable transactions, newest first, as dicts with ``id`` (pass it to
        :meth:`undo`), ``time``, ``user_name``, ``description`` and the transaction's
        extension keys; ``filter(entry)`` chooses which count. The entries returned are
        those from index ``first`` to ``last`` (exclusive) of the chosen ones, or
        ``-last`` of them from ``first`` when ``last`` is negative (ZODB's convention)."""
        if last < 0:
            last = first - last
        if not self.supportsUndo() or last <= first:
            return []
        found: list[dict[str, Any]] = []
        index = 0
        for entry in self._undo_entries():
            if filter is not None and not filter(entry):
                continue
            if index >= first:
                found.append(entry)
            index += 1
            if index >= last:
                break
        return found

    def undoInfo(self, first: int = 0, last: int = -20,
                 specification: dict | None = None) -> list[dict[str, Any]]:
        """:meth:`undoLog` with the entries whose keys have the values in
        ``specification`` (all entries if None)."""
        if not specification:
            return self.undoLog(first, last)
        def matches(entry: dict) -> bool:
            return all(entry.get(key) == value for key, value in specification.items())
        return self.undoLog(first, last, matches)

    def _undo_entries(self) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            rows = self._undo_log_rows(offset, _LOG_CHUNK)
            for tid, user, description, extension_bytes in rows:
                entry = dict(decode_extension(extension_bytes))
                entry.update(id=undo_id(tid), time=tid_time(tid), user_name=bytes(user or b""),
                             description=bytes(description or b""))
                yield entry
            if len(rows) < _LOG_CHUNK:
                return
            offset += len(rows)

    def undo(self, transaction_id: bytes | str, transaction: Any
             ) -> tuple[None, list[bytes]]:
        """Within the two-phase commit of ``transaction``: write what undoes transaction
        ``transaction_id`` (an ``undoLog`` id or a tid). Returns ``(None, oids)``, the
        oids the undo writes (the tid is known at ``tpc_finish``).

        Raises :class:`UndoError` when the transaction is not stored (never committed or
        packed away) or a later change to one of its objects cannot be merged.
        """
        if self._read_only:
            raise ReadOnlyError(f"{self.__name__} is read-only")
        if not self.supports_undo:
            raise Unsupported(f"{self.__name__} keeps no history: it cannot undo")
        self._check_current(transaction)
        tid = undo_tid(transaction_id)
        oids = self._undo_oids(tid)
        if oids is None:
            raise UndoError(f"transaction {tid_repr(tid)} is not in the database (never "
                            "committed, or removed by pack)")
        records = {oid: self._undo_record(oid, tid) for oid in oids}
        for oid, (serial, data) in records.items():
            if serial != _PENDING:
                self._serials[oid] = serial
            self._stores[oid] = data
        return None, list(records)

    def _undo_record(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes | None]:
        """``(serial replaced, data)`` of the record undoing ``tid``'s change to ``oid``.

        An oid this commit already writes (an earlier undo in the same transaction) is
        undone on top of what it writes."""
        if oid in self._stores:
            serial, current_data = _PENDING, self._stores[oid]
        else:
            current = self._undo_current(oid)
            if current is None:
                raise UndoError("the object of the transaction is gone", oid)
            serial, current_data = current
        try:
            before = self.loadBefore(oid, tid)
        except ObjectNotFoundError:  # a deletion record before tid
            before = None
        data = None if before is None else before[0]
        if serial == tid:
            return serial, data
        try:
            undone = self.loadSerial(oid, tid)
        except ObjectNotFoundError:
            undone = None
        if current_data == undone:
            # Written again since, with the same data (an undo of a later transaction
            # brought it back, as FileStorage's back pointers would show): unchanged.
            return serial, data
        # Changed by a later transaction: merge as a conflict would be
        resolve = self._conflict_resolver()
        if (resolve is not None and data is not None and undone is not None
                and current_data is not None):
            def load_serial(oid: bytes, serial: bytes) -> bytes:
                return current_data if serial == _PENDING else self.loadSerial(oid, serial)
            resolved = resolve(oid, serial, tid, data, load_serial)
            if resolved is not None:
                return serial, resolved
        raise UndoError("some data were modified by a later transaction", oid)
