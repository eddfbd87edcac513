"""The data manager that undoes transactions as part of an application transaction.

Private: :meth:`amphora.DB.undo` and :meth:`amphora.DB.undo_many` join one to the current
transaction. At commit it asks the storage to undo each transaction (``storage.undo``
inside the storage's two-phase commit, see :mod:`amphora.storage.undo`), and when the
commit is done it passes the undone objects' oids to every connection of the database as
invalidations, as a connection's own commit does.
"""
from __future__ import annotations

from typing import Any

from amphora.storage.base import TransactionMetaData

__all__ = ["UndoDataManager"]


class UndoDataManager:
    """Undoes ``transaction_ids`` (``undoLog`` ids) on ``db``'s storage at commit.

    The storage's commit lock is held from ``tpc_begin``: a connection of the same
    database that also commits in this transaction would wait for it, so an undo is
    committed in a transaction of its own.
    """

    def __init__(self, db: Any, transaction_ids: list[Any]):
        self._db = db
        self._storage = db.storage
        self._ids = list(transaction_ids)
        self._oids: set[bytes] = set()
        self._meta: TransactionMetaData | None = None
        self.transaction_manager = None

    def sortKey(self) -> str:
        return f"{self._storage.sortKey()}:undo:{id(self)}"

    def abort(self, txn: Any) -> None:
        """Nothing was done before the commit."""

    def tpc_begin(self, txn: Any) -> None:
        self._meta = TransactionMetaData(txn.user, txn.description, txn.extension)
        self._storage.tpc_begin(self._meta)

    def commit(self, txn: Any) -> None:
        for transaction_id in self._ids:
            result = self._storage.undo(transaction_id, self._meta)
            if result:
                self._oids.update(result[1])

    def tpc_vote(self, txn: Any) -> None:
        resolved = self._storage.tpc_vote(self._meta)
        if resolved:
            self._oids.update(resolved)

    def tpc_finish(self, txn: Any) -> None:
        def invalidate(tid: bytes) -> None:
            self._db._invalidate(tid, list(self._oids))
        self._storage.tpc_finish(self._meta, invalidate)

    def tpc_abort(self, txn: Any) -> None:
        if self._meta is not None:
            self._storage.tpc_abort(self._meta)
