"""The transaction log of the SQL storages, read alike on SQLite and PostgreSQL. Private.

:class:`TransactionLogMixin` gives :meth:`iterator` and :meth:`transaction_log` to a
storage that keeps a ``transactions`` table (tid, user, description, extension, oids),
from two methods of its own: ``_transaction_rows(low, high, limit)``, the rows with
``low <= tid <= high`` in tid order (at most ``limit``), and ``_last_tid_int()``; and
``_records_of(tid, oids)``, the records a transaction wrote that are still stored.
"""
from __future__ import annotations

from typing import Iterator

from amphora.storage.sql.keys import _pack, _split, _u

__all__ = ["TransactionLogMixin", "MAX_INT"]

MAX_INT = (1 << 63) - 1  # the largest tid a signed 64-bit column holds
_TXN_CHUNK = 100  # transactions read per query while iterating


class TransactionLogMixin:
    def iterator(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator:
        """Transactions (``TransactionRecord``) with ``start <= tid <= stop``, read in
        chunks; transactions committed after this call are not included."""
        low = 0 if start is None else _u(start)
        high = min(MAX_INT if stop is None else _u(stop), self._last_tid_int())
        return self._iterate(low, high)

    def _iterate(self, low: int, high: int) -> Iterator:
        from amphora.storage.base import TransactionRecord
        while low <= high:
            rows = self._transaction_rows(low, high, _TXN_CHUNK)
            for tid, user, description, extension, oids in rows:
                yield TransactionRecord(_pack(tid), " ", user, description, extension,
                                        self._records_of(tid, oids))
            if len(rows) < _TXN_CHUNK:
                return
            low = rows[-1][0] + 1

    def transaction_log(self, after: bytes, limit: int = 100
                        ) -> list[tuple[bytes, bytes, bytes, bytes, list[bytes]]]:
        """Up to ``limit`` committed transactions after tid ``after``, in tid order, as
        ``(tid, user, description, extension_bytes, oids)``: what a change feed reads
        (the transaction rows, without the records)."""
        rows = self._transaction_rows(_u(after) + 1, MAX_INT, limit)
        return [(_pack(tid), bytes(user or b""), bytes(description or b""),
                 bytes(extension or b""), _split(bytes(oids)))
                for tid, user, description, extension, oids in rows]
