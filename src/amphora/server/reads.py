"""The server's answers to reads: loads (one, many, and reading ahead along references),
history, iteration, the transaction log, the last tid, oids. Most run in the server's
thread pool; the short ones, on a storage in this process, in the event loop (see
:mod:`amphora.server.session`, which dispatches them, and :mod:`amphora.server.server`).

The references of records read ahead are remembered per served storage
(:class:`References`, kept by :class:`amphora.server.served.Served`).

Private: mixed into the server's session class.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from amphora import errors
from amphora.serialize import references
from amphora.utils import p64, u64

__all__ = ["ReadRequests", "References", "check_oid"]

_ITERATE_LIMIT = 1000              # transactions per ITERATE reply
_AHEAD_LIMIT = 2000                # records per LOAD_AHEAD reply
_REFERENCES_KEPT = 100_000         # records whose references are remembered, per storage


def check_oid(value: Any, what: str = "an oid") -> bytes:
    """``value``, an oid or tid from a request; StorageError naming it if it is not 8
    bytes."""
    if type(value) is not bytes or len(value) != 8:
        raise errors.StorageError(f"{what} is 8 bytes, not {value!r:.40}")
    return value


def _references(data: bytes) -> list[bytes]:
    """The oids record ``data`` refers to; none for data that is not a pickle (a storage
    may hold any bytes: reading ahead is only a guess)."""
    try:
        return references(data)
    except errors.CorruptRecordError:
        return []


class References:
    """The references of records read ahead, remembered by ``(oid, tid)`` (a record
    never changes once written): scanning a pickle costs more than reading it, and cold
    clients walk the same records. The oldest are forgotten beyond ``limit``."""

    def __init__(self, limit: int = _REFERENCES_KEPT):
        self.limit = limit
        self._kept: collections.OrderedDict[tuple[bytes, bytes], list[bytes]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def of(self, oid: bytes, tid: bytes, data: bytes) -> list[bytes]:
        key = (oid, tid)
        found = self._kept.get(key)
        if found is None:
            found = _references(data)
            with self._lock:
                self._kept[key] = found
                if len(self._kept) > self.limit:
                    self._kept.popitem(last=False)
        return found


class ReadRequests:
    """The handlers of the read requests (``do_<method>``); needs ``self.served`` and
    ``self.server``."""

    served: Any
    server: Any

    def do_load_before(self, request_id: int, oid: bytes, before: bytes) -> Any:
        found = self.served.storage.loadBefore(check_oid(oid), check_oid(before, "a tid"))
        return None if found is None else list(found)

    def do_load_many(self, request_id: int, oids: list, before: bytes) -> Any:
        found = self.served.storage.load_many([check_oid(oid) for oid in oids],
                                              check_oid(before, "a tid"))
        return [[oid, data, start, end] for oid, (data, start, end) in found.items()]

    def do_load_ahead(self, request_id: int, oids: list, before: bytes, limit: int) -> list:
        """``load_many(oids, before)``, then the records those refer to, breadth first, up
        to ``limit`` records in all: each exactly what ``loadBefore(oid, before)`` gives.
        The last element of each says whether records it refers to may be left out."""
        before = check_oid(before, "a tid")
        limit = max(1, min(int(limit), _AHEAD_LIMIT))
        storage = self.served.storage
        references_of = self.served.scanned.of
        level = storage.load_many([check_oid(oid) for oid in oids[:limit]], before)
        result: dict[bytes, list] = {}
        while level:
            for oid, (data, start, end) in level.items():
                result[oid] = [oid, data, start, end, True]
            wanted: list[bytes] = []
            expanded = []
            for oid, (data, start, _) in level.items():
                refs = [ref for ref in references_of(oid, start, data) if ref not in result]
                if len(result) + len(wanted) + len(refs) > limit:
                    break
                wanted.extend(refs)
                expanded.append(oid)
            for oid in expanded:
                result[oid][4] = False
            level = storage.load_many(list(dict.fromkeys(wanted)), before) if wanted else {}
        return list(result.values())

    def do_load_serial(self, request_id: int, oid: bytes, serial: bytes) -> bytes:
        return self.served.storage.loadSerial(check_oid(oid), check_oid(serial, "a tid"))

    def do_history(self, request_id: int, oid: bytes, size: int | None) -> Any:
        entries = self.served.storage.history(check_oid(oid), size)
        return [{key: value for key, value in entry.items()
                 if isinstance(value, (bytes, str, int, float, bool, type(None)))}
                for entry in entries]

    def do_iterate(self, request_id: int, start: bytes | None, stop: bytes | None,
                   limit: int) -> Any:
        found = []
        limit = max(1, min(int(limit), _ITERATE_LIMIT))
        for txn in self.served.storage.iterator(start, stop):
            found.append([txn.tid, txn.status, txn.user, txn.description, txn.extension_bytes,
                          [[r.oid, r.tid, r.data, r.data_txn] for r in txn]])
            if len(found) >= limit:
                break
        return found

    def do_changes_since(self, request_id: int, tid: bytes) -> Any:
        return self.server.changes_since(self.served, tid)[1]

    def do_transaction_log(self, request_id: int, after: bytes, limit: int) -> list:
        """Up to ``limit`` transactions after ``after`` without their records: the
        storage's ``transaction_log`` where it has one, else its iterator."""
        after = check_oid(after, "a tid")
        limit = max(1, min(int(limit), _ITERATE_LIMIT))
        storage = self.served.storage
        log_of = getattr(storage, "transaction_log", None)
        if log_of is not None:
            rows = log_of(after, limit)
        else:
            rows = []
            for txn in storage.iterator(p64(u64(after) + 1), None):
                rows.append((txn.tid, txn.user, txn.description, txn.extension_bytes,
                             [record.oid for record in txn]))
                if len(rows) >= limit:
                    break
        return [[tid, bytes(user), bytes(description), bytes(extension), list(oids)]
                for tid, user, description, extension, oids in rows]

    def do_packed_through(self, request_id: int) -> bytes:
        """The newest tid pack removed; for a storage that cannot say, the pack time of
        the last pack made through this server (z64 if none)."""
        packed = getattr(self.served.storage, "packed_through", None)
        return packed() if callable(packed) else self.served.packed_to

    def do_last_transaction(self, request_id: int) -> bytes:
        return self.served.storage.lastTransaction()

    def do_sync(self, request_id: int) -> bytes:
        storage = self.served.storage
        storage.sync()  # commits made elsewhere are pushed before this reply
        return storage.lastTransaction()

    def do_size(self, request_id: int) -> list:
        storage = self.served.storage
        return [len(storage), storage.getSize()]

    def do_new_oids(self, request_id: int, count: int) -> list:
        return self.served.storage.new_oids(max(1, min(int(count), 65536)))
