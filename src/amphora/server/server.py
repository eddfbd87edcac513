"""``amphora serve``: any storage, served over TCP (optionally TLS) to many clients.

The server only moves records: it never unpickles application objects. A write conflict
found while a commit votes is merged here if the records' class has a rule that works on
their opcodes (:mod:`amphora.symbolic`: ``BTrees.Length``; the client is told,
:data:`~amphora.server.protocol.MERGED`); any other is sent to the committing client,
which merges the two states and answers (:data:`~amphora.server.protocol.RESOLVE`); the
vote goes on with the merged record, the commit lock held all along, so a hot object
costs at most one round trip per conflict instead of a commit sent again (see
:mod:`amphora.storage.client`). A commit's push carries its small records, which
clients keep (a load after a push is answered without a request). Where commits are
made in the event loop, the client of the commit queued next is asked as soon as the one
before it has voted, with that one's record, while its FINISH travels: its vote then
finds the merge ready, if that commit did happen (the merge is used only if the record
committed is the one it was asked with). A COMMIT with ``finish`` (the client's
connection is its transaction's only data manager) is finished as soon as it voted, on
either commit path: the lock is released without waiting for a FINISH. What a session
sends while one message is handled (a commit's reply, the pushes of the commits made
meanwhile) goes out in one write at its end; a push alone waits up to ``push_delay``
(1 ms) for company.

Threads: the event loop does all network I/O. On a storage in this process (not
``is_remote``: SQLite, memory) it also makes the commits and answers the short reads, a
hand-off to a thread and back costing more than they do and, while the commit lock is
held, lengthening every commit's hold: commits and packs queue for the storage
(:meth:`~amphora.server.served.Served.next_writer`), so ``tpc_begin`` never waits for
the storage's own lock, and the next one begins as soon as the last one finished; a vote
waiting for the client's merge returns to the loop and goes on when the answer comes. A
pack runs in the thread pool while no commit begins. (A SQLite file written by another
process too can make ``BEGIN IMMEDIATE`` wait for it in the loop.) Reads that may be
long (many records, reading ahead, history, iteration) run in a shared thread pool. On a
remote storage (PostgreSQL) every storage call runs in a thread: reads in the pool, a
client's commit in that client's own commit thread, where ``tpc_begin`` waiting for the
storage's commit lock, or a vote waiting for the client's merge, stalls no one else.
Requests of the JSON mirror (client SQL, index making: :mod:`amphora.server.search`) run
in a pool of their own, so a slow query holds no thread that answers loads.

Ordering: the storage calls the server back inside ``tpc_finish`` (``func(tid)``, under
its commit lock) and, for commits made elsewhere, through ``invalidate(tid, oids)``. Both
queue, in that order, the commit's push to every other client and the committing client's
finish reply. Every client thus hears of every transaction in commit order, before any
reply that could reveal it.

Modules: this one has the :class:`Server` (listening, the storages served by name,
stopping) and :func:`serve`; :mod:`amphora.server.session` a client's connection (the
handshake, framing, dispatch of requests, replies); :mod:`amphora.server.served` one
served storage (its sessions, the queue of its writers, the pushes of its commits);
:mod:`amphora.server.commits` the handlers of commits and conflict merges, and
:mod:`amphora.server.reads` those of loads, read-ahead and history, both mixed into the
session class like :mod:`amphora.server.search`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import signal
import ssl
from typing import Any, Callable

from amphora import errors
from amphora.server import protocol as p
from amphora.server.reads import check_oid
from amphora.server.search import SEARCH_TIMEOUT
from amphora.server.served import Served
from amphora.server.session import Session
from amphora.utils import z64

__all__ = ["Server", "serve"]

log = logging.getLogger("amphora.server")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CHANGES_LIMIT = 10000             # transactions sent at reconnection, beyond: reset
_RESOLVE_TIMEOUT = 60.0            # seconds a vote waits for a client's merge
# A push waits up to this long for company: four busy clients' pushes and replies then
# take one write (and one wake-up of the client) where they took several (a 4-process
# counter: +9..20% commits/s); a feed hears of a commit that much later at most
_PUSH_DELAY = 0.001


class Server:
    """Serves storages to clients.

    ``open_storage(name)`` gives the storage a client asks for by name (``""`` when it
    names none) and raises to refuse; ``shared`` says whether a storage stays open
    (True) or is closed when its last client leaves (False, for storages opened per name).
    ``token``: the secret clients must present (None: no authentication);
    ``read_only_token``: another secret, whose clients may read and search but not write
    (nor make or drop the mirror and its indexes). ``ssl_context``: serve TLS.
    ``search_timeout``: seconds a client's query of the JSON mirror may run (None: no
    limit); ``search_workers``: threads answering the mirror's requests.
    """

    handshake_timeout = 10.0
    resolve_timeout = _RESOLVE_TIMEOUT  #: seconds a vote waits for a client's merge
    stop_grace = 10.0  #: seconds SIGTERM waits for commits under way to finish

    def __init__(self, open_storage: Callable[[str], Any], *, shared: bool = True,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 max_frame: int = p.MAX_FRAME, workers: int = 8,
                 push_delay: float = _PUSH_DELAY, read_only_token: str | None = None,
                 search_timeout: float | None = SEARCH_TIMEOUT, search_workers: int = 4):
        if search_timeout is not None and not search_timeout > 0:
            raise ValueError(f"search_timeout is a positive number of seconds or None, "
                             f"not {search_timeout!r}")
        self.open_storage = open_storage
        self.read_only_token = read_only_token
        self.search_timeout = search_timeout
        #: seconds a push may wait to go out in one write with the client's next reply or
        #: with other pushes (a reply always carries the pushes queued before it)
        self.push_delay = push_delay
        self.shared = shared
        self.token = token
        self.ssl_context = ssl_context
        self.max_frame = max_frame
        self.pool = concurrent.futures.ThreadPoolExecutor(workers,
                                                          thread_name_prefix="amphora-read")
        self.search_pool = concurrent.futures.ThreadPoolExecutor(
            search_workers, thread_name_prefix="amphora-search")
        self.served: dict[str, Served] = {}
        self.sessions: set[Session] = set()
        self.cleanups: set[asyncio.Task] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._listener: asyncio.AbstractServer | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._idle: asyncio.Event | None = None  # set by stop() when no commit is under way
        self.unsent: list[Session] = []  # sessions with frames to send (see flush_all)
        self.receiving = False  # in a session's data_received: flushed at its end
        self._flush_soon = False

    def queue_flush(self, session: Session) -> None:
        """``session`` has frames to send: at the end of the data_received under way, or
        else of this loop turn."""
        self.unsent.append(session)
        if not self.receiving and not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        self._flush_soon = False
        unsent, self.unsent = self.unsent, []
        for session in unsent:
            session.flush()

    # -- storages -------------------------------------------------------------------
    async def acquire(self, name: str, session: Session) -> Served:
        if name and not _NAME.match(name):
            raise errors.StorageError(
                f"bad storage name {name!r}: a name is 1 to 100 letters, digits, '.', '_' "
                "and '-', and starts with a letter or a digit")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            served = self.served.get(name)
            if served is None:
                storage = await self.loop.run_in_executor(self.pool, self.open_storage, name)
                served = self.served[name] = Served(self, name, storage)
            served.sessions.add(session)
            return served

    async def release(self, served: Served) -> None:
        if self.shared and not self.stopping:
            return
        lock = self._locks.setdefault(served.name, asyncio.Lock())
        async with lock:
            if served.sessions or self.served.get(served.name) is not served:
                return
            del self.served[served.name]
            served.watcher.cancel()
            await self.loop.run_in_executor(self.pool, served.storage.close)

    def changes_since(self, served: Served, since: Any) -> tuple[bytes, list | None]:
        """``(last tid, [[tid, oids], ...] after ``since`` up to it)``; None instead of
        the list when they cannot be known exactly (packed away, another database,
        too many)."""
        storage = served.storage
        last = storage.lastTransaction()
        if since is None:
            return last, []
        since = check_oid(since, "a tid")
        if since == last:
            return last, []
        if since > last or served.packed_to > since:
            return last, None
        packed = getattr(storage, "packed_through", None)
        try:
            if callable(packed) and packed() > since:
                return last, None
            changes: list = []
            for txn in storage.iterator(since if since != z64 else None, last):
                if not changes and since != z64:
                    if txn.tid != since:  # not the database the client knew
                        return last, None
                    changes.append(None)
                    continue
                changes.append([txn.tid, [record.oid for record in txn]])
                if len(changes) > _CHANGES_LIMIT:
                    return last, None
        except errors.Unsupported:
            return last, None
        if since != z64 and not changes:
            return last, None
        return last, [change for change in changes if change is not None]

    # -- running --------------------------------------------------------------------
    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any free port); returns the address bound."""
        self.loop = asyncio.get_running_loop()
        self._listener = await self.loop.create_server(
            lambda: Session(self), host, port, ssl=self.ssl_context)
        sock = self._listener.sockets[0]
        address = sock.getsockname()
        return address[0], address[1]

    def commit_done(self) -> None:
        if self._idle is not None and not any(s.txn is not None or s.commit_jobs
                                              for s in self.sessions):
            self._idle.set()

    async def stop(self) -> None:
        """Stop accepting, let commits under way finish (up to ``stop_grace`` seconds),
        abort the rest, close every connection and storage."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        self._idle = asyncio.Event()
        self.commit_done()
        try:
            await asyncio.wait_for(self._idle.wait(), self.stop_grace)
        except asyncio.TimeoutError:
            log.warning("stopping with commits under way: they are aborted")
        for session in list(self.sessions):
            session.flush()
            session.closed = True
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)
        while self.cleanups:
            await asyncio.gather(*list(self.cleanups), return_exceptions=True)
        for served in list(self.served.values()):
            served.watcher.cancel()
            served.sessions.clear()
            await self.release(served)
        self.pool.shutdown(wait=True)
        self.search_pool.shutdown(wait=True)


def serve(uri: str, host: str = "127.0.0.1", port: int = 8100, token: str | None = None,
          ssl_context: ssl.SSLContext | None = None, read_only: bool = False,
          ready: Callable[[str, int], None] | None = None,
          read_only_token: str | None = None,
          search_timeout: float | None = SEARCH_TIMEOUT) -> None:
    """Serve the storage ``uri`` until SIGTERM or SIGINT (the other arguments: see
    :class:`Server`).

    A URI containing ``{name}`` is a template: each client names its storage (the path of
    its ``amphora://host:port/NAME`` URI) and gets the storage of the URI with the name
    filled in, opened at first use and closed when its last client leaves.
    """
    from amphora.uri import open_storage

    template = "{name}" in uri

    def opener(name: str) -> Any:
        if template:
            if not name:
                raise errors.StorageError("this server serves one storage per name: "
                                          "amphora://host:port/NAME")
            target = uri.replace("{name}", name)
        else:
            if name:
                raise errors.StorageError("this server serves one storage, not named ones")
            target = uri
        return _open_for_serving(target, read_only, open_storage)

    server = Server(opener, shared=not template, token=token, ssl_context=ssl_context,
                    read_only_token=read_only_token, search_timeout=search_timeout)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if not template:  # open it now: a bad URI fails at once
            served_storage = await loop.run_in_executor(server.pool, opener, "")
            server.loop = loop
            server.served[""] = Served(server, "", served_storage)
        bound = await server.start(host, port)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if ready is not None:
            ready(*bound)
        await stop.wait()
        await server.stop()
        if not template:
            for served in list(server.served.values()):
                served.storage.close()
    asyncio.run(main())


def _open_for_serving(uri: str, read_only: bool, open_storage: Callable) -> Any:
    """The storage of ``uri`` with its own conflict resolution off: the server never
    unpickles application objects, its clients resolve conflicts."""
    try:
        storage = open_storage(uri, read_only=read_only, resolve_conflicts=False)
    except errors.InvalidURIError as exc:
        if "resolve_conflicts" not in str(exc):
            raise
        storage = open_storage(uri, read_only=read_only)
    if getattr(storage, "_resolve_conflicts", False):
        storage._resolve_conflicts = False
    return storage
