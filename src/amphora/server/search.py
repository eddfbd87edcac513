"""The server's side of searching: the mirror requests of :mod:`amphora.server.protocol`
(:data:`~amphora.server.protocol.SEARCH_METHODS`), answered from the served storage's own
mirror API (see :mod:`amphora.search`).

Clients send SQL, so what it may do is bounded here and by the storage:

- every query runs through the storage's ``query_mirror``, which runs it read-only (at
  the client's snapshot ``before``), and a PostgreSQL storage opened with
  ``search_role`` runs it under that role, which can read the storage's own schema and
  nothing else (see ``docs/server.md``);
- every query has a time limit, the server's ``search_timeout`` (a client may ask for less,
  never more), enforced by the storage, which cancels the query and raises
  :class:`~amphora.errors.InvalidQueryError`;
- requests run in a thread pool of their own (``Server.search_pool``), so a slow query or
  a client waiting for the mirror holds neither the event loop nor the threads that
  answer loads;
- a read-only token (or a read-only server) may search, not make or drop the mirror and
  its indexes (the dispatcher refuses :data:`~amphora.server.protocol.WRITE_METHODS`);
- a result must fit in one frame: a larger one is refused, naming its size (add LIMIT).

Long operations: ``create_mirror``, ``rebuild_mirror`` and ``follow_mirror`` run to their
end in one request, telling the client how far they came
(:data:`~amphora.server.protocol.PROGRESS`); ``follow_mirror`` catches up once (a client
that keeps following asks again), and ``wait_for_mirror`` waits at most
:data:`WAIT_LIMIT` seconds per request (the client asks again).

Private: mixed into the server's session class.
"""
from __future__ import annotations

from typing import Any, Callable

import msgpack

from amphora import errors
from amphora.search import _mirror_of
from amphora.server import protocol as p

__all__ = ["SearchRequests", "WAIT_LIMIT", "SEARCH_TIMEOUT"]

#: the server's default ``search_timeout``: seconds a client's query may run
SEARCH_TIMEOUT = 30.0
#: seconds a WAIT_FOR_MIRROR request waits at most (the client asks again)
WAIT_LIMIT = 10.0


def _check(value: Any, kind: type | tuple, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise errors.InvalidQueryError(f"{what}, not {value!r:.60}")
    return value


def _timeout(asked: Any, limit: float | None) -> float | None:
    """The time limit of a query: the client's, within the server's."""
    if asked is not None:
        asked = float(_check(asked, (int, float),
                             "timeout must be a positive number of seconds"))
        if not asked > 0:
            raise errors.InvalidQueryError(
                f"timeout must be a positive number of seconds, not {asked!r}")
    if limit is None:
        return asked
    return limit if asked is None else min(asked, limit)


class SearchRequests:
    """The handlers of the mirror requests (``do_<method>``, in a thread of the server's
    search pool); needs ``self.served`` and ``self.server``."""

    served: Any
    server: Any
    loop: Any
    send: Callable[[list], None]

    def _mirror(self) -> Any:
        """The served storage, or MirrorError as the storage itself would say."""
        return _mirror_of(self.served.storage)

    def _progress(self, request_id: int) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` that tells the client (before the reply)."""
        def progress(done: int, total: int) -> None:
            self.loop.call_soon_threadsafe(self.send, [p.PROGRESS, request_id, done, total])
        return progress

    def do_query_mirror(self, request_id: int, sql: str, params: list,
                        before: bytes | None = None, timeout: float | None = None) -> list:
        _check(sql, str, "a query is a string")
        _check(params, list, "a query's parameters are a list")
        if before is not None and (type(before) is not bytes or len(before) != 8):
            raise errors.InvalidQueryError(
                f"before must be an 8-byte tid or None, not {before!r:.40}")
        rows = self._mirror().query_mirror(
            sql, tuple(params), before=before,
            timeout=_timeout(timeout, self.server.search_timeout))
        size = len(msgpack.packb(rows, use_bin_type=True, default=p.extended))
        if size > self.server.max_frame - 1024:
            raise errors.InvalidQueryError(
                f"the {len(rows)} rows of the query are {size} bytes, over the server's "
                f"frame limit of {self.server.max_frame} bytes: select fewer (LIMIT) "
                f"(in {sql!r:.200})")
        return rows

    def do_text_query(self, request_id: int, index: str, query: str) -> list:
        _check(index, str, "a text index's name is a string")
        _check(query, str, "a text query is a string")
        sql, params = self._mirror().text_query(index, query)
        return [sql, list(params)]

    def do_mirror_mode(self, request_id: int) -> str | None:
        storage = self.served.storage
        return storage.mirror_mode() if getattr(storage, "supports_mirror", False) else None

    def do_mirror_watermark(self, request_id: int) -> int:
        return self._mirror().mirror_watermark()

    def do_wait_for_mirror(self, request_id: int, tid: int | None, timeout: float) -> bool:
        if tid is not None:
            _check(tid, int, "a tid is an integer")
        wait = _timeout(timeout, WAIT_LIMIT)
        return self._mirror().wait_for_mirror(tid, wait)

    def do_create_mirror(self, request_id: int, mode: str) -> int:
        return self._mirror().create_mirror(self._progress(request_id),
                                            _check(mode, str, "a mode is a string"))

    def do_rebuild_mirror(self, request_id: int) -> int:
        return self._mirror().rebuild_mirror(self._progress(request_id))

    def do_follow_mirror(self, request_id: int) -> int:
        return self._mirror().follow_mirror(0.0, 0.0, self._progress(request_id))

    def do_drop_mirror(self, request_id: int) -> None:
        self._mirror().drop_mirror()

    def do_create_mirror_index(self, request_id: int, name: str, expression: str,
                               class_name: str | None, unique: bool) -> None:
        _check(expression, str, "an index's expression is a string")
        self._mirror().create_mirror_index(name, expression, class_name,
                                           _check(unique, bool, "unique is true or false"))

    def do_create_text_index(self, request_id: int, name: str, fields: list,
                             class_name: str | None) -> None:
        self._mirror().create_text_index(name, fields, class_name)
