"""Change feeds: every committed transaction, in commit order, for applications that react
to changes (search indexes, caches, notifications, replication to other systems).

``db.changes(since)`` iterates over the transactions committed after ``since`` (the last
tid the consumer has already seen; None: from now on), waiting for new ones;
``db.achanges(since)`` is the same for ``async for``; ``db.subscribe(callback)`` calls
``callback(change)`` for each transaction committed from now on, in a thread of the
database. Each :class:`Change` is the transaction as committed: tid, time, user,
description, extension and the oids it wrote.

The feed reads the storage's own record of its transactions (``transaction_log`` where
the storage has it, else ``iterator``), so it sees commits of every process and every
client of the storage, and a slow consumer only falls behind: commits never wait for it.
Tids are chosen under the storage's commit lock in commit order, so reading "after the
last tid seen" never skips a transaction. Pack removes transactions that no longer hold a
record; a feed asked to start before such a removal raises :class:`ResyncRequired`,
because it cannot prove that nothing between is missing.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

from amphora.errors import AmphoraError
from amphora.storage import _fork
from amphora.storage.base import decode_extension
from amphora.utils import p64, tid_to_datetime, u64, z64

__all__ = ["Change", "ResyncRequired", "ChangeFeed", "Subscriptions"]

log = logging.getLogger(__name__)

_BATCH = 100      # transactions read per step
_INTERVAL = 0.05  # seconds between looks for new commits, when the storage cannot wait
_POLL_SLICE = 0.5  # seconds a storage that can wait for commits waits at a time


class ResyncRequired(AmphoraError):
    """The feed cannot start where it was asked: pack removed transactions after that
    point. The consumer must rebuild its view from the current data, then follow the feed
    from :attr:`packed_through` or from now."""

    def __init__(self, since: bytes, packed_through: bytes):
        super().__init__(f"the changes after {since.hex()} are no longer all known: pack "
                         f"removed transactions up to {packed_through.hex()}")
        self.since = since
        self.packed_through = packed_through


@dataclass(frozen=True)
class Change:
    """One committed transaction. ``user`` and ``description`` are the bytes the
    transaction recorded (ZODB's ``transaction`` package writes UTF-8); ``extension``
    its extension dict; ``oids`` the objects it wrote, in the order stored."""

    tid: bytes
    user: bytes
    description: bytes
    extension: dict = field(hash=False)
    oids: tuple[bytes, ...]

    @property
    def time(self) -> datetime.datetime:
        """When it committed (UTC), from the tid."""
        return tid_to_datetime(self.tid)


class ChangeFeed:
    """The transactions of ``storage`` after ``since``, read as they come.

    ``since`` is a tid (bytes) the consumer has seen, or None for "from now on". Raises
    :class:`ResyncRequired` at once when pack removed transactions after ``since``.
    """

    def __init__(self, storage: Any, since: bytes | None = None):
        self.storage = storage
        if since is None:
            since = self._last()
        elif not isinstance(since, bytes) or len(since) != 8:
            raise ValueError(f"since must be an 8-byte tid or None, not {since!r}")
        self.position = since  # the last tid delivered
        self._check_packed()

    def _last(self) -> bytes:
        storage = self.storage
        sync = getattr(storage, "sync", None)
        if sync is not None:
            sync()
        return storage.lastTransaction()

    def _check_packed(self) -> None:
        packed_through = getattr(self.storage, "packed_through", None)
        if packed_through is not None:
            packed = packed_through()
            if packed != z64 and self.position < packed:
                raise ResyncRequired(self.position, packed)

    def read(self) -> list[Change]:
        """The next transactions already committed (possibly none), without waiting."""
        storage = self.storage
        log_of = getattr(storage, "transaction_log", None)
        if log_of is not None:
            rows = log_of(self.position, _BATCH)
        else:
            rows = [(txn.tid, txn.user, txn.description, txn.extension_bytes,
                     [record.oid for record in txn])
                    for txn in _take(storage.iterator(p64(u64(self.position) + 1)), _BATCH)]
        changes = [Change(tid, bytes(user), bytes(description), decode_extension(extension),
                          tuple(oids))
                   for tid, user, description, extension, oids in rows
                   if tid > self.position]
        if changes:
            self._check_packed()  # a pack may have run between two reads
            self.position = changes[-1].tid
        return changes

    def wait(self, timeout: float | None) -> None:
        """Return when a new transaction may be there, or after ``timeout`` seconds."""
        # A storage that can be woken by commits (PostgreSQL's NOTIFY) waits in poll();
        # in slices, since a commit of this very storage object, or one made before its
        # listening began, sends it nothing.
        poll = getattr(self.storage, "poll", None)
        step = _POLL_SLICE if poll is not None else _INTERVAL
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with _fork.quiet():  # (a fork waits for the look, see amphora.storage._fork)
                if self.has_new():
                    return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            pause = step if left is None else min(step, left)
            if poll is not None:
                poll(pause)
            else:
                time.sleep(pause)

    def has_new(self) -> bool:
        """Whether a transaction after the position is committed (a cheap look)."""
        log_of = getattr(self.storage, "transaction_log", None)
        if log_of is not None:
            return bool(log_of(self.position, 1))
        return self._last() > self.position

    def __iter__(self) -> Iterator[Change]:
        return self.follow(None)

    def follow(self, timeout: float | None) -> Iterator[Change]:
        """Every change from here on, waiting for new ones; stops when ``timeout``
        seconds pass without one (None: never)."""
        while True:
            changes = self.read()
            if changes:
                yield from changes
                continue
            started = time.monotonic()
            self.wait(timeout)
            if timeout is not None and time.monotonic() - started >= timeout \
                    and not self.has_new():
                return


def _take(iterator: Iterator[Any], count: int) -> list[Any]:
    taken = []
    for item in iterator:
        taken.append(item)
        if len(taken) >= count:
            break
    return taken


async def achanges(storage: Any, since: bytes | None, timeout: float | None
                   ) -> AsyncIterator[Change]:
    """:meth:`ChangeFeed.follow` for ``async for``: the waiting and reading run in a
    worker thread, so the event loop keeps running."""
    feed = await asyncio.to_thread(ChangeFeed, storage, since)
    while True:
        changes = await asyncio.to_thread(feed.read)
        if changes:
            for change in changes:
                yield change
            continue
        started = time.monotonic()
        await asyncio.to_thread(feed.wait, timeout if timeout is not None else 1.0)
        if timeout is not None and time.monotonic() - started >= timeout \
                and not await asyncio.to_thread(feed.has_new):
            return


class _Subscriber:
    __slots__ = ("callback", "position")

    def __init__(self, callback: Callable[[Change], Any], position: bytes):
        self.callback = callback
        self.position = position  # the last tid it was given (or subscribed after)


class Subscriptions:
    """The callbacks of one database, called from one thread in commit order.

    A subscription starts at the last transaction committed when :meth:`subscribe`
    returns: each subscriber gets every transaction after that, once (the thread reads
    from the oldest subscriber's position, and each subscriber remembers its own). A
    callback that raises is logged and stays subscribed; the thread stops when the last
    callback unsubscribes or :meth:`close` is called. Callbacks run in that thread, never
    in a commit: a slow one delays later callbacks, not commits.
    """

    def __init__(self, storage: Any):
        self.storage = storage
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def subscribe(self, callback: Callable[[Change], Any]) -> None:
        start = ChangeFeed(self.storage).position  # from now on
        with self._lock:
            self._subscribers.append(_Subscriber(callback, start))
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="amphora-changes",
                                                daemon=True)
                self._thread.start()

    def unsubscribe(self, callback: Callable[[Change], Any]) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s.callback != callback]
            if not self._subscribers:
                self._stop.set()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self) -> None:
        feed: ChangeFeed | None = None
        while not self._stop.is_set():
            try:
                with self._lock:
                    subscribers = list(self._subscribers)
                if not subscribers:
                    return
                oldest = min(s.position for s in subscribers)
                with _fork.quiet():  # (a fork waits for the reads, see amphora.storage._fork)
                    if feed is None or feed.position > oldest:
                        feed = ChangeFeed(self.storage, oldest)  # a subscriber joined behind
                    changes = feed.read()
                if not changes:
                    feed.wait(0.5)
                    continue
                for change in changes:
                    for subscriber in subscribers:
                        self._deliver(subscriber, change)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("amphora: the change feed failed; retrying")
                time.sleep(0.5)

    @staticmethod
    def _deliver(subscriber: _Subscriber, change: Change) -> None:
        if change.tid <= subscriber.position:
            return  # subscribed after it, or given it already
        subscriber.position = change.tid
        try:
            subscriber.callback(change)
        except Exception:
            log.exception("amphora: a change feed subscriber raised")
