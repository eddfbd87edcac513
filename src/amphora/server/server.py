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
(:meth:`_Served.next_writer`), so ``tpc_begin`` never waits for the storage's own lock,
and the next one begins as soon as the last one finished; a vote waiting for the client's
merge returns to the loop and goes on when the answer comes. A pack runs in the thread
pool while no commit begins. (A SQLite file written by another process too can make
``BEGIN IMMEDIATE`` wait for it in the loop.) Reads that may be long (many records,
reading ahead, history, iteration) run in a shared thread pool. On a remote storage
(PostgreSQL) every storage call runs in a thread: reads in the pool, a client's commit in
that client's own commit thread, where ``tpc_begin`` waiting for the storage's commit
lock, or a vote waiting for the client's merge, stalls no one else. Requests of the JSON
mirror (client SQL, index making: :mod:`amphora.server.search`) run in a pool of their
own, so a slow query holds no thread that answers loads.

Ordering: the storage calls the server back inside ``tpc_finish`` (``func(tid)``, under
its commit lock) and, for commits made elsewhere, through ``invalidate(tid, oids)``. Both
queue, in that order, the commit's push to every other client and the committing client's
finish reply. Every client thus hears of every transaction in commit order, before any
reply that could reveal it.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import logging
import re
import signal
import ssl
import threading
from typing import Any, Callable

from amphora import errors, symbolic
from amphora.serialize import references
from amphora.server import protocol as p
from amphora.server.search import SEARCH_TIMEOUT, SearchRequests
from amphora.storage.base import RecordsAsStored, TransactionMetaData
from amphora.utils import p64, u64, z64

__all__ = ["Server", "serve"]

log = logging.getLogger("amphora.server")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HELLO_LIMIT = 64 * 1024           # the largest frame accepted before the handshake
_CHANGES_LIMIT = 10000             # transactions sent at reconnection, beyond: reset
_ITERATE_LIMIT = 1000              # transactions per ITERATE reply
_AHEAD_LIMIT = 2000                # records per LOAD_AHEAD reply
_REFERENCES_KEPT = 100_000         # records whose references are remembered, per storage
_WATCH_INTERVAL = 0.1              # seconds between looks for other processes' commits
_RESOLVE_TIMEOUT = 60.0            # seconds a vote waits for a client's merge
_MAX_MERGES = 1000                 # conflicts merged in one vote before giving up
_PUSH_RECORD = 512                 # records up to this size are pushed with their commit,
_PUSH_RECORDS = 32                 # up to this many per commit
# A push waits up to this long for company: four busy clients' pushes and replies then
# take one write (and one wake-up of the client) where they took several (a 4-process
# counter: +9..20% commits/s); a feed hears of a commit that much later at most
_PUSH_DELAY = 0.001
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


def _check_oid(value: Any, what: str = "an oid") -> bytes:
    if type(value) is not bytes or len(value) != 8:
        raise errors.StorageError(f"{what} is 8 bytes, not {value!r:.40}")
    return value


def _error_message(exc: BaseException, request_id: int) -> list:
    """The ERROR message for ``exc``: amphora's errors by name, anything else as a
    StorageError (the server's internals are not the client's business)."""
    name = type(exc).__name__
    details: dict[str, Any] = {}
    if isinstance(exc, errors.ConflictError):
        details = {"oid": exc.oid, "serials": list(exc.serials) if exc.serials else None}
        message = exc.message
    elif isinstance(exc, errors.ObjectNotFoundError):
        details = {"oid": exc.args[0] if exc.args else None}
        message = str(exc)
    elif name in errors.__all__:
        message = str(exc)
    else:
        message = f"{name}: {exc}"
        name = "StorageError"
    return [p.ERROR, request_id, name, message, details]


def _references(data: bytes) -> list[bytes]:
    """The oids record ``data`` refers to; none for data that is not a pickle (a storage
    may hold any bytes: reading ahead is only a guess)."""
    try:
        return references(data)
    except errors.CorruptRecordError:
        return []


class _References:
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


def _now(func: Callable, *args: Any) -> None:
    func(*args)


_PENDING = object()  # a merge asked for, not answered yet
_REPLIED = object()  # a commit finished by its vote: replied in commit order already


class _MergeWanted(Exception):
    """Raised through a vote: the client must merge ``oid`` (``states``: the committed
    and the read record) before the vote can succeed."""

    def __init__(self, oid: bytes, committed: bytes, old: bytes, states: list[bytes]):
        super().__init__(oid, committed, old)
        self.oid, self.committed, self.old, self.states = oid, committed, old, states


class _Commit(TransactionMetaData):
    """A client's transaction on the served storage; the storage asks it to resolve its
    write conflicts (see :meth:`amphora.storage.base.StorageBase._check_conflicts`).

    A conflict it has no merge for yet fails the vote with :class:`_MergeWanted`, and the
    server votes again once the client answered: nothing waits for the network inside
    the storage's vote (which may hold locks its readers need)."""

    def __init__(self, user: Any, description: Any, extension: Any, records: dict,
                 ahead: dict[bytes, list] | None = None, finish: bool = False):
        super().__init__(user, description, extension)
        self.records = records
        #: finished as soon as voted (COMMIT with ``finish``): no FINISH request follows
        self.finish = finish
        self.merges: dict[tuple[bytes, bytes], bytes | None] = {}  # (oid, committed) ->
        self.merged: dict[bytes, bytes] = {}  # oid -> the merged record stored
        #: oid -> the record merged here (a class of :mod:`amphora.symbolic`), which the
        #: client is told of before the commit's reply (MERGED)
        self.told: dict[bytes, bytes] = {}
        #: oid -> [committed record, merge or _PENDING]: merges asked ahead, while the
        #: commit before this one was finishing (see _Served.ask_ahead)
        self.ahead = ahead if ahead is not None else {}

    def final(self, oid: bytes) -> bytes:
        """The record of ``oid`` this commit stores (once voted)."""
        return self.merged.get(oid) or self.records[oid]

    def resolve_conflict(self, oid: bytes, committed: bytes, old: bytes, data: bytes,
                         load_serial: Callable[[bytes, bytes], bytes]) -> bytes | None:
        key = (oid, committed)
        if key in self.merges:
            merged = self.merges[key]
        else:
            try:
                states = [load_serial(oid, committed), load_serial(oid, old)]
            except Exception as exc:  # the state read is gone (packed): a plain conflict
                log.debug("no states to resolve oid %s: %s", oid.hex(), exc)
                return None
            merged = symbolic.merge(states[1], states[0], data)
            if merged is not None:  # a class whose merge is known: no round trip
                self.merges[key] = self.told[oid] = merged
            else:
                guess = self.ahead.get(oid)
                # A merge asked ahead is the client's answer for these very three records
                # only if the committed one is the record it was asked with.
                if guess is None or guess[1] is _PENDING or guess[0] != states[0]:
                    raise _MergeWanted(oid, committed, old, states)
                merged = guess[1]
        if merged is not None:
            self.merged[oid] = merged
        return merged


class _Served(RecordsAsStored):
    """One open storage, the sessions using it, and the wrapper it reports to."""

    def __init__(self, server: "Server", name: str, storage: Any):
        self.server = server
        self.name = name
        self.storage = storage
        self.sessions: set[_Session] = set()
        self.lock = asyncio.Lock()
        self.packed_to = z64  # packs made here: changes before cannot be enumerated
        #: short requests are answered in the event loop (see the module docstring)
        self.inline = not getattr(storage, "is_remote", True)
        self.scanned = _References()  # the references of records read ahead
        # Commits made in the event loop: the session committing (or packing), the rest
        # in arrival order
        self.writer: _Session | None = None
        self.waiting: collections.deque[tuple[_Session, int, str, list]] = collections.deque()
        self._starting = False
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

    def ask_ahead(self, writer: "_Session", voted: _Commit) -> None:
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
            guess = session.ahead[oid] = [committed, _PENDING]  # (replacing a stale one)
            session.questions.append(("ahead", guess))
            session.send([p.RESOLVE, request_id, oid, None, read, committed, old])

    def pack(self, session: "_Session", request_id: int, args: list) -> None:
        """A pack, in the thread pool, while no commit begins."""
        future = self.server.loop.run_in_executor(self.server.pool, session.do_pack,
                                                  request_id, *args)

        def done(future: asyncio.Future) -> None:
            self.writer = None
            session.answer(request_id, p.PACK, future)
            self.next_writer()
        future.add_done_callback(done)

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
    def committed(self, committer: "_Session | None", finish_id: int | None,
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


class _Session(SearchRequests, asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: "Server"):
        self.server = server
        self.loop = server.loop
        self.read_only = False  # authenticated with the read-only token
        self.transport: asyncio.Transport | None = None
        self.decoder = p.FrameDecoder(_HELLO_LIMIT)
        self.served: _Served | None = None
        self.welcomed = False
        self.closed = False
        self.held: list[tuple[bytes | None, bytes]] = []  # pushes before the welcome
        self.early: list[list] = []  # requests sent before the welcome
        self.committer: concurrent.futures.ThreadPoolExecutor | None = None
        self.resolving: tuple[int, concurrent.futures.Future] | None = None  # asked
        self.txn: TransactionMetaData | None = None  # begun on the storage
        self.voted = False  # self.txn voted: FINISH may come
        # (request id, txn, conflict, merges so far, timeout) while the client merges
        self.merging: tuple[int, _Commit, _MergeWanted, int, asyncio.TimerHandle] | None = None
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

    def ask_merge(self, request_id: int, wanted: _MergeWanted) -> bytes | None:
        """Ask the client to merge a write conflict and wait for its answer (in the
        commit thread, the storage's commit lock held); None: not merged."""
        answer: concurrent.futures.Future = concurrent.futures.Future()
        self.resolving = (request_id, answer)
        if self.closed:
            return None
        self.loop.call_soon_threadsafe(self.send, [
            p.RESOLVE, request_id, wanted.oid, wanted.committed, wanted.old, *wanted.states])
        try:
            merged = answer.result(self.server.resolve_timeout)
        except concurrent.futures.TimeoutError:
            log.warning("%s did not answer a conflict in time", self.peer)
            merged = None
        finally:
            self.resolving = None
        return merged if type(merged) is bytes else None

    def resolved(self, request_id: int | None, data: Any) -> None:
        """The client's merge (None for every request: the connection is gone or the
        answer is late): the vote goes on, in this thread or in the commit thread."""
        if request_id is None:
            self.questions.clear()
        elif self.questions:
            question = self.questions.popleft()
            if question[0] == "ahead":
                guess = question[1]
                guess[1] = data if type(data) is bytes else None
                merging = self.merging
                if merging is not None \
                        and merging[1].ahead.get(merging[2].oid) is guess:  # awaited
                    self.merging = None
                    merging[4].cancel()
                    self.continue_vote(merging[0], merging[1], merging[3])
                return
        merging = self.merging
        if merging is not None and request_id in (None, merging[0]):
            self.merging = None
            request_id, txn, wanted, merges, timer = merging
            timer.cancel()
            if data is None and not self.closed:
                log.debug("%s did not merge oid %s", self.peer, wanted.oid.hex())
            txn.merges[wanted.oid, wanted.committed] = data if type(data) is bytes else None
            self.continue_vote(request_id, txn, merges)
            return
        waiting = self.resolving
        if waiting is not None and request_id in (None, waiting[0]) \
                and not waiting[1].done():
            waiting[1].set_result(data)

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

    def serialize(self, request_id: int, method: str, args: list) -> None:
        """COMMIT and PACK on a storage in this process: queued for their turn as the
        storage's one writer (see :meth:`_Served.next_writer`)."""
        if self.server.stopping and method == p.COMMIT:
            self.send([p.ERROR, request_id, "StorageError", "the server is stopping", {}])
            return
        served = self.served
        if method == p.COMMIT:
            self.commit_jobs += 1
            self.ahead = {}
        served.waiting.append((self, request_id, method, args))
        writer = served.writer
        if len(served.waiting) == 1 and writer is not None and writer.voted:
            served.ask_ahead(writer, writer.txn)  # the next one: asked while it finishes
        served.next_writer()

    def replied(self, request_id: int, method: str, result: Any = None,
                error: BaseException | None = None) -> None:
        """Answer a queued COMMIT or PACK."""
        done = self.loop.create_future()
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)
        self.answer(request_id, method, done)

    def start_commit(self, request_id: int, args: list) -> None:
        """This session's turn as the writer: begin and vote (in the event loop)."""
        try:
            txn = self.begin_commit(*args)
        except Exception as exc:
            self.replied(request_id, p.COMMIT, error=exc)
            return
        self.continue_vote(request_id, txn, 0)

    def continue_vote(self, request_id: int, txn: _Commit, merges: int) -> None:
        """Vote; on a conflict the client must merge, ask it and return (its answer, in
        :meth:`resolved`, comes back here); reply once voted or failed."""
        while True:
            try:
                wanted = self.vote(txn)
            except Exception as exc:  # aborted: the next writer has begun
                self.replied(request_id, p.COMMIT, error=exc)
                return
            if wanted is None:
                self.tell_merged(request_id, txn)
                if txn.finish:  # the lock released now, not a round trip later
                    try:
                        result = self.finish_voted(request_id)
                    except Exception as exc:
                        self.replied(request_id, p.COMMIT, error=exc)
                        return
                    self.replied(request_id, p.COMMIT, result)
                    return
                self.replied(request_id, p.COMMIT)
                self.served.ask_ahead(self, txn)
                return
            merges += 1
            if merges > _MAX_MERGES:
                self.abort_commit()
                self.replied(request_id, p.COMMIT, error=errors.ConflictError(
                    "conflicts kept coming while resolving them"))
                return
            if self.closed:
                txn.merges[wanted.oid, wanted.committed] = None  # fails, aborts
                continue
            timer = self.loop.call_later(self.server.resolve_timeout, self.fail,
                                         "no answer to a conflict in time")
            self.merging = (request_id, txn, wanted, merges, timer)
            guess = txn.ahead.get(wanted.oid)
            if guess is not None and guess[1] is _PENDING and guess[0] == wanted.states[0]:
                return  # asked ahead with these records: its answer goes on (resolved)
            self.questions.append(("vote",))
            self.send([p.RESOLVE, request_id, wanted.oid, wanted.committed, wanted.old,
                       *wanted.states])
            return

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
        if method == p.FINISH or result is _REPLIED:
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
            "feeds": True, "load_ahead": True, "server": "amphora"}])
        self.welcomed = True
        held, self.held = self.held, []
        for tid, frame in held:
            if tid is None or tid > last:
                self.write(frame)
        early, self.early = self.early, []
        self.dispatch_all(early)

    # -- requests (in a storage thread) ----------------------------------------------
    def do_load_before(self, request_id: int, oid: bytes, before: bytes) -> Any:
        found = self.served.storage.loadBefore(_check_oid(oid), _check_oid(before, "a tid"))
        return None if found is None else list(found)

    def do_load_many(self, request_id: int, oids: list, before: bytes) -> Any:
        found = self.served.storage.load_many([_check_oid(oid) for oid in oids],
                                              _check_oid(before, "a tid"))
        return [[oid, data, start, end] for oid, (data, start, end) in found.items()]

    def do_load_ahead(self, request_id: int, oids: list, before: bytes, limit: int) -> list:
        """``load_many(oids, before)``, then the records those refer to, breadth first, up
        to ``limit`` records in all: each exactly what ``loadBefore(oid, before)`` gives.
        The last element of each says whether records it refers to may be left out."""
        before = _check_oid(before, "a tid")
        limit = max(1, min(int(limit), _AHEAD_LIMIT))
        storage = self.served.storage
        references_of = self.served.scanned.of
        level = storage.load_many([_check_oid(oid) for oid in oids[:limit]], before)
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
        return self.served.storage.loadSerial(_check_oid(oid), _check_oid(serial, "a tid"))

    def do_history(self, request_id: int, oid: bytes, size: int | None) -> Any:
        entries = self.served.storage.history(_check_oid(oid), size)
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
        after = _check_oid(after, "a tid")
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

    def do_commit(self, request_id: int, *args: Any) -> Any:
        """A whole commit up to its vote (and its finish, when asked), in the client's
        commit thread."""
        txn = self.begin_commit(*args)
        for _ in range(_MAX_MERGES):
            wanted = self.vote(txn)
            if wanted is None:
                self.tell_merged(request_id, txn)
                return self.finish_voted(request_id) if txn.finish else None
            txn.merges[wanted.oid, wanted.committed] = self.ask_merge(request_id, wanted)
        self.abort_commit()
        raise errors.ConflictError("conflicts kept coming while resolving them")

    def begin_commit(self, meta: list, tid: bytes | None, records: dict, serials: dict,
                     checks: dict, finish: bool = False) -> _Commit:
        storage = self.served.storage
        if self.txn is not None:  # a commit the client gave up on
            storage.tpc_abort(self.txn)
            self.txn = None
        self.voted = False
        user, description, extension = meta
        txn = _Commit(user, description, extension, records, self.ahead, finish is True)
        self.ahead = {}
        if tid is None:
            storage.tpc_begin(txn)
        else:
            storage.tpc_begin(txn, _check_oid(tid, "a tid"))
        self.txn = txn
        try:
            storage.store_many(records, serials, txn)
            for oid, serial in checks.items():
                storage.checkCurrentSerialInTransaction(oid, serial, txn)
        except BaseException:
            self.abort_commit()
            raise
        txn.set_data(self, (user, description, extension, list(records)))
        return txn

    def vote(self, txn: _Commit) -> _MergeWanted | None:
        """Vote; the conflict the client must merge first, if any (the vote undid what
        it did and is made again with the merge). Other failures abort."""
        try:
            self.served.storage.tpc_vote(txn)
        except _MergeWanted as wanted:
            return wanted
        except BaseException:
            self.abort_commit()
            raise
        self.voted = True
        return None

    def tell_merged(self, request_id: int, txn: _Commit) -> None:
        """Tell the client of commit ``request_id``, voted, which of its records were
        merged here and what is stored instead (before the commit's reply)."""
        if not txn.told:
            return
        send = self.send if self.served.inline else \
            lambda message: self.loop.call_soon_threadsafe(self.send, message)
        for oid, data in txn.told.items():
            send([p.MERGED, request_id, oid, data])

    def abort_commit(self) -> None:
        txn, self.txn = self.txn, None
        self.voted = False
        try:
            if txn is not None:
                self.served.storage.tpc_abort(txn)
        finally:
            self.unlock()

    def unlock(self) -> None:
        """Let the next writer in, when commits are made in the event loop."""
        served = self.served
        if served is not None and served.writer is self:
            served.writer = None
            served.next_writer()

    def do_finish(self, request_id: int) -> bytes:
        txn = self.txn
        if txn is None or not self.voted:
            raise errors.StorageTransactionError("no voted transaction to finish")
        self.voted = False
        served = self.served
        user, description, extension, oids = txn.data(self)
        # in the event loop (commits made there): pushed and answered before the next
        # writer begins
        call = self.loop.call_soon_threadsafe if not served.inline else _now

        small = {}  # pushed with the commit: a client's next load of them is local
        for oid in oids if len(served.sessions) > 1 else ():
            data = txn.final(oid)
            if len(data) <= _PUSH_RECORD:
                small[oid] = data
                if len(small) == _PUSH_RECORDS:
                    break

        def finished(tid: bytes) -> None:  # under the storage's commit lock
            payload = {"tid": tid, "oids": oids, "user": user, "description": description,
                       "extension": extension, "records": small}
            call(served.committed, self, request_id, payload)
        try:
            return served.storage.tpc_finish(txn, finished)
        finally:
            self.txn = None
            self.unlock()

    def finish_voted(self, request_id: int) -> object:
        """Finish the commit just voted, for a COMMIT with ``finish`` (the client's only
        data manager: a successful vote is always followed by its finish): the same
        finish as FINISH's, whose reply, the tid, is the commit request's."""
        self.do_finish(request_id)
        return _REPLIED

    def do_abort(self, request_id: int) -> None:
        merging, self.merging = self.merging, None
        self.abort_commit()
        if merging is not None:  # the commit asked about is over
            merging[4].cancel()
            self.replied(merging[0], p.COMMIT, error=errors.StorageTransactionError(
                "the commit was aborted while its conflict was being merged"))

    def do_pack(self, request_id: int, pack_time: float, gc: bool) -> None:
        storage = self.served.storage
        from amphora.storage.base import pack_tid
        storage.pack(pack_time, references, gc=gc)
        self.served.packed_to = max(self.served.packed_to, pack_tid(pack_time))


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
        self.served: dict[str, _Served] = {}
        self.sessions: set[_Session] = set()
        self.cleanups: set[asyncio.Task] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._listener: asyncio.AbstractServer | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._idle: asyncio.Event | None = None  # set by stop() when no commit is under way
        self.unsent: list[_Session] = []  # sessions with frames to send (see flush_all)
        self.receiving = False  # in a session's data_received: flushed at its end
        self._flush_soon = False

    def queue_flush(self, session: _Session) -> None:
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
    async def acquire(self, name: str, session: _Session) -> _Served:
        if name and not _NAME.match(name):
            raise errors.StorageError(
                f"bad storage name {name!r}: a name is 1 to 100 letters, digits, '.', '_' "
                "and '-', and starts with a letter or a digit")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            served = self.served.get(name)
            if served is None:
                storage = await self.loop.run_in_executor(self.pool, self.open_storage, name)
                served = self.served[name] = _Served(self, name, storage)
            served.sessions.add(session)
            return served

    async def release(self, served: _Served) -> None:
        if self.shared and not self.stopping:
            return
        lock = self._locks.setdefault(served.name, asyncio.Lock())
        async with lock:
            if served.sessions or self.served.get(served.name) is not served:
                return
            del self.served[served.name]
            served.watcher.cancel()
            await self.loop.run_in_executor(self.pool, served.storage.close)

    def changes_since(self, served: _Served, since: Any) -> tuple[bytes, list | None]:
        """``(last tid, [[tid, oids], ...] after ``since`` up to it)``; None instead of
        the list when they cannot be known exactly (packed away, another database,
        too many)."""
        storage = served.storage
        last = storage.lastTransaction()
        if since is None:
            return last, []
        since = _check_oid(since, "a tid")
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
            lambda: _Session(self), host, port, ssl=self.ssl_context)
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
            server.served[""] = _Served(server, "", served_storage)
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
