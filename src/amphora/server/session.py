"""One client connection (:class:`Session`): the handshake (protocol version, token,
storage name, the changes the client missed), the framing of what it sends and is sent
(the replies and pushes of one loop turn go out in one write), and the dispatch of its
requests: in the event loop, to the thread pool, the search pool or its commit thread, or
to the served storage's queue of writers (see :mod:`amphora.server.server` for which).

The handlers are mixed in: :class:`~amphora.server.commits.CommitRequests`,
:class:`~amphora.server.reads.ReadRequests`,
:class:`~amphora.server.blobs.BlobRequests` and
:class:`~amphora.server.search.SearchRequests`.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import logging
from typing import TYPE_CHECKING, Any

from amphora import errors
from amphora.server import protocol as p
from amphora.server.blobs import BlobRequests, blob_welcome
from amphora.server.commits import REPLIED, Commit, CommitRequests, MergeWanted
from amphora.server.reads import ReadRequests
from amphora.server.search import SearchRequests
from amphora.storage.base import TransactionMetaData

if TYPE_CHECKING:
    from amphora.server.served import Served
    from amphora.server.server import Server

__all__ = ["Session"]

log = logging.getLogger("amphora.server")

_HELLO_LIMIT = 64 * 1024           # the largest frame accepted before the handshake
_INLINE_MANY = 64                  # a load_many of up to this many oids is short
# requests answered in the event loop when the storage is in this process (not NEW_OIDS:
# reserving a block waits for SQLite's write lock, which a voted commit holds until its
# FINISH, which the event loop runs)
_SHORT = frozenset({p.LOAD_BEFORE, p.LOAD_SERIAL, p.LAST_TRANSACTION, p.SYNC,
                    p.PACKED_THROUGH})


def _same(token: Any, secret: str | None) -> bool:
    """Whether the client's ``token`` is ``secret`` (compared in constant time)."""
    return secret is not None and isinstance(token, str) and hmac.compare_digest(
        token.encode("utf-8"), secret.encode("utf-8"))


def _error_message(exc: BaseException, request_id: int) -> list:
    """The ERROR message for ``exc``: amphora's errors by name, anything else as a
    StorageError (the server's internals are not the client's business)."""
    name = type(exc).__name__
    details: dict[str, Any] = {}
    if isinstance(exc, errors.ConflictError):
        details = {"oid": exc.oid, "serials": list(exc.serials) if exc.serials else None}
        message = exc.message
    elif isinstance(exc, errors.UndoError):
        details = {"oid": exc.oid}
        message = exc.reason
    elif isinstance(exc, errors.ObjectNotFoundError):
        details = {"oid": exc.args[0] if exc.args else None}
        message = str(exc)
    elif name in errors.__all__:
        message = str(exc)
    else:
        message = f"{name}: {exc}"
        name = "StorageError"
    return [p.ERROR, request_id, name, message, details]


class Session(CommitRequests, ReadRequests, BlobRequests, SearchRequests, asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: "Server"):
        self.server = server
        self.loop = server.loop
        self.read_only = False  # authenticated with the read-only token
        self.transport: asyncio.Transport | None = None
        self.decoder = p.FrameDecoder(_HELLO_LIMIT)
        self.served: Served | None = None
        self.welcomed = False
        self.closed = False
        self.held: list[tuple[bytes | None, bytes]] = []  # pushes before the welcome
        self.early: list[list] = []  # requests sent before the welcome
        self.committer: concurrent.futures.ThreadPoolExecutor | None = None
        self.resolving: tuple[int, concurrent.futures.Future] | None = None  # asked
        self.txn: TransactionMetaData | None = None  # begun on the storage
        self.voted = False  # self.txn voted: FINISH may come
        # (request id, txn, conflict, merges so far, timeout) while the client merges
        self.merging: tuple[int, Commit, MergeWanted, int, asyncio.TimerHandle] | None = None
        # the RESOLVE messages sent, answers come in their order: ("vote",) for the
        # commit voting, ("ahead", guess) for a merge asked ahead (commits made in the
        # event loop)
        self.questions: collections.deque[tuple] = collections.deque()
        self.ahead: dict[bytes, list] = {}  # merges asked ahead for the queued commit
        self.commit_jobs = 0
        self.peer = "?"
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.out: list[bytes] = []  # frames to send (see write and push)
        self.queued = False  # in the server's list of sessions to flush
        self.late: asyncio.TimerHandle | None = None  # the flush of pushes alone


    # -- connection events ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = str(transport.get_extra_info("peername"))
        self.server.sessions.add(self)
        self.handshake_timer = self.loop.call_later(self.server.handshake_timeout,
                                                    self.fail, "no handshake in time")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            messages = self.decoder.feed(data)
        except p.ProtocolError as exc:
            self.fail(str(exc))
            return
        server = self.server
        if server.receiving:  # (not expected: data_received does not nest)
            self.dispatch_all(messages)
            return
        server.receiving = True
        try:
            self.dispatch_all(messages)
        finally:  # the replies and pushes of these messages: one write per session
            server.receiving = False
            server.flush_all()

    def dispatch_all(self, messages: list) -> None:
        """Dispatch ``messages`` in order; a bad one closes the client (the rest are
        dropped)."""
        for message in messages:
            if self.closed:
                return
            try:
                self.dispatch(message)
            except p.ProtocolError as exc:
                self.fail(str(exc))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resolved(None, None)  # a vote waiting for this client's merge fails
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        self.server.sessions.discard(self)
        task = self.loop.create_task(self.cleanup())
        self.server.cleanups.add(task)
        task.add_done_callback(self.server.cleanups.discard)

    async def cleanup(self) -> None:
        served = self.served or None  # False: a handshake under way, or refused
        if served is not None:
            served.sessions.discard(self)
        committer = self.committer
        if committer is not None:
            if self.txn is not None and served is not None:
                txn = self.txn
                await self.loop.run_in_executor(committer, served.storage.tpc_abort, txn)
            committer.shutdown(wait=False)
        elif served is not None:  # (a merge asked for was failed by connection_lost)
            queued = [entry for entry in served.waiting if entry[0] is self]
            for entry in queued:
                served.waiting.remove(entry)
                if entry[2] == p.COMMIT:
                    self.commit_jobs -= 1
            if self.txn is not None or served.writer is self:
                self.abort_commit()
            self.server.commit_done()
        self.drop_uploads()
        if served is not None:
            await self.server.release(served)

    def fail(self, message: str) -> None:
        """Tell the client what went wrong and close its connection."""
        if self.closed or self.transport is None:
            return
        log.warning("closing %s: %s", self.peer, message)
        self.write(p.encode([p.ERROR, 0, "ProtocolError", message, {}]))
        self.flush()
        self.closed = True
        self.transport.close()

    def write(self, frame: bytes) -> None:
        """Send ``frame`` with the others of this loop turn: one system call (and one
        wake-up of the client) for a commit's replies and the pushes of the commits made
        meanwhile."""
        self.out.append(frame)
        if not self.queued:
            self.queued = True
            self.server.queue_flush(self)

    def flush(self) -> None:
        self.queued = False
        if self.late is not None:
            self.late.cancel()
            self.late = None
        out, self.out = self.out, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def send(self, message: list) -> None:
        if not self.closed and self.transport is not None:
            self.write(p.encode(message))

    def push(self, tid: bytes | None, frame: bytes) -> None:
        if self.closed or self.transport is None:
            return
        if not self.welcomed:
            self.held.append((tid, frame))
        elif self.server.push_delay <= 0:
            self.write(frame)
        else:  # with the next reply, or after push_delay: fewer writes and wake-ups
            self.out.append(frame)
            if not self.queued and self.late is None:
                self.late = self.loop.call_later(self.server.push_delay, self.flush)


    # -- messages -------------------------------------------------------------------
    def dispatch(self, message: list) -> None:
        kind = message[0]
        if kind == p.RESOLVED and self.welcomed:
            if len(message) != 3 or not isinstance(message[1], int):
                raise p.ProtocolError("a resolved message is [resolved, id, data]")
            self.resolved(message[1], message[2])
            return
        if not self.welcomed:
            if self.served is False:  # the handshake is under way: requests wait for it
                if len(self.early) >= 1000:
                    raise p.ProtocolError("too many requests before the handshake ended")
                self.early.append(message)
                return
            if kind != p.HELLO or len(message) != 2 or not isinstance(message[1], dict) \
                    or self.served is not None:
                raise p.ProtocolError("the first message must be a hello")
            self.served = False  # type: ignore[assignment]  # handshake under way
            task = self.loop.create_task(self.hello(message[1]))
            self.server.cleanups.add(task)
            task.add_done_callback(self.server.cleanups.discard)
            return
        if kind != p.REQUEST or len(message) != 4 or not isinstance(message[1], int) \
                or not isinstance(message[2], str) or not isinstance(message[3], list):
            raise p.ProtocolError("a message that is not a well-formed request")
        request_id, method, args = message[1], message[2], message[3]
        if method not in p.METHODS:
            raise p.ProtocolError(f"unknown request {method!r}")
        if method in p.WRITE_METHODS and (self.read_only or self.served.storage.isReadOnly()):
            self.send([p.ERROR, request_id, "ReadOnlyError",
                       f"{method}: a read-only token cannot write" if self.read_only
                       else f"{self.served.name} is served read-only", {}])
            return
        handler = getattr(self, f"do_{method}")
        if self.served.inline and method in (p.COMMIT, p.PACK):
            self.serialize(request_id, method, args)
            return
        if self.served.inline and (method in _SHORT or method == p.LOAD_MANY and len(
                args) == 2 and isinstance(args[0], list) and len(args[0]) <= _INLINE_MANY
                or method == p.FINISH and not self.commit_jobs or method == p.ABORT):
            future = self.loop.create_future()
            try:
                future.set_result(handler(request_id, *args))
            except Exception as exc:
                future.set_exception(exc)
            self.answer(request_id, method, future, inline=True)
            return
        if method in (p.COMMIT, p.FINISH, p.ABORT):
            if self.server.stopping and method == p.COMMIT:
                self.send([p.ERROR, request_id, "StorageError", "the server is stopping", {}])
                return
            if self.committer is None:
                self.committer = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="amphora-commit")
            executor = self.committer
            self.commit_jobs += 1
        elif method in p.SEARCH_METHODS:  # may be slow: never in the way of loads
            executor = self.server.search_pool
        else:
            executor = self.server.pool
        future = self.loop.run_in_executor(executor, handler, request_id, *args)
        future.add_done_callback(lambda done: self.answer(request_id, method, done))

    def answer(self, request_id: int, method: str, done: asyncio.Future,
               inline: bool = False) -> None:
        if method in (p.COMMIT, p.FINISH, p.ABORT):
            if not inline:
                self.commit_jobs -= 1
            self.server.commit_done()
        exc = done.exception()
        if exc is not None:
            if isinstance(exc, TypeError):  # wrong number of arguments
                exc = errors.StorageError(f"bad arguments for {method}: {exc}")
            elif not isinstance(exc, errors.AmphoraError):
                log.error("%s failed for %s", method, self.peer, exc_info=exc)
            self.send(_error_message(exc, request_id))
            return
        result = done.result()
        if method == p.FINISH or result is REPLIED:
            return  # replied in commit order, from the storage's callback
        self.send([p.REPLY, request_id, result])

    async def hello(self, hello: dict) -> None:
        server = self.server
        version = hello.get("protocol")
        if version != p.VERSION:
            self.fail(f"protocol version {version!r} is not supported: this server speaks "
                      f"version {p.VERSION} only")
            return
        token = hello.get("token")
        if server.token is not None or server.read_only_token is not None:
            if _same(token, server.token):
                pass
            elif _same(token, server.read_only_token):
                self.read_only = True
            else:
                self.fail("authentication failed: bad token")
                return
        name = hello.get("storage") or ""
        try:
            served = await server.acquire(name, self)
        except Exception as exc:
            self.fail(f"cannot open storage {name!r}: {exc}")
            return
        self.served = served
        if self.closed:
            served.sessions.discard(self)
            await server.release(served)
            return
        since = hello.get("last_tid")
        try:
            last, changes = await self.loop.run_in_executor(
                server.pool, self.server.changes_since, served, since)
        except Exception as exc:
            self.fail(f"cannot read the storage: {exc}")
            return
        if self.closed:
            return
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        storage = served.storage
        self.decoder.max_frame = server.max_frame
        self.send([p.WELCOME, {
            "protocol": p.VERSION, "name": storage.getName(),
            "read_only": self.read_only or storage.isReadOnly(),
            "last_tid": last, "changes": changes,
            "supports_history": bool(getattr(storage, "supports_history", False)),
            "supports_pack": bool(getattr(storage, "supports_pack", False)),
            "mirror": bool(getattr(storage, "supports_mirror", False)),
            "feeds": True, "load_ahead": True, "pack_reachable": True, "server": "amphora",
            **blob_welcome(storage)}])
        self.welcomed = True
        held, self.held = self.held, []
        for tid, frame in held:
            if tid is None or tid > last:
                self.write(frame)
        early, self.early = self.early, []
        self.dispatch_all(early)
