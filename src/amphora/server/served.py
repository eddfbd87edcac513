"""One storage served (:class:`Served`): the sessions using it, the queue of its writers
(commits and packs made in the event loop take the storage one at a time), the pushes of
its commits to every session, and the watch for commits other processes make.

It is the storage's wrapper (``registerDB``): the storage calls it back when a commit
finishes and for commits made elsewhere. The commits themselves are
:mod:`amphora.server.commits`'s; the sessions :mod:`amphora.server.session`'s.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

from amphora import errors, symbolic
from amphora.server import protocol as p
from amphora.server.commits import PENDING, Commit
from amphora.server.reads import References
from amphora.storage.base import RecordsAsStored
from amphora.utils import z64

if TYPE_CHECKING:
    from amphora.server.server import Server
    from amphora.server.session import Session

__all__ = ["Served"]

log = logging.getLogger("amphora.server")

_WATCH_INTERVAL = 0.1              # seconds between looks for other processes' commits
_PACK_HOLD = 5.0                   # seconds a refused pack keeps the storage (see pack)


class Served(RecordsAsStored):
    """One open storage, the sessions using it, and the wrapper it reports to."""

    def __init__(self, server: "Server", name: str, storage: Any):
        self.server = server
        self.name = name
        self.storage = storage
        self.sessions: set[Session] = set()
        self.lock = asyncio.Lock()
        self.packed_to = z64  # packs made here: changes before cannot be enumerated
        #: short requests are answered in the event loop (see the module docstring)
        self.inline = not getattr(storage, "is_remote", True)
        self.scanned = References()  # the references of records read ahead
        # Commits made in the event loop: the session committing (or packing), the rest
        # in arrival order
        self.writer: Session | None = None
        self.waiting: collections.deque[tuple[Session, int, str, list]] = collections.deque()
        self._starting = False
        #: (session, timer): a pack refused as stale keeps the storage for its session
        self.pack_hold: tuple[Session, asyncio.TimerHandle] | None = None
        storage.registerDB(self)
        self.watcher = asyncio.get_running_loop().create_task(self.watch())

    def next_writer(self) -> None:
        """Give the storage to the next queued commit or pack if no one writes: called
        where the last writer finished, aborted or failed, so the next one begins at once
        (not an event-loop turn later, behind other clients' requests)."""
        if self._starting:  # a writer that fails at once: the loop below goes on
            return
        self._starting = True
        try:
            while self.writer is None and self.waiting:
                session, request_id, method, args = self.waiting.popleft()
                if session.closed:
                    if method == p.COMMIT:
                        session.commit_jobs -= 1
                    continue
                self.writer = session
                if method == p.PACK:
                    self.pack(session, request_id, args)
                else:
                    session.start_commit(request_id, args)
        finally:
            self._starting = False

    def ask_ahead(self, writer: "Session", voted: Commit) -> None:
        """Ask the client of the next queued commit, now, to merge its conflicts with the
        commit ``voted`` (which holds the storage until its client's FINISH): the merge
        travels while that round trip does, and its vote finds it ready. A guess: used
        only if the record committed is the one asked with."""
        if not self.waiting:
            return
        session, request_id, method, args = self.waiting[0]
        if method != p.COMMIT or session.closed or session is writer \
                or len(args) not in (5, 6):
            return
        records, serials = args[2], args[3]
        if not isinstance(records, dict) or not isinstance(serials, dict):
            return
        for oid in records.keys() & voted.records.keys():
            if type(records[oid]) is bytes and symbolic.mergeable(records[oid]):
                continue  # merged by the server when its vote comes
            read = serials.get(oid)
            committed = voted.final(oid)
            guess = session.ahead.get(oid)
            if type(read) is not bytes or len(read) != 8 or read == z64 \
                    or guess is not None and guess[0] == committed:
                continue
            try:
                old = self.storage.loadSerial(oid, read)
            except Exception:  # gone: the vote will say
                continue
            guess = session.ahead[oid] = [committed, PENDING]  # (replacing a stale one)
            session.questions.append(("ahead", guess))
            session.send([p.RESOLVE, request_id, oid, None, read, committed, old])

    def pack(self, session: "Session", request_id: int, args: list) -> None:
        """A pack, in the thread pool, while no commit begins.

        A pack given the objects to keep and refused because commits came after them
        (StaleReachableError) keeps the storage for its session: commits made here wait
        while its client reads those commits and asks again, up to :data:`_PACK_HOLD`
        seconds, so that a stream of commits cannot keep refusing it."""
        self.end_pack_hold(session)
        future = self.server.loop.run_in_executor(self.server.pool, session.do_pack,
                                                  request_id, *args)

        def done(future: asyncio.Future) -> None:
            stale = not future.cancelled() and isinstance(future.exception(),
                                                          errors.StaleReachableError)
            if stale and not session.closed:
                self.pack_hold = (session, self.server.loop.call_later(
                    _PACK_HOLD, self.end_pack_hold, session, True))
            else:
                self.writer = None
            session.answer(request_id, p.PACK, future)
            if self.writer is None:
                self.next_writer()
        future.add_done_callback(done)

    def end_pack_hold(self, session: "Session", release: bool = False) -> None:
        """``session``'s refused pack no longer keeps the storage (it packs again, or
        its time is up: ``release`` lets the next writer in)."""
        hold = self.pack_hold
        if hold is None or hold[0] is not session:
            return
        self.pack_hold = None
        hold[1].cancel()
        if release and self.writer is session:
            self.writer = None
            self.next_writer()

    async def watch(self) -> None:
        """While clients are connected, have the storage look for commits other processes
        made (one ``PRAGMA data_version`` on SQLite): they are pushed like ours, so
        waiting feeds and caches hear of them without asking."""
        loop = asyncio.get_running_loop()
        sync = getattr(self.storage, "sync", None)
        while sync is not None:
            await asyncio.sleep(_WATCH_INTERVAL)
            if not self.sessions:
                continue
            try:
                await loop.run_in_executor(self.server.pool, sync)
            except Exception as exc:  # closing, or a passing error: the next look retries
                log.debug("looking for commits in %s failed: %s", self.name, exc)

    # -- the storage-wrapper protocol (called in storage threads) ------------------------
    def invalidate(self, tid: bytes, oids: Any) -> None:
        """A transaction committed elsewhere (another process on the same file)."""
        payload = {"tid": tid, "oids": list(oids), "user": None, "description": None,
                   "extension": None}
        self.server.loop.call_soon_threadsafe(self.committed, None, None, payload)

    def invalidateCache(self) -> None:
        self.server.loop.call_soon_threadsafe(self.reset)

    # -- in the event loop ------------------------------------------------------------
    def committed(self, committer: "Session | None", finish_id: int | None,
                  payload: dict) -> None:
        """Transaction ``payload['tid']`` is committed: push it to every session but the
        committer, which gets its finish reply at this same point of the order."""
        push = p.encode([p.PUSH, p.PUSH_COMMIT, payload])
        for session in list(self.sessions):
            if session is committer:
                session.send([p.REPLY, finish_id, payload["tid"]])
            else:
                session.push(payload["tid"], push)

    def reset(self) -> None:
        push = p.encode([p.PUSH, p.PUSH_RESET, {"tid": None}])
        for session in list(self.sessions):
            session.push(None, push)
