"""The web layer's access to the database: every request's work in one transaction.

Model calls are synchronous, so :class:`Store` runs them in a worker thread
(``run_in_threadpool``): ``await store.write(work)`` calls ``work(conn)`` inside
``db.transaction()`` and commits, retrying a few times with a short random backoff when
the commit meets a conflict (any ``TransientError``: amphora's and ZODB's
``ConflictError``, a read conflict, a server briefly gone) that the objects' own
conflict resolution could not merge; ``await store.read(work)``
uses a pooled connection and commits nothing; ``await store.read_at(moment, work)`` a
historical, read-only connection. ``work`` may raise the model's errors: the
transaction is then aborted and nothing is stored.

The site lives at ``conn.root()["kanban"]``; :meth:`Store.setup` creates it.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, TypeVar

import transaction
from starlette.concurrency import run_in_threadpool
from transaction.interfaces import TransientError

import amphora
from amphora_kanban.errors import NotFound
from amphora_kanban.site import Site

__all__ = ["Store", "SITE_KEY", "site_of"]

log = logging.getLogger(__name__)

SITE_KEY = "kanban"
ATTEMPTS = 10
WRITERS = 4  # write transactions at once in one process
BACKOFF = 0.005  # seconds: the first retry waits up to this, each next one up to twice more
BACKOFF_MAX = 0.25

T = TypeVar("T")


def site_of(conn: amphora.Connection) -> Site:
    """The site stored in ``conn``'s root (NotFound before the first start)."""
    site = conn.root().get(SITE_KEY)
    if site is None:
        raise NotFound("site", SITE_KEY)
    return site


class Store:
    """Runs work on ``db`` in worker threads (see the module docstring)."""

    def __init__(self, db: amphora.DB, attempts: int = ATTEMPTS, writers: int = WRITERS):
        self.db = db
        self.attempts = attempts
        # Threads share the interpreter: fifty writers at once each take fifty times
        # longer, and a transaction open that long conflicts with most others. A few at a
        # time commit as many per second, each in a short window.
        self._writers = threading.BoundedSemaphore(writers)

    # -- synchronous: for worker threads and the database's own threads -------------
    def write_now(self, work: Callable[[amphora.Connection], T], note: str | None = None) -> T:
        """``work(conn)`` in a transaction, committed; retried on conflicts."""
        def attempt() -> T:
            with self._writers, self.db.transaction(note) as conn:
                return work(conn)
        return self._retrying(attempt)

    def read_now(self, work: Callable[[amphora.Connection], T]) -> T:
        """``work(conn)`` on a current snapshot; nothing is committed."""
        def attempt() -> T:
            manager = transaction.TransactionManager()
            conn = self.db.open(manager)
            try:
                return work(conn)
            finally:
                manager.abort()
                conn.close()
        return self._retrying(attempt)

    def read_at_now(self, moment: Any, work: Callable[[amphora.Connection], T]) -> T:
        """``work(conn)`` on the database as it was at ``moment`` (a datetime or an ISO
        string); raises ``amphora.Unsupported`` when the storage keeps no history."""
        conn = self.db.open(transaction.TransactionManager(), at=moment)
        try:
            return work(conn)
        finally:
            conn.close()

    def _retrying(self, attempt: Callable[[], T]) -> T:
        for n in range(1, self.attempts + 1):
            try:
                return attempt()
            except TransientError as exc:
                if n == self.attempts:
                    raise
                log.debug("retrying after %s (attempt %d)", exc, n)
                # random, so that the writers that met stop meeting
                time.sleep(random.uniform(0, min(BACKOFF * 2 ** (n - 1), BACKOFF_MAX)))
        raise AssertionError("unreachable")  # the loop returns or raises

    # -- asynchronous: for request handlers ---------------------------------------------
    async def write(self, work: Callable[[amphora.Connection], T]) -> T:
        return await run_in_threadpool(self.write_now, work)

    async def read(self, work: Callable[[amphora.Connection], T]) -> T:
        return await run_in_threadpool(self.read_now, work)

    async def read_at(self, moment: Any, work: Callable[[amphora.Connection], T]) -> T:
        return await run_in_threadpool(self.read_at_now, moment, work)

    def setup(self, title: str = "Kanban") -> None:
        """Create the site if the database has none."""
        def create(conn: amphora.Connection) -> None:
            if SITE_KEY not in conn.root():
                conn.root()[SITE_KEY] = Site(title)
        if not self.read_now(lambda conn: SITE_KEY in conn.root()):
            self.write_now(create, "kanban: site created")
