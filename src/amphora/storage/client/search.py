"""The client storage's JSON mirror: each call one request, answered by the served
storage's mirror (see :mod:`amphora.server.search` for what the server allows).

``supports_mirror`` is what the server's welcome says of the served storage, so
:class:`amphora.DB` searches, makes the mirror and its indexes through an ``amphora://``
database as on the SQLite or PostgreSQL storage served, and says "cannot keep a JSON
mirror" for one that cannot (memory). Errors are the served storage's own classes
(:class:`~amphora.errors.InvalidQueryError`, :class:`~amphora.errors.MirrorError`, ...);
writes by a client with a read-only token raise :class:`~amphora.errors.ReadOnlyError`.

What differs from the served storage:

- a query runs at most the server's ``search_timeout`` (``timeout`` may ask for less);
- ``progress(done, total)`` of ``create_mirror``, ``rebuild_mirror`` and
  ``follow_mirror`` is called in the client's I/O thread, as the server tells how far it
  came (keep it short: other replies wait meanwhile);
- ``follow_mirror`` catches up in one request per pass; one that keeps following (``until``
  not 0) asks again every ``interval`` seconds: the follower's work is done on the server,
  but its loop runs here (``amphora follow URI`` next to the server saves the round trips).

Private: a base of :class:`amphora.storage.client.ClientStorage`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from amphora.server import protocol as p
from amphora.utils import u64

__all__ = ["RemoteMirror"]

log = logging.getLogger("amphora.client")


class RemoteMirror:
    """The mirror API of a client storage (needs ``_call`` and ``_check_writable``)."""

    #: the served storage can keep a JSON mirror (set from the server's welcome)
    supports_mirror = False
    _call: Callable[..., Any]
    _check_writable: Callable[[], None]
    _requests: dict[int, tuple]

    # -- queries ------------------------------------------------------------------------
    def query_mirror(self, sql: str, params: Sequence[Any] = (), before: bytes | None = None,
                     timeout: float | None = None) -> list[tuple]:
        """The rows of a read-only query, run on the server at the snapshot ``before``
        (None: the latest), for at most ``timeout`` seconds and the server's
        ``search_timeout``."""
        rows = self._call(p.QUERY_MIRROR, sql, list(params), before, timeout)
        return [tuple(row) for row in rows]

    def text_query(self, name: str, query: str) -> tuple[str, list[Any]]:
        sql, params = self._call(p.TEXT_QUERY, name, query)
        return sql, params

    # -- the mirror's state ---------------------------------------------------------------
    def mirror_mode(self) -> str | None:
        return self._call(p.MIRROR_MODE)

    def has_mirror(self) -> bool:
        return self.mirror_mode() is not None

    def mirror_watermark(self) -> int:
        return self._call(p.MIRROR_WATERMARK)

    def wait_for_mirror(self, tid: int | None = None, timeout: float | None = None,
                        interval: float = 0.05) -> bool:
        """Wait until the documents cover transaction ``tid`` (an integer; default: the
        last one committed now, on the server). False if ``timeout`` seconds passed
        first. Asks again every few seconds (the server bounds each wait)."""
        if tid is None:
            tid = u64(self._call(p.LAST_TRANSACTION))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            if self._call(p.WAIT_FOR_MIRROR, tid, left):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def follow_mirror(self, until: float | None = 0.0, interval: float = 0.2,
                      progress: Callable[[int, int], None] | None = None) -> int:
        """Catch the documents of a ``follow`` mirror up (one request); with ``until`` (a
        ``time.monotonic()`` deadline, None for ever) keep following, a request every
        ``interval`` seconds. Returns the number of transactions covered."""
        self._check_writable()
        done = 0
        while True:
            done += self._call(p.FOLLOW_MIRROR, questions=progress)
            if until is not None and time.monotonic() >= until:
                return done
            time.sleep(interval)

    # -- changes (a writable token) -------------------------------------------------------
    def create_mirror(self, progress: Callable[[int, int], None] | None = None,
                      mode: str = "sync") -> int:
        """Make the mirror on the server (``progress``: see the module docstring)."""
        self._check_writable()
        return self._call(p.CREATE_MIRROR, mode, questions=progress)

    def rebuild_mirror(self, progress: Callable[[int, int], None] | None = None) -> int:
        self._check_writable()
        return self._call(p.REBUILD_MIRROR, questions=progress)

    def drop_mirror(self) -> None:
        self._check_writable()
        self._call(p.DROP_MIRROR)

    def create_mirror_index(self, name: str, expression: str, class_name: str | None = None,
                            unique: bool = False) -> None:
        self._check_writable()
        self._call(p.CREATE_MIRROR_INDEX, name, expression, class_name, unique)

    def create_text_index(self, name: str, fields: Sequence[str],
                          class_name: str | None = None) -> None:
        self._check_writable()
        # (a string stays one: the server refuses it by name, as the storage would)
        self._call(p.CREATE_TEXT_INDEX, name,
                   fields if isinstance(fields, str) else list(fields), class_name)

    def _progressed(self, request_id: int, report: list) -> None:
        """The server says how far request ``request_id`` came: ``[done, total]`` for its
        ``progress`` (in the I/O thread)."""
        entry = self._requests.get(request_id)
        if entry is None or entry[2] is None or len(report) != 2:
            return
        try:
            entry[2](*report)
        except Exception:  # the caller's callback: never the connection's problem
            log.exception("a progress callback failed")
