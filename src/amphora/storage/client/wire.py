"""The client's side of the wire: one connection to the server (:class:`Protocol`, its
callbacks run in the I/O thread), the process's I/O loop shared by every client storage
(:func:`io_loop`, made anew in a forked child), and the errors the server reports, turned
back into amphora's (:func:`remote_error`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any

from amphora import errors
from amphora.errors import ClientDisconnected, ConflictError, StorageError
from amphora.server import protocol as p

if TYPE_CHECKING:
    from amphora.storage.client.storage import ClientStorage

__all__ = ["Protocol", "AuthenticationError", "remote_error", "io_loop", "speaks_tls"]

log = logging.getLogger("amphora.client")


class AuthenticationError(StorageError):
    """The server refused the handshake (token, protocol version, storage name)."""


def remote_error(name: str, message: str, details: Any) -> Exception:
    """The amphora error the server reported (by name; never a class outside errors)."""
    details = details if isinstance(details, dict) else {}
    klass = getattr(errors, name, None) if name in errors.__all__ else None
    if not isinstance(klass, type) or not issubclass(klass, Exception):
        return StorageError(f"server: {name}: {message}")
    if issubclass(klass, ConflictError):
        serials = details.get("serials")
        return klass(message, oid=details.get("oid"),
                     serials=tuple(serials) if serials else None)
    if issubclass(klass, errors.UndoError):
        oid = details.get("oid")
        return klass(message, oid if type(oid) is bytes else None)
    if issubclass(klass, errors.ObjectNotFoundError):
        return klass(details.get("oid"))
    return klass(message)


class Protocol(asyncio.Protocol):
    """One connection to the server; all its callbacks run in the client's I/O thread."""

    def __init__(self, client: "ClientStorage", sock: socket.socket | None = None):
        self.client = client
        self.decoder = p.FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.welcome: asyncio.Future = client._loop.create_future()
        self.lost = False
        # Without TLS, requests are written to the socket by the threads that make them
        # (one system call, no hand-off to the I/O thread); the transport only reads.
        self.sock = sock
        self.write_lock = threading.Lock()

    def write(self, frame: bytes, timeout: float) -> None:
        """Send ``frame`` whole, from any thread; raises OSError if the socket fails."""
        sock = self.sock
        if sock is None:
            raise OSError("not a socket of its own")
        with self.write_lock:
            view = memoryview(frame)
            while view:
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:  # the kernel's buffer is full: the server reads
                    if not select.select([], [sock], [], timeout)[1]:
                        raise OSError(f"could not send for {timeout} s") from None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except p.ProtocolError as exc:
            log.error("closing the connection to the server: %s", exc)
            self.transport.close()
            return
        client = self.client
        for message in messages:
            kind = message[0]
            if kind == p.REPLY:
                client._replied(message[1], message[2], None)
            elif kind == p.PUSH:
                client._pushed(message[1], message[2])
            elif kind == p.RESOLVE:
                client._asked(message[1], message[2:])
            elif kind == p.MERGED:
                client._merged(message[1], message[2], message[3])
            elif kind == p.PROGRESS:
                client._progressed(message[1], message[2:])
            elif kind == p.ERROR:
                if message[1] == 0:  # about the connection: the server closes it
                    error = AuthenticationError(f"the server refused: {message[3]}")
                    if not self.welcome.done():
                        self.welcome.set_exception(error)
                    else:
                        log.error("%s", error)
                else:
                    client._replied(message[1], None, remote_error(*message[2:5]))
            elif kind == p.WELCOME and not self.welcome.done():
                client._welcomed(message[1])  # here: before any push that follows it
                self.welcome.set_result(message[1])

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.welcome.done():
            self.welcome.set_exception(ClientDisconnected("the connection closed"))
        self.client._connection_lost(self)


def speaks_tls(host: str, port: int, timeout: float) -> bool:
    """True if the server at ``host:port`` completes a TLS handshake (asked only after it
    closed a plain connection without a word)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return True
    except (OSError, ssl.SSLError):
        return False


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
# A forked child's copies of its parent's loops: never run, closed or collected here
# (closing one would unregister the parent's sockets from the epoll instance it shares).
_inherited_loops: list[asyncio.AbstractEventLoop] = []


def io_loop() -> asyncio.AbstractEventLoop:
    """The event loop all client storages of this process share, in one daemon thread:
    it only moves bytes and runs invalidation callbacks, which are short."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True,
                             name="amphora-client-io").start()
            _loop = loop
        return _loop


def _after_fork_in_child() -> None:
    """The parent's I/O thread is not in the child: the next client gets a loop of its
    own (the client storages copied let go of the parent's connections, see _forked)."""
    global _loop, _loop_lock
    if _loop is not None:
        _inherited_loops.append(_loop)
    _loop, _loop_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
