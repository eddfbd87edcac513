"""The client storage: a storage whose records live on an ``amphora serve`` server.

``ClientStorage(host, port)`` (URI ``amphora://host:port[/name]``, ``amphoras://`` for
TLS) is a storage like any other: ``amphora.DB(client)`` and ``ZODB.DB(client)`` work.

Guarantees:

- Invalidations before visibility: the server pushes every transaction (tid and oids) in
  commit order; this client reports each to its database (``wrapper.invalidate``) before
  ``lastTransaction()`` shows it. Its own commits are reported (``func(tid)`` of
  ``tpc_finish``) at their place in the same order. ``sync()`` (a connection calls it at
  every transaction start) is a round trip after which every transaction committed
  before it was sent is known; with ``server_sync=False`` it sends nothing, and a
  transaction starts from what the server has pushed so far (ZEO's default).
- A record cache (:mod:`amphora.storage.recordcache`; ``record_cache_bytes``, 64 MiB by
  default) shared by every thread and connection of the client, as ZEO's client cache:
  a load it answers asks nothing of the server. It holds what loads brought, what the
  server read ahead along references with them (LOAD_AHEAD), the records of this
  client's commits (when a database is registered) and the small records (up to 512
  bytes, 32 per commit) that come with the push of another client's commit. Each push
  closes the records its commit replaced; a reconnection that cannot enumerate what
  changed, or a pack, empties it.
- Never stale after a reconnection: the client tells the server the last tid it knew; the
  server sends the transactions committed since (the client invalidates exactly those),
  or says it cannot know (packed away, another database, too many), and the client then
  flushes its database's caches (``wrapper.invalidateCache()``).
- Change feeds: :meth:`ClientStorage.transaction_log` and
  :meth:`ClientStorage.packed_through` are answered from the served storage;
  :meth:`ClientStorage.poll` waits for the server's push of a commit, so a waiting
  ``db.changes()`` sends nothing until there is something to read.
- Searches: when the served storage keeps a JSON mirror, so does this client
  (``supports_mirror``): queries, text queries and the mirror's management are requests
  answered by the served storage (see :mod:`amphora.storage.client.search`).
- Undo: when the served storage undoes (``supports_undo``, from the server's welcome),
  ``undoLog``/``undoInfo`` page through its undo log and ``undo`` names the transaction
  to undo in the commit, where the server undoes it (ZODB's semantics: see
  :mod:`amphora.storage.undo`; an object changed since is merged here, from the records
  the server sends with the undo's oids, else ``UndoError``).
- Blobs: when the served storage keeps blobs (``supports_blobs``), ``storeBlob`` streams
  the file to the server in chunks (kept here until the commit ends, and sent again if
  the connection was lost meanwhile) and ``loadBlob`` fetches a committed file in chunks
  into the blob cache (``blob_cache_dir``, up to ``blob_cache_size`` bytes: see
  :mod:`amphora.storage.client.blobcache`); neither side holds a whole file in memory.
- Conflicts are resolved here, not on the server: while a commit votes, the server sends
  each write conflict with the two states (committed meanwhile, and read), this client
  merges them (``_p_resolveConflict``) and answers; the vote goes on with the merged
  record, the server's commit lock held, so a hot object is never sent again. The
  exception: classes the server merges from the records' opcodes (``BTrees.Length``,
  see :mod:`amphora.symbolic`); it tells this client what it stored (MERGED), and the
  record is kept as for a push.

One I/O thread per process runs an asyncio loop for the sockets of all client storages:
requests from any thread are pipelined on the storage's one connection (without TLS the
calling thread writes its request to the socket itself, sparing a hand-off to the I/O
thread); replies, read by the I/O thread, are matched by request id. While the server is
unreachable the client reconnects with exponential backoff; calls wait up to
``wait_timeout`` seconds for it and then raise :class:`ClientDisconnected`, which is a
``TransientError`` (a ``transaction`` retry loop retries). A commit whose finish was sent
but not answered when the connection broke raises ClientDisconnected from ``tpc_finish``
(from ``tpc_vote`` for a commit finished in its vote, see :meth:`ClientStorage._vote`):
it may or may not have committed (the next connection's invalidations tell).

After a fork, a client storage copied into the child lets go of the parent's connection
without a byte sent (at the fork) and, at its first use in the child, starts the child's
own I/O thread and connects as after a lost connection: the server sends what changed
since the last transaction the parent had heard of. The parent's connection, requests,
oids reserved and commit in progress stay the parent's.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import socket
import ssl
import threading
from typing import Any, Callable, Iterable, Iterator

from amphora import errors
from amphora.errors import (ClientDisconnected, ConflictError, InvalidURIError,
                            ReadConflictError, StorageError)
from amphora.server import protocol as p
from amphora.storage import _fork
from amphora.storage.client.search import RemoteMirror
from amphora.storage.base import DataRecord, StorageBase, TransactionRecord, oids_to_keep
from amphora.storage.blobs import _move
from amphora.storage.client.blobcache import BlobCache
from amphora.storage.client.cachefile import read_cache_file, write_cache_file
from amphora.storage.recordcache import CachedRecordsMixin
from amphora.storage.undo import UNDO_PENDING, UndoMixin, undo_tid
from amphora.storage.client.wire import AuthenticationError, Protocol, io_loop, speaks_tls
from amphora.utils import p64, u64, z64

__all__ = ["ClientStorage", "ClientDisconnected"]

log = logging.getLogger("amphora.client")

_OID_BLOCK = 32          # oids first asked for at once ...
_OID_BLOCK_MAX = 4096    # ... doubling up to this
_ITERATE_PAGE = 100      # transactions per iterator round trip
_MAX_RESOLUTIONS = 1000  # conflicts resolved in one vote before giving up
_AHEAD = 2000            # records read ahead per round trip
_BLOB_CHUNK = 1024 * 1024  # bytes of a blob file per request
_BLOB_WINDOW = 8           # blob chunks in flight at once
_BLOB_CACHE_SIZE = 1024 ** 3  # the blob cache's default size
_UNDO_PAGE = 100         # undo log entries per round trip


class ClientStorage(CachedRecordsMixin, RemoteMirror, UndoMixin, StorageBase):
    """A storage served by ``amphora serve`` at ``host:port`` (see the module docstring).

    ``storage`` names the storage on a server that serves one per name. ``token`` or
    ``token_file``: the server's secret. ``tls``: connect with TLS, checking the server's
    certificate against ``ca_file`` (default: the system's authorities).
    ``wait_timeout``: seconds a call waits for an unreachable server.
    ``blob_cache_dir``: where committed blob files fetched are kept (default: a temporary
    directory removed at close), up to ``blob_cache_size`` bytes.
    ``record_cache_bytes``: the size of the record cache (default 64 MiB; 0: none; a URI
    takes it too: ``amphora://host:port?record_cache_bytes=N``). ``cache_file``: a file
    the record cache is written to at close and read back at the next start, kept if the
    server can tell what changed since (see :mod:`amphora.storage.client.cachefile`).
    """

    supports_undo = False  # the served storage's, once welcomed
    supports_blobs = False  # the served storage's, once welcomed
    no_blobs_reason = "the server keeps no blobs"
    is_remote = True
    pack_uses_referencesf = False  # the server reads references itself
    #: ask the server for the records that those loaded refer to (LOAD_AHEAD), up to this
    #: many per round trip, for the record cache; 0 (False) turns read-ahead off, as
    #: over sealed records, whose references the server cannot see
    read_ahead = _AHEAD

    def __init__(self, host: str = "127.0.0.1", port: int = 8100, storage: str = "",
                 token: str | None = None, token_file: str | None = None, tls: bool = False,
                 ca_file: str | None = None, read_only: bool = False,
                 wait_timeout: float = 30.0, name: str | None = None,
                 server_sync: bool = True, blob_cache_dir: str | None = None,
                 blob_cache_size: int = _BLOB_CACHE_SIZE, record_cache_bytes: int | None = None,
                 cache_file: str | None = None):
        if not isinstance(server_sync, bool):
            raise InvalidURIError(f"server_sync must be true or false, not {server_sync!r}")
        if record_cache_bytes is not None and (
                isinstance(record_cache_bytes, bool) or not isinstance(record_cache_bytes, int)
                or record_cache_bytes < 0):
            raise InvalidURIError(f"record_cache_bytes is a number of bytes, not "
                                  f"{record_cache_bytes!r}")
        if cache_file is not None and (not isinstance(cache_file, str) or not cache_file):
            raise InvalidURIError(f"cache_file is a file name, not {cache_file!r}")
        super().__init__(name or f"{host}:{port}/{storage}", read_only)
        self._init_record_cache(record_cache_bytes)
        self._cache_file = cache_file
        self._cache_file_pid = os.getpid()  # the process that writes it (not a child)
        #: the tid the records read from the cache file are valid for, until verified
        self._cache_file_tid: bytes | None = None
        if cache_file is not None:
            self._read_cache_file(cache_file)
        if token is None and token_file is not None:
            with open(token_file, encoding="utf-8") as file:
                token = file.read().strip()
        self._host, self._port, self._storage_name = host, int(port), storage
        self._token = token
        self._ssl: ssl.SSLContext | None = None
        if tls:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:  # the message alone names no file
                raise StorageError(f"ca_file {ca_file}: cannot read it as certificates "
                                   f"({getattr(exc, 'strerror', None) or exc})") from exc
        self.wait_timeout = wait_timeout
        self._server_sync = server_sync
        if not isinstance(blob_cache_size, int) or blob_cache_size < 0:
            raise InvalidURIError(f"blob_cache_size is a number of bytes, not "
                                  f"{blob_cache_size!r}")
        self._blob_cache_dir, self._blob_cache_size = blob_cache_dir, blob_cache_size
        self._blob_cache: BlobCache | None = None  # made at the first use of blobs
        self._blob_lock = threading.Lock()
        self._undos: list[bytes] = []  # the tids this commit undoes
        self._undone: list[bytes] = []  # the oids those undos write
        self._undo_merges: list[list] = []  # [oid, committed, merged] made for them
        #: oid -> [its file (ours until the commit ends), size, connection, upload id]
        self._blob_files: dict[bytes, list] = {}
        self._uploads = itertools.count(1)
        self._ltid = z64
        self._welcomed_once = False
        self._server_read_only = False
        # request id -> (its future, its handler, what answers the server's questions)
        self._requests: dict[int, tuple[concurrent.futures.Future, Callable | None,
                                        Callable | None]] = {}
        self._ids = itertools.count(1)  # next() is atomic: no lock needed
        self._requests_lock = threading.Lock()
        self._oid_lock = threading.Lock()
        self._connection: Protocol | None = None
        self._ready = threading.Event()  # connected (set also when closed)
        self._lost = asyncio.Event()       # the connection was lost (in the I/O thread)
        self._oids: list[bytes] = []
        self._oid_block = _OID_BLOCK
        self._voted = False
        self._finished_tid: bytes | None = None  # the commit finished in its vote
        self._feeds = False  # the server answers TRANSACTION_LOG and PACKED_THROUGH
        self._load_ahead = False  # the server answers LOAD_AHEAD
        self._pack_reachable = False  # PACK takes the objects to keep
        #: oid -> the record the commit in flight stores instead of ours (merged)
        self._final: dict[bytes, bytes] = {}
        self._advanced = threading.Condition()  # notified whenever _ltid moves
        self._marks = threading.local()  # per thread: _ltid when it last read the log
        self._loop: asyncio.AbstractEventLoop | None = io_loop()
        self._reconnector: concurrent.futures.Future | None = None
        self._forks = _fork.forks  # != _fork.forks: copied into a child, not used there yet
        self._restart_lock = threading.Lock()
        _fork.track(self)
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result()
        self._reconnector = asyncio.run_coroutine_threadsafe(self._keep_connected(), self._loop)

    # -- connection (in the I/O thread) ---------------------------------------------
    async def _connect(self) -> None:
        """Connect and shake hands; raises if that fails."""
        loop = self._loop
        try:
            if self._ssl is None:
                sock = await loop.run_in_executor(None, socket.create_connection,
                                                  (self._host, self._port), self.wait_timeout)
                _, proto = await loop.create_connection(lambda: Protocol(self, sock),
                                                        sock=sock)
            else:
                _, proto = await asyncio.wait_for(loop.create_connection(
                    lambda: Protocol(self), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host), self.wait_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ClientDisconnected(
                f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        proto.transport.write(p.encode([p.HELLO, {
            "protocol": p.VERSION, "token": self._token, "storage": self._storage_name,
            "last_tid": self._ltid if self._welcomed_once else self._cache_file_tid}]))
        try:
            await asyncio.wait_for(asyncio.shield(proto.welcome), self.wait_timeout)
        except ClientDisconnected:
            proto.transport.close()
            if self._ssl is None and not self._welcomed_once and await loop.run_in_executor(
                    None, speaks_tls, self._host, self._port, self.wait_timeout):
                raise AuthenticationError(
                    "the server speaks TLS: connect with amphoras:// (and ca_file= to trust "
                    "a private authority)") from None
            raise
        except BaseException:
            proto.transport.close()
            raise
        if proto.lost:
            raise ClientDisconnected("the connection closed")
        self._connection = proto
        self._lost.clear()
        self._ready.set()

    def _welcomed(self, welcome: dict) -> None:
        """The handshake's answer: catch up with what changed while away."""
        last = welcome["last_tid"]
        if not self._welcomed_once:
            self._welcomed_once = True
            self._ltid = last
            self.__name__ = welcome.get("name") or self.__name__
            self._server_read_only = bool(welcome.get("read_only"))
            self.supports_history = bool(welcome.get("supports_history"))
            self.supports_pack = bool(welcome.get("supports_pack"))
            self._feeds = bool(welcome.get("feeds"))
            self._load_ahead = bool(welcome.get("load_ahead"))
            self._pack_reachable = bool(welcome.get("pack_reachable"))
            self.supports_mirror = bool(welcome.get("mirror"))  # searches: RemoteMirror
            self.supports_undo = bool(welcome.get("undo"))
            self.supports_blobs = bool(welcome.get("blobs"))
            if self.supports_blobs:
                _provide_zodb_blob_interfaces(self)
            else:
                self.no_blobs_reason = str(welcome.get("no_blobs_reason")
                                           or "the server predates blobs")
            if self._cache_file_tid is not None:
                self._verify_cache_file(welcome.get("changes"))
            return
        wrapper = self._wrapper
        changes = welcome.get("changes")
        if changes is None:
            log.info("reconnected to %s: changes cannot be enumerated, caches flushed",
                     self.__name__)
            self._records_unknown()
            if wrapper is not None:
                wrapper.invalidateCache()
        else:
            for tid, oids in changes:
                if tid > self._ltid:
                    self._records_invalidated(tid, oids)
                    if wrapper is not None:
                        wrapper.invalidate(tid, oids)
        self._set_ltid(last)

    # -- the record cache's file (see amphora.storage.client.cachefile) ---------------
    def _read_cache_file(self, path: str) -> None:
        """Fill the record cache from ``path``; the handshake names its tid, and
        :meth:`_verify_cache_file` keeps or drops the records by the answer."""
        found = read_cache_file(path)
        if found is None:
            return
        tid, records = found
        cache = self.record_cache
        cache.put_many(records, cache.generation())
        self._cache_file_tid = tid

    def _verify_cache_file(self, changes: list | None) -> None:
        """The server's answer to the cache file's tid: the transactions committed
        since (their records are closed), or None: the records are dropped."""
        since, self._cache_file_tid = self._cache_file_tid, None
        if changes is None:
            log.info("%s: the record cache file is outdated (the server cannot tell what "
                     "changed since), dropped", self.__name__)
            self._records_unknown()
            return
        for tid, oids in changes:
            if tid > since:
                self._records_invalidated(tid, oids)

    def _write_cache_file(self) -> None:
        """At close, in the process that opened the file: the records, valid as of the
        last transaction heard of (no push can come any more)."""
        if self._cache_file is None or os.getpid() != self._cache_file_pid \
                or not self._welcomed_once:
            return
        write_cache_file(self._cache_file, self._ltid,
                         [(oid, data, start, end) for oid, (data, start, end)
                          in self.record_cache.items()])

    def _set_ltid(self, tid: bytes) -> None:
        """``lastTransaction()`` is ``tid`` now: wake :meth:`poll`."""
        with self._advanced:
            self._ltid = tid
            self._advanced.notify_all()

    async def _keep_connected(self) -> None:
        """Reconnect, with exponential backoff, whenever the connection is lost."""
        while not self._closed:
            await self._lost.wait()
            delay = 0.05
            while not self._closed:
                try:
                    await self._connect()
                    log.info("reconnected to %s:%s", self._host, self._port)
                    break
                except (StorageError, OSError) as exc:
                    log.debug("reconnecting to %s:%s failed: %s", self._host, self._port, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

    def _connection_lost(self, proto: Protocol) -> None:
        if proto is not self._connection:
            return
        self._ready.clear()
        self._connection = None
        self._lost.set()
        with self._requests_lock:  # no request is registered on the lost connection after
            requests, self._requests = self._requests, {}
        for future, _, _ in requests.values():
            if not future.done():
                future.set_exception(ClientDisconnected("the connection to the server broke"))

    def _replied(self, request_id: int, result: Any, error: Exception | None) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return
        future, handler, _ = entry
        if error is not None:
            future.set_exception(error)
            return
        if handler is not None:
            try:
                handler(result)
            except BaseException as exc:  # not the server's fault: still a result
                log.exception("a commit callback failed")
                future.set_exception(exc)
                return
        future.set_result(result)

    def _pushed(self, kind: str, payload: Any) -> None:
        wrapper = self._wrapper
        if kind == p.PUSH_COMMIT:
            tid = payload["tid"]
            if tid <= self._ltid:
                return
            self._keep_latest(tid, payload["oids"], payload.get("records") or {})
            if wrapper is not None:
                wrapper.invalidate(tid, payload["oids"])
            self._set_ltid(tid)
        elif kind == p.PUSH_RESET:
            self._records_unknown()
            if wrapper is not None:
                wrapper.invalidateCache()

    def _keep_latest(self, tid: bytes, oids: Iterable[bytes], records: dict) -> None:
        """Another client's transaction ``tid`` stored ``oids``; ``records`` (pushed with
        it) has some of their records, kept in the record cache as current. Called in
        commit order, before ``_ltid`` moves to ``tid``."""
        kept = {oid: data for oid, data in records.items() if type(data) is bytes}
        self._records_invalidated(tid, list(oids), kept)

    def _merged(self, request_id: int, oid: bytes, data: bytes) -> None:
        """The server merged a conflict of commit ``request_id`` itself: it stores
        ``data`` for ``oid``, which the database reloads (in the I/O thread)."""
        if request_id in self._requests and type(data) is bytes:
            self._store_instead(oid, data)

    def _store_instead(self, oid: bytes, data: bytes) -> None:
        """The commit in flight stores the merged record ``data`` for ``oid``: kept once
        it is committed; the database reloads the object."""
        self._final[oid] = data
        if oid not in self._resolved:
            self._resolved.append(oid)

    def _committed_here(self, tid: bytes, report: Callable[[], None]) -> None:
        """Our commit ``tid`` is durable (in the I/O thread, in commit order): tell the
        record cache what it stored (the records merged for it where there were
        conflicts; an undo's records, made by the server, are only invalidated),
        ``report()``, then show the tid."""
        if self._undone:
            self._records_invalidated(tid, self._undone)
        final = self._final
        self._records_committed(tid, {oid: final.get(oid, data)
                                      for oid, data in self._stores.items()})
        self._cache_committed_blobs(tid)
        try:
            report()
        finally:
            if tid > self._ltid:
                self._set_ltid(tid)

    def _asked(self, request_id: int, question: list) -> None:
        """The server asks about request ``request_id`` (a commit's conflict): answered
        here, in the I/O thread, because the server holds its commit lock meanwhile and a
        hand-off to the waiting thread and back would lengthen that."""
        entry = self._requests.get(request_id)
        answer = None
        if entry is not None and entry[2] is not None:
            try:
                answer = entry[2](*question)
            except Exception:  # a merge that fails is a conflict, never a broken connection
                log.exception("answering the server failed")
        connection = self._connection
        if connection is not None and not connection.lost:
            frame = p.encode([p.RESOLVED, request_id, answer])
            if connection.sock is None:
                connection.transport.write(frame)
                return
            try:
                connection.write(frame, self.wait_timeout)
            except OSError as exc:  # the transport sees the connection end too
                log.debug("answering the server failed: %s", exc)

    def _send(self, request_id: int, method: str, args: list,
              future: concurrent.futures.Future, handler: Callable | None,
              questions: Callable | None) -> None:
        connection = self._connection
        if connection is None or connection.lost:
            future.set_exception(ClientDisconnected("not connected to the server"))
            return
        self._requests[request_id] = (future, handler, questions)
        connection.transport.write(p.encode([p.REQUEST, request_id, method, args]))

    # -- calls (in any thread) -----------------------------------------------------------
    def _call(self, method: str, *args: Any, handler: Callable | None = None,
              questions: Callable[..., Any] | None = None) -> Any:
        """Send one request and wait for its answer; ``handler(result)`` runs in the I/O
        thread, in order with the pushes, before the caller gets the result;
        ``questions(*question)`` answers, in the I/O thread, what the server asks first."""
        return self._submit(method, *args, handler=handler, questions=questions).result()

    def _submit(self, method: str, *args: Any, handler: Callable | None = None,
                questions: Callable[..., Any] | None = None) -> concurrent.futures.Future:
        """Send one request; its answer's future (see :meth:`_call`)."""
        if self._forks != _fork.forks:
            self._restart_after_fork()
        if self._closed:
            raise StorageError(f"{self.__name__} is closed")
        if not self._ready.is_set() and not self._ready.wait(self.wait_timeout):
            raise ClientDisconnected(
                f"{self._host}:{self._port} unreachable for {self.wait_timeout} s")
        future: concurrent.futures.Future = concurrent.futures.Future()
        request_id = next(self._ids)
        connection = self._connection
        if connection is None or connection.sock is None:
            self._loop.call_soon_threadsafe(self._send, request_id, method, list(args),
                                            future, handler, questions)
            return future
        with self._requests_lock:
            if connection.lost:
                raise ClientDisconnected("not connected to the server")
            self._requests[request_id] = (future, handler, questions)
        try:
            connection.write(p.encode([p.REQUEST, request_id, method, list(args)]),
                             self.wait_timeout)
        except OSError as exc:
            self._requests.pop(request_id, None)
            raise ClientDisconnected(f"sending to the server failed: {exc}") from exc
        return future

    # -- reading --------------------------------------------------------------------
    def lastTransaction(self) -> bytes:
        return self._ltid

    def isReadOnly(self) -> bool:
        return self._read_only or self._server_read_only

    def sync(self) -> None:
        """A round trip: afterwards every transaction committed before it is known.

        With ``server_sync=False`` (ZEO's default), nothing: what is known is what the
        server has pushed so far, which a transaction starting now may miss if it was
        committed in the last moments (a commit of this client is always known)."""
        if self._server_sync:
            self._call(p.SYNC)

    def _load_before(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        """``loadBefore`` from the server (the record cache's misses, see
        :mod:`amphora.storage.recordcache`): one round trip that also brings the records
        this one refers to, and theirs (up to ``read_ahead``), into the record cache:
        walking a BTree asks for them next."""
        if self._load_ahead and self.read_ahead:
            found = self._load_ahead_of([oid], tid).get(oid)
            if found is not None:
                return found
        found = self._call(p.LOAD_BEFORE, oid, tid)
        return None if found is None else tuple(found)

    def _load_ahead_of(self, oids: list[bytes], tid: bytes
                       ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        """The records of ``oids`` before ``tid`` (one LOAD_AHEAD); what the server read
        ahead with them goes to the record cache.

        Each row is what the server's ``loadBefore(oid, tid)`` returns; the cache takes one
        that is current only if it heard of no commit while the request was out (its
        generation), so a commit that replaces it later closes it as any cached record.
        A row whose references the server left out (a bucket whose values did not fit) is
        not kept: the reader asks for it, and that request brings what it refers to (kept,
        such a container would leave its items to be read a few at a time)."""
        cache = self.record_cache
        generation = cache.generation()  # before the call: see RecordCache.put
        rows = self._call(p.LOAD_AHEAD, oids, tid, int(self.read_ahead))
        asked = set(oids)
        found = {}
        ahead = []
        for oid, data, start, end, partial in rows:
            if oid in asked:
                found[oid] = (data, start, end)
            elif not partial:
                ahead.append((oid, data, start, end))
        cache.put_many(ahead, generation)
        return found

    def load_many(self, oids: Iterable[bytes], before: bytes
                  ) -> dict[bytes, tuple[bytes, bytes, bytes | None]]:
        """``loadBefore`` for many oids from the server, one round trip per 2000, with
        what they refer to read ahead into the record cache."""
        oids = list(oids)
        if not oids:
            return {}
        if not (self._load_ahead and self.read_ahead):
            return {oid: (data, start, end)
                    for oid, data, start, end in self._call(p.LOAD_MANY, oids, before)}
        found = {}
        for start in range(0, len(oids), _AHEAD):
            found.update(self._load_ahead_of(oids[start:start + _AHEAD], before))
        return found

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        return self._call(p.LOAD_SERIAL, oid, serial)

    def history(self, oid: bytes, size: int | None = 1) -> list[dict[str, Any]]:
        return self._call(p.HISTORY, oid, size)

    def iterator(self, start: bytes | None = None, stop: bytes | None = None
                 ) -> Iterator[TransactionRecord]:
        """Transactions in pages of a hundred, up to the last one committed now."""
        if stop is None:
            stop = self._call(p.LAST_TRANSACTION)
        return self._iterate(start, stop)

    def _iterate(self, start: bytes | None, stop: bytes) -> Iterator[TransactionRecord]:
        while True:
            page = self._call(p.ITERATE, start, stop, _ITERATE_PAGE)
            for tid, status, user, description, extension, records in page:
                yield TransactionRecord(tid, status, user, description, extension,
                                        [DataRecord(*record) for record in records])
            if len(page) < _ITERATE_PAGE:
                return
            start = p64(u64(page[-1][0]) + 1)

    # -- change feeds -----------------------------------------------------------------
    def transaction_log(self, after: bytes, limit: int = 100
                        ) -> list[tuple[bytes, bytes, bytes, bytes, list[bytes]]]:
        """Up to ``limit`` transactions after tid ``after``, in tid order, as ``(tid,
        user, description, extension_bytes, oids)``: one round trip, answered from the
        served storage's own ``transaction_log`` (or its iterator)."""
        self._marks.ltid = self._ltid  # a push after this wakes this thread's poll()
        if not self._feeds:  # a server that predates change feeds
            return [(txn.tid, txn.user, txn.description, txn.extension_bytes,
                     [record.oid for record in txn])
                    for txn in itertools.islice(self.iterator(p64(u64(after) + 1)), limit)]
        return [tuple(row) for row in self._call(p.TRANSACTION_LOG, after, limit)]

    def packed_through(self) -> bytes:
        """The newest tid pack removed from the served storage (``z64``: none, or the
        server cannot say): transactions up to it may be missing from the log."""
        if not self._feeds:
            return z64
        return self._call(p.PACKED_THROUGH)

    def poll(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) for the server's push of a
        commit (by any client, or by another process on the served file, which the server
        looks for ten times a second), then :meth:`sync`. True if a transaction newer
        than the one this thread last saw in :meth:`transaction_log` (else newer than
        the last known at the call) was reported. Neither spins nor sends anything
        while waiting."""
        if self._forks != _fork.forks:
            self._restart_after_fork()  # else no push could ever wake it
        mark = getattr(self._marks, "ltid", None)
        with self._advanced:
            if mark is None:
                mark = self._ltid
            self._advanced.wait_for(lambda: self._ltid > mark or self._closed, timeout)
            woke = self._ltid > mark
        if not self._closed:
            self.sync()
        return woke

    def __len__(self) -> int:
        return self._call(p.SIZE)[0]

    def getSize(self) -> int:
        return self._call(p.SIZE)[1]

    # -- writing --------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.isReadOnly():
            raise errors.ReadOnlyError(f"{self.__name__} is read-only")
        if self._closed:
            raise StorageError(f"{self.__name__} is closed")

    def new_oid(self) -> bytes:
        return self.new_oids(1)[0]

    def new_oids(self, count: int) -> list[bytes]:
        """Oids from a block asked of the server (blocks grow as they are used up)."""
        self._check_writable()
        with self._oid_lock:
            while len(self._oids) < count:
                block = max(count - len(self._oids), self._oid_block)
                self._oids.extend(self._call(p.NEW_OIDS, block))
                self._oid_block = min(self._oid_block * 2, _OID_BLOCK_MAX)
            taken, self._oids = self._oids[:count], self._oids[count:]
        return taken

    def _begin(self) -> None:
        self._voted = False
        self._finished_tid = None
        self._final = {}

    def _clear_writes(self) -> None:
        super()._clear_writes()
        self._undos, self._undone, self._undo_merges = [], [], []
        files, self._blob_files = getattr(self, "_blob_files", {}), {}
        for entry in files.values():  # a commit that did not happen: the files are ours
            try:
                os.remove(entry[0])
            except FileNotFoundError:
                pass

    def _commit_more(self) -> dict:
        """A commit's undos and blobs, for COMMIT (blob files uploaded on a connection
        that broke since are uploaded again, on this one)."""
        more: dict[str, Any] = {}
        if self._undos:
            more["undo"] = list(self._undos)
            more["undo_merges"] = list(self._undo_merges)
        if self._blob_files:
            for oid, entry in self._blob_files.items():
                if entry[2] is not self._connection or entry[2] is None:
                    self._upload(entry)
            more["blobs"] = {oid: [entry[3], entry[1]]
                             for oid, entry in self._blob_files.items()}
        return more

    # -- undo -------------------------------------------------------------------------
    def _undo_entries(self) -> Iterator[dict[str, Any]]:
        """The served storage's undo log, newest first, a page per round trip."""
        offset = 0
        while True:
            entries = self._call(p.UNDO_LOG, offset, _UNDO_PAGE)
            yield from entries
            if len(entries) < _UNDO_PAGE:
                return
            offset += len(entries)

    def undo(self, transaction_id: bytes | str, transaction: Any
             ) -> tuple[None, list[bytes]]:
        """Within the two-phase commit of ``transaction``: undo transaction
        ``transaction_id`` (an ``undoLog`` id or a tid) with this commit; returns
        ``(None, oids)``, the oids the undo writes. The undo is made on the server when
        this commit votes; :class:`~amphora.errors.UndoError` comes from ``tpc_vote``
        when a later change cannot be merged, from here when the transaction is not
        stored."""
        self._check_writable()
        if not self.supports_undo:
            raise errors.Unsupported(f"{self.__name__}: the served storage keeps no "
                                     "history: it cannot undo")
        self._check_current(transaction)
        tid = undo_tid(transaction_id)
        rows = self._call(p.UNDO_OIDS, tid)
        resolve = self._conflict_resolver()
        written = {oid: merged for oid, _, merged in self._undo_merges}
        for oid, states in rows:
            if states is None or resolve is None:
                continue  # (an unmerged change: the server's undo says UndoError)
            committed, committed_data, undone, before = states
            if oid in written:  # an earlier undo of this commit wrote it: merged with that
                committed, committed_data = UNDO_PENDING, written[oid]
            elif oid in self._undone:
                continue
            records = {committed: committed_data, tid: undone}
            merged = resolve(oid, committed, tid, before, lambda _, serial: records[serial])
            if merged is not None:
                self._undo_merges.append([oid, committed, merged])
        oids = [oid for oid, _ in rows]
        self._undos.append(tid)
        self._undone.extend(oid for oid in oids if oid not in self._undone)
        return None, oids

    # -- blobs ------------------------------------------------------------------------
    def _blobs(self) -> BlobCache:
        if not self.supports_blobs:
            raise errors.Unsupported(f"{self.__name__} keeps no blobs: "
                                     f"{self.no_blobs_reason}")
        cache = self._blob_cache
        if cache is None:
            with self._blob_lock:
                if self._blob_cache is None:
                    self._blob_cache = BlobCache(self._blob_cache_dir, self._blob_cache_size)
                cache = self._blob_cache
        return cache

    @property
    def blob_cache(self) -> BlobCache:
        """The blob cache (see :mod:`amphora.storage.client.blobcache`)."""
        return self._blobs()

    def temporaryDirectory(self) -> str:
        """Where uncommitted blob files are made (the blob cache's ``tmp/``)."""
        return self._blobs().temporary

    def storeBlob(self, oid: bytes, oldserial: bytes | None, data: bytes, blobfilename: str,
                  version: str, transaction: Any) -> None:
        """``store`` the record of a blob and stream the file ``blobfilename`` (taken:
        moved into the blob cache's ``tmp/`` until the commit ends) to the server."""
        cache = self._blobs()
        if isinstance(oldserial, str):  # some of ZODB's tests pass '\0' * 8
            oldserial = oldserial.encode("latin-1")
        self.store(oid, oldserial, data, version, transaction)
        self._keep_blob_file(oid, blobfilename, cache)

    def restoreBlob(self, oid: bytes, serial: bytes, data: bytes, blobfilename: str,
                    prev_txn: bytes | None, transaction: Any) -> None:
        """``restore`` the record of a blob with the file ``blobfilename`` (taken)."""
        cache = self._blobs()
        self.restore(oid, serial, data, "", prev_txn, transaction)
        self._keep_blob_file(oid, blobfilename, cache)

    def _keep_blob_file(self, oid: bytes, filename: str, cache: BlobCache) -> None:
        fd, kept = cache.new_file()
        os.close(fd)
        _move(filename, kept)
        previous = self._blob_files.pop(oid, None)
        if previous is not None:
            os.remove(previous[0])
        entry = self._blob_files[oid] = [kept, os.path.getsize(kept), None, None]
        try:
            self._upload(entry)
        except ClientDisconnected:  # sent again, on the next connection, by the vote
            entry[2] = None

    def _upload(self, entry: list) -> None:
        """Stream the file of ``entry`` to the server, :data:`_BLOB_WINDOW` chunks in
        flight at once; ``entry`` then names the connection and the upload."""
        connection = None
        upload = next(self._uploads)
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        with open(entry[0], "rb") as file:
            offset = 0
            while True:
                chunk = file.read(_BLOB_CHUNK)
                if not chunk and offset:
                    break
                pending.append(self._submit(p.BLOB_WRITE, upload, offset, chunk))
                if connection is None:
                    connection = self._connection  # (the request waited for one)
                offset += len(chunk)
                if len(pending) >= _BLOB_WINDOW:
                    pending.popleft().result()
                if len(chunk) < _BLOB_CHUNK:
                    break
        while pending:
            pending.popleft().result()
        if connection is None or connection is not self._connection:
            raise ClientDisconnected("the connection to the server broke during an upload")
        entry[2], entry[3] = connection, upload

    def loadBlob(self, oid: bytes, serial: bytes) -> str:
        """The name of the committed file of revision ``serial`` of ``oid``, in the blob
        cache (fetched from the server in chunks if not there; read-only). Raises what
        the served storage's ``loadBlob`` raises (:class:`~amphora.errors.
        ObjectNotFoundError`, ``BlobFileError``)."""
        cache = self._blobs()
        found = cache.hit(oid, serial)
        if found is not None:
            return found
        size, data = self._call(p.BLOB_READ, oid, serial, 0, _BLOB_CHUNK)
        fd, fetched = cache.new_file()
        try:
            try:
                os.write(fd, data)
                pending: collections.deque = collections.deque()
                offset = len(data)
                while offset < size or pending:
                    while offset < size and len(pending) < _BLOB_WINDOW:
                        pending.append((offset, self._submit(p.BLOB_READ, oid, serial,
                                                             offset, _BLOB_CHUNK)))
                        offset += _BLOB_CHUNK
                    at, future = pending.popleft()
                    total, chunk = future.result()
                    if total != size or len(chunk) != min(_BLOB_CHUNK, size - at):
                        raise StorageError(f"the blob of oid {oid.hex()} changed while "
                                           "it was fetched")
                    os.pwrite(fd, chunk, at)
            finally:
                os.close(fd)
            return cache.add(oid, serial, fetched)
        except BaseException:
            try:
                os.remove(fetched)
            except FileNotFoundError:
                pass
            raise

    def openCommittedBlobFile(self, oid: bytes, serial: bytes, blob: Any = None) -> Any:
        """The committed file of revision ``serial`` of ``oid``, open for reading (a
        ``ZODB.blob.BlobFile`` of ``blob`` when given)."""
        path = self.loadBlob(oid, serial)
        if blob is not None:
            try:
                from ZODB.blob import BlobFile
            except ImportError:
                pass
            else:
                return BlobFile(path, "r", blob)
        return open(path, "rb")

    def _cache_committed_blobs(self, tid: bytes) -> None:
        """Our commit ``tid`` is durable: its blob files become cached revisions."""
        files, self._blob_files = self._blob_files, {}
        cache = self._blob_cache
        for oid, entry in files.items():
            if cache is not None:
                cache.add(oid, tid, entry[0])

    def _vote(self) -> None:
        """Send the whole transaction, merging the conflicts the server asks about while it
        votes; a conflict reported without being asked (a served storage that cannot ask)
        is merged here and the commit sent again.

        With ``finish_with_vote`` (the transaction's only data manager), the server
        finishes the commit as soon as it voted, and its reply, the tid, comes in commit
        order: ``finish_with_vote`` is called there, as :meth:`_finish` calls ``func``.
        The commit lock is released a round trip earlier."""
        records = dict(self._stores)
        serials = dict(self._serials)
        asked: set[bytes] = set()
        then = getattr(self._transaction, "finish_with_vote", None)
        finish = then is not None

        def finished(tid: bytes) -> None:  # in the I/O thread, in commit order
            self._finished_tid = tid
            self._committed_here(tid, lambda: then(tid, list(self._resolved)))

        def merge(oid: bytes, committed: bytes, old: bytes, committed_data: bytes,
                  old_data: bytes) -> bytes | None:  # in the I/O thread; this one waits
            asked.add(oid)
            data = records.get(oid)
            resolve = self._conflict_resolver()  # the transaction's own, first
            if data is None or resolve is None:
                return None
            states = {committed: committed_data, old: old_data}
            resolved = resolve(oid, committed, old, data, lambda _, serial: states[serial])
            if resolved is not None:
                self._store_instead(oid, resolved)
            return resolved

        # Restored records (a copy's) are named only when there are some, so that plain
        # commits stay what servers before restore understand.
        restored = (sorted(self._restored),) if self._restored else ()
        more = self._commit_more()
        if more:
            restored = (sorted(self._restored), more)
        for attempt in range(_MAX_RESOLUTIONS):
            try:
                self._call(p.COMMIT, list(self._meta), self._tid, records, serials,
                           dict(self._checks), finish, *restored, questions=merge,
                           handler=finished if finish else None)
            except ReadConflictError:
                raise
            except ConflictError as exc:
                oid = exc.oid
                if oid not in records or not exc.serials:
                    raise
                committed, read = exc.serials
                data = records[oid]
                resolved = None
                resolve = self._conflict_resolver()
                if oid not in asked and resolve is not None and read != z64 \
                        and committed != z64:
                    resolved = resolve(oid, committed, read, data, self.loadSerial)
                if resolved is None:
                    raise ConflictError(oid=oid, serials=(committed, read), data=data) from None
                records[oid] = resolved
                serials[oid] = committed
                self._store_instead(oid, resolved)
                continue
            self._voted = True
            return
        raise ConflictError("conflicts kept coming while resolving them")

    def _finish(self, func: Callable[[bytes], None] | None) -> bytes:
        def finished(tid: bytes) -> None:  # in the I/O thread, in commit order
            self._committed_here(tid, lambda: func is not None and func(tid))
        self._voted = False
        if self._finished_tid is not None:  # finished in the vote, func called there
            tid, self._finished_tid = self._finished_tid, None
            return tid
        return self._call(p.FINISH, handler=finished)

    def _abort(self) -> None:
        if self._finished_tid is not None:  # committed in the vote: nothing to abort
            self._finished_tid = None
            self._voted = False
            return
        if self._voted:
            self._voted = False
            try:
                self._call(p.ABORT)
            except ClientDisconnected:
                pass  # the server aborts the commits of a client that left

    # -- management -------------------------------------------------------------------
    def pack(self, pack_time: float | bytes, referencesf: Callable | None = None,
             gc: bool = True, reachable: Iterable[bytes] | None = None,
             through: bytes | None = None) -> None:
        """Pack on the server, which finds references itself (``referencesf`` is unused)
        or is sent ``reachable``, the oids to keep, 8 bytes each (see
        :meth:`amphora.storage.base.Storage.pack`)."""
        if self.isReadOnly():
            raise errors.ReadOnlyError(f"{self.__name__} is read-only")
        pack_time = pack_time if type(pack_time) is bytes else float(pack_time)
        if reachable is not None and gc and not self._pack_reachable:
            raise errors.Unsupported(f"{self.__name__}: the server predates packs given the "
                                     "objects to keep")
        try:
            if reachable is None or not gc:
                self._call(p.PACK, pack_time, bool(gc))
            else:
                kept = oids_to_keep(reachable, through)
                self._call(p.PACK, pack_time, True, b"".join(sorted(kept)), through)
        finally:
            self._records_unknown()  # the records of what it removed are gone

    def close(self) -> None:
        """Close the connection (commits under way on the server are aborted there)."""
        if self._closed:
            return
        self._closed = True
        if self._blob_cache is not None and self._forks == _fork.forks:
            self._blob_cache.close()
        self._ready.set()  # callers waiting for a connection find it closed
        with self._advanced:
            self._advanced.notify_all()  # and pollers stop waiting
        if self._loop is None:  # a child's copy never used: nothing of its own to close
            return

        def shutdown() -> None:
            if self._reconnector is not None:
                self._reconnector.cancel()
            connection = self._connection
            if connection is not None and connection.transport is not None:
                connection.transport.close()
        done = concurrent.futures.Future()

        def run() -> None:
            try:
                shutdown()
            finally:
                done.set_result(None)
        self._loop.call_soon_threadsafe(run)
        done.result(5)
        self._write_cache_file()

    # -- after a fork -----------------------------------------------------------------
    def _forked(self, kept: list) -> None:
        """In the child, at the fork (no other thread runs): let go of the parent's
        connection without I/O and of what the parent's threads used (requests, locks,
        conditions, thread-locals, reserved oids, the commit in progress); the first call
        reconnects (:meth:`_restart_after_fork`). Records and ``_ltid`` are kept: the
        reconnection's invalidations bring them up to date."""
        connection = self._connection
        if connection is not None and connection.transport is not None:
            sock = connection.transport.get_extra_info("socket")
            if sock is not None:
                _fork.drop_descriptor(sock.fileno())
        self._connection = None
        self._loop = None
        self._reconnector = None
        self._lost = asyncio.Event()
        self._ready = threading.Event()
        if self._closed:
            self._ready.set()
        self._requests = {}
        self._requests_lock = threading.Lock()
        self._oid_lock = threading.Lock()
        self._oids = []  # the parent hands these out
        self._voted = False
        self._finished_tid = None
        self._final = {}
        self._record_cache_forked()
        self._marks = threading.local()
        self._advanced = threading.Condition()
        self._restart_lock = threading.Lock()
        self._blob_files = {}  # the parent's files: not removed here
        self._forget_commit_after_fork()

    def _restart_after_fork(self) -> None:
        """The first use in a child: this process's I/O thread, and a connection made as
        after a lost one (the handshake names the last tid known, the server sends what
        changed since). Calls wait for it as for any reconnection."""
        with self._restart_lock:
            if self._forks == _fork.forks:
                return
            if not self._closed:
                self._loop = io_loop()
                self._lost.set()  # as if the connection had just broken
                self._reconnector = asyncio.run_coroutine_threadsafe(self._keep_connected(),
                                                                     self._loop)
            self._forks = _fork.forks


def _provide_zodb_blob_interfaces(client: ClientStorage) -> None:
    """ZODB's Connection stores a blob only in a storage that *provides* ZODB's
    ``IBlobStorage``: declared on a client whose served storage keeps blobs."""
    try:
        from zope.interface import alsoProvides
        from ZODB.interfaces import IBlobStorage, IBlobStorageRestoreable
    except ImportError:
        return
    alsoProvides(client, IBlobStorage, IBlobStorageRestoreable)
